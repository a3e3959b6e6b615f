//! Job-queue throughput and latency on SQLite or PostgreSQL, every job durably committed (SQLite
//! `synchronous = FULL`, PostgreSQL `synchronous_commit = on`).
//!
//! `cargo bench -p herald-jobs --bench jobs` (env: `JOBS_N` drain size, default 100000; `JOBS_SINGLE`
//! one-by-one enqueues, default 5000; `JOBS_SAMPLES` latency samples, default 500; `JOBS_DIR` where the
//! database goes, default a temporary directory; `JOBS_BACKEND=postgres` runs on PostgreSQL at `JOBS_PG_URL`
//! (default `postgres://root@127.0.0.1:5432/test`), each part in a fresh schema dropped afterwards). Prints
//! `RESULT {"metric":…,"value":…}` lines like the Sidekiq scripts in `shared/bench/ruby`. The queue is the
//! backend's own: `herald_sqlite::SqliteJobQueue` on a file, `herald_postgres::PostgresJobQueue` on a schema.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use herald_jobs::{JobResult, JobStore, JobsConfig, ListFilter, NewJob, WorkerPool};
use herald_postgres::{PostgresJobQueue, tokio_postgres};
use herald_sqlite::SqliteJobQueue;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn result(metric: &str, value: f64, unit: &str) {
    println!(r#"RESULT {{"metric":"{metric}","value":{value:.3},"unit":"{unit}"}}"#);
}

fn postgres() -> Option<String> {
    (std::env::var("JOBS_BACKEND").is_ok_and(|b| b == "postgres")).then(|| {
        std::env::var("JOBS_PG_URL")
            .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".to_owned())
    })
}

/// Runs one statement on a connection of its own (schema setup and cleanup).
async fn pg_execute(url: &str, sql: &str) {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to PostgreSQL");
    tokio::spawn(connection);
    client.batch_execute(sql).await.expect(sql);
}

fn schema_of(name: &str) -> String {
    format!("hjbench_{}", name.trim_end_matches(".db").replace('-', "_"))
}

/// `url` (the PostgreSQL server) with `schema=SCHEMA` added.
fn schema_url(url: &str, schema: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}schema={schema}")
}

/// One part's job queue, and its PostgreSQL schema (dropped by [`close`]).
struct Part {
    jobs: JobStore,
    schema: Option<String>,
}

