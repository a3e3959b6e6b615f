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
//! A sync publish to one listener costs about 23 ns of CPU on the 2-vCPU virtual machines measured
//! (`benchmarks/notify.md`), about 17 ns with [`Timestamps::Coarse`]. Measured by elimination on that
//! path:
//!
//! * the timestamp, ~6–10 ns: one read of the CPU's time-stamp counter (slow under virtualisation),
//!   scaled against a per-thread (wall, counter) anchor refreshed every second. [`Timestamps::Coarse`]
//!   replaces it with one atomic load.
//! * the event context, ~3 ns: reading the current one for causation/correlation, and making the new
//!   event current around the handlers (a flag and the ids in thread-locals).
//! * the UUIDv7 id, ~1 ns: a per-thread SplitMix64 draw, no system call.
//! * the rest, ~10 ns: the per-thread cached type → subscription lookup, the dynamic call and the type
//!   check into the handler, the envelope and the returned [`Delivery`]. Panic isolation costs nothing
//!   until a handler panics: with one handler the `catch_unwind` is inlined around it, with several one
//!   `catch_unwind` covers the loop, which resumes after a handler that panicked.
//!
//! Nothing is allocated on a sync publish; a publish that queues for async listeners allocates one
//! `Arc` for the envelope they share.
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

mod context;
mod error;
mod event;
mod ids;
mod listener;
mod store;

use std::any::{TypeId, type_name};
use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use context::EventContext;
pub use error::{BoxError, HandlerError, HandlerFailure, PublishError};
pub use event::{DomainEvent, Envelope, ErasedEnvelope, EventMeta, PublishOptions, StoredAt};
pub use listener::{Handlers, Listener};
pub use store::{Batch, Published, StorePublisher};

use crate::clock;
use crate::panic::{PanicPolicy, PanicReport, PanicReporter, panic_message, report};
use crate::scope::{self, ScopeId, ThreadScope};
use crate::subscriber::{SubscriberHandle, Unsubscribe};
use crate::tlcache::LocalCache;

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
/// | [`Precise`](Self::Precise) | one time-stamp counter read, ~6–10 ns on the virtual machines measured | nanoseconds: the counter calibrated against the OS clock, anchored to the OS wall clock once a second per thread (see the [module's cost notes](crate::bus#cost)) |
/// | [`Coarse`](Self::Coarse) | one relaxed atomic load, ~1 ns | behind the precise time by up to one tick (1 ms) plus however long the OS delays the ticker thread (more on a loaded machine); never decreasing, unless the OS clock is set back by more than a second, which it then follows |
///
/// `Coarse` starts one process-wide thread, `herald-coarse-clock`, that refreshes the time every
/// millisecond while at least one bus uses it (about 1.7% of one core on the machines measured, mostly
/// the cost of waking up 1000 times a second), and ends within a tick of the last such bus being dropped.
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

impl Unsubscribe for BusInner {
    fn unsubscribe_id(&self, id: u64) -> bool {
        let mut reg = self.registry();
        let mut found = false;
        reg.retain(|e| {
            if e.id != id {
                return true;
            }
            found = true;
            e.live.store(false, Ordering::Release);
            if let Kind::Async { token, .. } = &e.kind {
                token.cancel();
            }
            false
        });
        if found {
            self.generation.fetch_add(1, Ordering::Release);
        }
        found
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

static NEXT_BUS: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static CACHE: RefCell<LocalCache<TypeId, Matched>> = const { RefCell::new(LocalCache::new()) };
}

/// Builds a [`Bus`] with non-default settings.
#[derive(Default)]
pub struct BusBuilder {
    token: Option<CancellationToken>,
    error_policy: ErrorPolicy,
    panic_policy: PanicPolicy,
    reporter: Option<PanicReporter>,
    timestamps: Timestamps,
}

impl fmt::Debug for BusBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BusBuilder")
            .field("error_policy", &self.error_policy)
            .field("panic_policy", &self.panic_policy)
            .field("timestamps", &self.timestamps)
            .finish_non_exhaustive()
    }
}

