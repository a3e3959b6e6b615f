//! Herald's durable job queue and async event handlers, in the event store's database — its SQLite file or
//! its PostgreSQL schema, same API and semantics on both (the Sidekiq /
//! ActiveJob analogue, with what Sidekiq OSS lacks: no job lost on a crash, transactional enqueue with event
//! appends, unique jobs, per-key ordering, cron with time zones, per-type concurrency limits).
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
//! let dir = tempfile::tempdir().unwrap();
//! let jobs = JobStore::open(dir.path().join("herald.db"), JobsConfig::default()).await?;
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
//! # Ok::<(), herald_jobs::JobError>(())
//! # }).unwrap();
//! ```
//!
//! # Semantics
//!
//! - **Durable enqueue.** `enqueue` returns after the job is committed (`synchronous = FULL` by default).
//!   On SQLite concurrent writes are group-committed by one writer thread (one fsync per batch); on
//!   PostgreSQL every statement commits with `synchronous_commit = on` and the server merges concurrent
//!   flushes.
//! - **Several processes.** Any number of processes may open the same database and run pools. On
//!   PostgreSQL, claims lease jobs with `FOR UPDATE SKIP LOCKED` in batches (a job is leased to one worker
//!   at a time; `tests/processes.rs` checks two processes of 8 workers over 4,000 jobs), and idle pools are
//!   woken by `LISTEN`/`NOTIFY` within milliseconds of an enqueue in any process, and of a completion in any
//!   process that frees an ordering key or a slot of a limited type (`tests/wakeups.rs`); on SQLite, by this
//!   process's enqueues at once and other processes' at the next poll.
//! - **Transactional enqueue.** [`JobStore::append_with_jobs`] (`append_with_jobs_postgres`) and
//!   [`AsyncHandlers`] (an append hook of either event store) write jobs in the same transaction as the
//!   events: no event without its jobs, no job for a rolled-back append.
//! - **At-least-once.** A claimed job is leased ([`JobsConfig::lease`]) and the pool renews the lease. If the
//!   worker dies, the lease expires and the job runs again with the next attempt number; handlers get the job id
//!   and attempt in [`JobContext`] to be idempotent. A lease expiring on the last attempt sends the job to the
//!   dead set.
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
//! - **Observability.** Every run is an instrumentation event [`JOB_RUN_EVENT`] on herald-notify's global
//!   notifier with a [`JobRun`] payload (id, type, queue, attempt, duration, outcome, metadata).
//! - **Time.** Everything scheduled reads the [`Clock`] in [`JobsConfig`]; tests use [`ManualClock`].
//!
//! # Feature flags
//!
//! | feature | default | what |
//! | --- | --- | --- |
//! | `postgres` | no | the PostgreSQL backend: `JobStore::open_postgres`, `postgres://` in [`JobStore::open_url`], `insert_jobs_postgres` |
//!
//! SQLite is always there (herald-sqlite: the job tables live in the event store's SQLite file).
//!
//! # Where things are
//!
//! | item | role |
//! | --- | --- |
//! | [`JobStore`] | open the tables; enqueue (one, bulk, with an append); stats, list, dead-set operations |
//! | [`WorkerPool`] | queues with concurrency, typed handlers, leases, retries, graceful shutdown |
//! | [`AsyncHandlers`] | the append hook that writes one job per (event, async handler) |
//! | [`Scheduler`], [`Periodic`] | cron jobs with time zones, one enqueue per tick across processes |
//! | [`insert_job`] | enqueue on an SQLite connection inside someone else's transaction |
//! | `insert_jobs_postgres` | the same on a PostgreSQL client or transaction (feature `postgres`) |
//!
//! # Capabilities
//!
//! | capability | SQLite (same file as the events) | PostgreSQL (feature `postgres`, same schema as the events by default) |
//! | --- | --- | --- |
//! | enqueue (one, bulk, delayed), priorities, unique keys, per-key order, per-type limits | yes | yes |
//! | leases, retries with backoff, dead set with limits, graceful shutdown | yes | yes |
//! | cron exactly once per tick across processes | yes | yes |
//! | several worker processes | yes (one writer at a time) | yes (`FOR UPDATE SKIP LOCKED`) |
//! | wake-up of idle workers on enqueue | this process at once, others at the poll | every process, `LISTEN`/`NOTIFY` |
//! | wake-up when a completion frees an ordering key or a limited type's slot | the same queue of this process at once, others at the poll | every process, `LISTEN`/`NOTIFY` after the completion commits |
//! | transactional enqueue with appends | yes: [`AsyncHandlers::hook`], [`JobStore::append_with_jobs`] | yes: `AsyncHandlers::postgres_hook`, `JobStore::append_with_jobs_postgres` (herald-postgres append hooks), `insert_jobs_postgres` in your own transaction |
//! | every job durably committed | `synchronous = FULL` | `synchronous_commit = on` |
//! | `herald jobs …` CLI | yes | yes |

/// The job clock is herald-core's one clock.
mod clock {
    pub use herald_core::clock::*;
}
mod cron;
mod error;
mod events;
mod job;
#[cfg(feature = "postgres")]
mod postgres;
mod schema;
mod store;
mod worker;

pub use clock::{Clock, ManualClock, SystemClock};
pub use cron::{Periodic, Scheduler};
pub use error::{JobError, Result};
pub use events::{AsyncHandlers, EventJobArgs, Route};
pub use job::{
    Backoff, DEFAULT_MAX_ATTEMPTS, DEFAULT_QUEUE, JobContext, JobResult, JobType, NewJob,
};
#[cfg(feature = "postgres")]
pub use postgres::insert_jobs_postgres;
pub use store::{
    DeadJob, JobInfo, JobStore, JobsConfig, ListFilter, QueueStats, Stats, insert_job,
};
pub use worker::{HandlerOptions, JOB_RUN_EVENT, JobRun, WorkerPool, WorkerPoolBuilder};
