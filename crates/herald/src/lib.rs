//! Herald: an event-driven-architecture toolkit — one facade over the event store, its backends and (as they
//! land) in-process events, jobs and broker bridges.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), herald::Error> {
//! use herald::{EventStoreExt, ExpectedVersion, NewEvent, ReadQuery, StreamName};
//!
//! let store = herald::connect("memory://").await?;
//! let stream = StreamName::new("order-1")?;
//! let placed = NewEvent::new("OrderPlaced").with_data(r#"{"total":42}"#);
//! let written = store.append(&stream, vec![placed], ExpectedVersion::NoStream).await?;
//! assert_eq!(written.first_version, 0);
//!
//! let events = store.read_to_vec(ReadQuery::stream(stream)).await?;
//! assert_eq!(events[0].data, r#"{"total":42}"#);
//! # Ok(())
//! # }
//! ```
//!
//! | feature | default | gives |
//! | --- | --- | --- |
//! | `sqlite` | yes | [`sqlite`]: the embedded backend, `sqlite://PATH` URLs |
//!
//! The in-memory backend (`memory://`) is always available.

mod connect;

pub use connect::{DEFAULT_DATABASE_URL, connect};
/// The core crate: event model, the [`EventStore`] port and its errors.
pub use herald_core as core;
pub use herald_core::{
    AppendResult, Direction, Error, EventStore, EventStoreExt, ExpectedVersion, Head, Limits,
    LinkResult, NewEvent, Origin, ReadQuery, ReadScope, RecordedEvent, Result, StreamInfo,
    StreamName, time, timefmt, uuid,
};
/// Durable jobs and async event handlers.
#[cfg(feature = "jobs")]
pub use herald_jobs as jobs;
/// The in-memory backend.
pub use herald_memory as memory;
/// The PostgreSQL backend.
#[cfg(feature = "postgres")]
pub use herald_postgres as postgres;
/// The embedded SQLite backend.
#[cfg(feature = "sqlite")]
pub use herald_sqlite as sqlite;

/// The README's Rust examples run as doctests, so the README cannot drift from the code.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
