//! The single writer of a store handle and its group commit.
//!
//! One Tokio task owns the write connection. Appends, links and deletes reach it over a channel, each with a
//! oneshot reply. The writer takes the first request, drains whatever else is already queued, and runs them
//! all in one transaction; requests arriving while the transaction runs join it too (up to `max_batch`), and it
//! commits once the queue is empty: one commit (one WAL flush) for the whole batch.
//!
//! A batch starts by locking the single `head` row (`SELECT … FOR UPDATE`), which every Herald writer of
//! every process does, and ends by writing the new end of the log to it just before `COMMIT`. So write
//! transactions are serialised: positions are assigned by whoever holds the lock, contiguously, and a
//! transaction can only take positions after the previous holder has committed and become visible. A reader
//! therefore never sees position `n + 1` committed while `n` is still in flight (see the crate docs).
//!
//! Each request keeps its own checks and result, and a request refused by a rule writes nothing. An append is
//! a single multi-row statement (arrays through `unnest`) that checks the expected version and that none of
//! its ids is stored, takes the positions after the log's end as it finds it (the end moves with every append
//! of the transaction, so a refused append leaves no hole), and writes the events, their stream entries and
//! the stream's version only when the checks hold. Consecutive appends to distinct streams with distinct ids
//! share one statement (the checks and positions per append, in request order); an append that meets a stream
//! or id of the current statement starts the next one, so it sees the earlier writes. The statements of a run
//! are sent pipelined: one round trip for all of them. When a batch holds only plain appends and at least as
//! many requests as the previous batch, the lock, the appends, the head update and `COMMIT` all go in that one
//! round trip; otherwise a second round trip (head update and `COMMIT`) follows, and requests that arrived
//! meanwhile join the batch first. Only a refused append then reads why (version conflict, idempotent retry,
//! duplicate). Links and deletes read their checks, then write. No `SAVEPOINT` per request: the checks rule
//! out every constraint a write could break (nobody else writes while the head is locked), and more than 64
//! subtransactions in one transaction would slow every snapshot on the server. A statement that fails anyway
//! (connection lost, server error) fails the whole batch.
//! [Append hooks](crate::hook) are the one exception to "no savepoint": an append with hooks (or an extra)
//! runs alone, inside `SAVEPOINT herald_hook`, because the rows a hook writes are not the writer's to check
//! beforehand; a hook error rolls back to it and fails that append only. Its two round trips are: savepoint and
//! append statement pipelined; then every hook statement and the `RELEASE`, pipelined. A store without hooks
//! pays nothing for them.
//! Replies go out after `COMMIT` succeeds and the commit has been announced (`NOTIFY` on a connection of its
//! own, see [`Writer::announce`]); if the transaction fails, every request of the batch gets the error
//! (nothing of the batch was written).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use herald_core::stream::category_of;
use herald_core::version::MAX_VERSION;
use herald_core::{AppendResult, Error, ExpectedVersion, Head, LinkResult, NewEvent, Result};
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Config, Statement};
use uuid::Uuid;

use crate::hook::{AppendExtra, AppendHook, AppendedEvent, HookError, HookWrites};
use crate::schema::{self, backend};

/// One write request and where its answer goes.
pub(crate) enum Request {
    Append {
        stream: String,
        events: Vec<NewEvent>,
        expected: ExpectedVersion,
        /// Runs inside this append's hook savepoint, after the hooks (`PostgresStore::append_with`). In a
        /// mutex only so that requests are `Sync` (the writer holds them by reference across awaits); the
        /// writer alone takes it.
        extra: Option<Mutex<AppendExtra>>,
        reply: oneshot::Sender<Result<AppendResult>>,
    },
    Link {
        stream: String,
        ids: Vec<Uuid>,
        expected: ExpectedVersion,
        reply: oneshot::Sender<Result<LinkResult>>,
    },
    Delete {
        stream: String,
        expected: ExpectedVersion,
        reply: oneshot::Sender<Result<()>>,
    },
}

/// A request's result, held until the batch commits.
enum Outcome {
    Append(Result<AppendResult>),
    Link(Result<LinkResult>),
    Delete(Result<()>),
}

impl Outcome {
    /// Whether the request succeeded: a commit for the head's count (idempotent retries included, as on
    /// every backend; the position only moves when events were written).
    fn changed(&self) -> bool {
        match self {
            Outcome::Append(r) => r.is_ok(),
            Outcome::Link(r) => r.is_ok(),
            Outcome::Delete(r) => r.is_ok(),
        }
    }
}

/// Group-commit counters.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) requests: AtomicU64,
    pub(crate) transactions: AtomicU64,
}

/// Prepared statements of the write connection.
struct Statements {
    version: Statement,
    ids: Statement,
    append: Statement,
    append_many: Statement,
    link_ids: Statement,
    link: Statement,
    delete: Statement,
    set_head: Statement,
}

const LOCK_HEAD: &str = "BEGIN; SELECT position FROM head FOR UPDATE";

