//! Crash safety for real: a child process (this test binary, re-executed to run the ignored `child_appender`
//! test) appends multi-event batches from several tasks and prints each batch's ids before the append
//! (`TRY`) and after it is acknowledged (`ACK`). The parent SIGKILLs it mid-stream (`Child::kill` is SIGKILL on
//! Unix), reopens the file and checks: every acknowledged event is there, no batch is partly there, the global
//! log has no gap, and every stream's versions are contiguous. Several rounds run against the same file, so
//! recovery after a kill is exercised too.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use futures::TryStreamExt;
use herald_core::{EventStore, EventStoreExt, ExpectedVersion, NewEvent, ReadQuery, StreamName};
use herald_sqlite::{Durability, SqliteConfig, SqliteStore};
use uuid::Uuid;

const DB_ENV: &str = "HERALD_SQLITE_CRASH_DB";
const ROUND_ENV: &str = "HERALD_SQLITE_CRASH_ROUND";
const TASKS: usize = 4;

/// Runs only when re-executed by `appends_survive_sigkill`.
#[test]
#[ignore = "child process of appends_survive_sigkill"]
fn child_appender() {
    let (Ok(db), Ok(round)) = (std::env::var(DB_ENV), std::env::var(ROUND_ENV)) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let config = SqliteConfig::default().durability(Durability::Full);
        let store = std::sync::Arc::new(SqliteStore::open(&db, config).await.unwrap());
        let mut tasks = Vec::new();
        for task in 0..TASKS {
            let store = store.clone();
            let stream = StreamName::new(format!("crash-{round}x{task}")).unwrap();
            tasks.push(tokio::spawn(async move {
                let mut expected = ExpectedVersion::NoStream;
                for n in 0u64.. {
                    let size = 1 + (n as usize + task) % 5;
                    let events: Vec<NewEvent> = (0..size)
                        .map(|i| {
                            NewEvent::new("Crashed").with_data(format!(r#"{{"n":{n},"i":{i}}}"#))
                        })
                        .collect();
                    let ids = events
                        .iter()
                        .map(|e| e.id.to_string())
                        .collect::<Vec<_>>()
                        .join(" ");
                    emit(&format!("TRY {stream} {ids}"));
                    let result = store.append(&stream, events, expected).await.unwrap();
                    expected = ExpectedVersion::Exact(result.last_version);
                    emit(&format!("ACK {stream} {ids}"));
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
}

fn emit(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").unwrap();
    out.flush().unwrap();
}

struct Batch {
    stream: String,
    ids: Vec<Uuid>,
    acked: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.db");
    let exe = std::env::current_exe().unwrap();
    let mut batches: Vec<Batch> = Vec::new();
    let mut total_acked = 0;
    for round in 0..5 {
        let mut child = Command::new(&exe)
            .args(["child_appender", "--exact", "--ignored", "--nocapture"])
            .env(DB_ENV, &db)
            .env(ROUND_ENV, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Kill after a different number of acknowledgements each round.
        let kill_after = 40 + round * 37;
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut acked_this_round = 0;
        let mut killed = false;
        for line in lines {
            let line = line.unwrap();
            let mut words = line.split(' ');
            let (Some(kind @ ("TRY" | "ACK")), Some(stream)) = (words.next(), words.next()) else {
                continue; // libtest's own lines
            };
            let ids: Vec<Uuid> = words.map(|w| w.parse().unwrap()).collect();
            let key = format!("{stream} {ids:?}");
            match kind {
                "TRY" => {
                    index.insert(key, batches.len());
                    batches.push(Batch {
                        stream: stream.to_owned(),
                        ids,
                        acked: false,
                    });
                }
                "ACK" => {
                    batches[index[&key]].acked = true;
                    acked_this_round += 1;
                    if acked_this_round == kill_after && !killed {
                        child.kill().unwrap();
                        killed = true;
                        // Keep reading: lines already in the pipe were printed before the kill.
                    }
                }
                _ => {}
            }
        }
        let status = child.wait().unwrap();
        assert!(killed, "child ended on its own: {status:?}");
        assert!(!status.success(), "child was not killed: {status:?}");
        total_acked += acked_this_round;

        let store = SqliteStore::open(&db, SqliteConfig::default())
            .await
            .unwrap();
        check(&store, &batches).await;
        store.close().await;
    }
    assert!(total_acked >= 5 * 40);
}

async fn check(store: &SqliteStore, batches: &[Batch]) {
    let log: Vec<_> = store.read(ReadQuery::all()).try_collect().await.unwrap();
    for (i, event) in log.iter().enumerate() {
        assert_eq!(event.position, i as u64 + 1, "gap in the global log");
    }
    let stored: HashSet<Uuid> = log.iter().map(|e| e.id).collect();
    let mut partial = 0;
    let mut missing_acked = 0;
    for batch in batches {
        let present = batch.ids.iter().filter(|id| stored.contains(id)).count();
        if present != 0 && present != batch.ids.len() {
            partial += 1;
        }
        if batch.acked && present != batch.ids.len() {
            missing_acked += 1;
        }
    }
    let in_flight = batches.iter().filter(|b| !b.acked).count();
    let in_flight_committed = batches
        .iter()
        .filter(|b| !b.acked && stored.contains(&b.ids[0]))
        .count();
    eprintln!(
        "{} batches tried, {in_flight} unacknowledged at a kill, {in_flight_committed} of those committed",
        batches.len()
    );
    assert_eq!(partial, 0, "partial appends found");
    assert_eq!(missing_acked, 0, "acknowledged appends lost");
    let tried: HashSet<Uuid> = batches.iter().flat_map(|b| b.ids.clone()).collect();
    assert!(
        stored.iter().all(|id| tried.contains(id)),
        "an event nobody appended"
    );
    // Streams: versions contiguous from 0, in the order the batches were written.
    let mut per_stream: BTreeMap<&str, Vec<Uuid>> = BTreeMap::new();
    for batch in batches {
        if stored.contains(&batch.ids[0]) {
            per_stream
                .entry(&batch.stream)
                .or_default()
                .extend(&batch.ids);
        }
    }
    for (stream, ids) in per_stream {
        let events = store
            .read_to_vec(ReadQuery::stream(StreamName::new(stream).unwrap()))
            .await
            .unwrap();
        let read: Vec<Uuid> = events.iter().map(|e| e.id).collect();
        assert_eq!(read, ids, "stream {stream}");
        assert!(
            events
                .iter()
                .enumerate()
                .all(|(i, e)| e.version == i as u64)
        );
    }
}
