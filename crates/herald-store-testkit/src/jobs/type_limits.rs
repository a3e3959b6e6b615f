//! Per-type concurrency limits: a claim leases no job of a type that already has its limit running, across
//! claims, owners and queues.

use herald_core::jobs::Finish;

use super::JobsBackend;
use super::support::*;

/// One claim takes at most the limit of a limited type, and goes on to jobs of other types behind it.
pub async fn limit_caps_one_claim_and_skips_to_other_types(backend: JobsBackend) {
    let (f, _clock) = open(&backend).await;
    let q = f.queue();
    let limited = enqueue(q, (0..5).map(|n| job("limited", n).priority(10)).collect()).await;
    let free = enqueue(q, (0..2).map(|n| job("free", n)).collect()).await;
    let got = claim_limited(q, "default", owner(), 10, &[("limited", 2)]).await;
    let mut want = limited[..2].to_vec();
    want.extend_from_slice(&free);
    assert_eq!(claimed_ids(&got), want);
}

/// Jobs running for other owners (other processes) count against the limit; a slot freed by a completion
/// is taken by the next claim.
pub async fn limit_counts_jobs_running_for_other_owners(backend: JobsBackend) {
    let (f, _clock) = open(&backend).await;
    let q = f.queue();
    let other = f.other_handle().await;
    enqueue(q, (0..6).map(|n| job("limited", n)).collect()).await;
    let (a, b) = (owner(), owner());
    let held = claim_limited(q, "default", a, 10, &[("limited", 2)]).await;
    assert_eq!(held.len(), 2);
    assert!(
        claim_limited(&other, "default", b, 10, &[("limited", 2)])
            .await
            .is_empty()
    );
    assert!(
        claim_limited(q, "default", a, 10, &[("limited", 2)])
            .await
            .is_empty(),
        "the same owner too"
    );
    finish(q, a, &held[0], Finish::Delete).await;
    assert_eq!(
        claim_limited(&other, "default", b, 10, &[("limited", 2)])
            .await
            .len(),
        1
    );
    assert!(
        claim_limited(&other, "default", b, 10, &[("limited", 2)])
            .await
            .is_empty()
    );
}

/// A type's running jobs count against its limit whatever queue they run in (pinned).
pub async fn limit_counts_running_jobs_of_every_queue(backend: JobsBackend) {
    let (f, _clock) = open(&backend).await;
    let q = f.queue();
    enqueue_one(q, job("limited", 1).queue("alpha")).await;
    enqueue_one(q, job("limited", 2).queue("beta")).await;
    assert_eq!(
        claim_limited(q, "alpha", owner(), 10, &[("limited", 1)])
            .await
            .len(),
        1
    );
    assert!(
        claim_limited(q, "beta", owner(), 10, &[("limited", 1)])
            .await
            .is_empty()
    );
    assert_eq!(
        claim(q, "beta", owner(), 10).await.len(),
        1,
        "without the limit it is claimable"
    );
}

/// A deleted, dead, rescheduled or released job no longer holds a slot of its type.
pub async fn a_finished_or_rescheduled_job_frees_its_slot(backend: JobsBackend) {
    let (f, _clock) = open(&backend).await;
    let q = f.queue();
    enqueue(
        q,
        (0..5).map(|n| job("limited", n).max_attempts(5)).collect(),
    )
    .await;
    let me = owner();
    for finish_as in [
        Finish::Delete,
        dead("x"),
        reschedule(START + 3_600 * SECOND, "later"),
        Finish::Release,
    ] {
        let held = claim_limited(q, "default", me, 10, &[("limited", 1)]).await;
        assert_eq!(held.len(), 1);
        assert!(
            claim_limited(q, "default", me, 10, &[("limited", 1)])
                .await
                .is_empty()
        );
        finish(q, me, &held[0], finish_as).await;
    }
    assert_eq!(
        claim_limited(q, "default", me, 10, &[("limited", 1)])
            .await
            .len(),
        1
    );
}
