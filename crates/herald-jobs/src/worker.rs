// One file on purpose: fetcher, runner, completer and heartbeat are one pool with one shutdown order.
//! The worker pool: per-queue fetchers, handlers, leases, completions, graceful shutdown.
//!
//! Each queue has one fetcher task. It claims jobs in batches (one transaction leases many) up to the queue's
//! concurrency plus a prefetch, and starts one task per job; at most `concurrency` run at once per queue. When
//! nothing is runnable it waits for a wake-up — an enqueue through this process's [`JobStore`], a commit of the
//! event store it follows, the committed completions of its queue's jobs, on PostgreSQL an enqueue in any
//! process or a completion in any process that frees an ordering key or a limited type's slot
//! (`LISTEN`/`NOTIFY`) — or the poll interval (on SQLite jobs enqueued by other processes; scheduled jobs
//! coming due, expired leases). Starts and finished runs go to one completer task that records them in batches: one
//! commit for everything that finished during the previous commit, with the starts of a batch earlier (most jobs
//! finish by then, and their completion records the start). A claim counts no attempt, a start does (herald-core's `JobQueue`,
//! "Attempts"): jobs prefetched but not started when the process dies go back to the queue untouched. A job
//! that lost such a lease before waits for its start to commit before it runs, so a job that kills its worker
//! is counted. A heartbeat renews the pool's leases; if the process dies they expire and other workers run the
//! jobs again (at-least-once).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use herald_core::{EventStore, RecordedEvent};
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use herald_core::clock::micros;
use herald_core::jobs::{Claimed, Completion, Finish, JobType, Start};

use crate::events::EventJobArgs;
use herald_core::Backoff;

use crate::job::{JobContext, JobResult};
use crate::store::JobStore;

type HandlerFn = Arc<dyn Fn(String, JobContext) -> BoxFuture<'static, JobResult> + Send + Sync>;

/// Per-job-type settings of a pool.
#[derive(Debug, Clone, Default)]
pub struct HandlerOptions {
    /// The retry schedule (default: [`Backoff::sidekiq`]).
    pub backoff: Option<Backoff>,
    /// Most jobs of this type running at once, across every process on the database.
    pub max_concurrency: Option<u32>,
}

/// The instrumentation event delivered (via herald-notify's global notifier, name `job.run`) after every run.
#[derive(Debug, Clone)]
pub struct JobRun {
    /// Job id.
    pub id: Uuid,
    /// Job type.
    pub kind: String,
    /// Queue.
    pub queue: String,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// How long the handler ran.
    pub duration: Duration,
    /// `success`, `retry`, `discard`, `failure`, `dead` (failure with no attempt left).
    pub outcome: &'static str,
    /// The job's metadata JSON (correlation/causation of the causing event).
    pub metadata: String,
}

/// The instrumentation name of [`JobRun`] events.
pub const JOB_RUN_EVENT: &str = "job.run";

/// Builds a [`WorkerPool`].
pub struct WorkerPoolBuilder {
    jobs: JobStore,
    queues: Vec<(String, usize)>,
    handlers: HashMap<String, HandlerFn>,
    options: HashMap<String, HandlerOptions>,
    events: Option<Arc<dyn EventStore>>,
    poll_interval: Duration,
    shutdown_timeout: Duration,
    prefetch: Option<usize>,
}

impl std::fmt::Debug for WorkerPoolBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerPoolBuilder")
            .field("queues", &self.queues)
            .finish_non_exhaustive()
    }
}

impl WorkerPoolBuilder {
    /// Works `queue` with at most `concurrency` jobs running at once.
    pub fn queue(mut self, queue: impl Into<String>, concurrency: usize) -> Self {
        self.queues.push((queue.into(), concurrency.max(1)));
        self
    }

