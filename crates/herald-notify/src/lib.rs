//! In-process events for Herald: instrumentation and typed domain-event pub/sub.
//!
//! Two tools that Rails applications get from ActiveSupport::Notifications and Wisper:
//!
//! * **Instrumentation** ([`Notifier`], [`instrument()`], [`subscribe`]): named, timed, in-memory events
//!   (`sql.query`, `cache.read`) with subscribers by exact name, glob, regex or all, span (start/finish)
//!   subscribers, scoped subscriptions and a [`tracing` bridge](tracing_bridge). Never stored; one
//!   atomic load when nobody listens (what it costs is in `benchmarks/notify.md`). See the [`instrument`](mod@instrument) module for the cost model.
//! * **Domain events** ([`Bus`], [`DomainEvent`]): typed events with a stable type name and schema version,
//!   delivered to sync handlers (in the publisher's task) and async listeners (each on its own bounded
//!   queue), with causation and correlation ids propagated automatically; [`StorePublisher`] appends them to
//!   the event store first and dispatches after the commit. See the [`bus`] module for the delivery,
//!   ordering, capacity, closing and panic guarantees.
//!
//! # Feature flags
//!
//! | feature | default | what |
//! | --- | --- | --- |
//! | (none) | | everything is always built: the `tracing` bridge is small, Tokio is needed for async listeners and task-scoped subscriptions, `herald-core` for [`StorePublisher`] |
//!
//! # Instrumentation
//!
//! ```
//! use herald_notify::{Notifier, Pattern};
//!
//! let notifier = Notifier::new();
//! let _logger = notifier
//!     .subscribe(Pattern::regex(r"^sql\.").unwrap(), |e| {
//!         println!("{} took {:?}: {:?}", e.name(), e.duration(), e.payload());
//!     })
//!     .guard(); // unsubscribes when dropped
//! let n = notifier.instrument("sql.query", || "SELECT count(*) FROM users", || 42);
//! assert_eq!(n, 42);
//! ```
//!
//! # Domain events
//!
//! ```
//! use herald_notify::{Bus, Envelope};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Clone, Serialize, Deserialize)]
//! struct UserRegistered { user_id: u64 }
//! herald_notify::domain_event!(UserRegistered, "user.registered");
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let bus = Bus::new();
//! let _mailer = bus.subscribe(|e: &Envelope<UserRegistered>| {
//!     println!("welcome mail for {} (event {})", e.user_id, e.id());
//! });
//! let _audit = bus.subscribe_async(128, |e: std::sync::Arc<Envelope<UserRegistered>>| async move {
//!     println!("audited {}", e.user_id);
//! });
//! let delivery = bus.publish(UserRegistered { user_id: 7 }).await.unwrap();
//! assert_eq!((delivery.handled, delivery.queued), (1, 1));
//! bus.shutdown().await; // drains the async listener
//! # }
//! ```

pub mod bus;
mod clock;
mod fxhash;
pub mod instrument;
mod panic;
mod scope;
mod subscriber;
mod tlcache;

pub use bus::{
    Batch, BoxError, Bus, BusBuilder, Delivery, DomainEvent, Envelope, ErasedEnvelope, ErrorPolicy,
    EventContext, EventMeta, HandlerError, HandlerFailure, HandlerResult, Handlers, Listener,
    PublishError, PublishOptions, Published, Publisher, StorePublisher, StoredAt, Timestamps,
};
pub use instrument::{
    ErrorInfo, Event, Notifier, NotifierBuilder, Outcome, Pattern, Payload, SpanSubscriber,
    Started, tracing_bridge,
};
pub use panic::{PanicPolicy, PanicReport, PanicReporter};
pub use subscriber::{SubscriberGuard, SubscriberHandle};

/// [`Notifier::instrument`] on the [global notifier](Notifier::global).
///
/// ```
/// let answer = herald_notify::instrument("compute.answer", || 42u32, || 6 * 7);
/// assert_eq!(answer, 42);
/// ```
#[inline]
pub fn instrument<P: Payload, T>(
    name: &'static str,
    payload: impl FnOnce() -> P,
    work: impl FnOnce() -> T,
) -> T {
    if !instrument::global_has_subscribers() {
        return work();
    }
    Notifier::global().instrument(name, payload, work)
}

/// [`Notifier::try_instrument`] on the global notifier.
#[inline]
pub fn try_instrument<P: Payload, T, E: ErrorInfo>(
    name: &'static str,
    payload: impl FnOnce() -> P,
    work: impl FnOnce() -> Result<T, E>,
) -> Result<T, E> {
    if !instrument::global_has_subscribers() {
        return work();
    }
    Notifier::global().try_instrument(name, payload, work)
}

/// [`Notifier::notify`] on the global notifier.
#[inline]
pub fn notify<P: Payload>(name: &'static str, payload: impl FnOnce() -> P) {
    if !instrument::global_has_subscribers() {
        return;
    }
    Notifier::global().notify(name, payload);
}

/// [`Notifier::subscribe`] on the global notifier.
pub fn subscribe(
    pattern: impl Into<Pattern>,
    handler: impl Fn(&Event<'_>) + Send + Sync + 'static,
) -> SubscriberHandle {
    Notifier::global().subscribe(pattern, handler)
}

/// [`Notifier::subscribed`] on the global notifier: scoped to `f` and to the current thread.
pub fn subscribed<R>(
    pattern: impl Into<Pattern>,
    handler: impl Fn(&Event<'_>) + Send + Sync + 'static,
    f: impl FnOnce() -> R,
) -> R {
    Notifier::global().subscribed(pattern, handler, f)
}
