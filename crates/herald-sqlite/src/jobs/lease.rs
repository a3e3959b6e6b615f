//! The lease lifecycle of a job, in SQL: the housekeeping every claim starts with (expired leases back to
//! their queue or to the dead set, due scheduled jobs made available), the claim itself (priority and enqueue
//! order, ordering keys, per-type limits), starts and completions, lease renewals and releases. Each function
//! runs inside the job writer's transaction; "now" is the job clock's reading taken there.
//!
//! A claim does not count an attempt: `attempt` counts recorded starts, and `started` says whether the
//! current lease's start is among them (herald-core's `JobQueue`, "Attempts"). So a lease's attempt is
//! `attempt + 1 - started`, which is what starts and completions name.

use std::time::Duration;

use herald_core::jobs::{ClaimRequest, Claimed, Completion, Finish, Start};
use rusqlite::{Connection, params};
use uuid::Uuid;

use super::dead::trim_dead;

/// The dead set's limits: most jobs kept, and longest kept.
pub(crate) type DeadLimits = (u64, Duration);

/// Housekeeping done at the start of every claim: expired leases go back to their queue (untouched but
/// marked when no start was recorded; else with the lost attempt in their history, or to the dead set when no
/// attempt is left), due scheduled jobs become available, and the dead set is trimmed.
fn maintain(conn: &Connection, now: i64, (dead_max, dead_age): DeadLimits) -> rusqlite::Result<()> {
    let expired = "state = 2 AND run_at < ?1 AND started = 1";
    let died = conn
        .prepare_cached(&format!(
            "INSERT INTO herald_jobs_dead (job_id, queue, kind, args, metadata, priority, attempt, max_attempts,
                 unique_key, order_key, last_error, errors, enqueued_at, died_at)
             SELECT job_id, queue, kind, args, metadata, priority, attempt, max_attempts, unique_key, order_key,
                 'lease expired (worker died?)',
                 json_insert(errors, '$[#]',
                     json_object('attempt', attempt, 'at', ?1, 'error', 'lease expired (worker died?)')),
                 enqueued_at, ?1
             FROM herald_jobs WHERE {expired} AND attempt >= max_attempts"
        ))?
        .execute([now])?;
    if died > 0 {
        conn.prepare_cached(&format!(
            "DELETE FROM herald_jobs WHERE {expired} AND attempt >= max_attempts"
        ))?
        .execute([now])?;
        trim_dead(conn, now, dead_max, dead_age)?;
    }
    conn.prepare_cached(&format!(
        "UPDATE herald_jobs SET state = 0, lease_owner = NULL, started = 0,
             last_error = 'lease expired (worker died?)',
             errors = json_insert(errors, '$[#]',
                 json_object('attempt', attempt, 'at', ?1, 'error', 'lease expired (worker died?)'))
         WHERE {expired}"
    ))?
    .execute([now])?;
    conn.prepare_cached(
        "UPDATE herald_jobs SET state = 0, lease_owner = NULL, lost_unstarted = lost_unstarted + 1
         WHERE state = 2 AND run_at < ?1 AND started = 0",
    )?
    .execute([now])?;
    conn.prepare_cached("UPDATE herald_jobs SET state = 0 WHERE state = 1 AND run_at <= ?1")?
        .execute([now])?;
    Ok(())
}

