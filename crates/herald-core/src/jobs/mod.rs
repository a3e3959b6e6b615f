//! The job queue port: what a backend implements so that Herald's durable jobs (the worker pool, cron, async
//! event handlers in `herald-jobs`) run on it.
//!
//! The shape is the event store's: [`JobQueue`] is dyn-compatible (`Arc<dyn JobQueue>`, chosen from a URL at
//! run time), one implementation per backend crate (`herald-memory`, `herald-sqlite`, `herald-postgres`),
//! and one conformance suite (`herald-store-testkit`'s `job_queue_conformance!`) that every backend runs.
//! Backends store and lease rows; they do not decide policy (backoff, what a handler's result means): the
//! worker pool decides and hands the backend a [`Completion`].
//!
//! # Jobs in an append's transaction
//!
//! A database backend implements both ports over the same database, and its [`EventStore`](crate::EventStore)
//! writes job rows in the append's own transaction:
//!
//! - [`EventStore::append_with_jobs`](crate::EventStore::append_with_jobs): the jobs a caller computed (a
//!   repository's receipt job, an app's "send the email" job) commit with the events or not at all; a
//!   refused append (version conflict, duplicate id) enqueues nothing and keeps its typed error;
//! - a [`JobRouter`] given to the store when it opens: the jobs computed from the appended events themselves
//!   (their ids and positions are known only inside the transaction), for every append. `herald-jobs`'s
//!   `AsyncHandlers` is one.
//!
//! This is the sqlx shape rather than a transaction object passed between ports: a transaction that crossed
//! crates would have to be generic over the backend's connection type (no longer dyn-compatible), or be
//! opened by one port and driven by another through a second API. Here each backend keeps its write path
//! whole (SQLite's writer thread, PostgreSQL's pipelined group commit, memory's lock) and only learns one
//! more kind of row. The price: a backend that wants transactional jobs must host the job tables in its own
//! database, which is where they belong anyway (one backup, one connection string).
//!
//! # Time
//!
//! Every "when" (run time, lease end, cron tick) is read from [`JobsConfig::clock`] by the side that decides
//! it: backends read it for leases and housekeeping, callers pass `now_micros` where they enqueue through a
//! store. Tests move a [`ManualClock`](crate::clock::ManualClock).

mod job;
mod records;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::clock::{Clock, SystemClock};
use crate::error::Result;
use crate::event::AppendedEvent;

pub use job::{DEFAULT_MAX_ATTEMPTS, DEFAULT_QUEUE, JobType, MAX_NAME_LEN, NewJob, When};
pub use records::{
    Claimed, Completion, DeadJob, Finish, JobInfo, JobState, ListFilter, QueueStats, Start, Stats,
};

/// Settings of a job queue, the same on every backend (fields a backend has no use for are ignored, as
/// documented on each).
#[derive(Debug, Clone)]
pub struct JobsConfig {
    /// The time source (tests use [`ManualClock`](crate::clock::ManualClock)).
    pub clock: Arc<dyn Clock>,
    /// How long a claimed job stays leased without renewal; workers renew every third of it. A worker that
    /// dies loses its jobs to others after at most this long. Default 30 s.
    pub lease: Duration,
    /// Dead jobs kept at most (oldest dropped first). Default 10,000.
    pub dead_max_jobs: u64,
    /// Dead jobs kept at most this long. Default 180 days.
    pub dead_max_age: Duration,
    /// Every committed job survives power loss (true, default): SQLite `synchronous = FULL`, PostgreSQL
    /// `synchronous_commit = on`. `false`: SQLite NORMAL, PostgreSQL off. (Memory: no effect.)
    pub full_sync: bool,
    /// How long to wait for SQLite's write lock held by another connection. Default 5 s. (SQLite only.)
    pub busy_timeout: Duration,
    /// With `full_sync`: also flush claims, completions and lease renewals (true, default). `false`: only
    /// writes holding an enqueue or a dead-set operation are flushed; a power loss may then forget that a job
    /// started or finished, so it runs again, which at-least-once delivery allows anyway. Faster draining
    /// and lower enqueue → start latency. (SQLite and PostgreSQL.)
    pub durable_progress: bool,
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            clock: Arc::new(SystemClock),
            lease: Duration::from_secs(30),
            dead_max_jobs: 10_000,
            dead_max_age: Duration::from_secs(180 * 24 * 3600),
            full_sync: true,
            busy_timeout: Duration::from_secs(5),
            durable_progress: true,
        }
    }
}

impl JobsConfig {
    /// Sets the clock.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }
    /// Sets the lease.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }
    /// Sets the dead-set limits.
    pub fn dead_limits(mut self, max_jobs: u64, max_age: Duration) -> Self {
        self.dead_max_jobs = max_jobs;
        self.dead_max_age = max_age;
        self
    }
    /// Sets the durability (`true`: every job survives power loss).
    pub fn full_sync(mut self, full: bool) -> Self {
        self.full_sync = full;
        self
    }
    /// Sets whether claims, completions and renewals are flushed too (see [`JobsConfig::durable_progress`]).
    pub fn durable_progress(mut self, durable: bool) -> Self {
        self.durable_progress = durable;
        self
    }
}