/// Several appends in one statement (to distinct streams, with distinct ids: see [`append_run`]). Per append
/// (`$1`–`$5`: stream, category, expected-version kind and value, event count) and per event (`$6`–`$11`:
/// which append, index in it, id, type, data, metadata). Each append is checked on its own exactly as the
/// one-append statement does; the accepted ones take consecutive positions after the log's end in their
/// order, so a refused one leaves no hole. One row per append, in order: the last version and first position
/// written (NULL when refused), the stream's version found, whether an id was already stored, its ordinal.
const APPEND_MANY: &str = "
    WITH ev AS (
        SELECT * FROM unnest($6::integer[], $7::bigint[], $8::uuid[], $9::text[], $10::text[], $11::text[])
                 AS t(a, i, id, event_type, data, metadata)
    ), taken AS (
        SELECT DISTINCT ev.a FROM ev
        WHERE ev.id IN (SELECT id FROM events WHERE id = ANY($8::uuid[]))
    ), tail AS (
        SELECT coalesce(max(position), 0) AS p FROM events
    ), clock AS (
        SELECT greatest(recorded_at, floor(extract(epoch FROM clock_timestamp()) * 1000000)::bigint) AS t
        FROM head
    ), req AS (
        SELECT r.a::integer AS a, r.stream, r.category, r.kind, r.exact, r.n, s.version AS v,
               (tk.a IS NOT NULL) AS any_taken
        FROM unnest($1::text[], $2::text[], $3::integer[], $4::bigint[], $5::bigint[])
               WITH ORDINALITY AS r(stream, category, kind, exact, n, a)
        LEFT JOIN streams s ON s.name = r.stream
        LEFT JOIN taken tk ON tk.a = r.a
    ), accepted AS (
        SELECT a, stream, category, v, n, (sum(n) OVER (ORDER BY a) - n)::bigint AS before
        FROM req
        WHERE NOT any_taken
          AND coalesce(v, -1) <= 9223372036854775807 - n
          AND CASE kind
                WHEN 0 THEN true
                WHEN 1 THEN v IS NULL
                WHEN 2 THEN v IS NOT NULL
                ELSE v IS NOT DISTINCT FROM exact
              END
    ), ins AS (
        INSERT INTO events
            (position, id, stream, version, category, event_type, data, metadata, recorded_at)
        SELECT tail.p + acc.before + ev.i, ev.id, acc.stream, coalesce(acc.v + 1, 0) + ev.i - 1,
               acc.category, ev.event_type, ev.data, ev.metadata, clock.t
        FROM accepted acc JOIN ev ON ev.a = acc.a, tail, clock
        RETURNING stream, version, position
    ), entries AS (
        INSERT INTO stream_entries (stream, version, position, is_link)
        SELECT stream, version, position, false FROM ins
    ), upsert AS (
        INSERT INTO streams (name, version)
        SELECT acc.stream, coalesce(acc.v + 1, 0) + acc.n - 1 FROM accepted acc
        ON CONFLICT (name) DO UPDATE SET version = excluded.version
    )
    SELECT coalesce(acc.v + 1, 0) + acc.n - 1, tail.p + acc.before + 1, r.v, r.any_taken, r.a
    FROM req r LEFT JOIN accepted acc ON acc.a = r.a, tail
    ORDER BY r.a";