impl BusBuilder {
    /// Ties the async listeners to an application-wide cancellation token: when it is cancelled, each
    /// listener stops taking new events, handles what is queued, and ends (as on [`Bus::shutdown`], except
    /// that publishing is not refused: events then reach sync handlers only).
    pub fn cancellation_token(mut self, token: CancellationToken) -> Self {
        self.token = Some(token);
        self
    }

    /// Run all sync handlers, or stop at the first failure (default: run all).
    pub fn error_policy(mut self, policy: ErrorPolicy) -> Self {
        self.error_policy = policy;
        self
    }

    /// What a panicking sync handler does (default: isolate).
    pub fn panic_policy(mut self, policy: PanicPolicy) -> Self {
        self.panic_policy = policy;
        self
    }

    /// Where caught panics are reported (default: a `tracing` error event).
    pub fn panic_reporter(
        mut self,
        reporter: impl Fn(&PanicReport) + Send + Sync + 'static,
    ) -> Self {
        self.reporter = Some(Arc::new(reporter));
        self
    }

    /// Where event timestamps come from (default: [`Timestamps::Precise`]).
    pub fn timestamps(mut self, timestamps: Timestamps) -> Self {
        self.timestamps = timestamps;
        self
    }

    /// Builds the bus.
    pub fn build(self) -> Bus {
        let coarse = self.timestamps == Timestamps::Coarse && clock::coarse_acquire();
        if self.timestamps == Timestamps::Coarse && !coarse {
            tracing::warn!(
                target: "herald_notify",
                "could not start the coarse clock thread; this bus keeps precise timestamps"
            );
        }
        Bus {
            inner: Arc::new(BusInner {
                id: NEXT_BUS.fetch_add(1, Ordering::Relaxed),
                generation: AtomicU64::new(0),
                registry: Mutex::new(Vec::new()),
                next_id: AtomicU64::new(1),
                closed: AtomicBool::new(false),
                root: self
                    .token
                    .map_or_else(CancellationToken::new, |t| t.child_token()),
                tasks: Mutex::new(Vec::new()),
                error_policy: self.error_policy,
                panic_policy: self.panic_policy,
                reporter: self.reporter,
                panics: AtomicU64::new(0),
                async_failures: AtomicU64::new(0),
                coarse,
            }),
        }
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

fn typed_sync<E: DomainEvent, R: HandlerResult>(
    handler: impl Fn(&Envelope<E>) -> R + Send + Sync + 'static,
) -> SyncFn {
    Box::new(
        move |env: &dyn ErasedEnvelope| match env.downcast_ref::<E>() {
            Some(env) => handler(env).into_result(),
            // The type filter guarantees the type; an entry never sees another.
            None => Ok(()),
        },
    )
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

    // ----- internals -----

    fn typed_entry<E: DomainEvent, R: HandlerResult>(
        handler: impl Fn(&Envelope<E>) -> R + Send + Sync + 'static,
    ) -> NewEntry {
        NewEntry {
            type_filter: Some(TypeId::of::<E>()),
            label: E::EVENT_TYPE.into(),
            kind: Kind::Sync(typed_sync(handler)),
        }
    }

    fn handle(&self, id: u64) -> SubscriberHandle {
        let owner: Arc<dyn Unsubscribe> = self.inner.clone();
        SubscriberHandle::new(id, Arc::downgrade(&owner))
    }

    fn add_one(
        &self,
        entry: NewEntry,
        publisher: Option<u64>,
        scope: Option<ScopeId>,
    ) -> SubscriberHandle {
        self.add(vec![entry], publisher, scope)
    }

    fn add(
        &self,
        entries: Vec<NewEntry>,
        publisher: Option<u64>,
        scope: Option<ScopeId>,
    ) -> SubscriberHandle {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let mut reg = self.inner.registry();
        for e in entries {
            reg.push(Arc::new(Entry {
                id,
                type_filter: e.type_filter,
                publisher,
                scope,
                label: e.label,
                live: AtomicBool::new(true),
                kind: e.kind,
            }));
        }
        self.inner.generation.fetch_add(1, Ordering::Release);
        drop(reg);
        self.handle(id)
    }

    fn add_async(
        &self,
        type_filter: Option<TypeId>,
        label: &'static str,
        capacity: usize,
        handler: AsyncFn,
    ) -> SubscriberHandle {
        assert!(capacity > 0, "async listener capacity must be at least 1");
        let (tx, rx) = mpsc::channel(capacity);
        let token = self.inner.root.child_token();
        let inner = Arc::downgrade(&self.inner);
        let label: Arc<str> = label.into();
        let entry = NewEntry {
            type_filter,
            label: label.clone(),
            kind: Kind::Async {
                queue: tx,
                token: token.clone(),
            },
        };
        let sub = self.add_one(entry, None, None);
        let listener = AsyncListener {
            id: sub.id(),
            label,
            handler,
            bus: inner,
            reporter: self.inner.reporter.clone(),
        };
        let task = tokio::spawn(listener.run(rx, token));
        let mut tasks = self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
        sub
    }

    #[inline]
    fn lookup<E: 'static>(&self) -> Rc<Matched> {
        let generation = self.inner.generation.load(Ordering::Acquire);
        let key = TypeId::of::<E>();
        CACHE
            .try_with(|cache| {
                cache
                    .borrow_mut()
                    .get_copy(self.inner.id, generation, key, || self.compute(key))
            })
            .unwrap_or_else(|_| Rc::new(self.compute(key)))
    }

    fn compute(&self, key: TypeId) -> Matched {
        let reg = self.inner.registry();
        let entries: Arc<[Arc<Entry>]> = reg
            .iter()
            .filter(|e| e.type_filter.is_none_or(|t| t == key))
            .cloned()
            .collect();
        let any_async = entries.iter().any(|e| matches!(e.kind, Kind::Async { .. }));
        Matched { entries, any_async }
    }

    #[inline(always)]
    pub(crate) fn meta_for<E: DomainEvent>(&self, options: PublishOptions) -> EventMeta {
        self.meta_and_context::<E>(options).0
    }

    /// The metadata of a new event, and the context its handlers run in. The context is built from the
    /// ids while they are still in registers: reading them back from the freshly written metadata makes
    /// 16-byte loads of two 8-byte stores, which the CPU cannot forward and which stalled every publish
    /// for several nanoseconds.
    #[inline(always)]
    fn meta_and_context<E: DomainEvent>(
        &self,
        options: PublishOptions,
    ) -> (EventMeta, EventContext) {
        let (occurred_at, nanos) = match options.occurred_at {
            Some(at) => (at, clock::to_epoch_nanos(at)),
            None => {
                let nanos = if self.inner.coarse {
                    clock::coarse_wall_nanos()
                } else {
                    clock::wall_nanos()
                };
                (clock::from_epoch_nanos(nanos), nanos)
            }
        };
        let id = options.id.unwrap_or_else(|| ids::new_v7(nanos / 1_000_000));
        let ctx = EventContext::current();
        let correlation_id = options
            .correlation_id
            .or(ctx.map(|c| c.correlation_id))
            .unwrap_or(id);
        let meta = EventMeta {
            id,
            event_type: E::EVENT_TYPE,
            schema_version: E::SCHEMA_VERSION,
            occurred_at,
            correlation_id,
            causation_id: options.causation_id.or(ctx.map(|c| c.event_id)),
            stored: None,
        };
        (meta, EventContext::new(id, correlation_id))
    }

    /// Runs one sync handler under the panic policy. The caller makes the event the current context
    /// (once for a whole synchronous dispatch loop, or around each call when the loop awaits).
    #[inline(always)]
    fn call_sync(
        &self,
        entry: &Entry,
        f: &SyncFn,
        env: &dyn ErasedEnvelope,
    ) -> Result<(), HandlerError> {
        match self.inner.panic_policy {
            PanicPolicy::Propagate => f(env).map_err(HandlerError::Failed),
            PanicPolicy::Isolate => match catch_unwind(AssertUnwindSafe(|| f(env))) {
                Ok(r) => r.map_err(HandlerError::Failed),
                Err(panic) => Err(self.caught(entry, env, &*panic)),
            },
        }
    }

    /// Counts and reports a panic caught in `entry`'s handler.
    #[cold]
    fn caught(
        &self,
        entry: &Entry,
        env: &dyn ErasedEnvelope,
        panic: &(dyn std::any::Any + Send),
    ) -> HandlerError {
        self.inner.panics.fetch_add(1, Ordering::Relaxed);
        let message = panic_message(panic);
        report(
            self.inner.reporter.as_ref(),
            PanicReport {
                event: env.meta().event_type.to_owned(),
                subscription: entry.id,
                message: message.clone(),
            },
        );
        HandlerError::Panicked(message)
    }

    /// Delivers to one sync entry; returns `false` when the publish must stop (stop-at-first).
    ///
    /// Always inlined: as a call of its own (which the optimiser chose once `catch_unwind` was in it) it
    /// cost ~2–3 ns per publish in prologue, epilogue and arguments passed through memory.
    #[inline(always)]
    fn sync_step(
        &self,
        entry: &Entry,
        f: &SyncFn,
        env: &dyn ErasedEnvelope,
        handled: &mut usize,
        failures: &mut Vec<HandlerFailure>,
    ) -> bool {
        *handled += 1;
        if let Err(error) = self.call_sync(entry, f, env) {
            failures.push(HandlerFailure {
                subscription: entry.id,
                listener: entry.label.clone(),
                error,
            });
            if self.inner.error_policy == ErrorPolicy::StopAtFirst {
                return false;
            }
        }
        true
    }

    #[inline(always)]
    fn finish(
        meta: EventMeta,
        handled: usize,
        queued: usize,
        failures: Vec<HandlerFailure>,
    ) -> Result<Delivery, PublishError> {
        let delivery = Delivery {
            meta,
            handled,
            queued,
        };
        if failures.is_empty() {
            Ok(delivery)
        } else {
            Err(PublishError::Handlers {
                event_id: delivery.meta.id,
                failures,
                delivery: Box::new(delivery),
            })
        }
    }

    /// Delivers to sync entries only (no async listener matches).
    #[inline]
    fn dispatch_sync_only(
        &self,
        entries: &[Arc<Entry>],
        env: &dyn ErasedEnvelope,
        ctx: EventContext,
        from: Option<u64>,
    ) -> (usize, Vec<HandlerFailure>) {
        let mut handled = 0;
        let mut failures = Vec::new();
        ctx.enter(|| {
            if entries.len() < 2 || self.inner.panic_policy == PanicPolicy::Propagate {
                // One handler at most, or no isolation: nothing to batch.
                for entry in entries {
                    if let Kind::Sync(f) = &entry.kind
                        && entry.deliverable(from)
                        && !self.sync_step(entry, f, env, &mut handled, &mut failures)
                    {
                        break;
                    }
                }
                return;
            }
            // One `catch_unwind` around the whole loop rather than one per handler (~1 ns per handler
            // less with 10 handlers): `next` tells which handler panicked, and the loop resumes after it.
            // (With one handler the per-call form is as cheap: its closure moves less state.)
            let mut next = 0;
            while next < entries.len() {
                let run = catch_unwind(AssertUnwindSafe(|| {
                    self.run_sync(entries, env, from, &mut handled, &mut failures, &mut next);
                }));
                let Err(panic) = run else { break };
                let entry = &entries[next];
                let error = self.caught(entry, env, &*panic);
                failures.push(HandlerFailure {
                    subscription: entry.id,
                    listener: entry.label.clone(),
                    error,
                });
                if self.inner.error_policy == ErrorPolicy::StopAtFirst {
                    break;
                }
                next += 1;
            }
        });
        (handled, failures)
    }

    /// Runs the sync handlers of `entries` from index `*next` on, without catching panics; on a panic,
    /// `*next` is the index of the handler that panicked. Returns when every handler ran, or at the first
    /// failure under [`ErrorPolicy::StopAtFirst`].
    #[inline]
    fn run_sync(
        &self,
        entries: &[Arc<Entry>],
        env: &dyn ErasedEnvelope,
        from: Option<u64>,
        handled: &mut usize,
        failures: &mut Vec<HandlerFailure>,
        next: &mut usize,
    ) {
        while let Some(entry) = entries.get(*next) {
            if let Kind::Sync(f) = &entry.kind
                && entry.deliverable(from)
            {
                *handled += 1;
                if let Err(error) = f(env) {
                    failures.push(HandlerFailure {
                        subscription: entry.id,
                        listener: entry.label.clone(),
                        error: HandlerError::Failed(error),
                    });
                    if self.inner.error_policy == ErrorPolicy::StopAtFirst {
                        return;
                    }
                }
            }
            *next += 1;
        }
    }

    pub(crate) fn try_publish_from<E: DomainEvent>(
        &self,
        from: Option<u64>,
        event: E,
        options: PublishOptions,
    ) -> Result<Delivery, PublishError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(PublishError::Closed);
        }
        let matched = self.lookup::<E>();
        let (meta, ctx) = self.meta_and_context::<E>(options);
        if !matched.any_async {
            // The report's copy of the metadata is made now, from the values just computed, rather than
            // moved out of the envelope after delivery (same store-forwarding stall as above).
            let envelope = Envelope { meta, event };
            let (handled, failures) =
                self.dispatch_sync_only(&matched.entries, &envelope, ctx, from);
            return Self::finish(envelope.meta, handled, 0, failures);
        }
        let envelope = Envelope { meta, event };
        self.try_dispatch_queued(from, &matched, envelope)
    }

    /// `try_dispatch` when some async listener matches.
    #[inline(never)]
    fn try_dispatch_queued<E: DomainEvent>(
        &self,
        from: Option<u64>,
        matched: &Matched,
        envelope: Envelope<E>,
    ) -> Result<Delivery, PublishError> {
        // Reserve a slot in every queue first, so that a full queue means nobody gets the event.
        let mut permits = Vec::new();
        for (i, entry) in matched.entries.iter().enumerate() {
            if let Kind::Async { queue, .. } = &entry.kind
                && entry.deliverable(from)
            {
                match queue.try_reserve() {
                    Ok(permit) => permits.push((i, permit)),
                    Err(mpsc::error::TrySendError::Full(())) => {
                        return Err(PublishError::Full {
                            subscription: entry.id,
                        });
                    }
                    // The listener is gone: it is no longer subscribed.
                    Err(mpsc::error::TrySendError::Closed(())) => {}
                }
            }
        }
        let envelope = Arc::new(envelope);
        let mut permits = permits.into_iter().peekable();
        let mut handled = 0;
        let mut queued = 0;
        let mut failures = Vec::new();
        let _ctx = EventContext::of(&envelope.meta).enter_guard();
        for (i, entry) in matched.entries.iter().enumerate() {
            match &entry.kind {
                Kind::Sync(f) => {
                    if entry.deliverable(from)
                        && !self.sync_step(entry, f, &*envelope, &mut handled, &mut failures)
                    {
                        break;
                    }
                }
                Kind::Async { .. } => {
                    if let Some((_, permit)) = permits.next_if(|(j, _)| *j == i) {
                        permit.send(envelope.clone());
                        queued += 1;
                    }
                }
            }
        }
        Self::finish(envelope.meta.clone(), handled, queued, failures)
    }

    pub(crate) async fn publish_from<E: DomainEvent>(
        &self,
        from: Option<u64>,
        event: E,
        options: PublishOptions,
    ) -> Result<Delivery, PublishError> {
        let meta = self.meta_for::<E>(options);
        self.dispatch(from, Envelope { meta, event }).await
    }

    pub(crate) async fn dispatch<E: DomainEvent>(
        &self,
        from: Option<u64>,
        envelope: Envelope<E>,
    ) -> Result<Delivery, PublishError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(PublishError::Closed);
        }
        let (entries, any_async) = {
            let m = self.lookup::<E>();
            (m.entries.clone(), m.any_async)
        };
        if !any_async {
            let ctx = EventContext::of(&envelope.meta);
            let (handled, failures) = self.dispatch_sync_only(&entries, &envelope, ctx, from);
            return Self::finish(envelope.meta, handled, 0, failures);
        }
        let envelope = Arc::new(envelope);
        let mut handled = 0;
        let mut queued = 0;
        let mut failures = Vec::new();
        for entry in entries.iter() {
            if !entry.deliverable(from) {
                continue;
            }
            match &entry.kind {
                Kind::Sync(f) => {
                    // The loop awaits below, so the thread-local context is set per call only.
                    let go_on = EventContext::of(&envelope.meta).enter(|| {
                        self.sync_step(entry, f, &*envelope, &mut handled, &mut failures)
                    });
                    if !go_on {
                        break;
                    }
                }
                Kind::Async { queue, .. } => {
                    let erased: Arc<dyn ErasedEnvelope> = envelope.clone();
                    // An error means the listener is gone (unsubscribed meanwhile).
                    if queue.send(erased).await.is_ok() {
                        queued += 1;
                    }
                }
            }
        }
        Self::finish(envelope.meta.clone(), handled, queued, failures)
    }
}

