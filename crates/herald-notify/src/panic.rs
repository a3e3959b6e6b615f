//! What happens when a subscriber or handler panics.

use std::any::Any;
use std::sync::Arc;

/// What the crate does when a subscriber (instrumentation) or handler (bus) panics.
///
/// The default, [`PanicPolicy::Isolate`], catches the panic so that the instrumented code, the publisher
/// and the other subscribers carry on; the panic is reported to the configured reporter (by default a
/// `tracing` error event on target `herald_notify`) and counted. [`PanicPolicy::Propagate`] lets the
/// panic unwind into the caller of `instrument`/`publish`, which is what a test usually wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum PanicPolicy {
    /// Catch, report and continue with the next subscriber.
    #[default]
    Isolate,
    /// Let the panic unwind into the caller; later subscribers are not called.
    Propagate,
}

impl PanicPolicy {
    pub(crate) fn to_u8(self) -> u8 {
        match self {
            PanicPolicy::Isolate => 0,
            PanicPolicy::Propagate => 1,
        }
    }

    #[inline]
    pub(crate) fn from_u8(v: u8) -> Self {
        if v == 1 {
            PanicPolicy::Propagate
        } else {
            PanicPolicy::Isolate
        }
    }
}

/// A caught panic, as given to a panic reporter.
#[derive(Debug, Clone)]
pub struct PanicReport {
    /// Where it happened: the instrumentation event name, or the domain event type.
    pub event: String,
    /// The subscription whose handler panicked.
    pub subscription: u64,
    /// The panic message, when the panic payload was a string.
    pub message: String,
}

/// A function that receives reports of caught panics.
pub type PanicReporter = Arc<dyn Fn(&PanicReport) + Send + Sync>;

/// Extracts a readable message from a panic payload.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "<non-string panic payload>".to_owned()
    }
}

/// Reports a caught panic to `reporter`, or as a `tracing` error when there is none.
pub(crate) fn report(reporter: Option<&PanicReporter>, report: PanicReport) {
    match reporter {
        Some(r) => r(&report),
        None => tracing::error!(
            target: "herald_notify",
            event = %report.event,
            subscription = report.subscription,
            message = %report.message,
            "subscriber panicked; isolated"
        ),
    }
}