impl Statements {
    async fn prepare(client: &Client) -> std::result::Result<Self, tokio_postgres::Error> {
        Ok(Statements {
            version: client
                .prepare("SELECT version FROM streams WHERE name = $1")
                .await?,
            ids: client
                .prepare(
                    "SELECT e.id, e.position, e.stream, e.version, se.is_link
                     FROM events e
                     LEFT JOIN stream_entries se
                       ON se.stream = e.stream AND se.version = e.version AND se.position = e.position
                     WHERE e.id = ANY($1::uuid[])",
                )
                .await?,
            append: client
                .prepare(
                    "WITH current AS (
                        SELECT (SELECT version FROM streams WHERE name = $2::text) AS v
                     ), taken AS (
                        SELECT EXISTS (SELECT 1 FROM events WHERE id = ANY($1::uuid[])) AS any_taken
                     ), tail AS (
                        SELECT coalesce(max(position), 0) AS p FROM events
                     ), clock AS (
                        SELECT greatest(recorded_at,
                                        floor(extract(epoch FROM clock_timestamp()) * 1000000)::bigint) AS t
                        FROM head
                     ), accepted AS (
                        SELECT v FROM current, taken
                        WHERE NOT any_taken
                          AND coalesce(v, -1) <= 9223372036854775807 - $9::bigint
                          AND CASE $7::integer
                                WHEN 0 THEN true
                                WHEN 1 THEN v IS NULL
                                WHEN 2 THEN v IS NOT NULL
                                ELSE v IS NOT DISTINCT FROM $8::bigint
                              END
                     ), ev AS (
                        INSERT INTO events
                            (position, id, stream, version, category, event_type, data, metadata, recorded_at)
                        SELECT tail.p + t.i, t.id, $2::text, coalesce(a.v + 1, 0) + t.i - 1, $3::text,
                               t.event_type, t.data, t.metadata, clock.t
                        FROM accepted a, tail, clock,
                             unnest($1::uuid[], $4::text[], $5::text[], $6::text[])
                               WITH ORDINALITY AS t(id, event_type, data, metadata, i)
                        RETURNING position, version
                     ), entries AS (
                        INSERT INTO stream_entries (stream, version, position, is_link)
                        SELECT $2::text, version, position, false FROM ev
                     ), upsert AS (
                        INSERT INTO streams (name, version)
                        SELECT $2::text, max(version) FROM ev HAVING count(*) > 0
                        ON CONFLICT (name) DO UPDATE SET version = excluded.version
                        RETURNING version
                     )
                     SELECT (SELECT version FROM upsert), (SELECT min(position) FROM ev),
                            (SELECT v FROM current), (SELECT any_taken FROM taken)",
                )
                .await?,
            append_many: client.prepare(APPEND_MANY).await?,
            link_ids: client
                .prepare(
                    "SELECT e.id, e.position,
                            EXISTS (SELECT 1 FROM stream_entries se
                                    WHERE se.stream = $2::text AND se.position = e.position)
                     FROM events e WHERE e.id = ANY($1::uuid[])",
                )
                .await?,
            link: client
                .prepare(
                    "WITH entries AS (
                        INSERT INTO stream_entries (stream, version, position, is_link)
                        SELECT $1::text, $2::bigint + t.i - 1, t.position, true
                        FROM unnest($3::bigint[]) WITH ORDINALITY AS t(position, i)
                     )
                     INSERT INTO streams (name, version) VALUES ($1::text, $4::bigint)
                     ON CONFLICT (name) DO UPDATE SET version = excluded.version",
                )
                .await?,
            delete: client
                .prepare(
                    "WITH entries AS (DELETE FROM stream_entries WHERE stream = $1::text)
                     DELETE FROM streams WHERE name = $1::text",
                )
                .await?,
            set_head: client
                .prepare(
                    "UPDATE head SET position = (SELECT coalesce(max(position), 0) FROM events),
                                     recorded_at = greatest(recorded_at, coalesce(
                                         (SELECT recorded_at FROM events ORDER BY position DESC LIMIT 1), 0))
                     RETURNING position",
                )
                .await?,
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

/// Where the batch's next event goes.
struct Tail {
    next_position: u64,
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
    /// Requests in the previous batch: how many concurrent writers to expect (see [`Writer::commit_batch`]).
    pub(crate) last_batch: usize,
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
            while batch.len() < self.max_batch {
                match self.requests.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
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
            self.commit_batch(c, &mut batch, &mut notifier).await;
        }
        tracing::debug!("herald-postgres writer stopped");
    }

    /// Tells the listeners of every process that the log now ends at `last_position`, after `COMMIT` and
    /// before any reply: an acknowledged append is always announced, even if this process exits right after.
    ///
    /// Not in the batch transaction: a notifying commit holds PostgreSQL's global notify lock through its WAL
    /// flush, which would add to the time the head row stays locked (and serialise with every other notifying
    /// transaction of the database). The notification goes on a connection of its own, in a transaction that
    /// does not wait for a flush (`synchronous_commit = off` for that session): one short round trip. If it
    /// fails, the append still succeeded; followers find the events by polling.
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
        if let Err(e) = n
            .client
            .execute(&n.notify, &[&self.channel, &payload])
            .await
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

    /// Runs `batch` in one transaction. Requests that arrive while it runs join it (up to `max_batch`), so
    /// the batch grows with the load: callers woken by the previous commit are not left for the next one.
    async fn commit_batch(
        &mut self,
        conn: &Connection,
        batch: &mut Vec<Request>,
        notifier: &mut Option<Notifier>,
    ) {
        let started = std::time::Instant::now();
        let mut outcomes = Vec::with_capacity(batch.len());
        let requests = &mut self.requests;
        let max_batch = self.max_batch;
        let last_batch = self.last_batch;
        let hooks = &self.hooks[..];
        let result = async {
            // The head lock and the first appends go out together (one round trip): the appends stamp their
            // time from the locked head row themselves, so they need nothing back from the lock.
            let first_run = batch
                .iter()
                .take_while(|r| is_plain_append(r, hooks))
                .count();
            if first_run == batch.len() && batch.len() >= last_batch {
                // Only plain appends, and at least as many as last time (nobody is likely still on the way:
                // otherwise the two-round-trip path below lets latecomers join before COMMIT, so that
                // concurrent writers keep sharing one commit instead of splitting into alternating small
                // batches). The whole transaction is one round trip. Lock, appends, head update and
                // COMMIT are pipelined; each append checks its own rules server-side, so nothing needs an
                // answer before COMMIT. (Requests arriving meanwhile form the next batch.) If any statement
                // fails, PostgreSQL turns the COMMIT into a rollback, and that error fails the batch below.
                // A refused append reads why after the commit (events are never removed; a stream deleted
                // meanwhile reads as a retry that came after the delete), and a failure to read it fails that
                // append alone: the others are committed.
                let (tail, appended, set, committed) = tokio::join!(
                    lock_head(&conn.client),
                    append_run(conn, &batch[..], Reasons::AfterCommit),
                    conn.client.query_one(&conn.statements.set_head, &[]),
                    conn.client.batch_execute("COMMIT"),
                );
                tail?;
                outcomes.extend(appended?);
                let last_position = set.map_err(backend)?.get::<_, i64>(0) as u64;
                committed.map_err(backend)?;
                let changed = outcomes.iter().filter(|o| o.changed()).count() as u64;
                return Ok::<_, Error>((last_position, changed));
            }
            let (tail, first) = tokio::join!(
                lock_head(&conn.client),
                append_run(conn, &batch[..first_run], Reasons::InTransaction),
            );
            let tail = tail?;
            outcomes.extend(first?);
            let mut next = first_run;
            loop {
                while next < batch.len() {
                    // A run of consecutive appends is sent pipelined: one round trip for all of them.
                    let run = batch[next..]
                        .iter()
                        .take_while(|r| is_plain_append(r, hooks))
                        .count();
                    if run > 0 {
                        outcomes.extend(
                            append_run(conn, &batch[next..next + run], Reasons::InTransaction)
                                .await?,
                        );
                        next += run;
                    } else if matches!(batch[next], Request::Append { .. }) {
                        outcomes.push(append_hooked(conn, &mut batch[next], hooks).await?);
                        next += 1;
                    } else {
                        outcomes.push(apply(conn, &batch[next]).await?);
                        next += 1;
                    }
                }
                while batch.len() < max_batch {
                    match requests.try_recv() {
                        Ok(request) => batch.push(request),
                        Err(_) => break,
                    }
                }
                if next == batch.len() {
                    break;
                }
            }
            let changed = outcomes.iter().filter(|o| o.changed()).count() as u64;
            if changed == 0 {
                conn.client
                    .batch_execute("ROLLBACK")
                    .await
                    .map_err(backend)?;
                return Ok((tail.next_position - 1, 0));
            }
            // Pipelined: one round trip.
            let (set, committed) = tokio::join!(
                conn.client.query_one(&conn.statements.set_head, &[]),
                conn.client.batch_execute("COMMIT"),
            );
            let last_position = set.map_err(backend)?.get::<_, i64>(0) as u64;
            committed.map_err(backend)?;
            Ok::<_, Error>((last_position, changed))
        }
        .await;
        let size = batch.len();
        self.last_batch = size;
        self.counters
            .requests
            .fetch_add(size as u64, Ordering::Relaxed);
        self.counters.transactions.fetch_add(1, Ordering::Relaxed);

        match result {
            Ok((last_position, changed)) => {
                if changed > 0 {
                    self.announce(notifier, last_position).await;
                    self.head.send_modify(|h| {
                        h.position = h.position.max(last_position);
                        h.commits += changed;
                    });
                }
                for (request, outcome) in batch.drain(..).zip(outcomes) {
                    reply(request, outcome);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, requests = size, "herald-postgres batch failed; nothing written");
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
        tracing::trace!(requests = size, elapsed = ?started.elapsed(), "herald-postgres group commit");
    }
}

/// Begins the batch transaction and locks the head row: the serialisation point of every Herald writer.
async fn lock_head(client: &Client) -> Result<Tail> {
    let messages = client.simple_query(LOCK_HEAD).await.map_err(backend)?;
    let row = messages
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        })
        .ok_or_else(|| Error::backend("the head row is missing; was the schema altered?"))?;
    let parse = |i: usize| -> Result<i64> {
        row.get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| Error::backend("unreadable head row"))
    };
    Ok(Tail {
        next_position: parse(0)? as u64 + 1,
    })
}

