//! Async event handlers: one durable job per (event, handler), written by an append hook in the same
//! transaction as the event.
//!
//! [`AsyncHandlers`] holds the routes (handler name → event types, queue, options). Install it in the event
//! store — [`AsyncHandlers::hook`] with [`herald_sqlite::SqliteConfig::with_append_hook`], or (feature
//! `postgres`) `AsyncHandlers::postgres_hook` with `herald_postgres::PostgresConfig::with_append_hook` —
//! and every append then inserts, in its own transaction, one job per matching (event, route). The job's kind is the handler name, its arguments name the
//! event, and its metadata carries the event's correlation id (the event id when it has none) and the event
//! id as causation id. A worker pool runs them with [`crate::WorkerPoolBuilder::handle_events`].
//!
//! ```
//! use std::sync::Arc;
//! use herald_core::{EventStore, ExpectedVersion, NewEvent, StreamName};
//! use herald_jobs::{AsyncHandlers, JobResult, JobStore, JobsConfig, Route, WorkerPool};
//! use herald_sqlite::{SqliteConfig, SqliteStore};
//! use tokio_util::sync::CancellationToken;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! # let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("herald.db");
//! // Jobs first, then the event store with the routing hook: appends and their jobs commit together.
//! let jobs = JobStore::open(&path, JobsConfig::default()).await?;
//! let handlers = AsyncHandlers::new(&jobs);
//! handlers.route(Route::new("send_welcome", &["UserRegistered"]).queue("mailers"));
//! let store = Arc::new(SqliteStore::open(&path, SqliteConfig::default().with_append_hook(handlers.hook())).await?);
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

use herald_sqlite::rusqlite::Connection;
use herald_sqlite::{AppendHook, AppendedEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::clock::Clock;
use crate::job::{DEFAULT_MAX_ATTEMPTS, DEFAULT_QUEUE, NewJob};
use crate::store::{JobStore, insert_job};

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

/// The async-handler routes, shared with the append hook. Register routes before appending.
#[derive(Debug, Clone)]
pub struct AsyncHandlers {
    routes: Arc<RwLock<Vec<Route>>>,
    clock: Arc<dyn Clock>,
    /// The job store's PostgreSQL schema (`None` on SQLite).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    schema: Option<String>,
}

impl AsyncHandlers {
    /// Routes for jobs in `jobs` (its clock stamps them).
    pub fn new(jobs: &JobStore) -> Self {
        AsyncHandlers {
            routes: Arc::new(RwLock::new(Vec::new())),
            clock: Arc::clone(&jobs.config().clock),
            schema: jobs.postgres_schema().map(str::to_owned),
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

    /// The append hook to give to [`herald_sqlite::SqliteConfig::with_append_hook`].
    pub fn hook(&self) -> Arc<dyn AppendHook> {
        Arc::new(self.clone())
    }

    /// The append hook to give to `herald_postgres::PostgresConfig::with_append_hook` (feature `postgres`).
    /// The routes must come from a PostgreSQL [`JobStore`] on the event store's database; its jobs go to that
    /// store's schema.
    #[cfg(feature = "postgres")]
    pub fn postgres_hook(&self) -> crate::Result<Arc<dyn herald_postgres::AppendHook>> {
        match &self.schema {
            Some(_) => Ok(Arc::new(PostgresHook(self.clone()))),
            None => Err(crate::JobError::invalid(
                "a PostgreSQL append hook needs AsyncHandlers made from a PostgreSQL job store",
            )),
        }
    }

    /// The jobs for `events` just appended to `stream` (the same event type on both backends' hooks).
    fn jobs_for(&self, stream: &str, events: &[herald_core::AppendedEvent<'_>]) -> Vec<NewJob> {
        let routes = self.routes.read().unwrap_or_else(|e| e.into_inner());
        let mut jobs = Vec::new();
        if routes.is_empty() {
            return jobs;
        }
        for &herald_core::AppendedEvent {
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

/// [`AsyncHandlers`] as a herald-postgres append hook: one insert statement (arrays) for all the jobs of an
/// append, sent by the event store's writer in the append's batch transaction.
#[cfg(feature = "postgres")]
struct PostgresHook(AsyncHandlers);

#[cfg(feature = "postgres")]
impl herald_postgres::AppendHook for PostgresHook {
    fn on_append(
        &self,
        stream: &str,
        events: &[herald_postgres::AppendedEvent<'_>],
        writes: &mut herald_postgres::HookWrites,
    ) -> std::result::Result<(), herald_postgres::HookError> {
        let jobs = self.0.jobs_for(stream, events);
        let Some(schema) = &self.0.schema else {
            return Err("AsyncHandlers without a PostgreSQL job store".into());
        };
        crate::postgres::push_inserts(writes, schema, &jobs, self.0.clock.now_micros())?;
        Ok(())
    }
}

impl AppendHook for AsyncHandlers {
    fn on_append(
        &self,
        tx: &Connection,
        stream: &str,
        events: &[AppendedEvent<'_>],
    ) -> herald_sqlite::rusqlite::Result<()> {
        let jobs = self.jobs_for(stream, events);
        let now = self.clock.now_micros();
        for job in &jobs {
            insert_job(tx, job, now)?;
        }
        Ok(())
    }
}
