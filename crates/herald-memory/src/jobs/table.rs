//! The jobs of one in-memory "database" and the indexes every operation needs (enqueue order, unique and
//! ordering keys, pending jobs per queue in claim order, the dead set, cron ticks), with the changes that
//! keep them consistent: a job is added, moved and removed only through these methods.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use herald_core::clock::micros;
use herald_core::jobs::{JobInfo, JobState, JobsConfig, NewJob};
use herald_core::uuid::Uuid;
use herald_core::{Error, Result};

/// What a lost lease records as the attempt's error.
const LEASE_EXPIRED: &str = "lease expired (worker died?)";

/// A live job. Its row (the key in [`Jobs::live`]) is its place in enqueue order.
#[derive(Debug, Clone)]
pub(super) struct Job {
    pub(super) id: Uuid,
    pub(super) queue: String,
    pub(super) kind: String,
    pub(super) args: String,
    pub(super) metadata: String,
    pub(super) priority: i32,
    /// Pending: when it may run. Running: when the lease ends.
    pub(super) run_at: i64,
    pub(super) attempt: u32,
    pub(super) max_attempts: u32,
    pub(super) unique_key: Option<String>,
    pub(super) order_key: Option<String>,
    pub(super) last_error: Option<String>,
    pub(super) errors: Vec<Failure>,
    pub(super) enqueued_at: i64,
    /// The owner of its lease while running.
    pub(super) owner: Option<Uuid>,
    /// While running: the lease's start was recorded (its attempt is counted in `attempt`).
    pub(super) started: bool,
    /// Leases that expired before a start was recorded: from the first, every start is recorded first.
    pub(super) lost_unstarted: u32,
}

/// One failed attempt, in a job's history.
#[derive(Debug, Clone)]
pub(super) struct Failure {
    pub(super) attempt: u32,
    pub(super) at: i64,
    pub(super) error: String,
}

/// A job in the dead set.
#[derive(Debug, Clone)]
pub(super) struct Dead {
    pub(super) job: Job,
    pub(super) died_at: i64,
}

/// Everything the queue holds, with the indexes its operations need.
#[derive(Default)]
pub(super) struct Jobs {
    pub(super) next_row: i64,
    pub(super) live: BTreeMap<i64, Job>,
    pub(super) by_id: HashMap<Uuid, i64>,
    /// Unique key → the live job holding it.
    pub(super) unique: HashMap<String, i64>,
    /// Ordering key → its live jobs; only the first may be claimed.
    pub(super) ordered: HashMap<String, BTreeSet<i64>>,
    /// Queue → its pending jobs, in claim order (priority, then enqueue order).
    pub(super) pending: HashMap<String, BTreeSet<(Reverse<i32>, i64)>>,
    pub(super) next_dead: u64,
    /// In order of death.
    pub(super) dead: BTreeMap<u64, Dead>,
    pub(super) dead_by_id: HashMap<Uuid, u64>,
    /// Cron ticks enqueued: tick → schedules.
    pub(super) ticks: BTreeMap<i64, HashSet<String>>,
}

