//! Herald: an event-driven-architecture toolkit — the one dependency an application needs. The event store
//! and its backends, event sourcing, durable jobs and in-process events are each a part, re-exported here as a
//! module and chosen by a cargo feature named after it, the way sqlx does.
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
//! # Features
//!
//! | feature | default | gives |
//! | --- | --- | --- |
//! | `sqlite` | yes | `herald::sqlite`: the embedded backend, `sqlite://PATH` URLs; with `es`, `herald::es::sqlite` (checkpoints, snapshots, projections in the same file) |
//! | `postgres` | | `herald::postgres`: the PostgreSQL backend, `postgres://` URLs; with `es`, `herald::es::postgres`; with `jobs`, jobs in the PostgreSQL schema |
//! | `es` | | `herald::es`: aggregates, repositories, snapshots, command bus, subscriptions, projections, process managers |
//! | `jobs` | | `herald::jobs`: durable jobs and async event handlers (the worker pool, cron, routes) on the chosen backend's job queue |
//! | `notify` | | `herald::notify`: instrumentation and typed domain-event pub/sub |
//! | `full` | | all of the above |
//!
//! Always there: [`core`] (the event model, the [`EventStore`] and [`JobQueue`] ports, errors; its common
//! types are also at the root), [`memory`] (the in-memory backend, `memory://`), [`connect`] (the event store
//! a URL names) and [`open`] (everything Herald keeps in that database: the store, its job queue, the async
//! handlers' routes and, with `es`, the checkpoints).
//!
//! ```toml
//! [dependencies]
//! herald = { version = "0.1", default-features = false, features = ["postgres", "es"] }  # no SQLite compiled
//! ```

mod connect;
mod open;

pub use connect::{DEFAULT_DATABASE_URL, connect};
/// The core crate: event model, the [`EventStore`] port and its errors.
pub use herald_core as core;
pub use herald_core::{
    AppendResult, Clock, Direction, Error, EventStore, EventStoreExt, ExpectedVersion, Head,
    JobQueue, JobRouter, JobsConfig, Limits, LinkResult, ManualClock, NewEvent, NewJob, Origin,
    ReadQuery, ReadScope, RecordedEvent, Result, StreamInfo, StreamName, SystemClock, time,
    timefmt, uuid,
};
/// Event sourcing and CQRS: aggregates, repositories, snapshots, command bus, subscriptions, projections.
#[cfg(feature = "es")]
pub use herald_es as es;
/// Durable jobs and async event handlers.
#[cfg(feature = "jobs")]
pub use herald_jobs as jobs;
/// The in-memory backend.
pub use herald_memory as memory;
/// Instrumentation and typed domain-event pub/sub.
#[cfg(feature = "notify")]
pub use herald_notify as notify;
/// The PostgreSQL backend.
#[cfg(feature = "postgres")]
pub use herald_postgres as postgres;
/// The embedded SQLite backend.
#[cfg(feature = "sqlite")]
pub use herald_sqlite as sqlite;
pub use open::{Herald, OpenOptions, open, open_with};

/// The README's Rust examples run as doctests, so the README cannot drift from the code.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
