//! Herald's embedded event store: one SQLite file, WAL mode, durable by default, with group commit.
//!
//! ```
//! use herald_core::{EventStore, EventStoreExt, ExpectedVersion, NewEvent, ReadQuery, StreamName};
//! use herald_sqlite::SqliteStore;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let store = SqliteStore::open_temporary().await?;
//! let order = StreamName::new("order-1")?;
//! let result = store
//!     .append(&order, vec![NewEvent::new("OrderPlaced")], ExpectedVersion::NoStream)
//!     .await?;
//! assert_eq!((result.first_version, result.first_position), (0, 1));
//! let events = store.read_to_vec(ReadQuery::stream(order)).await?;
//! assert_eq!(events[0].event_type, "OrderPlaced");
//! # Ok::<(), herald_core::Error>(())
//! # }).unwrap();
//! ```
//!
//! # How it works
//!
//! - **Writes** go to one writer thread that owns the write connection and commits concurrent requests
//!   together: one `BEGIN IMMEDIATE … COMMIT` (one fsync) per batch, each request with its own
//!   expected-version check and result; a refused request undoes only its own rows (see `writer.rs`). Replies
//!   are sent only after `COMMIT` returns.
//! - **Checkpoints** of the WAL run on their own thread and connection, woken by a WAL hook, so they do
//!   not stall group commits (see `checkpoint.rs`).
//! - **Reads** use a pool of connections on tokio's blocking pool; WAL readers never wait for the writer.
//! - **Schema** migrations are embedded and applied on open (`PRAGMA user_version`), under `BEGIN IMMEDIATE`,
//!   so several processes may open the same file at once. Several stores (or processes) may share one file:
//!   their writers serialise on SQLite's write lock (`busy_timeout`), positions stay contiguous.
//! - **Jobs** live in the same file: the open creates the job tables too. [`SqliteJobQueue`] implements the
//!   job queue port ([`herald_core::JobQueue`]); [`EventStore::append_with_jobs`] and a
//!   [job router](SqliteConfig::with_job_router) write job rows in the append's own transaction, and the store
//!   wakes the queues opened with [`SqliteStore::job_queue`] after such commits.
//!
//! # Durability
//!
//! | [`Durability`] | SQLite | an acknowledged append survives |
//! | --- | --- | --- |
//! | `Full` (default) | WAL, `synchronous = FULL` | process kill, OS crash, power loss |
//! | `Normal` (faster) | WAL, `synchronous = NORMAL` | process kill (the last commits may be lost on power loss) |
//!
//! # Capabilities
//!
//! | capability | |
//! | --- | --- |
//! | atomic multi-event append, expected versions | yes |
//! | links, category reads, time and type filters | yes |
//! | group commit | yes (`max_batch` requests per transaction) |
//! | live head ([`EventStore::watch_head`]) | commits through this handle; other processes' commits are seen by polling followers |
//! | several processes on one file | yes (one machine; not on network file systems) |
//! | job queue ([`SqliteJobQueue`]) | yes, in the store's file |
//! | jobs in an append's transaction ([`EventStore::append_with_jobs`], job router) | yes |

mod checkpoint;
mod config;
mod error;
pub mod hook;
mod jobs;
mod read;
mod schema;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

use async_trait::async_trait;
use herald_core::{
    AppendResult, Error, EventStore, ExpectedVersion, Head, JobsConfig, LinkResult, NewEvent,
    NewJob, ReadQuery, RecordedEvent, Result, StreamInfo, StreamName,
};
use tokio::sync::{Notify, oneshot, watch};
use uuid::Uuid;

pub use config::{
    DEFAULT_BUSY_TIMEOUT, DEFAULT_MAX_BATCH, DEFAULT_READ_CONNECTIONS, Durability, MAX_BATCH_LIMIT,
    MAX_BUSY_TIMEOUT, MAX_READ_CONNECTIONS, SqliteConfig, SqliteUrl,
};

pub use hook::{AppendExtra, AppendHook, AppendedEvent, JobRouting};
pub use jobs::{SqliteJobQueue, insert_job};
/// Re-exported: hooks receive a [`rusqlite::Connection`], so they must name this crate's version of it.
pub use rusqlite;
pub use schema::{APPLICATION_ID, open_existing};

use herald_core::write::WriteRequest;
use read::ReadPool;
use writer::Request;

/// Group-commit counters of a store handle (see [`SqliteStore::write_stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriteStats {
    /// Write requests (appends, links, deletes) taken by the writer.
    pub requests: u64,
    /// Transactions the writer ran for them (one per batch).
    pub transactions: u64,
}

