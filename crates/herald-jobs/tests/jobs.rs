//! Behaviour of the job queue: running, retries on a controlled clock, dead set, unique and ordered jobs,
//! concurrency limits, shutdown, instrumentation.

#![allow(clippy::type_complexity)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Fixture, eventually};
use herald_jobs::{
    Backoff, Error, HandlerOptions, JOB_RUN_EVENT, JobResult, JobRun, JobState, ListFilter, NewJob,
    WorkerPool,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

async fn live(jobs: &herald_jobs::JobStore) -> Vec<herald_jobs::JobInfo> {
    jobs.list(ListFilter::default()).await.unwrap()
}

async fn runs_jobs_by_priority_then_enqueue_order_and_respects_delays(f: Fixture) {
    let mut ids = Vec::new();
    for (i, prio) in [0, 5, 0, 9].into_iter().enumerate() {
        let job = NewJob::raw("echo", format!("{i}")).priority(prio);
        ids.push(f.jobs.enqueue(job).await.unwrap().unwrap());
    }
    let later = NewJob::raw("echo", "99").delay(Duration::from_secs(60));
    f.jobs.enqueue(later).await.unwrap().unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let pool = WorkerPool::builder(f.jobs.clone())
        .queue("default", 1)
        .prefetch(0)
        .handle_raw("echo", move |args, _| {
            let tx = tx.clone();
            async move {
                tx.send(args).unwrap();
                JobResult::Success
            }
        })
        .start(stop.clone());
    let mut order = Vec::new();
    for _ in 0..4 {
        order.push(rx.recv().await.unwrap());
    }
    assert_eq!(order, ["3", "1", "0", "2"]);
    eventually("the four jobs are done", || async {
        live(&f.jobs).await.len() == 1
    })
    .await;
    assert_eq!(live(&f.jobs).await[0].state, JobState::Scheduled);
    f.clock.advance(Duration::from_secs(61));
    f.jobs.wake();
    assert_eq!(rx.recv().await.unwrap(), "99");
    stop.cancel();
    pool.join().await;
}

async fn failures_follow_the_sidekiq_schedule_then_die_with_their_history(f: Fixture) {
    let id = f
        .jobs
        .enqueue(NewJob::raw("flaky", "{}").max_attempts(3))
        .await
        .unwrap()
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let pool = WorkerPool::builder(f.jobs.clone())
        .queue("default", 2)
        .handle_raw("flaky", move |_, ctx| {
            let tx = tx.clone();
            async move {
                tx.send((ctx.id, ctx.attempt)).unwrap();
                JobResult::fail(format!("boom {}", ctx.attempt))
            }
        })
        .start(stop.clone());
    for attempt in 1..=2u32 {
        assert_eq!(rx.recv().await.unwrap(), (id, attempt));
        eventually("rescheduled", || async {
            live(&f.jobs)
                .await
                .first()
                .is_some_and(|j| j.state == JobState::Scheduled)
        })
        .await;
        let job = live(&f.jobs).await.remove(0);
        let delay = job.run_at - f.jobs.now_micros();
        // count = attempt - 1: count^4 + 15 + rand(10 * (count + 1)) seconds.
        let count = i64::from(attempt - 1);
        let low = (count.pow(4) + 15) * 1_000_000;
        let high = low + 10 * (count + 1) * 1_000_000;
        assert!(
            (low..high).contains(&delay),
            "attempt {attempt}: delay {delay}µs not in [{low}, {high})"
        );
        assert_eq!(
            job.last_error.as_deref(),
            Some(format!("boom {attempt}").as_str())
        );
        // Not due yet: the queue offers nothing to run (a claim now would find no job).
        f.clock
            .advance(Duration::from_micros((low - 1_000_000) as u64));
        let stats = f.jobs.stats().await.unwrap();
        assert_eq!(
            (stats.queues[0].available, stats.queues[0].scheduled),
            (0, 1),
            "attempt {attempt}: the job is due before its backoff ends"
        );
        assert!(rx.try_recv().is_err());
        f.clock
            .advance(Duration::from_micros((high - low + 1_000_000) as u64));
        f.jobs.wake();
    }
    assert_eq!(rx.recv().await.unwrap(), (id, 3));
    eventually("dead", || async {
        f.jobs.dead(10).await.unwrap().len() == 1
    })
    .await;
    assert!(live(&f.jobs).await.is_empty());
    let dead = f.jobs.dead(10).await.unwrap().remove(0);
    assert_eq!(dead.id, id);
    assert_eq!(dead.attempt, 3);
    assert_eq!(dead.last_error.as_deref(), Some("boom 3"));
    let history: Vec<serde_json::Value> = serde_json::from_str(&dead.errors).unwrap();
    let errors: Vec<_> = history
        .iter()
        .map(|h| h["error"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(errors, ["boom 1", "boom 2", "boom 3"]);
    stop.cancel();
    pool.join().await;
}

async fn retry_discard_and_custom_backoff(f: Fixture) {
    f.jobs.enqueue(NewJob::raw("r", "1")).await.unwrap();
    f.jobs.enqueue(NewJob::raw("d", "2")).await.unwrap();
    f.jobs.enqueue(NewJob::raw("c", "3")).await.unwrap();
    let stop = CancellationToken::new();
    let runs = Arc::new(AtomicUsize::new(0));
    let r2 = Arc::clone(&runs);
    let pool = WorkerPool::builder(f.jobs.clone())
        .queue("default", 3)
        .handle_raw("r", |_, _| async {
            JobResult::retry_after(Duration::from_secs(7), "later")
        })
        .handle_raw("d", |_, _| async { JobResult::discard("not needed") })
        .handle_raw("c", move |_, _| {
            r2.fetch_add(1, Ordering::SeqCst);
            async { JobResult::fail("x") }
        })
        .options(
            "c",
            HandlerOptions {
                backoff: Some(Backoff::constant(Duration::from_secs(3))),
                ..Default::default()
            },
        )
        .start(stop.clone());
    eventually("r and c rescheduled, d gone", || async {
        let l = live(&f.jobs).await;
        l.len() == 2 && l.iter().all(|j| j.state == JobState::Scheduled)
    })
    .await;
    let now = f.jobs.now_micros();
    let by_kind: HashMap<_, _> = live(&f.jobs)
        .await
        .into_iter()
        .map(|j| (j.kind.clone(), j))
        .collect();
    assert_eq!(by_kind["r"].run_at - now, 7_000_000);
    assert_eq!(by_kind["c"].run_at - now, 3_000_000);
    assert_eq!(f.jobs.dead(10).await.unwrap().len(), 0);
    stop.cancel();
    pool.join().await;
}

async fn dead_set_retry_one_all_discard_and_limits(f: Fixture) {
    let stop = CancellationToken::new();
    for i in 0..5 {
        f.jobs
            .enqueue(NewJob::raw("bad", format!("{i}")).max_attempts(1))
            .await
            .unwrap();
    }
    let pool = WorkerPool::builder(f.jobs.clone())
        .queue("default", 5)
        .handle_raw("bad", |_, _| async { JobResult::fail("nope") })
        .start(stop.clone());
    eventually("5 dead", || async {
        f.jobs.dead(100).await.unwrap().len() == 5
    })
    .await;
    stop.cancel();
    pool.join().await;
    let dead = f.jobs.dead(100).await.unwrap();
    f.jobs.retry_dead(dead[0].id).await.unwrap();
    assert_eq!(live(&f.jobs).await.len(), 1);
    assert_eq!(live(&f.jobs).await[0].attempt, 0);
    f.jobs.discard_dead(dead[1].id).await.unwrap();
    let gone = dead[1].id;
    assert!(matches!(
        f.jobs.discard_dead(gone).await,
        Err(Error::JobNotFound { id }) if id == gone
    ));
    assert!(matches!(
        f.jobs.retry_dead(gone).await,
        Err(Error::JobNotFound { id }) if id == gone
    ));
    assert_eq!(f.jobs.retry_all_dead().await.unwrap(), 3);
    assert_eq!(live(&f.jobs).await.len(), 4);
    assert_eq!(f.jobs.dead(100).await.unwrap().len(), 0);
    let stats = f.jobs.stats().await.unwrap();
    assert_eq!(stats.queues[0].available, 4);
    assert_eq!(stats.dead, 0);

    // Size limit: a store keeping at most 2 dead jobs.
    let g = f.again().await;
    let small = g
        .reopen(common::config(&g.clock).dead_limits(2, Duration::from_secs(3600)))
        .await;
    for i in 0..4 {
        small
            .enqueue(NewJob::raw("bad", format!("{i}")).max_attempts(1))
            .await
            .unwrap();
    }
    let stop = CancellationToken::new();
    let pool = WorkerPool::builder(small.clone())
        .queue("default", 1)
        .prefetch(0)
        .handle_raw("bad", |_, _| async { JobResult::fail("nope") })
        .start(stop.clone());
    eventually("all failed", || async {
        small.list(ListFilter::default()).await.unwrap().is_empty()
    })
    .await;
    // The pool's last completion trims the dead set after the job's death commits (PostgreSQL: a statement
    // of its own); joining the pool waits for that completion.
    stop.cancel();
    pool.join().await;
    let kept: Vec<String> = small
        .dead(100)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.args)
        .collect();
    assert_eq!(kept, ["3", "2"]);
}

/// `JobStore::enqueue` answers `None` for a job skipped for its unique key, and `enqueue_bulk` leaves its id
/// out. (The unique-key semantics themselves, pending, running, racing, free again once the job is gone, are
/// the conformance suite's `unique_keys::*` cases.)
async fn enqueue_is_none_for_a_job_skipped_for_its_unique_key(f: Fixture) {
    let first = f
        .jobs
        .enqueue(NewJob::raw("u", "{}").unique_key("user-1"))
        .await
        .unwrap();
    assert!(first.is_some());
    assert_eq!(
        f.jobs
            .enqueue(NewJob::raw("u", "{}").unique_key("user-1"))
            .await
            .unwrap(),
        None
    );
    let other = NewJob::raw("u", "{}").unique_key("user-2");
    let ids = f
        .jobs
        .enqueue_bulk(vec![
            NewJob::raw("u", "{}").unique_key("user-1"),
            other.clone(),
        ])
        .await
        .unwrap();
    assert_eq!(ids, [other.id]);
    assert_eq!(live(&f.jobs).await.len(), 2);
}

async fn same_order_key_runs_one_at_a_time_in_order_even_with_retries(f: Fixture) {
    let keys = ["a", "b", "c"];
    let mut jobs = Vec::new();
    for seq in 0..30 {
        for key in keys {
            jobs.push(
                NewJob::raw("ordered", format!(r#"{{"key":"{key}","seq":{seq}}}"#)).order_key(key),
            );
        }
    }
    f.jobs.enqueue_bulk(jobs).await.unwrap();
    let running: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let done: Arc<Mutex<HashMap<String, Vec<u64>>>> = Arc::default();
    let overlap = Arc::new(AtomicUsize::new(0));
    let parallel_keys = Arc::new(AtomicUsize::new(0));
    let (r, d, o, p) = (
        running.clone(),
        done.clone(),
        overlap.clone(),
        parallel_keys.clone(),
    );
    let stop = CancellationToken::new();
    let pool = WorkerPool::builder(f.jobs.clone())
        .queue("default", 10)
        .options(
            "ordered",
            HandlerOptions {
                backoff: Some(Backoff::constant(Duration::ZERO)),
                ..Default::default()
            },
        )
        .handle_raw("ordered", move |args, ctx| {
            let (r, d, o, p) = (r.clone(), d.clone(), o.clone(), p.clone());
            async move {
                let v: serde_json::Value = serde_json::from_str(&args).unwrap();
                let key = v["key"].as_str().unwrap().to_owned();
                let seq = v["seq"].as_u64().unwrap();
                {
                    let mut r = r.lock().unwrap();
                    let n = r.entry(key.clone()).or_default();
                    *n += 1;
                    if *n > 1 {
                        o.fetch_add(1, Ordering::SeqCst);
                    }
                    if r.values().filter(|n| **n > 0).count() > 1 {
                        p.fetch_add(1, Ordering::SeqCst);
                    }
                }
                tokio::task::yield_now().await;
                tokio::time::sleep(Duration::from_millis(1)).await;
                *r.lock().unwrap().get_mut(&key).unwrap() -= 1;
                // Every third job fails its first attempt: the retry must keep its place.
                if seq.is_multiple_of(3) && ctx.attempt == 1 {
                    return JobResult::fail("first attempt fails");
                }
                d.lock().unwrap().entry(key).or_default().push(seq);
                JobResult::Success
            }
        })
        .start(stop.clone());
    eventually("all done", || async { live(&f.jobs).await.is_empty() }).await;
    stop.cancel();
    pool.join().await;
    assert_eq!(
        overlap.load(Ordering::SeqCst),
        0,
        "two jobs of one key ran at once"
    );
    assert!(
        parallel_keys.load(Ordering::SeqCst) > 0,
        "different keys never ran in parallel"
    );
    for key in keys {
        assert_eq!(
            done.lock().unwrap()[key],
            (0..30).collect::<Vec<u64>>(),
            "key {key}"
        );
    }
}

async fn concurrency_limit_per_job_type(f: Fixture) {
    let jobs = (0..12)
        .map(|i| NewJob::raw("limited", format!("{i}")))
        .collect();
    f.jobs.enqueue_bulk(jobs).await.unwrap();
    f.jobs.enqueue(NewJob::raw("free", "{}")).await.unwrap();
    let now_running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let free_ran = Arc::new(AtomicUsize::new(0));
    let (n, pk, fr) = (now_running.clone(), peak.clone(), free_ran.clone());
    let stop = CancellationToken::new();
    let pool = WorkerPool::builder(f.jobs.clone())
        .queue("default", 8)
        .options(
            "limited",
            HandlerOptions {
                max_concurrency: Some(2),
                ..Default::default()
            },
        )
        .handle_raw("limited", move |_, _| {
            let (n, pk) = (n.clone(), pk.clone());
            async move {
                let c = n.fetch_add(1, Ordering::SeqCst) + 1;
                pk.fetch_max(c, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
                n.fetch_sub(1, Ordering::SeqCst);
                JobResult::Success
            }
        })
        .handle_raw("free", move |_, _| {
            fr.fetch_add(1, Ordering::SeqCst);
            async { JobResult::Success }
        })
        .start(stop.clone());
    eventually("all done", || async { live(&f.jobs).await.is_empty() }).await;
    stop.cancel();
    pool.join().await;
    assert_eq!(peak.load(Ordering::SeqCst), 2);
    assert_eq!(free_ran.load(Ordering::SeqCst), 1);
}

async fn shutdown_finishes_running_jobs_and_releases_the_rest(f: Fixture) {
    let jobs = (0..6)
        .map(|i| NewJob::raw("slow", format!("{i}")))
        .collect();
    f.jobs.enqueue_bulk(jobs).await.unwrap();
    let (tx, mut started) = mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let pool = WorkerPool::builder(f.jobs.clone())
        .queue("default", 2)
        .prefetch(4)
        .shutdown_timeout(Duration::from_secs(10))
        .handle_raw("slow", move |_, ctx| {
            let tx = tx.clone();
            async move {
                tx.send(()).unwrap();
                ctx.shutdown.cancelled().await;
                JobResult::Success
            }
        })
        .start(stop.clone());
    started.recv().await.unwrap();
    started.recv().await.unwrap();
    stop.cancel();
    pool.join().await;
    let left = live(&f.jobs).await;
    assert_eq!(
        left.len(),
        4,
        "the two running jobs finished, four were released"
    );
    assert!(
        left.iter()
            .all(|j| j.state == JobState::Available && j.attempt == 0)
    );

    // A job that ignores shutdown is released after the timeout, its attempt counted.
    let stop = CancellationToken::new();
    let (tx, mut started) = mpsc::unbounded_channel();
    let pool = WorkerPool::builder(f.jobs.clone())
        .queue("default", 1)
        .prefetch(0)
        .shutdown_timeout(Duration::from_millis(50))
        .handle_raw("slow", move |_, _| {
            let tx = tx.clone();
            async move {
                tx.send(()).unwrap();
                std::future::pending::<()>().await;
                JobResult::Success
            }
        })
        .start(stop.clone());
    started.recv().await.unwrap();
    stop.cancel();
    pool.join().await;
    let left = live(&f.jobs).await;
    assert_eq!(left.len(), 4);
    assert!(left.iter().all(|j| j.state == JobState::Available));
    assert_eq!(left.iter().filter(|j| j.attempt == 1).count(), 1);
}

async fn every_run_is_an_instrumentation_event(f: Fixture) {
    // The notifier is process-global and every backend's tests run at once: each watches its own kinds.
    let (ok, bad) = (
        format!("instr-{:?}-ok", f.kind),
        format!("instr-{:?}-bad", f.kind),
    );
    let prefix = format!("instr-{:?}-", f.kind);
    let seen: Arc<Mutex<Vec<(String, String, u32, &'static str)>>> = Arc::default();
    let s2 = seen.clone();
    let _sub = herald_notify::subscribe(JOB_RUN_EVENT, move |e| {
        if let Some(run) = e.payload_as::<JobRun>()
            && run.kind.starts_with(&prefix)
        {
            s2.lock().unwrap().push((
                run.kind.clone(),
                run.queue.clone(),
                run.attempt,
                run.outcome,
            ));
        }
    });
    f.jobs
        .enqueue(NewJob::raw(ok.clone(), "{}").queue("q1"))
        .await
        .unwrap();
    f.jobs
        .enqueue(NewJob::raw(bad.clone(), "{}").queue("q1").max_attempts(1))
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let pool = WorkerPool::builder(f.jobs.clone())
        .queue("q1", 1)
        .prefetch(0)
        .handle_raw(ok.clone(), |_, _| async { JobResult::Success })
        .handle_raw(bad.clone(), |_, _| async { JobResult::fail("x") })
        .start(stop.clone());
    eventually("two runs seen", || async {
        seen.lock().unwrap().len() == 2
    })
    .await;
    stop.cancel();
    pool.join().await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            (ok, "q1".to_owned(), 1, "success"),
            (bad, "q1".to_owned(), 1, "dead")
        ]
    );
}

async fn lazy_progress_switches_sync_modes_and_still_runs_everything(f: Fixture) {
    let jobs = f
        .reopen(
            herald_jobs::JobsConfig::default()
                .full_sync(true)
                .durable_progress(false),
        )
        .await;
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let stop = CancellationToken::new();
    let pool = WorkerPool::builder(jobs.clone())
        .queue("default", 4)
        .handle_raw("n", move |_, _| {
            r.fetch_add(1, Ordering::SeqCst);
            async { JobResult::Success }
        })
        .start(stop.clone());
    // Enqueues (fsynced) interleave with claims and completions (not fsynced).
    for i in 0..200 {
        jobs.enqueue(NewJob::raw("n", format!("{i}")))
            .await
            .unwrap();
    }
    eventually("all ran", || async {
        ran.load(Ordering::SeqCst) == 200 && live(&jobs).await.is_empty()
    })
    .await;
    stop.cancel();
    pool.join().await;
}

async fn concurrent_opens_of_a_fresh_database_all_succeed(f: Fixture) {
    // A fresh database (file or schema) opened by several handles at once: the migrations run once, under
    // SQLite's write lock or PostgreSQL's advisory lock, and every handle works.
    let dir = tempfile::tempdir().unwrap();
    let (url, _schema) = common::fresh_url(f.kind, dir.path());
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                common::open_url(&url, herald_jobs::JobsConfig::default().full_sync(false)).await
            })
        })
        .collect();
    let mut stores = Vec::new();
    for open in opens {
        stores.push(open.await.unwrap().unwrap());
    }
    for (i, store) in stores.iter().enumerate() {
        store
            .enqueue(NewJob::raw("x", format!("{i}")))
            .await
            .unwrap();
    }
    assert_eq!(
        stores[0].list(ListFilter::default()).await.unwrap().len(),
        4
    );
}