    /// Handles jobs of type `T`. The handler returns a [`JobResult`]; arguments that do not deserialize send
    /// the job straight to the dead set (retrying cannot fix them).
    pub fn handle<T, F, Fut>(mut self, handler: F) -> Self
    where
        T: JobType,
        F: Fn(T, JobContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = JobResult> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let f: HandlerFn = Arc::new(
            move |args: String, ctx: JobContext| match serde_json::from_str::<T>(&args) {
                Ok(args) => handler(args, ctx).boxed(),
                Err(e) => {
                    let error = format!("{BAD_ARGS}{e}");
                    async move { JobResult::Fail { error } }.boxed()
                }
            },
        );
        self.handlers.insert(T::NAME.to_owned(), f);
        self
    }

    /// Handles jobs of type `kind` with raw JSON arguments.
    pub fn handle_raw<F, Fut>(mut self, kind: impl Into<String>, handler: F) -> Self
    where
        F: Fn(String, JobContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = JobResult> + Send + 'static,
    {
        self.handlers
            .insert(kind.into(), Arc::new(move |a, c| handler(a, c).boxed()));
        self
    }

    /// Runs the async event handler `name` (routed with [`crate::AsyncHandlers::route`]): the job loads its
    /// event from the store given to [`WorkerPoolBuilder::events`]. An event that no longer exists discards
    /// the job.
    pub fn handle_events<F, Fut>(mut self, name: impl Into<String>, handler: F) -> Self
    where
        F: Fn(RecordedEvent, JobContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = JobResult> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let events = self.events.clone();
        let f: HandlerFn = Arc::new(move |args: String, ctx: JobContext| {
            let handler = Arc::clone(&handler);
            let events = events.clone();
            async move {
                let Some(events) = events else {
                    return JobResult::retry(
                        "no event store given to the worker pool (.events(store))",
                    );
                };
                let args: EventJobArgs = match serde_json::from_str(&args) {
                    Ok(a) => a,
                    Err(e) => return JobResult::fail(format!("{BAD_ARGS}{e}")),
                };
                match events.event(args.event_id).await {
                    Ok(Some(event)) => handler(event, ctx).await,
                    Ok(None) => {
                        JobResult::discard(format!("event {} no longer exists", args.event_id))
                    }
                    Err(e) => JobResult::fail(format!("cannot load event {}: {e}", args.event_id)),
                }
            }
            .boxed()
        });
        self.handlers.insert(name.into(), f);
        self
    }

    /// The event store async event handlers load their events from (set it before `handle_events`). Its
    /// commits also wake the pool, so jobs written by append hooks start without waiting for a poll.
    pub fn events(mut self, store: Arc<dyn EventStore>) -> Self {
        self.events = Some(store);
        self
    }

    /// Per-job-type options.
    pub fn options(mut self, kind: impl Into<String>, options: HandlerOptions) -> Self {
        self.options.insert(kind.into(), options);
        self
    }

    /// How often an idle queue looks for work it was not woken for (default 1 s).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// How long shutdown waits for running jobs before releasing them (default 25 s).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Jobs leased ahead of free slots, per queue, fixed (default: adaptive, starting at 8 × the concurrency, at
    /// least 128, doubling up to 64 × the concurrency (at least 1,024) while the workers run out of jobs during
    /// a claim, halving back while prefetched jobs wait for slots; so prefetched jobs wait about one claim's
    /// latency, whatever the jobs' duration). More prefetch
    /// means fewer claim transactions (throughput: measured best around 256 for no-op jobs) but a job enqueued
    /// with a higher priority may wait behind the prefetched ones, and one process may lease jobs that an idle
    /// process could have run.
    pub fn prefetch(mut self, n: usize) -> Self {
        self.prefetch = Some(n);
        self
    }

    /// Starts the pool. It runs until `shutdown` is cancelled; then it stops claiming, lets running jobs
    /// finish up to the shutdown timeout, releases the rest, and [`WorkerPool::join`] returns.
    pub fn start(self, shutdown: CancellationToken) -> WorkerPool {
        let owner = Uuid::now_v7();
        let shared = Arc::new(Shared {
            jobs: self.jobs.clone(),
            owner,
            handlers: self.handlers,
            options: self.options,
            shutdown: shutdown.clone(),
        });
        let limits: Arc<Vec<(String, u32)>> = Arc::new(
            shared
                .options
                .iter()
                .filter_map(|(k, o)| o.max_concurrency.map(|m| (k.clone(), m)))
                .collect(),
        );
        let (done_tx, done_rx) = mpsc::unbounded_channel::<Report>();
        let mut tasks = JoinSet::new();
        let completer = tokio::spawn(completer(self.jobs.clone(), owner, done_rx));
        if let Some(events) = &self.events {
            let mut head = events.watch_head();
            let jobs = self.jobs.clone();
            let stop = shutdown.clone();
            tasks.spawn(async move {
                loop {
                    tokio::select! {
                        changed = head.changed() => if changed.is_err() { break } else { jobs.wake() },
                        () = stop.cancelled() => break,
                    }
                }
            });
        }
        for (queue, concurrency) in self.queues {
            let state = Arc::new(QueueState {
                in_flight: AtomicUsize::new(0),
                freed: Notify::new(),
            });
            let base = (concurrency * 8).max(128);
            let prefetch = match self.prefetch {
                Some(n) => Prefetch::fixed(n),
                None => Prefetch {
                    now: base,
                    min: base,
                    max: (concurrency * 64).max(1024),
                },
            };
            tasks.spawn(fetcher(
                Arc::clone(&shared),
                queue,
                concurrency,
                prefetch,
                Arc::clone(&limits),
                state,
                done_tx.clone(),
                self.poll_interval,
                self.shutdown_timeout,
            ));
        }
        drop(done_tx);
        let heartbeat = tokio::spawn(heartbeat(self.jobs.clone(), owner));
        WorkerPool {
            owner,
            handle: tokio::spawn(async move {
                while tasks.join_next().await.is_some() {}
                let _ = completer.await;
                heartbeat.abort();
                let jobs = shared.jobs.clone();
                if let Err(e) = jobs.release_all(owner).await {
                    tracing::error!(error = %e, "herald-jobs: releasing jobs at shutdown failed");
                }
            }),
        }
    }
}

const BAD_ARGS: &str = "arguments do not deserialize: ";

/// A running pool of workers.
#[derive(Debug)]
pub struct WorkerPool {
    owner: Uuid,
    handle: tokio::task::JoinHandle<()>,
}

impl WorkerPool {
    /// A pool on `jobs`; add queues and handlers, then [`WorkerPoolBuilder::start`].
    pub fn builder(jobs: JobStore) -> WorkerPoolBuilder {
        WorkerPoolBuilder {
            jobs,
            queues: Vec::new(),
            handlers: HashMap::new(),
            options: HashMap::new(),
            events: None,
            poll_interval: Duration::from_secs(1),
            shutdown_timeout: Duration::from_secs(25),
            prefetch: None,
        }
    }

