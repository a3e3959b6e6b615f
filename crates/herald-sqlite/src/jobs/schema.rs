//! The job tables and their migrations, applied by the store's own migration step (`crate::schema::migrate`)
//! in the same `BEGIN IMMEDIATE` transaction as the event tables, whichever opens the file first: an event
//! store or a job queue. The job tables keep their version in their own table, `herald_jobs_schema` (one row
//! per applied migration), not in `PRAGMA user_version` (the event tables'), exactly as the job tables have
//! always done, so files written by any Herald version agree on which job migrations ran.

use herald_core::{Error, Result};
use rusqlite::Connection;

use crate::error::context;
use crate::schema::backend;

/// Job states as stored (`herald_jobs.state`).
pub(crate) const AVAILABLE: i64 = 0;
pub(crate) const SCHEDULED: i64 = 1;
pub(crate) const RUNNING: i64 = 2;

/// The migrations, in order. Never edit a released one: append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: live jobs, dead jobs, cron ticks.
    "
    -- Pending (available or scheduled) and running jobs. Finished jobs leave: success and discard delete the
    -- row, exhaustion moves it to herald_jobs_dead. So a unique key here is unique while pending or running.
    -- `id` (rowid) is the enqueue order. `run_at` is when a pending job may run, and for a running job the
    -- end of its lease.
    CREATE TABLE herald_jobs (
        id           INTEGER PRIMARY KEY,
        job_id       BLOB    NOT NULL UNIQUE,
        queue        TEXT    NOT NULL,
        kind         TEXT    NOT NULL,
        args         TEXT    NOT NULL,
        metadata     TEXT    NOT NULL,
        priority     INTEGER NOT NULL,
        state        INTEGER NOT NULL,
        run_at       INTEGER NOT NULL,
        attempt      INTEGER NOT NULL,
        max_attempts INTEGER NOT NULL,
        unique_key   TEXT,
        order_key    TEXT,
        lease_owner  BLOB,
        last_error   TEXT,
        errors       TEXT    NOT NULL,
        enqueued_at  INTEGER NOT NULL
    );
    CREATE INDEX herald_jobs_available ON herald_jobs (queue, priority DESC, id) WHERE state = 0;
    CREATE INDEX herald_jobs_timed ON herald_jobs (state, run_at);
    CREATE UNIQUE INDEX herald_jobs_unique ON herald_jobs (unique_key) WHERE unique_key IS NOT NULL;
    CREATE INDEX herald_jobs_ordered ON herald_jobs (order_key, id) WHERE order_key IS NOT NULL;

    CREATE TABLE herald_jobs_dead (
        id           INTEGER PRIMARY KEY,
        job_id       BLOB    NOT NULL UNIQUE,
        queue        TEXT    NOT NULL,
        kind         TEXT    NOT NULL,
        args         TEXT    NOT NULL,
        metadata     TEXT    NOT NULL,
        priority     INTEGER NOT NULL,
        attempt      INTEGER NOT NULL,
        max_attempts INTEGER NOT NULL,
        unique_key   TEXT,
        order_key    TEXT,
        last_error   TEXT,
        errors       TEXT    NOT NULL,
        enqueued_at  INTEGER NOT NULL,
        died_at      INTEGER NOT NULL
    );
    CREATE INDEX herald_jobs_dead_by_time ON herald_jobs_dead (died_at);

    -- One row per (schedule, tick) ever enqueued: the primary key makes a tick enqueue once across processes.
    CREATE TABLE herald_jobs_cron (
        schedule TEXT    NOT NULL,
        tick     INTEGER NOT NULL,
        PRIMARY KEY (schedule, tick)
    ) WITHOUT ROWID;
    ",
    // 2: an attempt counts when the job starts, not when it is claimed (see herald-core's `JobQueue`).
    "
    -- While running: whether the lease's start was recorded, i.e. whether `attempt` counts this run.
    ALTER TABLE herald_jobs ADD COLUMN started INTEGER NOT NULL DEFAULT 0;
    -- Leases that expired before a start was recorded; from the first, every start is recorded first.
    ALTER TABLE herald_jobs ADD COLUMN lost_unstarted INTEGER NOT NULL DEFAULT 0;
    -- Jobs leased by an older Herald had their attempt counted by the claim.
    UPDATE herald_jobs SET started = 1 WHERE state = 2;
    ",
    // 3: delivery routes (herald_core::delivery): read by the store's writer in every write transaction.
    "
    CREATE TABLE herald_routes (
        name          TEXT    PRIMARY KEY,
        stream_prefix TEXT    NOT NULL,
        stream_exact  INTEGER NOT NULL,
        event_type    TEXT,
        kind          TEXT    NOT NULL,
        target        TEXT    NOT NULL,
        max_attempts  INTEGER NOT NULL,
        created_at    INTEGER NOT NULL
    ) WITHOUT ROWID;
    ",
];

/// Creates or upgrades the job tables. `tx` is inside the caller's `BEGIN IMMEDIATE` transaction, on a file
/// already checked (or stamped) as a Herald database.
/// Whether the job tables exist at this build's version, read without writing anything.
pub(crate) fn is_current(conn: &Connection) -> Result<bool> {
    let exists: bool = conn
        .query_row(
            "SELECT count(*) > 0 FROM sqlite_schema WHERE type = 'table' AND name = 'herald_jobs_schema'",
            [],
            |r| r.get(0),
        )
        .map_err(backend)?;
    if !exists {
        return Ok(false);
    }
    let version: Option<i64> = conn
        .query_row("SELECT max(version) FROM herald_jobs_schema", [], |r| {
            r.get(0)
        })
        .map_err(backend)?;
    Ok(version == Some(MIGRATIONS.len() as i64))
}

pub(crate) fn migrate(tx: &Connection) -> Result<()> {
    tx.execute_batch("CREATE TABLE IF NOT EXISTS herald_jobs_schema (version INTEGER NOT NULL)")
        .map_err(backend)?;
    let version: i64 = tx
        .query_row("SELECT max(version) FROM herald_jobs_schema", [], |r| {
            r.get::<_, Option<i64>>(0)
        })
        .map_err(backend)?
        .unwrap_or(0);
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(Error::backend(format!(
            "the job tables are version {version}, newer than this Herald knows ({known}); upgrade Herald"
        )));
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.execute_batch(sql)
            .map_err(|e| context(format!("job migration {} failed", index + 1), e))?;
        tx.execute(
            "INSERT INTO herald_jobs_schema (version) VALUES (?1)",
            [index as i64 + 1],
        )
        .map_err(backend)?;
        tracing::info!(migration = index + 1, "applied herald-sqlite job migration");
    }
    Ok(())
}
