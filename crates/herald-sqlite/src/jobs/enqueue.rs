//! Rows entering the queue, and leaving it before they ever run: [`insert_job`], the one insert of a job row
//! (used by the queue's enqueues, cron ticks, [`crate::SqliteStore::append_with_jobs`] and the store's job
//! router, all inside someone's transaction), cron ticks enqueued once per (schedule, tick), and the cancel of
//! a pending job.

use herald_core::jobs::{CronTick, NewJob};
use rusqlite::{Connection, params};
use uuid::Uuid;

use super::schema::{AVAILABLE, SCHEDULED};

/// How long cron ticks are remembered before the window being enqueued: a tick older than that is never
/// reached again (schedulers cover ticks from when they start).
const CRON_MEMORY_MICROS: i64 = 7 * 24 * 3600 * 1_000_000;

/// Inserts `job` on `conn`, inside the caller's transaction, as enqueued at `now` (µs since the epoch, by the
/// job clock). Returns false when a job with the same unique key is pending or running (nothing inserted).
///
/// The building block of transactional enqueue: the store calls it for
/// [`append_with_jobs`](herald_core::EventStore::append_with_jobs) and its job router; call it from an
/// [append hook](crate::hook) or [`crate::SqliteStore::append_with`] to enqueue in an append's transaction
/// yourself. `job` is stored as given: validate it first ([`NewJob::validate`]).
pub fn insert_job(conn: &Connection, job: &NewJob, now: i64) -> rusqlite::Result<bool> {
    let run_at = job.run_at(now);
    let state = if run_at <= now { AVAILABLE } else { SCHEDULED };
    let mut insert = conn.prepare_cached(
        "INSERT INTO herald_jobs (job_id, queue, kind, args, metadata, priority, state, run_at, attempt,
             max_attempts, unique_key, order_key, errors, enqueued_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0, ?9, ?10, ?11, '[]', ?12)
         ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL DO NOTHING",
    )?;
    let n = insert.execute(params![
        job.id.as_bytes(),
        job.queue,
        job.kind,
        job.args,
        job.metadata,
        job.priority,
        state,
        run_at,
        job.max_attempts,
        job.unique_key,
        job.order_key,
        now,
    ])?;
    Ok(n == 1)
}

/// Inserts the jobs of `jobs`, as enqueued at `now`; returns the ids inserted (unique-key skips left out).
pub(crate) fn insert_jobs(
    conn: &Connection,
    jobs: &[NewJob],
    now: i64,
) -> rusqlite::Result<Vec<Uuid>> {
    let mut ids = Vec::with_capacity(jobs.len());
    for job in jobs {
        if insert_job(conn, job, now)? {
            ids.push(job.id);
        }
    }
    Ok(ids)
}

/// Enqueues the job of every tick no process has enqueued yet: the tick's row in `herald_jobs_cron` (primary
/// key) and the job go in together, so a second process reaching the same tick finds the key taken and
/// enqueues nothing. Then forgets ticks long before the window. Returns how many jobs were enqueued.
pub(crate) fn enqueue_cron(
    conn: &Connection,
    ticks: &[CronTick],
    now: i64,
    until: i64,
) -> rusqlite::Result<usize> {
    let mut n = 0;
    for CronTick {
        schedule,
        tick,
        job,
    } in ticks
    {
        let fresh = conn
            .prepare_cached(
                "INSERT INTO herald_jobs_cron (schedule, tick) VALUES (?1, ?2)
                 ON CONFLICT DO NOTHING",
            )?
            .execute(params![schedule, tick])?;
        if fresh == 1 && insert_job(conn, job, now)? {
            n += 1;
        }
    }
    conn.prepare_cached("DELETE FROM herald_jobs_cron WHERE tick < ?1")?
        .execute([now.min(until).saturating_sub(CRON_MEMORY_MICROS)])?;
    Ok(n)
}

/// Removes the pending (not running) job `id`. Returns whether there was one.
pub(crate) fn cancel(conn: &Connection, id: Uuid) -> rusqlite::Result<bool> {
    let n = conn.execute(
        "DELETE FROM herald_jobs WHERE job_id = ?1 AND state <> 2",
        [id.as_bytes()],
    )?;
    Ok(n == 1)
}
