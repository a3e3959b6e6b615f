//! The single writer of a store handle and its group commit: the loop that batches requests and answers them.
//!
//! One Tokio task owns the write connection. Appends, links and deletes reach it over a channel, each with a
//! oneshot reply. The writer takes the first request, drains whatever else is already queued, and runs them
//! all in one transaction; requests arriving while it looks up what the batch needs join it too (up to
//! `max_batch`): one commit (one WAL flush) for the whole batch.
//!
//! | file | seam |
//! | --- | --- |
//! | `mod.rs` | this loop: batching, attempts of a batch, replies |
//! | `statements.rs` | the write session, its prepared statements, the look-ups, the hook statement cache |
//! | `plan.rs` | the pure decision: each request decided by [`herald_core::rules`] (tests: `plan/tests.rs`) |
//! | `write.rs` | round trip 2: the batch's net writes, its hook statements and `COMMIT`, pipelined |
//! | `alone.rs` | the one-round-trip path of a writer that is alone, and its guard |
//! | `notify.rs` | announcing a commit to other processes' listeners |
//!
//! # A batch is two round trips
//!
//! 1. **Lock and look up** (pipelined): `BEGIN`, lock the single `head` row (`SELECT … FOR UPDATE`, which
//!    every Herald writer of every process does first), read the end of the log and the server's clock, and
//!    read what the batch's checks need: the version and last delete of every stream it names, the stored
//!    events its links name (and, on a retry, its appends' ids). Requests that arrived meanwhile get their own
//!    look-up round trip and join.
//! 2. **Write and commit** (pipelined): the writer decides every request, in order, exactly as if they ran
//!    one by one (the write rules of [`herald_core::rules`] against the looked-up state, see `plan.rs`),
//!    gives the accepted events the positions after the log's end, and sends the net writes of the batch as
//!    a handful of multi-row statements (`INSERT … SELECT FROM unnest($arrays)`: all events in one, all
//!    stream versions in one, the delivery routes' jobs of all events in one, …), the append hooks'
//!    statements, and `COMMIT` (see `write.rs`).
//!
//! Nobody else can write while the head row is locked, so what step 1 read stays true until `COMMIT`: the
//! checks are exact, positions are contiguous, and a refused request writes nothing. Holding the lock until
//! `COMMIT` (PostgreSQL makes a commit visible before it releases its locks) is what keeps the global order
//! gap-free across processes (see the crate docs). The head row is locked, never rewritten (no dead row
//! versions to bloat it); the end of the log is read from `events`. A writer that is alone skips step 1
//! (see `alone.rs`).
//!
//! # Letting concurrent callers join
//!
//! When a commit answers N callers, they send their next requests a moment later. A batch started with the
//! first of them would commit alone and leave the rest for the next flush, so before deciding a batch smaller
//! than the previous one the writer yields to the scheduler a few times (no timer) and takes what arrives;
//! and the two-round-trip path takes requests that arrive during its look-up. Concurrent writers thus keep
//! sharing one WAL flush.
//!
//! # Two more optimistic shortcuts, both checked
//!
//! - An append's ids are not looked up in step 1: the unique index on `events.id` checks them while
//!   inserting. If it finds a stored id (an idempotent retry or a duplicate), the transaction is rolled back
//!   and the batch runs again with the ids looked up. An append refused for its expected version gets its ids
//!   looked up before the refusal stands (a retry of a committed append succeeds whatever its expectation).
//! - [Append hooks](crate::hook) run in the writer while it decides (they only describe statements), and
//!   their statements go into the same pipeline, without a savepoint. If one fails on the server, the
//!   transaction is rolled back, that append fails alone, and the batch runs again without it.
//!
//! Replies go out after `COMMIT` succeeds and the commit's announcement (`NOTIFY` on a connection of its own,
//! see `notify.rs`) is queued; if the transaction fails otherwise, every request of the batch gets the error
//! (nothing of the batch was written).

mod alone;
mod notify;
mod plan;
mod statements;
mod write;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use herald_core::{Error, Head, Result};
use tokio::sync::{mpsc, watch};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config};

use crate::hook::{AppendExtra, AppendHook};
use crate::schema::{self, backend};

use alone::Remembered;
use herald_core::write::{WriteOutcome as Outcome, WriteRequest};
use notify::Notifier;
use plan::{Known, Needs, Plan, Tail};
use statements::{Connection, Statements, lookup, prepare_hook_statements};
use write::{Step, Written};

/// One write request and where its answer goes.
pub(crate) type Request = herald_core::write::WriteRequest<AppendExtra>;

