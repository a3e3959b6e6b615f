//! Periodic jobs: time zones, and exactly one enqueue per tick across store handles and processes.

mod common;

use herald_jobs::{JobsConfig, ListFilter, NewJob, Periodic, Scheduler};

// 2026-01-15T00:00:00Z and 2026-07-15T00:00:00Z.
const JAN_15: i64 = 1_768_435_200_000_000;
const JUL_15: i64 = 1_784_073_600_000_000;
const HOUR: i64 = 3_600_000_000;

#[test]
fn ticks_follow_the_time_zone() {
    let daily = Periodic::new(
        "report",
        "0 9 * * *",
        "Europe/Paris",
        NewJob::raw("report", "{}"),
    )
    .unwrap();
    // 09:00 in Paris is 08:00 UTC in winter and 07:00 UTC in summer.
    assert_eq!(daily.ticks(JAN_15, JAN_15 + 24 * HOUR), [JAN_15 + 8 * HOUR]);
    assert_eq!(daily.ticks(JUL_15, JUL_15 + 24 * HOUR), [JUL_15 + 7 * HOUR]);
    assert!(Periodic::new("x", "not cron", "UTC", NewJob::raw("x", "{}")).is_err());
    assert!(Periodic::new("x", "* * * * *", "Mars/Olympus", NewJob::raw("x", "{}")).is_err());
}

fn schedules() -> Vec<Periodic> {
    vec![
        Periodic::new(
            "every-minute",
            "* * * * *",
            "UTC",
            NewJob::raw("tick", "{}"),
        )
        .unwrap(),
        Periodic::new(
            "hourly",
            "0 * * * *",
            "America/New_York",
            NewJob::raw("hourly", "{}"),
        )
        .unwrap(),
    ]
}

async fn two_store_handles_racing_enqueue_each_tick_once(f: common::Fixture) {
    let a = f.reopen(JobsConfig::default().full_sync(false)).await;
    let b = f.reopen(JobsConfig::default().full_sync(false)).await;
    let (sa, sb) = (
        Scheduler::new(a.clone(), schedules()),
        Scheduler::new(b.clone(), schedules()),
    );
    let mut total = 0;
    // Overlapping windows, concurrently: [0, 3h] in 10-minute steps vs [0, 3h] in 7-minute steps.
    let ta = tokio::spawn(async move {
        let mut n = 0;
        for i in 0..18 {
            n += sa
                .enqueue_due(JAN_15 + i * HOUR / 6, JAN_15 + (i + 1) * HOUR / 6)
                .await
                .unwrap();
        }
        n
    });
    let tb = tokio::spawn(async move {
        let step = 7 * 60_000_000;
        let mut n = 0;
        let mut t = JAN_15;
        while t < JAN_15 + 3 * HOUR {
            n += sb
                .enqueue_due(t, (t + step).min(JAN_15 + 3 * HOUR))
                .await
                .unwrap();
            t += step;
        }
        n
    });
    total += ta.await.unwrap() + tb.await.unwrap();
    let jobs = a
        .list(ListFilter {
            limit: Some(10_000),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(total, 180 + 3);
    assert_each_tick_once(&jobs);
}

/// Each tick of the 3 hours after `JAN_15` is one job, told apart by the tick its metadata names (not only
/// counted): 180 distinct minutes of `tick`, 3 distinct hours of `hourly`, nothing else.
fn assert_each_tick_once(jobs: &[herald_jobs::JobInfo]) {
    for (kind, every, count) in [("tick", 60_000_000, 180), ("hourly", HOUR, 3)] {
        let mut ticks: Vec<i64> = jobs
            .iter()
            .filter(|j| j.kind == kind)
            .map(|j| {
                let meta: serde_json::Value = serde_json::from_str(&j.metadata).unwrap();
                meta["tick"]
                    .as_i64()
                    .expect("a cron job's metadata names its tick")
            })
            .collect();
        ticks.sort_unstable();
        let before = ticks.len();
        ticks.dedup();
        assert_eq!(before, ticks.len(), "a `{kind}` tick was enqueued twice");
        assert_eq!(ticks.len(), count, "`{kind}` ticks");
        assert!(
            ticks
                .iter()
                .all(|t| (JAN_15..=JAN_15 + 3 * HOUR).contains(t) && (t - JAN_15) % every == 0),
            "`{kind}` ticks off the schedule: {ticks:?}"
        );
    }
    assert_eq!(jobs.len(), 183, "only the two schedules' ticks");
}

/// Run by `cron_exactly_once_across_processes` in a child process.
#[tokio::test]
#[ignore = "child process of cron_exactly_once_across_processes"]
async fn cron_child() {
    let Ok(path) = std::env::var("HERALD_JOBS_CRON_URL") else {
        return;
    };
    let jobs = common::open_url(&path, JobsConfig::default().full_sync(false))
        .await
        .unwrap();
    let s = Scheduler::new(jobs, schedules());
    let mut n = 0;
    for i in 0..36 {
        n += s
            .enqueue_due(JAN_15 + i * HOUR / 12, JAN_15 + (i + 1) * HOUR / 12)
            .await
            .unwrap();
    }
    println!("\nENQUEUED {n}");
}

async fn cron_exactly_once_across_processes(f: common::Fixture) {
    let path = f.url.clone();
    let jobs = f.reopen(JobsConfig::default().full_sync(false)).await;
    let children: Vec<_> = (0..2)
        .map(|_| {
            std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--ignored",
                    "--exact",
                    "cron_child",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env("HERALD_JOBS_CRON_URL", &path)
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut total = 0;
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        let n: usize = text
            .split("ENQUEUED ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .expect("child reports")
            .parse()
            .unwrap();
        total += n;
    }
    let all = jobs
        .list(ListFilter {
            limit: Some(10_000),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_each_tick_once(&all);
    assert_eq!(
        total, 183,
        "the two processes together enqueued each tick once"
    );
}

async fn a_running_scheduler_enqueues_when_the_clock_reaches_a_tick(f: common::Fixture) {
    let clock = herald_jobs::ManualClock::at_micros(JAN_15 + 30_000_000);
    let jobs = f
        .reopen(JobsConfig::default().clock(clock.clone()).full_sync(false))
        .await;
    let stop = tokio_util::sync::CancellationToken::new();
    let task = Scheduler::new(jobs.clone(), schedules())
        .start(std::time::Duration::from_millis(5), stop.clone());
    // No tick between 00:00:30 and 00:00:59: nothing. Then 00:01:00 (every-minute) and 00:02:00.
    clock.advance(std::time::Duration::from_secs(29));
    clock.advance(std::time::Duration::from_secs(91));
    common::eventually("two ticks enqueued", || async {
        jobs.list(ListFilter::default()).await.unwrap().len() == 2
    })
    .await;
    stop.cancel();
    task.await.unwrap();
    let all = jobs.list(ListFilter::default()).await.unwrap();
    assert!(all.iter().all(|j| j.kind == "tick"));
}

all_backends!(
    two_store_handles_racing_enqueue_each_tick_once,
    a_running_scheduler_enqueues_when_the_clock_reaches_a_tick,
);

/// Worker processes need a database they can open (a file or a schema).
mod processes {
    use super::*;

    database_backends!(cron_exactly_once_across_processes);
}
