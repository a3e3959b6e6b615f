//! Herald core: the event model and the [`EventStore`] port that every backend implements.
//!
//! Backends (in-memory, SQLite, PostgreSQL) store serialized records: an event's data and metadata are JSON
//! text kept byte for byte, never re-encoded, so key order, big integers and `\u0000` escapes survive a round
//! trip. Everything a backend must agree on — stream-name rules, expected-version checks, size limits, error
//! meanings — lives here once, so the backends only decide how to store.
//!
//! | module | holds |
//! | --- | --- |
//! | [`event`] | [`NewEvent`] (to append) and [`RecordedEvent`] (read back) |
//! | [`stream`] | [`StreamName`] and categories |
//! | [`version`] | [`ExpectedVersion`] and its check |
//! | [`query`] | [`ReadQuery`]: stream, category or global log, direction, from, limit, types, time range |
//! | [`store`] | the [`EventStore`] trait, its results, and [`EventStoreExt`] (streaming reads, follow) |
//! | [`limits`] | [`Limits`] and the validation every backend runs before it writes |
//! | [`error`] | [`Error`], the same meaning on every backend |

pub mod error;
pub mod event;
pub mod limits;
pub mod query;
pub mod store;
pub mod stream;
pub mod timefmt;
pub mod version;

pub use error::{Error, Result};
pub use event::{NewEvent, Origin, RecordedEvent};
pub use limits::Limits;
pub use query::{Direction, ReadQuery, ReadScope};
pub use store::{AppendResult, EventStore, EventStoreExt, Head, LinkResult, StreamInfo};
pub use stream::StreamName;
pub use version::ExpectedVersion;

/// Re-exported so users and backends name the same versions of these types.
pub use {time, uuid};
