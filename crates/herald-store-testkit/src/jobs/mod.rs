//! The conformance suite of the job queue port ([`herald_core::jobs`]): the cases every [`JobQueue`]
//! backend runs, the fixture a backend's factory returns, and the runner behind [`job_queue_conformance!`](crate::job_queue_conformance).
//!
//! Unlike a store case, a job case opens its backend itself, through [`JobsBackend::open`], because it
//! chooses the queue's settings (a [`ManualClock`](herald_core::ManualClock), a short lease, small dead-set
//! limits) and whether the store has a [`JobRouter`]. The factory gets those two and returns a
//! [`JobsFixture`]: an event store and a job queue on the *same* database, plus whatever must outlive them
//! (a temporary directory, a PostgreSQL schema guard).
//!
//! # Wiring a backend
//!
//! The cases are `pub async fn case(backend: JobsBackend)` in this module's submodules, one per topic
//! (`enqueue`, `claim_order`, `unique_keys`, `order_keys`, `leases`, `completions`, `type_limits`, `views`,
//! `dead_set`, `cron`, `concurrency`, `transactional`, `delivery`, `wakeups`), and
//! [`job_queue_conformance!`](crate::job_queue_conformance) expands to one test per case, named
//! `job_queue::<module>::<case>`, each on its own two-worker runtime under
//! [`CASE_TIMEOUT`](crate::CASE_TIMEOUT). The factory takes the queue's
//! [`JobsConfig`] and the store's [`JobRouter`] and returns a
//! [`JobsFixture`]: an event store and a job queue on the *same*
//! database (the jobs `append_with_jobs` and the router write must show in the queue), plus a guard.
//!
//! ```ignore
//! // tests/jobs_conformance.rs
//! use std::sync::Arc;
//! use herald_core::{JobRouter, JobsConfig};
//! use herald_store_testkit::jobs::JobsFixture;
//!
//! async fn fresh(config: JobsConfig, router: Option<Arc<dyn JobRouter>>) -> JobsFixture {
//!     let schema = herald_store_testkit::postgres::TestSchema::new("jobs");
//!     let url = schema.url();
//!     let store = /* open the store on `url`, given `router` */;
//!     let queue = /* open the job queue on `url` with `config` */;
//!     JobsFixture::new(store, queue)
//!         // Optional: more handles on the same database (own connections), for the racing cases.
//!         .with_other_handles(move || { let (url, config) = (url.clone(), config.clone()); async move {
//!             /* open another job queue on `url` with `config` */
//!         }})
//!         .with_guard(schema) // dropped after the store and queues: the schema goes last
//! }
//!
//! herald_store_testkit::job_queue_conformance!(fresh);
//! ```
//!
//! Cases synchronise on the clock and on results, never on sleeps: time moves only when a case moves the
//! `ManualClock` (every case starts it at [`support::START`], far from the wall clock, so a backend
//! reading the wall clock fails), and a wake-up is awaited under a timeout. Errors are matched by variant,
//! never by message text. When you add a case, list it in [`job_queue_conformance!`](crate::job_queue_conformance) too (a unit test checks).
//!
//! # Decisions the job suite pins
//!
//! Where [`herald_core::jobs`] leaves room, the suite settles it, and every backend's queue (memory, SQLite,
//! PostgreSQL) behaves so (change them together):
//!
//! - A job is due at its run time exactly (`run_at <= now`); a lease has expired only once the clock is past
//!   its end (`run_at < now`). Run and enqueue times come from the queue's clock (enqueue, cron, retries) or
//!   from the caller's reading (`append_with_jobs`'s `now_micros`, the router's `now_micros`).
//! - A claim counts no attempt; a recorded start does (once, however often it is recorded), and so does a
//!   `Reschedule` or `Dead` completion whose start was not recorded.
//! - An expired lease is returned by the next claim. Started: the lost attempt is recorded (last error and
//!   a history entry) and the job is claimable at once with the next attempt (or dead with none left).
//!   Not started: the job is claimable at once, untouched (attempt, last error), never dead for it, and
//!   every later claim hands it out with `record_start_first`. Until a claim returns it, the old owner's
//!   completion still counts and its renewal still extends the lease.
//! - A start or completion changes the job only while `owner` holds it at that attempt; otherwise it is
//!   ignored without error. `Release` (and only it) gives a recorded attempt back.
//! - An ordering key is one sequence across queues; any earlier live job of the key (available, scheduled,
//!   retrying or running) holds later ones back, whatever their priority. A type's limit counts its running
//!   jobs in every queue and for every owner.
//! - A dead or cancelled job frees its unique key and its ordering key. Two jobs with one unique key in one
//!   enqueue: the first is inserted.
//! - `stats` lists only queues with live jobs, in name order. `list` defaults to 100 jobs.
//! - `retry_dead` of an id not in the dead set moves nothing and returns 0 (not an error); retried jobs
//!   queue behind the live ones, in the order they died, with attempt 0, `run_at` now, their enqueue time,
//!   last error and history kept. `retry_dead(None)` with any key conflict moves nothing.
//! - `discard_dead` and `cancel` answer false for ids they do not apply to (a live job, a running job, a
//!   dead job, an unknown id).
//! - Dead jobs are trimmed by age (died before now − max age) and by count (oldest first) whenever a job
//!   dies, by a `Dead` completion or by a lease expiring on its last attempt.
//! - A cron tick whose job is skipped for its unique key is used up all the same and counts 0. Ticks are
//!   remembered at least a week before the latest window.
//! - A job skipped in an append for its unique key does not fail the append. An idempotent retry of an
//!   append enqueues nothing, whether it carries the same jobs or others.
//! - Not tested (unspecified): enqueueing a job id already in use, and wake-ups after completions.

