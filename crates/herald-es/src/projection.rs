//! Projections: folds of events into read models.
//!
//! - [`Projection`]: a one-off fold over any [`ReadQuery`] (a stream, a category, the global log, filtered by
//!   type and time), like RailsEventStore's `Projection`: `init` a state, say what each event type does, run.
//! - [`Projector`]: a persistent projection, a [`ReadModel`] kept up to date by a durable [`Subscription`],
//!   with [`Projector::reset`] and [`Projector::rebuild`]. For a read model in the same SQLite file as the
//!   events, [`crate::sqlite::SqliteProjection`] writes the read model and the checkpoint in one transaction
//!   (`postgres::PostgresProjection` likewise on PostgreSQL).
//!
//! Every persistent projection has one active runner per name at a time, in every process sharing its
//! checkpoint database: a run takes the name's lease and its checkpoint writes carry the lease's fencing
//! token, refused once another runner took over ([`crate::lease`]; configure with `lease(LeaseConfig)` on the
//! subscription or the transactional projection). For a transactional projection the check is inside the
//! batch's transaction, so an overtaken runner's read-model changes roll back too: exactly once holds with
//! any number of runners, pauses and crashes.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use futures::TryStreamExt;
use herald_core::{EventStore, EventStoreExt, ReadQuery, RecordedEvent};
use tokio_util::sync::CancellationToken;

use crate::error::{EsError, Result};
use crate::subscription::{BoxError, EventHandler, Subscription, SubscriptionStats};

type FoldFn<S> =
    Box<dyn Fn(&mut S, &RecordedEvent) -> std::result::Result<(), BoxError> + Send + Sync>;

/// A one-off fold over a read.
///
/// ```
/// use std::sync::Arc;
/// use herald_core::{EventStore, ExpectedVersion, NewEvent, ReadQuery, StreamName};
/// use herald_es::Projection;
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let store = herald_memory::InMemoryStore::new();
/// let s = StreamName::new("order-1")?;
/// store.append(&s, vec![NewEvent::new("ItemAdded"), NewEvent::new("ItemAdded"), NewEvent::new("Paid")],
///     ExpectedVersion::Any).await?;
/// let items = Projection::init(0u32)
///     .when("ItemAdded", |n, _| { *n += 1; Ok(()) })
///     .run(&store, ReadQuery::category("order"))
///     .await?;
/// assert_eq!(items, 2);
/// # Ok::<(), herald_es::EsError>(())
/// # }).unwrap();
/// ```
pub struct Projection<S> {
    init: S,
    handlers: HashMap<String, FoldFn<S>>,
    any: Option<FoldFn<S>>,
}

impl<S> std::fmt::Debug for Projection<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Projection")
            .field("types", &self.handlers.keys().collect::<Vec<_>>())
            .field("any", &self.any.is_some())
            .finish()
    }
}

impl<S: Send> Projection<S> {
    /// Starts from `state`.
    pub fn init(state: S) -> Self {
        Projection {
            init: state,
            handlers: HashMap::new(),
            any: None,
        }
    }

    /// Folds events of `event_type` with `f`.
    pub fn when(
        mut self,
        event_type: impl Into<String>,
        f: impl Fn(&mut S, &RecordedEvent) -> std::result::Result<(), BoxError> + Send + Sync + 'static,
    ) -> Self {
        self.handlers.insert(event_type.into(), Box::new(f));
        self
    }

    /// Folds every event (after the type-specific handler, if any). Without it, the read asks the store for
    /// the handled types only.
    pub fn when_any(
        mut self,
        f: impl Fn(&mut S, &RecordedEvent) -> std::result::Result<(), BoxError> + Send + Sync + 'static,
    ) -> Self {
        self.any = Some(Box::new(f));
        self
    }

    /// Runs the fold over `query` (streamed in batches: memory stays bounded by the state).
    pub async fn run<St: EventStore + ?Sized>(self, store: &St, mut query: ReadQuery) -> Result<S> {
        if self.any.is_none() && query.types.is_empty() {
            let mut types: Vec<String> = self.handlers.keys().cloned().collect();
            types.sort();
            query.types = types;
        }
        let mut state = self.init;
        let mut events = store.read(query);
        while let Some(event) = events.try_next().await? {
            let fold = |f: &FoldFn<S>, state: &mut S| {
                f(state, &event).map_err(|e| EsError::Handler {
                    handler: "projection".into(),
                    event_id: event.id,
                    message: e.to_string(),
                })
            };
            if let Some(f) = self.handlers.get(&event.event_type) {
                fold(f, &mut state)?;
            }
            if let Some(f) = &self.any {
                fold(f, &mut state)?;
            }
        }
        Ok(state)
    }
}

/// A read model maintained by a [`Projector`].
#[async_trait]
pub trait ReadModel: Send + Sync + 'static {
    /// Applies one event. Delivery is at least once: make it idempotent by event id, or accept a replay of the
    /// last unsaved batch after a crash.
    async fn apply(&self, event: &RecordedEvent) -> std::result::Result<(), BoxError>;
    /// Empties the read model (before a rebuild).
    async fn reset(&self) -> std::result::Result<(), BoxError>;
}

struct Apply<'a, M>(&'a M);

#[async_trait]
impl<M: ReadModel> EventHandler for Apply<'_, M> {
    async fn handle(&self, event: &RecordedEvent) -> std::result::Result<(), BoxError> {
        self.0.apply(event).await
    }
}

/// A persistent projection: a [`ReadModel`] fed by a durable [`Subscription`].
#[derive(Debug)]
pub struct Projector<M> {
    subscription: Subscription,
    model: Arc<M>,
}

impl<M: ReadModel> Projector<M> {
    /// Feeds `model` from `subscription` (its name is the projection's checkpoint key).
    pub fn new(subscription: Subscription, model: Arc<M>) -> Self {
        Projector {
            subscription,
            model,
        }
    }

    /// The read model.
    pub fn model(&self) -> &Arc<M> {
        &self.model
    }

    /// The subscription.
    pub fn subscription(&self) -> &Subscription {
        &self.subscription
    }

    /// Keeps the read model up to date until `cancel`.
    pub async fn run(&self, cancel: &CancellationToken) -> Result<SubscriptionStats> {
        self.subscription.run(&Apply(&*self.model), cancel).await
    }

    /// Empties the read model and deletes the checkpoint: the next run rebuilds from the beginning. Stop the
    /// projection's runs first.
    pub async fn reset(&self) -> Result<()> {
        self.model.reset().await.map_err(|e| EsError::Handler {
            handler: self.subscription.name().to_owned(),
            event_id: uuid::Uuid::nil(),
            message: format!("reset failed: {e}"),
        })?;
        self.subscription.reset().await
    }

    /// [`Projector::reset`], then [`Projector::run`].
    pub async fn rebuild(&self, cancel: &CancellationToken) -> Result<SubscriptionStats> {
        self.reset().await?;
        self.run(cancel).await
    }
}
