//! The publish path: the new event's metadata and context, sync delivery under the error and panic
//! policies, and queueing for async listeners — all-or-nothing reservation for [`Bus::try_publish`],
//! waiting for room for [`Bus::publish`] (see the module docs on capacity and back-pressure).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc;

use super::{
    Bus, Delivery, DomainEvent, Entry, Envelope, ErasedEnvelope, ErrorPolicy, EventContext,
    EventMeta, HandlerError, HandlerFailure, Kind, Matched, PublishError, PublishOptions, SyncFn,
    ids,
};
use crate::clock;
use crate::panic::{PanicPolicy, PanicReport, panic_message, report};

impl Bus {
    #[inline(always)]
    pub(crate) fn meta_for<E: DomainEvent>(&self, options: PublishOptions) -> EventMeta {
        self.meta_and_context::<E>(options).0
    }

    /// The metadata of a new event, and the context its handlers run in. The context is built from the
    /// ids while they are still in registers: reading them back from the freshly written metadata makes
    /// 16-byte loads of two 8-byte stores, which the CPU cannot forward, and the publish stalls.
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
    /// Always inlined: as a call of its own (which the optimiser chooses once `catch_unwind` is in it) it
    /// pays a prologue, an epilogue and arguments passed through memory on every publish.
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
            // One `catch_unwind` around the whole loop rather than one per handler (cheaper per handler):
            // `next` tells which handler panicked, and the loop resumes after it.
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
