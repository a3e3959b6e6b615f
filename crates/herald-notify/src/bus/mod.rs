//! Typed domain-event pub/sub (the Wisper analogue): a [`Bus`] with sync handlers, listener objects,
//! local listeners on one [`Publisher`], scoped temporary listeners and async listeners on bounded queues.
//!
//! # Delivery
//!
//! A publish delivers one [`Envelope`] (the event plus [`EventMeta`]) to every matching subscription that
//! exists when the publish starts. Delivery is in-memory and at most once: nothing survives a crash. (For
//! durable history, publish through the store with [`StorePublisher`], which appends first and dispatches
//! after the commit; give durable work to a job queue.)
//!
//! * **Sync handlers** ([`Bus::subscribe`], [`Bus::subscribe_all`], [`Bus::subscribe_listener`],
//!   [`Bus::scoped`], [`Publisher::subscribe`]) run inside the publish call, in the publisher's thread or
//!   task, **in subscription order** (one order across all kinds of subscription). When several events are
//!   dispatched together, delivery is event-major: the first event reaches every handler before the second
//!   reaches any.
//! * **Async listeners** ([`Bus::subscribe_async`], [`Bus::subscribe_all_async`]) each own a bounded queue
//!   served by one Tokio task, which handles the queued events one at a time, in queue order. Events from
//!   one publishing task are queued in publish order; events from concurrent publishers are queued in the
//!   order their publishes reach the queue.
//!
//! # Capacity and back-pressure
//!
//! Every async listener has the capacity given when subscribing. A queue never drops an event:
//!
//! * [`Bus::publish`] (async) **waits** for room in each full queue, in subscription order, so a slow
//!   listener slows its publishers down instead of losing events.
//! * [`Bus::try_publish`] (sync) first reserves a slot in every matching queue; if one is full it returns
//!   [`PublishError::Full`] and delivers the event to **nobody**, sync handlers included.
//!
//! An async listener that publishes events it also listens to, with `publish().await`, can wait for its own
//! full queue forever; give such a listener room, or publish from a spawned task.
//!
//! # Closing
//!
//! * Unsubscribing (the handle, a guard's drop) stops new deliveries at once. An async listener's task then
//!   handles the events already in its queue and ends.
//! * [`Bus::shutdown`] closes every async listener, waits until each has drained its queue, and makes every
//!   later publish fail with [`PublishError::Closed`].
//! * Dropping the last handle to a bus closes the async listeners the same way, without waiting.
//!
//! # Errors and panics
//!
//! * A sync handler's `Err` is collected and returned to the publisher as [`PublishError::Handlers`], with
//!   the subscription and a label for each failure. By default every handler runs
//!   ([`ErrorPolicy::RunAll`]); with [`ErrorPolicy::StopAtFirst`] the publish stops at the first failure
//!   and the remaining handlers and queues do not get the event.
//! * A panicking sync handler is, by default ([`PanicPolicy::Isolate`]), caught, reported, counted and
//!   returned as [`HandlerError::Panicked`]; the other handlers still run. With
//!   [`PanicPolicy::Propagate`] the panic unwinds into the publisher.
//! * An async listener's errors and panics cannot reach the publisher, which has moved on. They are
//!   reported (a `tracing` error on target `herald_notify`, or the configured reporter for panics) and
//!   counted ([`Bus::async_failures`]); the listener carries on with its next event.
//!
//! # Cost
//!
//! A sync publish allocates nothing (a publish that queues for async listeners allocates one `Arc` for the
//! envelope they share) and takes no lock. It does four things:
//!
//! * the timestamp: one read of the CPU's time-stamp counter, scaled against a per-thread (wall, counter)
//!   anchor refreshed every second; [`Timestamps::Coarse`] replaces it with one atomic load.
//! * the event context: reading the current one for causation/correlation, and making the new event
//!   current around the handlers (a flag and the ids in thread-locals).
//! * the UUIDv7 id: a per-thread SplitMix64 draw, no system call.
//! * the delivery: the per-thread cached type → subscription lookup, the dynamic call and the type check
//!   into each handler. Panic isolation costs nothing until a handler panics: with one handler the
//!   `catch_unwind` is inlined around it, with several one `catch_unwind` covers the loop, which resumes
//!   after a handler that panicked.
//!
//! What each step costs, measured by elimination, and the throughput against Wisper are in
//! `benchmarks/notify.md`.
//!
//! # Causation and correlation
//!
//! Every handler runs with its event as the current [`EventContext`]. An event published while handling
//! another gets `causation_id` = that event's id and its `correlation_id`, automatically; explicit values in
//! [`PublishOptions`] win. A root event's correlation id is its own id.
//!
//! ```
//! use herald_notify::{Bus, Envelope};
//! use serde::{Deserialize, Serialize};
//! use std::sync::{Arc, Mutex};
//!
//! #[derive(Debug, Clone, Serialize, Deserialize)]
//! struct UserRegistered { user_id: u64 }
//! herald_notify::domain_event!(UserRegistered, "user.registered");
//!
//! #[derive(Debug, Clone, Serialize, Deserialize)]
//! struct WelcomeSent { user_id: u64 }
//! herald_notify::domain_event!(WelcomeSent, "welcome.sent");
//!
//! let bus = Bus::new();
//! let inner = bus.clone();
//! let _mailer = bus.subscribe(move |e: &Envelope<UserRegistered>| {
//!     inner.try_publish(WelcomeSent { user_id: e.user_id }).map(|_| ())
//! });
//! let seen = Arc::new(Mutex::new(None));
//! let s = seen.clone();
//! let _audit = bus.subscribe(move |e: &Envelope<WelcomeSent>| {
//!     *s.lock().unwrap() = Some(e.meta().clone());
//! });
//!
//! let delivery = bus.try_publish(UserRegistered { user_id: 7 }).unwrap();
//! let welcome = seen.lock().unwrap().clone().unwrap();
//! assert_eq!(welcome.causation_id, Some(delivery.meta.id));
//! assert_eq!(welcome.correlation_id, delivery.meta.id);
//! ```

