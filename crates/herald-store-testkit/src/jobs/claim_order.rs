//! Which jobs a claim takes, in which order, and what it hands back.

use herald_core::jobs::JobState;

use super::JobsBackend;
use super::support::*;

/// Claimed one at a time, jobs come by priority (higher first), then in enqueue order.
pub async fn priority_first_then_enqueue_order(backend: JobsBackend) {
    let (f, _clock) = open(&backend).await;
    let q = f.queue();
    let mut ids = Vec::new();
    for (n, priority) in [0, 5, 0, 9, 5, -1].into_iter().enumerate() {
        ids.push(enqueue_one(q, job("j", n).priority(priority)).await);
    }
    let me = owner();
    let mut order = Vec::new();
    for _ in 0..ids.len() {
        let got = claim(q, "default", me, 1).await;
        assert_eq!(got.len(), 1, "one job per claim");
        order.push(got[0].id);
    }
    assert_eq!(order, [ids[3], ids[1], ids[4], ids[0], ids[2], ids[5]]);
    assert!(claim(q, "default", me, 1).await.is_empty());
}

/// One claim of many jobs returns them in the order they would run: priority, then enqueue order.
pub async fn one_claim_returns_jobs_in_order(backend: JobsBackend) {
    let (f, _clock) = open(&backend).await;
    let q = f.queue();
    let jobs: Vec<_> = [1, 3, 1, 2, 3]
        .into_iter()
        .enumerate()
        .map(|(n, p)| job("j", n).priority(p))
        .collect();
    let ids = enqueue(q, jobs).await;
    let got = claim(q, "default", owner(), 10).await;
    assert_eq!(claimed_ids(&got), [ids[1], ids[4], ids[3], ids[0], ids[2]]);
}

/// A claim takes at most its limit; the rest stay for later claims.
pub async fn claim_takes_at_most_the_limit(backend: JobsBackend) {
    let (f, _clock) = open(&backend).await;
    let q = f.queue();
    let ids = enqueue(q, (0..5).map(|n| job("j", n)).collect()).await;
    let me = owner();
    assert_eq!(claimed_ids(&claim(q, "default", me, 2).await), ids[..2]);
    assert_eq!(claimed_ids(&claim(q, "default", me, 2).await), ids[2..4]);
    assert_eq!(claimed_ids(&claim(q, "default", me, 2).await), ids[4..]);
    assert!(claim(q, "default", me, 2).await.is_empty());
}

/// A claim only takes jobs of its own queue, even when another queue's jobs have a higher priority.
pub async fn queues_are_separate(backend: JobsBackend) {
    let (f, _clock) = open(&backend).await;
    let q = f.queue();
    let a = enqueue_one(q, job("j", 1).queue("alpha")).await;
    let b = enqueue_one(q, job("j", 2).queue("beta").priority(100)).await;
    let a2 = enqueue_one(q, job("j", 3).queue("alpha")).await;
    let me = owner();
    assert!(claim(q, "default", me, 10).await.is_empty());
    assert_eq!(claimed_ids(&claim(q, "alpha", me, 10).await), [a, a2]);
    assert_eq!(claimed_ids(&claim(q, "beta", me, 10).await), [b]);
}

/// A claim hands back the job (id, queue, type, arguments, metadata, attempt 1 of its maximum, whether it
/// is ordered), and the job is then `running`, leased until now + the lease, and no longer claimable. The
/// claim counts no attempt; recording the job's start does.
pub async fn a_claim_leases_the_job_and_its_start_counts_the_attempt(backend: JobsBackend) {
    let (f, _clock) = open(&backend).await;
    let q = f.queue();
    let ordered = job("o", 1)
        .queue("work")
        .order_key("k")
        .max_attempts(3)
        .metadata(r#"{"m":1}"#);
    let plain = job("p", 2).queue("work");
    enqueue(q, vec![ordered.clone(), plain.clone()]).await;
    let me = owner();
    let got = claim(q, "work", me, 10).await;
    assert_eq!(claimed_ids(&got), [ordered.id, plain.id]);
    let c = &got[0];
    assert_eq!(
        (
            c.queue.as_str(),
            c.kind.as_str(),
            c.args.as_str(),
            c.metadata.as_str()
        ),
        ("work", "o", ordered.args.as_str(), r#"{"m":1}"#)
    );
    assert_eq!((c.attempt, c.max_attempts, c.ordered), (1, 3, true));
    assert!(
        !c.record_start_first,
        "a job that never lost a lease starts without waiting"
    );
    assert!(
        !got[1].ordered,
        "a job without an ordering key is not ordered"
    );
    assert_ne!(got[0].row, got[1].row, "rows tell jobs apart");

    let info = live_job(q, ordered.id).await;
    assert_eq!(info.state, JobState::Running);
    assert_eq!(info.attempt, 0, "claimed, not started");
    assert_eq!(
        info.run_at,
        START + herald_core::clock::micros(LEASE),
        "lease end"
    );
    assert!(
        claim(q, "work", owner(), 10).await.is_empty(),
        "leased jobs are not claimable"
    );
    start(q, me, &got[..1]).await;
    assert_eq!(live_job(q, ordered.id).await.attempt, 1, "started");
    assert_eq!(live_job(q, plain.id).await.attempt, 0, "still not started");
    start(q, me, &got[..1]).await;
    assert_eq!(
        live_job(q, ordered.id).await.attempt,
        1,
        "a start recorded twice counts once"
    );
}
