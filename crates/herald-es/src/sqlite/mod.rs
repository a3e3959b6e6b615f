//! SQLite implementations: snapshots, checkpoints, dynamic group membership and transactional projections, in
//! the event store's own database file, in tables of their own (`herald_es_snapshots`, `herald_es_checkpoints`,
//! `herald_es_groups`, `herald_es_group_members`, `herald_es_group_fences`, `herald_es_leases`, plus the read
//! model's tables). Each opens its own connection to
//! the file with herald-sqlite's opener ([`herald_sqlite::open_existing`]); herald-sqlite's tables are never
//! touched.
//!
//! Open the herald-sqlite `SqliteStore` on the file **first**: it creates the
//! file and marks it as a Herald database, and these types refuse a file that is not one (so a typo in a path
//! never creates or modifies an unrelated database).
//!
//! [`SqliteProjection`] writes each batch of read-model changes **and** its checkpoint in one transaction on
//! its connection: after a crash, the read model and the checkpoint agree, so every event is applied exactly
//! once. The same transaction checks the run's fencing token ([`crate::lease`]): a second runner of the same
//! name waits for the lease, and a runner that was overtaken (paused past its lease) has its batch refused
//! and rolled back.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::Connection;

use crate::error::{EsError, Result};

mod checkpoint;
mod projection;
mod snapshot;

pub use checkpoint::SqliteCheckpointStore;
pub use projection::{SqliteProjection, SqliteReadModel};
pub use snapshot::SqliteSnapshotStore;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS herald_es_checkpoints (
    name       TEXT    PRIMARY KEY,
    cursor     INTEGER NOT NULL,
    updated_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS herald_es_groups (
    name       TEXT    PRIMARY KEY,
    generation INTEGER NOT NULL,
    members    TEXT    NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS herald_es_group_members (
    group_name   TEXT    NOT NULL,
    member       TEXT    NOT NULL,
    expires_at   INTEGER NOT NULL,
    acknowledged INTEGER NOT NULL,
    PRIMARY KEY (group_name, member)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS herald_es_leases (
    name       TEXT    PRIMARY KEY,
    owner      TEXT    NOT NULL,
    token      INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS herald_es_group_fences (
    name    TEXT    PRIMARY KEY,
    settled INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS herald_es_snapshots (
    stream         TEXT    PRIMARY KEY,
    version        INTEGER NOT NULL,
    event_id       TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    state          TEXT    NOT NULL,
    updated_at     TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) WITHOUT ROWID;
";

fn db_error(what: &'static str) -> impl Fn(rusqlite::Error) -> EsError {
    move |e| EsError::storage(what, e)
}

/// Opens a connection to an existing Herald database and creates this crate's tables, through herald-sqlite's
/// opener: the same pragmas and the same "is this a Herald file" check as the event store's connections. A
/// longer lock wait than the store's default, because projections wait behind the store's group commits.
fn open_connection(path: &Path) -> Result<Connection> {
    let config = herald_sqlite::SqliteConfig::default().busy_timeout(Duration::from_secs(10));
    herald_sqlite::open_existing(path, &config, SCHEMA).map_err(|e| match e {
        herald_core::Error::InvalidInput(message) => EsError::InvalidInput(message),
        other => EsError::storage("opening the SQLite database", other),
    })
}

#[derive(Clone)]
struct Db {
    conn: Arc<Mutex<Connection>>,
}

impl Db {
    fn open(path: &Path) -> Result<Self> {
        Ok(Db {
            conn: Arc::new(Mutex::new(open_connection(path)?)),
        })
    }

    /// Runs `f` on the connection on tokio's blocking pool.
    async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|e| EsError::storage("SQLite task", e))?
    }
}
