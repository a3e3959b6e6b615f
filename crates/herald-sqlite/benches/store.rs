//! Throughput and latency of the SQLite store, each beside a raw rusqlite baseline measured in the same run on
//! the same schema and the same `synchronous` setting.
//!
//! Run: `cargo bench -p herald-sqlite --bench store -- [--runs N] [--secs S] [--skip-1m] [--normal]`
//!
//! Every figure is the median of N runs (default 5), each on a fresh temporary file, with
//! `Durability::Full` (`--normal` switches both Herald and the baselines to `synchronous = NORMAL`). Timed
//! loops run for S seconds (default 1). The "1M events stored" figures reuse one file filled once per
//! bench run (by a raw bulk insert of the same rows Herald writes); `--skip-1m` leaves them out.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use herald_core::{
    EventStore, EventStoreExt, ExpectedVersion, NewEvent, ReadQuery, StreamName, timefmt,
};
use herald_sqlite::{Durability, SqliteConfig, SqliteStore};
use rusqlite::{Connection, params};

struct Options {
    runs: usize,
    secs: Duration,
    skip_1m: bool,
    durability: Durability,
    /// Only the 16-task append loop, for profiling.
    only_concurrent: bool,
    /// Only the global-log read, for profiling.
    only_read: bool,
}

fn options() -> Options {
    let mut o = Options {
        runs: 5,
        secs: Duration::from_secs(1),
        skip_1m: false,
        durability: Durability::Full,
        only_concurrent: false,
        only_read: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--runs" => o.runs = args.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            "--secs" => {
                o.secs = Duration::from_secs_f64(
                    args.next().and_then(|v| v.parse().ok()).expect("--secs S"),
                )
            }
            "--skip-1m" => o.skip_1m = true,
            "--normal" => o.durability = Durability::Normal,
            "--only-concurrent" => o.only_concurrent = true,
            "--only-read" => o.only_read = true,
            "--bench" => {} // passed by cargo bench
            other => panic!("unknown argument {other}"),
        }
    }
    o
}

const DATA: &str = r#"{"order_id":"0190c8a4-5c56-7d3e-8f00-000000000001","amount":1999,"currency":"EUR","items":[{"sku":"A-1","qty":2}]}"#;
const META: &str = r#"{"correlation_id":"0190c8a4-5c56-7d3e-8f00-000000000002","user":"bench"}"#;

