//! The job queue's SQL: every statement of one schema, built once per queue with qualified table names (so
//! the insert also runs on the event store's writer connection and on a caller's own client), and the one
//! insert that every way of enqueueing shares: the queue's enqueues and cron, an append's jobs (given to
//! `append_with_jobs` or computed by a job router) and [`insert_jobs`] in a caller's transaction. Jobs go in
//! as column arrays through `unnest`, one statement for any number of jobs.

use tokio_postgres::GenericClient;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use herald_core::Result;
use herald_core::jobs::NewJob;

use super::{AVAILABLE, SCHEDULED};
use crate::hook::{HookParam, HookWrites};
use crate::schema::backend;

/// The error a job lease lost to expiry records.
pub(super) const LEASE_EXPIRED: &str = "lease expired (worker died?)";

/// The statements of one schema (table names qualified, so they also run on the event store's connection).
pub(super) struct Sql {
    pub(super) insert: String,
    pub(super) expire_dead: String,
    pub(super) expire: String,
    pub(super) promote: String,
    pub(super) claim: String,
    pub(super) start: String,
    pub(super) candidates: String,
    pub(super) take: String,
    pub(super) count_running: String,
    pub(super) delete: String,
    pub(super) release: String,
    pub(super) reschedule: String,
    pub(super) die: String,
    pub(super) trim_age: String,
    pub(super) trim_count: String,
    pub(super) renew: String,
    pub(super) release_all: String,
    pub(super) notify: String,
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

/// [`insert_sql`] without the `NOTIFY`, for the queue's own enqueues: PostgreSQL serialises the commits of
/// transactions that notify (a lock held through the commit's WAL flush), which would undo group commit for
/// concurrent enqueuers. Their wake-up goes out right after the commit instead (`wake::notifier`).
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
    pub(super) fn new(s: &str) -> Self {
        // A lease's attempt is the counted attempts plus this run when its start is not recorded yet.
        let own = "j.id = d.id AND j.lease_owner = $3 AND j.state = 2 \
                   AND j.attempt + 1 - j.started::int = d.attempt";
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
                        WHERE state = 2 AND run_at < $1 AND started AND attempt >= max_attempts
                        FOR UPDATE SKIP LOCKED)
                    RETURNING *
                 )
                 INSERT INTO {s}.herald_jobs_dead ({dead_columns})
                 SELECT job_id, queue, kind, args, metadata, priority, attempt, max_attempts, unique_key, order_key,
                     '{LEASE_EXPIRED}', {}, enqueued_at, $1
                 FROM gone ORDER BY id",
                history("attempt", "$1", &format!("'{LEASE_EXPIRED}'"))
            ),
            // A started lease keeps its attempt counted and records the loss; an unstarted one goes back
            // untouched but marked (herald-core's `JobQueue`, "Attempts").
            expire: format!(
                "UPDATE {s}.herald_jobs SET state = 0, lease_owner = NULL, started = false,
                     lost_unstarted = lost_unstarted + CASE WHEN started THEN 0 ELSE 1 END,
                     last_error = CASE WHEN started THEN '{LEASE_EXPIRED}' ELSE last_error END,
                     errors = CASE WHEN started THEN {} ELSE errors END
                 WHERE id IN (SELECT id FROM {s}.herald_jobs WHERE state = 2 AND run_at < $1
                                  AND (NOT started OR attempt < max_attempts)
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
                 UPDATE {s}.herald_jobs j SET state = 2, started = false, run_at = $3, lease_owner = $4
                 FROM picked WHERE j.id = picked.id
                 RETURNING j.id, j.job_id, j.queue, j.kind, j.args, j.metadata, j.attempt + 1, j.max_attempts,
                     j.priority, j.order_key IS NOT NULL, j.lost_unstarted > 0"
            ),
            start: format!(
                "UPDATE {s}.herald_jobs j SET attempt = d.attempt, started = true
                 FROM unnest($1::int8[], $2::int4[]) AS d(id, attempt) WHERE {own} AND NOT j.started"
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
                "UPDATE {s}.herald_jobs SET state = 2, started = false, run_at = $2, lease_owner = $3
                 WHERE id = ANY($1::int8[])
                 RETURNING id, job_id, queue, kind, args, metadata, attempt + 1, max_attempts, priority,
                     order_key IS NOT NULL, lost_unstarted > 0"
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
                "UPDATE {s}.herald_jobs j SET state = 0, attempt = d.attempt - 1, started = false,
                     lease_owner = NULL, run_at = $4
                 FROM unnest($1::int8[], $2::int4[]) AS d(id, attempt) WHERE {own}"
            ),
            reschedule: format!(
                "UPDATE {s}.herald_jobs j SET state = 1, attempt = d.attempt, started = false, run_at = d.at,
                     lease_owner = NULL, last_error = d.error, errors = j.{}
                 FROM unnest($1::int8[], $2::int4[], $5::int8[], $6::text[]) AS d(id, attempt, at, error)
                 WHERE {own}",
                history("d.attempt", "$4::bigint", "d.error")
            ),
            die: format!(
                "WITH gone AS (
                    DELETE FROM {s}.herald_jobs j USING unnest($1::int8[], $2::int4[], $5::text[])
                        AS d(id, attempt, error)
                    WHERE {own}
                    RETURNING j.*, d.error AS final_error, d.attempt AS final_attempt
                 )
                 INSERT INTO {s}.herald_jobs_dead ({dead_columns})
                 SELECT job_id, queue, kind, args, metadata, priority, final_attempt, max_attempts, unique_key,
                     order_key, final_error, {}, enqueued_at, $4::bigint
                 FROM gone ORDER BY id",
                history("final_attempt", "$4::bigint", "final_error")
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
                "UPDATE {s}.herald_jobs SET state = 0, run_at = $1, lease_owner = NULL, started = false
                 WHERE state = 2 AND lease_owner = $2"
            ),
            notify: format!("SELECT pg_notify('herald_jobs_{s}', '')"),
        }
    }
}

