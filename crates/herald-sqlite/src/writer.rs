//! The single writer and its group commit.
//!
//! One OS thread owns the write connection. Appends, links and deletes reach it over a channel, each with a
//! oneshot reply. The writer takes the first request, drains whatever else is already queued (up to
//! `max_batch`), and runs them all in one `BEGIN IMMEDIATE … COMMIT`: one fsync for the whole batch. Each request
//! keeps its own expected-version check and its own result. A request refused by a rule (version conflict,
//! duplicate, unknown id) is refused *before* it writes, or — for an id conflict found by the insert itself,
//! or an unknown id midway through a link — undoes exactly the rows it inserted (the writer knows them: the
//! positions and versions it just assigned), so the other requests of the batch are untouched. No
//! `SAVEPOINT` per request: it would copy every page a request touches into the sub-journal (its cost is in
//! `benchmarks/sqlite.md`). A database error (I/O, disk full) fails the whole batch: the
//! transaction is rolled back and every request gets the error. Replies go out after `COMMIT` succeeds (never
//! before the data is durable); if `COMMIT` fails, every request of the batch gets the error. At low load a
//! batch holds one request, so latency stays one commit.
//!
//! [Append hooks](crate::hook) are the one exception to "no savepoint": an append with hooks (or a job router,
//! or an extra) runs inside `SAVEPOINT append_hooks`, because the rows a hook writes are not the writer's to
//! undo; a hook error rolls back to it and fails that append only. A store without hooks pays nothing for
//! them. The job router's jobs are inserted there too, and after a commit that wrote some the writer wakes
//! the store's idle job workers.
//!
//! Being the only writer (and holding SQLite's write lock while it writes) is what makes global positions
//! contiguous and commit-ordered: the writer assigns them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use herald_core::rules::{self, AppendDecision, DeleteDecision, IdFact, LinkTarget, StoredEvent};
use herald_core::stream::category_of;
use herald_core::{
    AppendResult, Error, ExpectedVersion, Head, LinkResult, NewEvent, Result, timefmt,
};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::watch;
use uuid::Uuid;

use crate::error::{DriverError, context};
use crate::hook::{AppendExtra, AppendSide};
use crate::schema::{backend, is_constraint_violation};
use herald_core::delivery::RouteMatcher;

/// One write request and where its answer goes.
pub(crate) type Request = herald_core::write::WriteRequest<AppendExtra>;

use herald_core::write::{WriteOutcome as Outcome, WriteRequest};

/// Why a request's body stopped early.
enum Stop {
    /// A rule said no (version conflict, duplicate, unknown id): roll back this request only.
    Refused(Error),
    /// An event id of this append may be stored (the unique index found one, or a refusal waits for the ids
    /// to be known): with its own rows undone, look the ids up and decide again.
    IdTaken,
    /// The database failed.
    Sql(rusqlite::Error),
}

impl From<rusqlite::Error> for Stop {
    fn from(e: rusqlite::Error) -> Self {
        Stop::Sql(e)
    }
}

impl From<Error> for Stop {
    fn from(e: Error) -> Self {
        Stop::Refused(e)
    }
}

/// The end of the log as the batch sees it, under the write lock.
struct Tail {
    /// Position the next appended event gets.
    next_position: u64,
    /// Commit time of this batch: now, but never earlier than the last stored event, so `recorded_at` only
    /// grows along the log even if the wall clock steps back.
    recorded_at: i64,
}

/// Counters of the writer, shared with the store handle.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) transactions: AtomicU64,
    pub(crate) requests: AtomicU64,
}

/// The writer thread's body: batches requests until every sender is gone, then returns (after draining).
pub(crate) fn run(
    mut conn: Connection,
    requests: mpsc::Receiver<Request>,
    head: watch::Sender<Head>,
    max_batch: usize,
    counters: Arc<Counters>,
    side: AppendSide,
) {
    let mut batch = Vec::with_capacity(max_batch);
    let mut gather = Gather::default();
    while let Ok(first) = requests.recv() {
        batch.push(first);
        gather.collect(&requests, &mut batch, max_batch);
        counters
            .requests
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        counters.transactions.fetch_add(1, Ordering::Relaxed);
        let size = batch.len();
        let started = Instant::now();
        commit_batch(&mut conn, &mut batch, &head, &side);
        gather.record(size, started.elapsed());
    }
    tracing::debug!("herald-sqlite writer stopped");
}

