//! `wakeups()`: idle workers are woken when jobs are enqueued, through the queue or through the store.

use herald_core::jobs::CronTick;
use herald_core::{Clock, ExpectedVersion, ManualClock, NewEvent, StreamName};

use super::JobsBackend;
use super::support::*;

/// An enqueue through the queue notifies its wake-ups.
pub async fn enqueue_wakes_waiting_workers(backend: JobsBackend) {
    let (f, _clock) = open(&backend).await;
    let q = f.queue();
    assert_wakes(q.wakeups(), "an enqueue", enqueue_one(q, job("w", 1))).await;
}

/// A cron enqueue that enqueued a job notifies the wake-ups.
pub async fn cron_enqueue_wakes_waiting_workers(backend: JobsBackend) {
    let (f, _clock) = open(&backend).await;
    let q = f.queue();
    let tick = CronTick {
        schedule: "every".to_owned(),
        tick: START,
        job: job("w", 1),
    };
    let n = assert_wakes(
        q.wakeups(),
        "a cron enqueue",
        q.enqueue_cron(vec![tick], START),
    )
    .await;
    assert_eq!(n.expect("enqueue_cron"), 1);
}

/// `append_with_jobs` through the store notifies the queue's wake-ups.
pub async fn append_with_jobs_wakes_waiting_workers(backend: JobsBackend) {
    let (f, clock) = open(&backend).await;
    let appended = assert_wakes(
        f.queue().wakeups(),
        "append_with_jobs",
        f.store().append_with_jobs(
            &StreamName::new("order-1").expect("stream"),
            vec![NewEvent::new("Placed")],
            ExpectedVersion::Any,
            vec![job("w", 1)],
            clock.now_micros(),
        ),
    )
    .await;
    appended.expect("append_with_jobs");
}

/// A plain append whose events the store's router turns into jobs notifies the queue's wake-ups.
pub async fn routed_append_wakes_waiting_workers(backend: JobsBackend) {
    let clock = ManualClock::at_micros(START);
    let f = backend
        .open(config(&clock), Some(RecordingRouter::new(&clock)))
        .await;
    let appended = assert_wakes(
        f.queue().wakeups(),
        "an append with a router",
        f.store().append(
            &StreamName::new("order-1").expect("stream"),
            vec![NewEvent::new("Placed")],
            ExpectedVersion::Any,
        ),
    )
    .await;
    appended.expect("append");
    assert_eq!(live(f.queue()).await.len(), 1);
}
