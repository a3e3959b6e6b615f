//! [`SqliteSnapshotStore`]: aggregate snapshots in the event store's file.

use std::path::Path;

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};
use uuid::Uuid;

use super::{Db, db_error};
use crate::error::{EsError, Result};
use crate::snapshot::{Snapshot, SnapshotStore};

/// Snapshots in table `herald_es_snapshots` of a Herald SQLite database.
#[derive(Clone)]
pub struct SqliteSnapshotStore {
    db: Db,
}

impl std::fmt::Debug for SqliteSnapshotStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteSnapshotStore")
    }
}

impl SqliteSnapshotStore {
    /// Opens the store in the Herald database at `path` (which must exist).
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let db = tokio::task::spawn_blocking(move || Db::open(&path))
            .await
            .map_err(|e| EsError::storage("SQLite task", e))??;
        Ok(SqliteSnapshotStore { db })
    }

    /// Overwrites a snapshot row unconditionally: for tests that plant corrupt or stale snapshots.
    pub async fn put(&self, snapshot: Snapshot) -> Result<()> {
        self.db
            .call(move |c| {
                c.execute(
                    "INSERT OR REPLACE INTO herald_es_snapshots (stream, version, event_id, schema_version, state)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![
                        snapshot.stream,
                        snapshot.version as i64,
                        snapshot.event_id.to_string(),
                        snapshot.schema_version,
                        snapshot.state
                    ],
                )
                .map_err(db_error("saving a snapshot"))?;
                Ok(())
            })
            .await
    }
}

#[async_trait]
impl SnapshotStore for SqliteSnapshotStore {
    async fn load(&self, stream: &str) -> Result<Option<Snapshot>> {
        let stream = stream.to_owned();
        self.db
            .call(move |c| {
                let row = c
                    .query_row(
                        "SELECT version, event_id, schema_version, state FROM herald_es_snapshots WHERE stream = ?1",
                        [&stream],
                        |r| {
                            Ok((
                                r.get::<_, i64>(0)?,
                                r.get::<_, String>(1)?,
                                r.get::<_, u32>(2)?,
                                r.get::<_, String>(3)?,
                            ))
                        },
                    )
                    .optional()
                    .map_err(db_error("loading a snapshot"))?;
                let Some((version, event_id, schema_version, state)) = row else {
                    return Ok(None);
                };
                let event_id = Uuid::parse_str(&event_id)
                    .map_err(|e| EsError::storage("loading a snapshot", e))?;
                Ok(Some(Snapshot {
                    stream,
                    version: version as u64,
                    event_id,
                    schema_version,
                    state,
                }))
            })
            .await
    }

    async fn save(&self, snapshot: &Snapshot) -> Result<()> {
        let s = snapshot.clone();
        self.db
            .call(move |c| {
                c.execute(
                    "INSERT INTO herald_es_snapshots (stream, version, event_id, schema_version, state)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (stream) DO UPDATE SET version = excluded.version, event_id = excluded.event_id,
                         schema_version = excluded.schema_version, state = excluded.state,
                         updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
                     WHERE excluded.version >= herald_es_snapshots.version",
                    params![
                        s.stream,
                        s.version as i64,
                        s.event_id.to_string(),
                        s.schema_version,
                        s.state
                    ],
                )
                .map_err(db_error("saving a snapshot"))?;
                Ok(())
            })
            .await
    }

    async fn delete(&self, stream: &str) -> Result<()> {
        let stream = stream.to_owned();
        self.db
            .call(move |c| {
                c.execute(
                    "DELETE FROM herald_es_snapshots WHERE stream = ?1",
                    [stream],
                )
                .map_err(db_error("deleting a snapshot"))?;
                Ok(())
            })
            .await
    }
}
