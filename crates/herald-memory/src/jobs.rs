//! [`InMemoryJobQueue`]: the job queue port kept in memory, standalone or sharing state with an
//! [`InMemoryStore`](crate::InMemoryStore) so that appends enqueue jobs atomically.
//!
//! All jobs sit behind one [`std::sync::Mutex`], held for the few microseconds an operation needs and never
//! across an `.await`, so every operation is trivially atomic (an enqueue is all or nothing, a claim never
//! leases a job twice). Time comes only from [`JobsConfig::clock`] (or, for jobs written by an append, the
//! caller's clock reading), never from the wall clock. Nothing is durable.
//!
//! Housekeeping is lazy, as the port allows: an expired lease is returned to its queue (or the dead set)
//! by the next claim, not when it ends, so a completion that arrives before that claim still counts. Whether
//! a pending job is `available` or `scheduled` is read off its run time, so a due job counts as available
//! at once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use herald_core::clock::micros;
use herald_core::jobs::{
    ClaimRequest, Claimed, Completion, CronTick, DeadJob, Finish, JobInfo, JobQueue, JobRouter,
    JobState, JobsConfig, ListFilter, NewJob, QueueStats, Start, Stats,
};
use herald_core::uuid::Uuid;
use herald_core::{AppendResult, AppendedEvent, Error, NewEvent, Result};
use tokio::sync::Notify;

use table::{Dead, Failure, Job, Jobs, history, state_of};

mod table;

/// How long a cron tick is remembered before the latest window's end.
const CRON_MEMORY: i64 = 7 * 24 * 3_600 * 1_000_000;
/// `list` without a limit.
const DEFAULT_LIST_LIMIT: usize = 100;

/// A job queue kept in memory: for tests, demos and the `memory://` URL. Cheap to clone; clones (and every
/// queue from [`InMemoryStore::job_queue`](crate::InMemoryStore::job_queue) of one store) share the jobs.
///
/// | capability | supported |
/// | --- | --- |
/// | priorities, unique and ordering keys, type limits, leases, dead set, cron | yes |
/// | jobs in an append's transaction | with [`InMemoryStore`](crate::InMemoryStore) |
/// | wake-ups | for enqueues, appends and completions through handles sharing the jobs |
/// | durability, other processes | no |
#[derive(Clone)]
pub struct InMemoryJobQueue {
    shared: Arc<SharedJobs>,
    config: JobsConfig,
}

impl std::fmt::Debug for InMemoryJobQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryJobQueue")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The jobs every handle on one "database" sees, and their wake-ups.
#[derive(Default)]
pub(crate) struct SharedJobs {
    state: Mutex<Jobs>,
    wakeups: Arc<Notify>,
    /// The delivery routes (`crate::routes`), by name.
    pub(crate) routes: Mutex<Vec<herald_core::delivery::DeliveryRoute>>,
}

impl SharedJobs {
    fn lock(&self) -> MutexGuard<'_, Jobs> {
        // Every operation checks before it mutates and mutates without failing, so a panic while holding the
        // lock cannot leave a half-applied change: a poisoned lock is safe to keep using.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes idle workers. Waiters registered now wake; a worker about to wait polls anyway.
    fn wake(&self) {
        self.wakeups.notify_waiters();
    }

    /// The jobs an append writes besides its events: `given` (from `append_with_jobs`, enqueued at
    /// `given_now`) and the router's for `events`, about to be appended to `stream` from `first_version` and
    /// `first_position`. Called by the store under its lock once the append is decided and before it writes
    /// anything; takes the jobs lock (store, then jobs: the only order in which both are held) and checks
    /// the jobs, so that a refusal writes nothing. `None` when there is nothing to enqueue.
    pub(crate) fn prepare_append<'a>(
        &'a self,
        router: Option<&dyn JobRouter>,
        (stream, events, first_version, first_position): (&str, &[NewEvent], u64, u64),
        given: Vec<NewJob>,
        given_now: i64,
    ) -> Result<Option<AppendJobs<'a>>> {
        let mut jobs: Vec<(NewJob, i64)> = given.into_iter().map(|j| (j, given_now)).collect();
        let routes = crate::routes::matchers(self);
        if router.is_some() || !routes.is_empty() {
            let count = events.len() as u64;
            let result = AppendResult {
                stream: stream.to_owned(),
                first_version,
                last_version: first_version + count - 1,
                first_position,
                last_position: first_position + count - 1,
                ids: events.iter().map(|e| e.id).collect(),
            };
            let appended = AppendedEvent::list(events, &result);
            let now = match router {
                Some(router) => router.now_micros(),
                None => herald_core::Clock::now_micros(&herald_core::SystemClock),
            };
            if let Some(router) = router {
                jobs.extend(
                    router
                        .jobs_for(stream, &appended)
                        .into_iter()
                        .map(|j| (j, now)),
                );
            }
            jobs.extend(
                herald_core::delivery::delivery_jobs(&routes, stream, &appended)
                    .into_iter()
                    .map(|j| (j, now)),
            );
        }
        if jobs.is_empty() {
            return Ok(None);
        }
        let state = self.lock();
        state.check_ids(jobs.iter().map(|(j, _)| j))?;
        Ok(Some(AppendJobs {
            shared: self,
            state,
            jobs,
        }))
    }
}

