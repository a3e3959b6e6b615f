//! Herald's PostgreSQL event store: the backend to use when several processes, on one machine or many, share
//! one event store.
//!
//! ```no_run
//! use herald_core::{EventStore, EventStoreExt, ExpectedVersion, NewEvent, ReadQuery, StreamName};
//! use herald_postgres::PostgresStore;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! // Schema `herald` (created on first use); `?schema=NAME&pool_size=N&max_batch=N` to change the settings.
//! let store = PostgresStore::open_url("postgres://app@db.internal:5432/app").await?;
//! let order = StreamName::new("order-1")?;
//! store
//!     .append(&order, vec![NewEvent::new("OrderPlaced")], ExpectedVersion::NoStream)
//!     .await?;
//! let events = store.read_to_vec(ReadQuery::stream(order)).await?;
//! assert_eq!(events[0].event_type, "OrderPlaced");
//! # Ok::<(), herald_core::Error>(())
//! # }).unwrap();
//! ```
//!
//! # How it works
//!
//! - **Writes** go to one writer task per store handle that owns a dedicated connection and commits concurrent
//!   requests together: one transaction (one WAL flush) per batch, each request with its own checks and its
//!   own result. A batch is **two round trips**: lock the head and look up what the checks need (stream
//!   versions, the events that links name); then the writer decides every request itself, in order, and
//!   sends the batch's net writes as a handful of multi-row `INSERT … SELECT FROM unnest($arrays)` statements
//!   (all the batch's events in one) with `COMMIT`. Requests that arrive during the look-up join the batch.
//!   A writer that is alone (its last commit is still the end of the log) skips the look-up: it decides from
//!   what it remembers and sends lock, a guard statement, the writes and `COMMIT` in **one round trip**; the
//!   guard fails the transaction if anything it assumed changed, and the batch takes the two round trips.
//!   Every statement is prepared once with a generic plan on a session that rules out sequential scans and
//!   hash or merge joins, so nothing is planned per batch and plans stay index lookups as tables grow.
//!   Replies are sent only after `COMMIT` returns (and the commit's announcement is queued, below). Details in
//!   the `writer` module.
//! - **Reads** use a pool of connections ([`PostgresConfig::pool_size`], opened on demand); each page is one
//!   statement. A stream's own events are read from `events` by `(stream, version)`; `stream_entries` holds
//!   links only; `deleted_streams` records up to which position a deleted stream's events left it (events
//!   stay in the global log).
//! - **Schema**: tables live in [`PostgresConfig::schema`] (default `herald`), created on open by embedded,
//!   numbered migrations run under a transaction-scoped advisory lock, so several processes may start at once.
//!   Upgrading a store to migration 2 (this layout) needs every process of an older Herald stopped first: a
//!   trigger refuses their appends and deletes afterwards, with an error that says so.
//! - **Append hooks** ([`hook`]): [`PostgresConfig::with_append_hook`] and [`PostgresStore::append_with`] add
//!   statements (an outbox, a relay's rows) that the writer runs inside the append's transaction, after its events,
//!   so they commit with the append or not at all. Hooks return statements rather than awaiting the
//!   connection, so they go into the same pipeline: a hooked append costs no extra round trip and shares
//!   its batch with the others. A hook statement that fails fails its append only: the writer rolls the
//!   batch back and runs it again without that append.
//! - **Jobs** ([`PostgresJobQueue`]): herald-core's job queue port on the job tables of the store's schema
//!   (created when the store or a queue opens; open one with [`PostgresStore::job_queue`] or
//!   [`PostgresJobQueue::open`]). [`EventStore::append_with_jobs`] and the routers given to
//!   [`PostgresConfig::with_job_router`] enqueue inside the append's transaction, as one more statement of its
//!   batch, with a `NOTIFY` delivered at commit that wakes idle workers in every process; [`insert_jobs`]
//!   does the same in a transaction of your own.
//! - **Live feed**: after each `COMMIT` and before replying, the writer queues a `NOTIFY` on a connection of
//!   its own, without waiting for its answer (not inside the write transaction: a notifying commit holds
//!   PostgreSQL's global notify lock through its WAL flush; that session sets `synchronous_commit = off`,
//!   since a lost notification costs only a poll); every store handle keeps one connection that `LISTEN`s
//!   and moves [`EventStore::watch_head`] when another process commits, within milliseconds.
//!   [`EventStoreExt::follow`](herald_core::EventStoreExt::follow) also polls every 100 ms as a fallback.
//!
//! # Why global positions have no gaps
//!
//! A follower (tail, subscription, projection, relay) reads the global log forward from the position after
//! the last event it saw. With a sequence, two transactions can take positions 7 and 8 and commit in the
//! order 8, 7: a follower that read while only 8 was visible moves past 7 and never sees it. Herald instead
//! **serialises position assignment**: every write transaction, in every process, first locks the single row
//! of the `head` table (`SELECT … FOR UPDATE`), then reads the end of the log (a statement that starts after
//! the lock is granted, so it sees every earlier writer's commit) and gives its events the positions after
//! it. The row lock is held until the transaction ends, and PostgreSQL makes a committed transaction visible
//! before it releases its locks. So the next writer can only take positions after the previous one is
//! committed *and visible*: positions become visible strictly in order, every snapshot holds a gap-free
//! prefix of the log, and a rolled-back transaction leaves no hole (its positions were never visible, and
//! the next writer takes them). The row is locked, never updated, so it does not bloat. The price is that
//! writers of all processes commit one transaction at a time; group commit is what keeps that cheap (one
//! lock, one commit per batch of requests). The same lock makes expected-version checks race-free across
//! processes. `tests/cross_process.rs` proves it: writers in two OS processes append concurrently while a
//! follower must see every position exactly once, in order.
//!
//! # Capabilities
//!
//! | capability | |
//! | --- | --- |
//! | atomic multi-event append, expected versions | yes, also across processes |
//! | links, category reads, time and type filters | yes |
//! | group commit | yes (`max_batch` requests per transaction) |
//! | gap-free global order across processes | yes (serialised position assignment, above) |
//! | live head ([`EventStore::watch_head`]) | commits through this handle at once; other processes' via `LISTEN`/`NOTIFY` |
//! | data and metadata byte for byte | yes (`text` columns, never `jsonb`) |
//! | append hooks (an outbox's rows in the append's transaction) | yes ([`hook`]) |
//! | job queue ([`herald_core::jobs::JobQueue`]) | yes ([`PostgresJobQueue`]: `FOR UPDATE SKIP LOCKED` claims, wake-ups across processes) |
//! | jobs in the append's transaction | yes ([`EventStore::append_with_jobs`], [`PostgresConfig::with_job_router`]) |
//!
//! # Connections
//!
//! Each store handle uses one write connection, one notifying connection (opened at the first commit), one
//! listening connection and up to `pool_size` read connections. A job queue has its own: up to `pool_size`
//! (at least 2), one listening, and a second pool with `durable_progress` off. TLS is not built in
//! (`NoTls`): use it on trusted networks or through a local proxy.