/// What a worker asks for when it claims jobs.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    /// The queue to take jobs from.
    pub queue: String,
    /// The claiming worker pool's id: leases are held by it, renewed by it, released by it.
    pub owner: Uuid,
    /// At most this many jobs.
    pub limit: usize,
    /// Job types with a concurrency limit across processes: type → most running at once.
    pub limits: Arc<Vec<(String, u32)>>,
}

/// One tick of a periodic (cron) schedule, and the job it enqueues.
#[derive(Debug, Clone)]
pub struct CronTick {
    /// The schedule's name: a tick is enqueued once per (schedule, tick) across every process.
    pub schedule: String,
    /// The tick's time, µs since the epoch.
    pub tick: i64,
    /// The job to enqueue for it.
    pub job: NewJob,
}

/// The job queue port. Every operation is durable when it returns (see [`JobsConfig::full_sync`]).
///
/// Callers pass validated input ([`NewJob::validate`]; `herald-jobs`'s `JobStore` does it once for every
/// backend), so backends only store and lease. Semantics every backend implements (the conformance suite
/// checks them):
///
/// - **Order.** Within a queue: higher priority first, then enqueue order. Jobs sharing an ordering key are
///   claimed one at a time in enqueue order; a rescheduled (retrying) job keeps its place and holds back
///   later jobs of its key until it is deleted or dead.
/// - **Unique keys.** While a job with a unique key is pending or running, enqueueing another with that key
///   inserts nothing.
/// - **Leases.** A claim leases jobs to `owner` until now + [`JobsConfig::lease`]; the next claim returns an
///   expired lease's job to its queue (or to the dead set, see "Attempts"), and a completion for a lease
///   since lost changes nothing.
/// - **Attempts.** An attempt counts when the job *starts*, not when it is claimed: a worker pool leases
///   more jobs than it has free slots (one claim per batch), and a job that waited in its buffer when the
///   worker died was never run. The pool records starts ([`JobQueue::record`]) in the same batched writes as
///   completions, and a completion records its run's start if that was not recorded yet. When a lease
///   expires:
///   - its start was recorded: the attempt stays counted, with "lease expired" as its error in the job's
///     history; the job goes back to its queue, or to the dead set when no attempt is left;
///   - no start was recorded: the job goes back to its queue untouched (attempt, error and history as they
///     were), in its place, and is marked. Each later claim of it hands it out with
///     [`Claimed::record_start_first`]: the worker records the start and waits for the commit before running
///     it.
///
///   The window between a job starting and its start being committed is what the mark closes: a worker that
///   died in it (killed, or crashed by the job itself) may have run the job without counting the attempt,
///   so the job runs again (at-least-once either way), but it can do so only once uncounted; from then on
///   every run counts before it starts, so a job that kills its worker every time reaches the dead set after
///   at most `max_attempts + 1` runs. A lease is named by owner and attempt: if a lease expires unstarted
///   and the same owner claims the job again, both leases have the same attempt, and a completion of the
///   first applies to the second (the job did run).
/// - **Dead set.** Trimmed to [`JobsConfig::dead_max_jobs`] and [`JobsConfig::dead_max_age`] whenever jobs
///   die.
/// - **Cron.** [`JobQueue::enqueue_cron`] enqueues each (schedule, tick) once, however many processes ask.
#[async_trait]
pub trait JobQueue: Send + Sync + 'static {
    /// Enqueues `jobs` in one transaction (all or none). Returns the ids inserted, in order; a job skipped
    /// for its unique key is left out.
    async fn enqueue(&self, jobs: Vec<NewJob>) -> Result<Vec<Uuid>>;

    /// Returns expired leases to their queue (or the dead set), makes due scheduled jobs available, then
    /// leases up to `request.limit` runnable jobs of the queue: by priority and enqueue order, skipping jobs
    /// behind an earlier job of their ordering key and types at their concurrency limit.
    async fn claim(&self, request: ClaimRequest) -> Result<Vec<Claimed>>;

    /// Records, in one batched write (one transaction, or one pipelined round trip of statements that commit
    /// in order), that `owner` started running the jobs in `started` (each one's attempt counts from now
    /// on) and then finished the runs in `done`. A start or completion for a lease `owner` no longer holds at
    /// that attempt changes nothing.
    async fn record(&self, owner: Uuid, started: Vec<Start>, done: Vec<Completion>) -> Result<()>;

    /// Records finished runs of `owner`'s jobs: [`JobQueue::record`] with no starts.
    async fn complete(&self, owner: Uuid, done: Vec<Completion>) -> Result<()> {
        self.record(owner, Vec::new(), done).await
    }

    /// Extends the lease of every job `owner` holds to now + [`JobsConfig::lease`]. Returns how many.
    async fn renew(&self, owner: Uuid) -> Result<usize>;

    /// Returns every job `owner` still holds to its queue, available now (a started job's attempt counts, an
    /// unstarted one's does not). Returns how many.
    async fn release_all(&self, owner: Uuid) -> Result<usize>;

    /// Counts per queue (a scheduled job whose time has come counts as available) and the dead set's size.
    async fn stats(&self) -> Result<Stats>;

    /// Live jobs matching `filter`, in queue then enqueue order.
    async fn list(&self, filter: ListFilter) -> Result<Vec<JobInfo>>;

    /// One live (pending or running) job by id.
    async fn job(&self, id: Uuid) -> Result<Option<JobInfo>>;

    /// The dead set, most recent first, at most `limit`.
    async fn dead(&self, limit: usize) -> Result<Vec<DeadJob>>;

    /// Moves the dead job `id` (every dead job when `None`) back to its queue, ready now, with a fresh attempt
    /// count and its history kept. Returns how many moved. A unique key taken by a live job is
    /// [`Error::DuplicateJob`](crate::Error::DuplicateJob) and nothing moves.
    async fn retry_dead(&self, id: Option<Uuid>) -> Result<usize>;

    /// Removes a dead job for good. Returns false when there is no such dead job.
    async fn discard_dead(&self, id: Uuid) -> Result<bool>;

    /// Removes a pending job (not a running one). Returns false when there is no such pending job.
    async fn cancel(&self, id: Uuid) -> Result<bool>;

    /// Enqueues the jobs of the cron ticks that no process has enqueued yet, in one transaction; forgets
    /// ticks older than a week before `until`. Returns how many jobs were enqueued.
    async fn enqueue_cron(&self, ticks: Vec<CronTick>, until: i64) -> Result<usize>;

    /// The settings the queue was opened with.
    fn config(&self) -> &JobsConfig;

    /// Notified when jobs may have become runnable: after enqueues through this queue or through the event
    /// store it shares a database with, and, on backends that can see them, other processes' enqueues and
    /// completions that free an ordering key or a limited type's slot. Idle workers wait on it (and poll).
    fn wakeups(&self) -> Arc<Notify>;

    /// Where the jobs are, for logs and `Debug` (a file path, a schema; never a password).
    fn describe(&self) -> String;
}

