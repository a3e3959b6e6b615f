//! Leases: a claim leases a job until now + the lease; an expired lease returns it to its queue (or the dead
//! set), and a completion for a lost lease changes nothing. Attempts count when a job starts, not when it is
//! claimed: an expired lease whose start was never recorded returns the job untouched.

use std::time::Duration;

use herald_core::clock::micros;
use herald_core::jobs::{Finish, JobState, Start};

use super::JobsBackend;
use super::support::*;

/// When the lease of a started job runs out, the next claim (by another owner) takes the job again with the
/// next attempt; the lost attempt is recorded as the job's last error.
pub async fn expired_lease_goes_to_another_owner_with_the_next_attempt(backend: JobsBackend) {
    let (f, clock) = open(&backend).await;
    let q = f.queue();
    let id = enqueue_one(q, job("l", 1)).await;
    let (a, b) = (owner(), owner());
    assert_eq!(claim_started(q, "default", a, 10).await[0].attempt, 1);
    clock.advance(LEASE + Duration::from_secs(1));
    let got = claim(q, "default", b, 10).await;
    assert_eq!(claimed_ids(&got), [id]);
    assert_eq!(got[0].attempt, 2);
    assert!(
        !got[0].record_start_first,
        "the lost lease's start was recorded"
    );
    let info = live_job(q, id).await;
    assert_eq!((info.state, info.attempt), (JobState::Running, 1));
    assert_eq!(
        info.run_at,
        clock_now(&clock) + micros(LEASE),
        "leased anew"
    );
    assert!(info.last_error.is_some(), "the lost attempt is recorded");
    assert_eq!(q.renew(b).await.expect("renew"), 1, "b holds it");
    assert_eq!(q.renew(a).await.expect("renew"), 0, "a lost it");
}

/// A claimed job whose start was never recorded (it waited in a worker's buffer when the worker died) goes
/// back to its queue untouched when the lease expires, even with no attempt left: no attempt counted, no
/// error, claimable at once in its place. From then on every claim of it asks for its start to be recorded
/// first (its worker may have died running it); jobs that never lost a lease do not.
pub async fn an_unstarted_lease_expires_back_to_the_queue_untouched(backend: JobsBackend) {
    let (f, clock) = open(&backend).await;
    let q = f.queue();
    let ids = enqueue(q, vec![job("l", 1).max_attempts(1), job("l", 2)]).await;
    let (a, b) = (owner(), owner());
    assert_eq!(claim(q, "default", a, 10).await.len(), 2);
    clock.advance(LEASE + Duration::from_secs(1));
    let fresh = enqueue_one(q, job("l", 3)).await;
    let got = claim(q, "default", b, 10).await;
    assert_eq!(
        claimed_ids(&got),
        [ids[0], ids[1], fresh],
        "in their places"
    );
    assert!(q.dead(10).await.expect("dead").is_empty(), "nothing died");
    for (c, id) in got[..2].iter().zip(&ids) {
        assert_eq!(c.attempt, 1, "the same attempt again");
        assert!(c.record_start_first);
        let info = live_job(q, *id).await;
        assert_eq!((info.state, info.attempt), (JobState::Running, 0));
        assert_eq!(info.last_error, None, "no attempt, no error");
    }
    assert!(!got[2].record_start_first, "a job that never lost a lease");
    assert_eq!(q.renew(a).await.expect("renew"), 0, "a lost them");

    // Started now, and failed: the attempt counts, and the mark stays for every later claim.
    start(q, b, &got[1..2]).await;
    assert_eq!(live_job(q, ids[1]).await.attempt, 1);
    finish(q, b, &got[1], reschedule(clock_now(&clock), "boom")).await;
    finish(q, b, &got[0], Finish::Delete).await;
    finish(q, b, &got[2], Finish::Delete).await;
    let again = claim(q, "default", b, 10).await;
    assert_eq!(claimed_ids(&again), [ids[1]]);
    assert_eq!(again[0].attempt, 2);
    assert!(again[0].record_start_first, "the mark stays");
}

