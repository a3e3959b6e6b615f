//! Racing claimers (on several handles when the backend has them): a job is never leased twice while its
//! lease holds, and limits and ordering keys hold across claims that run at once.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use herald_core::jobs::{Finish, JobQueue};
use herald_core::uuid::Uuid;

use super::JobsBackend;
use super::support::*;

/// `count` handles: the fixture's queue and others on the same database (or the same queue again).
async fn handles(f: &super::JobsFixture, count: usize) -> Vec<Arc<dyn JobQueue>> {
    let mut handles = vec![Arc::clone(f.queue())];
    while handles.len() < count {
        handles.push(f.other_handle().await);
    }
    handles
}

/// Collects what every task returned.
async fn join_all<T>(tasks: Vec<tokio::task::JoinHandle<Vec<T>>>) -> Vec<T> {
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("task"));
    }
    all
}

/// Eight claimers drain 200 jobs at once, each claiming a few and deleting them: every job is leased
/// exactly once.
pub async fn racing_claimers_never_lease_a_job_twice(backend: JobsBackend) {
    let (f, _clock) = open(&backend).await;
    let ids = enqueue(f.queue(), (0..200).map(|n| job("r", n)).collect()).await;
    let tasks = handles(&f, 8)
        .await
        .into_iter()
        .map(|q| {
            tokio::spawn(async move {
                let me = owner();
                let mut seen = Vec::new();
                loop {
                    let got = claim(&q, "default", me, 3).await;
                    if got.is_empty() {
                        return seen;
                    }
                    seen.extend(claimed_ids(&got));
                    let done = got.iter().map(|c| completion(c, Finish::Delete)).collect();
                    q.complete(me, done).await.expect("complete");
                }
            })
        })
        .collect();
    let claimed = join_all(tasks).await;
    let unique: HashSet<Uuid> = claimed.iter().copied().collect();
    assert_eq!(claimed.len(), 200, "no job leased twice");
    assert_eq!(unique, ids.into_iter().collect::<HashSet<_>>());
    assert!(live(f.queue()).await.is_empty());
}

/// Six claimers race for 40 jobs of a type limited to 3 and hold what they get: 3 are leased in all.
pub async fn racing_claimers_share_a_type_limit(backend: JobsBackend) {
    let (f, _clock) = open(&backend).await;
    enqueue(f.queue(), (0..40).map(|n| job("limited", n)).collect()).await;
    let tasks = handles(&f, 6)
        .await
        .into_iter()
        .map(|q| {
            tokio::spawn(async move {
                let me = owner();
                let mut seen = Vec::new();
                for _ in 0..5 {
                    let got = claim_limited(&q, "default", me, 5, &[("limited", 3)]).await;
                    seen.extend(claimed_ids(&got));
                    tokio::task::yield_now().await;
                }
                seen
            })
        })
        .collect();
    let claimed = join_all(tasks).await;
    assert_eq!(
        claimed.len(),
        3,
        "the limit holds across racing claims: {claimed:?}"
    );
    assert_eq!(f.queue().stats().await.expect("stats").queues[0].running, 3);
}

/// Six claimers race for 5 ordering keys of 10 jobs each and hold what they get: exactly the first job of
/// each key is leased.
pub async fn racing_claimers_take_one_job_per_ordering_key(backend: JobsBackend) {
    let (f, _clock) = open(&backend).await;
    let mut firsts = HashSet::new();
    for seq in 0..10 {
        for key in 0..5 {
            let id = enqueue_one(f.queue(), job("o", seq).order_key(format!("k{key}"))).await;
            if seq == 0 {
                firsts.insert(id);
            }
        }
    }
    let tasks = handles(&f, 6)
        .await
        .into_iter()
        .map(|q| {
            tokio::spawn(async move {
                let me = owner();
                let mut seen = Vec::new();
                for _ in 0..3 {
                    seen.extend(claimed_ids(&claim(&q, "default", me, 10).await));
                    tokio::task::yield_now().await;
                }
                seen
            })
        })
        .collect();
    let claimed = join_all(tasks).await;
    assert_eq!(claimed.len(), 5, "one per key: {claimed:?}");
    assert_eq!(claimed.into_iter().collect::<HashSet<_>>(), firsts);
}

/// Two tasks enqueue 200 jobs in small batches while four claimers take and delete them: each job is
/// claimed once, none is lost.
pub async fn enqueues_racing_claims_are_each_claimed_once(backend: JobsBackend) {
    let (f, _clock) = open(&backend).await;
    let all = handles(&f, 6).await;
    let enqueued = Arc::new(AtomicBool::new(false));
    let enqueuers: Vec<_> = all[..2]
        .iter()
        .cloned()
        .enumerate()
        .map(|(e, q)| {
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for batch in 0..20 {
                    let jobs = (0..5).map(|n| job("r", e * 1000 + batch * 5 + n)).collect();
                    ids.extend(enqueue(&q, jobs).await);
                }
                ids
            })
        })
        .collect();
    let claimers: Vec<_> = all[2..]
        .iter()
        .cloned()
        .map(|q| {
            let enqueued = Arc::clone(&enqueued);
            tokio::spawn(async move {
                let me = owner();
                let wakeups = q.wakeups();
                let mut seen = Vec::new();
                loop {
                    // Read the flag before claiming: an empty claim after every enqueue returned means
                    // everything was claimed.
                    let finished = enqueued.load(Ordering::SeqCst);
                    let notified = wakeups.notified();
                    let got = claim(&q, "default", me, 4).await;
                    if got.is_empty() {
                        if finished {
                            return seen;
                        }
                        // An idle worker's wait: a wake-up or a short poll, whichever comes first.
                        let _ = tokio::time::timeout(Duration::from_millis(20), notified).await;
                        continue;
                    }
                    seen.extend(claimed_ids(&got));
                    let done = got.iter().map(|c| completion(c, Finish::Delete)).collect();
                    q.complete(me, done).await.expect("complete");
                }
            })
        })
        .collect();
    let ids = join_all(enqueuers).await;
    enqueued.store(true, Ordering::SeqCst);
    let claimed = join_all(claimers).await;
    assert_eq!(ids.len(), 200);
    assert_eq!(claimed.len(), 200, "no job claimed twice or lost");
    assert_eq!(
        claimed.into_iter().collect::<HashSet<_>>(),
        ids.into_iter().collect::<HashSet<_>>()
    );
}
