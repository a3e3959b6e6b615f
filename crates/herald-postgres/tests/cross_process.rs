//! Several OS processes share one PostgreSQL store.
//!
//! The parent test re-executes this test binary (`std::env::current_exe()`) to run the `#[ignore]`d
//! `child_process` test, selected and parameterised by environment variables; children report on stdout
//! with lines holding `HERALD-CHILD ` and the report (libtest may print `test child_process ... ` first).
//!
//! - `gap_free_global_order_across_processes`: 2 processes × 4 store handles (8 writer connections) × 2 tasks
//!   append concurrently while the parent follows the global log: every event must arrive exactly once, in
//!   position order, with no gap, and each writer's events in its own order; a raw SQL probe checks
//!   meanwhile that no snapshot ever shows a hole (`count(*) = max(position)`). Several rounds.
//! - `exact_race_across_processes`: two processes race `Exact(v)` appends on one stream, round after round:
//!   every version is won by exactly one of them.

mod support;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use herald_core::{
    Error, EventStore, EventStoreExt, ExpectedVersion, NewEvent, ReadQuery, StreamName,
};
use herald_postgres::PostgresStore;

const CHILD_ROLE: &str = "HERALD_PG_CHILD_ROLE";
const CHILD_SCHEMA: &str = "HERALD_PG_CHILD_SCHEMA";
const CHILD_INDEX: &str = "HERALD_PG_CHILD_INDEX";
const PREFIX: &str = "HERALD-CHILD ";

const PROCESSES: usize = 2;
const STORES_PER_PROCESS: usize = 4;
const TASKS_PER_STORE: usize = 2;
const APPENDS_PER_TASK: usize = 60;
const ROUNDS: usize = 3;
const RACE_ROUNDS: u64 = 200;

/// Events a task appends per round: 1, 2 or 3 per append.
fn events_per_task() -> usize {
    (0..APPENDS_PER_TASK).map(|i| i % 3 + 1).sum()
}

