//! SQLite implementations: snapshots, checkpoints, dynamic group membership and transactional projections, in
//! the event store's own database file, in tables of their own (`herald_es_snapshots`, `herald_es_checkpoints`,
//! `herald_es_groups`, `herald_es_group_members`, plus the read model's tables). Each opens its own connection to
//! the file with herald-sqlite's opener ([`herald_sqlite::open_existing`]); herald-sqlite's tables are never
//! touched.
//!
//! Open the herald-sqlite `SqliteStore` on the file **first**: it creates the
//! file and marks it as a Herald database, and these types refuse a file that is not one (so a typo in a path
//! never creates or modifies an unrelated database).
//!
//! [`SqliteProjection`] writes each batch of read-model changes **and** its checkpoint in one transaction on
//! its connection: after a crash, the read model and the checkpoint agree, so every event is applied exactly
//! once.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use herald_core::{EventStore, EventStoreExt, ReadQuery, ReadScope, RecordedEvent};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::checkpoint::CheckpointStore;
use crate::error::{EsError, Result};
use crate::group::{GroupState, GroupView, Heartbeat, Lease, MembershipStore};
use crate::snapshot::{Snapshot, SnapshotStore};
use crate::subscription::{BoxError, Feed, validate_name};

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

/// Checkpoints in table `herald_es_checkpoints` of a Herald SQLite database; also the [`MembershipStore`] of
/// dynamic consumer groups (tables `herald_es_groups` and `herald_es_group_members`, one transaction per
/// heartbeat, shared by every process opening the file).
#[derive(Clone)]
pub struct SqliteCheckpointStore {
    db: Db,
}

impl std::fmt::Debug for SqliteCheckpointStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteCheckpointStore")
    }
}

impl SqliteCheckpointStore {
    /// Opens the store in the Herald database at `path` (which must exist).
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let db = tokio::task::spawn_blocking(move || Db::open(&path))
            .await
            .map_err(|e| EsError::storage("SQLite task", e))??;
        Ok(SqliteCheckpointStore { db })
    }
}

#[async_trait]
impl CheckpointStore for SqliteCheckpointStore {
    async fn load(&self, name: &str) -> Result<Option<u64>> {
        let name = name.to_owned();
        self.db.call(move |c| load_checkpoint(c, &name)).await
    }

    async fn save(&self, name: &str, cursor: u64) -> Result<()> {
        let name = name.to_owned();
        self.db
            .call(move |c| {
                save_checkpoint(c, &name, cursor).map_err(db_error("saving a checkpoint"))
            })
            .await
    }

    async fn delete(&self, name: &str) -> Result<()> {
        let name = name.to_owned();
        self.db
            .call(move |c| {
                c.execute("DELETE FROM herald_es_checkpoints WHERE name = ?1", [name])
                    .map_err(db_error("deleting a checkpoint"))?;
                Ok(())
            })
            .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let prefix = prefix.to_owned();
        self.db
            .call(move |c| {
                let err = db_error("listing checkpoints");
                let mut stmt = c
                    .prepare(
                        "SELECT name, cursor FROM herald_es_checkpoints WHERE substr(name, 1, length(?1)) = ?1 ORDER BY name",
                    )
                    .map_err(&err)?;
                let rows = stmt
                    .query_map([prefix], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)))
                    .map_err(&err)?;
                rows.collect::<rusqlite::Result<Vec<_>>>().map_err(&err)
            })
            .await
    }
}

fn load_checkpoint(c: &Connection, name: &str) -> Result<Option<u64>> {
    c.query_row(
        "SELECT cursor FROM herald_es_checkpoints WHERE name = ?1",
        [name],
        |r| r.get::<_, i64>(0),
    )
    .optional()
    .map(|v| v.map(|v| v as u64))
    .map_err(db_error("loading a checkpoint"))
}

fn save_checkpoint(c: &Connection, name: &str, cursor: u64) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO herald_es_checkpoints (name, cursor) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET cursor = excluded.cursor,
             updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
        params![name, cursor as i64],
    )?;
    Ok(())
}

