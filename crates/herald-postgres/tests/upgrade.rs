//! Upgrading a store written with the migration-1 layout (own events and links both in `stream_entries`, a
//! delete removing the stream's entries) to migration 2 (own events read from `events` by stream and version,
//! `stream_entries` holding links only, deletes recorded in `deleted_streams`): everything reads back as it
//! was written, and writes after the upgrade see the old data exactly as the old writer left it.

mod support;

use herald_core::{
    AppendResult, Error, EventStore, EventStoreExt, ExpectedVersion, LinkResult, NewEvent, Origin,
    ReadQuery, RecordedEvent, StreamInfo, StreamName, timefmt,
};
use herald_postgres::tokio_postgres;
use herald_postgres::{PostgresStore, apply_migrations, store_migrations};
use uuid::Uuid;

/// One event of the hand-written migration-1 store.
struct OldEvent {
    position: i64,
    id: Uuid,
    stream: &'static str,
    version: i64,
    event_type: &'static str,
    data: &'static str,
    metadata: &'static str,
    recorded_at: i64,
}

/// 2023-11-14T22:13:20Z, in microseconds: the old events were recorded well before the test runs.
const BASE_MICROS: i64 = 1_700_000_000_000_000;

/// The global log of the old store. Data and metadata are JSON text the server must not normalise (key order,
/// spacing, escapes, non-ASCII).
fn old_events() -> Vec<OldEvent> {
    let rows = [
        (
            "order-1",
            0,
            "OrderPlaced",
            r#"{"z":1,  "a" : "é\u00e9", "n":1.50}"#,
        ),
        ("order-1", 1, "OrderPaid", r#"{"amount":  12.0E0}"#),
        ("order-1", 2, "OrderShipped", r#"[ 1,2 , {"b":null}]"#),
        // order-2's first life: deleted below.
        ("order-2", 0, "OrderPlaced", r#"{"first_life":true}"#),
        ("order-2", 1, "OrderCancelled", r#""just a string""#),
        // order-2 re-created after the delete: version 0 again.
        ("order-2", 0, "OrderPlaced", r#"{"second_life":  true }"#),
    ];
    rows.into_iter()
        .enumerate()
        .map(|(i, (stream, version, event_type, data))| OldEvent {
            position: i as i64 + 1,
            id: Uuid::now_v7(),
            stream,
            version,
            event_type,
            data,
            metadata: r#"{"correlation_id":"c-1",  "k":"v"}"#,
            recorded_at: BASE_MICROS + i as i64 * 1_000,
        })
        .collect()
}

/// A client on the test's schema (created by the migrator if missing).
async fn client(schema: &str) -> tokio_postgres::Client {
    let url = format!(
        "{}?options=-c%20search_path%3D{schema}",
        support::database_url()
    );
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
}

/// The statements of the migration-1 writer's append, one event at a time.
struct OldStatements {
    insert_event: tokio_postgres::Statement,
    insert_entry: tokio_postgres::Statement,
    set_version: tokio_postgres::Statement,
    set_head: tokio_postgres::Statement,
}

impl OldStatements {
    /// The event, its own entry, the stream's version and the end of the log.
    async fn append(&self, db: &tokio_postgres::Client, e: &OldEvent) {
        let category = e.stream.split_once('-').map_or(e.stream, |(c, _)| c);
        db.execute(
            &self.insert_event,
            &[
                &e.position,
                &e.id,
                &e.stream,
                &e.version,
                &category,
                &e.event_type,
                &e.data,
                &e.metadata,
                &e.recorded_at,
            ],
        )
        .await
        .unwrap();
        db.execute(
            &self.insert_entry,
            &[&e.stream, &e.version, &e.position, &false],
        )
        .await
        .unwrap();
        db.execute(&self.set_version, &[&e.stream, &e.version])
            .await
            .unwrap();
        db.execute(&self.set_head, &[&e.position, &e.recorded_at])
            .await
            .unwrap();
    }
}

/// Writes the migration-1 store by hand, as the migration-1 writer did: every event in `events`, an own
/// entry per event in `stream_entries` (`is_link = false`), links as entries with `is_link = true`, the
/// streams' last versions in `streams`, the end of the log in `head`; a delete removed the stream's entries
/// and its `streams` row and left its events in the log.
async fn write_old_store(db: &tokio_postgres::Client, events: &[OldEvent]) {
    let insert_event = db
        .prepare(
            "INSERT INTO events
                 (position, id, stream, version, category, event_type, data, metadata, recorded_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .await
        .unwrap();
    let insert_entry = db
        .prepare(
            "INSERT INTO stream_entries (stream, version, position, is_link) VALUES ($1, $2, $3, $4)",
        )
        .await
        .unwrap();
    let set_version = db
        .prepare(
            "INSERT INTO streams (name, version) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET version = excluded.version",
        )
        .await
        .unwrap();
    let set_head = db
        .prepare(
            "UPDATE head SET position = $1, recorded_at = greatest(recorded_at, $2) WHERE singleton",
        )
        .await
        .unwrap();
    let statements = OldStatements {
        insert_event,
        insert_entry,
        set_version,
        set_head,
    };
    // order-1: three events; order-2: two events.
    for e in &events[..5] {
        statements.append(db, e).await;
    }
    // links-1 links order-1's version 1 and order-2's version 0 (positions 2 and 4).
    for (version, position) in [(0i64, 2i64), (1, 4)] {
        db.execute(
            &statements.insert_entry,
            &[&"links-1", &version, &position, &true],
        )
        .await
        .unwrap();
        db.execute(&statements.set_version, &[&"links-1", &version])
            .await
            .unwrap();
    }
    // The old delete of order-2: its entries and its version go, its events stay in the log.
    db.batch_execute(
        "WITH entries AS (DELETE FROM stream_entries WHERE stream = 'order-2')
         DELETE FROM streams WHERE name = 'order-2'",
    )
    .await
    .unwrap();
    // order-2 re-created: version 0 again, at the next position.
    statements.append(db, &events[5]).await;
}

fn name(s: &str) -> StreamName {
    StreamName::new(s).unwrap()
}

/// `old` as a read of its own stream (or of the global log) returns it.
fn as_read(old: &OldEvent) -> RecordedEvent {
    RecordedEvent {
        id: old.id,
        event_type: old.event_type.to_owned(),
        stream: old.stream.to_owned(),
        version: old.version as u64,
        position: old.position as u64,
        data: old.data.to_owned(),
        metadata: old.metadata.to_owned(),
        recorded_at: timefmt::from_unix_micros(old.recorded_at).unwrap(),
        origin: None,
    }
}

/// `old` as a read of `stream` returns it through a link at `version`.
fn as_link(old: &OldEvent, stream: &str, version: u64) -> RecordedEvent {
    RecordedEvent {
        stream: stream.to_owned(),
        version,
        origin: Some(Origin {
            stream: old.stream.to_owned(),
            version: old.version as u64,
        }),
        ..as_read(old)
    }
}

async fn read(store: &PostgresStore, query: ReadQuery) -> Vec<RecordedEvent> {
    store.read_to_vec(query).await.unwrap()
}

/// `(stream, version, position, is_link)` of every stream entry, in order.
async fn stream_entries(db: &tokio_postgres::Client) -> Vec<(String, i64, i64, bool)> {
    db.query(
        "SELECT stream, version, position, is_link FROM stream_entries ORDER BY stream, version",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect()
}

async fn deleted_streams(db: &tokio_postgres::Client) -> Vec<(String, i64)> {
    db.query(
        "SELECT name, through_position FROM deleted_streams ORDER BY name",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

fn positions(events: &[RecordedEvent]) -> Vec<u64> {
    events.iter().map(|e| e.position).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_1_store_reads_and_writes_after_migration_2() {
    if !support::postgres_available("a_migration_1_store_reads_and_writes_after_migration_2").await
    {
        return;
    }
    let schema = support::TestSchema::new();
    let mut db = client(schema.name()).await;
    apply_migrations(&mut db, schema.name(), "herald", &store_migrations()[..1])
        .await
        .unwrap();
    let applied: Vec<i32> = db
        .query(
            "SELECT version FROM herald_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        applied,
        [1],
        "only the migration-1 layout before the upgrade"
    );
    let old = old_events();
    write_old_store(&db, &old).await;
    assert_eq!(
        stream_entries(&db).await,
        [
            ("links-1".to_owned(), 0, 2, true),
            ("links-1".to_owned(), 1, 4, true),
            ("order-1".to_owned(), 0, 1, false),
            ("order-1".to_owned(), 1, 2, false),
            ("order-1".to_owned(), 2, 3, false),
            ("order-2".to_owned(), 0, 6, false),
        ],
        "the migration-1 store as the old writer left it"
    );

    // Opening the store runs migration 2.
    let store = PostgresStore::open(&support::database_url(), schema.config())
        .await
        .unwrap();
    let applied: Vec<i32> = db
        .query(
            "SELECT version FROM herald_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(applied, [1, 2]);
    assert_eq!(
        deleted_streams(&db).await,
        [("order-2".to_owned(), 5)],
        "order-2's first life (positions 4 and 5) was deleted"
    );
    assert_eq!(
        stream_entries(&db).await,
        [
            ("links-1".to_owned(), 0, 2, true),
            ("links-1".to_owned(), 1, 4, true),
        ],
        "stream_entries keeps the links only"
    );
    let head: i64 = db
        .query_one("SELECT position FROM head", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(head, 6);
    assert_eq!(store.watch_head().borrow().position, 6);

    // Reads: every stream as it was.
    let order_1 = read(&store, ReadQuery::stream(name("order-1"))).await;
    assert_eq!(
        order_1,
        [as_read(&old[0]), as_read(&old[1]), as_read(&old[2])]
    );
    let order_2 = read(&store, ReadQuery::stream(name("order-2"))).await;
    assert_eq!(
        order_2,
        [as_read(&old[5])],
        "only the event appended after the delete"
    );
    assert!(
        read(&store, ReadQuery::stream(name("order-2")).from(1))
            .await
            .is_empty(),
        "the deleted version 1 is not read"
    );
    let links_1 = read(&store, ReadQuery::stream(name("links-1"))).await;
    assert_eq!(
        links_1,
        [
            as_link(&old[1], "links-1", 0),
            as_link(&old[3], "links-1", 1)
        ]
    );
    let all = read(&store, ReadQuery::all()).await;
    assert_eq!(all, old.iter().map(as_read).collect::<Vec<_>>());
    // Category reads walk the global log, deleted events included, as before the upgrade.
    assert_eq!(
        positions(&read(&store, ReadQuery::category("order")).await),
        [1, 2, 3, 4, 5, 6]
    );
    assert_eq!(
        store.event(old[3].id).await.unwrap(),
        Some(as_read(&old[3])),
        "a deleted event stays in the global log"
    );

    // Backward.
    assert_eq!(
        read(&store, ReadQuery::stream(name("order-1")).backward()).await,
        [as_read(&old[2]), as_read(&old[1]), as_read(&old[0])]
    );
    assert_eq!(
        read(
            &store,
            ReadQuery::stream(name("order-1")).backward().from(1)
        )
        .await,
        [as_read(&old[1]), as_read(&old[0])]
    );
    assert_eq!(
        read(&store, ReadQuery::stream(name("order-2")).backward()).await,
        [as_read(&old[5])]
    );
    assert_eq!(
        read(&store, ReadQuery::stream(name("links-1")).backward()).await,
        [
            as_link(&old[3], "links-1", 1),
            as_link(&old[1], "links-1", 0)
        ]
    );
    assert_eq!(
        positions(&read(&store, ReadQuery::all().backward()).await),
        [6, 5, 4, 3, 2, 1]
    );

    // Versions and the stream listing.
    assert_eq!(
        store.stream_version(&name("order-1")).await.unwrap(),
        Some(2)
    );
    assert_eq!(
        store.stream_version(&name("order-2")).await.unwrap(),
        Some(0)
    );
    assert_eq!(
        store.stream_version(&name("links-1")).await.unwrap(),
        Some(1)
    );
    assert_eq!(store.stream_version(&name("order-3")).await.unwrap(), None);
    let info = |stream: &str, version| StreamInfo {
        stream: stream.to_owned(),
        version,
    };
    assert_eq!(
        store.streams("", None, 100).await.unwrap(),
        [info("links-1", 1), info("order-1", 2), info("order-2", 0)]
    );
    assert_eq!(
        store.streams("order", Some("order-1"), 100).await.unwrap(),
        [info("order-2", 0)]
    );

    // Writes after the upgrade.
    let shipped = NewEvent::new("OrderDelivered").with_data(r#"{"at": "door"}"#);
    let appended = store
        .append(
            &name("order-1"),
            vec![shipped.clone()],
            ExpectedVersion::Exact(2),
        )
        .await
        .unwrap();
    assert_eq!(
        appended,
        AppendResult {
            stream: "order-1".to_owned(),
            first_version: 3,
            last_version: 3,
            first_position: 7,
            last_position: 7,
            ids: vec![shipped.id],
        }
    );
    let order_1 = read(&store, ReadQuery::stream(name("order-1"))).await;
    assert_eq!(order_1.len(), 4);
    assert_eq!(
        (
            order_1[3].id,
            order_1[3].version,
            order_1[3].position,
            order_1[3].data.as_str()
        ),
        (shipped.id, 3, 7, r#"{"at": "door"}"#)
    );
    assert!(
        order_1[3].recorded_at >= order_1[2].recorded_at,
        "recorded_at does not go back"
    );
    // A stale expectation is refused against the migrated version.
    let stale = store
        .append(
            &name("order-1"),
            vec![NewEvent::new("Late")],
            ExpectedVersion::Exact(2),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(stale, Error::WrongExpectedVersion { .. }),
        "{stale:?}"
    );

    // order-2's deleted events cannot be appended again, alone or as their original append.
    let old_event = |e: &OldEvent| {
        NewEvent::new(e.event_type)
            .with_id(e.id)
            .with_data(e.data)
            .with_metadata(e.metadata)
    };
    for (events, expected) in [
        (vec![old_event(&old[3])], ExpectedVersion::Any),
        (
            vec![old_event(&old[3]), old_event(&old[4])],
            ExpectedVersion::NoStream,
        ),
        (vec![old_event(&old[4])], ExpectedVersion::Exact(0)),
    ] {
        let err = store
            .append(&name("order-2"), events, expected)
            .await
            .unwrap_err();
        match err {
            Error::DuplicateEvent { id, stream, .. } => {
                assert_eq!(stream, "order-2");
                assert!(id == old[3].id || id == old[4].id, "{id}");
            }
            other => panic!("re-appending a deleted event: {other:?}"),
        }
    }
    // But a deleted event can be linked back into its stream.
    let relinked = store
        .link(&name("order-2"), &[old[3].id], ExpectedVersion::Exact(0))
        .await
        .unwrap();
    assert_eq!(
        relinked,
        LinkResult {
            stream: "order-2".to_owned(),
            first_version: 1,
            last_version: 1,
        }
    );
    assert_eq!(
        read(&store, ReadQuery::stream(name("order-2"))).await,
        [as_read(&old[5]), as_link(&old[3], "order-2", 1)]
    );
    // Once, and the stream's own event is not linked into it.
    for id in [old[3].id, old[5].id] {
        let err = store
            .link(&name("order-2"), &[id], ExpectedVersion::Any)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::DuplicateEvent { id: dup, .. } if *dup == id),
            "{err:?}"
        );
    }
    // links-1's migrated link entries are known to the writer: linking the same event again is refused,
    // another one lands at the next version.
    let err = store
        .link(&name("links-1"), &[old[1].id], ExpectedVersion::Any)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::DuplicateEvent { .. }), "{err:?}");
    let linked = store
        .link(&name("links-1"), &[old[5].id], ExpectedVersion::Exact(1))
        .await
        .unwrap();
    assert_eq!((linked.first_version, linked.last_version), (2, 2));

    // Retries of the migrated appends are idempotent: the original result, nothing written.
    let original = AppendResult {
        stream: "order-1".to_owned(),
        first_version: 0,
        last_version: 2,
        first_position: 1,
        last_position: 3,
        ids: old[..3].iter().map(|e| e.id).collect(),
    };
    for expected in [ExpectedVersion::NoStream, ExpectedVersion::Any] {
        let retry = store
            .append(
                &name("order-1"),
                old[..3].iter().map(old_event).collect(),
                expected,
            )
            .await
            .unwrap();
        assert_eq!(retry, original, "retry with {expected:?}");
    }
    let recreated = store
        .append(
            &name("order-2"),
            vec![old_event(&old[5])],
            ExpectedVersion::NoStream,
        )
        .await
        .unwrap();
    assert_eq!(
        (
            recreated.first_version,
            recreated.first_position,
            recreated.ids.as_slice()
        ),
        (0, 6, &[old[5].id][..]),
        "the re-created order-2's append is a retry too"
    );
    assert_eq!(
        store.stream_version(&name("order-1")).await.unwrap(),
        Some(3)
    );
    assert_eq!(
        store.stream_version(&name("order-2")).await.unwrap(),
        Some(1)
    );
    let all = read(&store, ReadQuery::all()).await;
    assert_eq!(
        positions(&all),
        [1, 2, 3, 4, 5, 6, 7],
        "retries wrote nothing"
    );
    assert_eq!(all[..6], old.iter().map(as_read).collect::<Vec<_>>()[..]);

    // The next append lands after everything, and a migrated stream can be deleted and re-created.
    let next = store
        .append(
            &name("order-2"),
            vec![NewEvent::new("OrderPlacedAgain")],
            ExpectedVersion::Exact(1),
        )
        .await
        .unwrap();
    assert_eq!((next.first_version, next.first_position), (2, 8));
    store
        .delete_stream(&name("order-1"), ExpectedVersion::Exact(3))
        .await
        .unwrap();
    assert_eq!(store.stream_version(&name("order-1")).await.unwrap(), None);
    assert!(
        read(&store, ReadQuery::stream(name("order-1")))
            .await
            .is_empty()
    );
    assert_eq!(
        deleted_streams(&db).await,
        [("order-1".to_owned(), 8), ("order-2".to_owned(), 5)]
    );
    let again = store
        .append(
            &name("order-1"),
            vec![NewEvent::new("OrderPlaced")],
            ExpectedVersion::NoStream,
        )
        .await
        .unwrap();
    assert_eq!((again.first_version, again.first_position), (0, 9));
    assert_eq!(
        positions(&read(&store, ReadQuery::stream(name("order-1"))).await),
        [9]
    );
    // links-1 still reaches order-1's deleted event through its link.
    assert_eq!(
        read(&store, ReadQuery::stream(name("links-1"))).await[0],
        as_link(&old[1], "links-1", 0)
    );
    assert_eq!(
        positions(&read(&store, ReadQuery::all()).await),
        (1..=9).collect::<Vec<u64>>()
    );
    assert!(
        stream_entries(&db).await.iter().all(|e| e.3),
        "the new writer writes links only into stream_entries"
    );
}

/// A process started before the upgrade keeps its migration-1 writer. What it would write reads wrongly in
/// the new layout (an own entry in `stream_entries` would read as a link; a delete without a
/// `deleted_streams` row would leave the stream's events readable), so migration 2 refuses both with an
/// error telling to restart the process, and nothing of the refused write is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_1_writer_still_running_after_the_upgrade_is_refused() {
    if !support::postgres_available(
        "a_migration_1_writer_still_running_after_the_upgrade_is_refused",
    )
    .await
    {
        return;
    }
    let schema = support::TestSchema::new();
    let mut db = client(schema.name()).await;
    apply_migrations(&mut db, schema.name(), "herald", &store_migrations()[..1])
        .await
        .unwrap();
    let old = old_events();
    write_old_store(&db, &old).await;
    let store = PostgresStore::open(&support::database_url(), schema.config())
        .await
        .unwrap();
    let before = read(&store, ReadQuery::all()).await;

    // The migration-1 writer's append statement: event, own entry and stream version in one statement.
    let refused = db
        .execute(
            "WITH ev AS (
                 INSERT INTO events
                     (position, id, stream, version, category, event_type, data, metadata, recorded_at)
                 VALUES (7, $1, 'order-1', 3, 'order', 'ByTheOldWriter', '{}', '{}', 0)
                 RETURNING stream, version, position
             ), entries AS (
                 INSERT INTO stream_entries (stream, version, position, is_link)
                 SELECT stream, version, position, false FROM ev
             )
             INSERT INTO streams (name, version) VALUES ('order-1', 3)
             ON CONFLICT (name) DO UPDATE SET version = excluded.version",
            &[&Uuid::now_v7()],
        )
        .await
        .unwrap_err();
    let message = refused.as_db_error().map(|e| e.message().to_owned());
    assert!(
        message.as_deref().is_some_and(|m| m.contains("upgraded")
            && m.contains(schema.name())
            && m.contains("restart")),
        "{refused:?}"
    );
    // The migration-1 writer's delete.
    let refused = db
        .execute(
            "WITH entries AS (DELETE FROM stream_entries WHERE stream = 'order-1')
             DELETE FROM streams WHERE name = 'order-1'",
            &[],
        )
        .await
        .unwrap_err();
    assert!(
        refused
            .as_db_error()
            .is_some_and(|e| e.message().contains("restart")),
        "{refused:?}"
    );
    assert_eq!(
        read(&store, ReadQuery::all()).await,
        before,
        "nothing of either was stored"
    );
    assert_eq!(
        store.stream_version(&name("order-1")).await.unwrap(),
        Some(2)
    );

    // The current writer's deletes and links go through the same triggers.
    store
        .delete_stream(&name("order-1"), ExpectedVersion::Exact(2))
        .await
        .unwrap();
    assert!(
        read(&store, ReadQuery::stream(name("order-1")))
            .await
            .is_empty()
    );
    let relinked = store
        .link(&name("order-1"), &[old[0].id], ExpectedVersion::NoStream)
        .await
        .unwrap();
    assert_eq!(relinked.first_version, 0);
    store
        .delete_stream(&name("order-1"), ExpectedVersion::Exact(0))
        .await
        .unwrap();
    assert_eq!(store.stream_version(&name("order-1")).await.unwrap(), None);
}