mod config;
pub mod hook;
mod jobs;
mod listen;
mod read;
mod schema;
mod writer;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use herald_core::jobs::{JobsConfig, NewJob};
use herald_core::{
    AppendResult, Error, EventStore, ExpectedVersion, Head, LinkResult, NewEvent, ReadQuery,
    RecordedEvent, Result, StreamInfo, StreamName,
};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio_postgres::NoTls;
use uuid::Uuid;

pub use config::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_BATCH, DEFAULT_POOL_SIZE, DEFAULT_READ_TIMEOUT,
    DEFAULT_SCHEMA, MAX_BATCH_LIMIT, MAX_CONNECT_TIMEOUT_SECS, MAX_POOL_SIZE,
    MAX_READ_TIMEOUT_SECS, MAX_SCHEMA_LEN, PostgresConfig, PostgresUrl, validate_schema_name,
};
pub use hook::{
    AppendExtra, AppendHook, AppendHooks, AppendedEvent, HookError, HookParam, HookWrites,
    MAX_HOOK_SQL_LEN,
};
pub use jobs::{JobRouters, PostgresJobQueue, insert_jobs};
pub use schema::{apply_migrations, error_text};
// For upgrade tests.
#[doc(hidden)]
pub use schema::store_migrations;
/// Re-exported: hook parameters implement [`tokio_postgres::types::ToSql`], so they must name this crate's
/// version of it.
pub use tokio_postgres;

use herald_core::write::WriteRequest;
use writer::Request;

/// Group-commit counters of a store handle (see [`PostgresStore::write_stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriteStats {
    /// Write requests (appends, links, deletes) taken by the writer.
    pub requests: u64,
    /// Transactions the writer ran for them (one per batch, plus one per retry of a batch).
    pub transactions: u64,
    /// Of those, the ones decided from what the writer remembered and committed in one round trip (see
    /// the writer's docs: a writer that is alone skips the look-ups).
    pub one_round_trip: u64,
}