pub mod claim_order;
pub mod completions;
pub mod concurrency;
pub mod cron;
pub mod dead_set;
pub mod delivery;
pub mod enqueue;
pub mod leases;
pub mod order_keys;
pub mod support;
pub mod transactional;
pub mod type_limits;
pub mod unique_keys;
pub mod views;
pub mod wakeups;

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use herald_core::EventStore;
use herald_core::delivery::DeliveryRoutes;
use herald_core::jobs::{JobQueue, JobRouter, JobsConfig};

/// A job queue that also keeps the delivery routes of its database (every backend's queue does).
pub trait QueueWithRoutes: JobQueue + DeliveryRoutes {}
impl<T: JobQueue + DeliveryRoutes> QueueWithRoutes for T {}

/// A future of another queue handle on the fixture's database.
type HandleFuture = Pin<Box<dyn Future<Output = Arc<dyn QueueWithRoutes>>>>;
/// Opens another queue handle on the fixture's database.
type HandleOpener = Box<dyn Fn() -> HandleFuture + Send + Sync>;
/// The factory, boxed: settings and router in, fixture out.
type Factory = Arc<
    dyn Fn(JobsConfig, Option<Arc<dyn JobRouter>>) -> Pin<Box<dyn Future<Output = JobsFixture>>>,
>;

/// What a backend's factory returns: an event store and a job queue sharing one database, and anything that
/// must outlive both (dropped after them when the case ends).
pub struct JobsFixture {
    store: Arc<dyn EventStore>,
    queue: Arc<dyn JobQueue>,
    routes: Arc<dyn DeliveryRoutes>,
    handles: Option<HandleOpener>,
    // Declared last: fields drop in order, so the store and queues are closed before the guard goes (a
    // schema dropped under open connections would make the drop wait on their locks).
    guard: Option<Box<dyn Any + Send>>,
}

impl std::fmt::Debug for JobsFixture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobsFixture")
            .field("queue", &self.queue.describe())
            .field("other_handles", &self.handles.is_some())
            .finish_non_exhaustive()
    }
}

impl JobsFixture {
    /// A fixture for `store` and `queue`, which must share one database: jobs given to
    /// [`EventStore::append_with_jobs`] and routed by the store's [`JobRouter`] must show in `queue`.
    pub fn new(store: impl EventStore, queue: impl JobQueue + DeliveryRoutes) -> Self {
        let queue = Arc::new(queue);
        JobsFixture {
            store: Arc::new(store),
            queue: queue.clone(),
            routes: queue,
            handles: None,
            guard: None,
        }
    }

