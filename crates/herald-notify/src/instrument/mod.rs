//! Instrumentation: named, timed, in-memory events with subscribers (ActiveSupport::Notifications).
//!
//! Instrumentation events are never stored. They exist so that code can say "this happened and took this
//! long" (`sql.query`, `cache.read`, `http.request`) at the cost of one atomic load when nobody listens,
//! and so that logging, metrics and tracing can subscribe to them by name, glob or regex.
//!
//! # Cost model
//!
//! * No subscriber on the notifier at all: one relaxed atomic load, then the work.
//!   The payload closure is never called and no clock is read.
//! * Some subscribers, none matching this name: a per-thread cache lookup (name → matching subscribers),
//!   invalidated by a generation counter that every subscribe/unsubscribe bumps. For `&'static str` names
//!   ([`Notifier::instrument`]) the cache is keyed by the string's address, with a one-entry memo in front,
//!   so the lookup hashes nothing; for run-time names ([`Notifier::instrument_dyn`]) the name is hashed
//!   with FxHash.
//! * Matching subscribers: the payload is built once, the CPU's time-stamp counter is read twice (once for
//!   `notify`), each subscriber is called in subscription order, each behind `catch_unwind`. Durations are
//!   scaled and wall-clock times computed only when a subscriber asks for them.
//!
//! Subscriber lists are snapshots: a subscription made while an event is being delivered does not get that
//! event, and an unsubscribed handler is skipped by every delivery that starts after `unsubscribe`
//! returns (a span subscriber that saw `start` still gets its `finish`).

mod deliver;
mod event;
mod pattern;
pub mod tracing_bridge;

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};

pub use event::{ErrorInfo, Event, Outcome, Payload, Started};
pub use pattern::Pattern;

use crate::panic::{PanicPolicy, PanicReport, PanicReporter};
use crate::scope::{self, ScopeId, ThreadScope};
use crate::subscriber::{SubscriberHandle, Unsubscribe};

fn result_outcome<T, E: ErrorInfo>(r: &Result<T, E>) -> Outcome<'_> {
    match r {
        Ok(_) => Outcome::Ok,
        Err(e) => Outcome::Error(e),
    }
}

