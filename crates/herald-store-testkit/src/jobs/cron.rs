//! Cron ticks: each (schedule, tick) enqueues its job once, however often and by however many processes it
//! is asked for.

use std::sync::Arc;
use std::time::Duration;

use herald_core::jobs::{CronTick, JobQueue};

use super::JobsBackend;
use super::support::*;

const MINUTE: i64 = 60 * SECOND;

/// The tick of `schedule` at `tick`, enqueueing a fresh job of type `schedule`.
fn tick(schedule: &str, tick: i64) -> CronTick {
    CronTick {
        schedule: schedule.to_owned(),
        tick,
        job: job(schedule, 0).metadata(format!(r#"{{"cron":"{schedule}","tick":{tick}}}"#)),
    }
}

async fn cron(queue: &Arc<dyn JobQueue>, ticks: Vec<CronTick>) -> usize {
    let until = ticks.iter().map(|t| t.tick).max().unwrap_or(START);
    queue
        .enqueue_cron(ticks, until)
        .await
        .expect("enqueue_cron")
}

/// Asking for the same ticks twice enqueues their jobs once: the second call reports 0 and adds nothing.
/// The jobs are the ones given with the ticks.
pub async fn each_tick_is_enqueued_once(backend: JobsBackend) {
    let (f, _clock) = open(&backend).await;
    let q = f.queue();
    let first = vec![tick("every", START), tick("every", START + MINUTE)];
    let ids: Vec<_> = first.iter().map(|t| t.job.id).collect();
    assert_eq!(cron(q, first).await, 2);
    assert_eq!(
        cron(q, vec![tick("every", START), tick("every", START + MINUTE)]).await,
        0
    );
    let jobs = live(q).await;
    assert_eq!(info_ids(&jobs), ids);
    assert_eq!(
        jobs[1].metadata,
        format!(r#"{{"cron":"every","tick":{}}}"#, START + MINUTE)
    );
}

/// Two schedules with a tick at the same time each enqueue their job.
pub async fn schedules_have_their_own_ticks(backend: JobsBackend) {
    let (f, _clock) = open(&backend).await;
    let q = f.queue();
    assert_eq!(cron(q, vec![tick("a", START), tick("b", START)]).await, 2);
    assert_eq!(cron(q, vec![tick("b", START)]).await, 0);
}

/// Overlapping windows: only the ticks not enqueued before are.
pub async fn overlapping_windows_enqueue_only_new_ticks(backend: JobsBackend) {
    let (f, _clock) = open(&backend).await;
    let q = f.queue();
    let window = |from: i64, to: i64| (from..=to).map(|m| tick("m", START + m * MINUTE)).collect();
    assert_eq!(cron(q, window(0, 4)).await, 5);
    assert_eq!(cron(q, window(3, 9)).await, 5);
    assert_eq!(cron(q, window(0, 9)).await, 0);
    assert_eq!(live(q).await.len(), 10);
}

/// Four schedulers (on other handles when the backend has them) race over the same 3 hours of two
/// schedules in differently sized windows: every tick is enqueued exactly once, and the counts they report
/// add up to the number of ticks.
pub async fn racing_schedulers_enqueue_each_tick_once(backend: JobsBackend) {
    let (f, _clock) = open(&backend).await;
    let mut tasks = Vec::new();
    for scheduler in 0..4i64 {
        let q = f.other_handle().await;
        tasks.push(tokio::spawn(async move {
            let step = 7 + scheduler * 5;
            let mut total = 0;
            let mut from = 0;
            while from < 180 {
                let to = (from + step).min(180);
                let mut ticks: Vec<_> = (from..to)
                    .map(|m| tick("minutely", START + m * MINUTE))
                    .collect();
                ticks.extend(
                    (from..to)
                        .filter(|m| m % 60 == 0)
                        .map(|m| tick("hourly", START + m * MINUTE)),
                );
                total += q
                    .enqueue_cron(ticks, START + to * MINUTE)
                    .await
                    .expect("enqueue_cron");
                from = to;
            }
            total
        }));
    }
    let mut reported = 0;
    for task in tasks {
        reported += task.await.expect("task");
    }
    let jobs = live(f.queue()).await;
    assert_eq!(jobs.iter().filter(|j| j.kind == "minutely").count(), 180);
    assert_eq!(jobs.iter().filter(|j| j.kind == "hourly").count(), 3);
    assert_eq!(reported, 183);
}

/// A tick whose job is skipped for its unique key counts 0 and is used up all the same (pinned): asking for
/// it again once the key is free enqueues nothing.
pub async fn a_tick_whose_job_is_unique_is_consumed(backend: JobsBackend) {
    let (f, _clock) = open(&backend).await;
    let q = f.queue();
    let holder = enqueue_one(q, job("report", 1).unique_key("daily-report")).await;
    let unique_tick = || {
        let mut t = tick("report", START);
        t.job = t.job.unique_key("daily-report");
        t
    };
    assert_eq!(cron(q, vec![unique_tick()]).await, 0);
    assert!(q.cancel(holder).await.expect("cancel"));
    assert_eq!(cron(q, vec![unique_tick()]).await, 0);
    assert!(live(q).await.is_empty());
}

/// A tick is remembered for (at least) a week before the latest window: six days later, asking for it
/// again enqueues nothing.
pub async fn recent_ticks_are_remembered(backend: JobsBackend) {
    let (f, clock) = open(&backend).await;
    let q = f.queue();
    assert_eq!(cron(q, vec![tick("d", START)]).await, 1);
    clock.advance(Duration::from_secs(6 * 86_400));
    let later = START + 6 * 86_400 * SECOND;
    assert_eq!(cron(q, vec![tick("d", later)]).await, 1);
    assert_eq!(
        q.enqueue_cron(vec![tick("d", START)], later)
            .await
            .expect("enqueue_cron"),
        0
    );
    assert_eq!(live(q).await.len(), 2);
}
