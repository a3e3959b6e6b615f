//! Herald core: the event model and the [`EventStore`] port that every backend implements.
//!
//! Backends (in-memory, SQLite, PostgreSQL) store serialized records: an event's data and metadata are JSON
//! text kept byte for byte, never re-encoded, so key order, big integers and `\u0000` escapes survive a round
//! trip. Everything a backend must agree on — stream-name rules, expected-version checks, size limits, the
//! write rules (retry or duplicate, links, deletes), error meanings — lives here once, so the backends only
//! look facts up and decide how to store.
//!
//! | module | holds |
//! | --- | --- |
//! | [`event`] | [`NewEvent`] (to append) and [`RecordedEvent`] (read back) |
//! | [`stream`] | [`StreamName`] and categories |
//! | [`version`] | [`ExpectedVersion`] and its check |
//! | [`query`] | [`ReadQuery`]: stream, category or global log, direction, from, limit, types, time range |
//! | [`store`] | the [`EventStore`] trait, its results, and [`EventStoreExt`] (streaming reads, follow) |
//! | [`limits`] | [`Limits`] and the validation every backend runs once, at the entry of each operation |
//! | [`rules`] | the write rules: retry or duplicate, expected versions, links, deletes, decided from looked-up facts |
//! | [`jobs`] | the [`JobQueue`] port (durable jobs), [`NewJob`], and how jobs join an append's transaction |
//! | [`delivery`] | the [`DeliveryRoutes`](delivery::DeliveryRoutes) port: routes from events to webhooks and programs, kept in the database |
//! | [`clock`] | [`Clock`]: the one time source (µs), [`ManualClock`] for tests |
//! | [`url`] | [`DatabaseUrl`]: the one parser of `sqlite://`, `postgres://` and `memory://` URLs, typed and bounded options |
//! | [`backoff`] | [`Backoff`]: the one retry schedule (exponential with cap and jitter, constant, custom) |
//! | [`error`] | [`Error`], the same meaning on every backend and port; [`BoxError`], the one boxed error |

//! # Semantics every backend implements (the conformance suite checks them)
//!
//! - **Versions and positions.** A stream's first entry has version 0; entries get consecutive versions. Every
//!   appended event gets the next global position, starting at 1, with no gaps (links take no position).
//!   Positions only grow in commit order: a follower reading the global log never skips an event.
//! - **Atomic append.** All events of one append are written, or none; the expected version is checked in the
//!   same transaction. `Any` still assigns real versions.
//! - **Idempotent retry.** An append whose ids all already sit, in the same order, at consecutive versions of
//!   that same stream (which still holds them, at consecutive positions) returns the original [`AppendResult`]
//!   and writes nothing (the expected version is not re-checked: it is a retry). Any other reuse of an existing
//!   id is [`Error::DuplicateEvent`]. Every backend decides this, links and deletes with the functions of
//!   [`rules`], from the facts it looked up.
//! - **Links.** [`EventStore::link`] adds entries to a stream that point at stored events; the event is stored
//!   once. Read through the linking stream, the entry has that stream's name and version, the event's own global
//!   position, and [`RecordedEvent::origin`] set to where it was appended. Linking an event into a stream that
//!   already holds it (appended there or linked before) is a duplicate; an unknown id is
//!   [`Error::EventNotFound`].
//! - **Scopes.** A stream read includes its links, ordered by version. The global log holds every event once,
//!   as appended (no origin), ordered by position. A category read is the global log filtered to events
//!   appended to streams of that category (links are not repeated there).
//! - **Read options.** `from` is inclusive (a version for streams, a position otherwise); backward reads start
//!   at the last entry at or before `from`. `types` keeps only those event types. `recorded_after` and
//!   `recorded_before` are exclusive (`recorded_at_or_after` is the inclusive form, for half-open windows). A
//!   stream that does not exist reads as empty.
//! - **Delete.** Removes the stream's entries (own events and links) and resets its version, so it can be
//!   written again from version 0; the global log, category reads, [`EventStore::event`] and links from other
//!   streams keep the events. [`EventStore::streams`] lists only existing streams.
//! - **Time.** `recorded_at` is the commit time, UTC, microsecond precision ([`timefmt`]).
//! - **Bad input** is [`Error::InvalidInput`] (stream names are checked by [`StreamName::new`], everything else
//!   by [`Limits`] and [`ReadQuery::validate`]), and nothing is written.

pub mod backoff;
pub mod clock;
pub mod delivery;
pub mod error;
pub mod event;
pub mod jobs;
pub mod limits;
pub mod query;
pub mod rules;
pub mod store;
pub mod stream;
pub mod timefmt;
pub mod url;
pub mod version;
pub mod write;

pub use backoff::Backoff;
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{BoxError, Error, Result};
pub use event::{AppendedEvent, NewEvent, Origin, RecordedEvent, SCHEMA_VERSION_KEY};
pub use jobs::{JobQueue, JobRouter, JobsConfig, NewJob};
pub use limits::Limits;
pub use query::{Direction, ReadQuery, ReadScope};
pub use store::{
    AppendResult, EventStore, EventStoreExt, FollowOptions, Head, LinkResult, StreamInfo,
};
pub use stream::StreamName;
pub use url::DatabaseUrl;
pub use version::ExpectedVersion;

/// Re-exported so users and backends name the same versions of these types.
pub use {time, uuid};
