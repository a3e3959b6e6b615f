//! Attempts count when a job starts, not when it is claimed, across a real SIGKILL: a worker process killed
//! while it holds many prefetched jobs burns no attempt of the jobs it never started, and a job that kills
//! its worker every time still reaches the dead set instead of looping. On SQLite and on PostgreSQL (this test
//! binary re-run as the worker child).

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use common::{Fixture, eventually};
use herald_core::jobs::ClaimRequest;
use herald_jobs::{JobResult, JobState, JobStore, JobsConfig, ListFilter, NewJob, WorkerPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Jobs enqueued: far more than the child's concurrency plus its prefetch, so a claim takes a full batch.
const JOBS: u64 = 300;
/// The child pool's concurrency: at most this many jobs start in it.
const CONCURRENCY: usize = 4;
/// How long a child-process test waits for a child to do its part before it fails.
const CHILD_TIMEOUT: Duration = Duration::from_secs(30);

fn config() -> JobsConfig {
    JobsConfig::default()
        .lease(Duration::from_secs(1))
        .full_sync(false)
}

/// Every job (up to 10,000) in `state`.
async fn jobs_in(jobs: &JobStore, state: JobState) -> Vec<herald_jobs::JobInfo> {
    jobs.list(ListFilter {
        state: Some(state),
        limit: Some(10_000),
        ..Default::default()
    })
    .await
    .unwrap()
}

fn spawn_child(test: &str, url: &str, log: &std::path::Path) -> std::process::Child {
    std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", test, "--test-threads=1"])
        .env("HERALD_JOBS_ATTEMPTS_URL", url)
        .env("HERALD_JOBS_ATTEMPTS_LOG", log)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// Appends `line` to the file at `log` (each line one `write`, so it survives a SIGKILL right after).
fn log_line(log: &str, line: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(log)
        .unwrap();
    f.write_all(format!("{line}\n").as_bytes()).unwrap();
}

fn read_log(log: &std::path::Path) -> Vec<u64> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect()
}

/// The worker process of `sigkill_burns_no_attempt_of_prefetched_jobs`: every job it starts logs its number
/// and hangs, so exactly `CONCURRENCY` jobs start while the rest of its claim waits in its buffer.
#[tokio::test]
#[ignore = "child process of sigkill_burns_no_attempt_of_prefetched_jobs"]
async fn hanging_worker_child() {
    let (Ok(url), Ok(log)) = (
        std::env::var("HERALD_JOBS_ATTEMPTS_URL"),
        std::env::var("HERALD_JOBS_ATTEMPTS_LOG"),
    ) else {
        return;
    };
    let jobs = common::open_url(&url, config()).await.unwrap();
    let stop = CancellationToken::new();
    let _pool = WorkerPool::builder(jobs)
        .queue("default", CONCURRENCY)
        .handle_raw("work", move |args, _ctx| {
            log_line(&log, &args);
            std::future::pending::<JobResult>()
        })
        .start(stop.clone());
    std::future::pending::<()>().await;
}

/// With `max_attempts = 1`, a worker killed (SIGKILL) after its first job started while it held a full claim
/// of prefetched jobs: afterwards at most the jobs it started (its concurrency) are dead, and every other job
/// runs to completion in a second worker, as its first attempt.
async fn sigkill_burns_no_attempt_of_prefetched_jobs(f: Fixture) {
    let url = f.url.clone();
    let log = f.dir.path().join("started.log");
    let jobs = common::open_url(&url, config()).await.unwrap();
    let all: Vec<NewJob> = (0..JOBS)
        .map(|i| NewJob::raw("work", i.to_string()).max_attempts(1))
        .collect();
    jobs.enqueue_bulk(all).await.unwrap();

    let mut child = spawn_child("hanging_worker_child", &url, &log);
    eventually("the child started a job", || async {
        !read_log(&log).is_empty()
    })
    .await;
    // The claim that handed out the started job leased its whole batch in the same commit.
    let leased = jobs_in(&jobs, JobState::Running).await.len();
    assert!(
        leased > 4 * CONCURRENCY,
        "the child holds prefetched jobs ({leased} leased)"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let started_in_child: BTreeSet<u64> = read_log(&log).into_iter().collect();
    assert!(started_in_child.len() <= CONCURRENCY);

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    // Leases long enough that a loaded machine cannot make this pool lose one (and run a job twice).
    let second = common::open_url(&url, config().lease(Duration::from_secs(30)))
        .await
        .unwrap();
    let pool = WorkerPool::builder(second)
        .queue("default", CONCURRENCY)
        .poll_interval(Duration::from_millis(50))
        .handle_raw("work", move |args, ctx| {
            let tx = tx.clone();
            async move {
                tx.send((args.parse::<u64>().unwrap(), ctx.attempt))
                    .unwrap();
                JobResult::Success
            }
        })
        .start(stop.clone());
    eventually(
        "every job done or dead after the leases expired",
        || async { jobs.list(ListFilter::default()).await.unwrap().is_empty() },
    )
    .await;
    stop.cancel();
    tokio::time::timeout(CHILD_TIMEOUT, pool.join())
        .await
        .expect("the second pool stops");

    let mut ran: HashMap<u64, u32> = HashMap::new();
    while let Ok((i, attempt)) = rx.try_recv() {
        assert!(ran.insert(i, attempt).is_none(), "job {i} ran twice");
    }
    let dead: BTreeSet<u64> = jobs
        .dead(10_000)
        .await
        .unwrap()
        .iter()
        .map(|d| d.args.parse().unwrap())
        .collect();
    // A job that got a slot in the child may have its start recorded (then, with one attempt allowed, it is
    // dead) or not (then it runs again below); the child may also have died between recording a start and
    // logging it. Every other job must run, as its first attempt.
    assert!(
        dead.len() <= CONCURRENCY,
        "{} jobs dead, but at most {CONCURRENCY} started (logged as started: {started_in_child:?}): {dead:?}",
        dead.len(),
    );
    for i in 0..JOBS {
        match (ran.get(&i), dead.contains(&i)) {
            (Some(attempt), false) => assert_eq!(*attempt, 1, "job {i} ran as its first attempt"),
            (None, true) => {}
            (Some(_), true) => panic!("job {i} ran and is dead"),
            (None, false) => panic!("job {i} neither ran nor died"),
        }
    }
}

/// The worker process of `a_job_that_kills_its_worker_reaches_the_dead_set`: the `poison` job ends the
/// process the moment it starts, before the pool can record anything more.
#[tokio::test]
#[ignore = "child process of a_job_that_kills_its_worker_reaches_the_dead_set"]
async fn poisoned_worker_child() {
    let (Ok(url), Ok(log)) = (
        std::env::var("HERALD_JOBS_ATTEMPTS_URL"),
        std::env::var("HERALD_JOBS_ATTEMPTS_LOG"),
    ) else {
        return;
    };
    let jobs = common::open_url(&url, config()).await.unwrap();
    let stop = CancellationToken::new();
    let _pool = WorkerPool::builder(jobs)
        .queue("default", CONCURRENCY)
        .poll_interval(Duration::from_millis(50))
        .handle_raw("poison", move |_args, ctx| poison(&log, ctx.attempt))
        .start(stop.clone());
    std::future::pending::<()>().await;
}

/// Logs the run's attempt and ends the process.
fn poison(log: &str, attempt: u32) -> std::future::Ready<JobResult> {
    log_line(log, &attempt.to_string());
    std::process::exit(POISONED)
}

/// The exit status of a worker the poison job ended.
const POISONED: i32 = 86;

/// Returns expired leases (the housekeeping every claim starts with) without leasing anything: a claim on a
/// queue that holds no jobs.
async fn housekeep(jobs: &JobStore) {
    let claimed = jobs
        .queue()
        .claim(ClaimRequest {
            queue: "nothing-here".to_owned(),
            owner: Uuid::now_v7(),
            limit: 1,
            limits: Arc::default(),
        })
        .await
        .unwrap();
    assert!(claimed.is_empty());
}

/// A job that kills its worker the moment it starts, maybe before its start is recorded, still uses up its
/// attempts: with `max_attempts = 2` it reaches the dead set after at most 3 runs (one may go uncounted;
/// after it, every start is recorded before the job runs), instead of killing workers forever.
async fn a_job_that_kills_its_worker_reaches_the_dead_set(f: Fixture) {
    const MAX_ATTEMPTS: u32 = 2;
    let url = f.url.clone();
    let log = f.dir.path().join("poison.log");
    let jobs = common::open_url(&url, config()).await.unwrap();
    let poison = NewJob::raw("poison", "{}").max_attempts(MAX_ATTEMPTS);
    let id = poison.id;
    jobs.enqueue(poison).await.unwrap();
    let mut workers = 0;
    loop {
        // The last worker's lease (1 s) must expire and be returned, to the queue or the dead set.
        eventually("the poisoned worker's lease expired", || async {
            housekeep(&jobs).await;
            jobs.job(id)
                .await
                .unwrap()
                .is_none_or(|j| j.state != JobState::Running)
        })
        .await;
        if !jobs.dead(10).await.unwrap().is_empty() {
            break;
        }
        assert!(
            workers <= MAX_ATTEMPTS,
            "the job killed {workers} workers and is still not dead (their runs' attempts: {:?})",
            read_log(&log)
        );
        workers += 1;
        let mut child = spawn_child("poisoned_worker_child", &url, &log);
        let status = tokio::time::timeout(
            CHILD_TIMEOUT,
            tokio::task::spawn_blocking(move || child.wait().unwrap()),
        )
        .await
        .expect("the poisoned worker ended within the timeout")
        .unwrap();
        assert_eq!(status.code(), Some(POISONED), "ended by the job");
    }
    let dead = jobs.dead(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].id, dead[0].attempt), (id, MAX_ATTEMPTS));
    let runs = read_log(&log);
    assert_eq!(runs.len(), workers as usize, "one run per worker");
    assert!(runs.len() <= MAX_ATTEMPTS as usize + 1, "runs: {runs:?}");
}

database_backends!(
    sigkill_burns_no_attempt_of_prefetched_jobs,
    a_job_that_kills_its_worker_reaches_the_dead_set
);
