//! Extension points that write inside an append's transaction (the outbox pattern).
//!
//! Code outside the store (an outbox, a broker relay) must write its rows atomically with the events that
//! cause them: no event without its side-effect rows, no row for an event that was rolled back. When a store
//! has hooks (or an append has an extra), the writer runs that append inside its own `SAVEPOINT` of the batch
//! transaction (appends without them need none); hooks and per-append extras run inside that savepoint, after
//! the events are inserted, on the writer's connection. What they write commits or
//! rolls back with the append. An error from a hook or extra fails that append only (the other requests of the
//! batch are unaffected): the caller gets [`herald_core::Error::Backend`] and nothing of the append is stored.
//!
//! Durable jobs need no hook: a store's [job router](crate::SqliteConfig::with_job_router) and
//! [`EventStore::append_with_jobs`](herald_core::EventStore::append_with_jobs) are the built-in extension point
//! of the same kind: the writer inserts its jobs after the hooks, in the same savepoint ([`JobRouting`]; the writer's
//! side of all this is `AppendSide` below).
//!
//! Hooks run on the single writer thread, so they must be quick: a few indexed inserts, no network, no locks
//! that the writer could wait on. An idempotent retry of an already committed append writes nothing and runs
//! no hook (its rows were written with the original append).

use std::fmt;
use std::sync::Arc;

pub use herald_core::AppendedEvent;
use herald_core::delivery::{RouteMatcher, delivery_jobs};
use herald_core::{AppendResult, JobRouter, NewEvent};
use tokio::sync::Notify;

use crate::jobs::insert_jobs;

/// Called by the writer inside every append's savepoint (see the module docs). Register with
/// [`crate::SqliteConfig::with_append_hook`].
pub trait AppendHook: Send + Sync + 'static {
    /// Writes this hook's rows for `events`, just appended to `stream`, on `tx` (the writer's connection,
    /// inside the append's savepoint). An error fails this append only.
    fn on_append(
        &self,
        tx: &rusqlite::Connection,
        stream: &str,
        events: &[AppendedEvent<'_>],
    ) -> rusqlite::Result<()>;
}

/// Work for one append only, run inside its savepoint after the hooks: see [`crate::SqliteStore::append_with`].
pub type AppendExtra =
    Box<dyn FnOnce(&rusqlite::Connection, &AppendResult) -> rusqlite::Result<()> + Send>;

/// The hooks of a store, in registration order. Compared by identity.
#[derive(Clone, Default)]
pub struct AppendHooks(pub(crate) Vec<Arc<dyn AppendHook>>);

impl AppendHooks {
    /// True when no hook is registered.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for AppendHooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AppendHooks({})", self.0.len())
    }
}

impl PartialEq for AppendHooks {
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len() && self.0.iter().zip(&other.0).all(|(a, b)| Arc::ptr_eq(a, b))
    }
}

impl Eq for AppendHooks {}

/// The job router of a store, if any (see [`crate::SqliteConfig::with_job_router`]). Compared by identity.
#[derive(Clone, Default)]
pub struct JobRouting(pub(crate) Option<Arc<dyn JobRouter>>);

impl JobRouting {
    /// True when the store has a router.
    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }
}

impl fmt::Debug for JobRouting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.is_set() {
            "JobRouting(set)"
        } else {
            "JobRouting(none)"
        })
    }
}

impl PartialEq for JobRouting {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for JobRouting {}

/// What the writer runs inside an append's savepoint besides the events, and whom it tells about jobs.
pub(crate) struct AppendSide {
    /// The store's append hooks.
    pub(crate) hooks: AppendHooks,
    /// The store's job router.
    pub(crate) router: Option<Arc<dyn JobRouter>>,
    /// Notified after a commit that wrote router jobs: the store's job wake-ups.
    pub(crate) job_wake: Arc<Notify>,
}

impl AppendSide {
    /// True when an append needs nothing but its events (no savepoint).
    pub(crate) fn is_empty(&self) -> bool {
        self.hooks.is_empty() && self.router.is_none()
    }

    /// Runs the store's append hooks, then its job router, then the delivery `routes` (read in this write
    /// transaction), then this append's extra, inside the append's savepoint. Returns how many jobs the router inserted.
    pub(crate) fn run(
        &self,
        conn: &rusqlite::Connection,
        stream: &str,
        events: &[NewEvent],
        result: &AppendResult,
        routes: &[RouteMatcher],
        extra: Option<AppendExtra>,
    ) -> rusqlite::Result<usize> {
        let mut jobs = 0;
        if !self.is_empty() || !routes.is_empty() {
            let appended = AppendedEvent::list(events, result);
            for hook in &self.hooks.0 {
                hook.on_append(conn, stream, &appended)?;
            }
            if let Some(router) = &self.router {
                let routed = router.jobs_for(stream, &appended);
                if !routed.is_empty() {
                    jobs = insert_jobs(conn, &routed, router.now_micros())?.len();
                }
            }
            let delivered = delivery_jobs(routes, stream, &appended);
            if !delivered.is_empty() {
                let now = match &self.router {
                    Some(router) => router.now_micros(),
                    None => herald_core::Clock::now_micros(&herald_core::SystemClock),
                };
                jobs += insert_jobs(conn, &delivered, now)?.len();
            }
        }
        if let Some(extra) = extra {
            extra(conn, result)?;
        }
        Ok(jobs)
    }
}
