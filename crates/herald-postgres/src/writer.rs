//! The single writer of a store handle and its group commit.
//!
//! One Tokio task owns the write connection. Appends, links and deletes reach it over a channel, each with a
//! oneshot reply. The writer takes the first request, drains whatever else is already queued, and runs them
//! all in one transaction; requests arriving while it looks up what the batch needs join it too (up to
//! `max_batch`): one commit (one WAL flush) for the whole batch.
//!
//! # A batch is two round trips
//!
//! 1. **Lock and look up** (pipelined): `BEGIN`, lock the single `head` row (`SELECT … FOR UPDATE`, which
//!    every Herald writer of every process does first), read the end of the log and the server's clock, and
//!    read what the batch's checks need: the version and last delete of every stream it names, the stored
//!    events its links name (and, on a retry, its appends' ids). Requests that arrived meanwhile get their own
//!    look-up round trip and join.
//! 2. **Write and commit** (pipelined): the writer decides every request itself, in order, exactly as if they
//!    ran one by one (expected versions, idempotent retries, duplicates, links already in the stream,
//!    version limits), gives the accepted events the positions after the log's end, and sends the net
//!    writes of the batch as a handful of multi-row statements (`INSERT … SELECT FROM unnest($arrays)`: all
//!    events in one, all stream versions in one, …), the append hooks' statements, and `COMMIT`.
//!
//! Nobody else can write while the head row is locked, so what step 1 read stays true until `COMMIT`: the
//! checks are exact, positions are contiguous, and a refused request writes nothing. Holding the lock until
//! `COMMIT` (PostgreSQL makes a commit visible before it releases its locks) is what keeps the global order
//! gap-free across processes (see the crate docs). The head row is locked, never rewritten (no dead row
//! versions to bloat it); the end of the log is read from `events`.
//!
//! Every statement is simple (a key lookup or an `unnest` insert) and runs as a prepared statement with a
//! generic plan: nothing is planned per batch. The write session forbids sequential scans, hash joins and
//! merge joins, so a plan made while the tables were small stays an index lookup as they grow (measured: a
//! generic plan made on small tables and kept while they grow slowed appends several-fold within minutes).
//!
//! # One round trip when the writer is alone
//!
//! A writer whose last commit is still the end of the log (the common case of one application process)
//! skips step 1: it remembers the end of the log, its clock and the state of the streams it has seen, and
//! decides the batch from that (a stream it never saw is assumed to be in the state an append's `NoStream`
//! or `Exact(v)` names). It sends `BEGIN`, the lock, a guard statement, the writes and `COMMIT` at once. The
//! guard runs under the lock and fails the transaction (so the writes fail and `COMMIT` rolls back) unless
//! the log still ends where the writer left it and every stream of the batch is as it believes; the batch
//! then takes the two round trips, and the next look-up tells whether the writer is alone again. A batch
//! with links or deletes, with an `Any`/`StreamExists` append to a stream the writer does not know, or in
//! which the writer's own decision refuses a request always takes the two round trips.
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
//! see [`Writer::announce`]) is queued; if the transaction fails otherwise, every request of the batch gets
//! the error (nothing of the batch was written).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::FutureExt;
use herald_core::stream::category_of;
use herald_core::version::MAX_VERSION;
use herald_core::{AppendResult, Error, ExpectedVersion, Head, LinkResult, NewEvent, Result};
use tokio::sync::{mpsc, watch};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Config, Statement};
use uuid::Uuid;

use crate::hook::{AppendExtra, AppendHook, AppendedEvent, HookError, HookWrites};
use crate::schema::{self, backend};

/// One write request and where its answer goes.
pub(crate) type Request = herald_core::write::WriteRequest<AppendExtra>;

use herald_core::write::{WriteOutcome as Outcome, WriteRequest};

/// Group-commit counters.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) requests: AtomicU64,
    pub(crate) transactions: AtomicU64,
    pub(crate) one_round_trip: AtomicU64,
}

/// Planner settings of the write session (see the module docs): generic plans (nothing planned per batch),
/// and no plan shape whose cost grows with the tables when an index lookup exists. No JIT: a disabled plan
/// shape that remains the only one (the one-row `head` table is scanned) carries a huge cost, which would
/// make PostgreSQL compile that statement on every execution (measured: 6.7 ms per batch).
const WRITE_SESSION: &str = "SET plan_cache_mode = force_generic_plan; SET enable_seqscan = off; \
                             SET enable_hashjoin = off; SET enable_mergejoin = off; SET jit = off";

/// Prepared statements of the write connection.
struct Statements {
    lock_head: Statement,
    tail: Statement,
    guard: Statement,
    streams: Statement,
    stored: Statement,
    linked: Statement,
    delete_links: Statement,
    upsert_deleted: Statement,
    delete_streams: Statement,
    upsert_streams: Statement,
    insert_events: Statement,
    insert_links: Statement,
}

/// Locks the head row: the serialisation point of every Herald writer of every process.
const LOCK_HEAD: &str = "SELECT recorded_at FROM head FOR UPDATE";

/// The end of the log, its clock, the server's clock and the transaction's start. Runs after the lock is
/// granted, on a snapshot of its own: it sees every earlier writer's commit.
const TAIL: &str = "
    SELECT (SELECT position FROM events ORDER BY position DESC LIMIT 1),
           (SELECT recorded_at FROM events ORDER BY position DESC LIMIT 1),
           floor(extract(epoch FROM clock_timestamp()) * 1000000)::bigint,
           floor(extract(epoch FROM now()) * 1000000)::bigint";

