//! The one error type of Herald's ports (the event store and the job queue). A variant means the same thing on
//! every backend, so callers can branch on it without knowing which backend they talk to, and an error that
//! crosses ports (a version conflict in an append that enqueues jobs) keeps its kind.

use uuid::Uuid;

use crate::version::{ExpectedVersion, display_version};

/// Result alias for store operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Any error, boxed: what user code (event handlers, command handlers, listeners) returns and what a backend
/// wraps a driver error in. One alias for the whole workspace, so a handler written for one crate's port
/// compiles against another's; anything convertible into it works with `?` or `.into()`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What went wrong in a store operation. Nothing is written when an operation returns an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The stream was not at the version the caller expected. Reload the stream and decide again, or give up.
    #[error(
        "wrong expected version for stream `{stream}`: expected {expected}, actual {}",
        display_version(*actual)
    )]
    WrongExpectedVersion {
        /// The stream whose version did not match.
        stream: String,
        /// What the caller expected.
        expected: ExpectedVersion,
        /// The stream's version when the check ran (`None`: the stream does not exist).
        actual: Option<u64>,
    },
    /// An event id is already taken (by another append, or twice in this one), or the event is already linked
    /// into the stream. Event ids are unique across the store; retrying with the same ids will not help.
    #[error("duplicate event {id} in stream `{stream}`: {reason}")]
    DuplicateEvent {
        /// The event id that is already used.
        id: Uuid,
        /// The stream the append or link was aimed at.
        stream: String,
        /// Why it counts as a duplicate: one of [`crate::rules::reason`], the same wording on every backend.
        reason: &'static str,
    },
    /// An event id given to link does not exist.
    #[error("event {id} not found")]
    EventNotFound {
        /// The unknown id.
        id: Uuid,
    },
    /// No job (or dead job) with this id. It may have finished, been retried or discarded meanwhile.
    #[error("job {id} not found")]
    JobNotFound {
        /// The unknown job id.
        id: Uuid,
    },
    /// A job's unique key is taken by a pending or running job (moving a dead job back into its queue).
    #[error("duplicate job: {reason}")]
    DuplicateJob {
        /// Which key or job, and why.
        reason: String,
    },
    /// The backend does not offer this operation (e.g. a store without a job queue asked to enqueue jobs in an
    /// append's transaction). Use a backend that does; nothing was written.
    #[error("{operation} is not supported by this {backend}")]
    Unsupported {
        /// The operation asked for.
        operation: &'static str,
        /// The kind of backend that refused it.
        backend: &'static str,
    },
    /// The caller's input breaks a rule (stream name, event type, JSON, size limit, range). Fix the input.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The store was closed or its writer stopped; no further writes are accepted.
    #[error("event store is closed")]
    Closed,
    /// The backend failed (I/O, database error). The operation may be retried; nothing was written.
    #[error("backend error: {source}")]
    Backend {
        /// The driver's error.
        #[source]
        source: BoxError,
    },
}

impl Error {
    /// Builds an [`Error::InvalidInput`] from anything printable.
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::InvalidInput(message.into())
    }

    /// Wraps a backend (driver) error.
    pub fn backend(source: impl Into<BoxError>) -> Self {
        Error::Backend {
            source: source.into(),
        }
    }
}