impl Request {
    /// Answers this request with `err`.
    fn fail(self, err: Error) {
        match self {
            Request::Append { reply, .. } => {
                let _ = reply.send(Err(err));
            }
            Request::Link { reply, .. } => {
                let _ = reply.send(Err(err));
            }
            Request::Delete { reply, .. } => {
                let _ = reply.send(Err(err));
            }
        }
    }
}

fn reply(request: Request, outcome: Outcome) {
    // A caller that gave up (dropped its future) no longer listens: ignoring the send error is right.
    match (request, outcome) {
        (Request::Append { reply, .. }, Outcome::Append(r)) => {
            let _ = reply.send(r);
        }
        (Request::Link { reply, .. }, Outcome::Link(r)) => {
            let _ = reply.send(r);
        }
        (Request::Delete { reply, .. }, Outcome::Delete(r)) => {
            let _ = reply.send(r);
        }
        (request, _) => request.fail(Error::backend("internal: outcome does not match request")),
    }
}

/// Runs one link or delete (appends go through [`append_run`]). `Err` means the whole transaction is lost
/// (every request of the batch fails); a request refused by a rule is an `Ok` outcome holding its error.
async fn apply(conn: &Connection, request: &Request) -> Result<Outcome> {
    Ok(match request {
        Request::Append { .. } => {
            return Err(Error::backend("internal: appends run through append_run"));
        }
        Request::Link {
            stream,
            ids,
            expected,
            ..
        } => Outcome::Link(link(conn, stream, ids, *expected).await?),
        Request::Delete {
            stream, expected, ..
        } => Outcome::Delete(delete(conn, stream, *expected).await?),
    })
}

