//! The job queue's errors.

use std::sync::Arc;

/// What went wrong in a job-queue operation.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    /// Bad input (empty job type, arguments that do not serialize, a bad cron expression, an unknown time
    /// zone). Nothing was written; fix the input.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// No job (or dead job) with this id. It may have finished, been retried or discarded meanwhile.
    #[error("job {0} not found")]
    NotFound(uuid::Uuid),
    /// A unique job with this key is already pending or running (retrying a dead job into its place).
    #[error("a job with unique key `{0}` is already pending or running")]
    Duplicate(String),
    /// The job store was closed (its writer stopped).
    #[error("the job store is closed")]
    Closed,
    /// The database failed; the operation wrote nothing. Often transient (a lock held too long): retry.
    #[error("job store backend error: {0}")]
    Backend(Arc<dyn std::error::Error + Send + Sync>),
}

impl JobError {
    pub(crate) fn backend(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        JobError::Backend(Arc::from(e.into()))
    }
    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        JobError::InvalidInput(msg.into())
    }
}

impl From<rusqlite::Error> for JobError {
    fn from(e: rusqlite::Error) -> Self {
        JobError::backend(e)
    }
}

impl From<herald_core::Error> for JobError {
    fn from(e: herald_core::Error) -> Self {
        match e {
            herald_core::Error::InvalidInput(m) => JobError::InvalidInput(m),
            herald_core::Error::Closed => JobError::Closed,
            other => JobError::backend(other.to_string()),
        }
    }
}

/// The result type of this crate.
pub type Result<T, E = JobError> = std::result::Result<T, E>;

pub(crate) use herald_sqlite::rusqlite;
