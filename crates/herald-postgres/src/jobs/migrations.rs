//! The job tables' embedded migrations (component `herald-jobs`, recorded in `herald_jobs_migrations`),
//! applied by the crate's one migrator ([`crate::apply_migrations`]) both when a job queue opens and when the
//! event store opens, so `append_with_jobs` and job routers work on any store schema. The component name
//! and the scripts are the ones herald-jobs used, so schemas it created keep working and old and new code
//! agree on what has run.

use tokio_postgres::Client;

use herald_core::Result;

/// The migrator's component name for the job tables.
pub(crate) const COMPONENT: &str = "herald-jobs";

/// The migrations, in order; `{s}` is the schema. Never edit a released one: append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: live jobs, dead jobs, cron ticks (the SQLite layout, PostgreSQL types).
    "
    -- Pending (available or scheduled) and running jobs; finished jobs leave (success and discard delete the
    -- row, exhaustion moves it to herald_jobs_dead), so a unique key here is unique while pending or running.
    -- `id` is the enqueue order. `run_at` (µs since the epoch) is when a pending job may run, and for a
    -- running job the end of its lease. `state`: 0 available, 1 scheduled, 2 running.
    CREATE TABLE {s}.herald_jobs (
        id           bigserial PRIMARY KEY,
        job_id       uuid      NOT NULL UNIQUE,
        queue        text      NOT NULL,
        kind         text      NOT NULL,
        args         text      NOT NULL,
        metadata     text      NOT NULL,
        priority     integer   NOT NULL,
        state        smallint  NOT NULL,
        run_at       bigint    NOT NULL,
        attempt      integer   NOT NULL,
        max_attempts integer   NOT NULL,
        unique_key   text,
        order_key    text,
        lease_owner  uuid,
        last_error   text,
        errors       jsonb     NOT NULL DEFAULT '[]',
        enqueued_at  bigint    NOT NULL
    );
    CREATE INDEX herald_jobs_available ON {s}.herald_jobs (queue, priority DESC, id) WHERE state = 0;
    CREATE INDEX herald_jobs_timed ON {s}.herald_jobs (state, run_at);
    CREATE UNIQUE INDEX herald_jobs_unique ON {s}.herald_jobs (unique_key) WHERE unique_key IS NOT NULL;
    CREATE INDEX herald_jobs_ordered ON {s}.herald_jobs (order_key, id) WHERE order_key IS NOT NULL;

    CREATE TABLE {s}.herald_jobs_dead (
        id           bigserial PRIMARY KEY,
        job_id       uuid      NOT NULL UNIQUE,
        queue        text      NOT NULL,
        kind         text      NOT NULL,
        args         text      NOT NULL,
        metadata     text      NOT NULL,
        priority     integer   NOT NULL,
        attempt      integer   NOT NULL,
        max_attempts integer   NOT NULL,
        unique_key   text,
        order_key    text,
        last_error   text,
        errors       jsonb     NOT NULL,
        enqueued_at  bigint    NOT NULL,
        died_at      bigint    NOT NULL
    );
    CREATE INDEX herald_jobs_dead_by_time ON {s}.herald_jobs_dead (died_at);

    -- One row per (schedule, tick) ever enqueued: the primary key makes a tick enqueue once across processes.
    CREATE TABLE {s}.herald_jobs_cron (
        schedule text   NOT NULL,
        tick     bigint NOT NULL,
        PRIMARY KEY (schedule, tick)
    );
    ",
    // 2: an attempt counts when the job starts, not when it is claimed (see herald-core's `JobQueue`).
    "
    -- `started`: while running, whether the lease's start was recorded, i.e. whether `attempt` counts this
    -- run. `lost_unstarted`: leases that expired before a start was recorded; from the first, every start is
    -- recorded before the job runs.
    ALTER TABLE {s}.herald_jobs
        ADD COLUMN started        boolean NOT NULL DEFAULT false,
        ADD COLUMN lost_unstarted integer NOT NULL DEFAULT 0;
    -- Jobs leased by an older Herald had their attempt counted by the claim.
    UPDATE {s}.herald_jobs SET started = true WHERE state = 2;
    ",
    // 3: delivery routes (herald_core::delivery): joined by the writer's delivery statement, once per batch.
    "
    CREATE TABLE {s}.herald_routes (
        name          text    PRIMARY KEY,
        stream_prefix text    NOT NULL,
        stream_exact  boolean NOT NULL,
        event_type    text,
        kind          text    NOT NULL,
        target        text    NOT NULL,
        max_attempts  integer NOT NULL,
        created_at    bigint  NOT NULL
    );
    ",
];

/// Creates the schema when missing and applies the job tables' pending migrations (advisory lock,
/// `herald_jobs_migrations`).
pub(crate) async fn migrate(client: &mut Client, schema: &str) -> Result<()> {
    crate::apply_migrations(client, schema, COMPONENT, MIGRATIONS).await
}