/// Runs one write statement. The checks before it rule out every constraint it could break (under the head
/// lock nobody else writes), so a failure here is unexpected and takes the batch down (`Err`).
async fn write(
    conn: &Connection,
    statement: &Statement,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<()> {
    conn.client
        .execute(statement, params)
        .await
        .map(|_| ())
        .map_err(backend)
}

async fn current_version(conn: &Connection, stream: &str) -> Result<Option<u64>> {
    let row = conn
        .client
        .query_opt(&conn.statements.version, &[&stream])
        .await
        .map_err(backend)?;
    Ok(row.map(|r| r.get::<_, i64>(0) as u64))
}

fn check_range(stream: &str, first_version: u64, count: usize) -> Result<()> {
    if first_version.saturating_add(count as u64 - 1) > MAX_VERSION {
        return Err(Error::invalid(format!(
            "stream `{stream}` would pass the largest version {MAX_VERSION}"
        )));
    }
    Ok(())
}

/// A stored event met by an append's id check.
struct Stored {
    id: Uuid,
    position: i64,
    stream: String,
    version: i64,
    /// `Some(false)`: its own entry is still in its stream; `None`: that stream was deleted since.
    entry_is_link: Option<bool>,
}

/// The arguments of one append statement.
struct AppendArgs<'a> {
    ids: Vec<Uuid>,
    stream: &'a str,
    category: &'a str,
    types: Vec<&'a str>,
    data: Vec<&'a str>,
    metadata: Vec<&'a str>,
    kind: i32,
    exact: i64,
    count: i64,
}

impl<'a> AppendArgs<'a> {
    fn new(stream: &'a str, events: &'a [NewEvent], expected: ExpectedVersion) -> Self {
        let (kind, exact) = match expected {
            ExpectedVersion::Any => (0, 0),
            ExpectedVersion::NoStream => (1, 0),
            ExpectedVersion::StreamExists => (2, 0),
            ExpectedVersion::Exact(v) => (3, v as i64),
        };
        AppendArgs {
            ids: events.iter().map(|e| e.id).collect(),
            stream,
            category: category_of(stream),
            types: events.iter().map(|e| e.event_type.as_str()).collect(),
            data: events.iter().map(|e| e.data.as_str()).collect(),
            metadata: events.iter().map(|e| e.metadata.as_str()).collect(),
            kind,
            exact,
            count: events.len() as i64,
        }
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 9] {
        [
            &self.ids,
            &self.stream,
            &self.category,
            &self.types,
            &self.data,
            &self.metadata,
            &self.kind,
            &self.exact,
            &self.count,
        ]
    }
}

/// Runs consecutive appends, pipelined (one round trip for all). Appends to distinct streams with distinct ids
/// share one statement ([`APPEND_MANY`]): the server plans and runs one statement for the lot instead of one
/// per append, which is most of the cost of a batch of small appends. An append to a stream (or with an id)
/// already in the current statement starts the next statement, so it sees the earlier one's writes, exactly
/// as if the appends ran one by one in this order (they were concurrent requests: any order is a valid one).
/// Each append checks its own expected version and ids; refused appends then read why (idempotent retry or
/// duplicate).
/// When a refused append reads why it was refused.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reasons {
    /// Inside the batch transaction: a failed read aborts the transaction, so it must fail the batch.
    InTransaction,
    /// After the batch committed: a failed read fails that append only.
    AfterCommit,
}

