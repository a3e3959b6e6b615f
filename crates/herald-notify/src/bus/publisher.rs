//! [`Publisher`]: local listeners that hear only one publisher's events (Wisper's `publisher.on`).

use std::sync::Arc;

use super::{
    Bus, Delivery, DomainEvent, Envelope, HandlerResult, Listener, PublishError, PublishOptions,
    listener,
};
use crate::subscriber::SubscriberHandle;

/// A publisher with local listeners: they receive only what this publisher publishes (Wisper's
/// `publisher.on(:event)`), while the bus's global listeners receive it too. Subscription order is shared
/// with the bus's other subscriptions.
#[derive(Clone, Debug)]
pub struct Publisher {
    pub(super) bus: Bus,
    pub(super) id: u64,
}

impl Publisher {
    /// The bus this publisher publishes on.
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// Subscribes a local sync handler to events of type `E` published by this publisher.
    pub fn subscribe<E: DomainEvent, R: HandlerResult>(
        &self,
        handler: impl Fn(&Envelope<E>) -> R + Send + Sync + 'static,
    ) -> SubscriberHandle {
        self.bus
            .add_one(Bus::typed_entry::<E, R>(handler), Some(self.id), None)
    }

    /// Subscribes a local listener object.
    pub fn subscribe_listener<L: Listener>(&self, listener: Arc<L>) -> SubscriberHandle {
        self.bus
            .add(listener::entries(listener), Some(self.id), None)
    }

    /// [`Bus::try_publish`] from this publisher.
    ///
    /// # Errors
    /// As for [`Bus::try_publish`].
    pub fn try_publish<E: DomainEvent>(&self, event: E) -> Result<Delivery, PublishError> {
        self.bus
            .try_publish_from(Some(self.id), event, PublishOptions::default())
    }

    /// [`Bus::publish`] from this publisher.
    ///
    /// # Errors
    /// As for [`Bus::publish`].
    pub async fn publish<E: DomainEvent>(&self, event: E) -> Result<Delivery, PublishError> {
        self.bus
            .publish_from(Some(self.id), event, PublishOptions::default())
            .await
    }
}
