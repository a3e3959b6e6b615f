//! [`BusBuilder`]: a bus's settings (cancellation token, error and panic policies, timestamps) and the
//! construction of its shared state.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use super::{Bus, BusInner, ErrorPolicy, Timestamps};
use crate::clock;
use crate::panic::{PanicPolicy, PanicReport, PanicReporter};

static NEXT_BUS: AtomicU64 = AtomicU64::new(1);

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