/// The column arrays of [`insert_sql`] for `jobs` at `now`.
pub(super) struct InsertArrays {
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
    pub(super) fn new<'a>(jobs: impl IntoIterator<Item = &'a NewJob>, now: i64) -> Self {
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
                .push(if run_at <= now { AVAILABLE } else { SCHEDULED });
            a.run_at.push(run_at);
            a.max_attempts
                .push(i32::try_from(job.max_attempts).unwrap_or(i32::MAX));
            a.unique_keys.push(job.unique_key.clone());
            a.order_keys.push(job.order_key.clone());
        }
        a
    }

    pub(super) fn params(&self) -> [&(dyn ToSql + Sync); 12] {
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

/// Adds the insert of `jobs` (at `now`) to an append's hook statements: the statement [`insert_jobs`] runs,
/// with its `NOTIFY` (delivered when the append commits, so workers in every process wake then). The event
/// store's `append_with_jobs` and its job routers use it.
pub(crate) fn push_inserts(
    writes: &mut HookWrites,
    schema: &str,
    jobs: &[NewJob],
    now: i64,
) -> Result<()> {
    if jobs.is_empty() {
        return Ok(());
    }
    let a = InsertArrays::new(jobs, now);
    let params: Vec<HookParam> = vec![
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

/// Inserts `jobs` on `client` — inside the caller's transaction when it is one — into the job tables of
/// `schema`, at time `now` (µs since the epoch, the job clock's reading). Returns the ids inserted: a job
/// whose unique key is held by a pending or running job is skipped. Ready jobs `NOTIFY` the workers of every
/// process when the transaction commits. The building block of transactional enqueue in a transaction of
/// the application's own; the tables must exist (opening a [`crate::PostgresStore`] or a
/// [`crate::PostgresJobQueue`] on the schema creates them). Callers validate the jobs
/// ([`NewJob::validate`]).
///
/// Errors: [`herald_core::Error::InvalidInput`] for a schema name that is not valid (nothing sent),
/// [`herald_core::Error::Backend`] when the statement fails (the driver's error in its source chain).
pub async fn insert_jobs<C: GenericClient>(
    client: &C,
    schema: &str,
    jobs: &[NewJob],
    now: i64,
) -> Result<Vec<Uuid>> {
    // The name is spliced into the statement.
    crate::validate_schema_name(schema)?;
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let arrays = InsertArrays::new(jobs, now);
    let statement = client
        .prepare_typed(&insert_sql(schema), &[])
        .await
        .map_err(backend)?;
    let rows = client
        .query(&statement, &arrays.params())
        .await
        .map_err(backend)?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