async fn append_run(conn: &Connection, run: &[Request], reasons: Reasons) -> Result<Vec<Outcome>> {
    if run.is_empty() {
        return Ok(Vec::new());
    }
    let mut args = Vec::with_capacity(run.len());
    for request in run {
        let Request::Append {
            stream,
            events,
            expected,
            ..
        } = request
        else {
            return Err(Error::backend("internal: append_run given a non-append"));
        };
        args.push((AppendArgs::new(stream, events, *expected), *expected));
    }
    // Split into statements: a new one whenever an append meets a stream or id of the current one.
    let mut groups: Vec<std::ops::Range<usize>> = Vec::new();
    let mut streams = std::collections::HashSet::new();
    let mut ids = std::collections::HashSet::new();
    let mut start = 0;
    for (i, (a, _)) in args.iter().enumerate() {
        let clash = streams.contains(a.stream) || a.ids.iter().any(|id| ids.contains(id));
        if clash {
            groups.push(start..i);
            start = i;
            streams.clear();
            ids.clear();
        }
        streams.insert(a.stream);
        ids.extend(a.ids.iter().copied());
    }
    groups.push(start..args.len());
    let many: Vec<ManyArgs> = groups
        .iter()
        .filter(|g| g.len() > 1)
        .map(|g| ManyArgs::new(&args[g.clone()]))
        .collect();
    let mut many_params = many.iter().map(ManyArgs::params);
    let one_params: Vec<_> = groups
        .iter()
        .filter(|g| g.len() == 1)
        .map(|g| args[g.start].0.params())
        .collect();
    let mut one_params = one_params.iter();
    // Sent in order (join_all polls, and so sends, in order); answered in order.
    let pending: Vec<_> = groups
        .iter()
        .map(|g| {
            if g.len() == 1 {
                let p = one_params.next().map_or(&[][..], |p| &p[..]);
                futures::future::Either::Left(async move {
                    conn.client.query(&conn.statements.append, p).await
                })
            } else {
                let p = many_params.next().unwrap_or_default();
                futures::future::Either::Right(async move {
                    conn.client.query(&conn.statements.append_many, &p).await
                })
            }
        })
        .collect();
    // Several-appends statements always get a plan made for their actual arrays. Left to PostgreSQL's default
    // (`auto`), the statement may switch to a cached generic plan after a few executions, made while the log
    // was small and kept as it grows: measured, 16-task appends then slowed round after round (10 344 →
    // 3 285/s over five rounds of the peers bench; stable with this). Planning costs ~0.3 ms per batch, paid
    // once for all its appends. Sent first in the same pipeline; it holds for this transaction only.
    let custom_plans = async {
        if many.is_empty() {
            Ok(())
        } else {
            conn.client
                .batch_execute("SET LOCAL plan_cache_mode = force_custom_plan")
                .await
        }
    };
    let (custom, answers) = tokio::join!(custom_plans, futures::future::join_all(pending));
    custom.map_err(backend)?;
    let mut outcomes = Vec::with_capacity(run.len());
    for (group, rows) in groups.iter().zip(answers) {
        let rows = rows.map_err(backend)?;
        if rows.len() != group.len() {
            return Err(Error::backend(format!(
                "internal: {} appends answered with {} rows",
                group.len(),
                rows.len()
            )));
        }
        for ((args, expected), row) in args[group.clone()].iter().zip(rows) {
            let (outcome, _) = append_outcome(conn, args, *expected, row, reasons).await?;
            outcomes.push(Outcome::Append(outcome));
        }
    }
    Ok(outcomes)
}

/// The arguments of one [`APPEND_MANY`] statement.
struct ManyArgs<'a> {
    streams: Vec<&'a str>,
    categories: Vec<&'a str>,
    kinds: Vec<i32>,
    exacts: Vec<i64>,
    counts: Vec<i64>,
    event_append: Vec<i32>,
    event_index: Vec<i64>,
    ids: Vec<Uuid>,
    types: Vec<&'a str>,
    data: Vec<&'a str>,
    metadata: Vec<&'a str>,
}

