//! The batching between a follow stream and a subscription's handler: one wait for the first event, then
//! whatever is already available, so a busy scope is checkpointed per batch and an idle one wakes at once.

use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use herald_core::RecordedEvent;
use tokio_util::sync::CancellationToken;

use crate::error::Result;

/// Turns a follow stream into batches: waits for one event (or cancellation), then takes what is already
/// available without waiting, up to `max`.
pub(crate) struct Feed<'a> {
    events: BoxStream<'a, herald_core::Result<RecordedEvent>>,
}

impl<'a> Feed<'a> {
    pub(crate) fn new(events: BoxStream<'a, herald_core::Result<RecordedEvent>>) -> Self {
        Feed { events }
    }

    pub(crate) async fn next_batch(
        &mut self,
        max: usize,
        cancel: &CancellationToken,
    ) -> Result<Option<Vec<RecordedEvent>>> {
        let first = tokio::select! {
            biased;
            () = cancel.cancelled() => return Ok(None),
            next = self.events.next() => next,
        };
        let Some(first) = first else {
            return Ok(None);
        };
        let mut batch = vec![first?];
        while batch.len() < max {
            // `Next` is cancel-safe: a pending read stays inside the stream and resumes on the next call.
            match self.events.next().now_or_never() {
                Some(Some(event)) => batch.push(event?),
                Some(None) | None => break,
            }
        }
        Ok(Some(batch))
    }
}
