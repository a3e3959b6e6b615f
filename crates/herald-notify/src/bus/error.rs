//! Errors of the domain-event bus.

use std::sync::Arc;

use uuid::Uuid;

use super::Delivery;

/// The error type handlers may return (anything convertible into it works, via `?` or `.into()`): the
/// workspace's one boxed error, re-exported where handlers meet it.
pub use herald_core::BoxError;

/// Why a handler did not handle an event.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandlerError {
    /// The handler returned this error.
    #[error("handler failed: {0}")]
    Failed(#[source] BoxError),
    /// The handler panicked (and the panic was isolated); the message is the panic's.
    #[error("handler panicked: {0}")]
    Panicked(String),
}

/// One handler's failure, as returned to the publisher.
#[derive(Debug)]
pub struct HandlerFailure {
    /// The failing subscription.
    pub subscription: u64,
    /// The handler's label: the listener type, or the event type for closures.
    pub listener: Arc<str>,
    /// What went wrong.
    pub error: HandlerError,
}

/// Why a publish did not fully succeed.
///
/// The variants a caller usually branches on:
/// * [`Handlers`](PublishError::Handlers): the event was published, some sync handlers failed. Decide
///   whether that matters to you (the others ran, unless the bus stops at the first failure).
/// * [`Full`](PublishError::Full): only from `try_publish`; nothing was delivered. Retry later, or use the
///   async `publish`, which waits for room.
/// * [`Closed`](PublishError::Closed): the bus was shut down; nothing was delivered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// One or more sync handlers failed.
    #[error("{} handler(s) failed for event {event_id}", failures.len())]
    Handlers {
        /// The event's id.
        event_id: Uuid,
        /// The failures, in subscription order.
        failures: Vec<HandlerFailure>,
        /// What was delivered.
        delivery: Box<Delivery>,
    },
    /// `try_publish` found an async listener's queue full; nothing was delivered to anyone.
    #[error("the queue of async listener {subscription} is full")]
    Full {
        /// The listener whose queue is full.
        subscription: u64,
    },
    /// The bus has been shut down.
    #[error("the bus has been shut down")]
    Closed,
    /// Appending to the store failed; nothing was stored or dispatched. Branch on the store's error (e.g.
    /// `WrongExpectedVersion`: reload and decide again).
    #[error("appending to the event store failed: {0}")]
    Store(#[source] herald_core::Error),
    /// An event could not be serialized for the store; nothing was appended or dispatched.
    #[error("serializing event {event_type} failed: {source}")]
    Serialize {
        /// The event's type name.
        event_type: &'static str,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
}

impl PublishError {
    /// The handler failures, if this is a [`Handlers`](PublishError::Handlers) error.
    pub fn failures(&self) -> &[HandlerFailure] {
        match self {
            PublishError::Handlers { failures, .. } => failures,
            _ => &[],
        }
    }
}