/// The PostgreSQL event store. Share it as `Arc<PostgresStore>` or `Arc<dyn EventStore>`; dropping the last
/// handle lets the writer finish the requests already queued, then stops it and the listener.
///
/// It needs a running Tokio runtime: the writer and the listener are Tokio tasks.
pub struct PostgresStore {
    config: PostgresConfig,
    requests: mpsc::UnboundedSender<Request>,
    reads: read::Reads,
    head: watch::Receiver<Head>,
    counters: Arc<writer::Counters>,
    /// The driver's settings as given (no `search_path`), for the job queues opened on this store.
    connection: tokio_postgres::Config,
    /// The wake-ups of the job queues opened on this store: signalled after `append_with_jobs` commits.
    jobs_wake: Arc<Notify>,
    /// Dropping it stops the listener.
    _stop_listener: oneshot::Sender<()>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Opens the store a `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?schema=S&pool_size=N&max_batch=N]`
    /// URL names (`postgresql://` too; other parameters go to the driver), creating its schema on first use.
    pub async fn open_url(url: &str) -> Result<Self> {
        let url: PostgresUrl = url.parse()?;
        Self::open(&url.connection, url.config).await
    }

    /// Opens the store at `connection` (a URL or `key=value` string without Herald's parameters) with these
    /// settings, applying pending migrations: the store's and the job tables' (so
    /// [`EventStore::append_with_jobs`] and job routers work on any store schema).
    pub async fn open(connection: &str, config: PostgresConfig) -> Result<Self> {
        config.validate()?;
        let pg = schema::pg_config(connection, &config.schema)?;
        let raw: tokio_postgres::Config = connection
            .parse()
            .map_err(|e| Error::invalid(format!("PostgreSQL URL is not valid: {e}")))?;
        let mut write_client = schema::connect(&pg).await?;
        schema::migrate(&mut write_client, &config.schema).await?;
        jobs::migrate(&mut write_client, &config.schema).await?;
        let position: i64 = write_client
            .query_one("SELECT coalesce(max(position), 0) FROM events", &[])
            .await
            .map_err(schema::backend)?
            .get(0);

        let pool = Pool::builder(Manager::from_config(
            pg.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        ))
        .max_size(config.pool_size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .create_timeout(Some(schema::connect_timeout(&pg)))
        .build()
        .map_err(|e| Error::backend(format!("cannot build the read pool: {e}")))?;
        let reads = read::Reads {
            pool,
            server: schema::server(&pg),
            answer_timeout: config.read_timeout,
        };

        let (head_tx, head_rx) = watch::channel(Head {
            position: position as u64,
            commits: 0,
        });
        let head_tx = Arc::new(head_tx);
        let channel = format!("herald_{}", config.schema);
        let instance = Uuid::now_v7().simple().to_string();
        let (stop_tx, stop_rx) = oneshot::channel();
        let listener = listen::Listener {
            pg: pg.clone(),
            channel: channel.clone(),
            instance: instance.clone(),
            head: Arc::clone(&head_tx),
        };
        tokio::spawn(listener.run(stop_rx));

        let (tx, rx) = mpsc::unbounded_channel();
        let counters = Arc::new(writer::Counters::default());
        let writer = writer::Writer {
            pg,
            requests: rx,
            head: head_tx,
            max_batch: config.max_batch,
            counters: Arc::clone(&counters),
            channel,
            instance,
            hooks: jobs::store_hooks(&config),
            delivery_sql: jobs::delivery_statement(&config.schema),
            remembered: None,
            last_batch: 0,
        };
        tokio::spawn(writer.run(write_client));
        tracing::debug!(schema = %config.schema, migrations = schema::latest_version(), "opened herald-postgres store");
        Ok(PostgresStore {
            config,
            requests: tx,
            reads,
            head: head_rx,
            counters,
            connection: raw,
            jobs_wake: Arc::new(Notify::new()),
            _stop_listener: stop_tx,
        })
    }

    /// Opens the job queue on this store's database and schema, with the store's connection settings and
    /// `pool_size` (at least 2): the queue that [`EventStore::append_with_jobs`] and the store's job routers
    /// enqueue into. Its [`wakeups`](herald_core::jobs::JobQueue::wakeups) are signalled at once by this
    /// store's `append_with_jobs` (and, as every queue's, by `NOTIFY` from any process).
    pub async fn job_queue(&self, config: JobsConfig) -> Result<PostgresJobQueue> {
        PostgresJobQueue::connect(
            self.connection.clone(),
            self.config.schema.clone(),
            self.config.pool_size,
            config,
            Arc::clone(&self.jobs_wake),
        )
        .await
    }

    /// The settings in force.
    pub fn config(&self) -> &PostgresConfig {
        &self.config
    }

    /// How many write requests the writer has taken and in how many transactions (batches) it ran them; the
    /// ratio is the average group-commit batch size.
    pub fn write_stats(&self) -> WriteStats {
        WriteStats {
            requests: self.counters.requests.load(Ordering::Relaxed),
            transactions: self.counters.transactions.load(Ordering::Relaxed),
            one_round_trip: self.counters.one_round_trip.load(Ordering::Relaxed),
        }
    }

    /// Like [`EventStore::append`], and runs `extra` inside the append's transaction, after the events and the
    /// [append hooks](crate::hook): the statements it adds commit with the events or not at all, and an
    /// error from it (or from one of its statements) fails this append only (nothing stored,
    /// [`Error::Backend`]). `extra` is not run when the append is refused (version conflict, duplicate) or is
    /// an idempotent retry of an already committed append (which writes nothing).
    pub async fn append_with(
        &self,
        stream: &StreamName,
        events: Vec<NewEvent>,
        expected: ExpectedVersion,
        extra: AppendExtra,
    ) -> Result<AppendResult> {
        self.submit_append(stream, events, expected, Some(extra))
            .await
    }

    /// Validates an append and hands it to the writer.
    async fn submit_append(
        &self,
        stream: &StreamName,
        events: Vec<NewEvent>,
        expected: ExpectedVersion,
        extra: Option<AppendExtra>,
    ) -> Result<AppendResult> {
        self.config
            .limits
            .validate_append(stream, &events, expected)?;
        self.submit(|reply| WriteRequest::Append {
            stream: stream.as_str().to_owned(),
            events,
            expected,
            extra,
            reply,
        })
        .await
    }

    async fn submit<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T>>) -> Request,
    ) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        self.requests.send(make(reply)).map_err(|_| Error::Closed)?;
        // The writer dropping the reply without answering means it stopped: report the store closed.
        answer.await.map_err(|_| Error::Closed)?
    }
}