/// Group-commit counters.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) requests: AtomicU64,
    pub(crate) transactions: AtomicU64,
    pub(crate) one_round_trip: AtomicU64,
}

/// The writer task of a store handle: its requests, where it publishes the head, and what it remembers
/// between batches.
pub(crate) struct Writer {
    pub(crate) pg: Config,
    pub(crate) requests: mpsc::UnboundedReceiver<Request>,
    pub(crate) head: Arc<watch::Sender<Head>>,
    pub(crate) max_batch: usize,
    pub(crate) counters: Arc<Counters>,
    /// LISTEN/NOTIFY channel and this handle's id (the listener skips its own notifications).
    pub(crate) channel: String,
    pub(crate) instance: String,
    /// The store's append hooks (see [`crate::hook`]).
    pub(crate) hooks: Vec<Arc<dyn AppendHook>>,
    /// The delivery routes' statement (see `jobs/routes.rs`), sent once per batch that appends events.
    pub(crate) delivery_sql: String,
    /// What this writer's last commit left, for the one-round-trip path (`None` after a failure).
    pub(crate) remembered: Option<Remembered>,
    /// Requests in the previous batch: how many concurrent writers to expect back (see
    /// [`Writer::attempt_alone`]).
    pub(crate) last_batch: usize,
}

/// Yields in a row that bring no request before a batch stops waiting for the previous batch's callers.
const CALLER_YIELDS: usize = 4;

/// How one attempt at a batch ended.
enum Attempt {
    Committed {
        outcomes: Vec<Option<Outcome>>,
        last_position: u64,
    },
    /// Rolled back; run the batch again (with every append's ids looked up when `check_ids`).
    Retry { check_ids: bool },
}

impl Writer {
    pub(crate) async fn run(mut self, client: Client) {
        let mut conn = match Statements::prepare(&client, &self.delivery_sql).await {
            Ok(statements) => Some(Connection::new(client, statements)),
            Err(e) => {
                tracing::warn!(error = %backend(e), "herald-postgres writer could not prepare statements");
                None
            }
        };
        let mut notifier: Option<Notifier> = None;
        let mut batch = Vec::with_capacity(self.max_batch);
        while let Some(first) = self.requests.recv().await {
            batch.push(first);
            self.take_queued(&mut batch);
            if conn.as_ref().is_none_or(|c| c.client.is_closed()) {
                conn = match self.reconnect().await {
                    Ok(c) => Some(c),
                    // Nothing of the batch was sent: a server that cannot be reached is `Unavailable` for
                    // each request (retry later), anything else the same backend error for all.
                    Err(Error::Unavailable { what, reason, .. }) => {
                        for request in batch.drain(..) {
                            request.fail(Error::unavailable(what.clone(), reason.clone()));
                        }
                        continue;
                    }
                    Err(e) => {
                        let shared: Arc<dyn std::error::Error + Send + Sync> =
                            Arc::from(Box::<dyn std::error::Error + Send + Sync>::from(
                                e.to_string(),
                            ));
                        for request in batch.drain(..) {
                            request.fail(Error::backend(Arc::clone(&shared)));
                        }
                        continue;
                    }
                };
            }
            let Some(c) = conn.as_ref() else { continue };
            self.await_callers(&mut batch).await;
            self.commit_batch(c, &mut batch, &mut notifier).await;
        }
        tracing::debug!("herald-postgres writer stopped");
    }

    /// When fewer requests are queued than the previous batch answered, the callers it woke are probably
    /// about to send their next request: let them run (yield to the scheduler, no timer) and take what they
    /// send, until the batch is as large as the previous one or a few yields bring nothing. One more request in
    /// this batch saves it a commit of its own; measured, 16 tasks: without this the first requests left alone
    /// need a look-up round trip just to let the others join.
    async fn await_callers(&mut self, batch: &mut Vec<Request>) {
        let mut idle = 0;
        while batch.len() < self.last_batch.min(self.max_batch) && idle < CALLER_YIELDS {
            tokio::task::yield_now().await;
            if self.take_queued(batch) == 0 {
                idle += 1;
            } else {
                idle = 0;
            }
        }
    }

