//! Fuzzing of stored-row decoding: a SQLite file is outside input too (edited by hand, written by another
//! tool or version, damaged). Each case stores a few events and a link, overwrites one column of one row with
//! an arbitrary SQLite value (NULL, any integer, a real, text, a blob, invalid UTF-8), then runs every read —
//! stream, global and category reads in both directions and small pages, lookups by id, versions, the
//! listing — and a few writes. Each call must answer within [`CALL_TIMEOUT`] with a value or an error, never a
//! panic; and the store must stay usable: an append to an untouched stream still succeeds and reads back.
//!
//! `HERALD_FUZZ_CASES` (default 100; each case opens a file) runs more.

use std::time::Duration;

use futures::future::BoxFuture;
use herald_core::uuid::Uuid;
use herald_core::{
    Error, EventStore, EventStoreExt, ExpectedVersion, NewEvent, ReadQuery, StreamName,
};
use herald_sqlite::{SqliteConfig, SqliteStore};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use rusqlite::types::Value;

const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// The columns a case may overwrite: (table, column, how the row is picked).
const TARGETS: &[(&str, &str, &str)] = &[
    ("events", "id", "position = ?1"),
    ("events", "stream", "position = ?1"),
    ("events", "version", "position = ?1"),
    ("events", "category", "position = ?1"),
    ("events", "type", "position = ?1"),
    ("events", "data", "position = ?1"),
    ("events", "metadata", "position = ?1"),
    ("events", "recorded_at", "position = ?1"),
    ("events", "position", "position = ?1"),
    ("stream_entries", "version", "position = ?1"),
    ("stream_entries", "position", "position = ?1"),
    ("stream_entries", "is_link", "position = ?1"),
    ("streams", "version", "rowid IS NOT NULL AND ?1 > 0"),
];

fn cases() -> u32 {
    std::env::var("HERALD_FUZZ_CASES")
        .map(|v| v.parse().expect("HERALD_FUZZ_CASES is a number"))
        .unwrap_or(100)
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        1 => Just(Value::Null),
        2 => prop_oneof![
            Just(-1i64), Just(0), Just(1), Just(2), Just(3), Just(i64::MAX), Just(i64::MIN),
            Just(253_402_300_800_000_000), Just(-62_135_596_800_000_001), any::<i64>(),
        ].prop_map(Value::Integer),
        1 => prop_oneof![Just(f64::NAN), Just(1.5), Just(-0.0), Just(1e300)].prop_map(Value::Real),
        2 => prop_oneof![
            Just(String::new()), Just("{".to_owned()), Just("[1]".to_owned()), Just("null".to_owned()),
            Just("s-1".to_owned()), Just("t-1".to_owned()), Just("\u{0}\n\u{1b}".to_owned()), "\\PC{0,20}",
        ].prop_map(Value::Text),
        2 => prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..24),
            Just(vec![0xff, 0xfe]),
            Just(vec![b'{', 0xc3, b'}']),
        ].prop_map(Value::Blob),
    ]
}

/// Runs `call` under [`CALL_TIMEOUT`]: its result, whatever it is, or a failure when it hangs.
async fn bounded<T>(what: &str, call: BoxFuture<'_, T>) -> Result<T, TestCaseError> {
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .map_err(|_| TestCaseError::fail(format!("{what} did not answer within {CALL_TIMEOUT:?}")))
}

fn name(s: &str) -> StreamName {
    StreamName::new(s).unwrap()
}