fn event() -> NewEvent {
    NewEvent::new("OrderPlaced")
        .with_data(DATA)
        .with_metadata(META)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn open(path: &Path, o: &Options) -> SqliteStore {
    SqliteStore::open(path, SqliteConfig::default().durability(o.durability))
        .await
        .unwrap()
}

/// Operations counted over time, accumulated over alternating slices.
#[derive(Default, Clone, Copy)]
struct Meter {
    ops: f64,
    secs: f64,
}

impl Meter {
    fn add(&mut self, ops: f64, elapsed: Duration) {
        self.ops += ops;
        self.secs += elapsed.as_secs_f64();
    }
    fn rate(self) -> f64 {
        self.ops / self.secs
    }
}

/// Herald and its baseline share the disk with whatever else the machine does, and an fsync's cost drifts
/// over seconds; so each figure alternates short slices of Herald and of the baseline.
const SLICES: u32 = 10;

/// 1-event appends from one task for `secs`, latencies pushed to `latencies`.
async fn herald_single(
    store: &SqliteStore,
    secs: Duration,
    latencies: &mut Vec<Duration>,
    meter: &mut Meter,
) {
    let stream = StreamName::new("bench-single").unwrap();
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < secs {
        let t = Instant::now();
        store
            .append(&stream, vec![event()], ExpectedVersion::Any)
            .await
            .unwrap();
        latencies.push(t.elapsed());
        n += 1;
    }
    meter.add(n as f64, start.elapsed());
}

/// 1-event appends from `tasks` concurrent tasks, each on its own stream with exact versions.
async fn herald_concurrent(
    store: &Arc<SqliteStore>,
    tasks: usize,
    secs: Duration,
    slice: u32,
    meter: &mut Meter,
) {
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                let stream = StreamName::new(format!("bench-conc-{slice}x{t}")).unwrap();
                let mut expected = ExpectedVersion::NoStream;
                let mut n = 0u64;
                while start.elapsed() < secs {
                    let r = store
                        .append(&stream, vec![event()], expected)
                        .await
                        .unwrap();
                    expected = ExpectedVersion::Exact(r.last_version);
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for h in handles {
        total += h.await.unwrap();
    }
    meter.add(total as f64, start.elapsed());
}

/// 100-event appends from one task, counting events.
async fn herald_batches(store: &SqliteStore, secs: Duration, meter: &mut Meter) {
    let stream = StreamName::new("bench-batch").unwrap();
    let start = Instant::now();
    let mut events = 0;
    while start.elapsed() < secs {
        store
            .append(
                &stream,
                (0..100).map(|_| event()).collect(),
                ExpectedVersion::Any,
            )
            .await
            .unwrap();
        events += 100;
    }
    meter.add(events as f64, start.elapsed());
}

/// Streams a whole read: events/s.
async fn herald_read(store: &SqliteStore, query: ReadQuery, expect: usize) -> f64 {
    let start = Instant::now();
    let n = store
        .read(query)
        .try_fold(0usize, |n, e| {
            std::hint::black_box(&e);
            async move { Ok(n + 1) }
        })
        .await
        .unwrap();
    assert_eq!(n, expect);
    n as f64 / start.elapsed().as_secs_f64()
}

// ---------------------------------------------------------------------------------------------------------
// Raw rusqlite baselines: same schema (created by opening a store on the file), same pragmas, same rows.

fn raw_connection(path: &Path, o: &Options) -> Connection {
    let conn = Connection::open(path).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    let sync = match o.durability {
        Durability::Full => "FULL",
        _ => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", sync).unwrap();
    conn.pragma_update(None, "cache_size", -32_768).unwrap();
    conn
}

struct RawWriter {
    conn: Connection,
    next_position: i64,
    next_version: i64,
}

impl RawWriter {
    fn new(conn: Connection) -> Self {
        let next_position: i64 = conn
            .query_row(
                "SELECT coalesce(max(position), 0) + 1 FROM events",
                [],
                |r| r.get(0),
            )
            .unwrap();
        RawWriter {
            conn,
            next_position,
            next_version: 0,
        }
    }

    /// One transaction holding `n` events of one stream: the rows Herald writes (event, entry, stream upsert).
    fn transaction(&mut self, stream: &str, n: usize) {
        let now = timefmt::to_unix_micros(timefmt::now_micros());
        let category = herald_core::stream::category_of(stream);
        let tx = self.conn.transaction().unwrap();
        {
            let mut ins_event = tx
                .prepare_cached(
                    "INSERT INTO events (position, id, stream, version, category, type, data, metadata, recorded_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )
                .unwrap();
            let mut ins_entry = tx
                .prepare_cached(
                    "INSERT INTO stream_entries (stream, version, position, is_link) VALUES (?1, ?2, ?3, 0)",
                )
                .unwrap();
            for _ in 0..n {
                let id = uuid::Uuid::now_v7();
                ins_event
                    .execute(params![
                        self.next_position,
                        id.as_bytes(),
                        stream,
                        self.next_version,
                        category,
                        "OrderPlaced",
                        DATA,
                        META,
                        now
                    ])
                    .unwrap();
                ins_entry
                    .execute(params![stream, self.next_version, self.next_position])
                    .unwrap();
                self.next_position += 1;
                self.next_version += 1;
            }
            tx.prepare_cached(
                "INSERT INTO streams (name, version) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET version = excluded.version",
            )
            .unwrap()
            .execute(params![stream, self.next_version - 1])
            .unwrap();
        }
        tx.commit().unwrap();
    }
}

/// Transactions of `n` rows for `secs`, counting events.
fn raw_transactions(w: &mut RawWriter, secs: Duration, stream: &str, n: usize, meter: &mut Meter) {
    let start = Instant::now();
    let mut events = 0;
    while start.elapsed() < secs {
        w.transaction(stream, n);
        events += n;
    }
    meter.add(events as f64, start.elapsed());
}

type RawRow = (Vec<u8>, String, String, i64, i64, String, String, i64);

/// A SELECT loop materialising the same fields Herald returns: events/s.
fn raw_read(path: &Path, o: &Options, stream: Option<&str>, expect: usize) -> f64 {
    let conn = raw_connection(path, o);
    let start = Instant::now();
    let map = |r: &rusqlite::Row<'_>| -> rusqlite::Result<RawRow> {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(6)?,
            r.get(7)?,
        ))
    };
    let mut n = 0;
    match stream {
        None => {
            let mut stmt = conn
                .prepare("SELECT id, type, stream, version, position, data, metadata, recorded_at FROM events ORDER BY position")
                .unwrap();
            for row in stmt.query_map([], map).unwrap() {
                std::hint::black_box(row.unwrap());
                n += 1;
            }
        }
        Some(s) => {
            let mut stmt = conn
                .prepare(
                    "SELECT e.id, e.type, se.stream, se.version, e.position, e.data, e.metadata, e.recorded_at
                     FROM stream_entries se CROSS JOIN events e ON e.position = se.position
                     WHERE se.stream = ?1 ORDER BY se.version",
                )
                .unwrap();
            for row in stmt.query_map([s], map).unwrap() {
                std::hint::black_box(row.unwrap());
                n += 1;
            }
        }
    }
    assert_eq!(n, expect);
    n as f64 / start.elapsed().as_secs_f64()
}

/// Fills a store file with `total` events (half in one stream, the rest over 1000 streams) by raw bulk insert.
fn fill(path: &Path, o: &Options, total: usize, big_stream: &str) {
    let conn = raw_connection(path, o);
    let mut w = RawWriter::new(conn);
    let half = total / 2;
    for _ in 0..half / 10_000 {
        w.transaction(big_stream, 10_000);
    }
    let per = (total - half) / 1000;
    for s in 0..1000 {
        w.next_version = 0;
        w.transaction(&format!("fill-{s}"), per);
    }
}

// ---------------------------------------------------------------------------------------------------------

#[derive(Default)]
struct Figures {
    rows: Vec<(String, Vec<f64>, Vec<f64>, &'static str)>,
}

impl Figures {
    fn add(&mut self, name: &str, herald: f64, baseline: Option<f64>, target: &'static str) {
        if let Some(row) = self.rows.iter_mut().find(|r| r.0 == name) {
            row.1.push(herald);
            if let Some(b) = baseline {
                row.2.push(b);
            }
        } else {
            self.rows.push((
                name.to_owned(),
                vec![herald],
                baseline.into_iter().collect(),
                target,
            ));
        }
    }
}

fn fmt(v: f64) -> String {
    if v >= 100.0 {
        format!("{:.0}", v)
    } else {
        format!("{:.2}", v)
    }
}

fn main() {
    let o = options();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if o.only_concurrent {
        runtime.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let store = Arc::new(open(&dir.path().join("c.db"), &o).await);
            let mut m = Meter::default();
            herald_concurrent(&store, 16, o.secs, 0, &mut m).await;
            let stats = store.write_stats();
            println!(
                "16 tasks: {:.0} appends/s, {:.1} requests per commit",
                m.rate(),
                stats.requests as f64 / stats.transactions as f64
            );
        });
        return;
    }
    if o.only_read {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("read.db");
        runtime.block_on(async { open(&p, &o).await.close().await });
        fill(&p, &o, 100_000, "big-1");
        runtime.block_on(async {
            let store = open(&p, &o).await;
            for _ in 0..o.runs {
                let raw = raw_read(&p, &o, None, 100_000);
                let herald = herald_read(&store, ReadQuery::all(), 100_000).await;
                println!("global read: herald {herald:.0}/s, raw {raw:.0}/s");
            }
        });
        return;
    }
    let mut f = Figures::default();
    let read_events = 100_000;
    let started = Instant::now();
    for run in 0..o.runs {
        eprintln!("run {}/{} ...", run + 1, o.runs);
        let dir = tempfile::tempdir().unwrap();
        runtime.block_on(async {
            // Appends: Herald and the raw baseline each on a fresh file, in alternating slices.
            let slice = o.secs / SLICES;
            let store = Arc::new(open(&dir.path().join("herald.db"), &o).await);
            let raw_path = dir.path().join("raw.db");
            open(&raw_path, &o).await.close().await;
            let mut raw = RawWriter::new(raw_connection(&raw_path, &o));
            let (mut h1, mut r1, mut h16, mut h100, mut r100) = Default::default();
            let mut lat = Vec::new();
            let before = store.write_stats();
            for i in 0..SLICES {
                herald_single(&store, slice, &mut lat, &mut h1).await;
                raw_transactions(&mut raw, slice, "raw-single", 1, &mut r1);
                herald_concurrent(&store, 16, slice, i, &mut h16).await;
                raw_transactions(&mut raw, slice, "raw-single", 1, &mut r1);
            }
            let after = store.write_stats();
            for _ in 0..SLICES {
                herald_batches(&store, slice, &mut h100).await;
                raw_transactions(&mut raw, slice, "raw-batch", 100, &mut r100);
            }
            drop(store);
            drop(raw);
            lat.sort();
            let raw1 = r1.rate();
            f.add("1-event appends/s, 1 task", h1.rate(), Some(raw1), "");
            f.add(
                "append latency p50 (µs), 1 task (baseline: mean raw 1-row txn)",
                percentile(&lat, 0.5).as_secs_f64() * 1e6,
                Some(1e6 / raw1),
                "",
            );
            f.add(
                "append latency p99 (µs), 1 task",
                percentile(&lat, 0.99).as_secs_f64() * 1e6,
                None,
                "",
            );
            f.add(
                "1-event appends/s, 16 tasks",
                h16.rate(),
                Some(raw1),
                "≥ 8× raw 1-row txns",
            );
            // Includes the 1-task slices (batch 1), so it understates the 16-task batch a little.
            let batch = (after.requests - before.requests) as f64
                / (after.transactions - before.transactions).max(1) as f64;
            f.add(
                "average requests per commit (1- and 16-task phases)",
                batch,
                None,
                "",
            );
            f.add(
                "100-event appends, events/s",
                h100.rate(),
                Some(r100.rate()),
                "≥ 0.7× raw 100-row txns",
            );

            // Reads over a file of 100k events: 50k in one stream, 50k over 1000 streams.
            let p = dir.path().join("read.db");
            open(&p, &o).await.close().await;
            fill(&p, &o, read_events, "big-1");
            // Alternate Herald and raw reads too; each figure is the mean over its turns.
            let store = open(&p, &o).await;
            let big = StreamName::new("big-1").unwrap();
            let (mut all, mut one, mut all_big_batch) = (0.0, 0.0, 0.0);
            let (mut raw_all, mut raw_stream) = (0.0, 0.0);
            const TURNS: u32 = 3;
            for _ in 0..TURNS {
                raw_all += raw_read(&p, &o, None, read_events);
                all += herald_read(&store, ReadQuery::all(), read_events).await;
                raw_stream += raw_read(&p, &o, Some("big-1"), read_events / 2);
                one += herald_read(&store, ReadQuery::stream(big.clone()), read_events / 2).await;
                all_big_batch +=
                    herald_read(&store, ReadQuery::all().batch_size(10_000), read_events).await;
            }
            let turns = f64::from(TURNS);
            let (all, one, all_big_batch) = (all / turns, one / turns, all_big_batch / turns);
            let (raw_all, raw_stream) = (raw_all / turns, raw_stream / turns);
            f.add(
                "read global log (100k), events/s",
                all,
                Some(raw_all),
                "≥ 0.5× raw SELECT loop",
            );
            f.add(
                "read global log, batch_size 10000, events/s",
                all_big_batch,
                Some(raw_all),
                "",
            );
            f.add("read one stream (50k), events/s", one, Some(raw_stream), "");
        });
    }
    if !o.skip_1m {
        eprintln!("filling a file with 1M events ...");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("million.db");
        runtime.block_on(async { open(&p, &o).await.close().await });
        let t = Instant::now();
        fill(&p, &o, 1_000_000, "million-1");
        eprintln!("filled in {:.1}s", t.elapsed().as_secs_f64());
        for run in 0..o.runs {
            eprintln!("1M run {}/{} ...", run + 1, o.runs);
            runtime.block_on(async {
                let empty_dir = tempfile::tempdir().unwrap();
                let empty = open(&empty_dir.path().join("empty.db"), &o).await;
                let full = open(&p, &o).await;
                let slice = o.secs / SLICES;
                let (mut e1, mut f1, mut e100, mut f100) = Default::default();
                let mut lat = Vec::new();
                for _ in 0..SLICES {
                    herald_single(&empty, slice, &mut lat, &mut e1).await;
                    herald_single(&full, slice, &mut lat, &mut f1).await;
                    herald_batches(&empty, slice, &mut e100).await;
                    herald_batches(&full, slice, &mut f100).await;
                }
                drop(empty);
                drop(full);
                let (rate_empty, rate_full, batch_empty, batch_full): (f64, f64, f64, f64) =
                    (e1.rate(), f1.rate(), e100.rate(), f100.rate());
                f.add(
                    "1-event appends/s with 1M stored (baseline: empty store)",
                    rate_full,
                    Some(rate_empty),
                    "",
                );
                f.add(
                    "100-event appends events/s with 1M stored (baseline: empty store)",
                    batch_full,
                    Some(batch_empty),
                    "",
                );
            });
        }
    }

    println!(
        "\nsynchronous = {}, median of {} runs, {:.1}s timed loops, total {:.0}s\n",
        match o.durability {
            Durability::Full => "FULL",
            _ => "NORMAL",
        },
        o.runs,
        o.secs.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    println!("| figure | Herald | raw rusqlite baseline | ratio | target |");
    println!("| --- | ---: | ---: | ---: | --- |");
    for (name, herald, baseline, target) in f.rows {
        let h = median(herald);
        let (b, ratio) = if baseline.is_empty() {
            ("".to_owned(), "".to_owned())
        } else {
            let b = median(baseline);
            (fmt(b), format!("{:.2}×", h / b))
        };
        println!("| {name} | {} | {b} | {ratio} | {target} |", fmt(h));
    }
}
