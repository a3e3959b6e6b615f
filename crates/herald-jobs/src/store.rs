//! [`JobStore`]: the backend-free face of the job queue. It validates every job once, reads the job clock,
//! wakes this process's workers after enqueues, and turns the port's counts into the errors callers branch on
//! (an unknown id is [`Error::JobNotFound`]); the backend behind it (`Arc<dyn JobQueue>`) only stores and
//! leases.

use std::sync::Arc;

use herald_core::jobs::{
    ClaimRequest, Claimed, Completion, DeadJob, JobInfo, JobQueue, JobsConfig, ListFilter, Start,
    Stats,
};
use herald_core::{
    AppendResult, Error, EventStore, ExpectedVersion, NewEvent, NewJob, Result, StreamName,
};
use uuid::Uuid;

/// Most jobs listed at once (`list`, `dead`).
pub const MAX_LIST_LIMIT: usize = 10_000;

/// The durable job queue, on whichever backend it was given: `herald_memory::InMemoryJobQueue`,
/// `herald_sqlite::SqliteJobQueue`, `herald_postgres::PostgresJobQueue` (or `herald::open(url)`, which picks by
/// URL). Same API and semantics on each. Cheap to clone.
#[derive(Clone)]
pub struct JobStore {
    queue: Arc<dyn JobQueue>,
}

impl std::fmt::Debug for JobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobStore")
            .field("queue", &self.queue.describe())
            .finish_non_exhaustive()
    }
}

impl<Q: JobQueue> From<Q> for JobStore {
    fn from(queue: Q) -> Self {
        JobStore::new(Arc::new(queue))
    }
}

impl JobStore {
    /// A job store over `queue`.
    pub fn new(queue: Arc<dyn JobQueue>) -> Self {
        JobStore { queue }
    }

    /// The backend.
    pub fn queue(&self) -> &Arc<dyn JobQueue> {
        &self.queue
    }

    /// The job clock's reading, µs since the epoch.
    pub fn now_micros(&self) -> i64 {
        self.queue.config().clock.now_micros()
    }

    /// The settings the queue was opened with.
    pub fn config(&self) -> &JobsConfig {
        self.queue.config()
    }

    /// Wakes idle workers of this process (done automatically after every enqueue through this handle).
    pub fn wake(&self) {
        self.queue.wakeups().notify_waiters();
    }

    /// Enqueues one job durably. Returns its id, or `None` when it has a unique key and a job with that key is
    /// already pending or running (nothing enqueued).
    #[tracing::instrument(name = "herald.jobs.enqueue", level = "debug", skip_all, fields(kind = %job.kind, queue = %job.queue))]
    pub async fn enqueue(&self, job: NewJob) -> Result<Option<Uuid>> {
        job.validate()?;
        let ids = self.queue.enqueue(vec![job]).await?;
        self.wake();
        Ok(ids.first().copied())
    }

    /// Enqueues many jobs in one transaction (all or none). Returns the ids inserted (jobs skipped for their
    /// unique key are left out).
    #[tracing::instrument(name = "herald.jobs.enqueue", level = "debug", skip_all, fields(jobs = jobs.len()))]
    pub async fn enqueue_bulk(&self, jobs: Vec<NewJob>) -> Result<Vec<Uuid>> {
        for job in &jobs {
            job.validate()?;
        }
        let ids = self.queue.enqueue(jobs).await?;
        self.wake();
        Ok(ids)
    }

    /// Appends `events` to `stream` in `store` and enqueues `jobs` in the same transaction: both commit or
    /// neither does. A refused append returns the store's own error (a version conflict is
    /// [`Error::WrongExpectedVersion`]) and enqueues nothing. The jobs go to the job queue in the store's
    /// database, so give the store this queue was opened on (`herald::open` hands out both).
    pub async fn append_with_jobs(
        &self,
        store: &dyn EventStore,
        stream: &StreamName,
        events: Vec<NewEvent>,
        expected: ExpectedVersion,
        jobs: Vec<NewJob>,
    ) -> Result<AppendResult> {
        for job in &jobs {
            job.validate()?;
        }
        let result = store
            .append_with_jobs(stream, events, expected, jobs, self.now_micros())
            .await?;
        self.wake();
        Ok(result)
    }

