//! The job tables, in the event store's SQLite file, and their migrations.
//!
//! herald-sqlite records its own schema version in `PRAGMA user_version`; the job tables keep theirs in
//! `herald_jobs_schema`, so the two crates migrate independently. Migrations run under `BEGIN IMMEDIATE`, so
//! several processes may open the file at once.

use std::path::Path;
use std::time::Duration;

use herald_sqlite::rusqlite::{self, Connection, OpenFlags, TransactionBehavior};

use crate::error::{JobError, Result};

/// Job states as stored (`herald_jobs.state`).
pub(crate) const AVAILABLE: i64 = 0;
pub(crate) const SCHEDULED: i64 = 1;
pub(crate) const RUNNING: i64 = 2;

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
];

pub(crate) fn connect(path: &Path, busy_timeout: Duration, full_sync: bool) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| {
        JobError::backend(format!(
            "cannot open SQLite database {}: {e}",
            path.display()
        ))
    })?;
    conn.busy_timeout(busy_timeout)?;
    conn.set_prepared_statement_cache_capacity(64);
    conn.pragma_update(
        None,
        "synchronous",
        if full_sync { "FULL" } else { "NORMAL" },
    )?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    Ok(conn)
}

/// Puts the file in WAL mode, stamps a fresh file as a Herald database, and creates or upgrades the job tables.
pub(crate) fn migrate(conn: &mut Connection) -> Result<()> {
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(JobError::backend(format!(
            "SQLite refused WAL mode (journal_mode is {mode})"
        )));
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let app_id: i32 = tx.query_row("PRAGMA application_id", [], |r| r.get(0))?;
    if app_id != herald_sqlite::APPLICATION_ID {
        let tables: i64 = tx.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))?;
        if app_id != 0 || tables != 0 {
            return Err(JobError::backend(
                "the file is an SQLite database that Herald did not create; refusing to modify it",
            ));
        }
        // A fresh file: stamp it the way herald-sqlite does, so the event store opens it later.
        tx.pragma_update(None, "application_id", herald_sqlite::APPLICATION_ID)?;
    }
    tx.execute_batch("CREATE TABLE IF NOT EXISTS herald_jobs_schema (version INTEGER NOT NULL)")?;
    let version: i64 = tx
        .query_row("SELECT max(version) FROM herald_jobs_schema", [], |r| {
            r.get::<_, Option<i64>>(0)
        })?
        .unwrap_or(0);
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(JobError::backend(format!(
            "the job tables are version {version}, newer than this Herald knows ({known}); upgrade Herald"
        )));
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.execute_batch(sql)
            .map_err(|e| JobError::backend(format!("job migration {} failed: {e}", index + 1)))?;
        tx.execute(
            "INSERT INTO herald_jobs_schema (version) VALUES (?1)",
            [index as i64 + 1],
        )?;
        tracing::info!(migration = index + 1, "applied herald-jobs migration");
    }
    tx.commit()?;
    Ok(())
}

pub(crate) fn is_constraint(e: &rusqlite::Error) -> bool {
    e.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation)
}
