//! A worker process killed with SIGKILL mid-job loses nothing: its leased jobs run again in another worker
//! once the lease expires, the started one as its next attempt. On SQLite and on PostgreSQL.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::time::Duration;

use common::{Fixture, eventually};
use herald_jobs::{JobResult, JobState, JobsConfig, ListFilter, NewJob, WorkerPool};
use tokio_util::sync::CancellationToken;

const JOBS: u64 = 20;
const HANGS: u64 = 7;

fn config() -> JobsConfig {
    JobsConfig::default()
        .lease(Duration::from_secs(1))
        .full_sync(false)
}

/// The worker process that gets killed (run by `sigkill_mid_job_loses_nothing`).
#[tokio::test]
#[ignore = "child process of sigkill_mid_job_loses_nothing"]
async fn crash_child() {
    let (Ok(db), Ok(log)) = (
        std::env::var("HERALD_JOBS_CRASH_URL"),
        std::env::var("HERALD_JOBS_CRASH_LOG"),
    ) else {
        return;
    };
    let jobs = common::open_url(&db, config()).await.unwrap();
    let stop = CancellationToken::new();
    let _pool = WorkerPool::builder(jobs)
        .queue("default", 4)
        .handle_raw("work", move |args, ctx| {
            let log = log.clone();
            async move {
                let i: u64 = args.parse().unwrap();
                if i == HANGS {
                    println!("\nHANG {i} attempt {}", ctx.attempt);
                    std::future::pending::<()>().await;
                }
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(&log)
                    .unwrap();
                writeln!(f, "{i}").unwrap();
                JobResult::Success
            }
        })
        .start(stop.clone());
    std::future::pending::<()>().await;
}

async fn sigkill_mid_job_loses_nothing(f: Fixture) {
    // The fixture's database, through a handle on the system clock with a 1 s lease (what the child uses).
    let db = f.url.clone();
    let log = f.dir.path().join("done.log");
    let jobs = common::open_url(&db, config()).await.unwrap();
    let all: Vec<NewJob> = (0..JOBS)
        .map(|i| NewJob::raw("work", i.to_string()))
        .collect();
    jobs.enqueue_bulk(all).await.unwrap();

    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "crash_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("HERALD_JOBS_CRASH_URL", &db)
        .env("HERALD_JOBS_CRASH_LOG", &log)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let hang = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find(|l| l.contains("HANG"))
    })
    .await
    .unwrap()
    .expect("the child reports the hanging job");
    assert!(hang.contains("attempt 1"), "{hang}");
    // The job is running in the child (leased); once its start is recorded (attempt 1 counted), kill the
    // process (SIGKILL) mid-job.
    let hanging = || async {
        jobs.list(ListFilter {
            state: Some(JobState::Running),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .find(|j| j.args == HANGS.to_string())
    };
    eventually("the hanging job's start is recorded", || async {
        hanging().await.is_some_and(|j| j.attempt == 1)
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(hanging().await.is_some(), "the hanging job is still leased");

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let pool = WorkerPool::builder(jobs.clone())
        .queue("default", 4)
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
    eventually("every job done after the lease expired", || async {
        jobs.list(ListFilter::default()).await.unwrap().is_empty()
    })
    .await;
    stop.cancel();
    pool.join().await;
    let mut reran = HashMap::new();
    while let Ok((i, attempt)) = rx.try_recv() {
        reran.insert(i, attempt);
    }
    assert_eq!(
        reran.get(&HANGS),
        Some(&2),
        "the killed job ran again as attempt 2"
    );
    let done_in_child: BTreeSet<u64> = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    let done: BTreeSet<u64> = done_in_child
        .iter()
        .copied()
        .chain(reran.keys().copied())
        .collect();
    assert_eq!(done, (0..JOBS).collect(), "nothing lost");
    assert!(jobs.dead(10).await.unwrap().is_empty());
}

database_backends!(sigkill_mid_job_loses_nothing);
