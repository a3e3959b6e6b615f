//! Completions: what each [`Finish`] does to a claimed job.

use herald_core::jobs::{Finish, JobState};

use super::JobsBackend;
use super::support::*;

/// `Delete` removes the job for good.
pub async fn delete_removes_the_job(backend: JobsBackend) {
    let (f, _clock) = open(&backend).await;
    let q = f.queue();
    let id = enqueue_one(q, job("c", 1)).await;
    let me = owner();
    let c = claim(q, "default", me, 10).await.remove(0);
    finish(q, me, &c, Finish::Delete).await;
    assert_eq!(q.job(id).await.expect("job"), None);
    assert!(q.dead(10).await.expect("dead").is_empty());
    assert!(claim(q, "default", me, 10).await.is_empty());
}

/// `Reschedule` makes the job scheduled at the given time with its error (the attempt stays counted); it is
/// claimable from that time, as the next attempt.
pub async fn reschedule_waits_then_runs_the_next_attempt(backend: JobsBackend) {
    let (f, clock) = open(&backend).await;
    let q = f.queue();
    let id = enqueue_one(q, job("c", 1)).await;
    let me = owner();
    let c = claim(q, "default", me, 10).await.remove(0);
    finish(q, me, &c, reschedule(START + 15 * SECOND, "boom 1")).await;
    let info = live_job(q, id).await;
    assert_eq!(info.state, JobState::Scheduled);
    assert_eq!((info.run_at, info.attempt), (START + 15 * SECOND, 1));
    assert_eq!(info.last_error.as_deref(), Some("boom 1"));
    clock.set_micros(START + 15 * SECOND - 1);
    assert!(claim(q, "default", me, 10).await.is_empty());
    clock.set_micros(START + 15 * SECOND);
    let again = claim(q, "default", me, 10).await;
    assert_eq!(claimed_ids(&again), [id]);
    assert_eq!(again[0].attempt, 2);
}

/// `Dead` moves the job to the dead set with its last error and the history of every failed attempt.
pub async fn dead_moves_the_job_with_its_history(backend: JobsBackend) {
    let (f, clock) = open(&backend).await;
    let q = f.queue();
    let new = job("c", 1)
        .queue("work")
        .max_attempts(3)
        .metadata(r#"{"m":"x"}"#);
    let id = enqueue_one(q, new.clone()).await;
    let me = owner();
    for attempt in 1..=2 {
        let c = claim(q, "work", me, 10).await.remove(0);
        assert_eq!(c.attempt, attempt);
        let at = herald_core::Clock::now_micros(&clock) + 10 * SECOND;
        finish(q, me, &c, reschedule(at, &format!("boom {attempt}"))).await;
        clock.set_micros(at);
    }
    let c = claim(q, "work", me, 10).await.remove(0);
    finish(q, me, &c, dead("boom 3")).await;
    assert!(live(q).await.is_empty());
    let dead = q.dead(10).await.expect("dead");
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!(d.id, id);
    assert_eq!(
        (
            d.queue.as_str(),
            d.kind.as_str(),
            d.args.as_str(),
            d.metadata.as_str()
        ),
        ("work", "c", new.args.as_str(), r#"{"m":"x"}"#)
    );
    assert_eq!(d.attempt, 3);
    assert_eq!(d.last_error.as_deref(), Some("boom 3"));
    assert_eq!((d.enqueued_at, d.died_at), (START, START + 20 * SECOND));
    let entries = history(&d.errors, START..=START + 20 * SECOND);
    assert_eq!(
        entries,
        [
            (1, "boom 1".to_owned()),
            (2, "boom 2".to_owned()),
            (3, "boom 3".to_owned())
        ]
    );
}

/// `Release` puts the job back, available now, without counting the attempt.
pub async fn finish_release_does_not_count_the_attempt(backend: JobsBackend) {
    let (f, _clock) = open(&backend).await;
    let q = f.queue();
    let id = enqueue_one(q, job("c", 1)).await;
    let me = owner();
    let c = claim(q, "default", me, 10).await.remove(0);
    finish(q, me, &c, Finish::Release).await;
    let info = live_job(q, id).await;
    assert_eq!((info.state, info.attempt), (JobState::Available, 0));
    assert_eq!(info.last_error, None);
    assert_eq!(claim(q, "default", me, 10).await[0].attempt, 1);
}

/// One `complete` call with a completion of each kind applies each to its own job.
pub async fn several_completions_in_one_call(backend: JobsBackend) {
    let (f, _clock) = open(&backend).await;
    let q = f.queue();
    let ids = enqueue(q, (0..4).map(|n| job("c", n)).collect()).await;
    let me = owner();
    let got = claim(q, "default", me, 10).await;
    assert_eq!(claimed_ids(&got), ids);
    q.complete(
        me,
        vec![
            completion(&got[0], Finish::Delete),
            completion(&got[1], reschedule(START + 60 * SECOND, "later")),
            completion(&got[2], dead("dead")),
            completion(&got[3], Finish::Release),
        ],
    )
    .await
    .expect("complete");
    let states: Vec<_> = live(q).await.iter().map(|j| (j.id, j.state)).collect();
    assert_eq!(
        states,
        [(ids[1], JobState::Scheduled), (ids[3], JobState::Available)]
    );
    let dead = q.dead(10).await.expect("dead");
    assert_eq!(dead.iter().map(|d| d.id).collect::<Vec<_>>(), [ids[2]]);
}

/// A completion sent by an owner that never held the job changes nothing, even with the right row and
/// attempt.
pub async fn another_owners_completion_changes_nothing(backend: JobsBackend) {
    let (f, _clock) = open(&backend).await;
    let q = f.queue();
    let id = enqueue_one(q, job("c", 1)).await;
    let me = owner();
    let c = claim(q, "default", me, 10).await.remove(0);
    let before = live_job(q, id).await;
    for finish_as in [
        Finish::Delete,
        dead("x"),
        reschedule(START, "x"),
        Finish::Release,
    ] {
        finish(q, owner(), &c, finish_as).await;
    }
    assert_eq!(live_job(q, id).await, before);
    assert!(q.dead(10).await.expect("dead").is_empty());
}