/// How long the writer waits for a batch to fill. Every appender resubmits only after its reply, so after a
/// commit the next requests arrive spread over the time the runtime needs to wake all of them; taking just
/// the first few would split one natural batch into a small one and a large one, paying one commit (one
/// fsync) more. So when the last batch held `n > 1` requests, the writer waits until `n` requests are queued
/// again, but never longer than a quarter of the last commit's duration (capped at [`MAX_GATHER`]): a wait
/// that costs little beside the commit it saves. A lone appender (last batch of 1) never waits, so latency at
/// low load stays one commit; if fewer writers remain, one short wait resets the expectation.
#[derive(Default)]
struct Gather {
    expected: usize,
    window: Duration,
}

/// Longest wait for a batch to fill.
const MAX_GATHER: Duration = Duration::from_micros(500);

impl Gather {
    fn collect(&self, requests: &mpsc::Receiver<Request>, batch: &mut Vec<Request>, max: usize) {
        let drain = |batch: &mut Vec<Request>| {
            while batch.len() < max {
                match requests.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
        };
        drain(batch);
        let target = self.expected.min(max);
        if batch.len() >= target || target <= 1 {
            return;
        }
        let deadline = Instant::now() + self.window;
        while batch.len() < target {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            match requests.recv_timeout(deadline - now) {
                Ok(next) => {
                    batch.push(next);
                    drain(batch);
                }
                Err(_) => break,
            }
        }
    }

    fn record(&mut self, size: usize, commit: Duration) {
        self.expected = size;
        self.window = (commit / 4).min(MAX_GATHER);
    }
}

/// Reads the current end of the log (used on open and at the start of every batch).
pub(crate) fn read_tail(conn: &Connection) -> rusqlite::Result<(u64, i64)> {
    let tail: Option<(i64, i64)> = conn
        .prepare_cached("SELECT position, recorded_at FROM events ORDER BY position DESC LIMIT 1")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(tail.map_or((0, i64::MIN), |(p, t)| (p as u64, t)))
}

fn commit_batch(
    conn: &mut Connection,
    batch: &mut Vec<Request>,
    head: &watch::Sender<Head>,
    side: &AppendSide,
) {
    let size = batch.len();
    let started = std::time::Instant::now();
    let mut outcomes = Vec::with_capacity(size);
    let mut last_position = 0;
    let mut wrote_jobs = false;
    let result = (|| -> rusqlite::Result<()> {
        conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        let (last, last_time) = match read_tail(conn) {
            Ok(tail) => tail,
            Err(e) => {
                rollback(conn);
                return Err(e);
            }
        };
        // The commit time is never before the last event's; a last time past the largest timestamp (a damaged
        // row) would become every later event's, which could then not be read back: refuse the batch.
        if last > 0
            && let Err(e) = timefmt::from_unix_micros(last_time)
        {
            rollback(conn);
            return Err(rusqlite::Error::FromSqlConversionFailure(
                1,
                rusqlite::types::Type::Integer,
                format!(
                    "the last stored event (position {last}) has recorded_at {last_time}, which is not a \
                     timestamp: the stored row is corrupt ({e})"
                )
                .into(),
            ));
        }
        let mut tail = Tail {
            next_position: last + 1,
            recorded_at: timefmt::to_unix_micros(timefmt::now_micros()).max(last_time),
        };
        // Read inside the write transaction: no route can be added or removed until it commits, and every
        // route committed before it (by any process) applies.
        let routes = match crate::jobs::load_matchers(conn) {
            Ok(routes) => routes,
            Err(e) => {
                rollback(conn);
                return Err(e);
            }
        };
        for request in batch.iter_mut() {
            match apply(conn, &mut tail, request, side, &routes, &mut wrote_jobs) {
                Ok(outcome) => outcomes.push(outcome),
                Err(fatal) => {
                    rollback(conn);
                    return Err(fatal);
                }
            }
        }
        if conn.is_autocommit() {
            // SQLite rolled the transaction back on its own (an error it treats as fatal): nothing is written.
            return Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
                Some("SQLite rolled the batch transaction back".to_owned()),
            ));
        }
        if let Err(e) = conn.prepare_cached("COMMIT")?.execute([]) {
            rollback(conn);
            return Err(e);
        }
        last_position = tail.next_position - 1;
        Ok(())
    })();

    match result {
        Ok(()) => {
            if wrote_jobs {
                side.job_wake.notify_waiters();
            }
            let changed = outcomes.iter().filter(|o| o.succeeded()).count() as u64;
            if changed > 0 {
                head.send_if_modified(|h| {
                    h.position = last_position;
                    h.commits += changed;
                    true
                });
            }
            for (request, outcome) in batch.drain(..).zip(outcomes) {
                request.reply(outcome);
            }
        }
        Err(e) => {
            tracing::error!(error = %e, requests = size, "herald-sqlite batch failed; nothing written");
            let shared =
                DriverError::shared("the batch transaction failed; nothing was written", e);
            for request in batch.drain(..) {
                request.fail(shared.to_error());
            }
        }
    }
    tracing::trace!(requests = size, elapsed = ?started.elapsed(), "herald-sqlite group commit");
}

