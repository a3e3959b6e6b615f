//! Publishing through the event store: append durably, then dispatch after the commit.

use std::fmt;
use std::sync::Arc;

use futures::future::BoxFuture;
use herald_core::event::{CAUSATION_ID, CORRELATION_ID};
use herald_core::{
    AppendResult, EventStore, ExpectedVersion, NewEvent, SCHEMA_VERSION_KEY, StreamName,
};

use super::{
    Bus, Delivery, DomainEvent, Envelope, EventMeta, HandlerFailure, PublishError, PublishOptions,
    StoredAt,
};

/// Publishes domain events through an [`EventStore`]: [`publish`](StorePublisher::publish) appends them
/// durably and, **after the commit**, dispatches them on the [`Bus`] to the same subscribers that in-memory
/// publishes reach; [`append`](StorePublisher::append) stores without dispatching.
///
/// * Nothing is dispatched when the append fails (wrong expected version, invalid input, backend error):
///   the error is [`PublishError::Store`] with the store's typed error.
/// * A dispatch failure never un-commits anything: handler failures come back in [`Published::failures`]
///   next to the [`AppendResult`], and the events stay stored.
/// * Events are dispatched one after the other (event-major): the first reaches every handler before the
///   second reaches any. Async listeners are awaited for room, as with [`Bus::publish`].
/// * Metadata is stored as JSON: `correlation_id`, `causation_id` (when set) and `schema_version`, taken from
///   the current [`EventContext`](crate::EventContext) exactly as for in-memory publishes; each dispatched
///   envelope carries [`EventMeta::stored`] (stream, version, global position).
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use herald_core::{EventStore, ExpectedVersion, StreamName};
/// use herald_notify::{Bus, Envelope, StorePublisher};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, Serialize, Deserialize)]
/// struct UserRegistered { user_id: u64 }
/// herald_notify::domain_event!(UserRegistered, "user.registered");
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let store: Arc<dyn EventStore> = Arc::new(herald_memory::InMemoryStore::new());
/// let bus = Bus::new();
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let s = seen.clone();
/// let _sub = bus.subscribe(move |e: &Envelope<UserRegistered>| {
///     s.lock().unwrap().push(e.meta().stored.as_ref().unwrap().version);
/// });
/// let publisher = StorePublisher::new(store, bus);
/// let stream = StreamName::new("user-7").unwrap();
/// let published = publisher
///     .publish(&stream, vec![UserRegistered { user_id: 7 }], ExpectedVersion::NoStream)
///     .await
///     .unwrap();
/// assert_eq!(published.append.last_version, 0);
/// assert_eq!(*seen.lock().unwrap(), [0]);
/// # }
/// ```
#[derive(Clone)]
pub struct StorePublisher {
    store: Arc<dyn EventStore>,
    bus: Bus,
}

impl fmt::Debug for StorePublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StorePublisher")
            .field("bus", &self.bus)
            .finish_non_exhaustive()
    }
}

/// The result of [`StorePublisher::publish`]: what was stored, and what dispatching it did.
#[derive(Debug)]
pub struct Published {
    /// What the append wrote (committed).
    pub append: AppendResult,
    /// One delivery per event, in order.
    pub deliveries: Vec<Delivery>,
    /// Sync handler failures during dispatch, in event then subscription order. The events are stored
    /// whatever happened here.
    pub failures: Vec<HandlerFailure>,
}

impl Published {
    /// Whether every sync handler succeeded.
    pub fn is_fully_handled(&self) -> bool {
        self.failures.is_empty()
    }
}

/// One event of a batch, type-erased so that one append can hold several event types.
trait Pending: Send {
    fn meta(&self) -> &EventMeta;
    fn to_new_event(&self) -> Result<NewEvent, PublishError>;
    fn dispatch(
        self: Box<Self>,
        bus: &Bus,
        stored: StoredAt,
    ) -> BoxFuture<'_, Result<Delivery, PublishError>>;
}

struct Typed<E>(Envelope<E>);

impl<E: DomainEvent> Pending for Typed<E> {
    fn meta(&self) -> &EventMeta {
        &self.0.meta
    }

    fn to_new_event(&self) -> Result<NewEvent, PublishError> {
        let serialize = |source| PublishError::Serialize {
            event_type: E::EVENT_TYPE,
            source,
        };
        let data = serde_json::to_string(&self.0.event).map_err(serialize)?;
        let meta = &self.0.meta;
        let mut metadata = serde_json::Map::new();
        metadata.insert(
            CORRELATION_ID.into(),
            meta.correlation_id.to_string().into(),
        );
        if let Some(causation) = meta.causation_id {
            metadata.insert(CAUSATION_ID.into(), causation.to_string().into());
        }
        metadata.insert(SCHEMA_VERSION_KEY.into(), meta.schema_version.into());
        Ok(NewEvent {
            id: meta.id,
            event_type: E::EVENT_TYPE.to_owned(),
            data,
            metadata: serde_json::Value::Object(metadata).to_string(),
        })
    }

