//! The dead set: its order, moving jobs back (one or all), discarding, cancelling live jobs, and trimming.

use std::sync::Arc;
use std::time::Duration;

use herald_core::Error;
use herald_core::jobs::{DeadJob, JobQueue, JobState, NewJob};
use herald_core::uuid::Uuid;

use super::JobsBackend;
use super::support::*;

/// Enqueues `jobs` and kills each in turn (claim, then `Dead` with error `died n`), in order.
async fn kill(queue: &Arc<dyn JobQueue>, jobs: Vec<NewJob>) -> Vec<Uuid> {
    let me = owner();
    let mut ids = Vec::new();
    for (n, job) in jobs.into_iter().enumerate() {
        let name = job.queue.clone();
        ids.push(enqueue_one(queue, job).await);
        let c = claim(queue, &name, me, 1).await.remove(0);
        finish(queue, me, &c, dead(&format!("died {n}"))).await;
    }
    ids
}

fn dead_ids(dead: &[DeadJob]) -> Vec<Uuid> {
    dead.iter().map(|d| d.id).collect()
}

/// The dead set lists the most recently dead first, at most the limit asked.
pub async fn dead_set_is_most_recent_first_up_to_the_limit(backend: JobsBackend) {
    let (f, _clock) = open(&backend).await;
    let q = f.queue();
    let ids = kill(q, (0..4).map(|n| job("d", n)).collect()).await;
    let all = q.dead(10).await.expect("dead");
    assert_eq!(dead_ids(&all), [ids[3], ids[2], ids[1], ids[0]]);
    assert_eq!(dead_ids(&q.dead(2).await.expect("dead")), [ids[3], ids[2]]);
}

/// `retry_dead(Some(id))` moves that job back to its queue, available now, with no attempt made yet and
/// its last error and history kept (the next death adds to that history); it reports 1.
pub async fn retry_one_dead_job_with_fresh_attempts_and_its_history(backend: JobsBackend) {
    let (f, clock) = open(&backend).await;
    let q = f.queue();
    let ids = kill(q, vec![job("d", 0).max_attempts(2), job("d", 1)]).await;
    clock.advance(Duration::from_secs(100));
    assert_eq!(q.retry_dead(Some(ids[0])).await.expect("retry"), 1);
    assert_eq!(dead_ids(&q.dead(10).await.expect("dead")), [ids[1]]);
    let info = live_job(q, ids[0]).await;
    assert_eq!(
        (info.state, info.attempt, info.max_attempts),
        (JobState::Available, 0, 2)
    );
    assert_eq!(info.run_at, START + 100 * SECOND, "ready now");
    assert_eq!(info.enqueued_at, START, "enqueue time kept");
    assert_eq!(info.last_error.as_deref(), Some("died 0"));
    let me = owner();
    let c = claim(q, "default", me, 10).await.remove(0);
    assert_eq!((c.id, c.attempt), (ids[0], 1));
    finish(q, me, &c, dead("died again")).await;
    let d = q.dead(1).await.expect("dead").remove(0);
    assert_eq!(d.id, ids[0]);
    let entries = history(&d.errors, START..=START + 100 * SECOND);
    assert_eq!(
        entries,
        [(1, "died 0".to_owned()), (1, "died again".to_owned())]
    );
}

/// `retry_dead(None)` moves every dead job back and reports how many; they queue behind the live jobs, in
/// the order they died (pinned).
pub async fn retry_every_dead_job(backend: JobsBackend) {
    let (f, _clock) = open(&backend).await;
    let q = f.queue();
    let ids = kill(q, (0..3).map(|n| job("d", n)).collect()).await;
    let waiting = enqueue_one(q, job("w", 9)).await;
    assert_eq!(q.retry_dead(None).await.expect("retry"), 3);
    assert!(q.dead(10).await.expect("dead").is_empty());
    let stats = q.stats().await.expect("stats");
    assert_eq!((stats.queues[0].available, stats.dead), (4, 0));
    let order = claimed_ids(&claim(q, "default", owner(), 10).await);
    assert_eq!(order, [waiting, ids[0], ids[1], ids[2]]);
    assert_eq!(q.retry_dead(None).await.expect("retry"), 0, "nothing left");
}

/// Retrying an id that is not in the dead set (unknown, or a live job's) moves nothing and reports 0.
pub async fn retry_of_an_unknown_dead_job_moves_nothing(backend: JobsBackend) {
    let (f, _clock) = open(&backend).await;
    let q = f.queue();
    let live_id = enqueue_one(q, job("d", 1)).await;
    assert_eq!(q.retry_dead(Some(Uuid::now_v7())).await.expect("retry"), 0);
    assert_eq!(q.retry_dead(Some(live_id)).await.expect("retry"), 0);
    assert_eq!(info_ids(&live(q).await), [live_id]);
}