fn rollback(conn: &Connection) {
    if !conn.is_autocommit()
        && let Err(e) = conn.execute_batch("ROLLBACK")
    {
        tracing::error!(error = %e, "herald-sqlite rollback failed");
    }
}

/// Runs one request. `Err` means the batch's transaction is lost (every request of the batch fails); a
/// request refused by a rule is an `Ok` outcome holding its error, with its own writes already undone.
fn apply(
    conn: &Connection,
    tail: &mut Tail,
    request: &mut Request,
    side: &AppendSide,
    routes: &[RouteMatcher],
    wrote_jobs: &mut bool,
) -> rusqlite::Result<Outcome> {
    Ok(match request {
        WriteRequest::Append {
            stream,
            events,
            expected,
            extra,
            ..
        } => {
            // Only an append with hooks (a router, an extra) pays for a savepoint: arbitrary hook writes cannot be
            // undone row by row the way the writer undoes its own.
            let hooked = !side.is_empty() || extra.is_some() || !routes.is_empty();
            if hooked {
                conn.prepare_cached("SAVEPOINT append_hooks")?.execute([])?;
            }
            let outcome = match append(conn, tail, stream, events, *expected) {
                Ok(r) if hooked => {
                    match side.run(conn, stream, events, &r, routes, extra.take()) {
                        Ok(jobs) => {
                            *wrote_jobs |= jobs > 0;
                            Ok(r)
                        }
                        Err(e) => {
                            if conn.is_autocommit() {
                                // SQLite rolled the whole transaction back (I/O error, disk full).
                                return Err(e);
                            }
                            conn.prepare_cached("ROLLBACK TO append_hooks")?
                                .execute([])?;
                            // The events are gone again: their positions are free for the next request.
                            tail.next_position = r.first_position;
                            Err(context(
                                format!("an append hook refused the append to `{stream}`"),
                                e,
                            ))
                        }
                    }
                }
                Ok(r) => Ok(r),
                Err(Stop::IdTaken) => decide_with_ids(conn, stream, events, *expected),
                Err(Stop::Refused(e)) => Err(e),
                Err(Stop::Sql(e)) => return Err(e),
            };
            if hooked {
                conn.prepare_cached("RELEASE append_hooks")?.execute([])?;
            }
            Outcome::Append(outcome)
        }
        WriteRequest::Link {
            stream,
            ids,
            expected,
            ..
        } => Outcome::Link(refused(link(conn, stream, ids, *expected))?),
        WriteRequest::Delete {
            stream, expected, ..
        } => Outcome::Delete(refused(delete(conn, stream, *expected))?),
    })
}