    /// This pool's lease owner id.
    pub fn owner(&self) -> Uuid {
        self.owner
    }

    /// Waits until the pool has shut down (after its token is cancelled).
    pub async fn join(self) {
        let _ = self.handle.await;
    }
}

struct Shared {
    jobs: JobStore,
    owner: Uuid,
    handlers: HashMap<String, HandlerFn>,
    options: HashMap<String, HandlerOptions>,
    shutdown: CancellationToken,
}

/// A queue's prefetch: fixed (`min == max`) or adapting between `min` and `max`.
#[derive(Debug, Clone, Copy)]
struct Prefetch {
    now: usize,
    min: usize,
    max: usize,
}

impl Prefetch {
    fn fixed(n: usize) -> Self {
        Prefetch {
            now: n,
            min: n,
            max: n,
        }
    }
    fn grow(&mut self) {
        self.now = (self.now * 2).clamp(self.min, self.max);
    }
    fn shrink(&mut self) {
        self.now = (self.now / 2).clamp(self.min, self.max);
    }
}

/// What a job's task tells the completer.
enum Report {
    /// The job is starting. With a sender, the job waits to hear whether the start committed before it
    /// runs ([`Claimed::record_start_first`]).
    Started(Start, Option<oneshot::Sender<bool>>),
    /// The job finished (or was released unstarted).
    Done(Completion, Arc<QueueState>),
}

struct QueueState {
    /// Claimed jobs of this queue not yet finished (waiting for a slot or running). A finished job leaves
    /// at once, before its completion is committed, so the next claim overlaps that commit (on SQLite they
    /// often share one transaction): a cycle costs one commit's wait instead of two.
    in_flight: AtomicUsize,
    /// Signalled when a job finishes and when completions are committed (which may unblock jobs of the same
    /// ordering key or a type at its concurrency limit).
    freed: Notify,
}

#[allow(clippy::too_many_arguments)]
async fn fetcher(
    shared: Arc<Shared>,
    queue: String,
    concurrency: usize,
    mut prefetch: Prefetch,
    limits: Arc<Vec<(String, u32)>>,
    state: Arc<QueueState>,
    done: mpsc::UnboundedSender<Report>,
    poll: Duration,
    shutdown_timeout: Duration,
) {
    let slots = Arc::new(Semaphore::new(concurrency));
    let mut running = JoinSet::new();
    let wake = shared.jobs.queue().wakeups();
    loop {
        if shared.shutdown.is_cancelled() {
            break;
        }
        let capacity = concurrency + prefetch.now;
        // Register for wake-ups before looking, so an enqueue committing during the claim is not missed.
        let woken = wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let freed = state.freed.notified();
        tokio::pin!(freed);
        freed.as_mut().enable();
        let in_flight = state.in_flight.load(Ordering::Acquire);
        let room = capacity.saturating_sub(in_flight);
        // Claim in batches: wait until at least a quarter of the capacity is free (or nothing is in flight).
        if room == 0 || (in_flight > 0 && room < capacity / 4) {
            tokio::select! {
                () = &mut freed => {}
                () = shared.shutdown.cancelled() => break,
            }
            continue;
        }
        // Prefetched jobs still waiting for a slot: the prefetch is more than the workers need.
        if in_flight > concurrency + prefetch.now / 2 {
            prefetch.shrink();
        }
        let claimed = match shared
            .jobs
            .claim(queue.clone(), shared.owner, room, Arc::clone(&limits))
            .await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, queue, "herald-jobs: claim failed; retrying after the poll interval");
                Vec::new()
            }
        };
        while running.try_join_next().is_some() {}
        // A full claim after which nothing is left in flight: the workers ran out of jobs while it ran, and
        // more are waiting. Lease more per claim (fewer claims, each waiting for its commit).
        if claimed.len() == room && state.in_flight.load(Ordering::Acquire) == 0 {
            prefetch.grow();
        }
        if claimed.is_empty() {
            tokio::select! {
                () = &mut woken => {}
                () = &mut freed => {}
                () = tokio::time::sleep(poll) => {}
                () = shared.shutdown.cancelled() => break,
            }
            continue;
        }
        state.in_flight.fetch_add(claimed.len(), Ordering::AcqRel);
        for job in claimed {
            let shared = Arc::clone(&shared);
            let slots = Arc::clone(&slots);
            let done = done.clone();
            let state = Arc::clone(&state);
            let limited = limits.iter().any(|(kind, _)| *kind == job.kind);
            running.spawn(async move {
                let row = job.row;
                let attempt = job.attempt;
                let ordered = job.ordered;
                let permit = tokio::select! {
                    p = slots.acquire_owned() => p.ok(),
                    () = shared.shutdown.cancelled() => None,
                };
                let finish = match permit {
                    Some(_permit) if !shared.shutdown.is_cancelled() => {
                        if begin(&done, &job).await {
                            run_job(&shared, job).await
                        } else {
                            Finish::Release
                        }
                    }
                    _ => Finish::Release,
                };
                state.in_flight.fetch_sub(1, Ordering::AcqRel);
                state.freed.notify_waiters();
                let _ = done.send(Report::Done(
                    Completion {
                        row,
                        attempt,
                        finish,
                        ordered,
                        limited,
                    },
                    state,
                ));
            });
        }
    }
    // Shutdown: jobs waiting for a slot release themselves; running ones get the timeout.
    let deadline = tokio::time::sleep(shutdown_timeout);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            next = running.join_next() => if next.is_none() { break },
            () = &mut deadline => {
                tracing::warn!(queue, left = running.len(), "herald-jobs: shutdown timeout; releasing running jobs");
                running.abort_all();
                break;
            }
        }
    }
}