/// The checked jobs of an append, and the jobs lock held until the store has written the events.
pub(crate) struct AppendJobs<'a> {
    shared: &'a SharedJobs,
    state: MutexGuard<'a, Jobs>,
    jobs: Vec<(NewJob, i64)>,
}

impl AppendJobs<'_> {
    /// Inserts the jobs (skipping held unique keys), releases the jobs lock and wakes idle workers.
    pub(crate) fn commit(mut self) {
        let mut inserted = false;
        for (job, now) in std::mem::take(&mut self.jobs) {
            inserted |= self.state.insert(job, now);
        }
        let shared = self.shared;
        drop(self);
        if inserted {
            shared.wake();
        }
    }
}

impl InMemoryJobQueue {
    /// An empty queue of its own (no event store shares it).
    pub fn new(config: JobsConfig) -> Self {
        Self::on(Arc::default(), config)
    }

    /// A handle on `shared` jobs.
    pub(crate) fn on(shared: Arc<SharedJobs>, config: JobsConfig) -> Self {
        InMemoryJobQueue { shared, config }
    }

    /// The state this queue shares with its store.
    pub(crate) fn shared(&self) -> &SharedJobs {
        &self.shared
    }

    fn now(&self) -> i64 {
        self.config.clock.now_micros()
    }
}

#[async_trait]
impl JobQueue for InMemoryJobQueue {
    async fn enqueue(&self, jobs: Vec<NewJob>) -> Result<Vec<Uuid>> {
        let now = self.now();
        let ids = {
            let mut state = self.shared.lock();
            state.check_ids(&jobs)?;
            let mut ids = Vec::with_capacity(jobs.len());
            for job in jobs {
                let id = job.id;
                if state.insert(job, now) {
                    ids.push(id);
                }
            }
            ids
        };
        if !ids.is_empty() {
            self.shared.wake();
        }
        Ok(ids)
    }

    async fn claim(&self, request: ClaimRequest) -> Result<Vec<Claimed>> {
        let now = self.now();
        let mut state = self.shared.lock();
        if state.expire_leases(now) {
            state.trim_dead(&self.config, now);
        }
        // Slots left per limited type: its limit minus its running jobs, in every queue and for every owner.
        let mut slots: HashMap<&str, i64> = request
            .limits
            .iter()
            .map(|(kind, max)| (kind.as_str(), i64::from(*max)))
            .collect();
        if !slots.is_empty() {
            for job in state.live.values().filter(|j| j.owner.is_some()) {
                if let Some(left) = slots.get_mut(job.kind.as_str()) {
                    *left -= 1;
                }
            }
        }
        let mut picked = Vec::new();
        if let Some(pending) = state.pending.get(&request.queue) {
            for &(_, row) in pending {
                if picked.len() == request.limit {
                    break;
                }
                let job = &state.live[&row];
                if job.run_at > now || !state.first_of_its_key(row, job) {
                    continue;
                }
                if let Some(left) = slots.get_mut(job.kind.as_str()) {
                    if *left <= 0 {
                        continue;
                    }
                    *left -= 1;
                }
                picked.push(row);
            }
        }
        let lease_end = now.saturating_add(micros(self.config.lease));
        let mut claimed = Vec::with_capacity(picked.len());
        for row in picked {
            state.unpend(row);
            let job = state.live.get_mut(&row).expect("a live row");
            job.owner = Some(request.owner);
            job.started = false;
            job.run_at = lease_end;
            claimed.push(Claimed {
                row,
                id: job.id,
                queue: job.queue.clone(),
                kind: job.kind.clone(),
                args: job.args.clone(),
                metadata: job.metadata.clone(),
                attempt: job.attempt + 1,
                max_attempts: job.max_attempts,
                ordered: job.order_key.is_some(),
                record_start_first: job.lost_unstarted > 0,
            });
        }
        Ok(claimed)
    }

