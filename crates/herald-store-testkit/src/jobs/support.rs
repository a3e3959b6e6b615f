//! Helpers the job cases share: opening a backend on a [`ManualClock`], building jobs, claiming and
//! completing through the port, a recording [`JobRouter`], and waiting on a wake-up with a timeout.

use std::sync::Arc;
use std::time::Duration;

use herald_core::jobs::{
    ClaimRequest, Claimed, Completion, Finish, JobInfo, JobQueue, JobRouter, JobsConfig,
    ListFilter, NewJob, Start,
};
use herald_core::uuid::Uuid;
use herald_core::{AppendedEvent, ManualClock};
use tokio::sync::Notify;

use super::{JobsBackend, JobsFixture};

/// Where every case's clock starts: 2026-01-15T00:00:00Z, µs since the epoch (far from the wall clock, so a
/// backend reading the wall clock instead of [`JobsConfig::clock`] shows).
pub const START: i64 = 1_768_435_200_000_000;
/// The lease the cases use unless they say otherwise.
pub const LEASE: Duration = Duration::from_secs(30);
/// One second, in µs.
pub const SECOND: i64 = 1_000_000;
/// How long a case waits for something that should happen at once (a wake-up) before it fails.
pub const PROMPTLY: Duration = Duration::from_secs(10);

/// The settings cases start from: `clock`, a 30 s lease, no flushes (speed; durability is not tested here).
pub fn config(clock: &ManualClock) -> JobsConfig {
    JobsConfig::default()
        .clock(clock.clone())
        .lease(LEASE)
        .full_sync(false)
        .durable_progress(false)
}

/// A fresh fixture with [`config`] and no router, and its clock (at [`START`]).
pub async fn open(backend: &JobsBackend) -> (JobsFixture, ManualClock) {
    open_with(backend, |c| c).await
}

/// A fresh fixture with [`config`] changed by `adjust`, and its clock (at [`START`]).
pub async fn open_with(
    backend: &JobsBackend,
    adjust: impl FnOnce(JobsConfig) -> JobsConfig,
) -> (JobsFixture, ManualClock) {
    let clock = ManualClock::at_micros(START);
    let fixture = backend.open(adjust(config(&clock)), None).await;
    (fixture, clock)
}