mod async_listener;
mod builder;
mod context;
mod dispatch;
mod error;
mod event;
mod ids;
mod listener;
mod publisher;
mod registry;
mod store;

use std::any::{TypeId, type_name};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use builder::BusBuilder;
pub use context::EventContext;
pub use error::{BoxError, HandlerError, HandlerFailure, PublishError};
pub use event::{DomainEvent, Envelope, ErasedEnvelope, EventMeta, PublishOptions, StoredAt};
pub use listener::{Handlers, Listener};
pub use publisher::Publisher;
pub use store::{Batch, Published, StorePublisher};

use crate::clock;
use crate::panic::{PanicPolicy, PanicReporter};
use crate::scope::{self, ScopeId, ThreadScope};
use crate::subscriber::{SubscriberHandle, Unsubscribe};

/// What a handler may return: `()` or `Result<(), E>` for any error convertible into [`BoxError`].
pub trait HandlerResult {
    /// Normalises the handler's return value.
    ///
    /// # Errors
    /// The handler's error.
    fn into_result(self) -> Result<(), BoxError>;
}

impl HandlerResult for () {
    #[inline]
    fn into_result(self) -> Result<(), BoxError> {
        Ok(())
    }
}

impl<E: Into<BoxError>> HandlerResult for Result<(), E> {
    #[inline]
    fn into_result(self) -> Result<(), BoxError> {
        self.map_err(Into::into)
    }
}

/// Whether a publish runs every sync handler or stops at the first failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ErrorPolicy {
    /// Run every handler and report every failure.
    #[default]
    RunAll,
    /// Stop at the first failing handler; later handlers and queues do not get the event.
    StopAtFirst,
}

