//! Subscriber handles shared by the notifier and the bus.

use std::fmt;
use std::sync::Weak;

/// Something that subscriptions can be removed from.
pub(crate) trait Unsubscribe: Send + Sync {
    fn unsubscribe_id(&self, id: u64) -> bool;
}

/// A handle to one subscriber registered on a [`Notifier`](crate::Notifier) or a [`Bus`](crate::Bus).
/// Not called `Subscription`: in this workspace a subscription is herald-es's durable, checkpointed reader
/// of the event store; this is only the key to unregister an in-memory handler.
///
/// Dropping a `SubscriberHandle` does **not** unsubscribe (like ActiveSupport's subscriber handles): call
/// [`unsubscribe`](SubscriberHandle::unsubscribe), or turn it into a [`SubscriberGuard`] with
/// [`guard`](SubscriberHandle::guard) to unsubscribe when the guard is dropped.
#[must_use = "keep the handle to unsubscribe later, or call .guard() for drop-to-unsubscribe"]
pub struct SubscriberHandle {
    id: u64,
    owner: Weak<dyn Unsubscribe>,
}

impl SubscriberHandle {
    pub(crate) fn new(id: u64, owner: Weak<dyn Unsubscribe>) -> Self {
        SubscriberHandle { id, owner }
    }

    /// The subscription's id, unique within its notifier or bus.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Removes the subscription. Returns `false` if it was already removed (or its owner is gone).
    ///
    /// No delivery that starts after this returns calls the handler. A delivery already running on another
    /// thread may still be calling it.
    pub fn unsubscribe(&self) -> bool {
        self.owner
            .upgrade()
            .is_some_and(|owner| owner.unsubscribe_id(self.id))
    }

    /// Turns the handle into a guard that unsubscribes when dropped.
    pub fn guard(self) -> SubscriberGuard {
        SubscriberGuard { inner: Some(self) }
    }
}

impl fmt::Debug for SubscriberHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriberHandle")
            .field("id", &self.id)
            .finish()
    }
}

/// Unsubscribes when dropped. Created by [`SubscriberHandle::guard`].
#[must_use = "dropping the guard unsubscribes immediately"]
#[derive(Debug)]
pub struct SubscriberGuard {
    inner: Option<SubscriberHandle>,
}

impl SubscriberGuard {
    /// Keeps the subscription for the rest of the owner's life and returns the plain handle.
    pub fn into_inner(mut self) -> SubscriberHandle {
        self.inner
            .take()
            .unwrap_or_else(|| unreachable!("guard always holds its subscription until dropped"))
    }

    /// The subscription's id.
    pub fn id(&self) -> u64 {
        self.inner.as_ref().map_or(0, SubscriberHandle::id)
    }
}

impl Drop for SubscriberGuard {
    fn drop(&mut self) {
        if let Some(sub) = self.inner.take() {
            sub.unsubscribe();
        }
    }
}