async fn open(dir: &std::path::Path, name: &str) -> Part {
    let full = std::env::var("JOBS_SYNC").map_or(true, |s| s != "normal");
    let lazy = std::env::var("JOBS_PROGRESS").is_ok_and(|p| p == "lazy");
    let config = JobsConfig::default()
        .full_sync(full)
        .durable_progress(!lazy);
    match postgres() {
        Some(url) => {
            let schema = schema_of(name);
            pg_execute(&url, &format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await;
            let queue = PostgresJobQueue::open(&schema_url(&url, &schema), config)
                .await
                .expect("open");
            Part {
                jobs: JobStore::from(queue),
                schema: Some(schema),
            }
        }
        None => Part {
            jobs: JobStore::from(
                SqliteJobQueue::open(dir.join(name), config)
                    .await
                    .expect("open"),
            ),
            schema: None,
        },
    }
}

/// Drops a part's PostgreSQL schema (the SQLite files go with the temporary directory).
async fn close(part: Part) {
    let Part { jobs, schema } = part;
    drop(jobs);
    if let (Some(url), Some(schema)) = (postgres(), schema) {
        pg_execute(&url, &format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await;
    }
}

fn noop(i: usize) -> NewJob {
    NewJob::raw("noop", format!("[{i}]"))
}

async fn drain(dir: &std::path::Path, n: usize, concurrency: usize) -> f64 {
    let part = open(dir, &format!("drain-{concurrency}.db")).await;
    let jobs = part.jobs.clone();
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        jobs.enqueue_bulk(chunk.iter().map(|i| noop(*i)).collect())
            .await
            .expect("bulk");
    }
    let ran = Arc::new(AtomicUsize::new(0));
    let all = Arc::new(Notify::new());
    let (r, a) = (ran.clone(), all.clone());
    let stop = CancellationToken::new();
    let started = Instant::now();
    let mut builder = WorkerPool::builder(jobs.clone()).queue("default", concurrency);
    if let Ok(p) = std::env::var("JOBS_PREFETCH") {
        builder = builder.prefetch(p.parse().expect("JOBS_PREFETCH"));
    }
    let pool = builder
        .handle_raw("noop", move |_, _| {
            if r.fetch_add(1, Ordering::Relaxed) + 1 == n {
                a.notify_one();
            }
            async { JobResult::Success }
        })
        .start(stop.clone());
    all.notified().await;
    // Count the drain as done when the last completion is committed, not when the handler ran.
    while !jobs
        .list(ListFilter {
            limit: Some(1),
            ..Default::default()
        })
        .await
        .expect("list")
        .is_empty()
    {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    stop.cancel();
    pool.join().await;
    drop(jobs);
    close(part).await;
    n as f64 / elapsed
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let n = env("JOBS_N", 100_000);
    let single = env("JOBS_SINGLE", 5_000);
    let samples = env("JOBS_SAMPLES", 500);
    let temp = tempfile::tempdir_in(std::env::var("JOBS_DIR").unwrap_or_else(|_| ".".into()))
        .expect("temp dir");
    let dir = temp.path();
    // JOBS_ONLY=enqueue,drain,latency runs a subset (default: all).
    let only = std::env::var("JOBS_ONLY").unwrap_or_else(|_| "enqueue,drain,latency".into());
    let wants = |part: &str| only.split(',').any(|p| p == part);

    if wants("enqueue") {
        enqueue(dir, n, single).await;
    }
    if wants("drain") {
        for concurrency in [10, 25] {
            let rate = drain(dir, n, concurrency).await;
            result(&format!("drain_c{concurrency}"), rate, "jobs/s");
        }
    }
    if wants("latency") {
        latency(dir, samples).await;
    }
}

async fn enqueue(dir: &std::path::Path, n: usize, single: usize) {
    // Enqueue one by one from one task: one commit (fsync) each.
    let part = open(dir, "enqueue.db").await;
    let jobs = part.jobs.clone();
    let t = Instant::now();
    for i in 0..single {
        jobs.enqueue(noop(i)).await.expect("enqueue");
    }
    result(
        "enqueue_one_by_one_1_task",
        single as f64 / t.elapsed().as_secs_f64(),
        "jobs/s",
    );

    // One by one from 64 concurrent tasks: group commit batches them.
    let t = Instant::now();
    let per = single * 4 / 64;
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let jobs = jobs.clone();
            tokio::spawn(async move {
                for i in 0..per {
                    jobs.enqueue(noop(i)).await.expect("enqueue");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    result(
        "enqueue_one_by_one_64_tasks",
        (per * 64) as f64 / t.elapsed().as_secs_f64(),
        "jobs/s",
    );

    // Bulk: 1000 jobs per call.
    let bulk_part = open(dir, "bulk.db").await;
    let bulk = bulk_part.jobs.clone();
    let t = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        bulk.enqueue_bulk(chunk.iter().map(|i| noop(*i)).collect())
            .await
            .expect("bulk");
    }
    result(
        "enqueue_bulk_1000",
        n as f64 / t.elapsed().as_secs_f64(),
        "jobs/s",
    );
    drop((jobs, bulk));
    close(part).await;
    close(bulk_part).await;
}

async fn latency(dir: &std::path::Path, samples: usize) {
    // Enqueue → start latency with idle workers; the enqueue goes through the workers' own store handle,
    // which wakes them in process.
    let part = open(dir, "latency.db").await;
    let jobs = &part.jobs;
    let lat = measure_latency(jobs, jobs, samples).await;
    report_latency("latency", lat);
    // On PostgreSQL also through a second handle, as another process would: only LISTEN/NOTIFY wakes them.
    if let (Some(url), Some(schema)) = (postgres(), part.schema.as_deref()) {
        let other = JobStore::from(
            PostgresJobQueue::open(&schema_url(&url, schema), JobsConfig::default())
                .await
                .expect("open a second handle"),
        );
        let lat = measure_latency(jobs, &other, samples).await;
        report_latency("latency_notify", lat);
        drop(other);
    }
    close(part).await;
}

async fn measure_latency(workers: &JobStore, enqueuer: &JobStore, samples: usize) -> Vec<Duration> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let stop = CancellationToken::new();
    let pool = WorkerPool::builder(workers.clone())
        .queue("default", 10)
        // Long enough that a poll never explains a fast start.
        .poll_interval(Duration::from_secs(5))
        .handle_raw("noop", move |_, _| {
            let _ = tx.send(Instant::now());
            async { JobResult::Success }
        })
        .start(stop.clone());
    let mut lat = Vec::with_capacity(samples);
    for i in 0..samples {
        // Let the workers go idle between samples.
        tokio::time::sleep(Duration::from_millis(2)).await;
        let before = Instant::now();
        enqueuer.enqueue(noop(i)).await.expect("enqueue");
        let started = rx.recv().await.expect("ran");
        lat.push(started.duration_since(before));
    }
    stop.cancel();
    pool.join().await;
    lat
}

fn report_latency(name: &str, mut lat: Vec<Duration>) {
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    result(
        &format!("{name}_p50_ms"),
        pct(0.50).as_secs_f64() * 1000.0,
        "ms",
    );
    result(
        &format!("{name}_p99_ms"),
        pct(0.99).as_secs_f64() * 1000.0,
        "ms",
    );
}
