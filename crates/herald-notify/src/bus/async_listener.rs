//! The task behind one async listener: it drains its bounded queue in order, one event at a time, reports
//! and counts failures and panics (they cannot reach the publisher), and on close handles what is queued.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::FutureExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{AsyncFn, BusInner, ErasedEnvelope, EventContext};
use crate::panic::{PanicReport, PanicReporter, panic_message, report};

/// The task behind one async listener.
pub(super) struct AsyncListener {
    pub(super) id: u64,
    pub(super) label: Arc<str>,
    pub(super) handler: AsyncFn,
    pub(super) bus: std::sync::Weak<BusInner>,
    pub(super) reporter: Option<PanicReporter>,
}

impl AsyncListener {
    pub(super) async fn run(
        self,
        mut rx: mpsc::Receiver<Arc<dyn ErasedEnvelope>>,
        token: CancellationToken,
    ) {
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
