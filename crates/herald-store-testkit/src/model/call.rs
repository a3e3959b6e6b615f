//! Concrete store calls and their outcomes, in the one shape both the store under test and the reference
//! model answer in, so the two can be compared with `==` and printed as a readable counter-example.

use std::fmt;

use herald_core::uuid::Uuid;
use herald_core::{
    AppendResult, Direction, Error, ExpectedVersion, LinkResult, NewEvent, ReadQuery, ReadScope,
    RecordedEvent,
};

/// The first id a case hands out is `ID_BASE + 1`; ids print as `#n` (n = id - ID_BASE) in traces.
pub const ID_BASE: u128 = 0x0190_0000_0000_7000_8000_0000_0000_0000;

/// A short, stable name for an id in a trace: `#n` for ids a case made, `nil`, or the UUID.
pub fn short(id: Uuid) -> String {
    let n = id.as_u128();
    if n == 0 {
        "nil".to_owned()
    } else if n > ID_BASE && n - ID_BASE < 1_000_000 {
        format!("#{}", n - ID_BASE)
    } else {
        id.to_string()
    }
}

/// One call to the store, with every argument fixed.
#[derive(Debug, Clone)]
pub enum Call {
    /// [`herald_core::EventStore::append`].
    Append {
        /// The stream.
        stream: String,
        /// The events.
        events: Vec<NewEvent>,
        /// The expectation.
        expected: ExpectedVersion,
    },
    /// [`herald_core::EventStore::link`].
    Link {
        /// The stream.
        stream: String,
        /// The ids.
        ids: Vec<Uuid>,
        /// The expectation.
        expected: ExpectedVersion,
    },
    /// [`herald_core::EventStore::delete_stream`].
    Delete {
        /// The stream.
        stream: String,
        /// The expectation.
        expected: ExpectedVersion,
    },
    /// [`herald_core::EventStore::read_page`] (`page_only`) or a streaming read.
    Read {
        /// The query.
        query: ReadQuery,
        /// One page instead of the whole result.
        page_only: bool,
    },
    /// [`herald_core::EventStore::event`].
    Event(Uuid),
    /// [`herald_core::EventStore::stream_version`].
    StreamVersion(String),
    /// [`herald_core::EventStore::streams`].
    Streams {
        /// The prefix.
        prefix: String,
        /// The exclusive cursor.
        after: Option<String>,
        /// The page size.
        limit: usize,
    },
}

impl Call {
    /// Whether the call may change the store.
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            Call::Append { .. } | Call::Link { .. } | Call::Delete { .. }
        )
    }
}

fn ids(ids: impl IntoIterator<Item = Uuid>) -> String {
    ids.into_iter().map(short).collect::<Vec<_>>().join(" ")
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Call::Append {
                stream,
                events,
                expected,
            } => {
                let events = events
                    .iter()
                    .map(|e| {
                        let broken = if e.event_type.is_empty() {
                            " (empty type)"
                        } else if serde_json::from_str::<serde_json::Value>(&e.data).is_err() {
                            " (data not JSON)"
                        } else if !e.metadata.starts_with('{') {
                            " (metadata not an object)"
                        } else {
                            ""
                        };
                        format!("{}:{}{broken}", short(e.id), e.event_type)
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                write!(f, "append {stream} [{events}] expected {expected}")
            }
            Call::Link {
                stream,
                ids: linked,
                expected,
            } => write!(
                f,
                "link {stream} [{}] expected {expected}",
                ids(linked.iter().copied())
            ),
            Call::Delete { stream, expected } => write!(f, "delete {stream} expected {expected}"),
            Call::Read { query, page_only } => {
                let scope = match &query.scope {
                    ReadScope::Stream(s) => format!("stream {s}"),
                    ReadScope::All => "all".to_owned(),
                    ReadScope::Category(c) => format!("category {c}"),
                };
                let direction = match query.direction {
                    Direction::Forward => "forward",
                    Direction::Backward => "backward",
                };
                write!(f, "read {scope} {direction}")?;
                if let Some(from) = query.from {
                    write!(f, " from {from}")?;
                }
                if let Some(limit) = query.limit {
                    write!(f, " limit {limit}")?;
                }
                if !query.types.is_empty() {
                    write!(f, " types {}", query.types.join(","))?;
                }
                if *page_only {
                    write!(f, " (one page of {})", query.batch_size)
                } else {
                    write!(f, " (pages of {})", query.batch_size)
                }
            }
            Call::Event(id) => write!(f, "event {}", short(*id)),
            Call::StreamVersion(stream) => write!(f, "stream_version {stream}"),
            Call::Streams {
                prefix,
                after,
                limit,
            } => write!(f, "streams prefix {prefix:?} after {after:?} limit {limit}"),
        }
    }
}

