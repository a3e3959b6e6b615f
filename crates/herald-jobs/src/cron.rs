//! Periodic jobs from cron expressions with a time zone, enqueued exactly once per tick across processes.
//!
//! Every process may run a [`Scheduler`] with the same schedules. For each tick, the job queue records
//! `(schedule, tick)` and enqueues the job in the same transaction ([`JobQueue::enqueue_cron`]); a second
//! process reaching the same tick finds the tick taken and enqueues nothing. A scheduler starts at "now" (it does
//! not catch up on ticks missed while no scheduler ran) and then covers every tick up to the clock's time.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use herald_core::jobs::{CronTick, JobQueue};
use herald_core::{Error, NewJob, Result};
use tokio_util::sync::CancellationToken;

use crate::store::JobStore;

/// One periodic job.
#[derive(Debug, Clone)]
pub struct Periodic {
    name: String,
    schedule: cron::Schedule,
    tz: Tz,
    job: NewJob,
}

impl Periodic {
    /// A periodic job `name` (unique among schedules: it keys the ticks) enqueuing `job` at every tick of the
    /// cron expression `expr` in time zone `tz` (IANA name, e.g. `Europe/Paris`). `expr` has 5 fields
    /// (`min hour day month weekday`), or 6–7 with seconds first and an optional year last.
    pub fn new(name: impl Into<String>, expr: &str, tz: &str, job: NewJob) -> Result<Self> {
        job.validate()?;
        let fields = expr.split_whitespace().count();
        let full = if fields == 5 {
            format!("0 {expr}")
        } else {
            expr.to_owned()
        };
        let schedule = cron::Schedule::from_str(&full).map_err(|e| {
            Error::invalid(format!("cron expression `{}`: {e}", expr.escape_debug()))
        })?;
        let tz: Tz = tz
            .parse()
            .map_err(|_| Error::invalid(format!("unknown time zone `{}`", tz.escape_debug())))?;
        Ok(Periodic {
            name: name.into(),
            schedule,
            tz,
            job,
        })
    }

    /// The ticks in `(after, until]`, µs since the epoch.
    pub fn ticks(&self, after: i64, until: i64) -> Vec<i64> {
        let Some(start) = DateTime::<Utc>::from_timestamp_micros(after) else {
            return Vec::new();
        };
        self.schedule
            .after(&start.with_timezone(&self.tz))
            .map(|t| t.timestamp_micros())
            .take_while(|t| *t <= until)
            .take(10_000)
            .collect()
    }

    fn next_after(&self, after: i64) -> Option<i64> {
        let start = DateTime::<Utc>::from_timestamp_micros(after)?;
        self.schedule
            .after(&start.with_timezone(&self.tz))
            .next()
            .map(|t| t.timestamp_micros())
    }
}

/// Enqueues periodic jobs. Run one per process (or several: each tick still enqueues once).
#[derive(Debug, Clone)]
pub struct Scheduler {
    jobs: JobStore,
    entries: Arc<Vec<Periodic>>,
}

impl Scheduler {
    /// A scheduler for these periodic jobs.
    pub fn new(jobs: JobStore, entries: Vec<Periodic>) -> Self {
        Scheduler {
            jobs,
            entries: Arc::new(entries),
        }
    }

    /// Enqueues every tick in `(after, until]` (µs since the epoch) that no process enqueued yet, in one
    /// transaction. Returns how many jobs this call enqueued.
    pub async fn enqueue_due(&self, after: i64, until: i64) -> Result<usize> {
        let due: Vec<CronTick> = self
            .entries
            .iter()
            .flat_map(|p| {
                p.ticks(after, until).into_iter().map(|tick| {
                    let meta = serde_json::json!({ "cron": p.name, "tick": tick });
                    let job = p
                        .job
                        .clone()
                        .id(uuid::Uuid::now_v7())
                        .metadata(meta.to_string());
                    CronTick {
                        schedule: p.name.clone(),
                        tick,
                        job,
                    }
                })
            })
            .collect();
        if due.is_empty() {
            return Ok(0);
        }
        let n = self.jobs.queue().enqueue_cron(due, until).await?;
        if n > 0 {
            self.jobs.wake();
        }
        Ok(n)
    }

    /// Runs until `shutdown`: sleeps until the next tick (at most `poll`, so clock changes are noticed), then
    /// enqueues what came due.
    pub fn start(self, poll: Duration, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        // "Now" is when start is called, not when the task first runs.
        let mut last = self.jobs.now_micros();
        tokio::spawn(async move {
            loop {
                let next = self.entries.iter().filter_map(|p| p.next_after(last)).min();
                let wait = next
                    .map(|n| Duration::from_micros((n - self.jobs.now_micros()).max(0) as u64))
                    .unwrap_or(poll)
                    .min(poll);
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = shutdown.cancelled() => break,
                }
                let now = self.jobs.now_micros();
                if now <= last {
                    continue;
                }
                match self.enqueue_due(last, now).await {
                    Ok(_) => last = now,
                    Err(e) => {
                        tracing::warn!(error = %e, "herald-jobs: cron enqueue failed; retrying")
                    }
                }
            }
        })
    }
}