/// Where the bus takes each event's `occurred_at` (and the millisecond in its UUIDv7 id) from.
///
/// | variant | cost per publish | precision |
/// | --- | ---: | --- |
/// | [`Precise`](Self::Precise) | one time-stamp counter read (slow under virtualisation) | nanoseconds: the counter calibrated against the OS clock, anchored to the OS wall clock once a second per thread (see the [module's cost notes](crate::bus#cost)) |
/// | [`Coarse`](Self::Coarse) | one relaxed atomic load | behind the precise time by up to one tick (1 ms) plus however long the OS delays the ticker thread (more on a loaded machine); never decreasing, unless the OS clock is set back by more than a second, which it then follows |
///
/// `Coarse` starts one process-wide thread, `herald-coarse-clock`, that refreshes the time every
/// millisecond while at least one bus uses it (its CPU cost, mostly waking up 1000 times a second, is in
/// `benchmarks/notify.md`), and ends within a tick of the last such bus being dropped.
/// Choose it when events are published at very high rates and millisecond timestamps are enough (UUIDv7
/// ids carry milliseconds anyway); events published within one tick then share their `occurred_at`
/// (their ids still differ and stay unique).
///
/// ```
/// use herald_notify::{Bus, Timestamps};
/// let bus = Bus::builder().timestamps(Timestamps::Coarse).build();
/// # drop(bus);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Timestamps {
    /// Read the calibrated clock at every publish (default).
    #[default]
    Precise,
    /// Read a time refreshed every millisecond by a background thread. If the thread cannot be
    /// started, the bus falls back to `Precise` (and says so in a `tracing` warning).
    Coarse,
}

/// What a successful publish did.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The published event's metadata (id, correlation, causation…).
    pub meta: EventMeta,
    /// Sync handlers that ran.
    pub handled: usize,
    /// Async listener queues the event was put on.
    pub queued: usize,
}

pub(crate) type SyncFn = Box<dyn Fn(&dyn ErasedEnvelope) -> Result<(), BoxError> + Send + Sync>;
type AsyncFn =
    Arc<dyn Fn(Arc<dyn ErasedEnvelope>) -> BoxFuture<'static, Result<(), BoxError>> + Send + Sync>;
type Queue = mpsc::Sender<Arc<dyn ErasedEnvelope>>;

enum Kind {
    Sync(SyncFn),
    Async {
        queue: Queue,
        token: CancellationToken,
    },
}

struct Entry {
    id: u64,
    type_filter: Option<TypeId>,
    publisher: Option<u64>,
    scope: Option<ScopeId>,
    label: Arc<str>,
    live: AtomicBool,
    kind: Kind,
}

impl Entry {
    #[inline]
    fn deliverable(&self, from: Option<u64>) -> bool {
        self.live.load(Ordering::Acquire)
            && (self.publisher.is_none() || self.publisher == from)
            && self.scope.is_none_or(scope::is_active)
    }
}

/// A registration waiting to be added (one per event type for listener objects).
pub(crate) struct NewEntry {
    type_filter: Option<TypeId>,
    label: Arc<str>,
    kind: Kind,
}

struct Matched {
    entries: Arc<[Arc<Entry>]>,
    any_async: bool,
}

struct BusInner {
    id: u64,
    generation: AtomicU64,
    registry: Mutex<Vec<Arc<Entry>>>,
    next_id: AtomicU64,
    closed: AtomicBool,
    root: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    error_policy: ErrorPolicy,
    panic_policy: PanicPolicy,
    reporter: Option<PanicReporter>,
    panics: AtomicU64,
    async_failures: AtomicU64,
    /// Whether this bus holds a reference on the coarse clock (released on drop).
    coarse: bool,
}

impl BusInner {
    fn registry(&self) -> MutexGuard<'_, Vec<Arc<Entry>>> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for BusInner {
    fn drop(&mut self) {
        if self.coarse {
            clock::coarse_release();
        }
        self.root.cancel();
    }
}

