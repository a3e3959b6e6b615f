//! The PostgreSQL backend of [`crate::JobStore`] (feature `postgres`).
//!
//! The job tables live in a schema of the database (by default the event store's, `herald`), created by
//! embedded migrations under a transaction-scoped advisory lock, so several processes may start at once.
//! Every operation is one statement (or a few, pipelined) on a pooled connection; PostgreSQL's own group
//! commit merges the WAL flushes of concurrent transactions, so there is no writer task here.
//!
//! - **Fetch.** A claim leases the best jobs of a queue with `SELECT … FOR UPDATE SKIP LOCKED` inside the
//!   `UPDATE` that leases them: concurrent claimers (in any process) skip each other's rows instead of waiting,
//!   and a row claimed and committed by another process is re-checked (`state = 0`) and dropped. The same
//!   housekeeping as on SQLite runs before each claim (expired leases back to the queue or to the dead set, due
//!   scheduled jobs made available), also with `SKIP LOCKED`, so claimers never queue behind each other.
//! - **Per-type limits.** Counting running jobs and leasing more must not race between processes: a claim that
//!   involves limited types takes one transaction-scoped advisory lock per limited type (in name order), then
//!   counts and leases in the same transaction.
//! - **Wake-ups.** After an enqueue commits, a notifier task sends one `NOTIFY` on the schema's channel
//!   (coalescing the enqueues that committed meanwhile): not inside the enqueue's transaction, because
//!   PostgreSQL serialises the commits of notifying transactions, which would undo group commit for
//!   concurrent enqueuers. Transactional enqueues (append hooks, [`insert_jobs_postgres`]) notify inside the
//!   transaction, delivered at commit. Completions ask the same notifier for a `NOTIFY` after they commit
//!   when they may have made a waiting job runnable: the job held an ordering key (and was deleted or went
//!   to the dead set; a retrying job keeps its key) or was of a type with a concurrency limit in the pool
//!   that ran it (any outcome). So the next job of a key, or of a limited type, starts within milliseconds
//!   in whichever process works it, not at that process's next poll. Completions of other jobs notify
//!   nobody: at high throughput that would wake every fetcher of every process for nothing. (A limit
//!   declared only by the pools of other processes is not known here: those pools find the free slot at
//!   their poll.) Releases (shutdown) notify at once, inline, as the store may close right after. Each store
//!   handle keeps one connection `LISTEN`ing and wakes its pool's fetchers (of every queue). Pools still
//!   poll (their poll interval) for scheduled jobs coming due and expired leases.
//! - **Durability.** `synchronous_commit` stays on: every enqueue, claim and completion is flushed before it
//!   is acknowledged. [`crate::JobsConfig::full_sync`]`(false)` turns it off for every statement of the
//!   store; [`crate::JobsConfig::durable_progress`]`(false)` only for claims, completions and renewals (their
//!   own pool), as on SQLite.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use futures::StreamExt;
use tokio::sync::{Notify, oneshot};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, Config, GenericClient, NoTls};
use uuid::Uuid;

use crate::clock::micros;
use crate::error::{JobError, Result};
use crate::job::NewJob;
use crate::schema::{AVAILABLE, RUNNING, SCHEDULED};
use crate::store::{Claimed, Completion, DeadJob, Finish, JobInfo, JobsConfig, QueueStats, Stats};

const LEASE_EXPIRED: &str = "lease expired (worker died?)";

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
];

/// A driver error as a job error; a server error keeps its message and SQLSTATE.
pub(crate) fn backend(e: tokio_postgres::Error) -> JobError {
    match e.as_db_error() {
        Some(db) => JobError::backend(format!(
            "PostgreSQL {}: {} ({})",
            db.severity(),
            db.message(),
            db.code().code()
        )),
        None => JobError::backend(e),
    }
}

fn pool_error(e: deadpool_postgres::PoolError) -> JobError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => backend(e),
        other => JobError::backend(format!("PostgreSQL connection pool: {other}")),
    }
}

/// The statements of one schema (table names qualified, so they also run on the event store's connection).
struct Sql {
    insert: String,
    expire_dead: String,
    expire: String,
    promote: String,
    claim: String,
    candidates: String,
    take: String,
    count_running: String,
    delete: String,
    release: String,
    reschedule: String,
    die: String,
    trim_age: String,
    trim_count: String,
    renew: String,
    release_all: String,
    notify: String,
}

/// The insert used by enqueues, bulk enqueues, cron and transactional enqueues: arrays through `unnest` (one
/// statement for any number of jobs), unique keys skipped with `ON CONFLICT DO NOTHING` on the partial unique
/// index, and a `NOTIFY` in the same statement when a job is ready now (delivered at commit).
fn insert_sql(s: &str) -> String {
    format!(
        "{} SELECT job_id FROM ins WHERE (SELECT count(*) FROM woke) >= 0",
        insert_cte(s)
    )
}