/// Runs the housekeeping, then leases up to `request.limit` runnable jobs of `request.queue` to
/// `request.owner` until `now + lease`: by priority and enqueue order, skipping jobs behind an earlier job of
/// their ordering key and types at their concurrency limit (counted across every process's running jobs).
pub(crate) fn claim(
    conn: &Connection,
    request: &ClaimRequest,
    now: i64,
    lease: i64,
    dead_limits: DeadLimits,
) -> rusqlite::Result<Vec<Claimed>> {
    maintain(conn, now, dead_limits)?;
    let mut remaining: Vec<(&str, i64)> = Vec::new();
    for (kind, max) in request.limits.iter() {
        let running: i64 = conn
            .prepare_cached("SELECT count(*) FROM herald_jobs WHERE state = 2 AND kind = ?1")?
            .query_row([kind], |r| r.get(0))?;
        remaining.push((kind.as_str(), i64::from(*max) - running));
    }
    let full = full_types_json(&remaining);
    let limit = i64::try_from(request.limit).unwrap_or(i64::MAX);
    let mut select = conn.prepare_cached(
        "SELECT j.id, j.kind FROM herald_jobs j INDEXED BY herald_jobs_available
         WHERE j.state = 0 AND j.queue = ?1
           AND (j.order_key IS NULL OR NOT EXISTS (
                 SELECT 1 FROM herald_jobs k WHERE k.order_key = j.order_key AND k.id < j.id))
           AND j.kind NOT IN (SELECT value FROM json_each(?2))
         ORDER BY j.priority DESC, j.id
         LIMIT ?3",
    )?;
    let candidates: Vec<(i64, String)> = select
        .query_map(params![request.queue, full, limit], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut take = conn.prepare_cached(
        "UPDATE herald_jobs SET state = 2, started = 0, run_at = ?2, lease_owner = ?3
         WHERE id = ?1
         RETURNING job_id, queue, kind, args, metadata, attempt + 1, max_attempts, order_key IS NOT NULL,
             lost_unstarted > 0",
    )?;
    let until = now.saturating_add(lease);
    let mut claimed = Vec::with_capacity(candidates.len());
    for (row, kind) in candidates {
        if let Some((_, left)) = remaining.iter_mut().find(|(k, _)| *k == kind) {
            if *left <= 0 {
                continue;
            }
            *left -= 1;
        }
        let job = take.query_row(params![row, until, request.owner.as_bytes()], |r| {
            Ok(Claimed {
                row,
                id: Uuid::from_bytes(r.get(0)?),
                queue: r.get(1)?,
                kind: r.get(2)?,
                args: r.get(3)?,
                metadata: r.get(4)?,
                attempt: r.get(5)?,
                max_attempts: r.get(6)?,
                ordered: r.get(7)?,
                record_start_first: r.get(8)?,
            })
        })?;
        claimed.push(job);
    }
    Ok(claimed)
}

/// The job types at their concurrency limit, as a JSON array of strings (the claim's `json_each` filter).
fn full_types_json(remaining: &[(&str, i64)]) -> String {
    let full: Vec<&str> = remaining
        .iter()
        .filter(|(_, left)| *left <= 0)
        .map(|(kind, _)| *kind)
        .collect();
    // Serializing strings cannot fail; an empty filter is the harmless fallback all the same.
    serde_json::to_string(&full).unwrap_or_else(|_| "[]".to_owned())
}

/// Records started and then finished runs of `owner`'s jobs. A start or completion whose lease was lost (the
/// job was re-leased after expiry, or is at another attempt) changes nothing. A completion counts its
/// attempt whether or not its start was recorded (a release gives it back).
pub(crate) fn record(
    conn: &Connection,
    owner: Uuid,
    started: &[Start],
    done: &[Completion],
    now: i64,
    (dead_max, dead_age): DeadLimits,
) -> rusqlite::Result<()> {
    let own = "id = ?1 AND lease_owner = ?2 AND state = 2 AND attempt + 1 - started = ?3";
    for s in started {
        conn.prepare_cached(&format!(
            "UPDATE herald_jobs SET attempt = ?3, started = 1 WHERE {own} AND started = 0"
        ))?
        .execute(params![s.row, owner.as_bytes(), s.attempt])?;
    }
    let mut died = false;
    for c in done {
        let key = params![c.row, owner.as_bytes(), c.attempt];
        match &c.finish {
            Finish::Delete => {
                conn.prepare_cached(&format!("DELETE FROM herald_jobs WHERE {own}"))?
                    .execute(key)?;
            }
            Finish::Release => {
                conn.prepare_cached(&format!(
                    "UPDATE herald_jobs SET state = 0, attempt = ?3 - 1, started = 0, lease_owner = NULL,
                         run_at = ?4 WHERE {own}"
                ))?
                .execute(params![c.row, owner.as_bytes(), c.attempt, now])?;
            }
            Finish::Reschedule { at, error } => {
                conn.prepare_cached(&format!(
                    "UPDATE herald_jobs SET state = 1, attempt = ?3, started = 0, run_at = ?4,
                         lease_owner = NULL, last_error = ?5,
                         errors = json_insert(errors, '$[#]',
                             json_object('attempt', ?3, 'at', ?6, 'error', ?5))
                     WHERE {own}"
                ))?
                .execute(params![
                    c.row,
                    owner.as_bytes(),
                    c.attempt,
                    at,
                    error,
                    now
                ])?;
            }
            Finish::Dead { error } => {
                let moved = conn
                    .prepare_cached(&format!(
                        "INSERT INTO herald_jobs_dead (job_id, queue, kind, args, metadata, priority,
                             attempt, max_attempts, unique_key, order_key, last_error, errors,
                             enqueued_at, died_at)
                         SELECT job_id, queue, kind, args, metadata, priority, ?3, max_attempts,
                             unique_key, order_key, ?4,
                             json_insert(errors, '$[#]',
                                 json_object('attempt', ?3, 'at', ?5, 'error', ?4)),
                             enqueued_at, ?5
                         FROM herald_jobs WHERE {own}"
                    ))?
                    .execute(params![c.row, owner.as_bytes(), c.attempt, error, now])?;
                if moved == 1 {
                    conn.prepare_cached(&format!("DELETE FROM herald_jobs WHERE {own}"))?
                        .execute(key)?;
                    died = true;
                }
            }
        }
    }
    if died {
        trim_dead(conn, now, dead_max, dead_age)?;
    }
    Ok(())
}

/// Extends the lease of every job `owner` holds to `until`. Returns how many.
pub(crate) fn renew(conn: &Connection, owner: Uuid, until: i64) -> rusqlite::Result<usize> {
    conn.prepare_cached("UPDATE herald_jobs SET run_at = ?1 WHERE state = 2 AND lease_owner = ?2")?
        .execute(params![until, owner.as_bytes()])
}

/// Returns every job `owner` holds to its queue, available at `now` (a started one's attempt counts).
/// Returns how many.
pub(crate) fn release_all(conn: &Connection, owner: Uuid, now: i64) -> rusqlite::Result<usize> {
    conn.prepare_cached(
        "UPDATE herald_jobs SET state = 0, run_at = ?1, lease_owner = NULL, started = 0
         WHERE state = 2 AND lease_owner = ?2",
    )?
    .execute(params![now, owner.as_bytes()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_types_are_a_json_array_of_the_types_without_a_free_slot() {
        assert_eq!(full_types_json(&[]), "[]");
        assert_eq!(
            full_types_json(&[("a", 0), ("b", 2), ("c\"d", -1)]),
            r#"["a","c\"d"]"#
        );
    }
}