/// The one-round-trip path's check (see the module docs): the log still ends where this writer left it
/// (`$2`) and every stream of the batch is as the writer believes (`$3`–`$5`); otherwise it fails (division by
/// zero), and the transaction with it. It returns the clock the batch's events get (`$1`: the last one's).
const GUARD: &str = "
    SELECT greatest($1::bigint, floor(extract(epoch FROM now()) * 1000000)::bigint)
    WHERE 1 / (CASE WHEN coalesce((SELECT position FROM events ORDER BY position DESC LIMIT 1), 0) = $2::bigint
                     AND NOT EXISTS (
                         SELECT 1
                         FROM unnest($3::text[], $4::bigint[], $5::bigint[]) AS t(name, version, through)
                         LEFT JOIN streams s ON s.name = t.name
                         LEFT JOIN deleted_streams d ON d.name = t.name
                         WHERE s.version IS DISTINCT FROM t.version
                            OR coalesce(d.through_position, 0) <> t.through)
                THEN 1 ELSE 0 END) = 1";

/// Version and last delete of each named stream (one row per name; NULLs when missing).
const STREAMS: &str = "
    SELECT n.name, s.version, d.through_position
    FROM unnest($1::text[]) AS n(name)
    LEFT JOIN streams s ON s.name = n.name
    LEFT JOIN deleted_streams d ON d.name = n.name";

/// The stored events among the ids.
const STORED: &str = "SELECT id, position, stream, version FROM events WHERE id = ANY($1::uuid[])";

/// Which `(stream, event id)` pairs are already linked.
const LINKED: &str = "
    SELECT t.stream, e.position
    FROM unnest($1::text[], $2::uuid[]) AS t(stream, id)
    JOIN events e ON e.id = t.id
    JOIN stream_entries se ON se.stream = t.stream AND se.position = e.position";

const DELETE_LINKS: &str = "DELETE FROM stream_entries WHERE stream = ANY($1::text[])";

const UPSERT_DELETED: &str = "
    INSERT INTO deleted_streams (name, through_position)
    SELECT * FROM unnest($1::text[], $2::bigint[])
    ON CONFLICT (name) DO UPDATE SET through_position = excluded.through_position";

const DELETE_STREAMS: &str = "DELETE FROM streams WHERE name = ANY($1::text[])";

const UPSERT_STREAMS: &str = "
    INSERT INTO streams (name, version)
    SELECT * FROM unnest($1::text[], $2::bigint[])
    ON CONFLICT (name) DO UPDATE SET version = excluded.version";

/// Every event of the batch. `$9` is the clock decided for the batch; `now()` (the transaction's start) only
/// matters on the one-round-trip path, where the guard computed the same value.
const INSERT_EVENTS: &str = "
    INSERT INTO events (position, id, stream, version, category, event_type, data, metadata, recorded_at)
    SELECT t.*, greatest($9::bigint, floor(extract(epoch FROM now()) * 1000000)::bigint)
    FROM unnest($1::bigint[], $2::uuid[], $3::text[], $4::bigint[], $5::text[], $6::text[], $7::text[],
                $8::text[]) AS t";

const INSERT_LINKS: &str = "
    INSERT INTO stream_entries (stream, version, position, is_link)
    SELECT t.*, true FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS t";

impl Statements {
    /// Sets up the write session and prepares its statements (once per connection: a round trip each).
    async fn prepare(client: &Client) -> std::result::Result<Self, tokio_postgres::Error> {
        client.batch_execute(WRITE_SESSION).await?;
        Ok(Statements {
            lock_head: client.prepare(LOCK_HEAD).await?,
            tail: client.prepare(TAIL).await?,
            guard: client.prepare(GUARD).await?,
            streams: client.prepare(STREAMS).await?,
            stored: client.prepare(STORED).await?,
            linked: client.prepare(LINKED).await?,
            delete_links: client.prepare(DELETE_LINKS).await?,
            upsert_deleted: client.prepare(UPSERT_DELETED).await?,
            delete_streams: client.prepare(DELETE_STREAMS).await?,
            upsert_streams: client.prepare(UPSERT_STREAMS).await?,
            insert_events: client.prepare(INSERT_EVENTS).await?,
            insert_links: client.prepare(INSERT_LINKS).await?,
        })
    }
}

/// The connection that announces commits to other processes' listeners (see [`Writer::announce`]).
struct Notifier {
    client: Client,
    notify: Statement,
}

impl Notifier {
    async fn open(pg: &Config) -> std::result::Result<Self, String> {
        let client = schema::connect(pg).await.map_err(|e| e.to_string())?;
        // The notification's own transaction needs no durability (a lost one is covered by the followers'
        // polling), so it must not wait for a WAL flush of its own: per-session setting, this connection only.
        client
            .batch_execute("SET synchronous_commit = off")
            .await
            .map_err(|e| backend(e).to_string())?;
        let notify = client
            .prepare("SELECT pg_notify($1::text, $2::text)")
            .await
            .map_err(|e| backend(e).to_string())?;
        Ok(Notifier { client, notify })
    }
}

/// The writer's connection, reopened when it breaks.
struct Connection {
    client: Client,
    statements: Statements,
    /// Hook statements prepared on this connection, by SQL text (prepared statements outlive transactions).
    hook_statements: Mutex<HashMap<String, Statement>>,
}

/// Most hook statements kept prepared per connection; the cache starts over beyond it (hooks that format
/// values into their SQL would otherwise grow it without bound).
const MAX_CACHED_HOOK_STATEMENTS: usize = 256;

