//! [`SqliteProjection`]: a read model in SQLite tables whose every batch of changes commits with the
//! projection's checkpoint, in one transaction, so the read model applies each event exactly once.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use herald_core::{EventStore, EventStoreExt, ReadQuery, ReadScope, RecordedEvent};
use rusqlite::{Connection, Transaction, TransactionBehavior};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::checkpoint::{SqliteCheckpointStore, check_fence, load_checkpoint, save_checkpoint};
use super::{Db, db_error};
use crate::error::{EsError, Result};
use crate::lease::{Fence, HeldLease, LeaseConfig};
use crate::subscription::{BoxError, Feed, validate_name};

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
/// checkpoint commit in one transaction (exactly-once effect on the read model). One runner per name at a
/// time, in every process opening the file: a run takes the name's lease first and every batch checks its
/// fencing token in the batch's transaction (see [`crate::lease`]).
pub struct SqliteProjection<M> {
    name: String,
    path: PathBuf,
    scope: ReadScope,
    batch_size: usize,
    db: Db,
    model: Arc<M>,
    store: Arc<dyn EventStore>,
    progress: watch::Sender<Option<u64>>,
    lease: LeaseConfig,
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
            lease: LeaseConfig::default(),
        })
    }

    /// How runs hold the projection's lease (default [`LeaseConfig::default`]: 10 s, waiting when another
    /// runner holds it).
    pub fn lease(mut self, config: LeaseConfig) -> Self {
        self.lease = config;
        self
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
    ///
    /// Takes the projection's lease first (waiting while another runner holds it, unless configured to
    /// fail: [`EsError::LeaseHeld`]); ends with [`EsError::Fenced`] when another runner took it over, the
    /// batch in hand rolled back.
    pub async fn run(&self, cancel: &CancellationToken) -> Result<u64> {
        let leases = Arc::new(SqliteCheckpointStore::on(self.db.clone()));
        let Some(lease) = HeldLease::acquire(leases, &self.name, &self.lease, cancel).await? else {
            return Ok(0);
        };
        let result = self.run_leased(&lease, cancel).await;
        lease.release().await;
        result
    }

    async fn run_leased(&self, lease: &HeldLease, cancel: &CancellationToken) -> Result<u64> {
        // Read after the lease is held: the previous holder's last commit is in it.
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
        tracing::debug!(projection = %self.name, token = lease.token(), from = ?start, "projection started");
        let mut applied = 0u64;
        loop {
            let batch = tokio::select! {
                biased;
                batch = feed.next_batch(self.batch_size, cancel) => batch?,
                fenced = lease.lost() => return Err(fenced),
            };
            let Some(batch) = batch else { break };
            let Some(last) = batch.last() else { continue };
            let cursor = if stream_scope {
                last.version
            } else {
                last.position
            };
            let n = batch.len() as u64;
            let (name, model, fence) = (self.name.clone(), self.model.clone(), lease.fence());
            self.db
                .call(move |c| apply_batch(c, &name, &*model, &batch, cursor, &fence))
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

/// One batch: the fencing check, the read model's changes and the checkpoint, in one immediate transaction
/// (the database's write lock is held from the check to the commit, so no other runner can take the lease
/// in between). Any error rolls everything back.
fn apply_batch<M: SqliteReadModel + ?Sized>(
    c: &mut Connection,
    name: &str,
    model: &M,
    batch: &[RecordedEvent],
    cursor: u64,
    fence: &Fence,
) -> Result<()> {
    let err = db_error("projecting a batch");
    let tx = c
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(&err)?;
    check_fence(&tx, fence)?;
    for event in batch {
        model.apply(&tx, event).map_err(|e| EsError::Handler {
            handler: name.to_owned(),
            event_id: event.id,
            message: e.to_string(),
        })?;
    }
    save_checkpoint(&tx, name, cursor).map_err(&err)?;
    tx.commit().map_err(&err)
}
