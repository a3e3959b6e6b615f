//! What a handler gets and returns ([`JobContext`], [`JobResult`]). The retry schedule is herald-core's one
//! [`Backoff`](herald_core::Backoff) ([`Backoff::sidekiq`](herald_core::Backoff::sidekiq) by default). What a job is
//! ([`NewJob`](herald_core::NewJob), [`JobType`](herald_core::jobs::JobType)) is the port's vocabulary, in
//! herald-core.

use std::fmt;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// What a handler gets besides its arguments.
#[derive(Debug, Clone)]
pub struct JobContext {
    /// The job's id: stable across attempts, for idempotency.
    pub id: Uuid,
    /// The job type.
    pub kind: String,
    /// The queue.
    pub queue: String,
    /// This attempt's number, from 1. A job whose worker died mid-run runs again with the next number.
    pub attempt: u32,
    /// Attempts allowed before the dead set.
    pub max_attempts: u32,
    /// Metadata JSON (carries `correlation_id`/`causation_id` of the causing event, for async handlers).
    pub metadata: String,
    /// Cancelled when the pool shuts down: long handlers should stop and return a retry.
    pub shutdown: CancellationToken,
}

impl JobContext {
    /// The `correlation_id` metadata value.
    pub fn correlation_id(&self) -> Option<Uuid> {
        herald_core::event::metadata_uuid(&self.metadata, herald_core::event::CORRELATION_ID)
    }
    /// The `causation_id` metadata value (the causing event's id, for async handlers).
    pub fn causation_id(&self) -> Option<Uuid> {
        herald_core::event::metadata_uuid(&self.metadata, herald_core::event::CAUSATION_ID)
    }
}

/// How a run ended, as the handler says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobResult {
    /// Done: the job is removed.
    Success,
    /// Run again later: after `after`, or after the job type's backoff when `None`. Counts as an attempt;
    /// when attempts are exhausted the job goes to the dead set.
    Retry {
        /// Explicit delay.
        after: Option<Duration>,
        /// Why (kept in the attempt history).
        reason: String,
    },
    /// Give up without error: the job is removed and not retried.
    Discard {
        /// Why.
        reason: String,
    },
    /// Failed: retried with backoff while attempts remain, then moved to the dead set.
    Fail {
        /// The error, kept in the attempt history.
        error: String,
    },
}

impl JobResult {
    /// A failure with this error.
    pub fn fail(error: impl fmt::Display) -> Self {
        JobResult::Fail {
            error: error.to_string(),
        }
    }
    /// A retry after the backoff.
    pub fn retry(reason: impl fmt::Display) -> Self {
        JobResult::Retry {
            after: None,
            reason: reason.to_string(),
        }
    }
    /// A retry after `delay`.
    pub fn retry_after(delay: Duration, reason: impl fmt::Display) -> Self {
        JobResult::Retry {
            after: Some(delay),
            reason: reason.to_string(),
        }
    }
    /// A discard.
    pub fn discard(reason: impl fmt::Display) -> Self {
        JobResult::Discard {
            reason: reason.to_string(),
        }
    }
    pub(crate) fn label(&self) -> &'static str {
        match self {
            JobResult::Success => "success",
            JobResult::Retry { .. } => "retry",
            JobResult::Discard { .. } => "discard",
            JobResult::Fail { .. } => "failure",
        }
    }
}

impl<E: fmt::Display> From<std::result::Result<(), E>> for JobResult {
    fn from(r: std::result::Result<(), E>) -> Self {
        match r {
            Ok(()) => JobResult::Success,
            Err(e) => JobResult::fail(e),
        }
    }
}