#[async_trait]
impl EventStore for PostgresStore {
    #[tracing::instrument(name = "herald.store.append", level = "debug", skip_all, fields(stream = %stream, events = events.len()))]
    async fn append(
        &self,
        stream: &StreamName,
        events: Vec<NewEvent>,
        expected: ExpectedVersion,
    ) -> Result<AppendResult> {
        self.submit_append(stream, events, expected, None).await
    }

    #[tracing::instrument(name = "herald.store.link", level = "debug", skip_all, fields(stream = %stream, events = ids.len()))]
    async fn link(
        &self,
        stream: &StreamName,
        ids: &[Uuid],
        expected: ExpectedVersion,
    ) -> Result<LinkResult> {
        self.config.limits.validate_link(stream, ids, expected)?;
        self.submit(|reply| WriteRequest::Link {
            stream: stream.as_str().to_owned(),
            ids: ids.to_vec(),
            expected,
            reply,
        })
        .await
    }

    #[tracing::instrument(name = "herald.store.read", level = "debug", skip_all, fields(scope = ?query.scope))]
    async fn read_page(&self, query: &ReadQuery) -> Result<Vec<RecordedEvent>> {
        query.validate()?;
        read::read_page(&self.reads, query).await
    }

    async fn event(&self, id: Uuid) -> Result<Option<RecordedEvent>> {
        read::event(&self.reads, id).await
    }

    async fn stream_version(&self, stream: &StreamName) -> Result<Option<u64>> {
        read::stream_version(&self.reads, stream.as_str()).await
    }

    async fn streams(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StreamInfo>> {
        self.config.limits.validate_streams(limit)?;
        read::streams(&self.reads, prefix, after, limit).await
    }

    #[tracing::instrument(name = "herald.store.delete", level = "debug", skip_all, fields(stream = %stream))]
    async fn delete_stream(&self, stream: &StreamName, expected: ExpectedVersion) -> Result<()> {
        self.config.limits.validate_delete(expected)?;
        self.submit(|reply| WriteRequest::Delete {
            stream: stream.as_str().to_owned(),
            expected,
            reply,
        })
        .await
    }

    fn watch_head(&self) -> watch::Receiver<Head> {
        self.head.clone()
    }

    /// The jobs go in as one more statement of the append's batch (the queue's insert, with a `NOTIFY`
    /// delivered at commit that wakes the workers of every process), into the job tables of the store's
    /// schema.
    #[tracing::instrument(name = "herald.store.append", level = "debug", skip_all, fields(stream = %stream, events = events.len(), jobs = jobs.len()))]
    async fn append_with_jobs(
        &self,
        stream: &StreamName,
        events: Vec<NewEvent>,
        expected: ExpectedVersion,
        jobs: Vec<NewJob>,
        now_micros: i64,
    ) -> Result<AppendResult> {
        if jobs.is_empty() {
            return self.submit_append(stream, events, expected, None).await;
        }
        let extra = jobs::append_jobs(self.config.schema.clone(), jobs, now_micros);
        let result = self
            .submit_append(stream, events, expected, Some(extra))
            .await?;
        // This process's workers at once; other processes' when the commit's NOTIFY reaches them.
        self.jobs_wake.notify_waiters();
        Ok(result)
    }
}
