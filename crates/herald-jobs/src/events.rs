//! Async event handlers: one durable job per (event, handler), written in the same transaction as the event.
//!
//! [`AsyncHandlers`] holds the routes (handler name → event types, queue, options) and is a
//! [`JobRouter`]: give it to the event store when it opens (`herald_sqlite::SqliteConfig::with_job_router`,
//! `herald_postgres::PostgresConfig::with_job_router`, `herald_memory::InMemoryStore::with_job_router`, or
//! `herald::open`, which does it for you), and every append then writes, in its own transaction, one job per
//! matching (event, route). The job's kind is the handler name, its arguments name the event, and its metadata
//! carries the event's correlation id (the event id when it has none) and the event id as causation id. A
//! worker pool runs them with [`crate::WorkerPoolBuilder::handle_events`]. Routes may be added after the store
//! opened: they are shared.
//!
//! ```
//! use std::sync::Arc;
//! use herald_core::{EventStore, ExpectedVersion, JobsConfig, NewEvent, StreamName};
//! use herald_jobs::{AsyncHandlers, JobResult, JobStore, Route, WorkerPool};
//! use herald_memory::InMemoryStore;
//! use tokio_util::sync::CancellationToken;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let config = JobsConfig::default();
//! // The routes first, then the event store with them: appends and their jobs commit together.
//! let handlers = AsyncHandlers::new(&config);
//! handlers.route(Route::new("send_welcome", &["UserRegistered"]).queue("mailers"));
//! let store = InMemoryStore::with_job_router(handlers.router());
//! let jobs = JobStore::from(store.job_queue(config));
//! let store = Arc::new(store);
//!
//! let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
//! let stop = CancellationToken::new();
//! let pool = WorkerPool::builder(jobs.clone())
//!     .queue("mailers", 5)
//!     .events(store.clone())
//!     .handle_events("send_welcome", move |event, _ctx| {
//!         let tx = tx.clone();
//!         async move { tx.send(event.stream).unwrap(); JobResult::Success }
//!     })
//!     .start(stop.clone());
//! let user = StreamName::new("user-42")?;
//! store.append(&user, vec![NewEvent::new("UserRegistered")], ExpectedVersion::NoStream).await?;
//! assert_eq!(rx.recv().await.as_deref(), Some("user-42"));
//! stop.cancel();
//! pool.join().await;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

use std::sync::{Arc, RwLock};

use herald_core::jobs::{DEFAULT_MAX_ATTEMPTS, DEFAULT_QUEUE, JobRouter, JobsConfig};
use herald_core::{AppendedEvent, Clock, NewJob};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The arguments of an async-handler job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventJobArgs {
    /// The event's id.
    pub event_id: Uuid,
    /// The stream it was appended to.
    pub stream: String,
    /// Its type.
    pub event_type: String,
    /// Its global position.
    pub position: u64,
}

/// Where the jobs of one async handler go.
#[derive(Debug, Clone)]
pub struct Route {
    /// The handler's name: the kind of its jobs.
    pub name: String,
    /// The event types it handles (empty: every event).
    pub types: Vec<String>,
    /// Queue of its jobs.
    pub queue: String,
    /// Priority of its jobs.
    pub priority: i32,
    /// Attempts before the dead set.
    pub max_attempts: u32,
    /// When set, jobs for events of one stream run one at a time in append order.
    pub ordered_by_stream: bool,
}

impl Route {
    /// A route for handler `name` on these event types (empty: all), to the default queue.
    pub fn new(name: impl Into<String>, types: &[&str]) -> Self {
        Route {
            name: name.into(),
            types: types.iter().map(|t| (*t).to_owned()).collect(),
            queue: DEFAULT_QUEUE.to_owned(),
            priority: 0,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            ordered_by_stream: false,
        }
    }
    /// Sets the queue.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = queue.into();
        self
    }
    /// Sets the attempts.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }
    /// Runs this handler's jobs for one stream in append order.
    pub fn ordered_by_stream(mut self) -> Self {
        self.ordered_by_stream = true;
        self
    }
}

/// The async-handler routes, shared with the stores they were given to. Register routes before appending.
#[derive(Debug, Clone)]
pub struct AsyncHandlers {
    routes: Arc<RwLock<Vec<Route>>>,
    clock: Arc<dyn Clock>,
}

impl AsyncHandlers {
    /// Routes for jobs stamped by the clock of `config` (the job queue's settings).
    pub fn new(config: &JobsConfig) -> Self {
        AsyncHandlers {
            routes: Arc::new(RwLock::new(Vec::new())),
            clock: Arc::clone(&config.clock),
        }
    }

    /// Adds a route: every later append of a matching event writes one job for it.
    pub fn route(&self, route: Route) -> &Self {
        self.routes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(route);
        self
    }

    /// These routes as the [`JobRouter`] an event store takes when it opens.
    pub fn router(&self) -> Arc<dyn JobRouter> {
        Arc::new(self.clone())
    }
}

impl JobRouter for AsyncHandlers {
    fn now_micros(&self) -> i64 {
        self.clock.now_micros()
    }

    fn jobs_for(&self, stream: &str, events: &[AppendedEvent<'_>]) -> Vec<NewJob> {
        let routes = self.routes.read().unwrap_or_else(|e| e.into_inner());
        let mut jobs = Vec::new();
        if routes.is_empty() {
            return jobs;
        }
        for &AppendedEvent {
            id,
            event_type,
            position,
            metadata: event_metadata,
            ..
        } in events
        {
            for route in routes
                .iter()
                .filter(|r| r.types.is_empty() || r.types.iter().any(|t| t == event_type))
            {
                let args = EventJobArgs {
                    event_id: id,
                    stream: stream.to_owned(),
                    event_type: event_type.to_owned(),
                    position,
                };
                let correlation = herald_core::event::metadata_uuid(
                    event_metadata,
                    herald_core::event::CORRELATION_ID,
                )
                .unwrap_or(id);
                let metadata = serde_json::json!({
                    "correlation_id": correlation.to_string(),
                    "causation_id": id.to_string(),
                    "event_type": event_type,
                    "stream": stream,
                });
                let mut job = NewJob::raw(
                    route.name.clone(),
                    serde_json::to_string(&args).unwrap_or_default(),
                )
                .queue(route.queue.clone())
                .priority(route.priority)
                .max_attempts(route.max_attempts)
                .metadata(metadata.to_string());
                if route.ordered_by_stream {
                    job = job.order_key(format!("{}:{stream}", route.name));
                }
                jobs.push(job);
            }
        }
        jobs
    }
}
