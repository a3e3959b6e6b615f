//! The dead set, in SQL: trimming it to its limits whenever jobs die, moving dead jobs back to their queue
//! (refused as a whole when a unique key is taken by a live job), and discarding them for good.

use std::time::Duration;

use herald_core::clock::micros;
use herald_core::{Error, Result};
use rusqlite::{Connection, params};
use uuid::Uuid;

use crate::schema::{backend, is_constraint_violation};

/// Drops dead jobs older than `age`, then all but the `max` most recent.
pub(crate) fn trim_dead(
    conn: &Connection,
    now: i64,
    max: u64,
    age: Duration,
) -> rusqlite::Result<()> {
    conn.prepare_cached("DELETE FROM herald_jobs_dead WHERE died_at < ?1")?
        .execute([now.saturating_sub(micros(age))])?;
    conn.prepare_cached(
        "DELETE FROM herald_jobs_dead WHERE id <= (SELECT id FROM herald_jobs_dead ORDER BY id DESC
             LIMIT 1 OFFSET ?1)",
    )?
    .execute([i64::try_from(max).unwrap_or(i64::MAX)])?;
    Ok(())
}

/// Moves the dead job `id` (every dead job when `None`) back to its queue, available at `now`, with a fresh
/// attempt count and its history kept. Returns how many moved. A unique key taken by a live job is
/// [`Error::DuplicateJob`]; the caller's savepoint then undoes whatever moved.
pub(crate) fn retry_dead(conn: &Connection, id: Option<Uuid>, now: i64) -> Result<usize> {
    let filter = if id.is_some() {
        "WHERE job_id = ?2"
    } else {
        ""
    };
    let sql = format!(
        "INSERT INTO herald_jobs (job_id, queue, kind, args, metadata, priority, state, run_at, attempt,
             max_attempts, unique_key, order_key, last_error, errors, enqueued_at)
         SELECT job_id, queue, kind, args, metadata, priority, 0, ?1, 0, max_attempts, unique_key, order_key,
             last_error, errors, enqueued_at
         FROM herald_jobs_dead {filter} ORDER BY id"
    );
    let inserted = match id {
        Some(id) => conn.execute(&sql, params![now, id.as_bytes()]),
        None => conn.execute(&sql, params![now]),
    };
    let n = match inserted {
        Ok(n) => n,
        // The dead rows' job ids left the live table when they died, so the broken constraint is the unique
        // key of a live job.
        Err(e) if is_constraint_violation(&e) => {
            return Err(Error::DuplicateJob {
                reason: "a dead job's unique key is taken by a pending or running job".to_owned(),
            });
        }
        Err(e) => return Err(backend(e)),
    };
    match id {
        Some(id) => conn.execute(
            "DELETE FROM herald_jobs_dead WHERE job_id = ?1",
            [id.as_bytes()],
        ),
        None => conn.execute("DELETE FROM herald_jobs_dead", []),
    }
    .map_err(backend)?;
    Ok(n)
}

/// Removes the dead job `id` for good. Returns whether there was one.
pub(crate) fn discard_dead(conn: &Connection, id: Uuid) -> rusqlite::Result<bool> {
    let n = conn.execute(
        "DELETE FROM herald_jobs_dead WHERE job_id = ?1",
        [id.as_bytes()],
    )?;
    Ok(n == 1)
}
