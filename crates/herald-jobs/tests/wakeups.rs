//! Cross-process wake-ups on PostgreSQL when a completion makes another job runnable: a job that held an
//! ordering key, or a slot of a type with a concurrency limit, finishes in one process, and the next job of
//! that key (or type), which only another process works, starts at once rather than at that process's next
//! poll. The two processes are two store handles (each with its own connections and its own `LISTEN`
//! connection; nothing in-process links them), each with a pool on a queue of its own and a 30 s poll
//! interval, so that a start within the 2 s bound can only come from a wake-up.
//!
//! Without the completion's `NOTIFY` these tests time out at the bound. They cannot observe the end of B's
//! last claim before the completion (an empty claim leaves no trace), so a claim of B delayed past the
//! completion's commit would find the job without a wake-up: the probe in a queue of its own keeps that
//! window to a few round trips (before the fix, 1 run in ~12 of the limited-type cases passed that way).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Kind, eventually};
use herald_jobs::{HandlerOptions, JobResult, NewJob, WorkerPool};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

/// Far longer than the bound: a test that only passes by polling times out.
const POLL: Duration = Duration::from_secs(30);
/// Generous for a wake-up (milliseconds), far below the poll.
const BOUND: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holds {
    /// Both jobs share the ordering key `k`.
    OrderKey,
    /// Both jobs are of a type limited to one running job (both pools declare the limit).
    Limit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ends {
    Success,
    /// Retry in an hour (a reschedule: frees a limited slot; an ordered job keeps its key).
    RetryLater,
    /// Fails its only attempt: the dead set (frees its key).
    Dies,
}

async fn completion_in_one_process_wakes_the_other(test: &str, holds: Holds, ends: Ends) {
    let Some(f) = common::fixture(Kind::Postgres, test).await else {
        return;
    };
    let a = f.jobs.clone();
    let b = f.reopen(common::config(&f.clock)).await;
    let limit = HandlerOptions {
        max_concurrency: Some(1),
        ..Default::default()
    };

    // A works queue "a": its job waits for the gate, then ends as `ends` says.
    let (a_tx, mut a_events) = mpsc::unbounded_channel::<(&'static str, Instant)>();
    let gate = Arc::new(Notify::new());
    let g = Arc::clone(&gate);
    let mut pool_a = WorkerPool::builder(a.clone())
        .queue("a", 4)
        .poll_interval(POLL)
        .handle_raw("step", move |_, _| {
            let (tx, g) = (a_tx.clone(), Arc::clone(&g));
            async move {
                tx.send(("started", Instant::now())).unwrap();
                g.notified().await;
                tx.send(("finished", Instant::now())).unwrap();
                match ends {
                    Ends::Success => JobResult::Success,
                    Ends::RetryLater => JobResult::retry_after(Duration::from_secs(3600), "later"),
                    Ends::Dies => JobResult::fail("gives up"),
                }
            }
        });
    // B works queue "b" and, for the probe, queue "p": it reports what it starts.
    let (b_tx, mut b_events) = mpsc::unbounded_channel::<(String, Instant)>();
    let mut pool_b = WorkerPool::builder(b.clone())
        .queue("b", 4)
        .queue("p", 1)
        .poll_interval(POLL)
        .handle_raw("step", {
            let tx = b_tx.clone();
            move |_, _| {
                tx.send(("step".to_owned(), Instant::now())).unwrap();
                async { JobResult::Success }
            }
        })
        .handle_raw("probe", move |_, _| {
            b_tx.send(("probe".to_owned(), Instant::now())).unwrap();
            async { JobResult::Success }
        });
    if holds == Holds::Limit {
        pool_a = pool_a.options("step", limit.clone());
        pool_b = pool_b.options("step", limit);
    }
    let stop = CancellationToken::new();
    let pool_a = pool_a.start(stop.clone());
    let pool_b = pool_b.start(stop.clone());

    let job = |queue: &str| {
        // One attempt only when the first job is to die (a retry needs an attempt left).
        let attempts = if ends == Ends::Dies { 1 } else { 3 };
        let job = NewJob::raw("step", "{}")
            .queue(queue)
            .max_attempts(attempts);
        match holds {
            Holds::OrderKey => job.order_key("k"),
            Holds::Limit => job,
        }
    };
    // 1. The first job runs in A (and holds the key or the type's only slot until the gate opens).
    a.enqueue(job("a")).await.unwrap();
    assert_eq!(a_events.recv().await.unwrap().0, "started");
    // 2. The second job, which only B works, waits behind it. The probe, enqueued with it, shows that B was
    //    woken by A's NOTIFY (which wakes all of B's fetchers: queue "b"'s claims while the first job holds
    //    the key or slot). It is in a queue of its own, so that its completion wakes only that queue's
    //    fetcher: once it is committed, queue "b" is idle until a wake-up or its poll.
    let probe = NewJob::raw("probe", "{}").queue("p");
    let probe_id = probe.id;
    a.enqueue_bulk(vec![job("b"), probe]).await.unwrap();
    assert_eq!(b_events.recv().await.unwrap().0, "probe", "B ran the probe");
    eventually("the probe's completion committed", || async {
        b.job(probe_id).await.unwrap().is_none()
    })
    .await;

    // 3. The first job finishes in A; B must start the second one long before its next poll.
    gate.notify_one();
    let (what, finished) = a_events.recv().await.unwrap();
    assert_eq!(what, "finished");
    let started = tokio::time::timeout(BOUND, b_events.recv()).await;
    let Ok(Some((what, started))) = started else {
        panic!(
            "B did not start the second job within {BOUND:?} of the first one finishing in A \
             ({holds:?}, {ends:?}); B polls only every {POLL:?}"
        );
    };
    assert_eq!(what, "step");
    assert!(
        started >= finished,
        "the second job started after the first"
    );

    stop.cancel();
    pool_a.join().await;
    pool_b.join().await;
    match ends {
        Ends::Dies => assert_eq!(a.dead(10).await.unwrap().len(), 1),
        Ends::RetryLater => assert_eq!(a.stats().await.unwrap().queues[0].scheduled, 1),
        Ends::Success => {}
    }
}

#[tokio::test]
async fn a_success_freeing_an_order_key_wakes_another_process() {
    completion_in_one_process_wakes_the_other(
        "a_success_freeing_an_order_key_wakes_another_process",
        Holds::OrderKey,
        Ends::Success,
    )
    .await;
}

#[tokio::test]
async fn a_death_freeing_an_order_key_wakes_another_process() {
    completion_in_one_process_wakes_the_other(
        "a_death_freeing_an_order_key_wakes_another_process",
        Holds::OrderKey,
        Ends::Dies,
    )
    .await;
}

#[tokio::test]
async fn a_success_freeing_a_limited_slot_wakes_another_process() {
    completion_in_one_process_wakes_the_other(
        "a_success_freeing_a_limited_slot_wakes_another_process",
        Holds::Limit,
        Ends::Success,
    )
    .await;
}

#[tokio::test]
async fn a_retry_later_freeing_a_limited_slot_wakes_another_process() {
    completion_in_one_process_wakes_the_other(
        "a_retry_later_freeing_a_limited_slot_wakes_another_process",
        Holds::Limit,
        Ends::RetryLater,
    )
    .await;
}
