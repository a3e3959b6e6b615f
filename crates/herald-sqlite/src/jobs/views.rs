//! Reads of the job tables for operators and tools: counts per queue, live jobs (listed or by id) and the
//! dead set. They run on the queue's read connection: in WAL mode they see the last commit and never wait
//! for a writer.

use herald_core::jobs::{DeadJob, JobInfo, JobState, ListFilter, QueueStats, Stats};
use rusqlite::{Connection, OptionalExtension, Row, params};
use uuid::Uuid;

use super::schema::{AVAILABLE, RUNNING, SCHEDULED};

/// Default of [`ListFilter::limit`].
const DEFAULT_LIST_LIMIT: usize = 100;

const JOB_COLUMNS: &str =
    "job_id, queue, kind, state, args, metadata, priority, attempt, max_attempts, run_at,
     unique_key, order_key, last_error, enqueued_at";

/// Maps the [`JOB_COLUMNS`] of a row.
fn job_info(r: &Row<'_>) -> rusqlite::Result<JobInfo> {
    Ok(JobInfo {
        id: Uuid::from_bytes(r.get(0)?),
        queue: r.get(1)?,
        kind: r.get(2)?,
        state: state_of(r.get(3)?),
        args: r.get(4)?,
        metadata: r.get(5)?,
        priority: r.get(6)?,
        attempt: r.get(7)?,
        max_attempts: r.get(8)?,
        run_at: r.get(9)?,
        unique_key: r.get(10)?,
        order_key: r.get(11)?,
        last_error: r.get(12)?,
        enqueued_at: r.get(13)?,
    })
}

/// The stored state's meaning.
fn state_of(stored: i64) -> JobState {
    match stored {
        AVAILABLE => JobState::Available,
        SCHEDULED => JobState::Scheduled,
        _ => JobState::Running,
    }
}

/// How a state is stored.
fn stored_state(state: JobState) -> i64 {
    match state {
        JobState::Available => AVAILABLE,
        JobState::Scheduled => SCHEDULED,
        JobState::Running => RUNNING,
    }
}

/// Counts per queue at `now` (a scheduled job whose time has come counts as available: the next claim makes
/// it so) and the dead set's size.
pub(crate) fn stats(conn: &Connection, now: i64) -> rusqlite::Result<Stats> {
    let mut stmt = conn.prepare_cached(
        "SELECT queue, state, run_at <= ?1, count(*) FROM herald_jobs GROUP BY 1, 2, 3 ORDER BY 1",
    )?;
    let rows = stmt.query_map([now], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, bool>(2)?,
            r.get::<_, i64>(3)?,
        ))
    })?;
    let mut queues: Vec<QueueStats> = Vec::new();
    for row in rows {
        let (queue, state, due, n) = row?;
        let n = n as u64;
        if queues.last().is_none_or(|q| q.queue != queue) {
            queues.push(QueueStats {
                queue,
                ..QueueStats::default()
            });
        }
        let Some(q) = queues.last_mut() else {
            continue; // Unreachable: a queue was just pushed.
        };
        match state {
            AVAILABLE => q.available += n,
            SCHEDULED if due => q.available += n,
            SCHEDULED => q.scheduled += n,
            _ => q.running += n,
        }
    }
    let dead: i64 = conn.query_row("SELECT count(*) FROM herald_jobs_dead", [], |r| r.get(0))?;
    Ok(Stats {
        queues,
        dead: dead as u64,
    })
}

/// Live jobs matching `filter`, in queue then enqueue order.
pub(crate) fn list(conn: &Connection, filter: &ListFilter) -> rusqlite::Result<Vec<JobInfo>> {
    let state = filter.state.map(stored_state);
    let limit = i64::try_from(filter.limit.unwrap_or(DEFAULT_LIST_LIMIT)).unwrap_or(i64::MAX);
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {JOB_COLUMNS} FROM herald_jobs
         WHERE (?1 IS NULL OR queue = ?1) AND (?2 IS NULL OR state = ?2)
         ORDER BY queue, id LIMIT ?3"
    ))?;
    let rows = stmt.query_map(params![filter.queue, state, limit], job_info)?;
    rows.collect()
}

/// The live job `id`.
pub(crate) fn job(conn: &Connection, id: Uuid) -> rusqlite::Result<Option<JobInfo>> {
    conn.prepare_cached(&format!(
        "SELECT {JOB_COLUMNS} FROM herald_jobs WHERE job_id = ?1"
    ))?
    .query_row([id.as_bytes()], job_info)
    .optional()
}

/// The dead set, most recent first, at most `limit`.
pub(crate) fn dead(conn: &Connection, limit: usize) -> rusqlite::Result<Vec<DeadJob>> {
    let mut stmt = conn.prepare_cached(
        "SELECT job_id, queue, kind, args, metadata, attempt, last_error, errors, enqueued_at, died_at
         FROM herald_jobs_dead ORDER BY id DESC LIMIT ?1",
    )?;
    let rows = stmt.query_map([i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
        Ok(DeadJob {
            id: Uuid::from_bytes(r.get(0)?),
            queue: r.get(1)?,
            kind: r.get(2)?,
            args: r.get(3)?,
            metadata: r.get(4)?,
            attempt: r.get(5)?,
            last_error: r.get(6)?,
            errors: r.get(7)?,
            enqueued_at: r.get(8)?,
            died_at: r.get(9)?,
        })
    })?;
    rows.collect()
}
