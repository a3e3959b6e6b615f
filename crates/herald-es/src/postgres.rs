//! PostgreSQL implementations: checkpoints, dynamic group membership and transactional projections, in the
//! herald-postgres store's schema, in tables of their own (`herald_es_checkpoints`, `herald_es_leases`,
//! `herald_es_groups`, `herald_es_group_members`, `herald_es_group_fences`, plus the read model's tables).
//! Each opens its own connection with `search_path` set to that schema, so a read model's unqualified table
//! names land there; herald-postgres's tables are never touched.
//!
//! [`PostgresProjection`] writes each batch of read-model changes **and** its checkpoint in one transaction:
//! after a crash they agree, so every event is applied exactly once. The same transaction checks the run's
//! fencing token under a share lock on the lease row (`herald_es_leases`, see [`crate::lease`]): a second
//! runner of the same name waits for the lease, and a runner overtaken while paused (even inside its
//! transaction: it holds no lock the new owner needs) has its batch refused and rolled back.

use std::sync::Arc;

use async_trait::async_trait;
use herald_core::{EventStore, EventStoreExt, ReadQuery, ReadScope, RecordedEvent};
use tokio::sync::{Mutex, watch};
use tokio_postgres::{Client, GenericClient, NoTls, Transaction};
use tokio_util::sync::CancellationToken;

use crate::checkpoint::CheckpointStore;
use crate::error::{EsError, Result};
use crate::group::{GroupState, GroupView, Heartbeat, Lease, MembershipStore};
use crate::lease::{self, Fence, HeldLease, LeaseConfig, LeaseGrant, LeaseRecord};
use crate::subscription::{BoxError, Feed, validate_name};

/// The server's message, code and detail, or the cause (tokio-postgres alone displays only "db error").
fn pg_error(what: &'static str) -> impl Fn(tokio_postgres::Error) -> EsError {
    move |e| EsError::storage(what, herald_postgres::error_text(&e))
}

fn validate_schema(schema: &str) -> Result<()> {
    let ok = !schema.is_empty()
        && schema.len() <= 48
        && !schema.starts_with("pg_")
        && !schema.starts_with(|c: char| c.is_ascii_digit())
        && schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(EsError::InvalidInput(format!(
            "schema name `{schema}` is not valid: 1 to 48 lowercase ASCII letters, digits and `_`, not starting with a digit or `pg_`"
        )))
    }
}

/// This crate's tables, in `{s}` (see [`herald_postgres::apply_migrations`]). Never edit a released script:
/// append a new one. Script 1 uses `IF NOT EXISTS`: stores created before the migrator find their tables.
const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE IF NOT EXISTS {s}.herald_es_checkpoints (
        name       TEXT        PRIMARY KEY,
        cursor     BIGINT      NOT NULL,
        updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
    );
    CREATE TABLE IF NOT EXISTS {s}.herald_es_groups (
        name       TEXT   PRIMARY KEY,
        generation BIGINT NOT NULL,
        members    TEXT[] NOT NULL
    );
    CREATE TABLE IF NOT EXISTS {s}.herald_es_group_members (
        group_name   TEXT   NOT NULL,
        member       TEXT   NOT NULL,
        expires_at   BIGINT NOT NULL,
        acknowledged BIGINT NOT NULL,
        PRIMARY KEY (group_name, member)
    );",
    "
    CREATE TABLE {s}.herald_es_leases (
        name       TEXT   PRIMARY KEY,
        owner      TEXT   NOT NULL,
        token      BIGINT NOT NULL,
        expires_at BIGINT NOT NULL
    );
    CREATE TABLE {s}.herald_es_group_fences (
        name    TEXT   PRIMARY KEY,
        settled BIGINT NOT NULL
    );",
];

/// Connects (`connection`: a tokio-postgres connection string or `postgres://` URL without herald's own
/// parameters), sets `search_path` to `schema` and creates this crate's tables.
async fn connect(connection: &str, schema: &str) -> Result<Client> {
    validate_schema(schema)?;
    let err = pg_error("connecting to PostgreSQL");
    let (mut client, conn) = tokio_postgres::connect(connection, NoTls)
        .await
        .map_err(&err)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::warn!(error = %e, "herald-es PostgreSQL connection ended");
        }
    });
    // The same migrator as the event store's and the job tables' (herald_postgres::apply_migrations): one
    // transaction under advisory locks, so members of a group starting together on a fresh schema (and an
    // event store opened at the same moment) create the schema and tables one at a time.
    herald_postgres::apply_migrations(&mut client, schema, "herald-es", MIGRATIONS).await?;
    client
        .batch_execute(&format!("SET search_path TO {schema}"))
        .await
        .map_err(&err)?;
    Ok(client)
}