async fn one_case(target: usize, row: i64, value: Value) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corrupt.db");
    let store = SqliteStore::open(&path, SqliteConfig::default())
        .await
        .unwrap();
    let first = vec![
        NewEvent::new("Opened").with_data(r#"{"n":1}"#),
        NewEvent::new("Deposited").with_data(r#"{"n":2}"#),
    ];
    let ids: Vec<Uuid> = first.iter().map(|e| e.id).collect();
    store
        .append(&name("s-1"), first, ExpectedVersion::NoStream)
        .await
        .unwrap();
    store
        .append(
            &name("s-2"),
            vec![NewEvent::new("Opened")],
            ExpectedVersion::Any,
        )
        .await
        .unwrap();
    store
        .link(&name("t-1"), &ids, ExpectedVersion::Any)
        .await
        .unwrap();

    let (table, column, filter) = TARGETS[target % TARGETS.len()];
    let what = format!("{table}.{column} of row {row} set to {value:?}");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        let sql = format!("UPDATE {table} SET {column} = ?2 WHERE {filter}");
        // A value the schema refuses (NULL in a NOT NULL column, a clashing key) corrupts nothing: the case
        // still runs every call on the intact store.
        let _ = conn.execute(&sql, rusqlite::params![row, value]);
    }

    let store: &dyn EventStore = &store;
    let mut reads = vec![
        ReadQuery::all(),
        ReadQuery::all().backward(),
        ReadQuery::category("s"),
    ];
    for stream in ["s-1", "s-2", "t-1"] {
        reads.push(ReadQuery::stream(name(stream)));
        reads.push(ReadQuery::stream(name(stream)).backward());
    }
    for query in reads {
        for batch in [1, 2, 512] {
            let query = query.clone().batch_size(batch);
            let label = format!("{what}: read {query:?}");
            let _ = bounded(&label, Box::pin(store.read_to_vec(query.clone()))).await?;
            let _ = bounded(&label, store.read_page(&query)).await?;
        }
    }
    for id in &ids {
        let _ = bounded(&what, store.event(*id)).await?;
    }
    for stream in ["s-1", "s-2", "t-1"] {
        let _ = bounded(&what, store.stream_version(&name(stream))).await?;
        let _ = bounded(
            &what,
            store.append(
                &name(stream),
                vec![NewEvent::new("After")],
                ExpectedVersion::Any,
            ),
        )
        .await?;
    }
    let _ = bounded(&what, store.streams("", None, 100)).await?;
    let _ = bounded(&what, store.link(&name("u-1"), &ids, ExpectedVersion::Any)).await?;
    let _ = bounded(
        &what,
        store.delete_stream(&name("s-2"), ExpectedVersion::Any),
    )
    .await?;

    // The store's writer survived: a new stream is written and read back, or — when the damage is in what
    // every commit reads (the last commit time) — refused as a backend error, not a closed store.
    let fresh = NewEvent::new("Fresh");
    let fresh_id = fresh.id;
    let written = bounded(
        &what,
        store.append(&name("fresh-1"), vec![fresh], ExpectedVersion::NoStream),
    )
    .await?;
    match written {
        Ok(_) => {
            let query = ReadQuery::stream(name("fresh-1"));
            let read = bounded(&what, Box::pin(store.read_to_vec(query))).await?;
            prop_assert!(
                matches!(&read, Ok(events) if events.len() == 1 && events[0].id == fresh_id),
                "{}: the new stream reads back as {:?}",
                what,
                read
            );
        }
        Err(Error::Backend { .. }) => {}
        Err(other) => prop_assert!(
            false,
            "{}: an append to a new stream failed: {:?}",
            what,
            other
        ),
    }
    Ok(())
}

#[test]
fn any_damaged_column_is_an_error_not_a_panic_or_a_hang() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(
            &(0..TARGETS.len(), 1i64..=3, value()),
            |(target, row, value)| runtime.block_on(one_case(target, row, value)),
        )
        .unwrap();
}

/// Found by the fuzz above: a stored position of `i64::MIN` read back as 2^63 sent a backward global read in
/// small pages round in circles (its next page started at the largest position again), so the read never
/// ended. A negative stored version or position is a corrupt row: a backend error naming the event.
#[test]
fn a_negative_stored_position_is_an_error_not_an_endless_read() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("corrupt.db");
        let store = SqliteStore::open(&path, SqliteConfig::default())
            .await
            .unwrap();
        let events = vec![NewEvent::new("A"), NewEvent::new("B"), NewEvent::new("C")];
        let damaged = events[0].id;
        store
            .append(&name("s-1"), events, ExpectedVersion::Any)
            .await
            .unwrap();
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute(
                "UPDATE events SET position = ?1 WHERE position = 1",
                [i64::MIN],
            )
            .unwrap();
        let query = ReadQuery::all().backward().batch_size(1);
        let read = tokio::time::timeout(CALL_TIMEOUT, store.read_to_vec(query))
            .await
            .expect("the backward read in pages of 1 ends");
        match read {
            Err(e @ Error::Backend { .. }) => {
                assert!(
                    e.to_string().contains(&damaged.to_string()),
                    "{e} names the event"
                );
            }
            other => panic!("expected a backend error for the corrupt row, got {other:?}"),
        }
    });
}

/// Found by the fuzz above: a last stored `recorded_at` past the largest timestamp (a damaged row) became the
/// commit time of every later append ("never before the previous commit"), so the store went on writing
/// events it could not read back. The append is refused instead, as a backend error naming the damaged
/// event's position, and nothing is written.
#[test]
fn an_out_of_range_last_commit_time_refuses_appends_instead_of_writing_unreadable_events() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("corrupt.db");
        let store = SqliteStore::open(&path, SqliteConfig::default())
            .await
            .unwrap();
        store
            .append(&name("s-1"), vec![NewEvent::new("A")], ExpectedVersion::Any)
            .await
            .unwrap();
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute(
                "UPDATE events SET recorded_at = ?1 WHERE position = 1",
                [i64::MAX],
            )
            .unwrap();
        let appended = store
            .append(
                &name("fresh-1"),
                vec![NewEvent::new("B")],
                ExpectedVersion::NoStream,
            )
            .await;
        match appended {
            Err(e @ Error::Backend { .. }) => {
                assert!(
                    e.to_string().contains("position 1"),
                    "{e} names the damaged event"
                );
            }
            other => panic!("expected the append refused as a backend error, got {other:?}"),
        }
        let fresh = store.stream_version(&name("fresh-1")).await.unwrap();
        assert_eq!(fresh, None, "nothing was written");
    });
}