/// The domain-event bus. See the [module documentation](self) for delivery, ordering, capacity, closing
/// and panics. Cloning gives another handle to the same bus.
#[derive(Clone)]
pub struct Bus {
    inner: Arc<BusInner>,
}

impl Default for Bus {
    fn default() -> Self {
        Bus::new()
    }
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bus")
            .field("id", &self.inner.id)
            .field("subscriptions", &self.inner.registry().len())
            .field("closed", &self.inner.closed.load(Ordering::Relaxed))
            .finish()
    }
}

impl Bus {
    /// A new bus with default settings.
    pub fn new() -> Self {
        BusBuilder::default().build()
    }

    /// A builder for a bus with non-default settings.
    pub fn builder() -> BusBuilder {
        BusBuilder::default()
    }

    /// A publisher with its own local listeners (Wisper's `publisher.on(...)`).
    pub fn publisher(&self) -> Publisher {
        Publisher {
            bus: self.clone(),
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// How many sync handler panics and async listener panics have been caught.
    pub fn panics_caught(&self) -> u64 {
        self.inner.panics.load(Ordering::Relaxed)
    }

    /// How many events async listeners failed on (error or panic).
    pub fn async_failures(&self) -> u64 {
        self.inner.async_failures.load(Ordering::Relaxed)
    }

    /// Subscribes a sync handler to events of type `E` from every publisher.
    ///
    /// The handler returns `()` or `Result<(), impl Into<BoxError>>`.
    pub fn subscribe<E: DomainEvent, R: HandlerResult>(
        &self,
        handler: impl Fn(&Envelope<E>) -> R + Send + Sync + 'static,
    ) -> SubscriberHandle {
        self.add_one(Self::typed_entry::<E, R>(handler), None, None)
    }

    /// Subscribes a sync handler to every event, whatever its type.
    pub fn subscribe_all<R: HandlerResult>(
        &self,
        handler: impl Fn(&dyn ErasedEnvelope) -> R + Send + Sync + 'static,
    ) -> SubscriberHandle {
        let entry = NewEntry {
            type_filter: None,
            label: "all".into(),
            kind: Kind::Sync(Box::new(move |env| handler(env).into_result())),
        };
        self.add_one(entry, None, None)
    }

    /// Subscribes a listener object to every event type it registers in [`Listener::register`]. One
    /// handle unsubscribes them all.
    pub fn subscribe_listener<L: Listener>(&self, listener: Arc<L>) -> SubscriberHandle {
        let entries = listener::entries(listener);
        self.add(entries, None, None)
    }

    /// Subscribes an async listener to events of type `E`: a Tokio task that handles them one at a time
    /// from a queue of `capacity` events (see the [module documentation](self) for what a full queue does).
    ///
    /// # Panics
    /// If `capacity` is 0, or if called outside a Tokio runtime.
    pub fn subscribe_async<E, F, Fut, R>(&self, capacity: usize, handler: F) -> SubscriberHandle
    where
        E: DomainEvent,
        F: Fn(Arc<Envelope<E>>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: HandlerResult + 'static,
    {
        let handler: AsyncFn = Arc::new(move |env: Arc<dyn ErasedEnvelope>| {
            match env.into_any().downcast::<Envelope<E>>() {
                Ok(env) => handler(env).map(HandlerResult::into_result).boxed(),
                Err(_) => async { Ok(()) }.boxed(),
            }
        });
        self.add_async(Some(TypeId::of::<E>()), type_name::<E>(), capacity, handler)
    }

    /// Subscribes an async listener to every event, whatever its type (e.g. a relay to a broker).
    ///
    /// # Panics
    /// If `capacity` is 0, or if called outside a Tokio runtime.
    pub fn subscribe_all_async<F, Fut, R>(&self, capacity: usize, handler: F) -> SubscriberHandle
    where
        F: Fn(Arc<dyn ErasedEnvelope>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: HandlerResult + 'static,
    {
        let handler: AsyncFn = Arc::new(move |env: Arc<dyn ErasedEnvelope>| {
            handler(env).map(HandlerResult::into_result).boxed()
        });
        self.add_async(None, "all", capacity, handler)
    }

    /// Runs `f` with `handler` subscribed to `E` **on the current thread only** (Wisper's temporary
    /// listeners): events published by other threads meanwhile are not delivered to it.
    pub fn scoped<E: DomainEvent, R: HandlerResult, T>(
        &self,
        handler: impl Fn(&Envelope<E>) -> R + Send + Sync + 'static,
        f: impl FnOnce() -> T,
    ) -> T {
        let scope = scope::next_scope_id();
        let _sub = self
            .add_one(Self::typed_entry::<E, R>(handler), None, Some(scope))
            .guard();
        let _enter = ThreadScope::enter(scope);
        f()
    }

    /// The async form of [`scoped`](Self::scoped): `handler` receives the events of type `E` that `fut`
    /// publishes (in this Tokio task), and no others.
    pub async fn scoped_async<E: DomainEvent, R: HandlerResult, F: Future>(
        &self,
        handler: impl Fn(&Envelope<E>) -> R + Send + Sync + 'static,
        fut: F,
    ) -> F::Output {
        let scope = scope::next_scope_id();
        let _sub = self
            .add_one(Self::typed_entry::<E, R>(handler), None, Some(scope))
            .guard();
        scope::in_task_scope(scope, fut).await
    }

    /// Removes a subscription; `false` if it was not (or no longer) on this bus.
    pub fn unsubscribe(&self, subscription: &SubscriberHandle) -> bool {
        self.inner.unsubscribe_id(subscription.id())
    }

    /// Publishes `event` without waiting: sync handlers run now; async listeners get it queued, unless a
    /// queue is full, in which case nobody gets it and [`PublishError::Full`] is returned.
    ///
    /// # Errors
    /// [`PublishError::Handlers`] when sync handlers failed (the event was still published),
    /// [`PublishError::Full`], [`PublishError::Closed`].
    pub fn try_publish<E: DomainEvent>(&self, event: E) -> Result<Delivery, PublishError> {
        self.try_publish_from(None, event, PublishOptions::default())
    }

    /// [`try_publish`](Self::try_publish) with explicit metadata.
    ///
    /// # Errors
    /// As for [`try_publish`](Self::try_publish).
    pub fn try_publish_with<E: DomainEvent>(
        &self,
        event: E,
        options: PublishOptions,
    ) -> Result<Delivery, PublishError> {
        self.try_publish_from(None, event, options)
    }

    /// Publishes `event`: sync handlers run now; for each async listener, waits for room in its queue.
    ///
    /// # Errors
    /// [`PublishError::Handlers`] when sync handlers failed (the event was still published),
    /// [`PublishError::Closed`].
    pub async fn publish<E: DomainEvent>(&self, event: E) -> Result<Delivery, PublishError> {
        self.publish_from(None, event, PublishOptions::default())
            .await
    }

    /// [`publish`](Self::publish) with explicit metadata.
    ///
    /// # Errors
    /// As for [`publish`](Self::publish).
    pub async fn publish_with<E: DomainEvent>(
        &self,
        event: E,
        options: PublishOptions,
    ) -> Result<Delivery, PublishError> {
        self.publish_from(None, event, options).await
    }

    /// Whether [`shutdown`](Self::shutdown) has been called.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// Closes every async listener, waits until each has handled what was queued, and makes later
    /// publishes fail with [`PublishError::Closed`].
    pub async fn shutdown(&self) {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.root.cancel();
        let tasks = std::mem::take(
            &mut *self
                .inner
                .tasks
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for task in tasks {
            // A listener task only ends with an error if it was aborted; nothing to do then.
            let _ = task.await;
        }
    }
}