/// The SQLite event store. Share it as `Arc<SqliteStore>` or `Arc<dyn EventStore>`; dropping the last handle
/// lets the writer finish the requests already queued, then stops it and closes the file.
pub struct SqliteStore {
    path: PathBuf,
    /// Opened read-only ([`SqliteConfig::read_only`], or a file this process cannot write): writes are
    /// refused before they reach the writer.
    read_only: bool,
    config: SqliteConfig,
    requests: Option<mpsc::Sender<Request>>,
    writer: Option<JoinHandle<()>>,
    checkpointer: Option<JoinHandle<()>>,
    reads: Arc<ReadPool>,
    head: watch::Receiver<Head>,
    counters: Arc<writer::Counters>,
    /// Notified after commits that wrote jobs; shared with the job queues opened by [`SqliteStore::job_queue`].
    job_wake: Arc<Notify>,
    /// Keeps the directory of a temporary store alive; removed after the writer stops.
    _temp: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating when missing) the database file at `path` and applies pending migrations.
    pub async fn open(path: impl AsRef<Path>, config: SqliteConfig) -> Result<Self> {
        Self::open_inner(path.as_ref().to_path_buf(), config, None).await
    }

    /// Opens the database a `sqlite://PATH[?durability=full|normal&read_connections=N&max_batch=N]` URL names
    /// (`sqlite://herald.db`: relative path, `sqlite:///abs/herald.db`: absolute).
    pub async fn open_url(url: &str) -> Result<Self> {
        let url: SqliteUrl = url.parse()?;
        Self::open(url.path, url.config).await
    }

    /// A store in a fresh temporary directory, removed when the store is dropped: for tests and demos.
    /// Uses [`Durability::Normal`] (nothing to keep across a power loss).
    pub async fn open_temporary() -> Result<Self> {
        Self::open_temporary_with(SqliteConfig::default().durability(Durability::Normal)).await
    }

    /// Like [`SqliteStore::open_temporary`] with explicit settings.
    pub async fn open_temporary_with(config: SqliteConfig) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("herald-sqlite-")
            .tempdir()
            .map_err(|e| Error::backend(format!("cannot create a temporary directory: {e}")))?;
        let path = dir.path().join("herald.db");
        Self::open_inner(path, config, Some(dir)).await
    }

    async fn open_inner(
        path: PathBuf,
        config: SqliteConfig,
        temp: Option<tempfile::TempDir>,
    ) -> Result<Self> {
        config.validate()?;
        let (path2, config2) = (path.clone(), config.clone());
        let (write_conn, read_conns, position, checkpointer, read_only) =
            tokio::task::spawn_blocking(move || {
                let connect = || {
                    schema::connect_mode(
                        &path2,
                        config2.busy_timeout,
                        config2.durability,
                        config2.read_only,
                    )
                };
                let mut write_conn = connect()?;
                schema::migrate(&mut write_conn)?;
                let read_only = schema::is_read_only(&write_conn)?;
                let checkpointer = checkpoint::start(&mut write_conn, &path2, &config2)?;
                let (position, _) = writer::read_tail(&write_conn).map_err(schema::backend)?;
                let read_conns = (0..config2.read_connections)
                    .map(|_| {
                        let conn = connect()?;
                        conn.pragma_update(None, "query_only", true)
                            .map_err(schema::backend)?;
                        Ok(conn)
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok::<_, Error>((write_conn, read_conns, position, checkpointer, read_only))
            })
            .await
            .map_err(|e| Error::backend(format!("open task failed: {e}")))??;

        let (head_tx, head_rx) = watch::channel(Head {
            position,
            commits: 0,
        });
        let (tx, rx) = mpsc::channel();
        let max_batch = config.max_batch;
        let job_wake = Arc::new(Notify::new());
        let side = hook::AppendSide {
            hooks: config.append_hooks.clone(),
            router: config.job_router.0.clone(),
            job_wake: Arc::clone(&job_wake),
        };
        let counters = Arc::new(writer::Counters::default());
        let writer_counters = Arc::clone(&counters);
        let writer = std::thread::Builder::new()
            .name("herald-sqlite-writer".to_owned())
            .spawn(move || writer::run(write_conn, rx, head_tx, max_batch, writer_counters, side))
            .map_err(|e| Error::backend(format!("cannot start the writer thread: {e}")))?;
        tracing::debug!(path = %path.display(), schema = schema::latest_version(), read_only, "opened herald-sqlite store");
        Ok(SqliteStore {
            path,
            read_only,
            config,
            requests: Some(tx),
            writer: Some(writer),
            checkpointer: Some(checkpointer),
            reads: Arc::new(ReadPool::new(read_conns)),
            head: head_rx,
            counters,
            job_wake,
            _temp: temp,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the store was opened read-only ([`SqliteConfig::read_only`], or a file this process cannot
    /// write): reads work, writes are refused with [`Error::Unsupported`].
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// The settings in force.
    pub fn config(&self) -> &SqliteConfig {
        &self.config
    }

    /// How many write requests the writer has taken and in how many transactions (batches) it ran them; the
    /// ratio is the average group-commit batch size.
    pub fn write_stats(&self) -> WriteStats {
        WriteStats {
            requests: self.counters.requests.load(Ordering::Relaxed),
            transactions: self.counters.transactions.load(Ordering::Relaxed),
        }
    }

    /// Stops accepting writes, lets the writer commit what is queued, and waits for it to stop without
    /// blocking the async runtime. Dropping the store does the same, blocking the dropping thread briefly.
    pub async fn close(mut self) {
        self.requests.take();
        let threads = [self.writer.take(), self.checkpointer.take()];
        let _ = tokio::task::spawn_blocking(move || {
            // The writer first: its connection's end is what stops the checkpointer.
            for thread in threads.into_iter().flatten() {
                let _ = thread.join();
            }
        })
        .await;
    }

    /// Like [`EventStore::append`], and runs `extra` inside the append's savepoint, after the events and the
    /// [append hooks](crate::hook): what it writes commits with the events or not at all, and an error from it
    /// fails this append (nothing stored). `extra` is not run when the append is refused (version conflict,
    /// duplicate) or is an idempotent retry of an already committed append (which writes nothing).
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

    /// Opens the job queue in this store's file (its tables exist: the store's open created them), sharing the
    /// store's job wake-ups: the queue's [`JobQueue::wakeups`](herald_core::JobQueue::wakeups) is notified
    /// after every commit of this store that wrote jobs ([`EventStore::append_with_jobs`], the
    /// [job router](SqliteConfig::with_job_router)), so this process's idle workers start them at once. The
    /// queue has its own connections and writer thread; it may outlive the store (not a temporary store's
    /// file, which is removed with the store).
    pub async fn job_queue(&self, config: JobsConfig) -> Result<SqliteJobQueue> {
        SqliteJobQueue::open_with_wakeups(
            self.path.clone(),
            config,
            Arc::clone(&self.job_wake),
            self.read_only,
        )
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
        if self.read_only {
            return Err(Error::Unsupported {
                operation: "writing",
                backend: "read-only SQLite store (opened with mode=ro, or a file this process cannot write)",
            });
        }
        let (reply, answer) = oneshot::channel();
        let requests = self.requests.as_ref().ok_or(Error::Closed)?;
        requests.send(make(reply)).map_err(|_| Error::Closed)?;
        // The writer dropping the reply without answering means it died: report the store closed.
        answer.await.map_err(|_| Error::Closed)?
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // Closing the channel ends the writer's loop once it has drained the queue.
        self.requests.take();
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!("herald-sqlite writer thread panicked");
        }
        // The writer's connection is closed, so the checkpointer has been told to stop.
        if let Some(checkpointer) = self.checkpointer.take() {
            let _ = checkpointer.join();
        }
    }
}

#[async_trait]
impl EventStore for SqliteStore {
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
        let query = query.clone();
        self.reads
            .run(move |conn| read::read_page(conn, &query))
            .await
    }

    async fn event(&self, id: Uuid) -> Result<Option<RecordedEvent>> {
        self.reads.run(move |conn| read::event(conn, id)).await
    }

    async fn stream_version(&self, stream: &StreamName) -> Result<Option<u64>> {
        let stream = stream.as_str().to_owned();
        self.reads
            .run(move |conn| read::stream_version(conn, &stream))
            .await
    }

    async fn streams(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StreamInfo>> {
        self.config.limits.validate_streams(limit)?;
        let prefix = prefix.to_owned();
        let after = after.map(str::to_owned);
        self.reads
            .run(move |conn| read::streams(conn, &prefix, after.as_deref(), limit))
            .await
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
            // Nothing to enqueue: a plain append, without the extra's savepoint.
            return self.submit_append(stream, events, expected, None).await;
        }
        // The extra runs only when the append writes its events, so a refused append or an idempotent retry
        // leaves this false and wakes nobody.
        let wrote_jobs = Arc::new(AtomicBool::new(false));
        let wrote = Arc::clone(&wrote_jobs);
        let extra: AppendExtra = Box::new(move |conn, _| {
            let inserted = jobs::insert_jobs(conn, &jobs, now_micros)?;
            wrote.store(!inserted.is_empty(), Ordering::Relaxed);
            Ok(())
        });
        let result = self
            .submit_append(stream, events, expected, Some(extra))
            .await?;
        // The reply comes after COMMIT: the jobs are durable and visible to the workers being woken.
        if wrote_jobs.load(Ordering::Relaxed) {
            self.job_wake.notify_waiters();
        }
        Ok(result)
    }
}