    async fn record(&self, owner: Uuid, started: Vec<Start>, done: Vec<Completion>) -> Result<()> {
        let now = self.now();
        let mut wake = false;
        {
            let mut state = self.shared.lock();
            for start in started {
                if state.held(start.row, owner, start.attempt) {
                    let job = state.live.get_mut(&start.row).expect("a held row");
                    if !job.started {
                        job.started = true;
                        job.attempt = start.attempt;
                    }
                }
            }
            let mut died = false;
            for completion in done {
                // A completion for a lease since lost (re-claimed, released, expired and returned) is stale.
                if !state.held(completion.row, owner, completion.attempt) {
                    continue;
                }
                wake |= completion.unblocks_others();
                let row = completion.row;
                let job = state.live.get_mut(&row).expect("a held row");
                // A run that finished started: its attempt counts (a release gives it back below).
                job.attempt = completion.attempt;
                job.started = false;
                match completion.finish {
                    Finish::Delete => {
                        state.remove(row);
                    }
                    Finish::Dead { error } => {
                        state.kill(row, &error, now);
                        died = true;
                    }
                    Finish::Reschedule { at, error } => {
                        let job = state.live.get_mut(&row).expect("a held row");
                        job.owner = None;
                        job.run_at = at;
                        job.errors.push(Failure {
                            attempt: job.attempt,
                            at: now,
                            error: error.clone(),
                        });
                        job.last_error = Some(error);
                        state.pend(row);
                    }
                    Finish::Release => {
                        let job = state.live.get_mut(&row).expect("a held row");
                        job.owner = None;
                        job.attempt = completion.attempt.saturating_sub(1);
                        job.run_at = now;
                        state.pend(row);
                        // Available again itself: announced like an enqueue.
                        wake = true;
                    }
                }
            }
            if died {
                state.trim_dead(&self.config, now);
            }
        }
        if wake {
            self.shared.wake();
        }
        Ok(())
    }

    async fn renew(&self, owner: Uuid) -> Result<usize> {
        let until = self.now().saturating_add(micros(self.config.lease));
        let mut state = self.shared.lock();
        let mut renewed = 0;
        for job in state.live.values_mut().filter(|j| j.owner == Some(owner)) {
            job.run_at = until;
            renewed += 1;
        }
        Ok(renewed)
    }

    async fn release_all(&self, owner: Uuid) -> Result<usize> {
        let now = self.now();
        let released = {
            let mut state = self.shared.lock();
            let rows: Vec<i64> = state
                .live
                .iter()
                .filter(|(_, j)| j.owner == Some(owner))
                .map(|(row, _)| *row)
                .collect();
            for &row in &rows {
                let job = state.live.get_mut(&row).expect("a live row");
                job.owner = None;
                job.started = false;
                job.run_at = now;
                state.pend(row);
            }
            rows.len()
        };
        if released > 0 {
            self.shared.wake();
        }
        Ok(released)
    }

    async fn stats(&self) -> Result<Stats> {
        let now = self.now();
        let state = self.shared.lock();
        let mut queues: BTreeMap<&str, QueueStats> = BTreeMap::new();
        for job in state.live.values() {
            let counts = queues
                .entry(job.queue.as_str())
                .or_insert_with(|| QueueStats {
                    queue: job.queue.clone(),
                    ..QueueStats::default()
                });
            match state_of(job, now) {
                JobState::Available => counts.available += 1,
                JobState::Scheduled => counts.scheduled += 1,
                JobState::Running => counts.running += 1,
            }
        }
        Ok(Stats {
            queues: queues.into_values().collect(),
            dead: state.dead.len() as u64,
        })
    }

    async fn list(&self, filter: ListFilter) -> Result<Vec<JobInfo>> {
        let now = self.now();
        let limit = filter.limit.unwrap_or(DEFAULT_LIST_LIMIT);
        let state = self.shared.lock();
        let mut matching: Vec<(&str, i64, &Job)> = state
            .live
            .iter()
            .filter(|(_, j)| filter.queue.as_ref().is_none_or(|q| *q == j.queue))
            .filter(|(_, j)| filter.state.is_none_or(|s| s == state_of(j, now)))
            .map(|(row, j)| (j.queue.as_str(), *row, j))
            .collect();
        matching.sort_by_key(|(queue, row, _)| (*queue, *row));
        Ok(matching
            .into_iter()
            .take(limit)
            .map(|(_, _, j)| state.info(j, now))
            .collect())
    }