/// [`insert_sql`] without the `NOTIFY`, for the store's own enqueues: PostgreSQL serialises the commits of
/// transactions that notify (a lock held through the commit's WAL flush), which would undo group commit for
/// concurrent enqueuers. Their wake-up goes out right after the commit instead ([`notifier`]).
fn insert_quiet_sql(s: &str) -> String {
    format!("{} SELECT job_id, state FROM ins", insert_cte(s))
}

fn insert_cte(s: &str) -> String {
    format!(
        "WITH ins AS (
            INSERT INTO {s}.herald_jobs (job_id, queue, kind, args, metadata, priority, state, run_at, attempt,
                max_attempts, unique_key, order_key, errors, enqueued_at)
            SELECT job_id, queue, kind, args, metadata, priority, state, run_at, 0, max_attempts, unique_key,
                order_key, '[]', $12::bigint
            FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int4[], $7::int2[],
                        $8::int8[], $9::int4[], $10::text[], $11::text[])
                 WITH ORDINALITY AS t(job_id, queue, kind, args, metadata, priority, state, run_at, max_attempts,
                                      unique_key, order_key, ord)
            ORDER BY ord
            ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL DO NOTHING
            RETURNING job_id, state
         ), woke AS (
            SELECT pg_notify('herald_jobs_{s}', '') FROM ins WHERE state = 0 LIMIT 1
         )"
    )
}

impl Sql {
    fn new(s: &str) -> Self {
        let own = "j.id = d.id AND j.attempt = d.attempt AND j.lease_owner = $3 AND j.state = 2";
        let history = |attempt: &str, at: &str, error: &str| {
            format!(
                "errors || jsonb_build_array(jsonb_build_object('attempt', {attempt}, 'at', {at}, 'error', {error}))"
            )
        };
        let dead_columns = "job_id, queue, kind, args, metadata, priority, attempt, max_attempts, unique_key, \
                            order_key, last_error, errors, enqueued_at, died_at";
        Sql {
            insert: insert_quiet_sql(s),
            expire_dead: format!(
                "WITH gone AS (
                    DELETE FROM {s}.herald_jobs WHERE id IN (
                        SELECT id FROM {s}.herald_jobs
                        WHERE state = 2 AND run_at < $1 AND attempt >= max_attempts
                        FOR UPDATE SKIP LOCKED)
                    RETURNING *
                 )
                 INSERT INTO {s}.herald_jobs_dead ({dead_columns})
                 SELECT job_id, queue, kind, args, metadata, priority, attempt, max_attempts, unique_key, order_key,
                     '{LEASE_EXPIRED}', {}, enqueued_at, $1
                 FROM gone ORDER BY id",
                history("attempt", "$1", &format!("'{LEASE_EXPIRED}'"))
            ),
            expire: format!(
                "UPDATE {s}.herald_jobs SET state = 0, lease_owner = NULL, last_error = '{LEASE_EXPIRED}',
                     errors = {}
                 WHERE id IN (SELECT id FROM {s}.herald_jobs WHERE state = 2 AND run_at < $1
                              FOR UPDATE SKIP LOCKED)",
                history("attempt", "$1", &format!("'{LEASE_EXPIRED}'"))
            ),
            promote: format!(
                "UPDATE {s}.herald_jobs SET state = 0
                 WHERE id IN (SELECT id FROM {s}.herald_jobs WHERE state = 1 AND run_at <= $1
                              FOR UPDATE SKIP LOCKED)"
            ),
            // Per-key order: a job waits while its key has an earlier job (pending or running) or a running
            // one (a later id that was enqueued concurrently and committed first).
            claim: format!(
                "WITH picked AS (
                    SELECT id FROM {s}.herald_jobs j
                    WHERE state = 0 AND queue = $1
                      AND (order_key IS NULL OR NOT EXISTS (
                            SELECT 1 FROM {s}.herald_jobs k
                            WHERE k.order_key = j.order_key AND (k.id < j.id OR k.state = 2)))
                    ORDER BY priority DESC, id
                    LIMIT $2
                    FOR UPDATE SKIP LOCKED
                 )
                 UPDATE {s}.herald_jobs j SET state = 2, attempt = attempt + 1, run_at = $3, lease_owner = $4
                 FROM picked WHERE j.id = picked.id
                 RETURNING j.id, j.job_id, j.queue, j.kind, j.args, j.metadata, j.attempt, j.max_attempts,
                     j.priority, j.order_key IS NOT NULL"
            ),
            candidates: format!(
                "SELECT id, kind FROM {s}.herald_jobs j
                 WHERE state = 0 AND queue = $1
                   AND (order_key IS NULL OR NOT EXISTS (
                         SELECT 1 FROM {s}.herald_jobs k
                         WHERE k.order_key = j.order_key AND (k.id < j.id OR k.state = 2)))
                   AND NOT (kind = ANY($3::text[]))
                 ORDER BY priority DESC, id
                 LIMIT $2
                 FOR UPDATE SKIP LOCKED"
            ),
            take: format!(
                "UPDATE {s}.herald_jobs SET state = 2, attempt = attempt + 1, run_at = $2, lease_owner = $3
                 WHERE id = ANY($1::int8[])
                 RETURNING id, job_id, queue, kind, args, metadata, attempt, max_attempts, priority,
                     order_key IS NOT NULL"
            ),
            count_running: format!(
                "SELECT kind, count(*) FROM {s}.herald_jobs WHERE state = 2 AND kind = ANY($1::text[])
                 GROUP BY kind"
            ),
            delete: format!(
                "DELETE FROM {s}.herald_jobs j USING unnest($1::int8[], $2::int4[]) AS d(id, attempt)
                 WHERE {own}"
            ),
            release: format!(
                "UPDATE {s}.herald_jobs j SET state = 0, attempt = j.attempt - 1, lease_owner = NULL, run_at = $4
                 FROM unnest($1::int8[], $2::int4[]) AS d(id, attempt) WHERE {own}"
            ),
            reschedule: format!(
                "UPDATE {s}.herald_jobs j SET state = 1, run_at = d.at, lease_owner = NULL, last_error = d.error,
                     errors = j.{}
                 FROM unnest($1::int8[], $2::int4[], $5::int8[], $6::text[]) AS d(id, attempt, at, error)
                 WHERE {own}",
                history("j.attempt", "$4::bigint", "d.error")
            ),
            die: format!(
                "WITH gone AS (
                    DELETE FROM {s}.herald_jobs j USING unnest($1::int8[], $2::int4[], $5::text[])
                        AS d(id, attempt, error)
                    WHERE {own}
                    RETURNING j.*, d.error AS final_error
                 )
                 INSERT INTO {s}.herald_jobs_dead ({dead_columns})
                 SELECT job_id, queue, kind, args, metadata, priority, attempt, max_attempts, unique_key, order_key,
                     final_error, {}, enqueued_at, $4::bigint
                 FROM gone ORDER BY id",
                history("attempt", "$4::bigint", "final_error")
            ),
            trim_age: format!("DELETE FROM {s}.herald_jobs_dead WHERE died_at < $1"),
            trim_count: format!(
                "DELETE FROM {s}.herald_jobs_dead WHERE id <= (
                    SELECT id FROM {s}.herald_jobs_dead ORDER BY id DESC LIMIT 1 OFFSET $1)"
            ),
            renew: format!(
                "UPDATE {s}.herald_jobs SET run_at = $1 WHERE state = 2 AND lease_owner = $2"
            ),
            release_all: format!(
                "UPDATE {s}.herald_jobs SET state = 0, run_at = $1, lease_owner = NULL
                 WHERE state = 2 AND lease_owner = $2"
            ),
            notify: format!("SELECT pg_notify('herald_jobs_{s}', '')"),
        }
    }
}

