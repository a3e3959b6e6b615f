//! The one error type of Herald's ports (the event store and the job queue). A variant means the same thing on
//! every backend, so callers can branch on it without knowing which backend they talk to, and an error that
//! crosses ports (a version conflict in an append that enqueues jobs) keeps its kind.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::Arc;

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
    /// The backend could not be reached or stopped answering: the connection was refused, lost or timed out
    /// (a server restarting, a network fault, a server that accepts connections and never answers). Transient:
    /// the same call may succeed later, which is what [`crate::EventStoreExt::follow`] does, reconnecting with
    /// a backoff. A read or a failed connect wrote nothing; for a write whose connection was lost while it
    /// committed the outcome is unknown, so retry it with the same event ids (an idempotent retry) to find out.
    #[error("{what} is unavailable: {reason}")]
    Unavailable {
        /// What could not be reached, e.g. `PostgreSQL (host 10.0.0.5, port 5432, database app)` (never a password).
        what: String,
        /// Why, e.g. `no answer within 5 s of connecting (connect_timeout)`.
        reason: String,
        /// The driver's error, when there was one.
        #[source]
        source: Option<BoxError>,
    },
    /// The backend failed (I/O, database error). The operation may be retried; nothing was written.
    #[error("backend error: {}", innermost_backend_source(source))]
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

    /// Builds an [`Error::Unavailable`]: `what` could not be reached, because of `reason`.
    pub fn unavailable(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Unavailable {
            what: what.into(),
            reason: reason.into(),
            source: None,
        }
    }

    /// Whether trying again later may succeed without changing anything: the backend was
    /// [unavailable](Error::Unavailable). Followers retry exactly these.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unavailable { .. })
    }

    /// Wraps a backend (driver) error. An [`Error`] passed in is returned as it is, so its kind is kept and
    /// its message is not prefixed twice.
    pub fn backend(source: impl Into<BoxError>) -> Self {
        match source.into().downcast::<Error>() {
            Ok(error) => *error,
            Err(source) => Error::Backend { source },
        }
    }
}

impl Error {
    /// A stored event that cannot be decoded (a damaged or hand-edited row), as an [`Error::Backend`] whose
    /// message names the event by global position and, when those columns are readable, stream and version;
    /// `source` (the driver's or decoder's error) says what is wrong with it.
    pub fn corrupt_event(
        position: u64,
        stream: Option<&str>,
        version: Option<u64>,
        source: impl Into<BoxError>,
    ) -> Self {
        Error::backend(CorruptEvent {
            position,
            stream: stream.map(str::to_owned),
            version,
            source: source.into(),
        })
    }
}

/// Where an unreadable stored event sits, and why it cannot be read (see [`Error::corrupt_event`]).
#[derive(Debug)]
pub struct CorruptEvent {
    /// The event's global position.
    pub position: u64,
    /// The stream it was appended to, when readable.
    pub stream: Option<String>,
    /// Its version in that stream, when readable.
    pub version: Option<u64>,
    /// What is wrong with it.
    pub source: BoxError,
}

impl std::fmt::Display for CorruptEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stored event at position {}", self.position)?;
        match (&self.stream, self.version) {
            (Some(stream), Some(version)) => write!(f, " (stream `{stream}`, version {version})")?,
            (Some(stream), None) => write!(f, " (stream `{stream}`)")?,
            _ => {}
        }
        write!(f, " cannot be read: {}", self.source)
    }
}

impl std::error::Error for CorruptEvent {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// What a backend error shows after its own "backend error: " prefix: the source, or, when the source is
/// itself a backend error (one failure shared by every caller of a batch sits behind an `Arc`), that error's
/// source, so the prefix is printed once.
fn innermost_backend_source(source: &BoxError) -> &(dyn std::error::Error + 'static) {
    let mut current: &(dyn std::error::Error + 'static) = &**source;
    loop {
        let inner: Option<&Error> = current
            .downcast_ref::<Error>()
            .or_else(|| current.downcast_ref::<Arc<Error>>().map(|e| &**e))
            .or_else(|| {
                current
                    .downcast_ref::<Arc<dyn std::error::Error + Send + Sync>>()
                    .and_then(|e| e.downcast_ref::<Error>())
            });
        match inner {
            Some(Error::Backend { source }) => current = &**source,
            _ => return current,
        }
    }
}

/// `text` with every control character shown as a visible escape (`\n`, `\r`, `\t`, `\u{1b}`, …), so a
/// message that echoes outside input (a stream name, an id, a URL) stays one line and cannot drive a terminal.
/// Escaped: the C0 and C1 controls and DEL, the Unicode line and paragraph separators, and the bidirectional
/// formatting characters (which can make a line read differently from its bytes). Everything else, including
/// a backslash, is kept. Every place that prints an error or a log line for people (the CLI, its logs, an HTTP
/// error body) calls this one function.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_become_visible_escapes() {
        assert!(matches!(escape_controls("order-1 ✓ é"), Cow::Borrowed(_)));
        assert_eq!(
            escape_controls("a\nb\r\tc\u{1b}[31mred\u{7f}\u{9b}\u{0}"),
            "a\\nb\\r\\tc\\u{1b}[31mred\\u{7f}\\u{9b}\\u{0}"
        );
        assert_eq!(
            escape_controls("x\u{2028}y\u{202e}z"),
            "x\\u{2028}y\\u{202e}z"
        );
        assert_eq!(escape_controls("back\\slash"), "back\\slash");
    }

    #[test]
    fn a_corrupt_event_is_named() {
        let e = Error::corrupt_event(7, Some("order-1"), Some(2), "data is not UTF-8");
        assert_eq!(
            e.to_string(),
            "backend error: stored event at position 7 (stream `order-1`, version 2) cannot be read: data is not UTF-8"
        );
        let e = Error::corrupt_event(7, None, None, "bad row");
        assert_eq!(
            e.to_string(),
            "backend error: stored event at position 7 cannot be read: bad row"
        );
    }

    #[test]
    fn a_backend_error_is_not_wrapped_twice() {
        let inner = Error::backend("disk I/O error");
        assert_eq!(inner.to_string(), "backend error: disk I/O error");
        let rewrapped = Error::backend(inner);
        assert_eq!(rewrapped.to_string(), "backend error: disk I/O error");
        // An error of another kind keeps its kind.
        assert!(matches!(
            Error::backend(Error::invalid("bad")),
            Error::InvalidInput(_)
        ));
        // One failure shared by several callers.
        let shared = Arc::new(Error::backend("connection reset"));
        assert_eq!(
            Error::backend(Arc::clone(&shared)).to_string(),
            "backend error: connection reset"
        );
        let shared: Arc<dyn std::error::Error + Send + Sync> =
            Arc::from(Box::<dyn std::error::Error + Send + Sync>::from(
                Error::backend("connection refused"),
            ));
        assert_eq!(
            Error::backend(shared).to_string(),
            "backend error: connection refused"
        );
    }
}