/// Computes the jobs an append causes from its events, inside the append's transaction: their ids, versions
/// and positions are final there. Given to a store when it opens; called for every append that writes
/// events (not for refused appends, nor for an idempotent retry, which writes nothing), possibly more than
/// once for one append on backends that re-decide a batch (only the last call's jobs are committed). Keep
/// it quick and without side effects: it runs on the store's write path.
pub trait JobRouter: Send + Sync + 'static {
    /// The jobs for `events`, just appended to `stream`.
    fn jobs_for(&self, stream: &str, events: &[AppendedEvent<'_>]) -> Vec<NewJob>;

    /// The job clock's reading (µs since the epoch) for the jobs' enqueue and run times.
    fn now_micros(&self) -> i64;
}

#[async_trait]
impl<Q: JobQueue + ?Sized> JobQueue for Arc<Q> {
    async fn enqueue(&self, jobs: Vec<NewJob>) -> Result<Vec<Uuid>> {
        (**self).enqueue(jobs).await
    }
    async fn claim(&self, request: ClaimRequest) -> Result<Vec<Claimed>> {
        (**self).claim(request).await
    }
    async fn record(&self, owner: Uuid, started: Vec<Start>, done: Vec<Completion>) -> Result<()> {
        (**self).record(owner, started, done).await
    }
    async fn complete(&self, owner: Uuid, done: Vec<Completion>) -> Result<()> {
        (**self).complete(owner, done).await
    }
    async fn renew(&self, owner: Uuid) -> Result<usize> {
        (**self).renew(owner).await
    }
    async fn release_all(&self, owner: Uuid) -> Result<usize> {
        (**self).release_all(owner).await
    }
    async fn stats(&self) -> Result<Stats> {
        (**self).stats().await
    }
    async fn list(&self, filter: ListFilter) -> Result<Vec<JobInfo>> {
        (**self).list(filter).await
    }
    async fn job(&self, id: Uuid) -> Result<Option<JobInfo>> {
        (**self).job(id).await
    }
    async fn dead(&self, limit: usize) -> Result<Vec<DeadJob>> {
        (**self).dead(limit).await
    }
    async fn retry_dead(&self, id: Option<Uuid>) -> Result<usize> {
        (**self).retry_dead(id).await
    }
    async fn discard_dead(&self, id: Uuid) -> Result<bool> {
        (**self).discard_dead(id).await
    }
    async fn cancel(&self, id: Uuid) -> Result<bool> {
        (**self).cancel(id).await
    }
    async fn enqueue_cron(&self, ticks: Vec<CronTick>, until: i64) -> Result<usize> {
        (**self).enqueue_cron(ticks, until).await
    }
    fn config(&self) -> &JobsConfig {
        (**self).config()
    }
    fn wakeups(&self) -> Arc<Notify> {
        (**self).wakeups()
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
}