/// The column arrays of [`insert_sql`] for `jobs` at `now`.
struct InsertArrays {
    ids: Vec<Uuid>,
    queues: Vec<String>,
    kinds: Vec<String>,
    args: Vec<String>,
    metadata: Vec<String>,
    priorities: Vec<i32>,
    states: Vec<i16>,
    run_at: Vec<i64>,
    max_attempts: Vec<i32>,
    unique_keys: Vec<Option<String>>,
    order_keys: Vec<Option<String>>,
    now: i64,
}

impl InsertArrays {
    fn new<'a>(jobs: impl IntoIterator<Item = &'a NewJob>, now: i64) -> Self {
        let mut a = InsertArrays {
            ids: Vec::new(),
            queues: Vec::new(),
            kinds: Vec::new(),
            args: Vec::new(),
            metadata: Vec::new(),
            priorities: Vec::new(),
            states: Vec::new(),
            run_at: Vec::new(),
            max_attempts: Vec::new(),
            unique_keys: Vec::new(),
            order_keys: Vec::new(),
            now,
        };
        for job in jobs {
            let run_at = job.run_at(now);
            a.ids.push(job.id);
            a.queues.push(job.queue.clone());
            a.kinds.push(job.kind.clone());
            a.args.push(job.args.clone());
            a.metadata.push(job.metadata.clone());
            a.priorities.push(job.priority);
            a.states
                .push(if run_at <= now { AVAILABLE } else { SCHEDULED } as i16);
            a.run_at.push(run_at);
            a.max_attempts
                .push(i32::try_from(job.max_attempts).unwrap_or(i32::MAX));
            a.unique_keys.push(job.unique_key.clone());
            a.order_keys.push(job.order_key.clone());
        }
        a
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 12] {
        [
            &self.ids,
            &self.queues,
            &self.kinds,
            &self.args,
            &self.metadata,
            &self.priorities,
            &self.states,
            &self.run_at,
            &self.max_attempts,
            &self.unique_keys,
            &self.order_keys,
            &self.now,
        ]
    }
}

