//! [`SqliteJobQueue`]: the job queue port ([`herald_core::jobs::JobQueue`]) on an SQLite file, usually the
//! event store's. This file holds the queue and the port's implementation: which operation is a durable write
//! or a progress write on the writer thread, which is a read, when idle workers are woken. The SQL lives by
//! role beside it (`enqueue.rs`, `lease.rs`, `dead.rs`, `views.rs`), the writer thread in `writer.rs`, the
//! tables in `schema.rs`.
//!
//! The tables sit in the store's file and are created by the store's migrations, so
//! [`SqliteStore::append_with_jobs`](herald_core::EventStore::append_with_jobs) and a store's
//! [job router](crate::SqliteConfig::with_job_router) write job rows in the append's own transaction, with the
//! same insert ([`insert_job`]) as the queue's enqueues.

mod dead;
mod enqueue;
mod lease;
mod routes;
pub(crate) mod schema;
mod views;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use herald_core::clock::micros;
use herald_core::jobs::{
    ClaimRequest, Claimed, Completion, CronTick, DeadJob, JobInfo, JobQueue, JobsConfig,
    ListFilter, NewJob, Start, Stats,
};
use herald_core::{Error, Result};
use rusqlite::Connection;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::config::Durability;
use crate::read::ReadPool;
use crate::schema::{backend, connect_mode, migrate};

pub use enqueue::insert_job;
pub(crate) use enqueue::insert_jobs;
pub(crate) use routes::load_matchers;

/// The durable job queue in an SQLite file: one writer thread with group commit (one transaction and one
/// fsync per batch of concurrent operations), one read connection. Several queues and processes may share a
/// file: their writers take turns on SQLite's write lock ([`JobsConfig::busy_timeout`]).
///
/// Open it with [`SqliteStore::job_queue`](crate::SqliteStore::job_queue) to share the store's wake-ups
/// (jobs enqueued by appends wake this process's idle workers at once), or standalone with
/// [`SqliteJobQueue::open`]. Share it as `Arc<SqliteJobQueue>` or `Arc<dyn JobQueue>`; dropping the last
/// handle lets the writer commit what is queued, then stops it.
///
/// | capability | |
/// | --- | --- |
/// | priorities, unique keys, per-key order, per-type limits, leases, dead set, cron once per tick | yes |
/// | several worker processes | yes (one writer at a time, one machine) |
/// | wake-ups of idle workers | enqueues and releases through this queue, and jobs written by the store it was opened from, at once; other processes' at the workers' poll |
/// | durability | `synchronous = FULL` with [`JobsConfig::full_sync`]; see [`JobsConfig::durable_progress`] |
pub struct SqliteJobQueue {
    path: PathBuf,
    config: JobsConfig,
    wake: Arc<Notify>,
    writer: writer::Writer,
    reads: Arc<ReadPool>,
}