/// The task behind one async listener.
struct AsyncListener {
    id: u64,
    label: Arc<str>,
    handler: AsyncFn,
    bus: std::sync::Weak<BusInner>,
    reporter: Option<PanicReporter>,
}

impl AsyncListener {
    async fn run(self, mut rx: mpsc::Receiver<Arc<dyn ErasedEnvelope>>, token: CancellationToken) {
        // Take whatever is queued in one go: fewer wake-ups and channel operations under load.
        const BATCH: usize = 64;
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            tokio::select! {
                biased;
                n = rx.recv_many(&mut batch, BATCH) => {
                    if n == 0 {
                        return;
                    }
                    for env in batch.drain(..) {
                        self.handle(env).await;
                    }
                }
                () = token.cancelled() => break,
            }
        }
        // Closing: refuse new events, handle the queued ones.
        rx.close();
        while let Some(env) = rx.recv().await {
            self.handle(env).await;
        }
    }

    async fn handle(&self, env: Arc<dyn ErasedEnvelope>) {
        let ctx = EventContext::of(env.meta());
        let event_type = env.meta().event_type;
        let event_id = env.meta().id;
        let fut = ctx.scope((self.handler)(env));
        match AssertUnwindSafe(fut).catch_unwind().await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                self.count_failure();
                tracing::error!(
                    target: "herald_notify",
                    listener = %self.label,
                    subscription = self.id,
                    event_type,
                    %event_id,
                    error = %error,
                    "async listener failed"
                );
            }
            Err(panic) => {
                self.count_failure();
                if let Some(bus) = self.bus.upgrade() {
                    bus.panics.fetch_add(1, Ordering::Relaxed);
                }
                report(
                    self.reporter.as_ref(),
                    PanicReport {
                        event: event_type.to_owned(),
                        subscription: self.id,
                        message: panic_message(&*panic),
                    },
                );
            }
        }
    }

    fn count_failure(&self) {
        if let Some(bus) = self.bus.upgrade() {
            bus.async_failures.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A publisher with local listeners: they receive only what this publisher publishes (Wisper's
/// `publisher.on(:event)`), while the bus's global listeners receive it too. Subscription order is shared
/// with the bus's other subscriptions.
#[derive(Clone, Debug)]
pub struct Publisher {
    bus: Bus,
    id: u64,
}

impl Publisher {
    /// The bus this publisher publishes on.
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// Subscribes a local sync handler to events of type `E` published by this publisher.
    pub fn subscribe<E: DomainEvent, R: HandlerResult>(
        &self,
        handler: impl Fn(&Envelope<E>) -> R + Send + Sync + 'static,
    ) -> SubscriberHandle {
        self.bus
            .add_one(Bus::typed_entry::<E, R>(handler), Some(self.id), None)
    }

    /// Subscribes a local listener object.
    pub fn subscribe_listener<L: Listener>(&self, listener: Arc<L>) -> SubscriberHandle {
        self.bus
            .add(listener::entries(listener), Some(self.id), None)
    }

    /// [`Bus::try_publish`] from this publisher.
    ///
    /// # Errors
    /// As for [`Bus::try_publish`].
    pub fn try_publish<E: DomainEvent>(&self, event: E) -> Result<Delivery, PublishError> {
        self.bus
            .try_publish_from(Some(self.id), event, PublishOptions::default())
    }

    /// [`Bus::publish`] from this publisher.
    ///
    /// # Errors
    /// As for [`Bus::publish`].
    pub async fn publish<E: DomainEvent>(&self, event: E) -> Result<Delivery, PublishError> {
        self.bus
            .publish_from(Some(self.id), event, PublishOptions::default())
            .await
    }
}