/// Adds the insert of `jobs` (at `now`) to an append's hook statements.
pub(crate) fn push_inserts(
    writes: &mut herald_postgres::HookWrites,
    schema: &str,
    jobs: &[NewJob],
    now: i64,
) -> std::result::Result<(), herald_postgres::HookError> {
    if jobs.is_empty() {
        return Ok(());
    }
    let a = InsertArrays::new(jobs, now);
    let params: Vec<herald_postgres::HookParam> = vec![
        Box::new(a.ids),
        Box::new(a.queues),
        Box::new(a.kinds),
        Box::new(a.args),
        Box::new(a.metadata),
        Box::new(a.priorities),
        Box::new(a.states),
        Box::new(a.run_at),
        Box::new(a.max_attempts),
        Box::new(a.unique_keys),
        Box::new(a.order_keys),
        Box::new(a.now),
    ];
    writes.push(insert_sql(schema), params)?;
    Ok(())
}

/// Inserts `jobs` on `client` — inside the caller's transaction when it is one — in the job tables of
/// `schema`, at time `now` (µs since the epoch). Returns the ids inserted: a job whose unique key is held by a
/// pending or running job is skipped. Ready jobs `NOTIFY` the workers when the transaction commits. The
/// building block of transactional enqueue on PostgreSQL (the event store's append hooks, or any transaction
/// of the application's own). `schema` must be a valid schema name (as the job store validated it).
pub async fn insert_jobs_postgres<C: GenericClient>(
    client: &C,
    schema: &str,
    jobs: &[NewJob],
    now: i64,
) -> std::result::Result<Vec<Uuid>, tokio_postgres::Error> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let arrays = InsertArrays::new(jobs, now);
    let statement = client.prepare_typed(&insert_sql(schema), &[]).await?;
    let rows = client.query(&statement, &arrays.params()).await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// A stable 64-bit advisory-lock key for `what` (FNV-1a).
fn lock_key(what: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in what.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash as i64
}

fn pool(pg: &Config, size: usize) -> Result<Pool> {
    Pool::builder(Manager::from_config(
        pg.clone(),
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    ))
    .max_size(size)
    .runtime(deadpool_postgres::Runtime::Tokio1)
    .build()
    .map_err(|e| JobError::backend(format!("cannot build the PostgreSQL pool: {e}")))
}

fn with_option(mut pg: Config, option: &str) -> Config {
    let options = match pg.get_options() {
        Some(existing) if !existing.is_empty() => format!("{existing} {option}"),
        _ => option.to_owned(),
    };
    pg.options(options);
    pg
}

pub(crate) struct PgBackend {
    pub(crate) schema: String,
    /// Enqueues, reads and dead-set operations.
    pool: Pool,
    /// Claims, completions, renewals (the same pool unless `durable_progress` is off).
    progress: Pool,
    sql: Sql,
    /// Asks the notifier to `NOTIFY` the workers of every process (coalesced).
    ready: Arc<Notify>,
    /// Dropping it stops the listener.
    _stop_listener: oneshot::Sender<()>,
    /// Dropping it stops the notifier.
    _stop_notifier: oneshot::Sender<()>,
}

impl PgBackend {
    pub(crate) async fn open(url: &str, config: &JobsConfig, wake: Arc<Notify>) -> Result<Self> {
        let url: herald_postgres::PostgresUrl = url.parse().map_err(JobError::from)?;
        let schema = url.config.schema.clone();
        herald_postgres::validate_schema_name(&schema)?;
        let mut pg: Config = url
            .connection
            .parse()
            .map_err(|e| JobError::invalid(format!("PostgreSQL URL is not valid: {e}")))?;
        if pg.get_application_name().is_none() {
            pg.application_name("herald-jobs");
        }
        if !config.full_sync {
            pg = with_option(pg, "-c synchronous_commit=off");
        }
        let pool_size = url.config.pool_size.max(2);
        let main = pool(&pg, pool_size)?;
        let progress = if config.full_sync && !config.durable_progress {
            pool(
                &with_option(pg.clone(), "-c synchronous_commit=off"),
                pool_size,
            )?
        } else {
            main.clone()
        };
        let mut client = main.get().await.map_err(|e| {
            JobError::backend(format!(
                "cannot connect to PostgreSQL for the job store: {}",
                pool_error(e)
            ))
        })?;
        migrate(&mut client, &schema).await?;
        drop(client);
        let (stop_tx, stop_rx) = oneshot::channel();
        tokio::spawn(listen(pg, format!("herald_jobs_{schema}"), wake, stop_rx));
        let sql = Sql::new(&schema);
        let ready = Arc::new(Notify::new());
        let (stop_notifier, notifier_stop) = oneshot::channel();
        tokio::spawn(notifier(
            main.clone(),
            sql.notify.clone(),
            Arc::clone(&ready),
            notifier_stop,
        ));
        Ok(PgBackend {
            sql,
            schema,
            pool: main,
            progress,
            ready,
            _stop_listener: stop_tx,
            _stop_notifier: stop_notifier,
        })
    }

    async fn client(&self) -> Result<Object> {
        self.pool.get().await.map_err(pool_error)
    }

    async fn progress_client(&self) -> Result<Object> {
        self.progress.get().await.map_err(pool_error)
    }

