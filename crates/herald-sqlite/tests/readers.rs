//! Readers never need the writer's lock: opening a store whose file is already at this build's schema writes
//! nothing, so a write transaction held elsewhere (another process's writer, a backup tool) does not stop a
//! reader from opening, reading and following; and a file opened read-only (`mode=ro`) is read without being
//! modified, while writes are refused with a typed error. (A file the process may not write at all is tested
//! through the CLI, which can drop root: `herald-cli/tests/sqlite_readers.rs`.)

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use herald_core::{
    Error, EventStore, EventStoreExt, ExpectedVersion, NewEvent, ReadQuery, StreamName,
};
use herald_sqlite::{SqliteConfig, SqliteStore};

/// The longest any single wait may take before it counts as a hang.
const WAIT: Duration = Duration::from_secs(20);

/// A store file with `n` events, closed.
async fn file_with_events(path: &Path, n: usize) {
    let store = SqliteStore::open(path, SqliteConfig::default())
        .await
        .unwrap();
    let events = (0..n).map(|_| NewEvent::new("Happened")).collect();
    store
        .append(
            &StreamName::new("s-1").unwrap(),
            events,
            ExpectedVersion::Any,
        )
        .await
        .unwrap();
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_opens_reads_and_follows_while_a_write_transaction_is_held() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("held.db");
    file_with_events(&path, 3).await;
    // Another connection holds the write lock, with a write in progress, for the whole test.
    let holder = rusqlite::Connection::open(&path).unwrap();
    holder
        .execute_batch("BEGIN IMMEDIATE; CREATE TABLE scratch (x); INSERT INTO scratch VALUES (1);")
        .unwrap();

    // A short lock wait: if the open waited for the lock it would fail after it with "database is locked".
    let config = SqliteConfig::default().busy_timeout(Duration::from_millis(500));
    let store = tokio::time::timeout(WAIT, SqliteStore::open(&path, config))
        .await
        .expect("the open hangs")
        .expect("opening a current file must not need the write lock");
    let read = tokio::time::timeout(WAIT, store.read_to_vec(ReadQuery::all()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.len(), 3);
    let mut follow = store.follow(ReadQuery::all());
    for i in 0..3 {
        let event = tokio::time::timeout(WAIT, follow.next())
            .await
            .unwrap_or_else(|_| panic!("event {i} not followed within {WAIT:?}"))
            .unwrap()
            .unwrap();
        assert_eq!(event.position, i + 1);
    }
    drop(follow);
    // The held transaction is still the other connection's, untouched.
    holder.execute_batch("ROLLBACK").unwrap();
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_opened_read_only_reads_and_never_writes_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ro.db");
    file_with_events(&path, 2).await;
    let before = std::fs::read(&path).unwrap();

    let url = format!("sqlite://{}?mode=ro", path.display());
    let store = SqliteStore::open_url(&url).await.unwrap();
    assert!(store.is_read_only());
    assert_eq!(store.read_to_vec(ReadQuery::all()).await.unwrap().len(), 2);
    let refused = store
        .append(
            &StreamName::new("s-1").unwrap(),
            vec![NewEvent::new("Nope")],
            ExpectedVersion::Any,
        )
        .await
        .unwrap_err();
    assert!(matches!(refused, Error::Unsupported { .. }), "{refused:?}");
    store.close().await;
    assert!(
        std::fs::read(&path).unwrap() == before,
        "a read-only open changed the file"
    );
    // Nothing was written: a writable open still finds the two events only.
    let store = SqliteStore::open(&path, SqliteConfig::default())
        .await
        .unwrap();
    assert_eq!(store.read_to_vec(ReadQuery::all()).await.unwrap().len(), 2);
}

#[tokio::test]
async fn read_only_needs_an_existing_current_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.db");
    let url = format!("sqlite://{}?mode=ro", missing.display());
    assert!(SqliteStore::open_url(&url).await.is_err());
    assert!(!missing.exists(), "a read-only open created the file");
    for bad in ["mode=readonly", "mode="] {
        let err = SqliteStore::open_url(&format!("sqlite://{}?{bad}", missing.display()))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)), "{bad}: {err}");
    }
}

#[tokio::test]
async fn open_existing_with_its_tables_in_place_needs_no_write_lock() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tables.db");
    file_with_events(&path, 1).await;
    let config = SqliteConfig::default().busy_timeout(Duration::from_millis(300));
    let tables = "CREATE TABLE IF NOT EXISTS side_table (k TEXT PRIMARY KEY, v INTEGER NOT NULL);";
    // The first open creates the table.
    drop(herald_sqlite::open_existing(&path, &config, tables).unwrap());
    let holder = rusqlite::Connection::open(&path).unwrap();
    holder
        .execute_batch("BEGIN IMMEDIATE; CREATE TABLE scratch (x); INSERT INTO scratch VALUES (1);")
        .unwrap();
    let conn = herald_sqlite::open_existing(&path, &config, tables)
        .expect("the tables exist: opening must not wait for the write lock");
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM side_table", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 0);
    holder.execute_batch("ROLLBACK").unwrap();
}