/// Splits a body's result into a database failure (outer) and the request's own result (inner).
fn refused<T>(r: std::result::Result<T, Stop>) -> rusqlite::Result<Result<T>> {
    match r {
        Ok(v) => Ok(Ok(v)),
        Err(Stop::Refused(e)) => Ok(Err(e)),
        Err(Stop::IdTaken) => Ok(Err(Error::backend("internal: unexpected id conflict"))),
        Err(Stop::Sql(e)) => Err(e),
    }
}

fn stream_version(conn: &Connection, stream: &str) -> rusqlite::Result<Option<u64>> {
    conn.prepare_cached("SELECT version FROM streams WHERE name = ?1")?
        .query_row([stream], |r| r.get::<_, i64>(0))
        .optional()
        .map(|v| v.map(|v| v as u64))
}

fn set_stream_version(conn: &Connection, stream: &str, version: u64) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO streams (name, version) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET version = excluded.version",
    )?
    .execute(params![stream, version as i64])?;
    Ok(())
}

fn append(
    conn: &Connection,
    tail: &mut Tail,
    stream: &str,
    events: &[NewEvent],
    expected: ExpectedVersion,
) -> std::result::Result<AppendResult, Stop> {
    let current = stream_version(conn, stream)?;
    // The ids are not looked up: the unique index on `events.id` finds a stored one while inserting.
    let first_version =
        match rules::decide_append(stream, expected, current, events, |_| IdFact::Unknown)? {
            AppendDecision::Write(versions) => versions.first,
            AppendDecision::Retry(_) | AppendDecision::LookUpIds => return Err(Stop::IdTaken),
        };
    let first_position = tail.next_position;
    let category = category_of(stream);
    let mut insert_event = conn.prepare_cached(
        "INSERT INTO events (position, id, stream, version, category, type, data, metadata, recorded_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    let mut insert_entry = conn.prepare_cached(
        "INSERT INTO stream_entries (stream, version, position, is_link) VALUES (?1, ?2, ?3, 0)",
    )?;
    for (i, event) in events.iter().enumerate() {
        let position = (first_position + i as u64) as i64;
        let version = (first_version + i as u64) as i64;
        let inserted = insert_event.execute(params![
            position,
            event.id.as_bytes(),
            stream,
            version,
            category,
            event.event_type,
            event.data,
            event.metadata,
            tail.recorded_at,
        ]);
        match inserted {
            Ok(_) => {}
            // `id` is the only constraint an insert with a fresh position can break.
            Err(e) if is_constraint_violation(&e) => {
                if i > 0 {
                    undo_entries(conn, stream, first_version)?;
                    conn.prepare_cached("DELETE FROM events WHERE position >= ?1")?
                        .execute([first_position as i64])?;
                }
                return Err(Stop::IdTaken);
            }
            Err(e) => return Err(Stop::Sql(e)),
        }
        insert_entry.execute(params![stream, version, position])?;
    }
    let count = events.len() as u64;
    let last_version = first_version + count - 1;
    set_stream_version(conn, stream, last_version)?;
    tail.next_position += count;
    Ok(AppendResult {
        stream: stream.to_owned(),
        first_version,
        last_version,
        first_position,
        last_position: first_position + count - 1,
        ids: events.iter().map(|e| e.id).collect(),
    })
}

/// Removes the entries a refused request inserted into `stream` (versions from `first_version` on).
fn undo_entries(conn: &Connection, stream: &str, first_version: u64) -> rusqlite::Result<()> {
    conn.prepare_cached("DELETE FROM stream_entries WHERE stream = ?1 AND version >= ?2")?
        .execute(params![stream, first_version as i64])?;
    Ok(())
}

