//! herald-es benchmarks (harness = false): aggregate cycles on SQLite with and without snapshots, subscription
//! and transactional projection catch-up throughput, and live append → handler latency.
//!
//! ```text
//! cargo bench -p herald-es --bench es                 # 10 and 1,000-event streams, 100k-event catch-up
//! cargo bench -p herald-es --bench es -- --big        # adds the 100,000-event stream and 1M-event catch-up
//! cargo bench -p herald-es --bench es -- --only aggregate|catchup|latency
//! ```

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use herald_core::{
    EventStore, EventStoreExt, ExpectedVersion, NewEvent, ReadQuery, RecordedEvent, StreamName,
};
use herald_es::sqlite::{
    SqliteCheckpointStore, SqliteProjection, SqliteReadModel, SqliteSnapshotStore,
};
use herald_es::{
    Aggregate, BoxError, CancellationToken, CommandMetadata, EventHandler, EventSet,
    InMemoryCheckpointStore, Repository, RetryPolicy, SnapshotPolicy, Subscription,
};
use herald_sqlite::{Durability, SqliteConfig, SqliteStore};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
enum AccountEvent {
    Deposited { cents: u64 },
}
impl EventSet for AccountEvent {}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Account {
    balance: u64,
    deposits: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl Aggregate for Account {
    const CATEGORY: &'static str = "account";
    type Command = u64;
    type Event = AccountEvent;
    type Error = Never;
    fn decide(&self, cents: &u64) -> Result<Vec<AccountEvent>, Never> {
        Ok(vec![AccountEvent::Deposited { cents: *cents }])
    }
    fn apply(&mut self, AccountEvent::Deposited { cents }: &AccountEvent) {
        self.balance += cents;
        self.deposits += 1;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn open(path: &Path, durability: Durability) -> Arc<dyn EventStore> {
    Arc::new(
        SqliteStore::open(path, SqliteConfig::default().durability(durability))
            .await
            .unwrap(),
    )
}

/// Appends `n` Deposited events to `stream` in batches of 1,000.
async fn fill(store: &dyn EventStore, stream: &StreamName, n: usize) {
    let codec = herald_es::Codec::<AccountEvent>::default();
    let meta = CommandMetadata::new();
    let mut left = n;
    while left > 0 {
        let k = left.min(1000);
        let events = (0..k)
            .map(|_| {
                codec
                    .encode(&AccountEvent::Deposited { cents: 1 }, &meta)
                    .unwrap()
            })
            .collect();
        store
            .append(stream, events, ExpectedVersion::Any)
            .await
            .unwrap();
        left -= k;
    }
}

async fn bench_aggregate(dir: &Path, sizes: &[usize]) {
    println!("## aggregate load + decide + save on SQLite (durability full: one fsync per save)\n");
    println!(
        "| stream length | snapshots | cycles | cycles/s | load p50 | load p99 | cycle p50 | cycle p99 |"
    );
    println!("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for &size in sizes {
        for snapshots in [false, true] {
            let path = dir.join(format!("agg-{size}-{snapshots}.db"));
            let store = open(&path, Durability::Full).await;
            let id = "a";
            let stream = Account::stream_name(id).unwrap();
            fill(&*store, &stream, size).await;
            let mut repo =
                Repository::<Account>::new(store.clone()).with_retry(RetryPolicy::never());
            if snapshots {
                let snaps = Arc::new(SqliteSnapshotStore::open(&path).await.unwrap());
                repo = repo.with_snapshots(snaps, SnapshotPolicy::every(100));
                let loaded = repo.load(id).await.unwrap();
                repo.snapshot(&loaded).await.unwrap();
            }
            let cycles = match (size, snapshots) {
                (s, false) if s >= 100_000 => 5,
                (s, _) if s >= 1000 => 100,
                _ => 300,
            };
            let (mut loads, mut totals) = (Vec::new(), Vec::new());
            let meta = CommandMetadata::new();
            let started = Instant::now();
            for _ in 0..cycles {
                let t0 = Instant::now();
                let loaded = repo.load(id).await.unwrap();
                let t1 = Instant::now();
                let events = loaded.state.decide(&1).unwrap();
                repo.save(&loaded, events, &meta).await.unwrap();
                loads.push(t1 - t0);
                totals.push(t0.elapsed());
            }
            let elapsed = started.elapsed();
            loads.sort();
            totals.sort();
            println!(
                "| {size} | {} | {cycles} | {:.0} | {:?} | {:?} | {:?} | {:?} |",
                if snapshots { "every 100" } else { "none" },
                cycles as f64 / elapsed.as_secs_f64(),
                percentile(&loads, 0.5),
                percentile(&loads, 0.99),
                percentile(&totals, 0.5),
                percentile(&totals, 0.99),
            );
        }
    }
    println!();
}

struct Counter {
    seen: AtomicU64,
}

#[async_trait]
impl EventHandler for Counter {
    async fn handle(&self, _: &RecordedEvent) -> Result<(), BoxError> {
        self.seen.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

async fn bench_catchup(dir: &Path, total: usize) {
    println!(
        "## subscription catch-up over {total} stored events (global log, batch 512, checkpoint per batch)\n"
    );
    // Baseline, same run, same store: the store's own paged read of the global log (what the subscription
    // reads through), timed just before the subscription runs.
    println!(
        "| backend | checkpoints | events | seconds | events/s | baseline: plain global read, events/s | ratio |"
    );
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: |");
    let path = dir.join("catchup.db");
    let sqlite = open(&path, Durability::Normal).await;
    let memory: Arc<dyn EventStore> = Arc::new(herald_memory::InMemoryStore::new());
    for (i, chunk) in (0..total).step_by(1000).enumerate() {
        let stream = StreamName::new(format!("account-{}", i % 1000)).unwrap();
        let n = (total - chunk).min(1000);
        fill(&*sqlite, &stream, n).await;
        fill(&*memory, &stream, n).await;
    }
    let sqlite_checkpoints = Arc::new(SqliteCheckpointStore::open(&path).await.unwrap());
    for (backend, store, checkpoints) in [
        (
            "memory",
            memory.clone(),
            Arc::new(InMemoryCheckpointStore::new()) as Arc<dyn herald_es::CheckpointStore>,
        ),
        (
            "sqlite",
            sqlite.clone(),
            sqlite_checkpoints as Arc<dyn herald_es::CheckpointStore>,
        ),
    ] {
        let read_started = Instant::now();
        let mut read = 0_usize;
        let mut events = store.read(ReadQuery::all().batch_size(512));
        while let Some(event) = events.next().await {
            event.unwrap();
            read += 1;
        }
        assert_eq!(read, total);
        let read_rate = total as f64 / read_started.elapsed().as_secs_f64();
        let sub = Arc::new(
            Subscription::all("bench", store.clone(), checkpoints.clone())
                .unwrap()
                .batch_size(512)
                .unwrap(),
        );
        let counter = Arc::new(Counter {
            seen: AtomicU64::new(0),
        });
        let cancel = CancellationToken::new();
        let mut progress = sub.progress();
        let started = Instant::now();
        let run = tokio::spawn({
            let (sub, counter, cancel) = (sub.clone(), counter.clone(), cancel.clone());
            async move { sub.run(&*counter, &cancel).await }
        });
        progress
            .wait_for(|p| p.is_some_and(|p| p >= total as u64))
            .await
            .unwrap();
        let elapsed = started.elapsed();
        cancel.cancel();
        run.await.unwrap().unwrap();
        assert_eq!(counter.seen.load(Ordering::Relaxed), total as u64);
        let rate = total as f64 / elapsed.as_secs_f64();
        println!(
            "| {backend} | {} | {total} | {:.2} | {rate:.0} | {read_rate:.0} | {:.2}× |",
            if backend == "memory" {
                "in-memory"
            } else {
                "SQLite (same file)"
            },
            elapsed.as_secs_f64(),
            rate / read_rate
        );
    }
    println!();
    bench_projection(&path, sqlite, total).await;
}

/// A one-row counter: the cheapest read model, so the projection's own cost (transaction, fencing check,
/// checkpoint) is what shows.
struct CounterModel;

impl SqliteReadModel for CounterModel {
    fn setup(&self, tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS bench_count (id INTEGER PRIMARY KEY, n INTEGER NOT NULL);
             INSERT OR IGNORE INTO bench_count (id, n) VALUES (1, 0);",
        )
    }
    fn apply(&self, tx: &rusqlite::Transaction<'_>, _: &RecordedEvent) -> Result<(), BoxError> {
        tx.execute("UPDATE bench_count SET n = n + 1 WHERE id = 1", [])?;
        Ok(())
    }
    fn reset(&self, tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
        tx.execute("UPDATE bench_count SET n = 0", []).map(|_| ())
    }
}

async fn bench_projection(path: &Path, store: Arc<dyn EventStore>, total: usize) {
    println!(
        "## transactional SQLite projection catch-up over {total} stored events (global log, read model + checkpoint per transaction)\n"
    );
    println!("| batch | events | seconds | events/s |");
    println!("| ---: | ---: | ---: | ---: |");
    for batch in [512, 16] {
        let projection = SqliteProjection::open(
            format!("bench-{batch}"),
            path,
            herald_core::ReadScope::All,
            store.clone(),
            CounterModel,
        )
        .await
        .unwrap()
        .batch_size(batch)
        .unwrap();
        let mut progress = projection.progress();
        let projection = Arc::new(projection);
        let cancel = CancellationToken::new();
        let started = Instant::now();
        let run = tokio::spawn({
            let (projection, cancel) = (projection.clone(), cancel.clone());
            async move { projection.run(&cancel).await }
        });
        progress
            .wait_for(|p| p.is_some_and(|p| p >= total as u64))
            .await
            .unwrap();
        let elapsed = started.elapsed();
        cancel.cancel();
        run.await.unwrap().unwrap();
        println!(
            "| {batch} | {total} | {:.2} | {:.0} |",
            elapsed.as_secs_f64(),
            total as f64 / elapsed.as_secs_f64()
        );
    }
    println!();
}

struct Stamp {
    tx: tokio::sync::mpsc::UnboundedSender<Instant>,
}

#[async_trait]
impl EventHandler for Stamp {
    async fn handle(&self, _: &RecordedEvent) -> Result<(), BoxError> {
        let _ = self.tx.send(Instant::now());
        Ok(())
    }
}

async fn bench_latency(dir: &Path, samples: usize) {
    println!(
        "## live latency: append returns → ... → handler called (one appender, one event per append)\n"
    );
    println!(
        "| backend | samples | commit (append call) p50 | p99 | append start → handler p50 | p99 | commit ack → handler p50 | p99 |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let stores: Vec<(&str, Arc<dyn EventStore>)> = vec![
        ("memory", Arc::new(herald_memory::InMemoryStore::new())),
        (
            "sqlite full",
            open(&dir.join("lat-full.db"), Durability::Full).await,
        ),
        (
            "sqlite normal",
            open(&dir.join("lat-normal.db"), Durability::Normal).await,
        ),
    ];
    for (name, store) in stores {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let sub = Subscription::all(
            "lat",
            store.clone(),
            Arc::new(InMemoryCheckpointStore::new()),
        )
        .unwrap();
        let cancel = CancellationToken::new();
        let run = tokio::spawn({
            let cancel = cancel.clone();
            async move { sub.run(&Stamp { tx }, &cancel).await }
        });
        let stream = StreamName::new("account-lat").unwrap();
        let (mut commit, mut total, mut after_ack) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..samples {
            let t0 = Instant::now();
            store
                .append(
                    &stream,
                    vec![NewEvent::new("Deposited")],
                    ExpectedVersion::Any,
                )
                .await
                .unwrap();
            let t1 = Instant::now();
            let handled = rx.recv().await.unwrap();
            commit.push(t1 - t0);
            total.push(handled - t0);
            after_ack.push(handled.saturating_duration_since(t1));
        }
        cancel.cancel();
        run.await.unwrap().unwrap();
        for v in [&mut commit, &mut total, &mut after_ack] {
            v.sort();
        }
        println!(
            "| {name} | {samples} | {:?} | {:?} | {:?} | {:?} | {:?} | {:?} |",
            percentile(&commit, 0.5),
            percentile(&commit, 0.99),
            percentile(&total, 0.5),
            percentile(&total, 0.99),
            percentile(&after_ack, 0.5),
            percentile(&after_ack, 0.99),
        );
    }
    println!();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let big = args.iter().any(|a| a == "--big");
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1).cloned());
    let want = |what: &str| only.as_deref().is_none_or(|o| o == what);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    rt.block_on(async {
        if want("aggregate") {
            let sizes: &[usize] = if big {
                &[10, 1000, 100_000]
            } else {
                &[10, 1000]
            };
            bench_aggregate(dir.path(), sizes).await;
        }
        if want("catchup") {
            bench_catchup(dir.path(), if big { 1_000_000 } else { 100_000 }).await;
        }
        if want("latency") {
            bench_latency(dir.path(), 1000).await;
        }
    });
}