impl<'a> ManyArgs<'a> {
    fn new(appends: &[(AppendArgs<'a>, ExpectedVersion)]) -> Self {
        let events: usize = appends.iter().map(|(a, _)| a.ids.len()).sum();
        let mut m = ManyArgs {
            streams: Vec::with_capacity(appends.len()),
            categories: Vec::with_capacity(appends.len()),
            kinds: Vec::with_capacity(appends.len()),
            exacts: Vec::with_capacity(appends.len()),
            counts: Vec::with_capacity(appends.len()),
            event_append: Vec::with_capacity(events),
            event_index: Vec::with_capacity(events),
            ids: Vec::with_capacity(events),
            types: Vec::with_capacity(events),
            data: Vec::with_capacity(events),
            metadata: Vec::with_capacity(events),
        };
        for (ordinal, (a, _)) in appends.iter().enumerate() {
            m.streams.push(a.stream);
            m.categories.push(a.category);
            m.kinds.push(a.kind);
            m.exacts.push(a.exact);
            m.counts.push(a.count);
            for i in 0..a.ids.len() {
                m.event_append.push(ordinal as i32 + 1);
                m.event_index.push(i as i64 + 1);
            }
            m.ids.extend_from_slice(&a.ids);
            m.types.extend_from_slice(&a.types);
            m.data.extend_from_slice(&a.data);
            m.metadata.extend_from_slice(&a.metadata);
        }
        m
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.streams,
            &self.categories,
            &self.kinds,
            &self.exacts,
            &self.counts,
            &self.event_append,
            &self.event_index,
            &self.ids,
            &self.types,
            &self.data,
            &self.metadata,
        ]
    }
}

/// What the append statement's row says: the append's result, and whether it wrote its events (`false` for
/// a refusal and for an idempotent retry of a committed append). Refused appends read why.
async fn append_outcome(
    conn: &Connection,
    args: &AppendArgs<'_>,
    expected: ExpectedVersion,
    row: tokio_postgres::Row,
    reasons: Reasons,
) -> Result<(Result<AppendResult>, bool)> {
    let last_version: Option<i64> = row.get(0);
    let first_position: Option<i64> = row.get(1);
    let current: Option<i64> = row.get(2);
    let any_taken: bool = row.get(3);
    let count = args.count as u64;
    let stream = args.stream;
    Ok(match (last_version, first_position) {
        (Some(last), Some(first)) => (
            Ok(AppendResult {
                stream: stream.to_owned(),
                first_version: last as u64 + 1 - count,
                last_version: last as u64,
                first_position: first as u64,
                last_position: first as u64 + count - 1,
                ids: args.ids.clone(),
            }),
            true,
        ),
        _ if any_taken => match refused_ids(conn, stream, &args.ids).await {
            Ok(outcome) => (outcome, false),
            Err(e) if reasons == Reasons::AfterCommit => (Err(e), false),
            Err(e) => return Err(e),
        },
        _ => {
            let current = current.map(|v| v as u64);
            let refused = match expected.check(stream, current) {
                Err(conflict) => conflict,
                Ok(()) => match check_range(stream, current.map_or(0, |v| v + 1), count as usize) {
                    Err(e) => e,
                    Ok(()) => Error::backend(format!(
                        "append to `{stream}` was not written and no rule refused it"
                    )),
                },
            };
            (Err(refused), false)
        }
    })
}

/// Whether `request` is an append that runs without hooks, so it can share a pipelined run.
fn is_plain_append(request: &Request, hooks: &[Arc<dyn AppendHook>]) -> bool {
    matches!(request, Request::Append { extra: None, .. }) && hooks.is_empty()
}

const HOOK_SAVEPOINT: &str = "SAVEPOINT herald_hook";
const HOOK_RELEASE: &str = "RELEASE SAVEPOINT herald_hook";
const HOOK_ROLLBACK: &str = "ROLLBACK TO SAVEPOINT herald_hook; RELEASE SAVEPOINT herald_hook";

/// Runs one append with hooks or an extra inside its own savepoint (see [`crate::hook`]): the savepoint and
/// the append statement in one round trip, then, if the events were written, every hook statement and the
/// release in another. A hook that fails rolls back to the savepoint: this append fails, the batch goes on.
/// `Err` means the whole transaction is lost.
async fn append_hooked(
    conn: &Connection,
    request: &mut Request,
    hooks: &[Arc<dyn AppendHook>],
) -> Result<Outcome> {
    let Request::Append {
        stream,
        events,
        expected,
        extra,
        ..
    } = request
    else {
        return Err(Error::backend("internal: append_hooked given a non-append"));
    };
    let args = AppendArgs::new(stream, events, *expected);
    let params = args.params();
    let (savepoint, row) = tokio::join!(
        conn.client.batch_execute(HOOK_SAVEPOINT),
        conn.client.query_one(&conn.statements.append, &params),
    );
    savepoint.map_err(backend)?;
    let (outcome, written) = append_outcome(
        conn,
        &args,
        *expected,
        row.map_err(backend)?,
        Reasons::InTransaction,
    )
    .await?;
    let result = match outcome {
        Ok(result) if written => result,
        other => {
            conn.client
                .batch_execute(HOOK_RELEASE)
                .await
                .map_err(backend)?;
            return Ok(Outcome::Append(other));
        }
    };
    let mut writes = HookWrites::default();
    let extra = extra
        .take()
        .map(|e| e.into_inner().unwrap_or_else(|e| e.into_inner()));
    let collected = collect_hook_writes(stream, events, &result, hooks, extra, &mut writes);
    let failure = match collected {
        Err(e) => Some(format!(
            "an append hook refused the append to `{stream}`: {e}"
        )),
        Ok(()) => run_hook_writes(conn, &writes).await.err().map(|e| {
            format!(
                "an append hook's statement failed for the append to `{stream}`: {}",
                backend(e)
            )
        }),
    };
    match failure {
        None => Ok(Outcome::Append(Ok(result))),
        Some(message) => {
            // The events and whatever the hooks wrote are undone; positions stay free for the next append
            // (each append statement takes the log's end as it finds it).
            conn.client
                .batch_execute(HOOK_ROLLBACK)
                .await
                .map_err(backend)?;
            Ok(Outcome::Append(Err(Error::backend(message))))
        }
    }
}

/// Asks the store's hooks, then the append's extra, for their statements.
fn collect_hook_writes(
    stream: &str,
    events: &[NewEvent],
    result: &AppendResult,
    hooks: &[Arc<dyn AppendHook>],
    extra: Option<AppendExtra>,
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

/// Sends the hook statements and the savepoint's release, pipelined (statements not yet prepared on this
/// connection are prepared first, also pipelined). The first error is returned; the statements after it
/// fail too (the transaction is aborted until the caller rolls back to the savepoint).
async fn run_hook_writes(
    conn: &Connection,
    writes: &HookWrites,
) -> std::result::Result<(), tokio_postgres::Error> {
    let missing: Vec<&str> = {
        let cache = conn
            .hook_statements
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut missing: Vec<&str> = writes
            .statements
            .iter()
            .map(|s| s.sql.as_ref())
            .filter(|sql| !cache.contains_key(*sql))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        missing
    };
    if !missing.is_empty() {
        let prepared =
            futures::future::join_all(missing.iter().map(|sql| conn.client.prepare(sql))).await;
        let mut cache = conn
            .hook_statements
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if cache.len() + missing.len() > MAX_CACHED_HOOK_STATEMENTS {
            cache.clear();
        }
        for (sql, statement) in missing.iter().zip(prepared) {
            cache.insert((*sql).to_owned(), statement?);
        }
    }
    let statements: Vec<(Statement, Vec<&(dyn ToSql + Sync)>)> = {
        let cache = conn
            .hook_statements
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        writes
            .statements
            .iter()
            .filter_map(|s| {
                let params = s
                    .params
                    .iter()
                    .map(|p| p.as_ref() as &(dyn ToSql + Sync))
                    .collect();
                cache.get(s.sql.as_ref()).map(|st| (st.clone(), params))
            })
            .collect()
    };
    let (results, released) = tokio::join!(
        futures::future::join_all(
            statements
                .iter()
                .map(|(statement, params)| conn.client.execute(statement, params))
        ),
        conn.client.batch_execute(HOOK_RELEASE),
    );
    for result in results {
        result?;
    }
    released
}

/// An append found some of its ids stored: an idempotent retry or a duplicate.
async fn refused_ids(
    conn: &Connection,
    stream: &str,
    ids: &[Uuid],
) -> Result<Result<AppendResult>> {
    let ids_vec = ids.to_vec();
    let stored = conn
        .client
        .query(&conn.statements.ids, &[&ids_vec])
        .await
        .map_err(backend)?;
    let stored = stored
        .iter()
        .map(|r| Stored {
            id: r.get(0),
            position: r.get(1),
            stream: r.get(2),
            version: r.get(3),
            entry_is_link: r.get(4),
        })
        .collect();
    Ok(retry_or_duplicate(stream, ids, stored))
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
        // The ids were seen stored and cannot vanish under the head lock; a concurrent delete cannot remove
        // events either. Reaching this means the tables were changed outside Herald.
        return Err(Error::backend(format!(
            "append to `{stream}`: its ids were reported stored but are not"
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
        if row.entry_is_link != Some(false) {
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

async fn link(
    conn: &Connection,
    stream: &str,
    ids: &[Uuid],
    expected: ExpectedVersion,
) -> Result<Result<LinkResult>> {
    let id_vec = ids.to_vec();
    let id_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&id_vec, &stream];
    let (version, found) = tokio::join!(
        current_version(conn, stream),
        conn.client.query(&conn.statements.link_ids, &id_params),
    );
    let current = version?;
    let found = found.map_err(backend)?;
    if let Err(conflict) = expected.check(stream, current) {
        return Ok(Err(conflict));
    }
    let first_version = current.map_or(0, |v| v + 1);
    if let Err(e) = check_range(stream, first_version, ids.len()) {
        return Ok(Err(e));
    }
    let found: std::collections::HashMap<Uuid, (i64, bool)> = found
        .iter()
        .map(|r| (r.get::<_, Uuid>(0), (r.get(1), r.get(2))))
        .collect();
    let mut positions = Vec::with_capacity(ids.len());
    for id in ids {
        match found.get(id) {
            None => return Ok(Err(Error::EventNotFound { id: *id })),
            Some((_, true)) => {
                return Ok(Err(Error::DuplicateEvent {
                    id: *id,
                    stream: stream.to_owned(),
                    reason: "the event is already in this stream",
                }));
            }
            Some((position, false)) => positions.push(*position),
        }
    }
    let last_version = first_version + ids.len() as u64 - 1;
    write(
        conn,
        &conn.statements.link,
        &[
            &stream,
            &(first_version as i64),
            &positions,
            &(last_version as i64),
        ],
    )
    .await?;
    Ok(Ok(LinkResult {
        stream: stream.to_owned(),
        first_version,
        last_version,
    }))
}

async fn delete(conn: &Connection, stream: &str, expected: ExpectedVersion) -> Result<Result<()>> {
    let current = current_version(conn, stream).await?;
    if let Err(conflict) = expected.check(stream, current) {
        return Ok(Err(conflict));
    }
    if current.is_none() {
        return Ok(Ok(()));
    }
    write(conn, &conn.statements.delete, &[&stream]).await?;
    Ok(Ok(()))
}
