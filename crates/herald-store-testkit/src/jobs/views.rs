//! What the queue shows: stats, the list of live jobs, one job by id, its settings.

use std::time::Duration;

use herald_core::jobs::{Finish, JobState, ListFilter, QueueStats, Stats};

use super::JobsBackend;
use super::support::*;

/// An empty queue has no per-queue counts and an empty dead set.
pub async fn empty_queue_has_no_stats(backend: JobsBackend) {
    let (f, _clock) = open(&backend).await;
    assert_eq!(f.queue().stats().await.expect("stats"), Stats::default());
}

/// Stats count available, scheduled and running jobs per queue, queues in name order, and the dead set;
/// a queue whose jobs are all gone is not listed.
pub async fn stats_count_per_queue_in_name_order(backend: JobsBackend) {
    let (f, _clock) = open(&backend).await;
    let q = f.queue();
    let me = owner();
    enqueue(
        q,
        vec![
            job("s", 1).queue("zeta"),
            job("s", 2).queue("alpha"),
            job("s", 3).queue("alpha"),
            job("s", 4).queue("alpha").delay(Duration::from_secs(60)),
            job("s", 5).queue("mid").max_attempts(1),
            job("s", 6).queue("gone"),
        ],
    )
    .await;
    claim(q, "alpha", me, 1).await;
    let c = claim(q, "mid", me, 1).await.remove(0);
    finish(q, me, &c, dead("x")).await;
    let c = claim(q, "gone", me, 1).await.remove(0);
    finish(q, me, &c, Finish::Delete).await;
    let stats = q.stats().await.expect("stats");
    let counts = |queue: &str, available, scheduled, running| QueueStats {
        queue: queue.to_owned(),
        available,
        scheduled,
        running,
    };
    assert_eq!(
        stats,
        Stats {
            queues: vec![counts("alpha", 1, 1, 1), counts("zeta", 1, 0, 0)],
            dead: 1,
        }
    );
}

/// A scheduled job whose time has come counts as available, before any claim ran.
pub async fn a_due_scheduled_job_counts_as_available(backend: JobsBackend) {
    let (f, clock) = open(&backend).await;
    let q = f.queue();
    enqueue_one(q, job("s", 1).delay(Duration::from_secs(60))).await;
    let before = q.stats().await.expect("stats").queues;
    assert_eq!((before[0].available, before[0].scheduled), (0, 1));
    clock.advance(Duration::from_secs(60));
    let after = q.stats().await.expect("stats").queues;
    assert_eq!((after[0].available, after[0].scheduled), (1, 0));
}

/// `list` gives live jobs in queue (name) order, then enqueue order within a queue (not priority order).
pub async fn list_is_in_queue_then_enqueue_order(backend: JobsBackend) {
    let (f, _clock) = open(&backend).await;
    let q = f.queue();
    let b1 = enqueue_one(q, job("l", 1).queue("b")).await;
    let a1 = enqueue_one(q, job("l", 2).queue("a")).await;
    let b2 = enqueue_one(q, job("l", 3).queue("b").priority(9)).await;
    let a2 = enqueue_one(q, job("l", 4).queue("a").delay(Duration::from_secs(9))).await;
    assert_eq!(info_ids(&live(q).await), [a1, a2, b1, b2]);
}

/// `list` filters by queue and by state, and returns at most its limit (100 when none is given).
pub async fn list_filters_and_limits(backend: JobsBackend) {
    let (f, _clock) = open(&backend).await;
    let q = f.queue();
    let ids = enqueue(q, (0..120).map(|n| job("l", n)).collect()).await;
    let other = enqueue_one(q, job("l", 999).queue("other")).await;
    let later = enqueue_one(q, job("l", 1000).delay(Duration::from_secs(60))).await;
    let running = claim(q, "default", owner(), 2).await;
    let list = |filter: ListFilter| async move { info_ids(&q.list(filter).await.expect("list")) };
    assert_eq!(
        list(ListFilter::default()).await.len(),
        100,
        "default limit"
    );
    let default_queue = ListFilter {
        queue: Some("default".to_owned()),
        limit: Some(1_000),
        ..ListFilter::default()
    };
    assert_eq!(list(default_queue).await.len(), 121);
    let only_other = ListFilter {
        queue: Some("other".to_owned()),
        ..ListFilter::default()
    };
    assert_eq!(list(only_other).await, [other]);
    let by_state = |state| ListFilter {
        state: Some(state),
        limit: Some(1_000),
        ..ListFilter::default()
    };
    assert_eq!(
        list(by_state(JobState::Running)).await,
        claimed_ids(&running)
    );
    assert_eq!(list(by_state(JobState::Scheduled)).await, [later]);
    assert_eq!(list(by_state(JobState::Available)).await.len(), 118 + 1);
    let limited = ListFilter {
        limit: Some(3),
        ..ListFilter::default()
    };
    assert_eq!(list(limited).await, ids[..3]);
}

/// `job(id)` finds pending and running jobs, not finished or dead ones.
pub async fn job_by_id_sees_pending_and_running_jobs_only(backend: JobsBackend) {
    let (f, _clock) = open(&backend).await;
    let q = f.queue();
    let ids = enqueue(q, vec![job("j", 1), job("j", 2), job("j", 3)]).await;
    let me = owner();
    let got = claim(q, "default", me, 2).await;
    assert_eq!(live_job(q, ids[0]).await.state, JobState::Running);
    assert_eq!(live_job(q, ids[2]).await.state, JobState::Available);
    finish(q, me, &got[0], Finish::Delete).await;
    finish(q, me, &got[1], dead("x")).await;
    assert_eq!(q.job(ids[0]).await.expect("job"), None, "done");
    assert_eq!(q.job(ids[1]).await.expect("job"), None, "dead");
}

/// The queue answers with the settings it was opened with and describes itself.
pub async fn config_and_describe(backend: JobsBackend) {
    let (f, _clock) = open_with(&backend, |c| {
        c.lease(Duration::from_secs(7))
            .dead_limits(3, Duration::from_secs(9))
    })
    .await;
    let config = f.queue().config();
    assert_eq!(config.lease, Duration::from_secs(7));
    assert_eq!(
        (config.dead_max_jobs, config.dead_max_age),
        (3, Duration::from_secs(9))
    );
    assert_eq!(herald_core::Clock::now_micros(&*config.clock), START);
    assert!(!f.queue().describe().is_empty());
}