/// The append met a stored id, or was refused before its ids were known: look every id up and let the write
/// rules decide (an idempotent retry, a duplicate, or the refusal after all). Nothing of it is written.
fn decide_with_ids(
    conn: &Connection,
    stream: &str,
    events: &[NewEvent],
    expected: ExpectedVersion,
) -> Result<AppendResult> {
    let current = stream_version(conn, stream).map_err(backend)?;
    // Where the event sits, and whether its stream still holds it there as its own entry.
    let mut lookup = conn
        .prepare_cached(
            "SELECT e.position, e.stream, e.version, se.is_link
             FROM events e
             LEFT JOIN stream_entries se
               ON se.stream = e.stream AND se.version = e.version AND se.position = e.position
             WHERE e.id = ?1",
        )
        .map_err(backend)?;
    let mut found = std::collections::HashMap::with_capacity(events.len());
    for event in events {
        let row: Option<(i64, String, i64, Option<i64>)> = lookup
            .query_row([event.id.as_bytes()], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .optional()
            .map_err(backend)?;
        if let Some(row) = row {
            found.insert(event.id, row);
        }
    }
    let fact = |id: Uuid| match found.get(&id) {
        None => IdFact::Free,
        Some((position, origin, version, entry)) => IdFact::Stored(StoredEvent {
            stream: origin,
            version: *version as u64,
            position: *position as u64,
            in_stream: *entry == Some(0),
        }),
    };
    match rules::decide_append(stream, expected, current, events, fact)? {
        AppendDecision::Retry(original) => Ok(original),
        // The conflicting id vanished between the insert and this read: impossible under the write lock.
        AppendDecision::Write(_) => Err(Error::backend("event id conflict without a stored event")),
        AppendDecision::LookUpIds => Err(Error::backend(
            "internal: the write rules asked for ids already looked up",
        )),
    }
}

fn link(
    conn: &Connection,
    stream: &str,
    ids: &[Uuid],
    expected: ExpectedVersion,
) -> std::result::Result<LinkResult, Stop> {
    let current = stream_version(conn, stream)?;
    let first_version = rules::next_versions(stream, expected, current, ids.len())?.first;
    // The event's position, and whether it sits in `stream` as an event appended there (its own entry).
    let mut lookup = conn.prepare_cached(
        "SELECT e.position, EXISTS (
             SELECT 1 FROM stream_entries se
             WHERE se.stream = ?1 AND se.version = e.version AND se.position = e.position
         ) AND e.stream = ?1
         FROM events e WHERE e.id = ?2",
    )?;
    let mut insert = conn.prepare_cached(
        "INSERT INTO stream_entries (stream, version, position, is_link) VALUES (?1, ?2, ?3, 1)",
    )?;
    for (i, id) in ids.iter().enumerate() {
        let version = (first_version + i as u64) as i64;
        let found: Option<(i64, bool)> = lookup
            .query_row(params![stream, id.as_bytes()], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        let target = match found {
            None => LinkTarget::Missing,
            Some((_, true)) => LinkTarget::InStream,
            Some((position, false)) => LinkTarget::Linkable(position),
        };
        let refusal = match rules::link_entry(stream, *id, target) {
            Err(refusal) => refusal,
            Ok(position) => match insert.execute(params![stream, version, position]) {
                Ok(_) => continue,
                // (stream, version) is fresh, so the broken constraint is the unique index on links:
                // the event is already linked into this stream.
                Err(e) if is_constraint_violation(&e) => rules::already_in_stream(stream, *id),
                Err(e) => return Err(Stop::Sql(e)),
            },
        };
        if i > 0 {
            undo_entries(conn, stream, first_version)?;
        }
        return Err(Stop::Refused(refusal));
    }
    let last_version = first_version + ids.len() as u64 - 1;
    set_stream_version(conn, stream, last_version)?;
    Ok(LinkResult {
        stream: stream.to_owned(),
        first_version,
        last_version,
    })
}

fn delete(
    conn: &Connection,
    stream: &str,
    expected: ExpectedVersion,
) -> std::result::Result<(), Stop> {
    let current = stream_version(conn, stream)?;
    match rules::decide_delete(stream, expected, current)? {
        DeleteDecision::Remove => {
            conn.prepare_cached("DELETE FROM stream_entries WHERE stream = ?1")?
                .execute([stream])?;
            conn.prepare_cached("DELETE FROM streams WHERE name = ?1")?
                .execute([stream])?;
        }
        DeleteDecision::Nothing => {}
    }
    Ok(())
}