async fn load_checkpoint(c: &impl GenericClient, name: &str) -> Result<Option<u64>> {
    let row = c
        .query_opt(
            "SELECT cursor FROM herald_es_checkpoints WHERE name = $1",
            &[&name],
        )
        .await
        .map_err(pg_error("loading a checkpoint"))?;
    Ok(row.map(|r| r.get::<_, i64>(0) as u64))
}

async fn save_checkpoint(
    c: &impl GenericClient,
    name: &str,
    cursor: u64,
) -> std::result::Result<(), tokio_postgres::Error> {
    c.execute(
        "INSERT INTO herald_es_checkpoints (name, cursor) VALUES ($1, $2)
         ON CONFLICT (name) DO UPDATE SET cursor = excluded.cursor, updated_at = now()",
        &[&name, &(cursor as i64)],
    )
    .await
    .map(|_| ())
}

/// Refuses (with [`EsError::Fenced`]) a write whose fence no longer holds. Call it inside the write's
/// transaction: it takes a share lock on the fence's row, so a grant (which locks the row for update) waits
/// for the write's commit, and a write after a grant sees the new token.
async fn check_fence(tx: &Transaction<'_>, fence: &Fence) -> Result<()> {
    let err = pg_error("checking a fencing token");
    match fence {
        Fence::Lease { name, token } => {
            let current = tx
                .query_opt(
                    "SELECT token FROM herald_es_leases WHERE name = $1 FOR SHARE",
                    &[name],
                )
                .await
                .map_err(&err)?
                .map(|r| from_sql(r.get(0)));
            lease::check_token(name, current, *token)
        }
        Fence::Generation { group, generation } => {
            let settled = tx
                .query_opt(
                    "SELECT settled FROM herald_es_group_fences WHERE name = $1 FOR SHARE",
                    &[group],
                )
                .await
                .map_err(&err)?
                .map_or(0, |r| from_sql(r.get(0)));
            lease::check_generation(group, settled, *generation)
        }
    }
}

/// Checkpoints in table `herald_es_checkpoints` of a PostgreSQL schema, with the runners' leases and fencing
/// tokens (`herald_es_leases`); also the [`MembershipStore`] of dynamic consumer groups (tables
/// `herald_es_groups`, `herald_es_group_members` and `herald_es_group_fences`; each heartbeat is one
/// transaction holding the group's row lock, so members on several machines agree on one generation).
pub struct PostgresCheckpointStore {
    client: Arc<Mutex<Client>>,
}

impl std::fmt::Debug for PostgresCheckpointStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PostgresCheckpointStore")
    }
}

impl PostgresCheckpointStore {
    /// Connects and creates the table in `schema` (use the herald-postgres store's schema).
    pub async fn connect(connection: &str, schema: &str) -> Result<Self> {
        Ok(PostgresCheckpointStore {
            client: Arc::new(Mutex::new(connect(connection, schema).await?)),
        })
    }
}

#[async_trait]
impl CheckpointStore for PostgresCheckpointStore {
    async fn load(&self, name: &str) -> Result<Option<u64>> {
        load_checkpoint(&*self.client.lock().await, name).await
    }

    async fn save(&self, name: &str, cursor: u64) -> Result<()> {
        save_checkpoint(&*self.client.lock().await, name, cursor)
            .await
            .map_err(pg_error("saving a checkpoint"))
    }

    async fn save_fenced(&self, name: &str, cursor: u64, fence: &Fence) -> Result<()> {
        let err = pg_error("saving a checkpoint");
        let mut client = self.client.lock().await;
        let tx = client.transaction().await.map_err(&err)?;
        check_fence(&tx, fence).await?;
        save_checkpoint(&tx, name, cursor).await.map_err(&err)?;
        tx.commit().await.map_err(&err)
    }

