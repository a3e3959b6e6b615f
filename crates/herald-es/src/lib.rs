//! Event sourcing and CQRS on Herald: aggregates, repositories, snapshots, a command bus, durable
//! subscriptions and consumer groups, projections, upcasting and process managers — on top of
//! `Arc<dyn EventStore>`, so the same code runs on every backend (in-memory, SQLite, PostgreSQL).
//!
//! | module | holds |
//! | --- | --- |
//! | [`aggregate`] | [`Aggregate`] (pure decide/apply), [`Repository`] (load by replay or snapshot, save with `Exact`, retry on conflict) |
//! | [`codec`] | [`EventSet`] (typed events, stable type names, schema versions), [`Upcasters`], [`Codec`] |
//! | [`snapshot`] | [`SnapshotStore`], [`SnapshotPolicy`], in-memory and in-the-event-store snapshots |
//! | [`command`] | [`CommandBus`], middleware (logging, correlation, validation, timing) |
//! | [`subscription`] | durable catch-up [`Subscription`]s and consumer groups: static ([`GroupMember`]) or with members joining and leaving at run time ([`DynamicGroup`]) |
//! | [`group`] | dynamic group membership: [`MembershipStore`] (leases, generations, on herald-core's [`Clock`]), [`Assignment`] |
//! | [`checkpoint`] | [`CheckpointStore`] and in-memory checkpoints |
//! | [`lease`] | one active runner per subscription or projection: leases with fencing tokens ([`LeaseConfig`], [`Fence`]) |
//! | [`projection`] | one-off [`Projection`] folds, persistent [`Projector`]s |
//! | `sqlite` | SQLite snapshots, checkpoints and transactional projections in the event store's file |
//! | `postgres` | PostgreSQL checkpoints and transactional projections in the store's schema (feature `postgres`) |
//! | [`process`] | [`ProcessManager`]s |
//! | [`testing`] | given / when / then for aggregates |
//! | [`metadata`] | [`CommandMetadata`] and the event metadata keys |
//!
//! # A tour
//!
//! ```
//! use std::sync::Arc;
//! use serde::{Deserialize, Serialize};
//! use herald_core::EventStore;
//! use herald_es::{
//!     Aggregate, CancellationToken, CommandMetadata, EventSet, ExecuteError, InMemoryCheckpointStore,
//!     InMemorySnapshotStore, Projection, Repository, SnapshotPolicy, Subscription, handler_fn,
//! };
//!
//! #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
//! #[serde(tag = "type", content = "data")]
//! enum CartEvent { ItemAdded { sku: String }, CheckedOut }
//! impl EventSet for CartEvent {}
//!
//! #[derive(Debug, Default, Clone, Serialize, Deserialize)]
//! struct Cart { items: Vec<String>, closed: bool }
//!
//! enum CartCommand { Add(String), CheckOut }
//!
//! #[derive(Debug, thiserror::Error)]
//! enum CartError { #[error("cart is checked out")] Closed, #[error("cart is empty")] Empty }
//!
//! impl Aggregate for Cart {
//!     const CATEGORY: &'static str = "cart";
//!     type Command = CartCommand;
//!     type Event = CartEvent;
//!     type Error = CartError;
//!     fn decide(&self, command: &CartCommand) -> Result<Vec<CartEvent>, CartError> {
//!         if self.closed { return Err(CartError::Closed) }
//!         match command {
//!             CartCommand::Add(sku) => Ok(vec![CartEvent::ItemAdded { sku: sku.clone() }]),
//!             CartCommand::CheckOut if self.items.is_empty() => Err(CartError::Empty),
//!             CartCommand::CheckOut => Ok(vec![CartEvent::CheckedOut]),
//!         }
//!     }
//!     fn apply(&mut self, event: &CartEvent) {
//!         match event {
//!             CartEvent::ItemAdded { sku } => self.items.push(sku.clone()),
//!             CartEvent::CheckedOut => self.closed = true,
//!         }
//!     }
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let store: Arc<dyn EventStore> = Arc::new(herald_memory::InMemoryStore::new());
//! let carts = Repository::<Cart>::new(store.clone())
//!     .with_snapshots(Arc::new(InMemorySnapshotStore::new()), SnapshotPolicy::every(100));
//!
//! // Commands: load (replay), decide, save with the loaded version; retried on conflicts.
//! let meta = CommandMetadata::new().with("user", "ada");
//! carts.execute("42", &CartCommand::Add("book".into()), &meta).await?;
//! let saved = carts.execute("42", &CartCommand::CheckOut, &meta).await?;
//! assert_eq!(saved.version, Some(1));
//! let refused = carts.execute("42", &CartCommand::Add("pen".into()), &meta).await;
//! assert!(matches!(refused, Err(ExecuteError::Rejected(CartError::Closed))));
//!
//! // A one-off query over the category.
//! let checked_out = Projection::init(0)
//!     .when("CheckedOut", |n, _| { *n += 1; Ok(()) })
//!     .run(&*store, herald_core::ReadQuery::category("cart"))
//!     .await?;
//! assert_eq!(checked_out, 1);
//!
//! // A durable subscription: catch up, then follow live, until cancelled.
//! let sub = Subscription::category("mailer", "cart", store.clone(), Arc::new(InMemoryCheckpointStore::new()))?;
//! let cancel = CancellationToken::new();
//! let stop = cancel.clone();
//! let handler = handler_fn(move |event| {
//!     let stop = stop.clone();
//!     async move {
//!         if event.event_type == "CheckedOut" { stop.cancel() } // e.g. send a receipt
//!         Ok(())
//!     }
//! });
//! let stats = sub.run(&handler, &cancel).await?;
//! assert_eq!(stats.handled, 2);
//! # Ok::<(), herald_es::BoxError>(())
//! # }).unwrap();
//! ```
//!
//! The runnable end-to-end example is `crates/herald-example-seed`, on any database URL:
//! `cargo run -p herald-example-seed -- memory://` (or `sqlite://seed.db`, the default, or `postgres://…`).
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
//! - Opt-in idempotent commands ([`Repository::idempotent`]): event ids derived from the command id, so a
//!   command delivered twice is executed once.
//! - Snapshots only speed loading up: any doubt (schema version, corrupt JSON, a stream rewritten since) falls
//!   back to full replay.
//! - Subscriptions are at least once and in order (per scope; per stream within a consumer group), resume
//!   after their checkpoint, and have no gap or duplicate at the history/live seam. Dynamic consumer groups
//!   keep one owner per stream at a time across rebalances (eager, stop-the-world; see
//!   [`subscription`](subscription#dynamic-membership)).
//!   [`sqlite::SqliteProjection`] and `postgres::PostgresProjection` are exactly once for their read model
//!   (read model + checkpoint in one transaction).
//! - One active runner per subscription or projection name, across processes: a run takes a lease on its
//!   checkpoint name and every checkpoint write carries its fencing token, refused once another runner took
//!   over; a second runner waits (or fails with [`EsError::LeaseHeld`]), an overtaken one stops with
//!   [`EsError::Fenced`] and its batch rolls back. Dynamic group members are fenced by generation. See
//!   [`lease`].
//! - Stored events are never rewritten: upcasting happens on read.
//!
//! # Backends
//!
//! Everything runs on `Arc<dyn EventStore>`; the test suite runs each behaviour on the in-memory, SQLite and
//! PostgreSQL stores. [`SnapshotStore`] has in-memory, SQLite and in-the-event-store
//! ([`EventStoreSnapshotStore`], any backend) implementations; [`CheckpointStore`], [`MembershipStore`]
//! (dynamic consumer groups: the checkpoint stores implement it, in the same database) and transactional
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
pub mod checkpoint;
pub mod codec;
pub mod command;
mod error;
pub mod group;
pub mod lease;
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
pub use checkpoint::{CheckpointStore, InMemoryCheckpointStore};
pub use codec::{Codec, DecodedEvent, EventSet, Upcasters};
pub use command::{BusError, Command, CommandBus, CommandHandler, Middleware};
pub use error::{EsError, Result};
pub use group::{Assignment, DynamicGroup, GroupView, Heartbeat, MembershipStore};
/// Re-exported where [`DynamicGroup::clock`] needs them: herald-core's one time source (µs).
pub use herald_core::{Clock, ManualClock, SystemClock};
pub use lease::{Fence, LeaseConfig, LeaseGrant, WhenHeld};
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