/// A subscriber that sees both ends of every instrumented block, for spans.
///
/// `start` is called before the work runs and `finish` after it (also when it returned an error or
/// panicked), on the same thread, properly nested: a subscriber that needs per-call state keeps a
/// thread-local stack, as the [tracing bridge](tracing_bridge) does. For `notify`, both are called at once.
pub trait SpanSubscriber: Send + Sync + 'static {
    /// The work is about to run.
    fn start(&self, event: &Started<'_>);
    /// The work has finished.
    fn finish(&self, event: &Event<'_>);
}

type TimedFn = Box<dyn Fn(&Event<'_>) + Send + Sync>;

enum Handler {
    Timed(TimedFn),
    Span(Box<dyn SpanSubscriber>),
}

struct Sub {
    id: u64,
    pattern: Pattern,
    handler: Handler,
    scope: Option<ScopeId>,
    live: AtomicBool,
}

impl Sub {
    #[inline]
    fn in_scope(&self) -> bool {
        self.scope.is_none_or(scope::is_active)
    }

    #[inline]
    fn deliverable(&self) -> bool {
        self.live.load(Ordering::Acquire) && self.in_scope()
    }
}

/// The subscribers matching one name, as cached per thread.
struct Matched {
    subs: Box<[Arc<Sub>]>,
    any_span: bool,
}

struct Inner {
    id: u64,
    count: AtomicUsize,
    generation: AtomicU64,
    registry: Mutex<Vec<Arc<Sub>>>,
    next_id: AtomicU64,
    policy: AtomicU8,
    reporter: Mutex<Option<PanicReporter>>,
    panics: AtomicU64,
}

impl Inner {
    fn is_global(&self) -> bool {
        LazyLock::get(&GLOBAL).is_some_and(|g| std::ptr::eq(&*g.inner, self))
    }

    fn registry(&self) -> MutexGuard<'_, Vec<Arc<Sub>>> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Unsubscribe for Inner {
    fn unsubscribe_id(&self, id: u64) -> bool {
        let mut reg = self.registry();
        let Some(pos) = reg.iter().position(|s| s.id == id) else {
            return false;
        };
        let sub = reg.remove(pos);
        sub.live.store(false, Ordering::Release);
        self.count.fetch_sub(1, Ordering::Relaxed);
        if self.is_global() {
            GLOBAL_SUBSCRIBERS.fetch_sub(1, Ordering::Relaxed);
        }
        self.generation.fetch_add(1, Ordering::Release);
        true
    }
}

static NEXT_NOTIFIER: AtomicU64 = AtomicU64::new(1);
static GLOBAL: LazyLock<Notifier> = LazyLock::new(Notifier::new);

/// The global notifier's subscriber count, mirrored in a plain static so that the crate-level functions
/// can skip the global's lazy initialisation check on the no-subscriber path.
static GLOBAL_SUBSCRIBERS: AtomicUsize = AtomicUsize::new(0);

/// Whether the global notifier has any subscriber (the crate-level functions' fast path).
#[inline]
pub(crate) fn global_has_subscribers() -> bool {
    GLOBAL_SUBSCRIBERS.load(Ordering::Relaxed) != 0
}

/// An instrumentation hub: subscribers register with it, `instrument`/`notify` deliver through it.
///
/// There is one process-global notifier ([`Notifier::global`], used by the crate-level functions such as
/// [`instrument()`](crate::instrument())), and any number of independent ones from [`Notifier::new`], which is
/// what tests should use so that they do not see each other's subscribers. Cloning a `Notifier` gives
/// another handle to the same hub.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use herald_notify::Notifier;
///
/// let notifier = Notifier::new();
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let log = seen.clone();
/// let sub = notifier.subscribe("sql.*", move |event| {
///     log.lock().unwrap().push((event.name().to_owned(), format!("{:?}", event.payload())));
/// });
///
/// let rows = notifier.instrument("sql.query", || "SELECT 1", || 1 + 1);
/// assert_eq!(rows, 2);
/// assert_eq!(*seen.lock().unwrap(), [("sql.query".to_owned(), "\"SELECT 1\"".to_owned())]);
///
/// sub.unsubscribe();
/// notifier.instrument("sql.query", || "SELECT 2", || ());
/// assert_eq!(seen.lock().unwrap().len(), 1);
/// ```
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

impl Default for Notifier {
    fn default() -> Self {
        Notifier::new()
    }
}

impl fmt::Debug for Notifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notifier")
            .field("id", &self.inner.id)
            .field("subscribers", &self.inner.count.load(Ordering::Relaxed))
            .field("panic_policy", &self.panic_policy())
            .finish()
    }
}

/// Builds a [`Notifier`] with non-default settings.
#[derive(Default)]
pub struct NotifierBuilder {
    policy: PanicPolicy,
    reporter: Option<PanicReporter>,
}

impl fmt::Debug for NotifierBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NotifierBuilder")
            .field("policy", &self.policy)
            .field("reporter", &self.reporter.is_some())
            .finish()
    }
}

impl NotifierBuilder {
    /// What a panicking subscriber does (default: [`PanicPolicy::Isolate`]).
    pub fn panic_policy(mut self, policy: PanicPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Where isolated panics are reported (default: a `tracing` error event).
    pub fn panic_reporter(
        mut self,
        reporter: impl Fn(&PanicReport) + Send + Sync + 'static,
    ) -> Self {
        self.reporter = Some(Arc::new(reporter));
        self
    }

    /// Builds the notifier.
    pub fn build(self) -> Notifier {
        Notifier {
            inner: Arc::new(Inner {
                id: NEXT_NOTIFIER.fetch_add(1, Ordering::Relaxed),
                count: AtomicUsize::new(0),
                generation: AtomicU64::new(0),
                registry: Mutex::new(Vec::new()),
                next_id: AtomicU64::new(1),
                policy: AtomicU8::new(self.policy.to_u8()),
                reporter: Mutex::new(self.reporter),
                panics: AtomicU64::new(0),
            }),
        }
    }
}

impl Notifier {
    /// A new, independent notifier with default settings.
    pub fn new() -> Self {
        NotifierBuilder::default().build()
    }

    /// A builder for a notifier with non-default settings.
    pub fn builder() -> NotifierBuilder {
        NotifierBuilder::default()
    }

    /// The process-global notifier used by the crate-level functions.
    #[inline]
    pub fn global() -> &'static Notifier {
        &GLOBAL
    }

    /// The current panic policy.
    #[inline]
    pub fn panic_policy(&self) -> PanicPolicy {
        PanicPolicy::from_u8(self.inner.policy.load(Ordering::Relaxed))
    }