    async fn acquire_lease(
        &self,
        name: &str,
        owner: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<LeaseGrant> {
        let err = pg_error("acquiring a lease");
        let mut client = self.client.lock().await;
        let tx = client.transaction().await.map_err(&err)?;
        // The row exists before it is locked, so two first grants serialise on it too.
        tx.execute(
            "INSERT INTO herald_es_leases (name, owner, token, expires_at) VALUES ($1, '', 0, $2)
             ON CONFLICT (name) DO NOTHING",
            &[&name, &i64::MIN],
        )
        .await
        .map_err(&err)?;
        let row = tx
            .query_one(
                "SELECT owner, token, expires_at FROM herald_es_leases WHERE name = $1 FOR UPDATE",
                &[&name],
            )
            .await
            .map_err(&err)?;
        let current = LeaseRecord {
            owner: row.get(0),
            token: from_sql(row.get(1)),
            expires_at: row.get(2),
        };
        let record = match lease::grant(Some(&current), owner, now, expires_at) {
            Ok(record) => record,
            Err(held) => return Ok(held),
        };
        tx.execute(
            "UPDATE herald_es_leases SET owner = $2, token = $3, expires_at = $4 WHERE name = $1",
            &[
                &name,
                &record.owner,
                &to_sql(record.token),
                &record.expires_at,
            ],
        )
        .await
        .map_err(&err)?;
        tx.commit().await.map_err(&err)?;
        Ok(LeaseGrant::Granted {
            token: record.token,
        })
    }

    async fn renew_lease(&self, name: &str, token: u64, expires_at: i64) -> Result<()> {
        let renewed = self
            .client
            .lock()
            .await
            .execute(
                "UPDATE herald_es_leases SET expires_at = $3 WHERE name = $1 AND token = $2",
                &[&name, &to_sql(token), &expires_at],
            )
            .await
            .map_err(pg_error("renewing a lease"))?;
        if renewed == 0 {
            return Err(EsError::Fenced {
                name: name.to_owned(),
                token,
            });
        }
        Ok(())
    }

    async fn release_lease(&self, name: &str, token: u64) -> Result<()> {
        self.client
            .lock()
            .await
            .execute(
                "UPDATE herald_es_leases SET expires_at = $3 WHERE name = $1 AND token = $2",
                &[&name, &to_sql(token), &i64::MIN],
            )
            .await
            .map_err(pg_error("releasing a lease"))?;
        Ok(())
    }

    async fn delete(&self, name: &str) -> Result<()> {
        self.client
            .lock()
            .await
            .execute(
                "DELETE FROM herald_es_checkpoints WHERE name = $1",
                &[&name],
            )
            .await
            .map_err(pg_error("deleting a checkpoint"))?;
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let rows = self
            .client
            .lock()
            .await
            .query(
                "SELECT name, cursor FROM herald_es_checkpoints
                 WHERE left(name, length($1)) = $1 ORDER BY name",
                &[&prefix],
            )
            .await
            .map_err(pg_error("listing checkpoints"))?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as u64))
            .collect())
    }
}

fn to_sql(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn from_sql(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl PostgresCheckpointStore {
    /// Loads a group under its row lock, applies `f` and stores it, in one transaction.
    async fn update_group<R>(
        &self,
        group: &str,
        f: impl FnOnce(&mut GroupState) -> R,
    ) -> Result<R> {
        let err = pg_error("updating a consumer group");
        let mut client = self.client.lock().await;
        let tx = client.transaction().await.map_err(&err)?;
        // The row exists before it is locked, so two first heartbeats serialise on it too.
        tx.execute(
            "INSERT INTO herald_es_groups (name, generation, members) VALUES ($1, 0, '{}')
             ON CONFLICT (name) DO NOTHING",
            &[&group],
        )
        .await
        .map_err(&err)?;
        let row = tx
            .query_one(
                "SELECT generation, members FROM herald_es_groups WHERE name = $1 FOR UPDATE",
                &[&group],
            )
            .await
            .map_err(&err)?;
        let mut state = GroupState {
            generation: from_sql(row.get(0)),
            members: row.get(1),
            ..GroupState::default()
        };
        state.settled = tx
            .query_opt(
                "SELECT settled FROM herald_es_group_fences WHERE name = $1",
                &[&group],
            )
            .await
            .map_err(&err)?
            .map_or(0, |r| from_sql(r.get(0)));
        for row in tx
            .query(
                "SELECT member, expires_at, acknowledged FROM herald_es_group_members WHERE group_name = $1",
                &[&group],
            )
            .await
            .map_err(&err)?
        {
            state.leases.insert(
                row.get(0),
                Lease {
                    expires_at: row.get(1),
                    acknowledged: from_sql(row.get(2)),
                },
            );
        }
        let out = f(&mut state);
        tx.execute(
            "UPDATE herald_es_groups SET generation = $2, members = $3 WHERE name = $1",
            &[&group, &to_sql(state.generation), &state.members],
        )
        .await
        .map_err(&err)?;
        tx.execute(
            "INSERT INTO herald_es_group_fences (name, settled) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET settled = excluded.settled",
            &[&group, &to_sql(state.settled)],
        )
        .await
        .map_err(&err)?;
        tx.execute(
            "DELETE FROM herald_es_group_members WHERE group_name = $1",
            &[&group],
        )
        .await
        .map_err(&err)?;
        for (member, lease) in &state.leases {
            tx.execute(
                "INSERT INTO herald_es_group_members (group_name, member, expires_at, acknowledged)
                 VALUES ($1, $2, $3, $4)",
                &[
                    &group,
                    member,
                    &lease.expires_at,
                    &to_sql(lease.acknowledged),
                ],
            )
            .await
            .map_err(&err)?;
        }
        tx.commit().await.map_err(&err)?;
        Ok(out)
    }
}

#[async_trait]
impl MembershipStore for PostgresCheckpointStore {
    async fn heartbeat(&self, group: &str, beat: &Heartbeat) -> Result<GroupView> {
        self.update_group(group, |state| {
            state.beat(beat);
            state.view()
        })
        .await
    }

    async fn leave(&self, group: &str, member: &str) -> Result<()> {
        self.update_group(group, |state| state.leave(member)).await
    }
}

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