async fn concurrency_limit_holds_across_store_handles(f: Fixture) {
    // Two pools on two handles (separate connections; on PostgreSQL as two processes would be) share one
    // per-type limit.
    let jobs = (0..24)
        .map(|i| NewJob::raw("limited", format!("{i}")))
        .collect();
    f.jobs.enqueue_bulk(jobs).await.unwrap();
    let other = f.reopen(common::config(&f.clock)).await;
    let now_running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let stop = CancellationToken::new();
    let mut pools = Vec::new();
    for store in [f.jobs.clone(), other.clone()] {
        let (n, pk) = (now_running.clone(), peak.clone());
        pools.push(
            WorkerPool::builder(store)
                .queue("default", 8)
                .poll_interval(Duration::from_millis(20))
                .options(
                    "limited",
                    HandlerOptions {
                        max_concurrency: Some(3),
                        ..Default::default()
                    },
                )
                .handle_raw("limited", move |_, _| {
                    let (n, pk) = (n.clone(), pk.clone());
                    async move {
                        let c = n.fetch_add(1, Ordering::SeqCst) + 1;
                        pk.fetch_max(c, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(3)).await;
                        n.fetch_sub(1, Ordering::SeqCst);
                        JobResult::Success
                    }
                })
                .start(stop.clone()),
        );
    }
    eventually("all done", || async { live(&f.jobs).await.is_empty() }).await;
    stop.cancel();
    for pool in pools {
        pool.join().await;
    }
    assert!(
        peak.load(Ordering::SeqCst) <= 3,
        "peak {}",
        peak.load(Ordering::SeqCst)
    );
}

all_backends!(
    runs_jobs_by_priority_then_enqueue_order_and_respects_delays,
    failures_follow_the_sidekiq_schedule_then_die_with_their_history,
    retry_discard_and_custom_backoff,
    dead_set_retry_one_all_discard_and_limits,
    enqueue_is_none_for_a_job_skipped_for_its_unique_key,
    same_order_key_runs_one_at_a_time_in_order_even_with_retries,
    concurrency_limit_per_job_type,
    shutdown_finishes_running_jobs_and_releases_the_rest,
    every_run_is_an_instrumentation_event,
    lazy_progress_switches_sync_modes_and_still_runs_everything,
    concurrency_limit_holds_across_store_handles,
);

/// Opening a fresh database concurrently needs a database (a file or a schema).
mod fresh_database {
    use super::*;

    database_backends!(concurrent_opens_of_a_fresh_database_all_succeed);
}