    /// Keeps `guard` alive until the case has finished and the store and queues are dropped.
    pub fn with_guard(mut self, guard: impl Any + Send) -> Self {
        self.guard = Some(Box::new(guard));
        self
    }

    /// Lets cases open further queue handles on the same database, as other processes would (their own
    /// connections; on memory, another handle on the shared state). Cases that race claimers or cron
    /// enqueues spread them over such handles; without an opener they share the fixture's queue.
    pub fn with_other_handles<F, Fut>(mut self, open: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future + 'static,
        Fut::Output: JobQueue + DeliveryRoutes,
    {
        self.handles = Some(Box::new(move || {
            let opening = open();
            Box::pin(async move { Arc::new(opening.await) as Arc<dyn QueueWithRoutes> })
        }));
        self
    }

    /// The event store.
    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    /// The job queue.
    pub fn queue(&self) -> &Arc<dyn JobQueue> {
        &self.queue
    }

    /// The delivery routes of the queue's database.
    pub fn routes(&self) -> &Arc<dyn DeliveryRoutes> {
        &self.routes
    }

    /// Another queue handle on the same database when the backend offers one, else the fixture's queue.
    pub async fn other_handle(&self) -> Arc<dyn JobQueue> {
        match &self.handles {
            Some(open) => open().await as Arc<dyn JobQueue>,
            None => Arc::clone(&self.queue),
        }
    }

    /// The delivery routes through another handle on the same database (as another process would change
    /// them) when the backend offers one, else the fixture's.
    pub async fn other_routes(&self) -> Arc<dyn DeliveryRoutes> {
        match &self.handles {
            Some(open) => open().await as Arc<dyn DeliveryRoutes>,
            None => Arc::clone(&self.routes),
        }
    }
}

/// A backend under test, as a case sees it: opens fresh fixtures with the settings the case needs.
#[derive(Clone)]
pub struct JobsBackend {
    factory: Factory,
}

impl std::fmt::Debug for JobsBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobsBackend").finish_non_exhaustive()
    }
}

impl JobsBackend {
    /// Wraps a factory: an `async fn(JobsConfig, Option<Arc<dyn JobRouter>>) -> JobsFixture` (or a closure
    /// returning such a future) that opens a fresh, empty database each call.
    pub fn new<F, Fut>(factory: F) -> Self
    where
        F: Fn(JobsConfig, Option<Arc<dyn JobRouter>>) -> Fut + 'static,
        Fut: Future<Output = JobsFixture> + 'static,
    {
        JobsBackend {
            factory: Arc::new(move |config, router| Box::pin(factory(config, router))),
        }
    }

    /// A fresh, empty database with a queue opened with `config` and a store given `router`.
    pub async fn open(
        &self,
        config: JobsConfig,
        router: Option<Arc<dyn JobRouter>>,
    ) -> JobsFixture {
        (self.factory)(config, router).await
    }
}

/// Runs one job-queue case on a fresh runtime under [`crate::CASE_TIMEOUT`]: what each test generated by
/// [`job_queue_conformance!`](crate::job_queue_conformance) calls. Public so a backend can run a single case by hand.
pub fn run_jobs_case<C, CFut>(name: &str, backend: JobsBackend, case: C)
where
    C: FnOnce(JobsBackend) -> CFut,
    CFut: Future<Output = ()>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("building a Tokio runtime");
    runtime.block_on(async {
        if tokio::time::timeout(crate::CASE_TIMEOUT, case(backend))
            .await
            .is_err()
        {
            panic!(
                "job queue conformance case {name} did not finish within {:?}",
                crate::CASE_TIMEOUT
            );
        }
    });
}