/// A start recorded for a lease that was lost (another owner's, or an earlier attempt's) changes nothing.
pub async fn a_start_for_a_lost_lease_changes_nothing(backend: JobsBackend) {
    let (f, clock) = open(&backend).await;
    let q = f.queue();
    let id = enqueue_one(q, job("l", 1).max_attempts(5)).await;
    let (a, b) = (owner(), owner());
    let old = claim_started(q, "default", a, 10).await.remove(0);
    clock.advance(LEASE + Duration::from_secs(1));
    let new = claim(q, "default", b, 10).await.remove(0);
    assert_eq!(new.attempt, 2);
    let before = live_job(q, id).await;
    start(q, a, &[old.clone(), new.clone()]).await;
    start(q, owner(), std::slice::from_ref(&new)).await;
    q.record(b, vec![Start::of(&old)], Vec::new())
        .await
        .expect("record");
    assert_eq!(live_job(q, id).await, before, "untouched");
    start(q, b, std::slice::from_ref(&new)).await;
    assert_eq!(live_job(q, id).await.attempt, 2);
}

/// Before the lease ends, nobody else can claim the job.
pub async fn lease_holds_until_it_ends(backend: JobsBackend) {
    let (f, clock) = open(&backend).await;
    let q = f.queue();
    enqueue_one(q, job("l", 1)).await;
    claim(q, "default", owner(), 10).await;
    clock.advance(LEASE - Duration::from_secs(1));
    assert!(claim(q, "default", owner(), 10).await.is_empty());
}

/// After another owner re-claimed the job, every completion of the first owner (for its old attempt, or
/// naming the new attempt) changes nothing; the new owner's completion works.
pub async fn stale_owner_completion_changes_nothing(backend: JobsBackend) {
    let (f, clock) = open(&backend).await;
    let q = f.queue();
    let id = enqueue_one(q, job("l", 1).max_attempts(5)).await;
    let (a, b) = (owner(), owner());
    let old = claim_started(q, "default", a, 10).await.remove(0);
    clock.advance(LEASE + Duration::from_secs(1));
    let new = claim(q, "default", b, 10).await.remove(0);
    assert_eq!(new.attempt, 2);
    let before = live_job(q, id).await;
    for finish_as in [
        Finish::Delete,
        dead("stale"),
        reschedule(START, "stale"),
        Finish::Release,
    ] {
        finish(q, a, &old, finish_as.clone()).await;
        // The new attempt's number under the old owner is not the new owner's lease either.
        finish(q, a, &new, finish_as).await;
    }
    assert_eq!(live_job(q, id).await, before, "untouched");
    assert!(q.dead(10).await.expect("dead").is_empty());
    finish(q, b, &new, Finish::Delete).await;
    assert!(live(q).await.is_empty());
}

/// The same owner re-claimed the job after its lease (its start recorded) expired because its renewals
/// stalled: a completion for the earlier attempt changes nothing; one for the current attempt works.
pub async fn completion_for_an_earlier_attempt_changes_nothing(backend: JobsBackend) {
    let (f, clock) = open(&backend).await;
    let q = f.queue();
    let id = enqueue_one(q, job("l", 1).max_attempts(5)).await;
    let a = owner();
    let old = claim_started(q, "default", a, 10).await.remove(0);
    clock.advance(LEASE + Duration::from_secs(1));
    let new = claim(q, "default", a, 10).await.remove(0);
    assert_eq!((new.id, new.attempt), (id, 2));
    let before = live_job(q, id).await;
    for finish_as in [
        Finish::Delete,
        dead("stale"),
        reschedule(START, "stale"),
        Finish::Release,
    ] {
        finish(q, a, &old, finish_as).await;
    }
    assert_eq!(live_job(q, id).await, before, "untouched");
    assert!(q.dead(10).await.expect("dead").is_empty());
    finish(q, a, &new, Finish::Delete).await;
    assert!(live(q).await.is_empty());
}

/// A completion that arrives after the lease ended but before any claim returned the job still counts
/// (pinned: the lease is lost when a claim returns the job, not at the instant it ends).
pub async fn completion_before_anyone_reclaims_still_counts(backend: JobsBackend) {
    let (f, clock) = open(&backend).await;
    let q = f.queue();
    enqueue_one(q, job("l", 1)).await;
    let a = owner();
    let c = claim(q, "default", a, 10).await.remove(0);
    clock.advance(LEASE + Duration::from_secs(1));
    finish(q, a, &c, Finish::Delete).await;
    assert!(live(q).await.is_empty());
    assert!(claim(q, "default", owner(), 10).await.is_empty());
}