/// Reports `job`'s start to the completer. A job that lost a lease before any start of it was recorded waits
/// until its start has committed: its last worker may have died running it, and this run must count. Returns
/// whether the job may run (false: its start could not be recorded; it is released unrun).
async fn begin(done: &mpsc::UnboundedSender<Report>, job: &Claimed) -> bool {
    if !job.record_start_first {
        // Recorded with the next batch; if the process dies first, the lease comes back unstarted and the
        // job's next run records its start first.
        let _ = done.send(Report::Started(Start::of(job), None));
        return true;
    }
    let (ack, committed) = oneshot::channel();
    if done
        .send(Report::Started(Start::of(job), Some(ack)))
        .is_err()
    {
        return false;
    }
    // The completer answers every report it takes (after its retries); a dropped sender means it is gone.
    committed.await.unwrap_or(false)
}

async fn run_job(shared: &Shared, job: Claimed) -> Finish {
    let ctx = JobContext {
        id: job.id,
        kind: job.kind.clone(),
        queue: job.queue.clone(),
        attempt: job.attempt,
        max_attempts: job.max_attempts,
        metadata: job.metadata.clone(),
        shutdown: shared.shutdown.clone(),
    };
    let started = Instant::now();
    let result = match shared.handlers.get(&job.kind) {
        Some(handler) => {
            let fut = handler(job.args, ctx);
            // A panicking handler is a failure of this run, not of the worker.
            match tokio::spawn(fut).await {
                Ok(r) => r,
                Err(e) if e.is_panic() => {
                    JobResult::fail(format!("handler panicked: {}", panic_text(e)))
                }
                Err(_) => JobResult::retry("handler task cancelled"),
            }
        }
        None => JobResult::fail(format!(
            "no handler for job type `{}` in this worker pool",
            job.kind
        )),
    };
    let duration = started.elapsed();
    let now = shared.jobs.now_micros();
    let exhausted = job.attempt >= job.max_attempts;
    let backoff = || {
        shared
            .options
            .get(&job.kind)
            .and_then(|o| o.backoff.clone())
            .unwrap_or_else(Backoff::sidekiq)
            .delay(job.attempt)
    };
    let (finish, outcome) = match result {
        JobResult::Success => (Finish::Delete, "success"),
        JobResult::Discard { .. } => (Finish::Delete, "discard"),
        JobResult::Fail { error } if error.starts_with(BAD_ARGS) => {
            (Finish::Dead { error }, "dead")
        }
        JobResult::Retry { reason: error, .. } | JobResult::Fail { error } if exhausted => {
            (Finish::Dead { error }, "dead")
        }
        r @ (JobResult::Retry { .. } | JobResult::Fail { .. }) => {
            let label = r.label();
            let (delay, error) = match r {
                JobResult::Retry { after, reason } => (after.unwrap_or_else(backoff), reason),
                JobResult::Fail { error } => (backoff(), error),
                _ => unreachable!("matched above"),
            };
            (
                Finish::Reschedule {
                    at: now.saturating_add(micros(delay)),
                    error,
                },
                label,
            )
        }
    };
    herald_notify::notify(JOB_RUN_EVENT, || JobRun {
        id: job.id,
        kind: job.kind,
        queue: job.queue,
        attempt: job.attempt,
        duration,
        outcome,
        metadata: job.metadata,
    });
    finish
}