/// Expands to one test per job-queue conformance case, for a backend `factory`: an `fn` or closure taking
/// `(JobsConfig, Option<Arc<dyn JobRouter>>)` and returning a future of a [`JobsFixture`] on a fresh, empty
/// database.
///
/// Tests are generated in a module `job_queue`, one module per topic inside it, named like the case
/// functions in [`jobs`](crate::jobs), e.g. `job_queue::leases::expired_lease_goes_to_another_owner`.
/// Invoke once per test file, at module level.
///
/// ```ignore
/// async fn fresh(config: JobsConfig, router: Option<Arc<dyn JobRouter>>) -> JobsFixture {
///     let store = herald_memory::InMemoryStore::with_job_router(router);
///     let queue = store.job_queue(config);
///     JobsFixture::new(store, queue)
/// }
/// herald_store_testkit::job_queue_conformance!(fresh);
/// ```
#[macro_export]
macro_rules! job_queue_conformance {
    ($factory:expr $(,)?) => {
        fn __herald_job_queue_backend() -> $crate::jobs::JobsBackend {
            $crate::jobs::JobsBackend::new($factory)
        }
        mod job_queue {
            $crate::__job_queue_cases!(__herald_job_queue_backend);
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __job_queue_module {
    ($backend:ident, $module:ident : [$($case:ident),* $(,)?]) => {
        mod $module {
            $(
                #[test]
                fn $case() {
                    $crate::jobs::run_jobs_case(
                        concat!("job_queue::", stringify!($module), "::", stringify!($case)),
                        super::super::$backend(),
                        $crate::jobs::$module::$case,
                    );
                }
            )*
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __job_queue_cases {
    ($backend:ident) => {
        $crate::__job_queue_module!($backend, enqueue: [
            enqueue_returns_the_ids_and_stores_every_field,
            empty_enqueue_inserts_nothing,
            delayed_and_scheduled_jobs_wait_for_the_clock,
            unknown_job_is_none,
        ]);
        $crate::__job_queue_module!($backend, claim_order: [
            priority_first_then_enqueue_order,
            one_claim_returns_jobs_in_order,
            claim_takes_at_most_the_limit,
            queues_are_separate,
            a_claim_leases_the_job_and_its_start_counts_the_attempt,
        ]);
        $crate::__job_queue_module!($backend, unique_keys: [
            second_enqueue_while_pending_inserts_nothing,
            second_enqueue_while_running_inserts_nothing,
            key_is_free_again_once_the_job_is_gone,
            same_key_twice_in_one_batch_keeps_the_first,
            racing_enqueues_of_one_key_insert_once,
        ]);
        $crate::__job_queue_module!($backend, order_keys: [
            only_the_first_job_of_a_key_is_claimable,
            a_later_job_waits_for_its_key_whatever_its_priority,
            a_rescheduled_job_keeps_its_place_and_blocks_its_key,
            a_dead_job_frees_its_key,
            a_delayed_first_job_blocks_its_key,
            a_released_job_keeps_its_place,
            a_cancelled_first_job_frees_its_key,
            an_ordering_key_spans_queues,
        ]);
        $crate::__job_queue_module!($backend, leases: [
            expired_lease_goes_to_another_owner_with_the_next_attempt,
            an_unstarted_lease_expires_back_to_the_queue_untouched,
            a_start_for_a_lost_lease_changes_nothing,
            lease_holds_until_it_ends,
            stale_owner_completion_changes_nothing,
            completion_for_an_earlier_attempt_changes_nothing,
            completion_before_anyone_reclaims_still_counts,
            expiry_on_the_last_attempt_sends_the_job_to_the_dead_set,
            renew_extends_the_lease,
            release_all_returns_the_jobs_counting_started_attempts,
        ]);
        $crate::__job_queue_module!($backend, completions: [
            delete_removes_the_job,
            reschedule_waits_then_runs_the_next_attempt,
            dead_moves_the_job_with_its_history,
            finish_release_does_not_count_the_attempt,
            several_completions_in_one_call,
            another_owners_completion_changes_nothing,
        ]);
        $crate::__job_queue_module!($backend, type_limits: [
            limit_caps_one_claim_and_skips_to_other_types,
            limit_counts_jobs_running_for_other_owners,
            limit_counts_running_jobs_of_every_queue,
            a_finished_or_rescheduled_job_frees_its_slot,
        ]);
        $crate::__job_queue_module!($backend, views: [
            empty_queue_has_no_stats,
            stats_count_per_queue_in_name_order,
            a_due_scheduled_job_counts_as_available,
            list_is_in_queue_then_enqueue_order,
            list_filters_and_limits,
            job_by_id_sees_pending_and_running_jobs_only,
            config_and_describe,
        ]);
        $crate::__job_queue_module!($backend, dead_set: [
            dead_set_is_most_recent_first_up_to_the_limit,
            retry_one_dead_job_with_fresh_attempts_and_its_history,
            retry_every_dead_job,
            retry_of_an_unknown_dead_job_moves_nothing,
            retry_with_a_taken_unique_key_is_a_duplicate_and_moves_nothing,
            discard_dead,
            cancel_removes_pending_jobs_only,
            dead_set_is_trimmed_by_count,
            dead_set_is_trimmed_by_age,
        ]);
        $crate::__job_queue_module!($backend, cron: [
            each_tick_is_enqueued_once,
            schedules_have_their_own_ticks,
            overlapping_windows_enqueue_only_new_ticks,
            racing_schedulers_enqueue_each_tick_once,
            a_tick_whose_job_is_unique_is_consumed,
            recent_ticks_are_remembered,
        ]);
        $crate::__job_queue_module!($backend, concurrency: [
            racing_claimers_never_lease_a_job_twice,
            racing_claimers_share_a_type_limit,
            racing_claimers_take_one_job_per_ordering_key,
            enqueues_racing_claims_are_each_claimed_once,
        ]);
        $crate::__job_queue_module!($backend, transactional: [
            append_with_jobs_commits_events_and_jobs,
            wrong_expected_version_leaves_no_job,
            duplicate_event_id_leaves_no_job,
            invalid_append_leaves_no_job,
            idempotent_retry_enqueues_nothing_again,
            unique_key_taken_skips_the_job_not_the_append,
            router_jobs_follow_every_append_with_final_positions,
            router_jobs_keep_positions_under_racing_appends,
            refused_appends_route_nothing,
        ]);
        $crate::__job_queue_module!($backend, delivery: [
            routes_are_added_listed_and_removed,
            bad_routes_are_refused_and_store_nothing,
            appends_write_one_job_per_matching_event_and_route,
            a_route_added_elsewhere_applies_to_the_next_append,
            refused_appends_write_no_delivery_job,
            concurrent_appends_each_get_their_own_delivery_jobs,
        ]);
        $crate::__job_queue_module!($backend, wakeups: [
            enqueue_wakes_waiting_workers,
            cron_enqueue_wakes_waiting_workers,
            append_with_jobs_wakes_waiting_workers,
            routed_append_wakes_waiting_workers,
        ]);
    };
}

#[cfg(test)]
mod tests {
    /// Every `pub async fn` in `src/jobs` (but `support`) must be listed in `__job_queue_cases!`, or backends
    /// would silently not run it.
    #[test]
    fn every_job_case_is_listed_in_the_macro() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/jobs");
        let source = std::fs::read_to_string(dir.join("mod.rs")).unwrap();
        let listing = &source[source.find("macro_rules! __job_queue_cases").unwrap()..];
        let mut missing = Vec::new();
        let mut modules = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let module = path.file_stem().unwrap().to_str().unwrap().to_owned();
            if module == "mod" || module == "support" {
                continue;
            }
            modules += 1;
            let cases = std::fs::read_to_string(&path).unwrap();
            let block_start = listing
                .find(&format!("$backend, {module}: ["))
                .unwrap_or_else(|| panic!("module {module} is not in the macro"));
            let block = &listing[block_start..];
            let block = &block[..block.find("]);").unwrap()];
            for line in cases.lines() {
                if let Some(rest) = line.strip_prefix("pub async fn ") {
                    let name = &rest[..rest.find(['(', '<']).unwrap()];
                    if !block.contains(&format!(" {name},")) {
                        missing.push(format!("{module}::{name}"));
                    }
                }
            }
        }
        assert!(modules > 10, "found only {modules} case modules");
        assert!(
            missing.is_empty(),
            "cases missing from the macro: {missing:?}"
        );
    }
}
