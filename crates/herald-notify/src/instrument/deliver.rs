//! The delivery path of [`Notifier`]: adding subscribers, the per-thread cache that maps a name to its
//! matching subscribers (see the module docs' cost model), and running the work between `start` and
//! `finish` with each subscriber behind the panic policy.

use std::cell::RefCell;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError};

use super::{
    Event, GLOBAL_SUBSCRIBERS, Handler, Matched, Notifier, Outcome, Pattern, Payload, Started, Sub,
    event,
};
use crate::clock;
use crate::panic::{PanicPolicy, PanicReport, panic_message, report};
use crate::scope::ScopeId;
use crate::subscriber::{SubscriberHandle, Unsubscribe};
use crate::tlcache::LocalCache;

thread_local! {
    static CACHE: RefCell<LocalCache<Box<str>, Matched>> = const { RefCell::new(LocalCache::new()) };
    static STATIC_CACHE: RefCell<LocalCache<(usize, usize), Matched>> =
        const { RefCell::new(LocalCache::new()) };
}

impl Notifier {
    pub(super) fn handle(&self, id: u64) -> SubscriberHandle {
        let owner: Arc<dyn Unsubscribe> = self.inner.clone();
        SubscriberHandle::new(id, Arc::downgrade(&owner))
    }

    pub(super) fn add(&self, pattern: Pattern, handler: Handler, scope: Option<ScopeId>) -> u64 {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let sub = Arc::new(Sub {
            id,
            pattern,
            handler,
            scope,
            live: AtomicBool::new(true),
        });
        let mut reg = self.inner.registry();
        reg.push(sub);
        self.inner.count.fetch_add(1, Ordering::Relaxed);
        if self.inner.is_global() {
            GLOBAL_SUBSCRIBERS.fetch_add(1, Ordering::Relaxed);
        }
        self.inner.generation.fetch_add(1, Ordering::Release);
        id
    }

    pub(super) fn compute(&self, name: &str) -> Matched {
        let reg = self.inner.registry();
        let subs: Box<[Arc<Sub>]> = reg
            .iter()
            .filter(|s| s.pattern.matches(name))
            .cloned()
            .collect();
        let any_span = subs.iter().any(|s| matches!(s.handler, Handler::Span(_)));
        Matched { subs, any_span }
    }

    /// Like [`lookup`](Self::lookup) for a `'static` name, keyed by the string's address and length:
    /// static strings never move or change, so equal keys mean equal names (equal names at different
    /// addresses just get separate entries).
    #[inline]
    pub(super) fn lookup_static(&self, name: &'static str) -> Rc<Matched> {
        let generation = self.inner.generation.load(Ordering::Acquire);
        let key = (name.as_ptr() as usize, name.len());
        STATIC_CACHE
            .try_with(|cache| {
                cache
                    .borrow_mut()
                    .get_copy(self.inner.id, generation, key, || self.compute(name))
            })
            .unwrap_or_else(|_| Rc::new(self.compute(name)))
    }

    /// The subscribers whose pattern matches `name`, from this thread's cache when it is current.
    #[inline]
    pub(super) fn lookup(&self, name: &str) -> Rc<Matched> {
        let generation = self.inner.generation.load(Ordering::Acquire);
        CACHE
            .try_with(|cache| {
                cache
                    .borrow_mut()
                    .get(self.inner.id, generation, name, || self.compute(name))
            })
            // The thread-local is gone only while the thread is being torn down.
            .unwrap_or_else(|_| Rc::new(self.compute(name)))
    }

    #[inline(always)]
    pub(super) fn deliver(&self, sub: &Sub, name: &str, f: impl FnOnce()) {
        match self.panic_policy() {
            PanicPolicy::Propagate => f(),
            PanicPolicy::Isolate => {
                if let Err(panic) = catch_unwind(AssertUnwindSafe(f)) {
                    self.inner.panics.fetch_add(1, Ordering::Relaxed);
                    let reporter = self
                        .inner
                        .reporter
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .clone();
                    report(
                        reporter.as_ref(),
                        PanicReport {
                            event: name.to_owned(),
                            subscription: sub.id,
                            message: panic_message(&*panic),
                        },
                    );
                }
            }
        }
    }

    /// The slow path: someone is subscribed to something.
    #[inline(never)]
    pub(super) fn run<const NOTIFY: bool, P: Payload, R>(
        &self,
        name: &str,
        lookup: impl FnOnce() -> Rc<Matched>,
        payload: impl FnOnce() -> P,
        work: impl FnOnce() -> R,
        outcome: fn(&R) -> Outcome<'_>,
    ) -> R {
        let matched = lookup();
        // Which span subscribers got `start` (so exactly those get `finish`), for the first 64.
        let mut started: u64 = 0;
        let mut any = false;
        for (i, s) in matched.subs.iter().enumerate() {
            if s.deliverable() {
                any = true;
                if i < 64 && matches!(s.handler, Handler::Span(_)) {
                    started |= 1 << i;
                }
            }
        }
        if !any {
            return work();
        }
        let payload = payload();
        let payload: &dyn Payload = &payload;
        let start = clock::raw();
        if matched.any_span {
            let event = Started {
                name,
                payload,
                start,
                wall: event::WallRef::new(),
            };
            for (i, s) in matched.subs.iter().enumerate() {
                if let Handler::Span(span) = &s.handler
                    && (if i < 64 {
                        started & (1 << i) != 0
                    } else {
                        s.deliverable()
                    })
                {
                    self.deliver(s, name, || span.start(&event));
                }
            }
        }
        let result = catch_unwind(AssertUnwindSafe(work));
        let finish = if NOTIFY { start } else { clock::raw() };
        {
            let outcome = match &result {
                Ok(r) => outcome(r),
                Err(_) => Outcome::Panicked,
            };
            let event = Event {
                name,
                payload,
                start,
                finish,
                outcome,
                wall: event::WallRef::new(),
            };
            for (i, s) in matched.subs.iter().enumerate() {
                match &s.handler {
                    Handler::Timed(f) => {
                        if s.deliverable() {
                            self.deliver(s, name, || f(&event));
                        }
                    }
                    Handler::Span(span) => {
                        let got_start = if i < 64 {
                            started & (1 << i) != 0
                        } else {
                            s.in_scope()
                        };
                        if got_start {
                            self.deliver(s, name, || span.finish(&event));
                        }
                    }
                }
            }
        }
        match result {
            Ok(r) => r,
            Err(panic) => resume_unwind(panic),
        }
    }
}