/// A dead job whose unique key a live job now holds cannot move back: `Error::DuplicateJob`, and nothing
/// moves, neither that job nor (retrying all) any other.
pub async fn retry_with_a_taken_unique_key_is_a_duplicate_and_moves_nothing(backend: JobsBackend) {
    let (f, _clock) = open(&backend).await;
    let q = f.queue();
    let ids = kill(
        q,
        vec![job("d", 0), job("d", 1).unique_key("k"), job("d", 2)],
    )
    .await;
    let holder = enqueue_one(q, job("d", 3).unique_key("k")).await;
    let before = q.dead(10).await.expect("dead");
    match q.retry_dead(Some(ids[1])).await {
        Err(Error::DuplicateJob { .. }) => {}
        other => panic!("expected DuplicateJob, got {other:?}"),
    }
    match q.retry_dead(None).await {
        Err(Error::DuplicateJob { .. }) => {}
        other => panic!("expected DuplicateJob, got {other:?}"),
    }
    assert_eq!(
        q.dead(10).await.expect("dead"),
        before,
        "the dead set is unchanged"
    );
    assert_eq!(info_ids(&live(q).await), [holder], "no job moved back");
    // Once the key is free, the retry goes through.
    assert!(q.cancel(holder).await.expect("cancel"));
    assert_eq!(q.retry_dead(None).await.expect("retry"), 3);
}

/// `discard_dead` removes a dead job for good (true), and answers false for a job not in the dead set.
pub async fn discard_dead(backend: JobsBackend) {
    let (f, _clock) = open(&backend).await;
    let q = f.queue();
    let ids = kill(q, vec![job("d", 0), job("d", 1)]).await;
    let live_id = enqueue_one(q, job("d", 2)).await;
    assert!(q.discard_dead(ids[0]).await.expect("discard"));
    assert!(
        !q.discard_dead(ids[0]).await.expect("discard"),
        "already gone"
    );
    assert!(!q.discard_dead(Uuid::now_v7()).await.expect("discard"));
    assert!(
        !q.discard_dead(live_id).await.expect("discard"),
        "a live job"
    );
    assert_eq!(dead_ids(&q.dead(10).await.expect("dead")), [ids[1]]);
    assert_eq!(q.retry_dead(Some(ids[0])).await.expect("retry"), 0);
    assert_eq!(info_ids(&live(q).await), [live_id]);
}

/// `cancel` removes a pending job (available or scheduled) and answers true; a running job, a dead one or
/// an unknown id is left alone and answers false.
pub async fn cancel_removes_pending_jobs_only(backend: JobsBackend) {
    let (f, _clock) = open(&backend).await;
    let q = f.queue();
    let dead_id = kill(q, vec![job("d", 0)]).await[0];
    let running = enqueue_one(q, job("c", 1)).await;
    claim(q, "default", owner(), 1).await;
    let available = enqueue_one(q, job("c", 2)).await;
    let scheduled = enqueue_one(q, job("c", 3).delay(Duration::from_secs(60))).await;
    assert!(q.cancel(available).await.expect("cancel"));
    assert!(q.cancel(scheduled).await.expect("cancel"));
    assert!(!q.cancel(available).await.expect("cancel"), "already gone");
    assert!(!q.cancel(running).await.expect("cancel"), "running");
    assert!(!q.cancel(dead_id).await.expect("cancel"), "dead");
    assert!(!q.cancel(Uuid::now_v7()).await.expect("cancel"), "unknown");
    assert_eq!(info_ids(&live(q).await), [running]);
    assert_eq!(live_job(q, running).await.state, JobState::Running);
    assert_eq!(q.dead(10).await.expect("dead").len(), 1);
}

/// With at most 2 dead jobs kept, each death drops the oldest beyond 2 (by a `Dead` completion or by a
/// lease expiring on the last attempt).
pub async fn dead_set_is_trimmed_by_count(backend: JobsBackend) {
    let (f, clock) = open_with(&backend, |c| c.dead_limits(2, Duration::from_secs(86_400))).await;
    let q = f.queue();
    let ids = kill(q, (0..4).map(|n| job("d", n)).collect()).await;
    assert_eq!(dead_ids(&q.dead(10).await.expect("dead")), [ids[3], ids[2]]);
    let last = enqueue_one(q, job("d", 5).max_attempts(1)).await;
    claim_started(q, "default", owner(), 1).await;
    clock.advance(LEASE + Duration::from_secs(1));
    assert!(claim(q, "default", owner(), 1).await.is_empty());
    assert_eq!(dead_ids(&q.dead(10).await.expect("dead")), [last, ids[3]]);
    assert_eq!(q.stats().await.expect("stats").dead, 2);
}

/// With dead jobs kept an hour, a death drops the jobs that died over an hour before.
pub async fn dead_set_is_trimmed_by_age(backend: JobsBackend) {
    let (f, clock) = open_with(&backend, |c| c.dead_limits(100, Duration::from_secs(3_600))).await;
    let q = f.queue();
    kill(q, vec![job("d", 0)]).await;
    clock.advance(Duration::from_secs(1_800));
    let recent = kill(q, vec![job("d", 1)]).await;
    assert_eq!(
        q.dead(10).await.expect("dead").len(),
        2,
        "nothing over an hour old yet"
    );
    clock.advance(Duration::from_secs(1_801));
    let newest = kill(q, vec![job("d", 2)]).await;
    assert_eq!(
        dead_ids(&q.dead(10).await.expect("dead")),
        [newest[0], recent[0]]
    );
}
