//! Unique keys: while a job with a key is pending or running, enqueueing another with it inserts nothing.

use herald_core::jobs::Finish;

use super::JobsBackend;
use super::support::*;

/// A second job with the key, while the first is pending (available or scheduled), is not inserted and
/// its id is left out of the result; the first job is kept as it was.
pub async fn second_enqueue_while_pending_inserts_nothing(backend: JobsBackend) {
    let (f, _clock) = open(&backend).await;
    let q = f.queue();
    let first = enqueue_one(q, job("u", 1).unique_key("k")).await;
    let other = job("u", 2).unique_key("k");
    assert!(enqueue(q, vec![other.clone()]).await.is_empty());
    assert_eq!(info_ids(&live(q).await), [first]);
    assert_eq!(q.job(other.id).await.expect("job"), None);
    assert_eq!(live_job(q, first).await.args, r#"{"n":1}"#);

    let delayed = enqueue_one(
        q,
        job("u", 3)
            .unique_key("later")
            .delay(std::time::Duration::from_secs(600)),
    )
    .await;
    assert!(
        enqueue(q, vec![job("u", 4).unique_key("later")])
            .await
            .is_empty()
    );
    assert_eq!(info_ids(&live(q).await), [first, delayed]);
}

/// While the job with the key is running, another with the key is not inserted either; other keys are.
pub async fn second_enqueue_while_running_inserts_nothing(backend: JobsBackend) {
    let (f, _clock) = open(&backend).await;
    let q = f.queue();
    let first = enqueue_one(q, job("u", 1).unique_key("k")).await;
    assert_eq!(claimed_ids(&claim(q, "default", owner(), 1).await), [first]);
    assert!(
        enqueue(q, vec![job("u", 2).unique_key("k")])
            .await
            .is_empty()
    );
    let other = enqueue_one(q, job("u", 3).unique_key("k2")).await;
    assert_eq!(info_ids(&live(q).await), [first, other]);
}

/// Once the job holding the key is gone (done, dead, or cancelled), the key can be used again.
pub async fn key_is_free_again_once_the_job_is_gone(backend: JobsBackend) {
    let (f, _clock) = open(&backend).await;
    let q = f.queue();
    let me = owner();
    // Done.
    enqueue_one(q, job("u", 1).unique_key("k")).await;
    let c = claim(q, "default", me, 1).await.remove(0);
    finish(q, me, &c, Finish::Delete).await;
    let second = enqueue_one(q, job("u", 2).unique_key("k")).await;
    // Dead.
    let c = claim(q, "default", me, 1).await.remove(0);
    assert_eq!(c.id, second);
    finish(q, me, &c, dead("gave up")).await;
    let third = enqueue_one(q, job("u", 3).unique_key("k")).await;
    // Cancelled.
    assert!(q.cancel(third).await.expect("cancel"));
    enqueue_one(q, job("u", 4).unique_key("k")).await;
}

/// Two jobs with one key in the same enqueue: the first is inserted, the second skipped, the others kept.
pub async fn same_key_twice_in_one_batch_keeps_the_first(backend: JobsBackend) {
    let (f, _clock) = open(&backend).await;
    let q = f.queue();
    let a = job("u", 1).unique_key("k");
    let b = job("u", 2).unique_key("k");
    let c = job("u", 3);
    assert_eq!(
        enqueue(q, vec![a.clone(), b, c.clone()]).await,
        [a.id, c.id]
    );
    assert_eq!(info_ids(&live(q).await), [a.id, c.id]);
}

/// Twenty tasks enqueueing a job with the same key at once: exactly one is inserted.
pub async fn racing_enqueues_of_one_key_insert_once(backend: JobsBackend) {
    let (f, _clock) = open(&backend).await;
    let mut tasks = Vec::new();
    for n in 0..20 {
        let q = if n % 2 == 0 {
            f.queue().clone()
        } else {
            f.other_handle().await
        };
        tasks.push(tokio::spawn(async move {
            q.enqueue(vec![job("u", n).unique_key("user-1")])
                .await
                .expect("enqueue")
                .len()
        }));
    }
    let mut inserted = 0;
    for task in tasks {
        inserted += task.await.expect("task");
    }
    assert_eq!(inserted, 1);
    assert_eq!(live(f.queue()).await.len(), 1);
}
