//! The "current event": what causation and correlation ids are taken from.

use std::cell::Cell;
use std::future::Future;

use uuid::Uuid;

use super::EventMeta;

/// The event being handled right now, if any: the source of `causation_id` and `correlation_id` for
/// events published while handling it.
///
/// The bus sets it around every handler call (a thread-local for sync handlers, a Tokio task-local for
/// async listeners), so handlers do not have to pass ids around by hand. Application code can set it
/// too, e.g. from an incoming request's correlation header, with [`enter`](Self::enter) and
/// [`scope`](Self::scope).
///
/// ```
/// use herald_notify::EventContext;
/// use uuid::Uuid;
///
/// let ctx = EventContext::new(Uuid::nil(), Uuid::max());
/// assert_eq!(EventContext::current(), None);
/// ctx.enter(|| assert_eq!(EventContext::current(), Some(ctx)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventContext {
    /// The id of the event being handled (becomes the `causation_id` of events published now).
    pub event_id: Uuid,
    /// Its correlation id (inherited by events published now).
    pub correlation_id: Uuid,
}

thread_local! {
    static THREAD_CONTEXT: Cell<Option<EventContext>> = const { Cell::new(None) };
}

tokio::task_local! {
    static TASK_CONTEXT: EventContext;
}

struct Restore(Option<EventContext>);

impl Drop for Restore {
    fn drop(&mut self) {
        let prev = self.0;
        // Ignore failure: the thread-local is gone only during thread teardown.
        let _ = THREAD_CONTEXT.try_with(|c| c.set(prev));
    }
}

impl EventContext {
    /// A context for the event `event_id` in the correlation `correlation_id`.
    pub fn new(event_id: Uuid, correlation_id: Uuid) -> Self {
        EventContext {
            event_id,
            correlation_id,
        }
    }

    /// The context of the event described by `meta`.
    pub fn of(meta: &EventMeta) -> Self {
        EventContext {
            event_id: meta.id,
            correlation_id: meta.correlation_id,
        }
    }

    /// The innermost context active on this thread (sync handler) or in this task (async listener).
    #[inline]
    pub fn current() -> Option<Self> {
        THREAD_CONTEXT
            .try_with(Cell::get)
            .ok()
            .flatten()
            .or_else(|| TASK_CONTEXT.try_with(|c| *c).ok())
    }

    /// Runs `f` with this context current on this thread.
    #[inline]
    pub fn enter<R>(self, f: impl FnOnce() -> R) -> R {
        let _restore = self.enter_guard();
        f()
    }

    /// Makes this context current on this thread until the guard drops (never across an `.await`).
    #[inline]
    pub(crate) fn enter_guard(self) -> impl Drop {
        Restore(THREAD_CONTEXT.with(|c| c.replace(Some(self))))
    }

    /// Runs `fut` with this context current in the task, across `.await` points.
    ///
    /// A task spawned from a handler does not inherit the context; capture it with
    /// [`current`](Self::current) and run the task's future in [`scope`](Self::scope).
    pub async fn scope<F: Future>(self, fut: F) -> F::Output {
        TASK_CONTEXT.scope(self, fut).await
    }
}