    pub(crate) async fn insert(&self, jobs: &[NewJob], now: i64) -> Result<Vec<Uuid>> {
        let client = self.client().await?;
        let arrays = InsertArrays::new(jobs, now);
        let statement = client
            .prepare_cached(&self.sql.insert)
            .await
            .map_err(backend)?;
        let rows = client
            .query(&statement, &arrays.params())
            .await
            .map_err(backend)?;
        if rows
            .iter()
            .any(|r| i64::from(r.get::<_, i16>(1)) == AVAILABLE)
        {
            self.ready.notify_one();
        }
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    pub(crate) async fn claim(
        &self,
        config: &JobsConfig,
        queue: &str,
        owner: Uuid,
        limit: usize,
        limits: &[(String, u32)],
    ) -> Result<Vec<Claimed>> {
        let now = config.clock.now_micros();
        let lease_end = now + micros(config.lease);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut client = self.progress_client().await?;
        let rows = if limits.is_empty() {
            // Housekeeping and the claim pipelined: one round trip (statements run in order, so the claim
            // sees what the housekeeping made available).
            // Prepared (cached) before sending, so the statements go out in this order.
            let (claim, ..) = futures::try_join!(
                client.prepare_cached(&self.sql.claim),
                client.prepare_cached(&self.sql.expire_dead),
                client.prepare_cached(&self.sql.expire),
                client.prepare_cached(&self.sql.promote),
            )
            .map_err(backend)?;
            let params: [&(dyn ToSql + Sync); 4] = [&queue, &limit, &lease_end, &owner];
            let (_, rows) = futures::try_join!(self.maintain(&client, config, now), async {
                client.query(&claim, &params).await.map_err(backend)
            },)?;
            rows
        } else {
            self.maintain(&client, config, now).await?;
            let (candidates, count, take) = (
                client.prepare_cached(&self.sql.candidates).await,
                client.prepare_cached(&self.sql.count_running).await,
                client.prepare_cached(&self.sql.take).await,
            );
            let (candidates, count, take) = (
                candidates.map_err(backend)?,
                count.map_err(backend)?,
                take.map_err(backend)?,
            );
            let tx = client.transaction().await.map_err(backend)?;
            let mut kinds: Vec<&str> = limits.iter().map(|(k, _)| k.as_str()).collect();
            kinds.sort_unstable();
            kinds.dedup();
            // Serialise counting and leasing of limited types across processes (see the module docs).
            for kind in &kinds {
                tx.execute(
                    "SELECT pg_advisory_xact_lock($1)",
                    &[&lock_key(&format!(
                        "herald-jobs-limit:{}:{kind}",
                        self.schema
                    ))],
                )
                .await
                .map_err(backend)?;
            }
            let running: Vec<(String, i64)> = tx
                .query(&count, &[&kinds])
                .await
                .map_err(backend)?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            let mut remaining: Vec<(String, i64)> = limits
                .iter()
                .map(|(kind, max)| {
                    let now_running = running
                        .iter()
                        .find(|(k, _)| k == kind)
                        .map_or(0, |(_, n)| *n);
                    (kind.clone(), i64::from(*max) - now_running)
                })
                .collect();
            let full: Vec<&str> = remaining
                .iter()
                .filter(|(_, r)| *r <= 0)
                .map(|(k, _)| k.as_str())
                .collect();
            let picked: Vec<(i64, String)> = tx
                .query(&candidates, &[&queue, &limit, &full])
                .await
                .map_err(backend)?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            let mut ids = Vec::with_capacity(picked.len());
            for (id, kind) in picked {
                if let Some((_, left)) = remaining.iter_mut().find(|(k, _)| *k == kind) {
                    if *left <= 0 {
                        continue;
                    }
                    *left -= 1;
                }
                ids.push(id);
            }
            let rows = if ids.is_empty() {
                Vec::new()
            } else {
                tx.query(&take, &[&ids, &lease_end, &owner])
                    .await
                    .map_err(backend)?
            };
            tx.commit().await.map_err(backend)?;
            rows
        };
        let mut claimed: Vec<(i32, Claimed)> = rows
            .iter()
            .map(|r| {
                (
                    r.get::<_, i32>(8),
                    Claimed {
                        row: r.get(0),
                        id: r.get(1),
                        queue: r.get(2),
                        kind: r.get(3),
                        args: r.get(4),
                        metadata: r.get(5),
                        attempt: r.get::<_, i32>(6) as u32,
                        max_attempts: r.get::<_, i32>(7) as u32,
                        ordered: r.get(9),
                    },
                )
            })
            .collect();
        // RETURNING has no order: start them by priority, then enqueue order.
        claimed.sort_by(|(pa, a), (pb, b)| pb.cmp(pa).then(a.row.cmp(&b.row)));
        Ok(claimed.into_iter().map(|(_, c)| c).collect())
    }

    /// Expired leases back to the queue (or to the dead set with no attempt left), due scheduled jobs
    /// available: three statements pipelined (one round trip), each skipping rows others hold.
    async fn maintain(&self, client: &Object, config: &JobsConfig, now: i64) -> Result<()> {
        let (expire_dead, expire, promote) = futures::try_join!(
            client.prepare_cached(&self.sql.expire_dead),
            client.prepare_cached(&self.sql.expire),
            client.prepare_cached(&self.sql.promote),
        )
        .map_err(backend)?;
        let at: [&(dyn ToSql + Sync); 1] = [&now];
        let (died, _, _) = futures::try_join!(
            client.execute(&expire_dead, &at),
            client.execute(&expire, &at),
            client.execute(&promote, &at),
        )
        .map_err(backend)?;
        if died > 0 {
            self.trim_dead(client, config, now).await?;
        }
        Ok(())
    }

    async fn trim_dead(&self, client: &Object, config: &JobsConfig, now: i64) -> Result<()> {
        let oldest = now - micros(config.dead_max_age);
        let keep = i64::try_from(config.dead_max_jobs).unwrap_or(i64::MAX);
        let (oldest, keep): ([&(dyn ToSql + Sync); 1], [&(dyn ToSql + Sync); 1]) =
            ([&oldest], [&keep]);
        futures::try_join!(
            client.execute(self.sql.trim_age.as_str(), &oldest),
            client.execute(self.sql.trim_count.as_str(), &keep),
        )
        .map_err(backend)?;
        Ok(())
    }

    /// Records finished runs: one statement per kind of outcome present (usually just the delete), pipelined.
    /// When one of them may unblock another job (it held an ordering key or a slot of a limited type), asks
    /// the notifier to wake every process's workers once the statements have committed.
    pub(crate) async fn complete(
        &self,
        config: &JobsConfig,
        owner: Uuid,
        done: Vec<Completion>,
    ) -> Result<()> {
        let now = config.clock.now_micros();
        let unblocks = done.iter().any(Completion::unblocks_others);
        let mut delete: (Vec<i64>, Vec<i32>) = Default::default();
        let mut release: (Vec<i64>, Vec<i32>) = Default::default();
        let mut reschedule: (Vec<i64>, Vec<i32>, Vec<i64>, Vec<String>) = Default::default();
        let mut die: (Vec<i64>, Vec<i32>, Vec<String>) = Default::default();
        for c in done {
            let attempt = c.attempt as i32;
            match c.finish {
                Finish::Delete => {
                    delete.0.push(c.row);
                    delete.1.push(attempt);
                }
                Finish::Release => {
                    release.0.push(c.row);
                    release.1.push(attempt);
                }
                Finish::Reschedule { at, error } => {
                    reschedule.0.push(c.row);
                    reschedule.1.push(attempt);
                    reschedule.2.push(at);
                    reschedule.3.push(error);
                }
                Finish::Dead { error } => {
                    die.0.push(c.row);
                    die.1.push(attempt);
                    die.2.push(error);
                }
            }
        }
        let client = self.progress_client().await?;
        let s = &self.sql;
        let deleting = async {
            if delete.0.is_empty() {
                return Ok(0);
            }
            let st = client.prepare_cached(&s.delete).await?;
            client.execute(&st, &[&delete.0, &delete.1, &owner]).await
        };
        let releasing = async {
            if release.0.is_empty() {
                return Ok(0);
            }
            let st = client.prepare_cached(&s.release).await?;
            let n = client
                .execute(&st, &[&release.0, &release.1, &owner, &now])
                .await?;
            if n > 0 {
                client.execute(s.notify.as_str(), &[]).await?;
            }
            Ok(n)
        };
        let rescheduling = async {
            if reschedule.0.is_empty() {
                return Ok(0);
            }
            let st = client.prepare_cached(&s.reschedule).await?;
            client
                .execute(
                    &st,
                    &[
                        &reschedule.0,
                        &reschedule.1,
                        &owner,
                        &now,
                        &reschedule.2,
                        &reschedule.3,
                    ],
                )
                .await
        };
        let dying = async {
            if die.0.is_empty() {
                return Ok(0);
            }
            let st = client.prepare_cached(&s.die).await?;
            client
                .execute(&st, &[&die.0, &die.1, &owner, &now, &die.2])
                .await
        };
        let (_, _, _, died) =
            futures::try_join!(deleting, releasing, rescheduling, dying).map_err(backend)?;
        // Each statement committed on its own (no transaction): the waiting jobs are runnable now. Plain
        // jobs wake nobody (at high throughput that would wake every fetcher of every process for nothing).
        if unblocks {
            self.ready.notify_one();
        }
        if died > 0 {
            self.trim_dead(&client, config, now).await?;
        }
        Ok(())
    }

    pub(crate) async fn renew(&self, config: &JobsConfig, owner: Uuid) -> Result<usize> {
        let until = config.clock.now_micros() + micros(config.lease);
        let client = self.progress_client().await?;
        let st = client
            .prepare_cached(&self.sql.renew)
            .await
            .map_err(backend)?;
        Ok(client
            .execute(&st, &[&until, &owner])
            .await
            .map_err(backend)? as usize)
    }

    pub(crate) async fn release_all(&self, config: &JobsConfig, owner: Uuid) -> Result<usize> {
        let now = config.clock.now_micros();
        let client = self.progress_client().await?;
        let n = client
            .execute(self.sql.release_all.as_str(), &[&now, &owner])
            .await
            .map_err(backend)?;
        if n > 0 {
            self.notify(&client).await?;
        }
        Ok(n as usize)
    }

    async fn notify(&self, client: &Object) -> Result<()> {
        client
            .execute(self.sql.notify.as_str(), &[])
            .await
            .map_err(backend)?;
        Ok(())
    }

    pub(crate) async fn stats(&self, now: i64) -> Result<Stats> {
        let s = &self.schema;
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT queue, state, run_at <= $1, count(*) FROM {s}.herald_jobs
                     GROUP BY 1, 2, 3 ORDER BY 1"
                ),
                &[&now],
            )
            .await
            .map_err(backend)?;
        let mut queues: Vec<QueueStats> = Vec::new();
        for row in rows {
            let (queue, state, due, n): (String, i16, bool, i64) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            if queues.last().is_none_or(|q| q.queue != queue) {
                queues.push(QueueStats {
                    queue,
                    ..QueueStats::default()
                });
            }
            let Some(q) = queues.last_mut() else { continue };
            match i64::from(state) {
                AVAILABLE => q.available += n as u64,
                SCHEDULED if due => q.available += n as u64,
                SCHEDULED => q.scheduled += n as u64,
                _ => q.running += n as u64,
            }
        }
        let dead: i64 = client
            .query_one(&format!("SELECT count(*) FROM {s}.herald_jobs_dead"), &[])
            .await
            .map_err(backend)?
            .get(0);
        Ok(Stats {
            queues,
            dead: dead as u64,
        })
    }

    pub(crate) async fn list(
        &self,
        queue: Option<String>,
        state: Option<i64>,
        limit: i64,
        id: Option<Uuid>,
    ) -> Result<Vec<JobInfo>> {
        let s = &self.schema;
        let client = self.client().await?;
        let state = state.map(|s| s as i16);
        let rows = client
            .query(
                &format!(
                    "SELECT job_id, queue, kind, state, args, metadata, priority, attempt, max_attempts, run_at,
                         unique_key, order_key, last_error, enqueued_at
                     FROM {s}.herald_jobs
                     WHERE ($1::text IS NULL OR queue = $1) AND ($2::int2 IS NULL OR state = $2)
                       AND ($4::uuid IS NULL OR job_id = $4)
                     ORDER BY queue, id LIMIT $3"
                ),
                &[&queue, &state, &limit, &id],
            )
            .await
            .map_err(backend)?;
        Ok(rows
            .iter()
            .map(|r| JobInfo {
                id: r.get(0),
                queue: r.get(1),
                kind: r.get(2),
                state: crate::store::state_name(i64::from(r.get::<_, i16>(3))),
                args: r.get(4),
                metadata: r.get(5),
                priority: r.get(6),
                attempt: r.get::<_, i32>(7) as u32,
                max_attempts: r.get::<_, i32>(8) as u32,
                run_at: r.get(9),
                unique_key: r.get(10),
                order_key: r.get(11),
                last_error: r.get(12),
                enqueued_at: r.get(13),
            })
            .collect())
    }

    pub(crate) async fn dead(&self, limit: i64) -> Result<Vec<DeadJob>> {
        let s = &self.schema;
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT job_id, queue, kind, args, metadata, attempt, last_error, errors::text, enqueued_at,
                         died_at
                     FROM {s}.herald_jobs_dead ORDER BY id DESC LIMIT $1"
                ),
                &[&limit],
            )
            .await
            .map_err(backend)?;
        Ok(rows
            .iter()
            .map(|r| DeadJob {
                id: r.get(0),
                queue: r.get(1),
                kind: r.get(2),
                args: r.get(3),
                metadata: r.get(4),
                attempt: r.get::<_, i32>(5) as u32,
                last_error: r.get(6),
                errors: r.get(7),
                enqueued_at: r.get(8),
                died_at: r.get(9),
            })
            .collect())
    }

    /// Moves one dead job (or all) back to its queue, in one statement (all or nothing).
    pub(crate) async fn retry_dead(&self, id: Option<Uuid>, now: i64) -> Result<usize> {
        let s = &self.schema;
        let client = self.client().await?;
        let moved = client
            .execute(
                &format!(
                    "WITH gone AS (
                        DELETE FROM {s}.herald_jobs_dead WHERE ($1::uuid IS NULL OR job_id = $1) RETURNING *
                     )
                     INSERT INTO {s}.herald_jobs (job_id, queue, kind, args, metadata, priority, state, run_at,
                         attempt, max_attempts, unique_key, order_key, last_error, errors, enqueued_at)
                     SELECT job_id, queue, kind, args, metadata, priority, 0, $2, 0, max_attempts, unique_key,
                         order_key, last_error, errors, enqueued_at
                     FROM gone ORDER BY id"
                ),
                &[&id, &now],
            )
            .await;
        let n = match moved {
            Ok(n) => n,
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                return Err(JobError::Duplicate(
                    "a dead job's unique key is taken by a pending or running job".to_owned(),
                ));
            }
            Err(e) => return Err(backend(e)),
        };
        if n > 0 {
            self.notify(&client).await?;
        }
        Ok(n as usize)
    }

    pub(crate) async fn discard_dead(&self, id: Uuid) -> Result<u64> {
        let s = &self.schema;
        let client = self.client().await?;
        client
            .execute(
                &format!("DELETE FROM {s}.herald_jobs_dead WHERE job_id = $1"),
                &[&id],
            )
            .await
            .map_err(backend)
    }

    pub(crate) async fn cancel(&self, id: Uuid) -> Result<u64> {
        let s = &self.schema;
        let client = self.client().await?;
        client
            .execute(
                &format!("DELETE FROM {s}.herald_jobs WHERE job_id = $1 AND state <> {RUNNING}"),
                &[&id],
            )
            .await
            .map_err(backend)
    }

    /// Enqueues the jobs of cron ticks no process has enqueued yet, in one transaction. `due` is sorted by
    /// (schedule, tick), so concurrent schedulers take the tick rows' locks in the same order (no deadlock).
    pub(crate) async fn cron(
        &self,
        mut due: Vec<(String, i64, NewJob)>,
        now: i64,
        until: i64,
    ) -> Result<usize> {
        due.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        let s = &self.schema;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        let mark = tx
            .prepare(&format!(
                "INSERT INTO {s}.herald_jobs_cron (schedule, tick) VALUES ($1, $2) ON CONFLICT DO NOTHING"
            ))
            .await
            .map_err(backend)?;
        let mut fresh = Vec::new();
        for (name, tick, job) in due {
            if tx.execute(&mark, &[&name, &tick]).await.map_err(backend)? == 1 {
                fresh.push(job);
            }
        }
        let inserted = insert_jobs_postgres(&*tx, s, &fresh, now)
            .await
            .map_err(backend)?;
        // Ticks a week before this window are never reached again.
        tx.execute(
            &format!("DELETE FROM {s}.herald_jobs_cron WHERE tick < $1"),
            &[&(now.min(until) - 7 * 24 * 3600 * 1_000_000)],
        )
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(inserted.len())
    }
}

