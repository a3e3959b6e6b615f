//! What a subscription calls for each event: the [`EventHandler`] trait, and handlers made from an async
//! closure ([`handler_fn`]) or from a closure over typed, upcast events ([`typed_handler`]).

use std::sync::Arc;

use async_trait::async_trait;
use herald_core::RecordedEvent;

use super::BoxError;
use crate::codec::{Codec, DecodedEvent, EventSet};

/// Handles the events of a subscription, one at a time, in order.
#[async_trait]
pub trait EventHandler: Send + Sync {
    /// Handles one event. An error stops the subscription before the event's checkpoint.
    async fn handle(&self, event: &RecordedEvent) -> std::result::Result<(), BoxError>;
}

#[async_trait]
impl<H: EventHandler + ?Sized> EventHandler for Arc<H> {
    async fn handle(&self, event: &RecordedEvent) -> std::result::Result<(), BoxError> {
        (**self).handle(event).await
    }
}

/// An [`EventHandler`] from an async closure taking the event by value.
pub struct FnHandler<F>(F);

impl<F> std::fmt::Debug for FnHandler<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FnHandler")
    }
}

/// Wraps an async closure as an [`EventHandler`].
pub fn handler_fn<F, Fut>(f: F) -> FnHandler<F>
where
    F: Fn(RecordedEvent) -> Fut + Send + Sync,
    Fut: std::future::Future<Output = std::result::Result<(), BoxError>> + Send,
{
    FnHandler(f)
}

#[async_trait]
impl<F, Fut> EventHandler for FnHandler<F>
where
    F: Fn(RecordedEvent) -> Fut + Send + Sync,
    Fut: std::future::Future<Output = std::result::Result<(), BoxError>> + Send,
{
    async fn handle(&self, event: &RecordedEvent) -> std::result::Result<(), BoxError> {
        (self.0)(event.clone()).await
    }
}

/// An [`EventHandler`] that decodes each event into `E` with a [`Codec`] (upcasting old schema versions)
/// and calls an async closure with the typed [`DecodedEvent`]. An event that does not decode stops the
/// subscription with an error naming it; restrict the subscription to `E`'s types
/// ([`Subscription::types`](super::Subscription::types)) when the scope holds other events.
pub struct TypedHandler<E, F> {
    codec: Codec<E>,
    f: F,
}

impl<E, F> std::fmt::Debug for TypedHandler<E, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TypedHandler").finish_non_exhaustive()
    }
}

/// Wraps an async closure over typed envelopes as an [`EventHandler`].
pub fn typed_handler<E, F, Fut>(codec: Codec<E>, f: F) -> TypedHandler<E, F>
where
    E: EventSet,
    F: Fn(DecodedEvent<E>) -> Fut + Send + Sync,
    Fut: std::future::Future<Output = std::result::Result<(), BoxError>> + Send,
{
    TypedHandler { codec, f }
}

#[async_trait]
impl<E, F, Fut> EventHandler for TypedHandler<E, F>
where
    E: EventSet,
    F: Fn(DecodedEvent<E>) -> Fut + Send + Sync,
    Fut: std::future::Future<Output = std::result::Result<(), BoxError>> + Send,
{
    async fn handle(&self, event: &RecordedEvent) -> std::result::Result<(), BoxError> {
        let envelope = self.codec.decode(event)?;
        (self.f)(envelope).await
    }
}