/// A job of type `kind` in the default queue, arguments `{"n":n}`.
pub fn job(kind: &str, n: usize) -> NewJob {
    NewJob::raw(kind, format!(r#"{{"n":{n}}}"#))
}

/// Enqueues `jobs` and returns the ids inserted.
pub async fn enqueue(queue: &Arc<dyn JobQueue>, jobs: Vec<NewJob>) -> Vec<Uuid> {
    queue.enqueue(jobs).await.expect("enqueue")
}

/// Enqueues one job that must be inserted, and returns its id.
pub async fn enqueue_one(queue: &Arc<dyn JobQueue>, job: NewJob) -> Uuid {
    let id = job.id;
    let ids = enqueue(queue, vec![job]).await;
    assert_eq!(ids, [id], "the job is inserted");
    id
}

/// A fresh worker-pool id.
pub fn owner() -> Uuid {
    Uuid::now_v7()
}

/// Claims up to `limit` jobs of `queue_name` for `owner`, without type limits.
pub async fn claim(
    queue: &Arc<dyn JobQueue>,
    queue_name: &str,
    owner: Uuid,
    limit: usize,
) -> Vec<Claimed> {
    claim_limited(queue, queue_name, owner, limit, &[]).await
}

/// Claims up to `limit` jobs of `queue_name` for `owner`, with per-type limits.
pub async fn claim_limited(
    queue: &Arc<dyn JobQueue>,
    queue_name: &str,
    owner: Uuid,
    limit: usize,
    limits: &[(&str, u32)],
) -> Vec<Claimed> {
    queue
        .claim(ClaimRequest {
            queue: queue_name.to_owned(),
            owner,
            limit,
            limits: Arc::new(limits.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect()),
        })
        .await
        .expect("claim")
}

/// Claims up to `limit` jobs of `queue_name` for `owner` and records that they started (their attempts
/// count), as a worker pool running them does.
pub async fn claim_started(
    queue: &Arc<dyn JobQueue>,
    queue_name: &str,
    owner: Uuid,
    limit: usize,
) -> Vec<Claimed> {
    let claimed = claim(queue, queue_name, owner, limit).await;
    start(queue, owner, &claimed).await;
    claimed
}

/// Records, for `owner`, that the `claimed` jobs started.
pub async fn start(queue: &Arc<dyn JobQueue>, owner: Uuid, claimed: &[Claimed]) {
    queue
        .record(owner, claimed.iter().map(Start::of).collect(), Vec::new())
        .await
        .expect("record starts");
}

/// The ids of claimed jobs, in claim order.
pub fn claimed_ids(claimed: &[Claimed]) -> Vec<Uuid> {
    claimed.iter().map(|c| c.id).collect()
}

/// The completion of `claimed` with `finish` (its type not limited).
pub fn completion(claimed: &Claimed, finish: Finish) -> Completion {
    Completion {
        row: claimed.row,
        attempt: claimed.attempt,
        finish,
        ordered: claimed.ordered,
        limited: false,
    }
}

/// Completes `claimed` for `owner` with `finish`.
pub async fn finish(queue: &Arc<dyn JobQueue>, owner: Uuid, claimed: &Claimed, finish: Finish) {
    queue
        .complete(owner, vec![completion(claimed, finish)])
        .await
        .expect("complete");
}

/// A reschedule at `at` with `error`.
pub fn reschedule(at: i64, error: &str) -> Finish {
    Finish::Reschedule {
        at,
        error: error.to_owned(),
    }
}

/// Death with `error`.
pub fn dead(error: &str) -> Finish {
    Finish::Dead {
        error: error.to_owned(),
    }
}

/// Every live job (up to 10,000), in queue then enqueue order.
pub async fn live(queue: &Arc<dyn JobQueue>) -> Vec<JobInfo> {
    queue
        .list(ListFilter {
            limit: Some(10_000),
            ..ListFilter::default()
        })
        .await
        .expect("list")
}

/// The ids of `jobs`, in order.
pub fn info_ids(jobs: &[JobInfo]) -> Vec<Uuid> {
    jobs.iter().map(|j| j.id).collect()
}

/// A live job that must exist.
pub async fn live_job(queue: &Arc<dyn JobQueue>, id: Uuid) -> JobInfo {
    queue
        .job(id)
        .await
        .expect("job")
        .unwrap_or_else(|| panic!("job {id} should be live"))
}

/// The `(attempt, error)` pairs of a dead job's history (a JSON array of `{"attempt","at","error"}`),
/// checking every entry's `at` is in `times`.
pub fn history(errors: &str, times: std::ops::RangeInclusive<i64>) -> Vec<(u64, String)> {
    let entries: Vec<serde_json::Value> =
        serde_json::from_str(errors).unwrap_or_else(|e| panic!("history {errors:?}: {e}"));
    entries
        .iter()
        .map(|entry| {
            let at = entry["at"]
                .as_i64()
                .unwrap_or_else(|| panic!("history entry {entry} has an `at`"));
            assert!(times.contains(&at), "history time {at} not in {times:?}");
            (
                entry["attempt"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("history entry {entry} has an `attempt`")),
                entry["error"]
                    .as_str()
                    .unwrap_or_else(|| panic!("history entry {entry} has an `error`"))
                    .to_owned(),
            )
        })
        .collect()
}

/// Runs `act` and asserts `notify` is notified by it, within [`PROMPTLY`]. The waiter is registered before
/// `act` runs, so a notification that comes before the wait starts still counts (whether the backend wakes
/// waiters or stores a permit).
pub async fn assert_wakes<F: std::future::Future>(
    notify: Arc<Notify>,
    what: &str,
    act: F,
) -> F::Output {
    let notified = notify.notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    let out = act.await;
    if tokio::time::timeout(PROMPTLY, notified).await.is_err() {
        panic!("wakeups() was not notified within {PROMPTLY:?} after {what}");
    }
    out
}

/// A [`JobRouter`] that writes one job per appended event, of type `routed` in queue `routed`, whose
/// arguments record where the event landed: `{"stream","id","type","version","position"}`. Its clock
/// reading is the case's [`ManualClock`].
#[derive(Debug)]
pub struct RecordingRouter {
    clock: ManualClock,
}

impl RecordingRouter {
    /// A router reading `clock`.
    pub fn new(clock: &ManualClock) -> Arc<Self> {
        Arc::new(RecordingRouter {
            clock: clock.clone(),
        })
    }
}

impl JobRouter for RecordingRouter {
    fn jobs_for(&self, stream: &str, events: &[AppendedEvent<'_>]) -> Vec<NewJob> {
        events
            .iter()
            .map(|e| {
                let args = serde_json::json!({
                    "stream": stream,
                    "id": e.id.to_string(),
                    "type": e.event_type,
                    "version": e.version,
                    "position": e.position,
                });
                NewJob::raw("routed", args.to_string()).queue("routed")
            })
            .collect()
    }

    fn now_micros(&self) -> i64 {
        herald_core::Clock::now_micros(&self.clock)
    }
}

/// Where a routed job says its event landed: `(stream, event id, version, position)`.
pub fn routed(job: &JobInfo) -> (String, Uuid, u64, u64) {
    let v: serde_json::Value = serde_json::from_str(&job.args).expect("routed args are JSON");
    (
        v["stream"].as_str().expect("stream").to_owned(),
        v["id"].as_str().expect("id").parse().expect("a uuid"),
        v["version"].as_u64().expect("version"),
        v["position"].as_u64().expect("position"),
    )
}
