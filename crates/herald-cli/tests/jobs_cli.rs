//! `herald jobs …` through the real binary: stats, list, dead, retry, retry-all, discard, exit codes; on
//! SQLite and (feature `postgres`) on PostgreSQL, in a fresh schema.

use std::process::Command;

use herald::jobs::{JobResult, JobsConfig, NewJob, WorkerPool};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

fn herald(db: &str, args: &[&str]) -> (i32, Vec<Value>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("--database")
        .arg(db)
        .arg("jobs")
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines = if args.contains(&"--json") {
        stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    } else {
        Vec::new()
    };
    (
        out.status.code().unwrap(),
        lines,
        stdout + &String::from_utf8(out.stderr).unwrap(),
    )
}

/// Two dead jobs (queue `mail`) and three pending (two `default`, one scheduled in `mail`).
async fn seed(db: &str) {
    let options = herald::OpenOptions {
        jobs: JobsConfig::default().full_sync(false),
    };
    let jobs = herald::open_with(db, options).await.unwrap().jobs;
    for i in 0..2 {
        jobs.enqueue(
            NewJob::raw("bounce", format!("{i}"))
                .queue("mail")
                .max_attempts(1),
        )
        .await
        .unwrap();
    }
    let stop = CancellationToken::new();
    let pool = WorkerPool::builder(jobs.clone())
        .queue("mail", 2)
        .handle_raw("bounce", |_, _| async { JobResult::fail("mailbox full") })
        .start(stop.clone());
    while jobs.dead(10).await.unwrap().len() < 2 {
        tokio::task::yield_now().await;
    }
    stop.cancel();
    pool.join().await;
    jobs.enqueue(NewJob::raw("a", "{}")).await.unwrap();
    jobs.enqueue(NewJob::raw("b", "{}")).await.unwrap();
    jobs.enqueue(
        NewJob::raw("later", "{}")
            .queue("mail")
            .delay(std::time::Duration::from_secs(3600)),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn jobs_commands_report_and_manage_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("herald.db").display());
    commands_report_and_manage_the_queue(&db).await;
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn jobs_commands_report_and_manage_the_queue_on_postgres() {
    use herald_store_testkit::postgres::{TestSchema, available};
    if !available("herald jobs CLI on PostgreSQL").await {
        return;
    }
    let schema = TestSchema::new("herald_jobs_cli");
    commands_report_and_manage_the_queue(&schema.url()).await;
}

async fn commands_report_and_manage_the_queue(db: &str) {
    seed(db).await;

    let (code, stats, _) = herald(db, &["stats", "--json"]);
    assert_eq!(code, 0);
    assert_eq!(stats[0]["dead"], 2);
    let queues = stats[0]["queues"].as_array().unwrap();
    assert_eq!(queues[0]["queue"], "default");
    assert_eq!(queues[0]["available"], 2);
    assert_eq!(queues[1]["queue"], "mail");
    assert_eq!(queues[1]["scheduled"], 1);

    let (code, list, _) = herald(db, &["list", "--json", "--queue", "default"]);
    assert_eq!(code, 0);
    let kinds: Vec<_> = list.iter().map(|j| j["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["a", "b"]);
    let (_, scheduled, _) = herald(db, &["list", "--json", "--state", "scheduled"]);
    assert_eq!(scheduled.len(), 1);
    assert_eq!(scheduled[0]["kind"], "later");

    let (code, dead, _) = herald(db, &["dead", "--json"]);
    assert_eq!(code, 0);
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0]["last_error"], "mailbox full");
    let first = dead[0]["id"].as_str().unwrap().to_owned();
    let second = dead[1]["id"].as_str().unwrap().to_owned();

    let (code, out, _) = herald(db, &["retry", &first, "--json"]);
    assert_eq!((code, out[0]["retried"].clone()), (0, Value::Bool(true)));
    let (code, _, _) = herald(db, &["discard", &second, "--json"]);
    assert_eq!(code, 0);
    let (_, stats, _) = herald(db, &["stats", "--json"]);
    assert_eq!(stats[0]["dead"], 0);
    assert_eq!(stats[0]["queues"][1]["available"], 1);

    // Text output.
    let (code, _, text) = herald(db, &["stats"]);
    assert_eq!(code, 0);
    assert!(text.contains("queue default: 2 available"), "{text}");

    // Errors: unknown id 4, bad id or state 5, retry-all on an empty dead set is fine.
    let (code, _, err) = herald(db, &["retry", &second]);
    assert_eq!(code, 4, "{err}");
    let (code, _, _) = herald(db, &["discard", "nope"]);
    assert_eq!(code, 5);
    let (code, _, _) = herald(db, &["list", "--state", "dead"]);
    assert_eq!(code, 5);
    let (code, out, _) = herald(db, &["retry-all", "--json"]);
    assert_eq!((code, out[0]["count"].clone()), (0, Value::from(0)));
}

#[test]
fn jobs_work_on_every_store_url_and_refuse_others() {
    // memory:// has a job queue like every backend (empty: it lives as long as the command).
    let (code, out, err) = herald("memory://", &["stats", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out[0]["dead"], 0);
    // Out-of-range limits and the nil UUID are invalid input (exit 5), as for `read` and `streams`.
    for args in [
        &["list", "--limit", "0"][..],
        &["dead", "--limit", "0"][..],
        &["list", "--limit", "10001"][..],
        &["retry", "00000000-0000-0000-0000-000000000000"][..],
        &["discard", "00000000-0000-0000-0000-000000000000"][..],
    ] {
        let (code, _, err) = herald("memory://", args);
        assert_eq!(code, 5, "{args:?}: {err}");
    }
    // A scheme no backend of this build opens is invalid input, named in the message.
    let (code, _, err) = herald("redis://127.0.0.1", &["stats"]);
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("redis"), "{err}");
}