impl std::fmt::Debug for SqliteJobQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteJobQueue")
            .field("path", &self.path)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl SqliteJobQueue {
    /// Opens (creating when missing) the job tables in the SQLite file at `path`, with wake-ups of its own.
    /// The file may be an event store's (the usual case), opened before or after the store.
    pub async fn open(path: impl AsRef<Path>, config: JobsConfig) -> Result<Self> {
        Self::open_with_wakeups(
            path.as_ref().to_path_buf(),
            config,
            Arc::new(Notify::new()),
            false,
        )
        .await
    }

    /// [`SqliteJobQueue::open`], announcing runnable jobs on `wake` (the store's, when opened from one);
    /// `read_only`: the store was opened read-only, so the queue's connections are too.
    pub(crate) async fn open_with_wakeups(
        path: PathBuf,
        config: JobsConfig,
        wake: Arc<Notify>,
        read_only: bool,
    ) -> Result<Self> {
        let durability = if config.full_sync {
            Durability::Full
        } else {
            Durability::Normal
        };
        let (opened, busy_timeout) = (path.clone(), config.busy_timeout);
        let (write, read) = tokio::task::spawn_blocking(move || {
            let mut write = connect_mode(&opened, busy_timeout, durability, read_only)?;
            migrate(&mut write)?;
            let read = connect_mode(&opened, busy_timeout, durability, read_only)?;
            Ok::<_, Error>((write, read))
        })
        .await
        .map_err(|e| Error::backend(format!("job queue open task failed: {e}")))??;
        let writer = writer::Writer::start(write, config.full_sync, config.durable_progress)?;
        tracing::debug!(path = %path.display(), "opened herald-sqlite job queue");
        Ok(SqliteJobQueue {
            path,
            config,
            wake,
            writer,
            reads: Arc::new(ReadPool::new(vec![read])),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The job clock's reading, µs since the epoch.
    fn now(&self) -> i64 {
        self.config.clock.now_micros()
    }

    /// The dead set's limits, for the writes that move jobs into it.
    fn dead_limits(&self) -> lease::DeadLimits {
        (self.config.dead_max_jobs, self.config.dead_max_age)
    }

    /// A write whose batch is always flushed (enqueues, dead-set operations).
    async fn write<T: Send + 'static>(
        &self,
        write: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.writer.write(true, write).await
    }

    /// A progress write (claims, completions, renewals): flushed per [`JobsConfig::durable_progress`].
    async fn write_progress<T: Send + 'static>(
        &self,
        write: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.writer.write(false, write).await
    }

    /// A read on the read connection, on tokio's blocking pool.
    async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T> {
        self.reads
            .run(move |conn| read(conn).map_err(backend))
            .await
    }

    /// Wakes idle workers: jobs may have become runnable.
    fn wake(&self) {
        self.wake.notify_waiters();
    }
}

#[async_trait]
impl JobQueue for SqliteJobQueue {
    async fn enqueue(&self, jobs: Vec<NewJob>) -> Result<Vec<Uuid>> {
        let now = self.now();
        let ids = self
            .write(move |conn| insert_jobs(conn, &jobs, now).map_err(backend))
            .await?;
        self.wake();
        Ok(ids)
    }

    async fn claim(&self, request: ClaimRequest) -> Result<Vec<Claimed>> {
        let clock = Arc::clone(&self.config.clock);
        let lease = micros(self.config.lease);
        let dead_limits = self.dead_limits();
        // "Now" is read on the writer thread: leases start when the claim runs, not when it was queued.
        self.write_progress(move |conn| {
            lease::claim(conn, &request, clock.now_micros(), lease, dead_limits).map_err(backend)
        })
        .await
    }

    async fn record(&self, owner: Uuid, started: Vec<Start>, done: Vec<Completion>) -> Result<()> {
        let clock = Arc::clone(&self.config.clock);
        let dead_limits = self.dead_limits();
        // Waking for completions that free an ordering key or a limited type's slot is the worker pool's
        // business in this process (it knows which of its queues wait); other processes see them at their poll.
        self.write_progress(move |conn| {
            lease::record(
                conn,
                owner,
                &started,
                &done,
                clock.now_micros(),
                dead_limits,
            )
            .map_err(backend)
        })
        .await
    }

    async fn renew(&self, owner: Uuid) -> Result<usize> {
        let clock = Arc::clone(&self.config.clock);
        let lease = micros(self.config.lease);
        self.write_progress(move |conn| {
            let until = clock.now_micros().saturating_add(lease);
            lease::renew(conn, owner, until).map_err(backend)
        })
        .await
    }

    async fn release_all(&self, owner: Uuid) -> Result<usize> {
        let clock = Arc::clone(&self.config.clock);
        let n = self
            .write_progress(move |conn| {
                lease::release_all(conn, owner, clock.now_micros()).map_err(backend)
            })
            .await?;
        // Released jobs are available again, like fresh enqueues.
        self.wake();
        Ok(n)
    }

    async fn stats(&self) -> Result<Stats> {
        let now = self.now();
        self.read(move |conn| views::stats(conn, now)).await
    }

    async fn list(&self, filter: ListFilter) -> Result<Vec<JobInfo>> {
        self.read(move |conn| views::list(conn, &filter)).await
    }

    async fn job(&self, id: Uuid) -> Result<Option<JobInfo>> {
        self.read(move |conn| views::job(conn, id)).await
    }

    async fn dead(&self, limit: usize) -> Result<Vec<DeadJob>> {
        self.read(move |conn| views::dead(conn, limit)).await
    }

    async fn retry_dead(&self, id: Option<Uuid>) -> Result<usize> {
        let now = self.now();
        let n = self
            .write(move |conn| dead::retry_dead(conn, id, now))
            .await?;
        if n > 0 {
            self.wake();
        }
        Ok(n)
    }

    async fn discard_dead(&self, id: Uuid) -> Result<bool> {
        self.write(move |conn| dead::discard_dead(conn, id).map_err(backend))
            .await
    }

    async fn cancel(&self, id: Uuid) -> Result<bool> {
        self.write(move |conn| enqueue::cancel(conn, id).map_err(backend))
            .await
    }

    async fn enqueue_cron(&self, ticks: Vec<CronTick>, until: i64) -> Result<usize> {
        if ticks.is_empty() {
            return Ok(0);
        }
        let now = self.now();
        let n = self
            .write(move |conn| enqueue::enqueue_cron(conn, &ticks, now, until).map_err(backend))
            .await?;
        if n > 0 {
            self.wake();
        }
        Ok(n)
    }

    fn config(&self) -> &JobsConfig {
        &self.config
    }

    fn wakeups(&self) -> Arc<Notify> {
        Arc::clone(&self.wake)
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}