    fn dispatch(
        self: Box<Self>,
        bus: &Bus,
        stored: StoredAt,
    ) -> BoxFuture<'_, Result<Delivery, PublishError>> {
        let mut envelope = self.0;
        envelope.meta.stored = Some(Arc::new(stored));
        Box::pin(bus.dispatch(None, envelope))
    }
}

/// Several events, possibly of different types, to append to one stream atomically.
///
/// Metadata (ids, correlation, causation) is fixed when an event is added, from the context current then.
#[must_use = "a batch does nothing until appended or published"]
pub struct Batch<'p> {
    publisher: &'p StorePublisher,
    events: Vec<Box<dyn Pending>>,
}

impl fmt::Debug for Batch<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.events.iter().map(|e| e.meta()))
            .finish()
    }
}

impl Batch<'_> {
    /// Adds an event.
    pub fn event<E: DomainEvent>(self, event: E) -> Self {
        self.event_with(event, PublishOptions::default())
    }

    /// Adds an event with explicit metadata.
    pub fn event_with<E: DomainEvent>(mut self, event: E, options: PublishOptions) -> Self {
        let meta = self.publisher.bus.meta_for::<E>(options);
        self.events.push(Box::new(Typed(Envelope { meta, event })));
        self
    }

    /// Appends the batch without dispatching it.
    ///
    /// # Errors
    /// [`PublishError::Serialize`], [`PublishError::Store`].
    pub async fn append(
        self,
        stream: &StreamName,
        expected: ExpectedVersion,
    ) -> Result<AppendResult, PublishError> {
        let records = self
            .events
            .iter()
            .map(|e| e.to_new_event())
            .collect::<Result<Vec<_>, _>>()?;
        self.publisher
            .store
            .append(stream, records, expected)
            .await
            .map_err(PublishError::Store)
    }

    /// Appends the batch, then, after the commit, dispatches each event in order.
    ///
    /// # Errors
    /// [`PublishError::Closed`] (checked before appending: nothing is stored), [`PublishError::Serialize`],
    /// [`PublishError::Store`]. Handler failures are not errors here: see [`Published::failures`].
    pub async fn publish(
        self,
        stream: &StreamName,
        expected: ExpectedVersion,
    ) -> Result<Published, PublishError> {
        let bus = self.publisher.bus.clone();
        if bus.is_closed() {
            return Err(PublishError::Closed);
        }
        let records = self
            .events
            .iter()
            .map(|e| e.to_new_event())
            .collect::<Result<Vec<_>, _>>()?;
        let append = self
            .publisher
            .store
            .append(stream, records, expected)
            .await
            .map_err(PublishError::Store)?;
        // Committed. From here on nothing can un-store the events; failures are reported, not returned.
        let mut deliveries = Vec::with_capacity(self.events.len());
        let mut failures = Vec::new();
        for (i, event) in self.events.into_iter().enumerate() {
            let offset = i as u64;
            let stored = StoredAt {
                stream: append.stream.clone(),
                version: append.first_version + offset,
                position: Some(append.first_position + offset),
            };
            match event.dispatch(&bus, stored).await {
                Ok(delivery) => deliveries.push(delivery),
                Err(PublishError::Handlers {
                    failures: f,
                    delivery,
                    ..
                }) => {
                    failures.extend(f);
                    deliveries.push(*delivery);
                }
                Err(other) => {
                    // Only `Closed` can happen here (the bus was shut down during dispatch).
                    tracing::warn!(
                        target: "herald_notify",
                        error = %other,
                        stream = %append.stream,
                        "stored events were not dispatched"
                    );
                    break;
                }
            }
        }
        Ok(Published {
            append,
            deliveries,
            failures,
        })
    }
}

impl StorePublisher {
    /// A publisher appending to `store` and dispatching on `bus`.
    pub fn new(store: Arc<dyn EventStore>, bus: Bus) -> Self {
        StorePublisher { store, bus }
    }

    /// The bus events are dispatched on.
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// The store events are appended to.
    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    /// An empty batch, for appending events of several types at once.
    pub fn batch(&self) -> Batch<'_> {
        Batch {
            publisher: self,
            events: Vec::new(),
        }
    }

    /// Appends `events` (of one type) to `stream` without dispatching them.
    ///
    /// # Errors
    /// [`PublishError::Serialize`], [`PublishError::Store`].
    pub async fn append<E: DomainEvent>(
        &self,
        stream: &StreamName,
        events: Vec<E>,
        expected: ExpectedVersion,
    ) -> Result<AppendResult, PublishError> {
        events
            .into_iter()
            .fold(self.batch(), Batch::event)
            .append(stream, expected)
            .await
    }

    /// Appends `events` (of one type) to `stream` atomically, then, after the commit, dispatches them.
    ///
    /// # Errors
    /// As for [`Batch::publish`].
    pub async fn publish<E: DomainEvent>(
        &self,
        stream: &StreamName,
        events: Vec<E>,
        expected: ExpectedVersion,
    ) -> Result<Published, PublishError> {
        events
            .into_iter()
            .fold(self.batch(), Batch::event)
            .publish(stream, expected)
            .await
    }
}