fn spawn_child(role: &str, schema: &str, index: usize) -> std::process::Child {
    Command::new(std::env::current_exe().expect("test binary path"))
        .args([
            "child_process",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ROLE, role)
        .env(CHILD_SCHEMA, schema)
        .env(CHILD_INDEX, index.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawning a child test process")
}

/// Starts two `race` children, waits until both have opened their store (each reports `ready`), then tells
/// both to go at once (a line on stdin), so their rounds overlap. Returns each child's report lines.
fn race_children_together(schema: &str) -> Vec<Vec<String>> {
    use std::io::{BufRead, BufReader, Write};
    let mut children: Vec<_> = (0..2)
        .map(|index| {
            Command::new(std::env::current_exe().expect("test binary path"))
                .args([
                    "child_process",
                    "--exact",
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_ROLE, "race")
                .env(CHILD_SCHEMA, schema)
                .env(CHILD_INDEX, index.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawning a child test process")
        })
        .collect();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let readers: Vec<_> = children
        .iter_mut()
        .map(|child| {
            let stdout = child.stdout.take().expect("piped stdout");
            let ready = ready_tx.clone();
            std::thread::spawn(move || {
                let mut lines = Vec::new();
                for line in BufReader::new(stdout).lines() {
                    let Some((_, report)) = line
                        .expect("child stdout")
                        .split_once(PREFIX)
                        .map(|(a, b)| (a.to_owned(), b.to_owned()))
                    else {
                        continue;
                    };
                    if report == "ready" {
                        let _ = ready.send(());
                    } else {
                        lines.push(report);
                    }
                }
                lines
            })
        })
        .collect();
    for _ in 0..2 {
        ready_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("a race child never reported ready");
    }
    for child in &mut children {
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin.write_all(b"go\n").expect("telling a child to go");
    }
    let reports = readers
        .into_iter()
        .map(|r| r.join().expect("reading a child's report"))
        .collect();
    for child in &mut children {
        assert!(
            child.wait().expect("waiting for a child").success(),
            "a race child failed"
        );
    }
    reports
}

/// Waits for a child (on a blocking thread) and returns its report lines.
async fn child_report(child: std::process::Child) -> Vec<String> {
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .expect("waiting for a child");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "child failed: {stdout}");
    stdout
        .lines()
        .filter_map(|l| l.split_once(PREFIX).map(|(_, report)| report.to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gap_free_global_order_across_processes() {
    if !support::postgres_available("gap_free_global_order_across_processes").await {
        return;
    }
    let (store, schema) = support::fresh_store(|c| c).await;
    let per_round = PROCESSES * STORES_PER_PROCESS * TASKS_PER_STORE * events_per_task();

    // Raw probe: every snapshot must hold a gap-free prefix of the log.
    let probing = Arc::new(AtomicBool::new(true));
    let probe = {
        let probing = Arc::clone(&probing);
        let schema = schema.name().to_owned();
        tokio::spawn(async move {
            let (client, connection) =
                tokio_postgres::connect(&support::database_url(), tokio_postgres::NoTls)
                    .await
                    .unwrap();
            tokio::spawn(connection);
            let sql = format!("SELECT count(*), coalesce(max(position), 0) FROM {schema}.events");
            let mut probes = 0u64;
            while probing.load(Ordering::Relaxed) {
                let row = client.query_one(&sql, &[]).await.unwrap();
                let (count, max): (i64, i64) = (row.get(0), row.get(1));
                assert_eq!(count, max, "a snapshot saw a hole in the global log");
                probes += 1;
            }
            probes
        })
    };

    let mut follow = store.follow(ReadQuery::all().from(1));
    let mut expected_position = 1u64;
    for round in 0..ROUNDS {
        let children: Vec<_> = (0..PROCESSES)
            .map(|p| spawn_child("append", schema.name(), round * PROCESSES + p))
            .collect();
        let reports = futures::future::join_all(children.into_iter().map(child_report));
        let follower = async {
            let mut next_per_writer: HashMap<String, u64> = HashMap::new();
            for _ in 0..per_round {
                let event = tokio::time::timeout(Duration::from_secs(120), follow.next())
                    .await
                    .expect("the follower saw every event in time")
                    .expect("follow never ends")
                    .expect("reading the log");
                assert_eq!(
                    event.position, expected_position,
                    "round {round}: the follower skipped or repeated a position"
                );
                expected_position += 1;
                let (writer, index) = event.data.split_once(':').expect("writer:index data");
                let writer = writer.trim_start_matches('"').to_owned();
                let index: u64 = index.trim_end_matches('"').parse().unwrap();
                let next = next_per_writer.entry(writer.clone()).or_default();
                assert_eq!(index, *next, "writer {writer}'s events out of order");
                *next += 1;
            }
            next_per_writer.len()
        };
        let (reports, writers) = tokio::join!(reports, follower);
        assert_eq!(writers, PROCESSES * STORES_PER_PROCESS * TASKS_PER_STORE);
        let appended: usize = reports
            .iter()
            .flatten()
            .map(|l| {
                l.strip_prefix("appended ")
                    .unwrap()
                    .parse::<usize>()
                    .unwrap()
            })
            .sum();
        assert_eq!(appended, per_round);
    }
    probing.store(false, Ordering::Relaxed);
    let probes = probe.await.unwrap();
    assert!(probes > 0);
    let all = store.read_to_vec(ReadQuery::all()).await.unwrap();
    assert_eq!(all.len(), per_round * ROUNDS);
    // The children's commits reach this handle's head through LISTEN/NOTIFY (nothing here wrote them).
    let mut head = store.watch_head();
    let total = (per_round * ROUNDS) as u64;
    tokio::time::timeout(Duration::from_secs(30), async {
        while head.borrow_and_update().position < total {
            head.changed().await.expect("store alive");
        }
    })
    .await
    .expect("the head learned of the other processes' commits");
    eprintln!(
        "{} events in {ROUNDS} rounds, {probes} snapshot probes, no gap",
        all.len()
    );
    drop(follow);
    drop(store);
    drop(schema);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_race_across_processes() {
    if !support::postgres_available("exact_race_across_processes").await {
        return;
    }
    let (store, schema) = support::fresh_store(|c| c).await;
    let schema_name = schema.name().to_owned();
    let reports = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::task::spawn_blocking(move || race_children_together(&schema_name)),
    )
    .await
    .expect("the race children did not finish within 120 s")
    .unwrap();
    let mut winners: HashMap<u64, usize> = HashMap::new();
    let mut losses = 0;
    for (child, lines) in reports.iter().enumerate() {
        for line in lines {
            if let Some(v) = line.strip_prefix("won ") {
                let previous = winners.insert(v.parse().unwrap(), child);
                assert!(previous.is_none(), "version {v} was won twice");
            } else if line.starts_with("lost ") {
                losses += 1;
            }
        }
    }
    for v in 0..RACE_ROUNDS {
        assert!(winners.contains_key(&v), "nobody won version {v}");
    }
    // The children started racing together (a start barrier), so the rounds overlapped: some appends lost,
    // and each process won some versions. Without overlap the test would prove nothing about the race.
    assert!(
        losses > 0,
        "no append ever lost: the processes did not race"
    );
    for child in 0..2 {
        assert!(
            winners.values().any(|w| *w == child),
            "process {child} won no version: the processes did not race"
        );
    }
    assert_eq!(winners.len() as u64, RACE_ROUNDS);
    let stream = StreamName::new("race-1").unwrap();
    assert_eq!(
        store.stream_version(&stream).await.unwrap(),
        Some(RACE_ROUNDS - 1)
    );
    eprintln!(
        "{RACE_ROUNDS} versions, each won once; {losses} lost races; wins per process: {:?}",
        (0..2)
            .map(|c| winners.values().filter(|w| **w == c).count())
            .collect::<Vec<_>>()
    );
    drop(store);
    drop(schema);
}

/// Not a test of its own: the body of a child process (does nothing unless the parent set the variables).
#[test]
#[ignore = "run by the cross-process tests in a child process"]
fn child_process() {
    let (Ok(role), Ok(schema), Ok(index)) = (
        std::env::var(CHILD_ROLE),
        std::env::var(CHILD_SCHEMA),
        std::env::var(CHILD_INDEX),
    ) else {
        return;
    };
    let index: usize = index.parse().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let config = herald_postgres::PostgresConfig::default().schema(schema);
        match role.as_str() {
            "append" => child_append(config, index).await,
            "race" => child_race(config).await,
            other => panic!("unknown child role {other}"),
        }
    });
}

async fn child_append(config: herald_postgres::PostgresConfig, index: usize) {
    let mut tasks = Vec::new();
    for s in 0..STORES_PER_PROCESS {
        let store = Arc::new(
            PostgresStore::open(&support::database_url(), config.clone())
                .await
                .unwrap(),
        );
        for t in 0..TASKS_PER_STORE {
            let store = Arc::clone(&store);
            let writer = format!("p{index}s{s}t{t}");
            tasks.push(tokio::spawn(async move {
                let stream = StreamName::new(format!("gap-{writer}")).unwrap();
                let mut next = 0usize;
                for i in 0..APPENDS_PER_TASK {
                    let events = (0..i % 3 + 1)
                        .map(|_| {
                            next += 1;
                            NewEvent::new("Appended")
                                .with_data(format!("\"{writer}:{}\"", next - 1))
                        })
                        .collect::<Vec<_>>();
                    store
                        .append(&stream, events, ExpectedVersion::Any)
                        .await
                        .unwrap();
                }
                next
            }));
        }
    }
    let mut appended = 0;
    for task in tasks {
        appended += task.await.unwrap();
    }
    println!("{PREFIX}appended {appended}");
}

async fn child_race(config: herald_postgres::PostgresConfig) {
    let store = PostgresStore::open(&support::database_url(), config)
        .await
        .unwrap();
    let stream = StreamName::new("race-1").unwrap();
    // The start barrier: report ready, then wait for the parent's `go` (see `race_children_together`).
    println!("{PREFIX}ready");
    let mut go = String::new();
    std::io::stdin().read_line(&mut go).unwrap();
    assert_eq!(go.trim(), "go");
    let mut version = 0u64;
    while version < RACE_ROUNDS {
        let expected = match version {
            0 => ExpectedVersion::NoStream,
            v => ExpectedVersion::Exact(v - 1),
        };
        match store
            .append(&stream, vec![NewEvent::new("Raced")], expected)
            .await
        {
            Ok(r) => {
                assert_eq!(r.first_version, version);
                println!("{PREFIX}won {version}");
                version += 1;
            }
            Err(Error::WrongExpectedVersion { actual, .. }) => {
                let actual = actual.expect("the stream exists once someone won");
                assert!(
                    actual >= version,
                    "lost to an older version {actual} < {version}"
                );
                println!("{PREFIX}lost {version}");
                version = actual + 1;
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
}
