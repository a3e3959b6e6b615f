//! The file: reopening keeps everything, migrations are idempotent, several stores share one file, foreign
//! files are refused, URLs open the right file.

use std::sync::Arc;

use herald_core::{
    Error, EventStore, EventStoreExt, ExpectedVersion, NewEvent, ReadQuery, StreamName,
};
use herald_sqlite::{Durability, SqliteConfig, SqliteStore};

fn name(s: &str) -> StreamName {
    StreamName::new(s).unwrap()
}

fn schema_version(path: &std::path::Path) -> (i64, i64) {
    let conn = rusqlite::Connection::open(path).unwrap();
    let user: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    let tables: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'table'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    (user, tables)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_keeps_events_versions_links_and_head() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.db");
    let (order, audit) = (name("order-1"), name("audit"));
    let written = {
        let store = SqliteStore::open(&path, SqliteConfig::default())
            .await
            .unwrap();
        let r = store
            .append(
                &order,
                vec![
                    NewEvent::new("Placed")
                        .with_data(r#"{"b":1,"a":123456789012345678901234567890}"#),
                    NewEvent::new("Paid"),
                ],
                ExpectedVersion::NoStream,
            )
            .await
            .unwrap();
        store
            .link(&audit, &r.ids[1..], ExpectedVersion::Any)
            .await
            .unwrap();
        store.close().await;
        r
    };
    let store = SqliteStore::open(&path, SqliteConfig::default())
        .await
        .unwrap();
    assert_eq!(store.watch_head().borrow().position, written.last_position);
    assert_eq!(store.stream_version(&order).await.unwrap(), Some(1));
    let events = store
        .read_to_vec(ReadQuery::stream(order.clone()))
        .await
        .unwrap();
    assert_eq!(events.iter().map(|e| e.id).collect::<Vec<_>>(), written.ids);
    assert_eq!(
        events[0].data,
        r#"{"b":1,"a":123456789012345678901234567890}"#
    );
    let linked = store.read_to_vec(ReadQuery::stream(audit)).await.unwrap();
    assert_eq!(linked.len(), 1);
    assert_eq!(linked[0].origin.as_ref().unwrap().stream, "order-1");
    // Appending continues the versions and positions.
    let next = store
        .append(
            &order,
            vec![NewEvent::new("Shipped")],
            ExpectedVersion::Exact(1),
        )
        .await
        .unwrap();
    assert_eq!((next.first_version, next.first_position), (2, 3));
    // The idempotent retry still works across a reopen.
    let retry = store
        .append(
            &order,
            written
                .ids
                .iter()
                .zip(["Placed", "Paid"])
                .map(|(id, t)| NewEvent::new(t).with_id(*id))
                .collect(),
            ExpectedVersion::NoStream,
        )
        .await
        .unwrap();
    assert_eq!(retry, written);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_idempotent_and_concurrent_opens_are_safe() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.db");
    // Eight stores open the fresh file at once: all succeed, the schema is created once.
    let opens = (0..8).map(|_| SqliteStore::open(&path, SqliteConfig::default()));
    let stores: Vec<_> = futures::future::join_all(opens)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let first = schema_version(&path);
    assert!(first.0 >= 1, "user_version records the migrations");
    drop(stores);
    for _ in 0..3 {
        SqliteStore::open(&path, SqliteConfig::default())
            .await
            .unwrap()
            .close()
            .await;
        assert_eq!(schema_version(&path), first);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_on_one_file_share_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("two.db");
    let a = Arc::new(
        SqliteStore::open(&path, SqliteConfig::default())
            .await
            .unwrap(),
    );
    let b = Arc::new(
        SqliteStore::open(
            &path,
            SqliteConfig::default().durability(Durability::Normal),
        )
        .await
        .unwrap(),
    );
    let mut tasks = Vec::new();
    for (i, store) in [a.clone(), b.clone()].into_iter().enumerate() {
        for t in 0..4 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let stream = name(&format!("two-{i}x{t}"));
                for n in 0..10u64 {
                    let expected = if n == 0 {
                        ExpectedVersion::NoStream
                    } else {
                        ExpectedVersion::Exact(n - 1)
                    };
                    store
                        .append(&stream, vec![NewEvent::new("E")], expected)
                        .await
                        .unwrap();
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    for store in [&a, &b] {
        let log = store.read_to_vec(ReadQuery::all()).await.unwrap();
        assert_eq!(log.len(), 80);
        assert!(
            log.iter()
                .enumerate()
                .all(|(i, e)| e.position == i as u64 + 1)
        );
        assert_eq!(store.streams("two-", None, 100).await.unwrap().len(), 8);
    }
    // Both see the same version check: b cannot append at a version a already took.
    let err = b
        .append(
            &name("two-0x0"),
            vec![NewEvent::new("E")],
            ExpectedVersion::Exact(8),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::WrongExpectedVersion {
                actual: Some(9),
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_sqlite_file_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("foreign.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE mine (x INTEGER); INSERT INTO mine VALUES (7);")
            .unwrap();
    }
    let err = SqliteStore::open(&path, SqliteConfig::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, herald_core::Error::Backend { .. }),
        "a foreign file is a backend refusal: {err:?}"
    );
    assert!(err.to_string().contains("did not create"), "{err}");
    assert_eq!(schema_version(&path), (0, 1));
}

/// An existing 0-byte file (a truncated database, a mistyped path, `touch`) is not silently made a new store:
/// opening it is invalid input and leaves it empty; without the file, the same path opens as a new store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_file_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.db");
    std::fs::File::create(&path).unwrap();
    let err = SqliteStore::open(&path, SqliteConfig::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err}");
    assert!(err.to_string().contains("empty file"), "{err}");
    let err = herald_sqlite::SqliteJobQueue::open(&path, herald_core::JobsConfig::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err}");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "left untouched");
    std::fs::remove_file(&path).unwrap();
    SqliteStore::open(&path, SqliteConfig::default())
        .await
        .unwrap()
        .close()
        .await;
    assert!(std::fs::metadata(&path).unwrap().len() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_url_and_config_validation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("url.db");
    let url = format!(
        "sqlite://{}?durability=normal&read_connections=2",
        path.display()
    );
    assert!(url.starts_with("sqlite:///"), "absolute path form");
    let store = SqliteStore::open_url(&url).await.unwrap();
    assert_eq!(store.path(), path);
    assert_eq!(store.config().durability, Durability::Normal);
    assert_eq!(store.config().read_connections, 2);
    store
        .append(&name("u"), vec![NewEvent::new("E")], ExpectedVersion::Any)
        .await
        .unwrap();
    store.close().await;
    assert!(path.exists());

    for bad in [
        SqliteConfig::default().read_connections(0),
        SqliteConfig::default().max_batch(0),
    ] {
        let err = SqliteStore::open(dir.path().join("bad.db"), bad)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)), "{err}");
    }
    let err = SqliteStore::open_url("sqlite://").await.unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err}");
}