/// An event as a read returns it, without `recorded_at` (checked separately: it is the commit time, which a
/// model cannot know).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// The id.
    pub id: Uuid,
    /// The type.
    pub event_type: String,
    /// The stream it was read from.
    pub stream: String,
    /// Its version there.
    pub version: u64,
    /// Its global position.
    pub position: u64,
    /// Data, as written.
    pub data: String,
    /// Metadata, as written.
    pub metadata: String,
    /// Where it was appended, when read through a link.
    pub origin: Option<(String, u64)>,
}

impl From<&RecordedEvent> for Seen {
    fn from(e: &RecordedEvent) -> Self {
        Seen {
            id: e.id,
            event_type: e.event_type.clone(),
            stream: e.stream.clone(),
            version: e.version,
            position: e.position,
            data: e.data.clone(),
            metadata: e.metadata.clone(),
            origin: e.origin.as_ref().map(|o| (o.stream.clone(), o.version)),
        }
    }
}

impl fmt::Display for Seen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}@{}:{} pos {}",
            short(self.id),
            self.stream,
            self.version,
            self.position
        )?;
        if let Some((stream, version)) = &self.origin {
            write!(f, " (link to {stream}:{version})")?;
        }
        Ok(())
    }
}

/// Why a call was refused, reduced to what every backend must agree on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// [`Error::WrongExpectedVersion`], all fields.
    WrongExpectedVersion {
        /// The stream.
        stream: String,
        /// The expectation.
        expected: ExpectedVersion,
        /// The version found.
        actual: Option<u64>,
    },
    /// [`Error::DuplicateEvent`] for this stream. Which clashing id it names is the backend's choice (the
    /// conformance suite's pinned decision); the runner checks it is one of the call's ids.
    Duplicate {
        /// The stream.
        stream: String,
    },
    /// [`Error::EventNotFound`] for this id.
    EventNotFound(Uuid),
    /// [`Error::InvalidInput`].
    InvalidInput,
    /// Anything else: never expected.
    Other(String),
}

impl From<&Error> for Refusal {
    fn from(e: &Error) -> Self {
        match e {
            Error::WrongExpectedVersion {
                stream,
                expected,
                actual,
            } => Refusal::WrongExpectedVersion {
                stream: stream.clone(),
                expected: *expected,
                actual: *actual,
            },
            Error::DuplicateEvent { stream, .. } => Refusal::Duplicate {
                stream: stream.clone(),
            },
            Error::EventNotFound { id } => Refusal::EventNotFound(*id),
            Error::InvalidInput(_) => Refusal::InvalidInput,
            other => Refusal::Other(other.to_string()),
        }
    }
}

/// What a call returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// An append's result (a retry's is the original's).
    Appended(AppendResult),
    /// A link's result.
    Linked(LinkResult),
    /// A delete succeeded.
    Deleted,
    /// A read's events.
    Events(Vec<Seen>),
    /// A lookup by id.
    Event(Option<Seen>),
    /// A stream's version.
    Version(Option<u64>),
    /// A listing: names and versions.
    Streams(Vec<(String, u64)>),
    /// A refusal.
    Refused(Refusal),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Appended(r) => write!(
                f,
                "ok: versions {}..={}, positions {}..={}",
                r.first_version, r.last_version, r.first_position, r.last_position
            ),
            Outcome::Linked(r) => {
                write!(f, "ok: versions {}..={}", r.first_version, r.last_version)
            }
            Outcome::Deleted => write!(f, "ok"),
            Outcome::Events(events) => {
                let events = events.iter().map(Seen::to_string).collect::<Vec<_>>();
                write!(f, "[{}]", events.join(", "))
            }
            Outcome::Event(None) => write!(f, "none"),
            Outcome::Event(Some(e)) => write!(f, "{e}"),
            Outcome::Version(v) => write!(f, "{v:?}"),
            Outcome::Streams(s) => write!(f, "{s:?}"),
            Outcome::Refused(Refusal::WrongExpectedVersion {
                expected, actual, ..
            }) => write!(
                f,
                "WrongExpectedVersion (expected {expected}, actual {actual:?})"
            ),
            Outcome::Refused(r) => write!(f, "{r:?}"),
        }
    }
}