    /// Changes the panic policy (useful for the global notifier in tests).
    pub fn set_panic_policy(&self, policy: PanicPolicy) {
        self.inner.policy.store(policy.to_u8(), Ordering::Relaxed);
    }

    /// Changes where isolated panics are reported.
    pub fn set_panic_reporter(&self, reporter: impl Fn(&PanicReport) + Send + Sync + 'static) {
        *self
            .inner
            .reporter
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(reporter));
    }

    /// How many subscriber panics have been caught and isolated so far.
    pub fn panics_caught(&self) -> u64 {
        self.inner.panics.load(Ordering::Relaxed)
    }

    /// How many subscriptions (including scoped ones) are registered.
    pub fn subscriber_count(&self) -> usize {
        self.inner.count.load(Ordering::Relaxed)
    }

    /// Runs `work`, timing it, and delivers an [`Event`] to the subscribers matching `name`.
    ///
    /// Returns what `work` returned, untouched. `payload` is called at most once, and only when some
    /// subscriber will receive the event. If `work` panics, subscribers see [`Outcome::Panicked`] and the
    /// panic then continues. Use [`try_instrument`](Self::try_instrument) for work that returns a `Result`
    /// whose error subscribers should see.
    ///
    /// `name` is a `&'static str` (a literal, usually): the per-thread subscriber cache is then keyed by
    /// the string's address, which needs no hashing of its contents. For names built at run time use
    /// [`instrument_dyn`](Self::instrument_dyn).
    #[inline]
    pub fn instrument<P: Payload, T>(
        &self,
        name: &'static str,
        payload: impl FnOnce() -> P,
        work: impl FnOnce() -> T,
    ) -> T {
        if self.inner.count.load(Ordering::Relaxed) == 0 {
            return work();
        }
        self.run::<false, _, _>(
            name,
            || self.lookup_static(name),
            payload,
            work,
            |_| Outcome::Ok,
        )
    }

    /// [`instrument`](Self::instrument) for a name built at run time (a few nanoseconds more: the
    /// name's contents are hashed for the cache lookup).
    #[inline]
    pub fn instrument_dyn<P: Payload, T>(
        &self,
        name: &str,
        payload: impl FnOnce() -> P,
        work: impl FnOnce() -> T,
    ) -> T {
        if self.inner.count.load(Ordering::Relaxed) == 0 {
            return work();
        }
        self.run::<false, _, _>(name, || self.lookup(name), payload, work, |_| Outcome::Ok)
    }

    /// Like [`instrument`](Self::instrument) for work that returns a `Result`: an `Err` is shown to the
    /// subscribers as [`Outcome::Error`] and then returned to the caller untouched.
    ///
    /// ```
    /// use herald_notify::{Notifier, Outcome};
    /// use std::sync::{Arc, atomic::{AtomicBool, Ordering}};
    ///
    /// let notifier = Notifier::new();
    /// let saw_error = Arc::new(AtomicBool::new(false));
    /// let flag = saw_error.clone();
    /// let _sub = notifier.subscribe("io.read", move |e| {
    ///     if let Outcome::Error(err) = e.outcome() {
    ///         flag.store(err.to_string() == "disk on fire", Ordering::SeqCst);
    ///     }
    /// });
    /// let result: Result<u32, String> =
    ///     notifier.try_instrument("io.read", || (), || Err("disk on fire".to_owned()));
    /// assert_eq!(result, Err("disk on fire".to_owned()));
    /// assert!(saw_error.load(Ordering::SeqCst));
    /// ```
    #[inline]
    pub fn try_instrument<P: Payload, T, E: ErrorInfo>(
        &self,
        name: &'static str,
        payload: impl FnOnce() -> P,
        work: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        if self.inner.count.load(Ordering::Relaxed) == 0 {
            return work();
        }
        self.run::<false, _, _>(
            name,
            || self.lookup_static(name),
            payload,
            work,
            result_outcome,
        )
    }

    /// [`try_instrument`](Self::try_instrument) for a name built at run time.
    #[inline]
    pub fn try_instrument_dyn<P: Payload, T, E: ErrorInfo>(
        &self,
        name: &str,
        payload: impl FnOnce() -> P,
        work: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        if self.inner.count.load(Ordering::Relaxed) == 0 {
            return work();
        }
        self.run::<false, _, _>(name, || self.lookup(name), payload, work, result_outcome)
    }

    /// Delivers an event without work: start and finish are the same instant (one clock read).
    #[inline]
    pub fn notify<P: Payload>(&self, name: &'static str, payload: impl FnOnce() -> P) {
        if self.inner.count.load(Ordering::Relaxed) == 0 {
            return;
        }
        self.run::<true, _, _>(
            name,
            || self.lookup_static(name),
            payload,
            || (),
            |_| Outcome::Ok,
        );
    }

    /// [`notify`](Self::notify) for a name built at run time.
    #[inline]
    pub fn notify_dyn<P: Payload>(&self, name: &str, payload: impl FnOnce() -> P) {
        if self.inner.count.load(Ordering::Relaxed) == 0 {
            return;
        }
        self.run::<true, _, _>(name, || self.lookup(name), payload, || (), |_| Outcome::Ok);
    }

    /// Whether an event named `name` would currently be delivered to anyone (from this thread/task).
    pub fn is_listening(&self, name: &str) -> bool {
        self.inner.count.load(Ordering::Relaxed) != 0
            && self.lookup(name).subs.iter().any(|s| s.deliverable())
    }

    /// Subscribes `handler` to the finished events whose names match `pattern`.
    ///
    /// `pattern` is anything that converts into a [`Pattern`]: `"sql.query"`, `"sql.*"`, a `Regex`,
    /// [`Pattern::all()`]. Handlers run on the instrumenting thread, in subscription order.
    pub fn subscribe(
        &self,
        pattern: impl Into<Pattern>,
        handler: impl Fn(&Event<'_>) + Send + Sync + 'static,
    ) -> SubscriberHandle {
        let id = self.add(pattern.into(), Handler::Timed(Box::new(handler)), None);
        self.handle(id)
    }

    /// Subscribes a [`SpanSubscriber`], which sees both the start and the finish of each block.
    pub fn subscribe_span(
        &self,
        pattern: impl Into<Pattern>,
        subscriber: impl SpanSubscriber,
    ) -> SubscriberHandle {
        let id = self.add(pattern.into(), Handler::Span(Box::new(subscriber)), None);
        self.handle(id)
    }

    /// Removes a subscription; `false` if it was not (or no longer) on this notifier.
    pub fn unsubscribe(&self, subscription: &SubscriberHandle) -> bool {
        self.inner.unsubscribe_id(subscription.id())
    }

    /// Runs `f` with `handler` subscribed to `pattern` for the duration of `f`, **on the current thread
    /// only**: events instrumented by other threads at the same time are not delivered to it.
    ///
    /// ```
    /// use herald_notify::Notifier;
    /// use std::sync::{Arc, atomic::{AtomicUsize, Ordering}};
    ///
    /// let notifier = Notifier::new();
    /// let count = Arc::new(AtomicUsize::new(0));
    /// let c = count.clone();
    /// notifier.subscribed("cache.*", move |_| { c.fetch_add(1, Ordering::SeqCst); }, || {
    ///     notifier.notify("cache.read", || "key");
    ///     notifier.notify("cache.write", || "key");
    /// });
    /// notifier.notify("cache.read", || "after"); // not delivered: the scope has ended
    /// assert_eq!(count.load(Ordering::SeqCst), 2);
    /// assert_eq!(notifier.subscriber_count(), 0);
    /// ```
    pub fn subscribed<R>(
        &self,
        pattern: impl Into<Pattern>,
        handler: impl Fn(&Event<'_>) + Send + Sync + 'static,
        f: impl FnOnce() -> R,
    ) -> R {
        let scope = scope::next_scope_id();
        let id = self.add(
            pattern.into(),
            Handler::Timed(Box::new(handler)),
            Some(scope),
        );
        let _sub = self.handle(id).guard();
        let _enter = ThreadScope::enter(scope);
        f()
    }

    /// The async form of [`subscribed`](Self::subscribed): `handler` receives the events instrumented by
    /// `fut` (in this Tokio task, across `.await` points and worker threads), and no others.
    pub async fn subscribed_async<F: Future>(
        &self,
        pattern: impl Into<Pattern>,
        handler: impl Fn(&Event<'_>) + Send + Sync + 'static,
        fut: F,
    ) -> F::Output {
        let scope = scope::next_scope_id();
        let id = self.add(
            pattern.into(),
            Handler::Timed(Box::new(handler)),
            Some(scope),
        );
        let _sub = self.handle(id).guard();
        scope::in_task_scope(scope, fut).await
    }
}