impl Jobs {
    /// Refuses a batch whose ids are already live or repeated, before anything is written, so that an
    /// enqueue stays all or nothing. (Callers give fresh UUIDv7s; the port leaves reuse unspecified.)
    pub(super) fn check_ids<'a>(&self, jobs: impl IntoIterator<Item = &'a NewJob>) -> Result<()> {
        let mut batch = HashSet::new();
        for job in jobs {
            if self.by_id.contains_key(&job.id) || !batch.insert(job.id) {
                return Err(Error::invalid(format!(
                    "job id {} of job `{}` is already used by a live job",
                    job.id, job.kind
                )));
            }
        }
        Ok(())
    }

    /// Inserts `job` enqueued at `now`, unless its unique key is held. Ids were checked.
    pub(super) fn insert(&mut self, job: NewJob, now: i64) -> bool {
        if job
            .unique_key
            .as_ref()
            .is_some_and(|k| self.unique.contains_key(k))
        {
            return false;
        }
        let run_at = job.run_at(now);
        self.add(Job {
            id: job.id,
            queue: job.queue,
            kind: job.kind,
            args: job.args,
            metadata: job.metadata,
            priority: job.priority,
            run_at,
            attempt: 0,
            max_attempts: job.max_attempts,
            unique_key: job.unique_key,
            order_key: job.order_key,
            last_error: None,
            errors: Vec::new(),
            enqueued_at: now,
            owner: None,
            started: false,
            lost_unstarted: 0,
        });
        true
    }

    /// Adds a pending job at the end of the enqueue order.
    pub(super) fn add(&mut self, job: Job) {
        self.next_row += 1;
        let row = self.next_row;
        self.by_id.insert(job.id, row);
        if let Some(key) = &job.unique_key {
            self.unique.insert(key.clone(), row);
        }
        if let Some(key) = &job.order_key {
            self.ordered.entry(key.clone()).or_default().insert(row);
        }
        self.live.insert(row, job);
        self.pend(row);
    }

    /// Makes the job at `row` claimable again (when due), keeping its place.
    pub(super) fn pend(&mut self, row: i64) {
        let job = &self.live[&row];
        self.pending
            .entry(job.queue.clone())
            .or_default()
            .insert((Reverse(job.priority), row));
    }

    pub(super) fn unpend(&mut self, row: i64) {
        let job = &self.live[&row];
        if let Some(set) = self.pending.get_mut(&job.queue) {
            set.remove(&(Reverse(job.priority), row));
            if set.is_empty() {
                self.pending.remove(&job.queue);
            }
        }
    }

    /// Removes the live job at `row` and every index entry of it.
    pub(super) fn remove(&mut self, row: i64) -> Job {
        if self.live[&row].owner.is_none() {
            self.unpend(row);
        }
        let job = self.live.remove(&row).expect("a live row");
        self.by_id.remove(&job.id);
        if let Some(key) = &job.unique_key {
            self.unique.remove(key);
        }
        if let Some(key) = &job.order_key
            && let Some(rows) = self.ordered.get_mut(key)
        {
            rows.remove(&row);
            if rows.is_empty() {
                self.ordered.remove(key);
            }
        }
        job
    }

    /// Moves the live job at `row` to the dead set, its last attempt failed with `error`.
    pub(super) fn kill(&mut self, row: i64, error: &str, now: i64) {
        let mut job = self.remove(row);
        job.errors.push(Failure {
            attempt: job.attempt,
            at: now,
            error: error.to_owned(),
        });
        job.last_error = Some(error.to_owned());
        job.owner = None;
        job.started = false;
        self.next_dead += 1;
        self.dead_by_id.insert(job.id, self.next_dead);
        self.dead.insert(self.next_dead, Dead { job, died_at: now });
    }

    /// Drops dead jobs beyond the configured age and count, oldest first.
    pub(super) fn trim_dead(&mut self, config: &JobsConfig, now: i64) {
        let oldest = now.saturating_sub(micros(config.dead_max_age));
        let too_old: Vec<u64> = self
            .dead
            .iter()
            .filter(|(_, d)| d.died_at < oldest)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in too_old {
            self.drop_dead(seq);
        }
        while self.dead.len() as u64 > config.dead_max_jobs {
            let Some((&seq, _)) = self.dead.first_key_value() else {
                break;
            };
            self.drop_dead(seq);
        }
    }

    pub(super) fn drop_dead(&mut self, seq: u64) -> Option<Dead> {
        let dead = self.dead.remove(&seq)?;
        self.dead_by_id.remove(&dead.job.id);
        Some(dead)
    }

    /// Returns expired leases to their queue: untouched (but marked) when no start was recorded, else with
    /// the lost attempt in the history, or to the dead set when no attempt is left. Returns whether a job
    /// died.
    pub(super) fn expire_leases(&mut self, now: i64) -> bool {
        let expired: Vec<i64> = self
            .live
            .iter()
            .filter(|(_, j)| j.owner.is_some() && j.run_at < now)
            .map(|(row, _)| *row)
            .collect();
        let mut died = false;
        for row in expired {
            let job = self.live.get_mut(&row).expect("a live row");
            if !job.started {
                // Never started as far as anyone knows: no attempt was made (or one that is not counted,
                // which the mark makes the only one; see the port's "Attempts").
                job.owner = None;
                job.lost_unstarted += 1;
                self.pend(row);
            } else if job.attempt >= job.max_attempts {
                self.kill(row, LEASE_EXPIRED, now);
                died = true;
            } else {
                // Runnable again at once: its run time (the lease end) is already past.
                job.owner = None;
                job.started = false;
                job.errors.push(Failure {
                    attempt: job.attempt,
                    at: now,
                    error: LEASE_EXPIRED.to_owned(),
                });
                job.last_error = Some(LEASE_EXPIRED.to_owned());
                self.pend(row);
            }
        }
        died
    }

    /// Whether the job at `row` is the first live job of its ordering key (or has none).
    pub(super) fn first_of_its_key(&self, row: i64, job: &Job) -> bool {
        job.order_key.as_ref().is_none_or(|key| {
            self.ordered
                .get(key)
                .and_then(|rows| rows.first())
                .is_none_or(|first| *first == row)
        })
    }

    /// The running job at `row` if `owner` holds it at `attempt` (the lease's attempt, whether its start is
    /// recorded or not): what a start or a completion may change.
    pub(super) fn held(&self, row: i64, owner: Uuid, attempt: u32) -> bool {
        self.live
            .get(&row)
            .is_some_and(|j| j.owner == Some(owner) && j.attempt + u32::from(!j.started) == attempt)
    }

    pub(super) fn info(&self, job: &Job, now: i64) -> JobInfo {
        JobInfo {
            id: job.id,
            queue: job.queue.clone(),
            kind: job.kind.clone(),
            state: state_of(job, now),
            args: job.args.clone(),
            metadata: job.metadata.clone(),
            priority: job.priority,
            attempt: job.attempt,
            max_attempts: job.max_attempts,
            run_at: job.run_at,
            unique_key: job.unique_key.clone(),
            order_key: job.order_key.clone(),
            last_error: job.last_error.clone(),
            enqueued_at: job.enqueued_at,
        }
    }
}

/// Where a live job is: running while leased, else available once its run time has come.
pub(super) fn state_of(job: &Job, now: i64) -> JobState {
    match job.owner {
        Some(_) => JobState::Running,
        None if job.run_at <= now => JobState::Available,
        None => JobState::Scheduled,
    }
}

/// A job's history as the port shows it: a JSON array of `{"attempt","at","error"}`.
pub(super) fn history(errors: &[Failure]) -> String {
    let entries: Vec<serde_json::Value> = errors
        .iter()
        .map(|f| serde_json::json!({ "attempt": f.attempt, "at": f.at, "error": f.error }))
        .collect();
    serde_json::Value::Array(entries).to_string()
}