/// Dropping a store joins its writer: the file is released, and every append answered before is on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_store_stops_the_writer_and_releases_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("drain.db");
    let store = Arc::new(
        SqliteStore::open(&path, SqliteConfig::default())
            .await
            .unwrap(),
    );
    let handles: Vec<_> = (0..32)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .append(
                        &name(&format!("d-{i}")),
                        vec![NewEvent::new("E")],
                        ExpectedVersion::Any,
                    )
                    .await
            })
        })
        .collect();
    drop(store);
    for h in handles {
        h.await.unwrap().unwrap();
    }
    // The last handle was dropped inside a task: the writer has stopped, so an exclusive lock is free.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.busy_timeout(std::time::Duration::ZERO).unwrap();
    conn.execute_batch("BEGIN EXCLUSIVE; COMMIT;").unwrap();
    let count: i64 = conn
        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .unwrap();
    assert_eq!(count, 32);
}

/// A file written by the first schema version is upgraded on open, keeping its data and its rules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_file_is_migrated_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.db");
    let s = name("old-1");
    let appended = {
        let store = SqliteStore::open(&path, SqliteConfig::default())
            .await
            .unwrap();
        let r = store
            .append(&s, vec![NewEvent::new("E")], ExpectedVersion::NoStream)
            .await
            .unwrap();
        store.close().await;
        r
    };
    // Turn the file back into what schema version 1 created.
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "DROP INDEX stream_entries_links;
             CREATE UNIQUE INDEX stream_entries_by_event ON stream_entries (stream, position);
             PRAGMA user_version = 1;",
        )
        .unwrap();
    }
    let store = SqliteStore::open(&path, SqliteConfig::default())
        .await
        .unwrap();
    assert_eq!(schema_version(&path).0, 2);
    let indexes: Vec<String> = {
        let conn = rusqlite::Connection::open(&path).unwrap();
        let mut stmt = conn
            .prepare("SELECT name FROM sqlite_schema WHERE type = 'index' AND tbl_name = 'stream_entries' ORDER BY name")
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert!(
        indexes.contains(&"stream_entries_links".to_owned()),
        "{indexes:?}"
    );
    assert!(
        !indexes.contains(&"stream_entries_by_event".to_owned()),
        "{indexes:?}"
    );
    assert_eq!(
        store
            .read_to_vec(ReadQuery::stream(s.clone()))
            .await
            .unwrap()
            .len(),
        1
    );
    // Link rules hold on the migrated file: own stream and repeated links are duplicates.
    let err = store
        .link(&s, &appended.ids, ExpectedVersion::Any)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::DuplicateEvent { .. }), "{err}");
    let other = name("other");
    store
        .link(&other, &appended.ids, ExpectedVersion::Any)
        .await
        .unwrap();
    let err = store
        .link(&other, &appended.ids, ExpectedVersion::Any)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::DuplicateEvent { .. }), "{err}");
}