    /// Moves requests already queued into `batch`, up to `max_batch`; returns how many it moved.
    fn take_queued(&mut self, batch: &mut Vec<Request>) -> usize {
        let before = batch.len();
        while batch.len() < self.max_batch {
            match self.requests.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        batch.len() - before
    }

    async fn reconnect(&self) -> Result<Connection> {
        let client = schema::connect(&self.pg).await?;
        let statements = Statements::prepare(&client, &self.delivery_sql)
            .await
            .map_err(backend)?;
        Ok(Connection::new(client, statements))
    }

    /// Runs `batch` in one transaction (see the module docs) and answers every request.
    async fn commit_batch(
        &mut self,
        conn: &Connection,
        batch: &mut Vec<Request>,
        notifier: &mut Option<Notifier>,
    ) {
        let started = std::time::Instant::now();
        // Appends failed by a hook statement in an earlier attempt: they sit out the next ones.
        let mut settled: Vec<Option<Outcome>> = Vec::new();
        let mut check_ids = false;
        let mut attempts = 0usize;
        let result = loop {
            attempts += 1;
            // Each retry settles one more append or turns on the id look-up, so this ends; the bound is a
            // guard against a bug turning it into a loop.
            if attempts > batch.len() + 2 {
                break Err(Error::backend(format!(
                    "internal: a batch of {} requests was retried {attempts} times",
                    batch.len()
                )));
            }
            match self.attempt(conn, batch, &mut settled, check_ids).await {
                Ok(Attempt::Committed {
                    outcomes,
                    last_position,
                }) => break Ok((outcomes, last_position)),
                Ok(Attempt::Retry { check_ids: again }) => check_ids = again,
                Err(e) => break Err(e),
            }
        };
        let size = batch.len();
        self.last_batch = size;
        self.counters
            .requests
            .fetch_add(size as u64, Ordering::Relaxed);
        self.counters
            .transactions
            .fetch_add(attempts as u64, Ordering::Relaxed);

        match result {
            Ok((outcomes, last_position)) => {
                settled.resize_with(size, || None);
                let outcomes: Vec<Outcome> = outcomes
                    .into_iter()
                    .zip(settled)
                    .map(|(decided, settled)| {
                        decided.or(settled).unwrap_or_else(|| {
                            Outcome::Delete(Err(Error::backend(
                                "internal: a request got no outcome",
                            )))
                        })
                    })
                    .collect();
                let changed = outcomes.iter().filter(|o| o.succeeded()).count() as u64;
                if changed > 0 {
                    self.announce(notifier, last_position).await;
                    self.head.send_modify(|h| {
                        h.position = h.position.max(last_position);
                        h.commits += changed;
                    });
                }
                for (request, outcome) in batch.drain(..).zip(outcomes) {
                    request.reply(outcome);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, requests = size, "herald-postgres batch failed; nothing written");
                self.remembered = None;
                // Leave the connection usable for the next batch (a broken one is reopened instead).
                if !conn.client.is_closed() {
                    let _ = conn.client.batch_execute("ROLLBACK").await;
                }
                let shared = Arc::new(e);
                for request in batch.drain(..) {
                    // A lost connection stays `Unavailable` (transient) for every request: the Error
                    // doc says what that means for a commit that was in flight.
                    request.fail(match &*shared {
                        Error::Unavailable { what, reason, .. } => {
                            Error::unavailable(what.clone(), reason.clone())
                        }
                        _ => Error::backend(Arc::clone(&shared)),
                    });
                }
            }
        }
        tracing::trace!(requests = size, attempts, elapsed = ?started.elapsed(), "herald-postgres group commit");
    }

    /// One transaction for `batch`: lock and look up, decide, write and commit (see the module docs). `Err`
    /// fails the whole batch; the caller rolls back.
    async fn attempt(
        &mut self,
        conn: &Connection,
        batch: &mut Vec<Request>,
        settled: &mut Vec<Option<Outcome>>,
        check_ids: bool,
    ) -> Result<Attempt> {
        if !check_ids && let Some(attempt) = self.attempt_alone(conn, batch, settled).await? {
            return Ok(attempt);
        }
        let st = &conn.statements;
        let mut known = Known::default();
        let needs = known.needs(&batch[..], check_ids);
        // Round trip 1, pipelined. The statements after the lock run once it is granted, each on a snapshot
        // taken then: they see every commit of the previous holder.
        let (begun, head, tail, found) = tokio::join!(
            conn.client.batch_execute("BEGIN"),
            conn.client.query_one(&st.lock_head, &[]),
            conn.client.query_one(&st.tail, &[]),
            lookup(conn, &needs),
        );
        begun.map_err(backend)?;
        let head_clock: i64 = head.map_err(backend)?.get(0);
        let tail = tail.map_err(backend)?;
        known.merge(&needs, found?);
        // Requests that arrived meanwhile join this commit: one more look-up round trip while the lock is held
        // is much cheaper than a commit of their own.
        loop {
            let before = batch.len();
            if self.take_queued(batch) == 0 {
                break;
            }
            let needs = known.needs(&batch[before..], check_ids);
            let found = lookup(conn, &needs).await?;
            known.merge(&needs, found);
        }
        settled.resize_with(batch.len(), || None);
        let last_position: Option<i64> = tail.get(0);
        let last_recorded: Option<i64> = tail.get(1);
        let now: i64 = tail.get(2);
        let transaction_start: i64 = tail.get(3);
        let alone = self
            .remembered
            .as_ref()
            .is_some_and(|m| Some(m.last_position as i64) == last_position.or(Some(0)));
        // A last time past the largest timestamp (a damaged row) would become every later event's, which could
        // then not be read back: refuse the batch (the transaction is rolled back with the error).
        if let (Some(position), Some(time)) = (last_position, last_recorded)
            && let Err(e) = herald_core::timefmt::from_unix_micros(time)
        {
            return Err(Error::corrupt_event(position as u64, None, None, e));
        }
        let tail = Tail {
            next_position: last_position.unwrap_or(0) as u64 + 1,
            // Never before the previous commit: `recorded_at` does not decrease along the log.
            recorded_at: now.max(last_recorded.unwrap_or(0)).max(head_clock),
        };

        let mut plan = Plan::decide(batch, settled, &known, &tail, &self.hooks);
        if !plan.unchecked_refusals.is_empty() {
            // A refused append may be the retry of a committed one (which succeeds whatever it expected):
            // look its ids up and decide again.
            let needs = Needs {
                ids: std::mem::take(&mut plan.unchecked_refusals),
                ..Needs::default()
            };
            let found = lookup(conn, &needs).await?;
            known.merge(&needs, found);
            plan = Plan::decide(batch, settled, &known, &tail, &self.hooks);
        }
        // The insert stamps `greatest(recorded_at, transaction start)`: the same value, known here.
        let stamped = tail.recorded_at.max(transaction_start);
        let recorded_after = if plan.events.ids.is_empty() {
            last_recorded.unwrap_or(0)
        } else {
            stamped
        };
        if plan.writes_nothing() {
            // Every request was refused or a retry: nothing to commit.
            conn.client
                .batch_execute("ROLLBACK")
                .await
                .map_err(backend)?;
        } else {
            let hook_statements = match prepare_hook_statements(conn, &plan.hooks).await {
                Ok(statements) => statements,
                Err((sql, e)) => {
                    // A statement the server cannot prepare fails the appends whose hooks wrote it; the
                    // failed prepare aborted the transaction.
                    conn.client
                        .batch_execute("ROLLBACK")
                        .await
                        .map_err(backend)?;
                    for (owner, writes) in &plan.hooks {
                        if writes.statements.iter().any(|s| s.sql == sql) {
                            settled[*owner] = Some(hook_failure(&batch[*owner], &e));
                        }
                    }
                    return Ok(Attempt::Retry { check_ids });
                }
            };
            if let Written::Failed(step, e) = plan.write(conn, &hook_statements, None).await? {
                return failed_step(step, e, batch, settled, check_ids);
            }
        }
        // Committed (or nothing to write, in which case the plan's last position is still the log's end).
        Remembered::update(
            &mut self.remembered,
            plan.last_position,
            recorded_after,
            plan.streams,
            alone,
        );
        Ok(Attempt::Committed {
            last_position: plan.last_position,
            outcomes: plan.outcomes,
        })
    }
}

/// What a failed write statement means for the batch: a hook statement fails its append (the batch runs
/// again without it), a stored id sends the batch round again with every id looked up, anything else fails
/// the batch. `COMMIT` after the failed statement has rolled the transaction back.
fn failed_step(
    step: Step,
    e: tokio_postgres::Error,
    batch: &[Request],
    settled: &mut [Option<Outcome>],
    check_ids: bool,
) -> Result<Attempt> {
    match step {
        Step::Hook(owner) => {
            settled[owner] = Some(hook_failure(&batch[owner], &e));
            Ok(Attempt::Retry { check_ids })
        }
        Step::Events if !check_ids && e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            // A stored id: an idempotent retry or a duplicate. Decide again with the ids looked up.
            Ok(Attempt::Retry { check_ids: true })
        }
        _ => Err(backend(e)),
    }
}

/// An append failed by one of its hook statements on the server.
fn hook_failure(request: &Request, e: &tokio_postgres::Error) -> Outcome {
    let stream = match request {
        WriteRequest::Append { stream, .. } => stream.as_str(),
        _ => "",
    };
    Outcome::Append(Err(Error::backend(format!(
        "an append hook's statement failed for the append to `{stream}`: {}",
        schema::error_text(e)
    ))))
}