    async fn job(&self, id: Uuid) -> Result<Option<JobInfo>> {
        let now = self.now();
        let state = self.shared.lock();
        Ok(state
            .by_id
            .get(&id)
            .map(|row| state.info(&state.live[row], now)))
    }

    async fn dead(&self, limit: usize) -> Result<Vec<DeadJob>> {
        let state = self.shared.lock();
        Ok(state
            .dead
            .values()
            .rev()
            .take(limit)
            .map(|d| DeadJob {
                id: d.job.id,
                queue: d.job.queue.clone(),
                kind: d.job.kind.clone(),
                args: d.job.args.clone(),
                metadata: d.job.metadata.clone(),
                attempt: d.job.attempt,
                last_error: d.job.last_error.clone(),
                errors: history(&d.job.errors),
                enqueued_at: d.job.enqueued_at,
                died_at: d.died_at,
            })
            .collect())
    }

    async fn retry_dead(&self, id: Option<Uuid>) -> Result<usize> {
        let now = self.now();
        let moved = {
            let mut state = self.shared.lock();
            let seqs: Vec<u64> = match id {
                Some(id) => state.dead_by_id.get(&id).copied().into_iter().collect(),
                None => state.dead.keys().copied().collect(),
            };
            // Check every job before moving any: all move or none does.
            let mut keys = HashSet::new();
            for seq in &seqs {
                let job = &state.dead[seq].job;
                if state.by_id.contains_key(&job.id) {
                    return Err(Error::DuplicateJob {
                        reason: format!("dead job {} has the id of a live job", job.id),
                    });
                }
                if let Some(key) = &job.unique_key
                    && (state.unique.contains_key(key) || !keys.insert(key.as_str()))
                {
                    return Err(Error::DuplicateJob {
                        reason: format!(
                            "dead job {}'s unique key `{key}` is taken by a pending or running job",
                            job.id
                        ),
                    });
                }
            }
            for seq in &seqs {
                let Dead { mut job, .. } = state.drop_dead(*seq).expect("checked above");
                job.attempt = 0;
                job.lost_unstarted = 0;
                job.run_at = now;
                job.owner = None;
                state.add(job);
            }
            seqs.len()
        };
        if moved > 0 {
            self.shared.wake();
        }
        Ok(moved)
    }

    async fn discard_dead(&self, id: Uuid) -> Result<bool> {
        let mut state = self.shared.lock();
        let Some(seq) = state.dead_by_id.get(&id).copied() else {
            return Ok(false);
        };
        Ok(state.drop_dead(seq).is_some())
    }

    async fn cancel(&self, id: Uuid) -> Result<bool> {
        let mut state = self.shared.lock();
        let Some(&row) = state.by_id.get(&id) else {
            return Ok(false);
        };
        if state.live[&row].owner.is_some() {
            return Ok(false);
        }
        let cancelled = state.remove(row);
        // Freeing an ordering key may make the next job of the key runnable.
        let wake = cancelled.order_key.is_some();
        drop(state);
        if wake {
            self.shared.wake();
        }
        Ok(true)
    }

    async fn enqueue_cron(&self, ticks: Vec<CronTick>, until: i64) -> Result<usize> {
        let now = self.now();
        let enqueued = {
            let mut state = self.shared.lock();
            let mut fresh = Vec::new();
            let mut asked = HashSet::new();
            for tick in ticks {
                let seen = state
                    .ticks
                    .get(&tick.tick)
                    .is_some_and(|s| s.contains(&tick.schedule));
                if !seen && asked.insert((tick.schedule.clone(), tick.tick)) {
                    fresh.push(tick);
                }
            }
            state.check_ids(fresh.iter().map(|t| &t.job))?;
            let mut enqueued = 0;
            for tick in fresh {
                // The tick is used up even when its job is skipped for its unique key.
                state
                    .ticks
                    .entry(tick.tick)
                    .or_default()
                    .insert(tick.schedule);
                if state.insert(tick.job, now) {
                    enqueued += 1;
                }
            }
            let keep = state.ticks.split_off(&until.saturating_sub(CRON_MEMORY));
            state.ticks = keep;
            enqueued
        };
        if enqueued > 0 {
            self.shared.wake();
        }
        Ok(enqueued)
    }

    fn config(&self) -> &JobsConfig {
        &self.config
    }

    fn wakeups(&self) -> Arc<Notify> {
        Arc::clone(&self.shared.wakeups)
    }

    fn describe(&self) -> String {
        "memory".to_owned()
    }
}
