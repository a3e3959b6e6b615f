//! A bridge from instrumentation events to `tracing`.
//!
//! [`install`] subscribes a [`SpanSubscriber`] that opens a `tracing` span named
//! `herald.instrument` (target `herald_notify`, level DEBUG) around each matching instrumented block, with
//! the fields `event` (the name) and `payload` (its `Debug` form), and records `duration_ns` and `outcome`
//! on it when the block finishes, followed by a DEBUG event inside the span. Spans nest the way the
//! instrumented blocks nest, so a `sql.query` inside a `http.request` shows up as its child.
//!
//! With no `tracing` subscriber installed (or DEBUG disabled for `herald_notify`), the bridge costs a
//! callsite-interest check per event; the payload is not formatted.
//!
//! ```
//! use herald_notify::{Notifier, Pattern, tracing_bridge};
//!
//! let notifier = Notifier::new();
//! let _bridge = tracing_bridge::install(&notifier, Pattern::all()).guard();
//! notifier.instrument("sql.query", || "SELECT 1", || ());
//! ```

use std::cell::RefCell;

use tracing::field::Empty;
use tracing::span::EnteredSpan;

use super::{Event, Notifier, Outcome, Pattern, SpanSubscriber, Started};
use crate::SubscriberHandle;

thread_local! {
    static OPEN: RefCell<Vec<EnteredSpan>> = const { RefCell::new(Vec::new()) };
}

struct Bridge;

impl SpanSubscriber for Bridge {
    fn start(&self, event: &Started<'_>) {
        let span = tracing::debug_span!(
            target: "herald_notify",
            "herald.instrument",
            event = event.name(),
            payload = ?event.payload(),
            duration_ns = Empty,
            outcome = Empty,
        );
        OPEN.with(|open| open.borrow_mut().push(span.entered()));
    }

    fn finish(&self, event: &Event<'_>) {
        let Some(span) = OPEN.with(|open| open.borrow_mut().pop()) else {
            return;
        };
        let duration_ns = u64::try_from(event.duration().as_nanos()).unwrap_or(u64::MAX);
        let outcome = match event.outcome() {
            Outcome::Ok => "ok",
            Outcome::Error(_) => "error",
            Outcome::Panicked => "panicked",
        };
        span.record("duration_ns", duration_ns);
        span.record("outcome", outcome);
        match event.error() {
            Some(err) => tracing::debug!(
                target: "herald_notify",
                event = event.name(),
                duration_ns,
                outcome,
                error = %err,
                "instrumented block failed"
            ),
            None => tracing::debug!(
                target: "herald_notify",
                event = event.name(),
                duration_ns,
                outcome,
                "instrumented block finished"
            ),
        }
        drop(span);
    }
}

/// Subscribes the tracing bridge to the events matching `pattern` on `notifier`.
pub fn install(notifier: &Notifier, pattern: impl Into<Pattern>) -> SubscriberHandle {
    notifier.subscribe_span(pattern, Bridge)
}
