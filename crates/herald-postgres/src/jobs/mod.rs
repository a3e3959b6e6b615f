//! The PostgreSQL job queue: [`PostgresJobQueue`], herald-core's [`JobQueue`](herald_core::jobs::JobQueue)
//! port on the job tables of a schema (by default the event store's), and the event store's side of
//! transactional enqueue (`append_with_jobs`, job routers), which writes the same rows with the same
//! statement inside an append's transaction.
//!
//! The job tables are created by embedded migrations ([`migrations`]) under a transaction-scoped advisory
//! lock, so several processes may start at once. Every operation is one statement (or a few, pipelined) on a
//! pooled connection; PostgreSQL's own group commit merges the WAL flushes of concurrent transactions, so
//! there is no writer task here.
//!
//! - **Claim** ([`claim`]). A claim leases the best jobs of a queue with `SELECT … FOR UPDATE SKIP LOCKED`
//!   inside the `UPDATE` that leases them: concurrent claimers (in any process) skip each other's rows
//!   instead of waiting, and a row claimed and committed by another process is re-checked (`state = 0`) and
//!   dropped. Housekeeping runs before each claim (expired leases back to the queue or to the dead set, due
//!   scheduled jobs made available), also with `SKIP LOCKED`, so claimers never queue behind each other.
//! - **Per-type limits.** Counting running jobs and leasing more must not race between processes: a claim
//!   that involves limited types takes one transaction-scoped advisory lock per limited type (in name order),
//!   then counts and leases in the same transaction.
//! - **Wake-ups** ([`wake`]). After an enqueue commits, a notifier task sends one `NOTIFY` on the schema's
//!   channel (coalescing the enqueues that committed meanwhile): not inside the enqueue's transaction,
//!   because PostgreSQL serialises the commits of notifying transactions, which would undo group commit for
//!   concurrent enqueuers. Transactional enqueues (an append's jobs, [`insert_jobs`], cron) notify inside
//!   the transaction, delivered at commit. Completions ask the same notifier for a `NOTIFY` after they commit
//!   when they may have made a waiting job runnable
//!   ([`Completion::unblocks_others`](herald_core::jobs::Completion::unblocks_others)): the next job of a
//!   key, or of a limited type, then starts within milliseconds in whichever process works it, not at that
//!   process's next poll. Completions of other jobs notify nobody: at high throughput that would wake every
//!   fetcher of every process for nothing. (A limit declared only by the pools of other processes is not
//!   known here: those pools find the free slot at their poll.) Releases notify at once, inline, as the
//!   queue may close right after. Each queue handle keeps one connection `LISTEN`ing and signals
//!   [`wakeups`](herald_core::jobs::JobQueue::wakeups) on every notification; workers still poll for
//!   scheduled jobs coming due and expired leases.
//! - **Durability.** `synchronous_commit` stays on: every enqueue, claim and completion is flushed before it
//!   is acknowledged. [`JobsConfig::full_sync`](herald_core::jobs::JobsConfig::full_sync)`(false)` turns it
//!   off for every statement of the queue;
//!   [`JobsConfig::durable_progress`](herald_core::jobs::JobsConfig::durable_progress)`(false)` only for
//!   claims, completions and renewals (their own pool).

mod claim;
mod migrations;
mod port;
mod queue;
mod routes;
mod sql;
mod store;
mod wake;

pub(crate) use migrations::migrate;
pub use queue::PostgresJobQueue;
pub(crate) use routes::delivery_statement;
pub use sql::insert_jobs;
pub use store::JobRouters;
pub(crate) use store::{append_jobs, store_hooks};

/// Job states as stored (`herald_jobs.state`).
const AVAILABLE: i16 = 0;
const SCHEDULED: i16 = 1;
const RUNNING: i16 = 2;
