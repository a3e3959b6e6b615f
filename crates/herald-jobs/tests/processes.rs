//! Two worker processes on one job queue (a PostgreSQL schema, or an SQLite file) never run the same job twice
//! at once, and together run every job: each process (this test binary re-run as a child) has a pool of 8
//! workers; every run is logged with its start and end (wall clock, shared by the processes) and checked
//! afterwards for overlaps.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::Fixture;
use herald_jobs::{JobResult, JobsConfig, ListFilter, NewJob, WorkerPool};
use tokio_util::sync::CancellationToken;

const JOBS: u64 = 4000;
const WORKERS: usize = 8;

fn now_micros() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros()
}

/// A worker process (run by `two_processes_never_run_a_job_twice_at_once`): works the queue until its stdin
/// closes, then writes `job start end` lines to its log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of two_processes_never_run_a_job_twice_at_once"]
async fn worker_process() {
    let (Ok(url), Ok(log)) = (
        std::env::var("HERALD_JOBS_PROC_URL"),
        std::env::var("HERALD_JOBS_PROC_LOG"),
    ) else {
        return;
    };
    let jobs = common::open_url(&url, JobsConfig::default()).await.unwrap();
    let runs: Arc<Mutex<Vec<(u64, u128, u128)>>> = Arc::default();
    let r = Arc::clone(&runs);
    let stop = CancellationToken::new();
    let pool = WorkerPool::builder(jobs)
        .queue("default", WORKERS)
        .prefetch(16)
        // SQLite has no cross-process wake-up: both processes must find the jobs by polling, soon, or the first
        // to look drains the queue alone and the test shows nothing about two processes sharing it.
        .poll_interval(Duration::from_millis(20))
        .handle_raw("work", move |args, _ctx| {
            let r = Arc::clone(&r);
            async move {
                let i: u64 = args.parse().unwrap();
                let start = now_micros();
                // Some work, so that runs overlap in time across workers and processes; milliseconds, so that on
                // SQLite one process's completions do not hold the file's write lock back to back and starve the
                // other's claims (seen in CI under load: one process ran all 4,000 jobs).
                tokio::time::sleep(Duration::from_micros(2_000 + (i % 5) * 500)).await;
                let end = now_micros();
                r.lock().unwrap().push((i, start, end));
                JobResult::Success
            }
        })
        .start(stop.clone());
    println!("\nREADY");
    // Work until the parent closes our stdin.
    tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        while std::io::stdin().read_line(&mut line).unwrap_or(0) > 0 {
            line.clear();
        }
    })
    .await
    .unwrap();
    stop.cancel();
    pool.join().await;
    let mut f = std::fs::File::create(&log).unwrap();
    for (i, start, end) in runs.lock().unwrap().iter() {
        writeln!(f, "{i} {start} {end}").unwrap();
    }
    f.sync_all().unwrap();
    println!("DONE");
}

async fn two_processes_never_run_a_job_twice_at_once(f: Fixture) {
    let dir = &f.dir;
    let url = f.url.clone();
    let jobs = common::open_url(&url, JobsConfig::default()).await.unwrap();
    let mut children = Vec::new();
    for n in 0..2 {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "worker_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("HERALD_JOBS_PROC_URL", &url)
            .env(
                "HERALD_JOBS_PROC_LOG",
                dir.path().join(format!("runs-{n}.log")),
            )
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::task::spawn_blocking(move || {
            let ready = lines
                .by_ref()
                .map_while(Result::ok)
                .any(|l| l.contains("READY"));
            (ready, lines)
        });
        children.push((child, ready));
    }
    let mut waiting = Vec::new();
    for (child, ready) in children {
        let (ready, lines) = ready.await.unwrap();
        assert!(ready, "a worker process did not start");
        waiting.push((child, lines));
    }
    // Both pools are idle (and on PostgreSQL listening): enqueue now (LISTEN/NOTIFY wakes both; on SQLite
    // they find the jobs at their next poll).
    for chunk in (0..JOBS).collect::<Vec<_>>().chunks(500) {
        jobs.enqueue_bulk(
            chunk
                .iter()
                .map(|i| NewJob::raw("work", i.to_string()))
                .collect(),
        )
        .await
        .unwrap();
    }
    common::eventually("every job done", || async {
        jobs.list(ListFilter {
            limit: Some(1),
            ..Default::default()
        })
        .await
        .unwrap()
        .is_empty()
    })
    .await;
    let mut per_process = Vec::new();
    let mut runs: HashMap<u64, Vec<(u128, u128)>> = HashMap::new();
    for (n, (mut child, lines)) in waiting.into_iter().enumerate() {
        drop(child.stdin.take());
        let done = tokio::task::spawn_blocking(move || {
            // Read to the end: the child still prints after DONE.
            lines
                .map_while(Result::ok)
                .filter(|l| l.contains("DONE"))
                .count()
                > 0
        })
        .await
        .unwrap();
        assert!(done, "worker process {n} did not finish cleanly");
        assert!(child.wait().unwrap().success());
        let log = std::fs::read_to_string(dir.path().join(format!("runs-{n}.log"))).unwrap();
        let mut count = 0;
        for line in log.lines() {
            let v: Vec<u128> = line.split(' ').map(|x| x.parse().unwrap()).collect();
            runs.entry(v[0] as u64).or_default().push((v[1], v[2]));
            count += 1;
        }
        per_process.push(count);
    }
    assert_eq!(runs.len() as u64, JOBS, "every job ran");
    for (job, r) in &runs {
        for (a, x) in r.iter().enumerate() {
            for y in &r[a + 1..] {
                assert!(
                    x.1 <= y.0 || y.1 <= x.0,
                    "job {job} ran twice at once: {x:?} and {y:?}"
                );
            }
        }
    }
    // No crash, 30 s leases: nothing should even run twice.
    let twice = runs.values().filter(|r| r.len() > 1).count();
    assert_eq!(twice, 0, "{twice} jobs ran more than once");
    assert!(
        per_process.iter().all(|n| *n > 0),
        "both processes took jobs: {per_process:?}"
    );
    assert!(jobs.dead(10).await.unwrap().is_empty());
}

database_backends!(two_processes_never_run_a_job_twice_at_once);
