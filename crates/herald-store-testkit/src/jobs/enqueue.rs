//! Enqueueing: what a job is stored as, and when it becomes claimable.

use std::time::Duration;

use herald_core::jobs::{Finish, JobState, NewJob};
use herald_core::uuid::Uuid;

use super::JobsBackend;
use super::support::*;

/// `enqueue` returns the inserted ids in order, and each job reads back with every field it was given, no
/// attempt yet, enqueued and runnable at the clock's now.
pub async fn enqueue_returns_the_ids_and_stores_every_field(backend: JobsBackend) {
    let (f, _clock) = open(&backend).await;
    let q = f.queue();
    let full = NewJob::raw("mail", r#"{"to":"ada@example.com","n":[1,2]}"#)
        .queue("mailers")
        .priority(7)
        .max_attempts(4)
        .unique_key("mail-ada")
        .order_key("user-ada")
        .metadata(r#"{"correlation_id":"c-1","user":"ü"}"#);
    let plain = job("plain", 1);
    let ids = enqueue(q, vec![full.clone(), plain.clone()]).await;
    assert_eq!(ids, [full.id, plain.id], "ids in enqueue order");

    let got = live_job(q, full.id).await;
    assert_eq!(got.id, full.id);
    assert_eq!(
        (got.queue.as_str(), got.kind.as_str(), got.args.as_str()),
        ("mailers", "mail", full.args.as_str())
    );
    assert_eq!(got.metadata, full.metadata, "metadata kept as given");
    assert_eq!((got.priority, got.max_attempts, got.attempt), (7, 4, 0));
    assert_eq!(got.unique_key.as_deref(), Some("mail-ada"));
    assert_eq!(got.order_key.as_deref(), Some("user-ada"));
    assert_eq!(got.state, JobState::Available);
    assert_eq!(got.last_error, None);
    assert_eq!(got.run_at, START, "runnable now, by the queue's clock");
    assert_eq!(got.enqueued_at, START, "enqueued now, by the queue's clock");

    let got = live_job(q, plain.id).await;
    assert_eq!(
        (got.queue.as_str(), got.metadata.as_str()),
        ("default", "{}")
    );
    assert_eq!((got.unique_key, got.order_key), (None, None));
    assert_eq!(got.max_attempts, herald_core::jobs::DEFAULT_MAX_ATTEMPTS);
}

/// Enqueueing nothing inserts nothing and is not an error.
pub async fn empty_enqueue_inserts_nothing(backend: JobsBackend) {
    let (f, _clock) = open(&backend).await;
    assert_eq!(enqueue(f.queue(), Vec::new()).await, Vec::<Uuid>::new());
    assert!(live(f.queue()).await.is_empty());
}

/// A delayed job (`After`) and a scheduled one (`At`) are `scheduled` and not claimable until the clock
/// reaches their time; at that exact time they are. A job scheduled in the past is available at once.
pub async fn delayed_and_scheduled_jobs_wait_for_the_clock(backend: JobsBackend) {
    let (f, clock) = open(&backend).await;
    let q = f.queue();
    let me = owner();
    let delayed = enqueue_one(q, job("d", 1).delay(Duration::from_secs(60))).await;
    let at = enqueue_one(q, job("a", 2).at_micros(START + 120 * SECOND)).await;
    let past = enqueue_one(q, job("p", 3).at_micros(START - 3_600 * SECOND)).await;

    let d = live_job(q, delayed).await;
    assert_eq!(
        (d.state, d.run_at),
        (JobState::Scheduled, START + 60 * SECOND)
    );
    let a = live_job(q, at).await;
    assert_eq!(
        (a.state, a.run_at),
        (JobState::Scheduled, START + 120 * SECOND)
    );
    assert_eq!(live_job(q, past).await.state, JobState::Available);

    let now = claim(q, "default", me, 10).await;
    assert_eq!(claimed_ids(&now), [past]);
    finish(q, me, &now[0], Finish::Delete).await;
    clock.set_micros(START + 60 * SECOND - 1);
    assert!(claim(q, "default", me, 10).await.is_empty(), "1 µs early");
    clock.set_micros(START + 60 * SECOND);
    let due = claim(q, "default", me, 10).await;
    assert_eq!(claimed_ids(&due), [delayed]);
    finish(q, me, &due[0], Finish::Delete).await;
    clock.set_micros(START + 120 * SECOND - 1);
    assert!(claim(q, "default", me, 10).await.is_empty(), "1 µs early");
    clock.set_micros(START + 120 * SECOND);
    assert_eq!(claimed_ids(&claim(q, "default", me, 10).await), [at]);
}

/// `job` of an id never enqueued is `None`.
pub async fn unknown_job_is_none(backend: JobsBackend) {
    let (f, _clock) = open(&backend).await;
    enqueue_one(f.queue(), job("x", 1)).await;
    assert_eq!(f.queue().job(Uuid::now_v7()).await.expect("job"), None);
}
