//! The [`JobQueue`] port on PostgreSQL: enqueue, completion, lease renewal and release, the views (counts,
//! live jobs, the dead set) and the dead-set and cron operations, each one statement or a few pipelined on a
//! pooled connection. Claims are in `claim`; the statements in `sql`.

use async_trait::async_trait;
use herald_core::clock::micros;
use herald_core::jobs::{
    ClaimRequest, Claimed, Completion, CronTick, DeadJob, Finish, JobInfo, JobQueue, JobState,
    JobsConfig, ListFilter, NewJob, QueueStats, Start, Stats,
};
use herald_core::{Error, Result};
use tokio::sync::Notify;
use tokio_postgres::error::SqlState;
use uuid::Uuid;

use super::sql::{InsertArrays, insert_jobs};
use super::{AVAILABLE, PostgresJobQueue, RUNNING, SCHEDULED};
use crate::schema::backend;
use std::sync::Arc;

/// Live jobs listed when the filter sets no limit.
const DEFAULT_LIST_LIMIT: usize = 100;

#[async_trait]
impl JobQueue for PostgresJobQueue {
    async fn enqueue(&self, jobs: Vec<NewJob>) -> Result<Vec<Uuid>> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let now = self.config.clock.now_micros();
        let client = self.client().await?;
        let arrays = InsertArrays::new(&jobs, now);
        let statement = client
            .prepare_cached(&self.sql.insert)
            .await
            .map_err(backend)?;
        let rows = client
            .query(&statement, &arrays.params())
            .await
            .map_err(backend)?;
        // Other processes hear of ready jobs from the notifier, after this commit (see the module docs);
        // this process's workers at once.
        if rows.iter().any(|r| r.get::<_, i16>(1) == AVAILABLE) {
            self.ready.notify_one();
        }
        self.wake.notify_waiters();
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn claim(&self, request: ClaimRequest) -> Result<Vec<Claimed>> {
        self.lease_jobs(
            &request.queue,
            request.owner,
            request.limit,
            &request.limits,
        )
        .await
    }

    /// One statement for the starts and one per kind of outcome present (usually just the delete),
    /// pipelined. When one of them may unblock another job (it held an ordering key or a slot of a limited
    /// type), asks the notifier to wake every process's workers once the statements have committed. (The
    /// statements touch one job each at most once in a way that matters: a start after its own completion
    /// finds the lease gone and changes nothing, so their order does not.)
    async fn record(&self, owner: Uuid, started: Vec<Start>, done: Vec<Completion>) -> Result<()> {
        let now = self.config.clock.now_micros();
        let start: (Vec<i64>, Vec<i32>) = started.iter().map(|s| (s.row, s.attempt as i32)).unzip();
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
        let starting = async {
            if start.0.is_empty() {
                return Ok(0);
            }
            let st = client.prepare_cached(&s.start).await?;
            client.execute(&st, &[&start.0, &start.1, &owner]).await
        };
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
        let (_, _, _, _, died) =
            futures::try_join!(starting, deleting, releasing, rescheduling, dying)
                .map_err(backend)?;
        // Each statement committed on its own (no transaction): the waiting jobs are runnable now. Plain
        // jobs wake nobody (at high throughput that would wake every fetcher of every process for nothing).
        if unblocks {
            self.ready.notify_one();
        }
        if died > 0 {
            self.trim_dead(&client, &self.config, now).await?;
        }
        Ok(())
    }