    /// Leases runnable jobs for a worker pool (see [`JobQueue::claim`]).
    #[tracing::instrument(name = "herald.jobs.claim", level = "debug", skip_all, fields(queue = %queue, limit))]
    pub(crate) async fn claim(
        &self,
        queue: String,
        owner: Uuid,
        limit: usize,
        limits: Arc<Vec<(String, u32)>>,
    ) -> Result<Vec<Claimed>> {
        self.queue
            .claim(ClaimRequest {
                queue,
                owner,
                limit,
                limits,
            })
            .await
    }

    /// Records started and finished runs (see [`JobQueue::record`]).
    #[tracing::instrument(name = "herald.jobs.complete", level = "debug", skip_all, fields(started = started.len(), jobs = done.len()))]
    pub(crate) async fn record(
        &self,
        owner: Uuid,
        started: Vec<Start>,
        done: Vec<Completion>,
    ) -> Result<()> {
        self.queue.record(owner, started, done).await
    }

    /// Extends the leases of every job `owner` holds.
    pub(crate) async fn renew(&self, owner: Uuid) -> Result<usize> {
        self.queue.renew(owner).await
    }

    /// Returns every job `owner` still holds to the queue (shutdown after the timeout). The attempt counts.
    pub(crate) async fn release_all(&self, owner: Uuid) -> Result<usize> {
        let n = self.queue.release_all(owner).await?;
        if n > 0 {
            self.wake();
        }
        Ok(n)
    }

    /// Counts per queue and the dead set's size.
    pub async fn stats(&self) -> Result<Stats> {
        self.queue.stats().await
    }

    /// Live jobs, in queue then enqueue order. A limit of 0 or over [`MAX_LIST_LIMIT`] is invalid input.
    pub async fn list(&self, filter: ListFilter) -> Result<Vec<JobInfo>> {
        check_limit(filter.limit.unwrap_or(100))?;
        self.queue.list(filter).await
    }

    /// One live (pending or running) job by id.
    pub async fn job(&self, id: Uuid) -> Result<Option<JobInfo>> {
        self.queue.job(id).await
    }

    /// The dead set, most recent first. A limit of 0 or over [`MAX_LIST_LIMIT`] is invalid input.
    pub async fn dead(&self, limit: usize) -> Result<Vec<DeadJob>> {
        check_limit(limit)?;
        self.queue.dead(limit).await
    }

    /// Moves a dead job back to its queue, ready now, with a fresh attempt count (history kept).
    /// [`Error::JobNotFound`] when there is no such dead job.
    pub async fn retry_dead(&self, id: Uuid) -> Result<()> {
        check_id(id)?;
        if self.queue.retry_dead(Some(id)).await? == 0 {
            return Err(Error::JobNotFound { id });
        }
        self.wake();
        Ok(())
    }

    /// Moves every dead job back to its queue. Returns how many.
    pub async fn retry_all_dead(&self) -> Result<usize> {
        let n = self.queue.retry_dead(None).await?;
        if n > 0 {
            self.wake();
        }
        Ok(n)
    }

    /// Removes a dead job for good. [`Error::JobNotFound`] when there is no such dead job.
    pub async fn discard_dead(&self, id: Uuid) -> Result<()> {
        check_id(id)?;
        match self.queue.discard_dead(id).await? {
            true => Ok(()),
            false => Err(Error::JobNotFound { id }),
        }
    }

    /// Removes a pending job (not a running one). Returns false when there is no such pending job.
    pub async fn cancel(&self, id: Uuid) -> Result<bool> {
        check_id(id)?;
        self.queue.cancel(id).await
    }
}

/// The nil UUID is never a job's id (enqueue refuses it), so asking for it is a mistake in the input, not a
/// miss.
fn check_id(id: Uuid) -> Result<()> {
    if id.is_nil() {
        return Err(Error::invalid("the nil UUID is not a job id"));
    }
    Ok(())
}

fn check_limit(limit: usize) -> Result<()> {
    if limit == 0 || limit > MAX_LIST_LIMIT {
        return Err(Error::invalid(format!(
            "limit {limit} is out of range: 1 to {MAX_LIST_LIMIT}"
        )));
    }
    Ok(())
}