fn panic_text(e: tokio::task::JoinError) -> String {
    let payload = e.into_panic();
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic)".to_owned()
    }
}

/// How long the completer holds a start back when nothing else comes: a job that finishes meanwhile records
/// its start with its completion; a longer one has it recorded (and visible) after this.
const START_HOLD: Duration = Duration::from_millis(20);

/// Records starts and completions in batches: everything that finished while the previous batch committed, in
/// one write, with the starts received a batch earlier. Holding a start back one batch (or [`START_HOLD`] when
/// nothing else comes) lets most jobs record it with their completion, at no cost: under load a no-op job
/// often starts just before a batch is taken and finishes just after. Starts a job waits for
/// ([`Claimed::record_start_first`]) go into the next write.
async fn completer(jobs: JobStore, owner: Uuid, mut reports: mpsc::UnboundedReceiver<Report>) {
    // Between attempts to record a batch whose commit failed (a lock held past the busy timeout, a server
    // restart): 100 ms doubling, at most 2 s; after five, the leases take over.
    let retry = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(2));
    let mut batch = Vec::new();
    let mut held: Vec<Start> = Vec::new();
    loop {
        let open = if held.is_empty() {
            reports.recv_many(&mut batch, 4096).await > 0
        } else {
            match tokio::time::timeout(START_HOLD, reports.recv_many(&mut batch, 4096)).await {
                Ok(received) => received > 0,
                // Nothing came for a while: the held starts go alone.
                Err(_) => true,
            }
        };
        if !open && held.is_empty() {
            break;
        }
        let mut fresh = Vec::new();
        let mut starts = Vec::new();
        let mut acks = Vec::new();
        let mut completions = Vec::new();
        let mut states = Vec::new();
        for report in batch.drain(..) {
            match report {
                Report::Started(start, None) => fresh.push(start),
                Report::Started(start, Some(ack)) => {
                    starts.push(start);
                    acks.push(ack);
                }
                Report::Done(completion, state) => {
                    completions.push(completion);
                    states.push(state);
                }
            }
        }
        // A completion records its run's start itself.
        let any_start = !held.is_empty() || !fresh.is_empty();
        if any_start && !completions.is_empty() {
            let finished: HashSet<(i64, u32)> =
                completions.iter().map(|c| (c.row, c.attempt)).collect();
            held.retain(|s| !finished.contains(&(s.row, s.attempt)));
            fresh.retain(|s| !finished.contains(&(s.row, s.attempt)));
        }
        let hold_fresh = open && !fresh.is_empty() && completions.is_empty() && starts.is_empty();
        if hold_fresh && held.is_empty() {
            // Only new starts: hold them for the next batch (or the hold's end).
            held = fresh;
            continue;
        }
        starts.append(&mut held);
        if open {
            held = fresh;
        } else {
            // Closing: nothing more will finish; record every start.
            starts.append(&mut fresh);
        }
        if starts.is_empty() && completions.is_empty() {
            continue;
        }
        let n = completions.len();
        let mut attempt = 0u32;
        let recorded = loop {
            // Copies kept for a retry of a failed commit (rare: a lock held past busy_timeout).
            match jobs
                .record(owner, starts.clone(), completions.clone())
                .await
            {
                Ok(()) => break true,
                Err(e) if attempt < 5 => {
                    attempt += 1;
                    tracing::warn!(error = %e, "herald-jobs: recording starts and completions failed; retrying");
                    tokio::time::sleep(retry.delay(attempt)).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, jobs = n, "herald-jobs: completions lost; the jobs will run again after their lease");
                    break false;
                }
            }
        };
        for ack in acks {
            let _ = ack.send(recorded);
        }
        // Finished jobs already left `in_flight`; their committed completions may unblock others.
        let mut notified: Vec<*const QueueState> = Vec::new();
        for state in states {
            let key = Arc::as_ptr(&state);
            if !notified.contains(&key) {
                notified.push(key);
                state.freed.notify_waiters();
            }
        }
        if !open {
            break;
        }
    }
}

/// Renews the pool's leases every third of the lease, also during shutdown (until the pool aborts it).
async fn heartbeat(jobs: JobStore, owner: Uuid) {
    let every = (jobs.config().lease / 3).max(Duration::from_millis(10));
    loop {
        tokio::time::sleep(every).await;
        if let Err(e) = jobs.renew(owner).await {
            tracing::warn!(error = %e, "herald-jobs: lease renewal failed");
        }
    }
}
