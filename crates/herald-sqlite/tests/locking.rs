//! Locks held by another process: reads never wait for them, and a write that cannot get the lock in time
//! fails cleanly (every request of its batch gets the error, nothing is written) while the store keeps working.

use std::time::Duration;

use herald_core::{
    Error, EventStore, EventStoreExt, ExpectedVersion, NewEvent, ReadQuery, StreamName,
};
use herald_sqlite::{SqliteConfig, SqliteStore};

fn name(s: &str) -> StreamName {
    StreamName::new(s).unwrap()
}

/// Another connection holds the write lock (as another process's writer would).
fn hold_write_lock(path: &std::path::Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    conn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_do_not_wait_for_a_held_write_lock() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.db");
    let store = std::sync::Arc::new(
        SqliteStore::open(&path, SqliteConfig::default())
            .await
            .unwrap(),
    );
    let s = name("locked-1");
    store
        .append(&s, vec![NewEvent::new("E")], ExpectedVersion::NoStream)
        .await
        .unwrap();
    let lock = hold_write_lock(&path);
    // An append now waits for the lock (busy timeout 5 s) ...
    let pending = {
        let (store, s) = (store.clone(), s.clone());
        tokio::spawn(async move {
            store
                .append(&s, vec![NewEvent::new("E")], ExpectedVersion::Exact(0))
                .await
        })
    };
    // ... while reads answer from the committed snapshot.
    let events = store
        .read_to_vec(ReadQuery::stream(s.clone()))
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(store.stream_version(&s).await.unwrap(), Some(0));
    assert_eq!(store.streams("", None, 10).await.unwrap().len(), 1);
    lock.execute_batch("COMMIT").unwrap();
    let appended = pending.await.unwrap().unwrap();
    assert_eq!((appended.first_version, appended.first_position), (1, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_cannot_lock_fails_whole_and_the_store_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("busy.db");
    let config = SqliteConfig::default().busy_timeout(Duration::from_millis(20));
    let store = std::sync::Arc::new(SqliteStore::open(&path, config).await.unwrap());
    let lock = hold_write_lock(&path);
    let attempts: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .append(
                        &name(&format!("busy-{i}")),
                        vec![NewEvent::new("E")],
                        ExpectedVersion::Any,
                    )
                    .await
            })
        })
        .collect();
    for attempt in attempts {
        let err = attempt.await.unwrap().unwrap_err();
        assert!(matches!(err, Error::Backend { .. }), "{err}");
    }
    drop(lock);
    assert!(
        store
            .read_to_vec(ReadQuery::all())
            .await
            .unwrap()
            .is_empty()
    );
    let r = store
        .append(
            &name("busy-0"),
            vec![NewEvent::new("E")],
            ExpectedVersion::NoStream,
        )
        .await
        .unwrap();
    assert_eq!((r.first_version, r.first_position), (0, 1));
}
