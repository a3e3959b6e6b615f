//! Event sourcing and CQRS on Herald: aggregates, repositories, snapshots, a command bus, durable
//! subscriptions and consumer groups, projections, upcasting and process managers — on top of
//! `Arc<dyn EventStore>`, so the same code runs on every backend (in-memory, SQLite, PostgreSQL).
//!
//! | module | holds |
//! | --- | --- |
//! | [`aggregate`] | [`Aggregate`] (pure decide/apply), [`Repository`] (load by replay or snapshot, save with `Exact`, retry on conflict) |
//! | [`codec`] | [`EventSet`] (typed events, stable type names, schema versions), [`Upcasters`], [`Codec`] |
//! | [`snapshot`] | [`SnapshotStore`], [`SnapshotPolicy`], in-memory and in-the-event-store snapshots |
//! | [`bus`] | [`CommandBus`], middleware (logging, correlation, validation, timing) |
//! | [`subscription`] | durable catch-up [`Subscription`]s and consumer groups ([`GroupMember`]) |
//! | [`checkpoint`] | [`CheckpointStore`] and in-memory checkpoints |
//! | [`projection`] | one-off [`Projection`] folds, persistent [`Projector`]s |
//! | `sqlite` | SQLite snapshots, checkpoints and transactional projections in the event store's file |
//! | `postgres` | PostgreSQL checkpoints and transactional projections in the store's schema (feature `postgres`) |
//! | [`process`] | [`ProcessManager`]s |
//! | [`testing`] | given / when / then for aggregates |
//! | [`metadata`] | [`CommandMetadata`] and the event metadata keys |
//!
//! # Metadata written on events
//!
//! `correlation_id`, `causation_id` (the causing event, else the command), `command_id`, `schema_version`
//! (absent = 1) and the command's user keys: see [`metadata`] and [`codec`].
//!
//! # Guarantees
//!
//! - Saves are optimistic: `ExpectedVersion::Exact(loaded)` (or `NoStream`), checked by the store in the
//!   append's transaction; [`Repository::execute`] retries load → decide → save a bounded number of times.
//! - Snapshots only speed loading up: any doubt (schema version, corrupt JSON, a stream rewritten since) falls
//!   back to full replay.
//! - Subscriptions are at least once and in order (per scope; per stream within a consumer group), resume
//!   after their checkpoint, and have no gap or duplicate at the history/live seam.
//!   [`sqlite::SqliteProjection`] is exactly once for its read model (read model + checkpoint in one
//!   transaction).
//! - Stored events are never rewritten: upcasting happens on read.
//!
//! # Backends
//!
//! Everything runs on `Arc<dyn EventStore>`; the test suite runs each behaviour on the in-memory, SQLite and
//! PostgreSQL stores. [`SnapshotStore`] has in-memory, SQLite and in-the-event-store
//! ([`EventStoreSnapshotStore`], any backend) implementations; [`CheckpointStore`] and transactional
//! projections (read model + checkpoint in one transaction) have in-memory, SQLite (feature `sqlite`) and
//! PostgreSQL (feature `postgres`) implementations. Both transactional projections are tested across a
//! real SIGKILL of the process running them.
//!
//! # Feature flags
//!
//! | feature | default | enables |
//! | --- | --- | --- |
//! | `sqlite` | yes | `sqlite`: SQLite snapshots, checkpoints and transactional projections (rusqlite, bundled — the same SQLite herald-sqlite links) |
//! | `postgres` | no | `postgres`: PostgreSQL checkpoints and transactional projections (tokio-postgres) |

pub mod aggregate;
pub mod bus;
pub mod checkpoint;
pub mod codec;
mod error;
pub mod metadata;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod process;
pub mod projection;
pub mod snapshot;
#[cfg(feature = "sqlite")]
pub mod sqlite;
pub mod subscription;
pub mod testing;

pub use aggregate::{Aggregate, ExecuteError, Loaded, Repository, RetryPolicy, Saved};
pub use bus::{BusError, Command, CommandBus, CommandHandler, Middleware};
pub use checkpoint::{CheckpointStore, InMemoryCheckpointStore};
pub use codec::{Codec, Envelope, EventSet, SCHEMA_VERSION, Upcasters};
pub use error::{EsError, Result};
pub use metadata::CommandMetadata;
pub use process::{ProcessManager, ProcessRunner};
pub use projection::{Projection, Projector, ReadModel};
pub use snapshot::{
    EventStoreSnapshotStore, InMemorySnapshotStore, Snapshot, SnapshotPolicy, SnapshotStore,
};
pub use subscription::{
    BoxError, EventHandler, GroupMember, Subscription, SubscriptionStats, TypedHandler, handler_fn,
    stable_hash, typed_handler,
};
pub use tokio_util::sync::CancellationToken;