/// A lease whose start was recorded and that expires on the job's last attempt sends it to the dead set,
/// with one history entry per lost attempt, instead of back to its queue.
pub async fn expiry_on_the_last_attempt_sends_the_job_to_the_dead_set(backend: JobsBackend) {
    let (f, clock) = open(&backend).await;
    let q = f.queue();
    let id = enqueue_one(q, job("l", 1).max_attempts(2)).await;
    assert_eq!(claim_started(q, "default", owner(), 10).await[0].attempt, 1);
    clock.advance(LEASE + Duration::from_secs(1));
    assert_eq!(claim_started(q, "default", owner(), 10).await[0].attempt, 2);
    clock.advance(LEASE + Duration::from_secs(1));
    assert!(claim(q, "default", owner(), 10).await.is_empty());
    assert!(live(q).await.is_empty());
    let dead = q.dead(10).await.expect("dead");
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!((d.id, d.attempt), (id, 2));
    assert_eq!(d.died_at, clock_now(&clock));
    assert!(d.last_error.is_some());
    let entries = history(&d.errors, START..=clock_now(&clock));
    let attempts: Vec<u64> = entries.iter().map(|(a, _)| *a).collect();
    assert_eq!(attempts, [1, 2], "one entry per lost attempt");
    assert!(entries.iter().all(|(_, e)| !e.is_empty()));
    assert_eq!(q.stats().await.expect("stats").dead, 1);
}

/// `renew` extends every lease the owner holds to now + the lease and says how many: the jobs do not
/// expire at their first lease's end, only at the renewed one's.
pub async fn renew_extends_the_lease(backend: JobsBackend) {
    let (f, clock) = open(&backend).await;
    let q = f.queue();
    enqueue(q, vec![job("l", 1), job("l", 2)]).await;
    let a = owner();
    assert_eq!(claim_started(q, "default", a, 10).await.len(), 2);
    clock.advance(Duration::from_secs(20));
    assert_eq!(q.renew(a).await.expect("renew"), 2);
    assert_eq!(
        q.renew(owner()).await.expect("renew"),
        0,
        "an owner holding nothing"
    );
    for job in live(q).await {
        assert_eq!(job.run_at, clock_now(&clock) + micros(LEASE));
    }
    clock.advance(Duration::from_secs(20));
    assert!(
        claim(q, "default", owner(), 10).await.is_empty(),
        "past the first lease's end, within the renewed one"
    );
    clock.advance(Duration::from_secs(11));
    let got = claim(q, "default", owner(), 10).await;
    assert_eq!(got.len(), 2, "past the renewed lease");
    assert!(got.iter().all(|c| c.attempt == 2));
}

/// `release_all` returns every job the owner holds to its queue, available now, and says how many: a
/// started job's attempt stays counted, an unstarted one's is not; other owners' jobs stay leased.
pub async fn release_all_returns_the_jobs_counting_started_attempts(backend: JobsBackend) {
    let (f, _clock) = open(&backend).await;
    let q = f.queue();
    let ids = enqueue(q, (0..4).map(|n| job("l", n)).collect()).await;
    let (a, b) = (owner(), owner());
    let mine = claim(q, "default", a, 3).await;
    assert_eq!(mine.len(), 3);
    start(q, a, &mine[..2]).await;
    assert_eq!(claim(q, "default", b, 3).await.len(), 1);
    assert_eq!(q.release_all(a).await.expect("release_all"), 3);
    assert_eq!(q.release_all(a).await.expect("release_all"), 0);
    for (id, attempt) in ids[..3].iter().zip([1, 1, 0]) {
        let info = live_job(q, *id).await;
        assert_eq!((info.state, info.attempt), (JobState::Available, attempt));
    }
    assert_eq!(live_job(q, ids[3]).await.state, JobState::Running);
    let again = claim(q, "default", owner(), 10).await;
    assert_eq!(claimed_ids(&again), ids[..3]);
    let attempts: Vec<u32> = again.iter().map(|c| c.attempt).collect();
    assert_eq!(attempts, [2, 2, 1], "the started attempts counted");
}

fn clock_now(clock: &herald_core::ManualClock) -> i64 {
    herald_core::Clock::now_micros(clock)
}
