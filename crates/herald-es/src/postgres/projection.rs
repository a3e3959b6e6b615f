//! [`PostgresProjection`]: a read model in PostgreSQL tables whose every batch of changes commits with the
//! projection's checkpoint and its fencing check, in one transaction.

use std::sync::Arc;

use async_trait::async_trait;
use herald_core::{EventStore, EventStoreExt, ReadQuery, ReadScope, RecordedEvent};
use tokio::sync::{Mutex, watch};
use tokio_postgres::{Client, Transaction};
use tokio_util::sync::CancellationToken;

use super::checkpoint::{PostgresCheckpointStore, check_fence, load_checkpoint, save_checkpoint};
use super::{connect, pg_error};
use crate::error::{EsError, Result};
use crate::lease::{HeldLease, LeaseConfig};
use crate::subscription::{BoxError, Feed, validate_name};

/// A read model in PostgreSQL tables, updated inside the projection's transactions.
#[async_trait]
pub trait PostgresReadModel: Send + Sync + 'static {
    /// Creates the read model's tables when missing. Runs on open.
    async fn setup(&self, tx: &Transaction<'_>) -> std::result::Result<(), tokio_postgres::Error>;
    /// Applies one event inside the batch's transaction. An error rolls the whole batch back.
    async fn apply(
        &self,
        tx: &Transaction<'_>,
        event: &RecordedEvent,
    ) -> std::result::Result<(), BoxError>;
    /// Empties the read model (in the same transaction that deletes the checkpoint).
    async fn reset(&self, tx: &Transaction<'_>) -> std::result::Result<(), tokio_postgres::Error>;
}

/// A persistent projection into PostgreSQL tables: each batch of events and the checkpoint commit in one
/// transaction (exactly-once effect on the read model). One runner per name at a time, across processes and
/// machines: a run takes the name's lease first and every batch checks its fencing token in the batch's
/// transaction (see [`crate::lease`]).
pub struct PostgresProjection<M> {
    name: String,
    scope: ReadScope,
    batch_size: usize,
    client: Arc<Mutex<Client>>,
    model: Arc<M>,
    store: Arc<dyn EventStore>,
    progress: watch::Sender<Option<u64>>,
    lease: LeaseConfig,
}

impl<M> std::fmt::Debug for PostgresProjection<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresProjection")
            .field("name", &self.name)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl<M: PostgresReadModel> PostgresProjection<M> {
    /// Opens projection `name` (its checkpoint key) over `scope` of `store`, writing into `schema` through its
    /// own connection, and runs the model's setup.
    pub async fn open(
        name: impl Into<String>,
        connection: &str,
        schema: &str,
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
        let mut client = connect(connection, schema).await?;
        let err = pg_error("setting up a read model");
        let tx = client.transaction().await.map_err(&err)?;
        model.setup(&tx).await.map_err(&err)?;
        tx.commit().await.map_err(&err)?;
        Ok(PostgresProjection {
            name,
            scope,
            batch_size: 512,
            client: Arc::new(Mutex::new(client)),
            model: Arc::new(model),
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

    /// The stored checkpoint.
    pub async fn checkpoint(&self) -> Result<Option<u64>> {
        load_checkpoint(&*self.client.lock().await, &self.name).await
    }

    /// A receiver of the last committed cursor (set to the stored checkpoint when a run starts, then after
    /// every batch).
    pub fn progress(&self) -> watch::Receiver<Option<u64>> {
        self.progress.subscribe()
    }

    /// Runs queries on the projection's connection (to read the read model).
    pub async fn with_client<R>(
        &self,
        f: impl AsyncFnOnce(&Client) -> std::result::Result<R, tokio_postgres::Error>,
    ) -> Result<R> {
        let client = self.client.lock().await;
        f(&client).await.map_err(pg_error("querying a read model"))
    }

    /// Empties the read model and deletes the checkpoint, in one transaction. Stop the runs first.
    pub async fn reset(&self) -> Result<()> {
        let mut client = self.client.lock().await;
        let err = pg_error("resetting a projection");
        let tx = client.transaction().await.map_err(&err)?;
        self.model.reset(&tx).await.map_err(&err)?;
        tx.execute(
            "DELETE FROM herald_es_checkpoints WHERE name = $1",
            &[&self.name],
        )
        .await
        .map_err(&err)?;
        tx.commit().await.map_err(&err)?;
        self.progress.send_replace(None);
        Ok(())
    }

    /// [`PostgresProjection::reset`], then [`PostgresProjection::run`].
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
        // Lease operations share the projection's connection.
        let leases = Arc::new(PostgresCheckpointStore {
            client: self.client.clone(),
        });
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
        let fence = lease.fence();
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
            let mut client = self.client.lock().await;
            let err = pg_error("projecting a batch");
            let tx = client.transaction().await.map_err(&err)?;
            for event in &batch {
                self.model
                    .apply(&tx, event)
                    .await
                    .map_err(|e| EsError::Handler {
                        handler: self.name.clone(),
                        event_id: event.id,
                        message: e.to_string(),
                    })?;
            }
            // Checked last, under a share lock held to the commit: a runner paused anywhere in the batch is
            // refused if another took the lease meanwhile, and its read-model changes roll back with it.
            check_fence(&tx, &fence).await?;
            save_checkpoint(&tx, &self.name, cursor)
                .await
                .map_err(&err)?;
            tx.commit().await.map_err(&err)?;
            drop(client);
            applied += batch.len() as u64;
            self.progress.send_replace(Some(cursor));
            if cancel.is_cancelled() {
                break;
            }
        }
        Ok(applied)
    }
}
