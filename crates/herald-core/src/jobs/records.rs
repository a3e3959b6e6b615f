//! What the job queue port hands back and forth: claimed jobs and their completions, and the views of the
//! queue (live jobs, the dead set, counts).

use std::fmt;
use std::str::FromStr;

use serde::Serialize;
use uuid::Uuid;

use crate::error::Error;

/// Where a live job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Ready to run.
    Available,
    /// Waiting for its time (delayed, or retrying after a backoff).
    Scheduled,
    /// Leased by a worker.
    Running,
}

impl JobState {
    /// `available`, `scheduled` or `running`.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Available => "available",
            JobState::Scheduled => "scheduled",
            JobState::Running => "running",
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobState {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "available" => Ok(JobState::Available),
            "scheduled" => Ok(JobState::Scheduled),
            "running" => Ok(JobState::Running),
            other => Err(Error::invalid(format!(
                "job state `{}` is not available, scheduled or running (dead jobs: see the dead set)",
                other.escape_debug()
            ))),
        }
    }
}

/// A job leased to a worker.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// The backend's row handle, given back in the job's [`Completion`].
    pub row: i64,
    /// The job id.
    pub id: Uuid,
    /// Its queue.
    pub queue: String,
    /// Its type.
    pub kind: String,
    /// Arguments, JSON text.
    pub args: String,
    /// Metadata, JSON object text.
    pub metadata: String,
    /// The number this run's attempt gets when it starts, from 1 (the claim itself counts nothing: see
    /// [`JobQueue`](super::JobQueue)'s "Attempts").
    pub attempt: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// It has an ordering key: later jobs of that key wait for it.
    pub ordered: bool,
    /// An earlier lease of this job expired before any start of it was recorded, so a worker may have died
    /// running it before it could say so: record this run's [`Start`] and wait for it to commit before
    /// running the job, so that a job that kills its worker every time still uses up its attempts.
    pub record_start_first: bool,
}

/// A claimed job's run has begun: from now on its attempt counts (see [`JobQueue`](super::JobQueue)'s
/// "Attempts").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Start {
    /// [`Claimed::row`].
    pub row: i64,
    /// [`Claimed::attempt`].
    pub attempt: u32,
}

impl Start {
    /// The start of `claimed`'s run.
    pub fn of(claimed: &Claimed) -> Self {
        Start {
            row: claimed.row,
            attempt: claimed.attempt,
        }
    }
}

/// What a worker decided for a claimed job.
#[derive(Debug, Clone)]
pub enum Finish {
    /// Done (success or discard): the job is removed.
    Delete,
    /// Failed with attempts left: pending again at `at` (µs), the error kept in its history, the attempt
    /// counted.
    Reschedule {
        /// When it may run again.
        at: i64,
        /// Why this attempt failed.
        error: String,
    },
    /// Out of attempts (or arguments that cannot be read): moved to the dead set, the attempt counted.
    Dead {
        /// The last error.
        error: String,
    },
    /// Not run (shutdown before start): back to available, the attempt not counted (given back if its start
    /// was recorded).
    Release,
}

/// A finished (or released) run of a claimed job, as the worker pool decided it. A run that finished
/// started: a completion whose [`Start`] was not recorded yet records it too (but a `Release`).
#[derive(Debug, Clone)]
pub struct Completion {
    /// [`Claimed::row`].
    pub row: i64,
    /// [`Claimed::attempt`]: a completion for a lease the owner no longer holds at this attempt changes
    /// nothing.
    pub attempt: u32,
    /// What happens to the job.
    pub finish: Finish,
    /// The job has an ordering key ([`Claimed::ordered`]).
    pub ordered: bool,
    /// The job's type has a concurrency limit in the pool that ran it.
    pub limited: bool,
}

impl Completion {
    /// Whether committing this completion may make a job runnable that waited for this one: the next job of
    /// its ordering key (once it is deleted or dead: a retrying job keeps its key), or another job of its
    /// limited type (the slot is free whatever the outcome). Not a release: the released job is available
    /// again itself, which the release announces like an enqueue (on PostgreSQL with its own `NOTIFY`).
    pub fn unblocks_others(&self) -> bool {
        match self.finish {
            Finish::Delete | Finish::Dead { .. } => self.ordered || self.limited,
            Finish::Reschedule { .. } => self.limited,
            Finish::Release => false,
        }
    }
}

/// A live job (pending or running), as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobInfo {
    /// Job id.
    pub id: Uuid,
    /// Queue.
    pub queue: String,
    /// Job type.
    pub kind: String,
    /// Where it is.
    pub state: JobState,
    /// Arguments JSON text.
    pub args: String,
    /// Metadata JSON text.
    pub metadata: String,
    /// Priority.
    pub priority: i32,
    /// Attempts started so far.
    pub attempt: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// For pending jobs when it may run; for running jobs when the lease ends (µs since epoch).
    pub run_at: i64,
    /// Unique key.
    pub unique_key: Option<String>,
    /// Ordering key.
    pub order_key: Option<String>,
    /// Last error.
    pub last_error: Option<String>,
    /// Enqueue time (µs since epoch).
    pub enqueued_at: i64,
}

/// A job in the dead set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadJob {
    /// Job id.
    pub id: Uuid,
    /// Queue.
    pub queue: String,
    /// Job type.
    pub kind: String,
    /// Arguments JSON text.
    pub args: String,
    /// Metadata JSON text.
    pub metadata: String,
    /// Attempts made.
    pub attempt: u32,
    /// The last error.
    pub last_error: Option<String>,
    /// Attempt history: a JSON array of `{"attempt","at","error"}`.
    pub errors: String,
    /// Enqueue time (µs since epoch).
    pub enqueued_at: i64,
    /// When it died (µs since epoch).
    pub died_at: i64,
}

/// Counts per queue.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct QueueStats {
    /// The queue.
    pub queue: String,
    /// Ready to run now.
    pub available: u64,
    /// Waiting for their time (delayed or retrying).
    pub scheduled: u64,
    /// Leased by a worker.
    pub running: u64,
}

/// What the store holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Per queue, by name.
    pub queues: Vec<QueueStats>,
    /// Jobs in the dead set.
    pub dead: u64,
}

/// Filter for [`JobQueue::list`](super::JobQueue::list).
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only this queue.
    pub queue: Option<String>,
    /// Only this state.
    pub state: Option<JobState>,
    /// At most this many (default 100).
    pub limit: Option<usize>,
}
