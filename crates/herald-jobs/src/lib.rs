//! Herald's durable jobs and async event handlers (the Sidekiq / ActiveJob analogue, with what Sidekiq OSS
//! lacks: no job lost on a crash, jobs enqueued in the same transaction as event appends, unique jobs,
//! per-key ordering, cron with time zones, per-type concurrency limits).
//!
//! This crate is backend-free: the worker pool, cron and async event handlers run on the job-queue port
//! ([`JobQueue`], in herald-core) of whichever backend they are given — `herald_memory::InMemoryJobQueue`,
//! `herald_sqlite::SqliteJobQueue` (the SQLite file of the events), `herald_postgres::PostgresJobQueue` (the
//! PostgreSQL schema of the events), or `herald::open(url)`, which picks by URL. Every backend runs the same
//! conformance suite (`herald-store-testkit`'s `job_queue_conformance!`).
//!
//! ```
//! use herald_jobs::{JobResult, JobStore, JobType, JobsConfig, NewJob, WorkerPool};
//! use tokio_util::sync::CancellationToken;
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct SendWelcome { email: String }
//! impl JobType for SendWelcome { const NAME: &'static str = "send_welcome"; }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let jobs = JobStore::from(herald_memory::InMemoryJobQueue::new(JobsConfig::default()));
//! let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
//! let stop = CancellationToken::new();
//! let pool = WorkerPool::builder(jobs.clone())
//!     .queue("default", 10)
//!     .handle(move |job: SendWelcome, ctx| {
//!         let tx = tx.clone();
//!         async move { tx.send((job.email, ctx.attempt)).unwrap(); JobResult::Success }
//!     })
//!     .start(stop.clone());
//! jobs.enqueue(NewJob::typed(&SendWelcome { email: "ada@example.com".into() })?).await?;
//! assert_eq!(rx.recv().await, Some(("ada@example.com".to_owned(), 1)));
//! stop.cancel();
//! pool.join().await;
//! # Ok::<(), herald_jobs::Error>(())
//! # }).unwrap();
//! ```
//!
//! # Semantics
//!
//! - **Durable enqueue.** `enqueue` returns after the job is committed (see [`JobsConfig::full_sync`]).
//! - **Transactional enqueue.** [`JobStore::append_with_jobs`] (jobs the caller computed) and
//!   [`AsyncHandlers`] (a [`JobRouter`](herald_core::JobRouter) the event store calls for every append) write
//!   jobs in the same transaction as the events: no event without its jobs, no job for a refused or
//!   rolled-back append, and a refused append keeps its typed error ([`Error::WrongExpectedVersion`]).
//! - **At-least-once.** A claimed job is leased ([`JobsConfig::lease`]) and the pool renews the lease. If the
//!   worker dies, the lease expires and the job runs again with the next attempt number; handlers get the job
//!   id and attempt in [`JobContext`] to be idempotent. A lease expiring on the last attempt sends the job to
//!   the dead set.
//! - **Order.** Within a queue: higher priority first, then enqueue order. Jobs sharing an ordering key run one
//!   at a time in enqueue order; a retrying job keeps its place and holds back later jobs of its key until it
//!   succeeds, is discarded or dies (a dead job no longer blocks its key).
//! - **Unique jobs.** While a job with a unique key is pending or running, enqueueing another with that key
//!   enqueues nothing (`enqueue` returns `None`).
//! - **Retries.** [`JobResult::Fail`] and [`JobResult::Retry`] count as attempts and reschedule after the job
//!   type's [`Backoff`] (Sidekiq's by default) or the given delay; with no attempt left the job goes to the dead
//!   set with its error history. Arguments that do not deserialize go to the dead set at once.
//! - **Dead set.** [`JobStore::dead`], [`JobStore::retry_dead`], [`JobStore::retry_all_dead`],
//!   [`JobStore::discard_dead`]; trimmed to [`JobsConfig::dead_max_jobs`] and [`JobsConfig::dead_max_age`].
//! - **Wake-ups.** Idle workers wait on the queue's [`JobQueue::wakeups`] (enqueues through this process, and
//!   on PostgreSQL `LISTEN`/`NOTIFY` from every process) and poll ([`WorkerPoolBuilder::poll_interval`]).
//! - **Observability.** Every run is an instrumentation event [`JOB_RUN_EVENT`] on herald-notify's global
//!   notifier with a [`JobRun`] payload (id, type, queue, attempt, duration, outcome, metadata); enqueue,
//!   claim and complete are `tracing` spans named `herald.jobs.enqueue`, `herald.jobs.claim`,
//!   `herald.jobs.complete`.
//! - **Time.** Everything scheduled reads the [`Clock`] in [`JobsConfig`]; tests use [`ManualClock`].
//!
//! # Where things are
//!
//! | item | role |
//! | --- | --- |
//! | [`JobStore`] | validate and enqueue (one, bulk, with an append); stats, list, dead-set operations |
//! | [`WorkerPool`] | queues with concurrency, typed handlers, leases, retries, graceful shutdown |
//! | [`AsyncHandlers`] | the routes that write one job per (event, async handler) in the append's transaction |
//! | [`Scheduler`], [`Periodic`] | cron jobs with time zones, one enqueue per tick across processes |
//!
//! # Capabilities of the backends
//!
//! | capability | memory | SQLite (same file as the events) | PostgreSQL (same schema as the events) |
//! | --- | --- | --- | --- |
//! | enqueue (one, bulk, delayed), priorities, unique keys, per-key order, per-type limits | yes | yes | yes |
//! | leases, retries with backoff, dead set with limits, graceful shutdown | yes | yes | yes |
//! | cron exactly once per tick | yes (one process) | yes, across processes | yes, across processes |
//! | several worker processes | no (one process) | yes (one writer at a time) | yes (`FOR UPDATE SKIP LOCKED`) |
//! | wake-up of idle workers on enqueue | at once | this process at once, others at the poll | every process, `LISTEN`/`NOTIFY` |
//! | transactional enqueue with appends | yes (one lock) | yes (the writer's transaction) | yes (the group commit's transaction) |
//! | every job durably committed | no (memory) | `synchronous = FULL` | `synchronous_commit = on` |

mod cron;
mod events;
mod job;
mod store;
mod worker;

pub use cron::{Periodic, Scheduler};
pub use events::{AsyncHandlers, EventJobArgs, Route};
pub use herald_core::Backoff;
pub use herald_core::jobs::{
    DEFAULT_MAX_ATTEMPTS, DEFAULT_QUEUE, DeadJob, JobInfo, JobQueue, JobState, JobType, JobsConfig,
    ListFilter, NewJob, QueueStats, Stats,
};
pub use herald_core::{Clock, Error, ManualClock, Result, SystemClock};
pub use job::{JobContext, JobResult};
pub use store::{JobStore, MAX_LIST_LIMIT};
/// Re-exported where [`WorkerPoolBuilder::start`] and [`Scheduler`] need it: what stops a pool or a scheduler.
pub use tokio_util::sync::CancellationToken;
pub use worker::{HandlerOptions, JOB_RUN_EVENT, JobRun, WorkerPool, WorkerPoolBuilder};
