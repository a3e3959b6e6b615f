//! Ordering keys: jobs sharing a key are claimed one at a time, in enqueue order, and a retrying job keeps
//! its place.

use std::time::Duration;

use herald_core::jobs::Finish;

use super::JobsBackend;
use super::support::*;

/// Only the first job of a key is claimable; jobs of other keys and without a key are not held back. Once
/// the first is done, the next of its key is.
pub async fn only_the_first_job_of_a_key_is_claimable(backend: JobsBackend) {
    let (f, _clock) = open(&backend).await;
    let q = f.queue();
    let a1 = enqueue_one(q, job("o", 1).order_key("a")).await;
    let a2 = enqueue_one(q, job("o", 2).order_key("a")).await;
    let b1 = enqueue_one(q, job("o", 3).order_key("b")).await;
    let free = enqueue_one(q, job("o", 4)).await;
    let a3 = enqueue_one(q, job("o", 5).order_key("a")).await;
    let me = owner();
    let got = claim(q, "default", me, 10).await;
    assert_eq!(claimed_ids(&got), [a1, b1, free]);
    assert!(
        claim(q, "default", me, 10).await.is_empty(),
        "a2 waits while a1 runs"
    );
    finish(q, me, &got[0], Finish::Delete).await;
    let next = claim(q, "default", me, 10).await;
    assert_eq!(claimed_ids(&next), [a2], "a3 waits for a2");
    finish(q, me, &next[0], Finish::Delete).await;
    assert_eq!(claimed_ids(&claim(q, "default", me, 10).await), [a3]);
}

/// A later job of a key waits for the earlier one even with a higher priority.
pub async fn a_later_job_waits_for_its_key_whatever_its_priority(backend: JobsBackend) {
    let (f, _clock) = open(&backend).await;
    let q = f.queue();
    let first = enqueue_one(q, job("o", 1).order_key("a")).await;
    enqueue_one(q, job("o", 2).order_key("a").priority(100)).await;
    let me = owner();
    assert_eq!(claimed_ids(&claim(q, "default", me, 10).await), [first]);
}

/// A rescheduled job keeps its place: the next job of its key stays blocked while it waits and when it runs
/// again; only its deletion frees the key.
pub async fn a_rescheduled_job_keeps_its_place_and_blocks_its_key(backend: JobsBackend) {
    let (f, clock) = open(&backend).await;
    let q = f.queue();
    let a1 = enqueue_one(q, job("o", 1).order_key("a")).await;
    let a2 = enqueue_one(q, job("o", 2).order_key("a")).await;
    let me = owner();
    let c = claim(q, "default", me, 10).await.remove(0);
    assert_eq!(c.id, a1);
    finish(q, me, &c, reschedule(START + 60 * SECOND, "try later")).await;
    assert!(
        claim(q, "default", me, 10).await.is_empty(),
        "a2 waits behind the retrying a1"
    );
    clock.advance(Duration::from_secs(60));
    let again = claim(q, "default", me, 10).await;
    assert_eq!(claimed_ids(&again), [a1], "a1 runs again, a2 still waits");
    assert_eq!(again[0].attempt, 2);
    finish(q, me, &again[0], Finish::Delete).await;
    assert_eq!(claimed_ids(&claim(q, "default", me, 10).await), [a2]);
}

/// A job that dies frees its key.
pub async fn a_dead_job_frees_its_key(backend: JobsBackend) {
    let (f, _clock) = open(&backend).await;
    let q = f.queue();
    enqueue_one(q, job("o", 1).order_key("a")).await;
    let a2 = enqueue_one(q, job("o", 2).order_key("a")).await;
    let me = owner();
    let c = claim(q, "default", me, 10).await.remove(0);
    finish(q, me, &c, dead("no")).await;
    assert_eq!(claimed_ids(&claim(q, "default", me, 10).await), [a2]);
}

/// A first job of a key that is not due yet holds the key: later jobs of the key wait for it.
pub async fn a_delayed_first_job_blocks_its_key(backend: JobsBackend) {
    let (f, clock) = open(&backend).await;
    let q = f.queue();
    let a1 = enqueue_one(q, job("o", 1).order_key("a").delay(Duration::from_secs(30))).await;
    enqueue_one(q, job("o", 2).order_key("a")).await;
    let me = owner();
    assert!(claim(q, "default", me, 10).await.is_empty());
    clock.advance(Duration::from_secs(30));
    assert_eq!(claimed_ids(&claim(q, "default", me, 10).await), [a1]);
}

/// A released job (`Finish::Release`) is claimed again before the next of its key.
pub async fn a_released_job_keeps_its_place(backend: JobsBackend) {
    let (f, _clock) = open(&backend).await;
    let q = f.queue();
    let a1 = enqueue_one(q, job("o", 1).order_key("a")).await;
    enqueue_one(q, job("o", 2).order_key("a")).await;
    let me = owner();
    let c = claim(q, "default", me, 10).await.remove(0);
    finish(q, me, &c, Finish::Release).await;
    assert_eq!(claimed_ids(&claim(q, "default", me, 10).await), [a1]);
}

/// Cancelling the first job of a key frees the key for the next.
pub async fn a_cancelled_first_job_frees_its_key(backend: JobsBackend) {
    let (f, _clock) = open(&backend).await;
    let q = f.queue();
    let a1 = enqueue_one(q, job("o", 1).order_key("a").delay(Duration::from_secs(30))).await;
    let a2 = enqueue_one(q, job("o", 2).order_key("a")).await;
    assert!(q.cancel(a1).await.expect("cancel"));
    assert_eq!(claimed_ids(&claim(q, "default", owner(), 10).await), [a2]);
}

/// An ordering key is one sequence across queues (pinned): a job in queue `beta` waits for an earlier job
/// of its key in queue `alpha`.
pub async fn an_ordering_key_spans_queues(backend: JobsBackend) {
    let (f, _clock) = open(&backend).await;
    let q = f.queue();
    enqueue_one(q, job("o", 1).queue("alpha").order_key("a")).await;
    let b = enqueue_one(q, job("o", 2).queue("beta").order_key("a")).await;
    let me = owner();
    assert!(
        claim(q, "beta", me, 10).await.is_empty(),
        "waits for alpha's job"
    );
    let c = claim(q, "alpha", me, 10).await.remove(0);
    finish(q, me, &c, Finish::Delete).await;
    assert_eq!(claimed_ids(&claim(q, "beta", me, 10).await), [b]);
}