fn to_sql(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn from_sql(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn load_group(tx: &Transaction<'_>, group: &str) -> Result<GroupState> {
    let err = db_error("loading a consumer group");
    let row: Option<(i64, String)> = tx
        .query_row(
            "SELECT generation, members FROM herald_es_groups WHERE name = ?1",
            [group],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(&err)?;
    let mut state = GroupState::default();
    if let Some((generation, members)) = row {
        state.generation = from_sql(generation);
        state.members = serde_json::from_str(&members)
            .map_err(|e| EsError::storage("loading a consumer group", e))?;
    }
    let mut stmt = tx
        .prepare(
            "SELECT member, expires_at, acknowledged FROM herald_es_group_members WHERE group_name = ?1",
        )
        .map_err(&err)?;
    let rows = stmt
        .query_map([group], |r| {
            Ok((
                r.get::<_, String>(0)?,
                Lease {
                    expires_at: r.get(1)?,
                    acknowledged: from_sql(r.get(2)?),
                },
            ))
        })
        .map_err(&err)?;
    for row in rows {
        let (member, lease) = row.map_err(&err)?;
        state.leases.insert(member, lease);
    }
    Ok(state)
}

fn store_group(tx: &Transaction<'_>, group: &str, state: &GroupState) -> Result<()> {
    let err = db_error("saving a consumer group");
    let members = serde_json::to_string(&state.members)
        .map_err(|e| EsError::storage("saving a consumer group", e))?;
    tx.execute(
        "INSERT INTO herald_es_groups (name, generation, members) VALUES (?1, ?2, ?3)
         ON CONFLICT (name) DO UPDATE SET generation = excluded.generation, members = excluded.members",
        params![group, to_sql(state.generation), members],
    )
    .map_err(&err)?;
    tx.execute(
        "DELETE FROM herald_es_group_members WHERE group_name = ?1",
        [group],
    )
    .map_err(&err)?;
    for (member, lease) in &state.leases {
        tx.execute(
            "INSERT INTO herald_es_group_members (group_name, member, expires_at, acknowledged)
             VALUES (?1, ?2, ?3, ?4)",
            params![group, member, lease.expires_at, to_sql(lease.acknowledged)],
        )
        .map_err(&err)?;
    }
    Ok(())
}

/// Loads a group, applies `f` and stores it, in one immediate (write-locked) transaction.
fn update_group<R>(
    c: &mut Connection,
    group: &str,
    f: impl FnOnce(&mut GroupState) -> R,
) -> Result<R> {
    let err = db_error("updating a consumer group");
    let tx = c
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(&err)?;
    let mut state = load_group(&tx, group)?;
    let out = f(&mut state);
    store_group(&tx, group, &state)?;
    tx.commit().map_err(&err)?;
    Ok(out)
}

#[async_trait]
impl MembershipStore for SqliteCheckpointStore {
    async fn heartbeat(&self, group: &str, beat: &Heartbeat) -> Result<GroupView> {
        let (group, beat) = (group.to_owned(), beat.clone());
        self.db
            .call(move |c| {
                update_group(c, &group, |state| {
                    state.beat(&beat);
                    state.view()
                })
            })
            .await
    }

    async fn leave(&self, group: &str, member: &str) -> Result<()> {
        let (group, member) = (group.to_owned(), member.to_owned());
        self.db
            .call(move |c| update_group(c, &group, |state| state.leave(&member)))
            .await
    }
}

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

/// A read model in SQLite tables, updated inside the projection's transactions.
pub trait SqliteReadModel: Send + Sync + 'static {
    /// Creates the read model's tables when missing (`CREATE TABLE IF NOT EXISTS`). Runs on open.
    fn setup(&self, tx: &Transaction<'_>) -> rusqlite::Result<()>;
    /// Applies one event inside the batch's transaction. An error rolls the whole batch back.
    fn apply(
        &self,
        tx: &Transaction<'_>,
        event: &RecordedEvent,
    ) -> std::result::Result<(), BoxError>;
    /// Empties the read model (in the same transaction that deletes the checkpoint).
    fn reset(&self, tx: &Transaction<'_>) -> rusqlite::Result<()>;
}

/// A persistent projection into SQLite tables of the event store's own file: each batch of events and the
/// checkpoint commit in one transaction (exactly-once effect on the read model).
pub struct SqliteProjection<M> {
    name: String,
    path: PathBuf,
    scope: ReadScope,
    batch_size: usize,
    db: Db,
    model: Arc<M>,
    store: Arc<dyn EventStore>,
    progress: watch::Sender<Option<u64>>,
}

impl<M> std::fmt::Debug for SqliteProjection<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteProjection")
            .field("name", &self.name)
            .field("path", &self.path)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl<M: SqliteReadModel> SqliteProjection<M> {
    /// Opens projection `name` (its checkpoint key) over `scope`, writing into the Herald database at `path`
    /// (the file of the SQLite event store `store` reads from), and runs the model's setup.
    pub async fn open(
        name: impl Into<String>,
        path: impl AsRef<Path>,
        scope: ReadScope,
        store: Arc<dyn EventStore>,
        model: M,
    ) -> Result<Self> {
        let name = name.into();
        validate_name(&name)?;
        ReadQuery {
            scope: scope.clone(),
            ..ReadQuery::all()
        }
        .validate()?;
        let path = path.as_ref().to_path_buf();
        let model = Arc::new(model);
        let (open_path, setup_model) = (path.clone(), model.clone());
        let db = tokio::task::spawn_blocking(move || -> Result<Db> {
            let db = Db::open(&open_path)?;
            {
                let mut conn = db.conn.lock().unwrap_or_else(|e| e.into_inner());
                let err = db_error("setting up a read model");
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(&err)?;
                setup_model.setup(&tx).map_err(&err)?;
                tx.commit().map_err(&err)?;
            }
            Ok(db)
        })
        .await
        .map_err(|e| EsError::storage("SQLite task", e))??;
        Ok(SqliteProjection {
            name,
            path,
            scope,
            batch_size: 512,
            db,
            model,
            store,
            progress: watch::channel(None).0,
        })
    }

    /// Events per transaction (1 to 10,000; default 512).
    pub fn batch_size(mut self, n: usize) -> Result<Self> {
        if n == 0 || n > herald_core::query::MAX_BATCH_SIZE {
            return Err(EsError::InvalidInput(format!(
                "batch size {n} is out of range"
            )));
        }
        self.batch_size = n;
        Ok(self)
    }

    /// The model.
    pub fn model(&self) -> &Arc<M> {
        &self.model
    }

    /// The stored checkpoint (cursor of the last event applied).
    pub async fn checkpoint(&self) -> Result<Option<u64>> {
        let name = self.name.clone();
        self.db.call(move |c| load_checkpoint(c, &name)).await
    }

    /// A receiver of the last committed cursor (set to the stored checkpoint when a run starts, then after
    /// every batch).
    pub fn progress(&self) -> watch::Receiver<Option<u64>> {
        self.progress.subscribe()
    }

    /// Runs `f` on the projection's connection (to query the read model).
    pub async fn query<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
    ) -> Result<R> {
        self.db
            .call(move |c| f(c).map_err(db_error("querying a read model")))
            .await
    }

    /// Empties the read model and deletes the checkpoint, in one transaction. Stop the runs first.
    pub async fn reset(&self) -> Result<()> {
        let (name, model) = (self.name.clone(), self.model.clone());
        self.db
            .call(move |c| {
                let err = db_error("resetting a projection");
                let tx = c
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(&err)?;
                model.reset(&tx).map_err(&err)?;
                tx.execute("DELETE FROM herald_es_checkpoints WHERE name = ?1", [&name])
                    .map_err(&err)?;
                tx.commit().map_err(&err)
            })
            .await?;
        self.progress.send_replace(None);
        Ok(())
    }

    /// [`SqliteProjection::reset`], then [`SqliteProjection::run`].
    pub async fn rebuild(&self, cancel: &CancellationToken) -> Result<u64> {
        self.reset().await?;
        self.run(cancel).await
    }

    /// Keeps the read model up to date until `cancel`; returns the number of events applied by this run.
    pub async fn run(&self, cancel: &CancellationToken) -> Result<u64> {
        let start = self.checkpoint().await?;
        let mut query = ReadQuery {
            scope: self.scope.clone(),
            ..ReadQuery::all()
        }
        .batch_size(self.batch_size);
        query.from = start.map(|c| c + 1);
        let stream_scope = matches!(self.scope, ReadScope::Stream(_));
        let mut feed = Feed::new(self.store.follow(query));
        self.progress.send_replace(start);
        let mut applied = 0u64;
        while let Some(batch) = feed.next_batch(self.batch_size, cancel).await? {
            let Some(last) = batch.last() else { continue };
            let cursor = if stream_scope {
                last.version
            } else {
                last.position
            };
            let n = batch.len() as u64;
            let (name, model) = (self.name.clone(), self.model.clone());
            self.db
                .call(move |c| {
                    let err = db_error("projecting a batch");
                    let tx = c
                        .transaction_with_behavior(TransactionBehavior::Immediate)
                        .map_err(&err)?;
                    for event in &batch {
                        model.apply(&tx, event).map_err(|e| EsError::Handler {
                            handler: name.clone(),
                            event_id: event.id,
                            message: e.to_string(),
                        })?;
                    }
                    save_checkpoint(&tx, &name, cursor).map_err(&err)?;
                    tx.commit().map_err(&err)
                })
                .await?;
            applied += n;
            self.progress.send_replace(Some(cursor));
            if cancel.is_cancelled() {
                break;
            }
        }
        Ok(applied)
    }
}