/// Creates the schema when missing and applies the job tables' pending migrations (herald-postgres's
/// migrator: advisory lock, `herald_jobs_migrations`).
async fn migrate(client: &mut Object, schema: &str) -> Result<()> {
    Ok(herald_postgres::apply_migrations(client, schema, "herald-jobs", MIGRATIONS).await?)
}

/// Sends one `NOTIFY` on the schema's channel after enqueues committed (however many asked since the last
/// one: `Notify` keeps a single permit), until `stop` fires or is dropped. A failed notify is logged; idle
/// workers then find the jobs at their next poll.
async fn notifier(pool: Pool, sql: String, ready: Arc<Notify>, mut stop: oneshot::Receiver<()>) {
    loop {
        tokio::select! {
            _ = &mut stop => return,
            () = ready.notified() => {}
        }
        let sent = match pool.get().await {
            Ok(client) => client.execute(sql.as_str(), &[]).await.map_err(backend),
            Err(e) => Err(pool_error(e)),
        };
        if let Err(e) = sent {
            tracing::warn!(error = %e, "herald-jobs: NOTIFY after an enqueue failed; workers will poll");
        }
    }
}

/// Keeps a connection `LISTEN`ing on the schema's job channel and wakes the fetchers on every notification;
/// reconnects with a backoff (waking once after, for what was missed) until `stop` fires or is dropped.
async fn listen(pg: Config, channel: String, wake: Arc<Notify>, mut stop: oneshot::Receiver<()>) {
    let mut failures = 0u32;
    loop {
        tokio::select! {
            _ = &mut stop => return,
            outcome = listen_once(&pg, &channel, &wake) => match outcome {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(error = %e, "herald-jobs listener lost its connection; reconnecting");
                }
            }
        }
        wake.notify_waiters();
        // A retry delay, not synchronisation.
        let backoff = Duration::from_millis(100 * u64::from(failures.clamp(1, 50)));
        tokio::select! {
            _ = &mut stop => return,
            () = tokio::time::sleep(backoff) => {}
        }
    }
}

async fn listen_once(pg: &Config, channel: &str, wake: &Notify) -> std::result::Result<(), String> {
    let (client, mut connection) = pg.connect(NoTls).await.map_err(|e| e.to_string())?;
    let (tx, mut messages) = futures::channel::mpsc::unbounded();
    let driver = futures::stream::poll_fn(move |cx| connection.poll_message(cx))
        .map(Ok)
        .forward(tx);
    let driver = tokio::spawn(driver);
    let result = async {
        client
            .batch_execute(&format!("LISTEN \"{channel}\""))
            .await
            .map_err(|e| e.to_string())?;
        // Jobs may have been enqueued before we listened.
        wake.notify_waiters();
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(_)) => wake.notify_waiters(),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Err("listener connection closed".to_owned())
    }
    .await;
    driver.abort();
    drop(client);
    result
}
