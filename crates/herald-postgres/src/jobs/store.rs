//! The event store's side of transactional enqueue: the jobs given to
//! [`append_with_jobs`](herald_core::EventStore::append_with_jobs) go in as the append's extra, and every
//! [`JobRouter`] of the store becomes an append hook. Both push the queue's own insert statement (with its
//! `NOTIFY`, delivered at commit) into the append's batch, so the jobs commit with the events or not at all,
//! and neither runs for a refused append or an idempotent retry (the writer runs hooks and extras only for
//! appends that write events).

use std::fmt;
use std::sync::Arc;

use herald_core::jobs::{JobRouter, NewJob};

use super::sql::push_inserts;
use crate::PostgresConfig;
use crate::hook::{AppendExtra, AppendHook, AppendedEvent, HookError, HookWrites};

/// The job routers of a store, in registration order (see [`PostgresConfig::with_job_router`]). Compared by
/// identity.
#[derive(Clone, Default)]
pub struct JobRouters(pub(crate) Vec<Arc<dyn JobRouter>>);

impl JobRouters {
    /// True when no router is registered.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of routers registered.
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl fmt::Debug for JobRouters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JobRouters({})", self.0.len())
    }
}

impl PartialEq for JobRouters {
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len() && self.0.iter().zip(&other.0).all(|(a, b)| Arc::ptr_eq(a, b))
    }
}

impl Eq for JobRouters {}

/// A job router as an append hook: its jobs for the appended events, stamped with its clock, into the job
/// tables of the store's schema.
struct RouterHook {
    router: Arc<dyn JobRouter>,
    schema: String,
}

impl AppendHook for RouterHook {
    fn on_append(
        &self,
        stream: &str,
        events: &[AppendedEvent<'_>],
        writes: &mut HookWrites,
    ) -> Result<(), HookError> {
        let jobs = self.router.jobs_for(stream, events);
        push_inserts(writes, &self.schema, &jobs, self.router.now_micros())?;
        Ok(())
    }
}

/// The hooks the writer runs for every append: the configured append hooks, then one per job router (the
/// schema is known only now: the builder may set it after the routers). The delivery routes' statement is
/// not a hook: the writer sends it once per batch (see `routes.rs`).
pub(crate) fn store_hooks(config: &PostgresConfig) -> Vec<Arc<dyn AppendHook>> {
    let mut hooks = config.append_hooks.0.clone();
    hooks.extend(config.job_routers.0.iter().map(|router| {
        Arc::new(RouterHook {
            router: Arc::clone(router),
            schema: config.schema.clone(),
        }) as Arc<dyn AppendHook>
    }));
    hooks
}

/// The extra of one append that enqueues `jobs` at `now` in the job tables of `schema`. It may run more than
/// once (a batch decided again): it only describes the insert.
pub(crate) fn append_jobs(schema: String, jobs: Vec<NewJob>, now: i64) -> AppendExtra {
    Box::new(move |_, writes| {
        push_inserts(writes, &schema, &jobs, now)?;
        Ok(())
    })
}