    async fn renew(&self, owner: Uuid) -> Result<usize> {
        let until = self.config.clock.now_micros() + micros(self.config.lease);
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

    async fn release_all(&self, owner: Uuid) -> Result<usize> {
        let now = self.config.clock.now_micros();
        let client = self.progress_client().await?;
        let n = client
            .execute(self.sql.release_all.as_str(), &[&now, &owner])
            .await
            .map_err(backend)?;
        // Inline rather than through the notifier: the queue may be dropped right after a shutdown.
        if n > 0 {
            self.notify(&client).await?;
        }
        self.wake.notify_waiters();
        Ok(n as usize)
    }

    async fn stats(&self) -> Result<Stats> {
        let now = self.config.clock.now_micros();
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
            let n = n as u64;
            match state {
                AVAILABLE => q.available += n,
                // A scheduled job whose time has come is available (made so by the next claim).
                SCHEDULED if due => q.available += n,
                SCHEDULED => q.scheduled += n,
                _ => q.running += n,
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

    async fn list(&self, filter: ListFilter) -> Result<Vec<JobInfo>> {
        let limit = i64::try_from(filter.limit.unwrap_or(DEFAULT_LIST_LIMIT)).unwrap_or(i64::MAX);
        let state = filter.state.map(stored_state);
        self.live_jobs(filter.queue, state, limit, None).await
    }

    async fn job(&self, id: Uuid) -> Result<Option<JobInfo>> {
        Ok(self.live_jobs(None, None, 1, Some(id)).await?.pop())
    }

    async fn dead(&self, limit: usize) -> Result<Vec<DeadJob>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
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

    /// One statement (all or nothing): the dead rows deleted and inserted back into the queue.
    async fn retry_dead(&self, id: Option<Uuid>) -> Result<usize> {
        let now = self.config.clock.now_micros();
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
                return Err(duplicate_job(&e));
            }
            Err(e) => return Err(backend(e)),
        };
        if n > 0 {
            self.notify(&client).await?;
            self.wake.notify_waiters();
        }
        Ok(n as usize)
    }

    async fn discard_dead(&self, id: Uuid) -> Result<bool> {
        let s = &self.schema;
        let client = self.client().await?;
        let n = client
            .execute(
                &format!("DELETE FROM {s}.herald_jobs_dead WHERE job_id = $1"),
                &[&id],
            )
            .await
            .map_err(backend)?;
        Ok(n > 0)
    }

    async fn cancel(&self, id: Uuid) -> Result<bool> {
        let s = &self.schema;
        let client = self.client().await?;
        let n = client
            .execute(
                &format!("DELETE FROM {s}.herald_jobs WHERE job_id = $1 AND state <> {RUNNING}"),
                &[&id],
            )
            .await
            .map_err(backend)?;
        Ok(n == 1)
    }

    /// One transaction. The ticks are sorted by (schedule, tick), so concurrent schedulers take the tick rows'
    /// locks in the same order (no deadlock).
    async fn enqueue_cron(&self, ticks: Vec<CronTick>, until: i64) -> Result<usize> {
        let mut due = ticks;
        due.sort_by(|a, b| (&a.schedule, a.tick).cmp(&(&b.schedule, b.tick)));
        let now = self.config.clock.now_micros();
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
        for CronTick {
            schedule,
            tick,
            job,
        } in due
        {
            if tx
                .execute(&mark, &[&schedule, &tick])
                .await
                .map_err(backend)?
                == 1
            {
                fresh.push(job);
            }
        }
        // The insert notifies inside the transaction: delivered at commit.
        let inserted = insert_jobs(&*tx, s, &fresh, now).await?;
        // Ticks a week before this window are never reached again.
        tx.execute(
            &format!("DELETE FROM {s}.herald_jobs_cron WHERE tick < $1"),
            &[&(now.min(until) - 7 * 24 * 3600 * 1_000_000)],
        )
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        if !inserted.is_empty() {
            self.wake.notify_waiters();
        }
        Ok(inserted.len())
    }

    fn config(&self) -> &JobsConfig {
        &self.config
    }

    fn wakeups(&self) -> Arc<Notify> {
        Arc::clone(&self.wake)
    }

    fn describe(&self) -> String {
        self.described().to_owned()
    }
}

impl PostgresJobQueue {
    /// Live jobs of `queue` in `state` (each when given), or the one with `id`, in queue then enqueue order.
    async fn live_jobs(
        &self,
        queue: Option<String>,
        state: Option<i16>,
        limit: i64,
        id: Option<Uuid>,
    ) -> Result<Vec<JobInfo>> {
        let s = &self.schema;
        let client = self.client().await?;
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
                state: job_state(r.get(3)),
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
}

/// A live job's state as stored.
fn stored_state(state: JobState) -> i16 {
    match state {
        JobState::Available => AVAILABLE,
        JobState::Scheduled => SCHEDULED,
        JobState::Running => RUNNING,
    }
}

/// A stored state as a live job's state (the column only ever holds the three).
fn job_state(stored: i16) -> JobState {
    match stored {
        AVAILABLE => JobState::Available,
        SCHEDULED => JobState::Scheduled,
        _ => JobState::Running,
    }
}

/// A unique violation while moving dead jobs back: which of the moved jobs' keys is taken, read from the
/// constraint the server names.
fn duplicate_job(e: &tokio_postgres::Error) -> Error {
    let constraint = e.as_db_error().and_then(|db| db.constraint());
    let reason = if constraint == Some("herald_jobs_unique") {
        "a dead job's unique key is taken by a pending or running job"
    } else {
        "a dead job's id is taken by a pending or running job"
    };
    Error::DuplicateJob {
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_through_their_stored_form() {
        for state in [JobState::Available, JobState::Scheduled, JobState::Running] {
            assert_eq!(job_state(stored_state(state)), state);
        }
    }
}
