//! Typed domain events and the envelope they travel in.

use std::any::Any;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

/// A domain event: a fact the application publishes, with a stable type name and a schema version.
///
/// The type name is what is stored and sent over the wire; keep it stable when the Rust type is renamed
/// or moved. Bump the schema version when the payload's shape changes (the store's upcasters use it).
/// Use [`domain_event!`](crate::domain_event) to implement it in one line.
///
/// ```
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, Serialize, Deserialize)]
/// struct UserRegistered { user_id: u64, email: String }
///
/// herald_notify::domain_event!(UserRegistered, "user.registered", 2);
///
/// use herald_notify::DomainEvent;
/// assert_eq!(UserRegistered::EVENT_TYPE, "user.registered");
/// assert_eq!(UserRegistered::SCHEMA_VERSION, 2);
/// ```
pub trait DomainEvent: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The stable type name, e.g. `"user.registered"`.
    const EVENT_TYPE: &'static str;
    /// The payload's schema version (starts at 1).
    const SCHEMA_VERSION: u32 = 1;
}

/// Implements [`DomainEvent`] for a type: `domain_event!(Type, "type.name")` or
/// `domain_event!(Type, "type.name", version)`.
#[macro_export]
macro_rules! domain_event {
    ($ty:ty, $name:expr) => {
        impl $crate::DomainEvent for $ty {
            const EVENT_TYPE: &'static str = $name;
        }
    };
    ($ty:ty, $name:expr, $version:expr) => {
        impl $crate::DomainEvent for $ty {
            const EVENT_TYPE: &'static str = $name;
            const SCHEMA_VERSION: u32 = $version;
        }
    };
}

/// Where a stored event sits in the store, for events dispatched after an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAt {
    /// The stream it was appended to.
    pub stream: String,
    /// Its version (0-based position) in that stream.
    pub version: u64,
    /// Its position in the global order, when the store reports one.
    pub position: Option<u64>,
}

/// The metadata every published event carries.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EventMeta {
    /// Unique id (UUIDv7: time-ordered).
    pub id: Uuid,
    /// [`DomainEvent::EVENT_TYPE`].
    pub event_type: &'static str,
    /// [`DomainEvent::SCHEMA_VERSION`].
    pub schema_version: u32,
    /// When it was published.
    pub occurred_at: SystemTime,
    /// The id shared by every event caused, directly or not, by the same root event (the root's own id).
    pub correlation_id: Uuid,
    /// The id of the event whose handling published this one, if any.
    pub causation_id: Option<Uuid>,
    /// Where the event was stored, when it was published through a store.
    pub stored: Option<Arc<StoredAt>>,
}

/// A published event with its metadata; dereferences to the event.
#[derive(Debug, Clone)]
pub struct Envelope<E> {
    pub(crate) meta: EventMeta,
    pub(crate) event: E,
}

impl<E> Envelope<E> {
    /// The metadata.
    pub fn meta(&self) -> &EventMeta {
        &self.meta
    }

    /// The event.
    pub fn event(&self) -> &E {
        &self.event
    }

    /// The event id.
    pub fn id(&self) -> Uuid {
        self.meta.id
    }

    /// Takes the event out.
    pub fn into_event(self) -> E {
        self.event
    }
}

impl<E> Deref for Envelope<E> {
    type Target = E;

    fn deref(&self) -> &E {
        &self.event
    }
}

/// An envelope whose event type is not known statically, as seen by listeners for all events.
pub trait ErasedEnvelope: Any + Send + Sync {
    /// The metadata.
    fn meta(&self) -> &EventMeta;
    /// The event serialized to JSON.
    ///
    /// # Errors
    /// When the event's `Serialize` implementation fails.
    fn to_json(&self) -> serde_json::Result<serde_json::Value>;
    /// Upcast for downcasting an owned envelope (used by async listeners).
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
}

impl<E: DomainEvent> ErasedEnvelope for Envelope<E> {
    fn meta(&self) -> &EventMeta {
        &self.meta
    }

    fn to_json(&self) -> serde_json::Result<serde_json::Value> {
        serde_json::to_value(&self.event)
    }

    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }
}

impl dyn ErasedEnvelope {
    /// The envelope as an `Envelope<E>`, if it carries an `E`.
    pub fn downcast_ref<E: DomainEvent>(&self) -> Option<&Envelope<E>> {
        (self as &dyn Any).downcast_ref()
    }

    /// The event type name.
    pub fn event_type(&self) -> &'static str {
        self.meta().event_type
    }
}

impl fmt::Debug for dyn ErasedEnvelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ErasedEnvelope")
            .field("meta", self.meta())
            .finish_non_exhaustive()
    }
}

/// Explicit metadata for one publish; anything left unset is filled in (explicit values always win over
/// the ones taken from the current [`EventContext`](crate::EventContext)).
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    pub(crate) id: Option<Uuid>,
    pub(crate) correlation_id: Option<Uuid>,
    pub(crate) causation_id: Option<Uuid>,
    pub(crate) occurred_at: Option<SystemTime>,
}

impl PublishOptions {
    /// Default options: everything filled in automatically.
    pub fn new() -> Self {
        Self::default()
    }

    /// Use this event id instead of a fresh UUIDv7.
    pub fn id(mut self, id: Uuid) -> Self {
        self.id = Some(id);
        self
    }

    /// Use this correlation id instead of the current context's.
    pub fn correlation_id(mut self, id: Uuid) -> Self {
        self.correlation_id = Some(id);
        self
    }

    /// Use this causation id instead of the current context's event id.
    pub fn causation_id(mut self, id: Uuid) -> Self {
        self.causation_id = Some(id);
        self
    }

    /// Use this time instead of now.
    pub fn occurred_at(mut self, at: SystemTime) -> Self {
        self.occurred_at = Some(at);
        self
    }
}