impl Connection {
    fn new(client: Client, statements: Statements) -> Self {
        Connection {
            client,
            statements,
            hook_statements: Mutex::new(HashMap::new()),
        }
    }
}

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
    /// What this writer's last commit left, for the one-round-trip path (`None` after a failure).
    pub(crate) remembered: Option<Remembered>,
    /// Requests in the previous batch: how many concurrent writers to expect back (see
    /// [`Writer::attempt_alone`]).
    pub(crate) last_batch: usize,
}

/// What a writer's last commit left in the database: enough to decide the next batch without looking
/// anything up, when nobody else writes (the guard statement checks that under the lock).
pub(crate) struct Remembered {
    last_position: u64,
    /// `recorded_at` of the last event.
    last_recorded: i64,
    streams: HashMap<String, StreamState>,
    /// The last look-up found the log where this writer had left it: it is probably the only writer.
    alone: bool,
}

/// Yields in a row that bring no request before a batch stops waiting for the previous batch's callers.
const CALLER_YIELDS: usize = 4;

/// Most stream states a writer remembers; beyond it, it starts over (the next batches look their streams up).
const MAX_REMEMBERED_STREAMS: usize = 65_536;

impl Remembered {
    /// Takes in a committed batch: the end of the log, its clock and the states of the batch's streams.
    fn update(
        remembered: &mut Option<Remembered>,
        last_position: u64,
        last_recorded: i64,
        streams: HashMap<String, StreamState>,
        alone: bool,
    ) {
        let memory = remembered.get_or_insert_with(|| Remembered {
            last_position,
            last_recorded,
            streams: HashMap::new(),
            alone,
        });
        // Another writer may have changed any stream: keep only what this batch saw.
        if !alone || memory.streams.len() + streams.len() > MAX_REMEMBERED_STREAMS {
            memory.streams.clear();
        }
        memory.streams.extend(streams);
        memory.last_position = last_position;
        memory.last_recorded = last_recorded;
        memory.alone = alone;
    }
}

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
        let mut conn = match Statements::prepare(&client).await {
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
                    Err(e) => {
                        let shared: Arc<dyn std::error::Error + Send + Sync> =
                            Arc::from(Box::<dyn std::error::Error + Send + Sync>::from(e));
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

    /// Tells the listeners of every process that the log now ends at `last_position`: queued on the
    /// notifying connection after `COMMIT` returned and before any reply, but not awaited. Waiting for it cost
    /// a round trip per batch (measured, same run: one task 2 227 → 2 628 appends/s without the wait); a
    /// notification that never arrives (the process dies within microseconds, the connection broke) costs
    /// other processes one poll interval, since followers also poll.
    ///
    /// Not in the batch transaction: a notifying commit holds PostgreSQL's global notify lock through its WAL
    /// flush, which would add to the time the head row stays locked (and serialise with every other notifying
    /// transaction of the database). Nor pipelined behind `COMMIT` on the write connection (measured slower:
    /// the reply then waits for the notifying transaction). The notification goes on a connection of its own,
    /// in a transaction that does not wait for a flush (`synchronous_commit = off` for that session).
    async fn announce(&self, notifier: &mut Option<Notifier>, last_position: u64) {
        if notifier.as_ref().is_none_or(|n| n.client.is_closed()) {
            match Notifier::open(&self.pg).await {
                Ok(n) => *notifier = Some(n),
                Err(e) => {
                    tracing::warn!(error = %e, "herald-postgres cannot open its notifier connection; other processes will see the commit by polling");
                    *notifier = None;
                    return;
                }
            }
        }
        let Some(n) = notifier.as_ref() else { return };
        let payload = format!("{} {last_position}", self.instance);
        // The first poll encodes the notification and queues it on the connection; the answer is not awaited
        // (the connection task discards it). An error here is one the driver knew at once (connection closed).
        if let Some(Err(e)) = n
            .client
            .execute(&n.notify, &[&self.channel, &payload])
            .now_or_never()
        {
            tracing::warn!(error = %backend(e), "herald-postgres could not notify a commit; other processes will see it by polling");
        }
    }

    async fn reconnect(&self) -> std::result::Result<Connection, String> {
        let client = schema::connect(&self.pg).await.map_err(|e| e.to_string())?;
        let statements = Statements::prepare(&client)
            .await
            .map_err(|e| backend(e).to_string())?;
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
                    request.fail(Error::backend(Arc::clone(&shared)));
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
        let tail = Tail {
            next_position: last_position.unwrap_or(0) as u64 + 1,
            // Never before the previous commit: `recorded_at` does not decrease along the log.
            recorded_at: now.max(last_recorded.unwrap_or(0)).max(head_clock),
        };

        let mut plan = Plan::decide(batch, settled, &known, &tail, &self.hooks, check_ids);
        if !plan.unchecked_refusals.is_empty() {
            // A refused append may be the retry of a committed one (which succeeds whatever it expected):
            // look its ids up and decide again.
            let needs = Needs {
                ids: std::mem::take(&mut plan.unchecked_refusals),
                ..Needs::default()
            };
            let found = lookup(conn, &needs).await?;
            known.merge(&needs, found);
            plan = Plan::decide(batch, settled, &known, &tail, &self.hooks, check_ids);
        }
        // The insert stamps `greatest(recorded_at, transaction start)`: the same value, known here.
        let stamped = tail.recorded_at.max(transaction_start);
        let recorded_after = if plan.events.ids.is_empty() {
            last_recorded.unwrap_or(0)
        } else {
            stamped
        };
        if plan.writes_nothing() {
            conn.client
                .batch_execute("ROLLBACK")
                .await
                .map_err(backend)?;
            Remembered::update(
                &mut self.remembered,
                plan.last_position,
                recorded_after,
                plan.streams,
                alone,
            );
            return Ok(Attempt::Committed {
                outcomes: plan.outcomes,
                last_position: tail.next_position - 1,
            });
        }

        let hook_statements = match prepare_hook_statements(conn, &plan.hooks).await {
            Ok(statements) => statements,
            Err((sql, e)) => {
                // A statement the server cannot prepare fails the appends whose hooks wrote it; the failed
                // prepare aborted the transaction.
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
        match plan.write(conn, &hook_statements, None).await? {
            Written::Committed { .. } => {
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
            Written::Failed(step, e) => failed_step(step, e, batch, settled, check_ids),
        }
    }

    /// The one-round-trip path: when this writer was alone at its last commit and the batch holds only
    /// appends whose streams it remembers (or whose expectation names the state: `NoStream`, `Exact`), it
    /// decides from what it remembers and sends lock, guard, writes and `COMMIT` at once. The guard fails the
    /// transaction if anything it assumed is not so; then `None`, and the caller takes the two round trips.
    async fn attempt_alone(
        &mut self,
        conn: &Connection,
        batch: &mut [Request],
        settled: &mut Vec<Option<Outcome>>,
    ) -> Result<Option<Attempt>> {
        let Some(memory) = self.remembered.as_ref().filter(|m| m.alone) else {
            return Ok(None);
        };
        // Fewer requests than last time: the others are probably on their way. The look-up round trip lets
        // them join this commit; without it, concurrent writers split into alternating small batches
        // (measured, 16 tasks: 24 400 → 19 000 appends/s).
        if batch.len() < self.last_batch {
            return Ok(None);
        }
        settled.resize_with(batch.len(), || None);
        let mut known = Known::default();
        for request in batch.iter() {
            let WriteRequest::Append {
                stream, expected, ..
            } = request
            else {
                return Ok(None);
            };
            if known.streams.contains_key(stream) {
                continue;
            }
            let state = match (memory.streams.get(stream), expected) {
                (Some(state), _) => state.clone(),
                // An append that names the state it expects is usually right; the guard checks it.
                (None, ExpectedVersion::NoStream) => StreamState::default(),
                (None, ExpectedVersion::Exact(v)) => StreamState {
                    version: Some(*v),
                    deleted_through: 0,
                },
                (None, _) => return Ok(None),
            };
            known.streams.insert(stream.clone(), state);
        }
        let tail = Tail {
            next_position: memory.last_position + 1,
            recorded_at: memory.last_recorded,
        };
        let plan = Plan::decide(batch, settled, &known, &tail, &self.hooks, false);
        // A refusal may come from a stale memory (and needs the ids looked up): take the two round trips.
        let all_accepted = plan
            .outcomes
            .iter()
            .all(|o| o.as_ref().is_none_or(Outcome::succeeded));
        if !all_accepted || plan.writes_nothing() {
            return Ok(None);
        }
        let Ok(hook_statements) = prepare_hook_statements(conn, &plan.hooks).await else {
            // Outside a transaction: nothing to undo. The two-round-trip path finds which append it was.
            return Ok(None);
        };
        let guard = Guard {
            last_position: memory.last_position,
            last_recorded: memory.last_recorded,
            streams: &known.streams,
        };
        match plan.write(conn, &hook_statements, Some(&guard)).await? {
            Written::Committed { clock } => {
                self.counters.one_round_trip.fetch_add(1, Ordering::Relaxed);
                Remembered::update(
                    &mut self.remembered,
                    plan.last_position,
                    clock.unwrap_or(tail.recorded_at),
                    plan.streams,
                    true,
                );
                Ok(Some(Attempt::Committed {
                    last_position: plan.last_position,
                    outcomes: plan.outcomes,
                }))
            }
            Written::Failed(Step::Guard, _) => {
                // Someone else wrote: look everything up this time.
                if let Some(m) = self.remembered.as_mut() {
                    m.alone = false;
                }
                Ok(None)
            }
            Written::Failed(step, e) => failed_step(step, e, batch, settled, false).map(Some),
        }
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

/// What the one-round-trip path assumed, for the guard statement to check.
struct Guard<'a> {
    last_position: u64,
    last_recorded: i64,
    /// The batch's streams as they were before it.
    streams: &'a HashMap<String, StreamState>,
}

/// How the write round trip ended.
enum Written {
    /// Committed; with a guard, the clock its events got.
    Committed { clock: Option<i64> },
    /// This statement failed first (the others failed because the transaction was aborted by then).
    Failed(Step, tokio_postgres::Error),
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

/// Where the batch's events go and when they are recorded.
struct Tail {
    next_position: u64,
    /// Microseconds since the Unix epoch: every event of the batch gets it.
    recorded_at: i64,
}

/// A stream's state as the batch sees it.
#[derive(Clone, Default)]
struct StreamState {
    version: Option<u64>,
    /// Its events at positions up to this one were removed from it by a delete (0: never deleted).
    deleted_through: i64,
}

/// A stored event (or one appended earlier in the batch).
#[derive(Clone)]
struct KnownEvent {
    position: i64,
    stream: String,
    version: i64,
}

/// What the batch's checks need to know.
#[derive(Default)]
struct Needs {
    streams: Vec<String>,
    ids: Vec<Uuid>,
    /// `(stream, id)`: is that stored event linked into that stream?
    links: (Vec<String>, Vec<Uuid>),
}

impl Needs {
    fn is_empty(&self) -> bool {
        self.streams.is_empty() && self.ids.is_empty() && self.links.0.is_empty()
    }
}

/// What step 1 read: the database as every request of the batch starts from.
#[derive(Default)]
struct Known {
    streams: HashMap<String, StreamState>,
    events: HashMap<Uuid, KnownEvent>,
    /// Ids looked up, found or not.
    looked_up: HashSet<Uuid>,
    /// `(stream, position)` of link entries found.
    linked: HashSet<(String, i64)>,
    links_looked_up: HashSet<(String, Uuid)>,
}

impl Known {
    /// What `requests` need that is not known yet. Links always need their events; appends need their ids
    /// only when `check_ids` (otherwise the unique index checks them, see the module docs).
    fn needs(&self, requests: &[Request], check_ids: bool) -> Needs {
        let mut needs = Needs::default();
        let mut streams = HashSet::new();
        let mut ids = HashSet::new();
        let mut links = HashSet::new();
        for request in requests {
            let (stream, wanted): (&String, &[Uuid]) = match request {
                WriteRequest::Append { stream, events, .. } => {
                    if check_ids {
                        for e in events {
                            if !self.looked_up.contains(&e.id) && ids.insert(e.id) {
                                needs.ids.push(e.id);
                            }
                        }
                    }
                    (stream, &[])
                }
                WriteRequest::Link { stream, ids, .. } => (stream, ids),
                WriteRequest::Delete { stream, .. } => (stream, &[]),
            };
            if !self.streams.contains_key(stream) && streams.insert(stream.as_str()) {
                needs.streams.push(stream.clone());
            }
            for id in wanted {
                if !self.looked_up.contains(id) && ids.insert(*id) {
                    needs.ids.push(*id);
                }
                let pair = (stream.clone(), *id);
                if !self.links_looked_up.contains(&pair) && links.insert(pair) {
                    needs.links.0.push(stream.clone());
                    needs.links.1.push(*id);
                }
            }
        }
        needs
    }

    fn merge(&mut self, needs: &Needs, found: Found) {
        for name in &needs.streams {
            self.streams.entry(name.clone()).or_default();
        }
        for row in found.streams {
            let name: String = row.get(0);
            let version: Option<i64> = row.get(1);
            let through: Option<i64> = row.get(2);
            self.streams.insert(
                name,
                StreamState {
                    version: version.map(|v| v as u64),
                    deleted_through: through.unwrap_or(0),
                },
            );
        }
        self.looked_up.extend(needs.ids.iter().copied());
        for row in found.events {
            self.events.insert(
                row.get(0),
                KnownEvent {
                    position: row.get(1),
                    stream: row.get(2),
                    version: row.get(3),
                },
            );
        }
        self.links_looked_up.extend(
            needs
                .links
                .0
                .iter()
                .cloned()
                .zip(needs.links.1.iter().copied()),
        );
        for row in found.linked {
            self.linked.insert((row.get(0), row.get(1)));
        }
    }
}

/// The rows a look-up returned.
struct Found {
    streams: Vec<tokio_postgres::Row>,
    events: Vec<tokio_postgres::Row>,
    linked: Vec<tokio_postgres::Row>,
}

/// Runs the look-ups `needs` asks for, pipelined.
async fn lookup(conn: &Connection, needs: &Needs) -> Result<Found> {
    if needs.is_empty() {
        return Ok(Found {
            streams: Vec::new(),
            events: Vec::new(),
            linked: Vec::new(),
        });
    }
    let st = &conn.statements;
    let (streams, events, linked) = tokio::join!(
        async {
            if needs.streams.is_empty() {
                return Ok(Vec::new());
            }
            conn.client.query(&st.streams, &[&needs.streams]).await
        },
        async {
            if needs.ids.is_empty() {
                return Ok(Vec::new());
            }
            conn.client.query(&st.stored, &[&needs.ids]).await
        },
        async {
            if needs.links.0.is_empty() {
                return Ok(Vec::new());
            }
            conn.client
                .query(&st.linked, &[&needs.links.0, &needs.links.1])
                .await
        },
    );
    Ok(Found {
        streams: streams.map_err(backend)?,
        events: events.map_err(backend)?,
        linked: linked.map_err(backend)?,
    })
}

/// Which part of the write pipeline a statement is (to know what a failure means).
#[derive(Clone, Copy)]
enum Step {
    /// The one-round-trip path's check: the writer's memory was stale.
    Guard,
    Store,
    Events,
    /// A statement of the hooks of the batch's request at this index.
    Hook(usize),
}

/// The batch decided: every request's outcome and the net writes.
struct Plan<'a> {
    /// `None` for requests settled by an earlier attempt.
    outcomes: Vec<Option<Outcome>>,
    /// Ids of appends refused for their expected version without their ids looked up.
    unchecked_refusals: Vec<Uuid>,
    events: EventRows<'a>,
    /// New link entries: stream, version, position.
    links: Vec<(&'a str, i64, i64)>,
    /// Streams deleted, with the position their events are removed through.
    deleted: HashMap<&'a str, i64>,
    /// Final versions of the streams the batch changed (`None`: deleted).
    versions: HashMap<&'a str, Option<u64>>,
    /// Hook statements, by the index of their append.
    hooks: Vec<(usize, HookWrites)>,
    last_position: u64,
    /// Every stream the batch named, as the batch leaves it.
    streams: HashMap<String, StreamState>,
}

/// The events to insert, as the columns' arrays.
#[derive(Default)]
struct EventRows<'a> {
    positions: Vec<i64>,
    ids: Vec<Uuid>,
    streams: Vec<&'a str>,
    versions: Vec<i64>,
    categories: Vec<&'a str>,
    types: Vec<&'a str>,
    data: Vec<&'a str>,
    metadata: Vec<&'a str>,
    recorded_at: i64,
}

impl<'a> Plan<'a> {
    /// Decides every request of `batch` in order, as if run one by one against `known`.
    fn decide(
        batch: &'a [Request],
        settled: &[Option<Outcome>],
        known: &Known,
        tail: &Tail,
        hooks: &[Arc<dyn AppendHook>],
        check_ids: bool,
    ) -> Self {
        let mut plan = Plan {
            outcomes: Vec::with_capacity(batch.len()),
            unchecked_refusals: Vec::new(),
            events: EventRows {
                recorded_at: tail.recorded_at,
                ..EventRows::default()
            },
            links: Vec::new(),
            deleted: HashMap::new(),
            versions: HashMap::new(),
            hooks: Vec::new(),
            last_position: tail.next_position - 1,
            streams: HashMap::new(),
        };
        let mut state = Decider {
            streams: known.streams.clone(),
            events: known.events.clone(),
            linked: known.linked.clone(),
            next_position: tail.next_position,
        };
        for (index, request) in batch.iter().enumerate() {
            if settled.get(index).is_some_and(Option::is_some) {
                plan.outcomes.push(None);
                continue;
            }
            let outcome = match request {
                WriteRequest::Append {
                    stream,
                    events,
                    expected,
                    extra,
                    ..
                } => Outcome::Append(state.append(
                    &mut plan,
                    index,
                    (stream, events, *expected),
                    hooks,
                    extra.as_ref(),
                    check_ids || events.iter().all(|e| known.looked_up.contains(&e.id)),
                )),
                WriteRequest::Link {
                    stream,
                    ids,
                    expected,
                    ..
                } => Outcome::Link(state.link(&mut plan, stream, ids, *expected)),
                WriteRequest::Delete {
                    stream, expected, ..
                } => Outcome::Delete(state.delete(&mut plan, stream, *expected)),
            };
            plan.outcomes.push(Some(outcome));
        }
        plan.last_position = state.next_position - 1;
        plan.streams = state.streams;
        plan
    }

    fn writes_nothing(&self) -> bool {
        self.events.ids.is_empty()
            && self.links.is_empty()
            && self.deleted.is_empty()
            && self.versions.is_empty()
            && self.hooks.is_empty()
    }

    /// Round trip 2: the net writes, the hook statements and `COMMIT`, pipelined. `Some` names the first
    /// statement that failed (the `COMMIT` then rolled everything back); `Err` is any other failure.
    async fn write(
        &self,
        conn: &Connection,
        hook_statements: &HashMap<String, Statement>,
        guard: Option<&Guard<'_>>,
    ) -> Result<Written> {
        let st = &conn.statements;
        let deleted: (Vec<&str>, Vec<i64>) = self.deleted.iter().map(|(s, p)| (*s, *p)).unzip();
        let upserts: (Vec<&str>, Vec<i64>) = self
            .versions
            .iter()
            .filter_map(|(s, v)| v.map(|v| (*s, v as i64)))
            .unzip();
        let removed: Vec<&str> = self
            .versions
            .iter()
            .filter(|(_, v)| v.is_none())
            .map(|(s, _)| *s)
            .collect();
        let links = (
            self.links.iter().map(|l| l.0).collect::<Vec<_>>(),
            self.links.iter().map(|l| l.1).collect::<Vec<_>>(),
            self.links.iter().map(|l| l.2).collect::<Vec<_>>(),
        );
        let e = &self.events;
        let mut steps: Vec<(Step, &Statement, Vec<&(dyn ToSql + Sync)>)> = Vec::new();
        if !deleted.0.is_empty() {
            // First: the deleted streams' old links go; links made after the delete are inserted below.
            steps.push((Step::Store, &st.delete_links, vec![&deleted.0]));
            steps.push((
                Step::Store,
                &st.upsert_deleted,
                vec![&deleted.0, &deleted.1],
            ));
        }
        if !removed.is_empty() {
            steps.push((Step::Store, &st.delete_streams, vec![&removed]));
        }
        if !upserts.0.is_empty() {
            steps.push((
                Step::Store,
                &st.upsert_streams,
                vec![&upserts.0, &upserts.1],
            ));
        }
        if !e.ids.is_empty() {
            steps.push((
                Step::Events,
                &st.insert_events,
                vec![
                    &e.positions,
                    &e.ids,
                    &e.streams,
                    &e.versions,
                    &e.categories,
                    &e.types,
                    &e.data,
                    &e.metadata,
                    &e.recorded_at,
                ],
            ));
        }
        if !links.0.is_empty() {
            steps.push((
                Step::Store,
                &st.insert_links,
                vec![&links.0, &links.1, &links.2],
            ));
        }
        for (owner, writes) in &self.hooks {
            for statement in &writes.statements {
                let Some(prepared) = hook_statements.get(statement.sql.as_ref()) else {
                    return Err(Error::backend(
                        "internal: a hook statement was not prepared",
                    ));
                };
                let params = statement
                    .params
                    .iter()
                    .map(|p| p.as_ref() as &(dyn ToSql + Sync))
                    .collect();
                steps.push((Step::Hook(*owner), prepared, params));
            }
        }
        // The one-round-trip path opens the transaction here: lock and guard go first in the same pipeline.
        let guard_params = guard.map(|g| {
            let mut names = Vec::with_capacity(g.streams.len());
            let mut versions = Vec::with_capacity(g.streams.len());
            let mut throughs = Vec::with_capacity(g.streams.len());
            for (name, state) in g.streams {
                names.push(name.as_str());
                versions.push(state.version.map(|v| v as i64));
                throughs.push(state.deleted_through);
            }
            (
                g.last_recorded,
                g.last_position as i64,
                names,
                versions,
                throughs,
            )
        });
        let prelude = async {
            let Some((recorded, position, names, versions, throughs)) = &guard_params else {
                return Ok(None);
            };
            let params: [&(dyn ToSql + Sync); 5] = [recorded, position, names, versions, throughs];
            let (begun, locked, checked) = tokio::join!(
                conn.client.batch_execute("BEGIN"),
                conn.client.query_one(&st.lock_head, &[]),
                conn.client.query_one(&st.guard, &params),
            );
            begun.map_err(|e| (Step::Store, e))?;
            locked.map_err(|e| (Step::Store, e))?;
            let clock: i64 = checked.map_err(|e| (Step::Guard, e))?.get(0);
            Ok(Some(clock))
        };
        let (clock, results, committed) = tokio::join!(
            prelude,
            futures::future::join_all(
                steps
                    .iter()
                    .map(|(_, statement, params)| conn.client.execute(*statement, params))
            ),
            conn.client.batch_execute("COMMIT"),
        );
        // The first failure is the cause; the statements after it failed only because the transaction was
        // aborted by then.
        let clock = match clock {
            Ok(clock) => clock,
            Err((step, e)) => return Ok(Written::Failed(step, e)),
        };
        for ((step, _, _), result) in steps.iter().zip(results) {
            if let Err(e) = result {
                return Ok(Written::Failed(*step, e));
            }
        }
        committed.map_err(backend)?;
        Ok(Written::Committed { clock })
    }
}

/// The state of the streams and events as the requests of a batch are decided one after another.
struct Decider {
    streams: HashMap<String, StreamState>,
    events: HashMap<Uuid, KnownEvent>,
    linked: HashSet<(String, i64)>,
    next_position: u64,
}

impl Decider {
    fn stream(&mut self, stream: &str) -> Result<&mut StreamState> {
        self.streams
            .get_mut(stream)
            .ok_or_else(|| Error::backend(format!("internal: stream `{stream}` was not looked up")))
    }

    fn append<'a>(
        &mut self,
        plan: &mut Plan<'a>,
        index: usize,
        (stream, events, expected): (&'a str, &'a [NewEvent], ExpectedVersion),
        hooks: &[Arc<dyn AppendHook>],
        extra: Option<&AppendExtra>,
        ids_known: bool,
    ) -> Result<AppendResult> {
        let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
        let state = self.stream(stream)?.clone();
        if ids.iter().any(|id| self.events.contains_key(id)) {
            let stored = ids
                .iter()
                .filter_map(|id| {
                    self.events.get(id).map(|e| Stored {
                        id: *id,
                        position: e.position,
                        version: e.version,
                        in_own_stream: e.stream == stream && e.position > state.deleted_through,
                        stream: e.stream.clone(),
                    })
                })
                .collect();
            return retry_or_duplicate(stream, &ids, stored);
        }
        let count = events.len() as u64;
        let first_version = state.version.map_or(0, |v| v + 1);
        if let Err(refused) = expected
            .check(stream, state.version)
            .and_then(|()| check_range(stream, first_version, events.len()))
        {
            if !ids_known {
                plan.unchecked_refusals.extend(ids);
            }
            return Err(refused);
        }
        let result = AppendResult {
            stream: stream.to_owned(),
            first_version,
            last_version: first_version + count - 1,
            first_position: self.next_position,
            last_position: self.next_position + count - 1,
            ids,
        };
        if !hooks.is_empty() || extra.is_some() {
            let mut writes = HookWrites::default();
            if let Err(e) = collect_hook_writes(stream, events, &result, hooks, extra, &mut writes)
            {
                return Err(Error::backend(format!(
                    "an append hook refused the append to `{stream}`: {e}"
                )));
            }
            if !writes.is_empty() {
                plan.hooks.push((index, writes));
            }
        }
        let category = category_of(stream);
        let rows = &mut plan.events;
        for (i, event) in events.iter().enumerate() {
            let position = (result.first_position + i as u64) as i64;
            let version = (first_version + i as u64) as i64;
            rows.positions.push(position);
            rows.ids.push(event.id);
            rows.streams.push(stream);
            rows.versions.push(version);
            rows.categories.push(category);
            rows.types.push(&event.event_type);
            rows.data.push(&event.data);
            rows.metadata.push(&event.metadata);
            self.events.insert(
                event.id,
                KnownEvent {
                    position,
                    stream: stream.to_owned(),
                    version,
                },
            );
        }
        self.stream(stream)?.version = Some(result.last_version);
        plan.versions.insert(stream, Some(result.last_version));
        self.next_position += count;
        Ok(result)
    }

    fn link<'a>(
        &mut self,
        plan: &mut Plan<'a>,
        stream: &'a str,
        ids: &[Uuid],
        expected: ExpectedVersion,
    ) -> Result<LinkResult> {
        let state = self.stream(stream)?.clone();
        expected.check(stream, state.version)?;
        let first_version = state.version.map_or(0, |v| v + 1);
        check_range(stream, first_version, ids.len())?;
        let mut positions = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(event) = self.events.get(id) else {
                return Err(Error::EventNotFound { id: *id });
            };
            let own = event.stream == stream && event.position > state.deleted_through;
            if own || self.linked.contains(&(stream.to_owned(), event.position)) {
                return Err(Error::DuplicateEvent {
                    id: *id,
                    stream: stream.to_owned(),
                    reason: "the event is already in this stream",
                });
            }
            positions.push(event.position);
        }
        let last_version = first_version + ids.len() as u64 - 1;
        for (i, position) in positions.into_iter().enumerate() {
            plan.links
                .push((stream, (first_version + i as u64) as i64, position));
            self.linked.insert((stream.to_owned(), position));
        }
        self.stream(stream)?.version = Some(last_version);
        plan.versions.insert(stream, Some(last_version));
        Ok(LinkResult {
            stream: stream.to_owned(),
            first_version,
            last_version,
        })
    }

    fn delete<'a>(
        &mut self,
        plan: &mut Plan<'a>,
        stream: &'a str,
        expected: ExpectedVersion,
    ) -> Result<()> {
        let next_position = self.next_position;
        let state = self.stream(stream)?;
        expected.check(stream, state.version)?;
        if state.version.is_none() {
            return Ok(());
        }
        // Every event of the log so far: the stream's own events are all at or before it.
        let through = next_position as i64 - 1;
        state.version = None;
        state.deleted_through = through;
        self.linked.retain(|(s, _)| s != stream);
        plan.links.retain(|l| l.0 != stream);
        plan.deleted.insert(stream, through);
        plan.versions.insert(stream, None);
        Ok(())
    }
}

/// Prepares the hook statements of the batch not yet prepared on this connection (pipelined) and returns a
/// handle for every statement the batch uses. `Err` names the SQL the server refused.
async fn prepare_hook_statements(
    conn: &Connection,
    hooks: &[(usize, HookWrites)],
) -> std::result::Result<HashMap<String, Statement>, (String, tokio_postgres::Error)> {
    let mut statements = HashMap::new();
    if hooks.is_empty() {
        return Ok(statements);
    }
    let mut missing: Vec<&str> = Vec::new();
    {
        let cache = conn
            .hook_statements
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for (_, writes) in hooks {
            for s in &writes.statements {
                let sql = s.sql.as_ref();
                match cache.get(sql) {
                    Some(prepared) => {
                        statements.insert(sql.to_owned(), prepared.clone());
                    }
                    None if !missing.contains(&sql) => missing.push(sql),
                    None => {}
                }
            }
        }
    }
    if missing.is_empty() {
        return Ok(statements);
    }
    let prepared =
        futures::future::join_all(missing.iter().map(|sql| conn.client.prepare(sql))).await;
    let mut cache = conn
        .hook_statements
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if cache.len() + missing.len() > MAX_CACHED_HOOK_STATEMENTS {
        cache.clear();
    }
    for (sql, result) in missing.iter().zip(prepared) {
        let statement = result.map_err(|e| ((*sql).to_owned(), e))?;
        cache.insert((*sql).to_owned(), statement.clone());
        statements.insert((*sql).to_owned(), statement);
    }
    Ok(statements)
}

fn check_range(stream: &str, first_version: u64, count: usize) -> Result<()> {
    if first_version.saturating_add(count as u64 - 1) > MAX_VERSION {
        return Err(Error::invalid(format!(
            "stream `{stream}` would pass the largest version {MAX_VERSION}"
        )));
    }
    Ok(())
}

/// A stored event met by an append's ids.
struct Stored {
    id: Uuid,
    position: i64,
    stream: String,
    version: i64,
    /// Still in the stream it was appended to (that stream was not deleted since).
    in_own_stream: bool,
}

/// Asks the store's hooks, then the append's extra, for their statements.
fn collect_hook_writes(
    stream: &str,
    events: &[NewEvent],
    result: &AppendResult,
    hooks: &[Arc<dyn AppendHook>],
    extra: Option<&AppendExtra>,
    writes: &mut HookWrites,
) -> std::result::Result<(), HookError> {
    if !hooks.is_empty() {
        let appended = AppendedEvent::list(events, result);
        for hook in hooks {
            hook.on_append(stream, &appended, writes)?;
        }
    }
    if let Some(extra) = extra {
        extra(result, writes)?;
    }
    Ok(())
}

/// Some id of the append is stored. It is an idempotent retry when every id sits, in order, at consecutive
/// versions of `stream` as an event appended there; otherwise it is a duplicate naming a stored id.
fn retry_or_duplicate(stream: &str, ids: &[Uuid], stored: Vec<Stored>) -> Result<AppendResult> {
    let duplicate = |id: Uuid, reason: &'static str| Error::DuplicateEvent {
        id,
        stream: stream.to_owned(),
        reason,
    };
    let mut by_id: std::collections::HashMap<Uuid, Stored> =
        stored.into_iter().map(|s| (s.id, s)).collect();
    let first_taken = ids
        .iter()
        .find(|id| by_id.contains_key(id))
        .map_or(Uuid::nil(), |id| *id);
    if by_id.is_empty() {
        return Err(Error::backend(format!(
            "internal: append to `{stream}` was taken for a retry without a stored id"
        )));
    }
    if by_id.len() < ids.len() {
        return Err(duplicate(
            first_taken,
            "the id is already used by a stored event (the append mixes new and stored ids)",
        ));
    }
    let rows: Vec<Stored> = ids.iter().filter_map(|id| by_id.remove(id)).collect();
    let (first_position, first_version) = (rows[0].position, rows[0].version);
    for (i, (id, row)) in ids.iter().zip(&rows).enumerate() {
        if row.stream != stream {
            return Err(duplicate(
                *id,
                "the id is already used by an event of another stream",
            ));
        }
        if !row.in_own_stream {
            return Err(duplicate(
                *id,
                "the id belongs to an event of this stream that was deleted",
            ));
        }
        if row.version != first_version + i as i64 || row.position != first_position + i as i64 {
            return Err(duplicate(
                *id,
                "the id is already stored, but not as an exact repeat of a committed append",
            ));
        }
    }
    let last = &rows[rows.len() - 1];
    Ok(AppendResult {
        stream: stream.to_owned(),
        first_version: first_version as u64,
        last_version: last.version as u64,
        first_position: first_position as u64,
        last_position: last.position as u64,
        ids: ids.to_vec(),
    })
}
