//! Throughput of the PostgreSQL store beside raw tokio-postgres baselines, measured in the same run on the
//! same server, interleaved round by round (so drift hits all of them alike); medians of the rounds.
//!
//! ```text
//! cargo bench -p herald-postgres --bench store            # HERALD_BENCH_POSTGRES_URL to use another server
//! HERALD_BENCH_ROUNDS=7 cargo bench -p herald-postgres --bench store
//! ```
//!
//! Each run uses a fresh schema (`herald_bench_<uuid>`), dropped at the end. Raw baselines write the same rows
//! into `raw_events`, a copy of Herald's `events` table with the same indexes (`LIKE events INCLUDING ALL`),
//! each transaction committed with the server's default durability (`synchronous_commit = on`), like Herald's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use herald_core::{EventStore, EventStoreExt, ExpectedVersion, NewEvent, ReadQuery, StreamName};
use herald_postgres::{PostgresConfig, PostgresStore};
use tokio_postgres::{Client, NoTls};
use uuid::Uuid;

const SINGLE_APPENDS: usize = 1_000;
const CONCURRENT_TASKS: usize = 16;
const CONCURRENT_APPENDS_PER_TASK: usize = 200;
const BATCHES: usize = 100;
const BATCH_SIZE: usize = 100;
const DATA: &str = r#"{"order_id":"0190c8a4-5c56-7d3e-8f00-000000000001","amount":4200,"currency":"EUR","lines":[{"sku":"A-1","qty":2}]}"#;
const METADATA: &str = r#"{"correlation_id":"0190c8a4-5c56-7d3e-8f00-000000000002"}"#;

fn url() -> String {
    std::env::var("HERALD_BENCH_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".to_owned())
}

async fn connect(schema: &str) -> Client {
    let mut config: tokio_postgres::Config = url().parse().unwrap();
    config.options(format!("-c search_path={schema}"));
    let (client, connection) = config.connect(NoTls).await.expect("connecting");
    tokio::spawn(connection);
    client
}

fn event() -> NewEvent {
    NewEvent::new("OrderPlaced")
        .with_data(DATA)
        .with_metadata(METADATA)
}

/// Events per second.
fn rate(events: usize, elapsed: Duration) -> f64 {
    events as f64 / elapsed.as_secs_f64()
}

struct Bench {
    store: Arc<PostgresStore>,
    raw: Client,
    raw_pool: Vec<Arc<Client>>,
    schema: String,
    stream_counter: usize,
}

impl Bench {
    fn next_stream(&mut self) -> StreamName {
        self.stream_counter += 1;
        StreamName::new(format!("order-{}", self.stream_counter)).unwrap()
    }

    async fn herald_single(&mut self) -> f64 {
        let stream = self.next_stream();
        let start = Instant::now();
        for _ in 0..SINGLE_APPENDS {
            self.store
                .append(&stream, vec![event()], ExpectedVersion::Any)
                .await
                .unwrap();
        }
        rate(SINGLE_APPENDS, start.elapsed())
    }

    async fn herald_concurrent(&mut self) -> f64 {
        let streams: Vec<_> = (0..CONCURRENT_TASKS).map(|_| self.next_stream()).collect();
        let start = Instant::now();
        let tasks: Vec<_> = streams
            .into_iter()
            .map(|stream| {
                let store = Arc::clone(&self.store);
                tokio::spawn(async move {
                    for _ in 0..CONCURRENT_APPENDS_PER_TASK {
                        store
                            .append(&stream, vec![event()], ExpectedVersion::Any)
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        rate(
            CONCURRENT_TASKS * CONCURRENT_APPENDS_PER_TASK,
            start.elapsed(),
        )
    }

    async fn herald_batches(&mut self) -> f64 {
        let stream = self.next_stream();
        let start = Instant::now();
        for _ in 0..BATCHES {
            let events = (0..BATCH_SIZE).map(|_| event()).collect();
            self.store
                .append(&stream, events, ExpectedVersion::Any)
                .await
                .unwrap();
        }
        rate(BATCHES * BATCH_SIZE, start.elapsed())
    }

    async fn herald_read_all(&self) -> f64 {
        let start = Instant::now();
        let mut stream = self.store.read(ReadQuery::all().batch_size(1000));
        let mut n = 0;
        while let Some(e) = stream.next().await {
            e.unwrap();
            n += 1;
        }
        rate(n, start.elapsed())
    }

    async fn raw_read_all(&self) -> f64 {
        let statement = self
            .raw
            .prepare(
                "SELECT id, event_type, data, metadata, recorded_at, position, stream, version
                 FROM raw_events WHERE position >= $1 ORDER BY position LIMIT 1000",
            )
            .await
            .unwrap();
        let start = Instant::now();
        let (mut from, mut n) = (0i64, 0usize);
        loop {
            let rows = self.raw.query(&statement, &[&from]).await.unwrap();
            let Some(last) = rows.last() else { break };
            from = last.get::<_, i64>(5) + 1;
            for row in &rows {
                let _: (Uuid, String, String, String) =
                    (row.get(0), row.get(1), row.get(2), row.get(3));
                n += 1;
            }
        }
        rate(n, start.elapsed())
    }

    /// One raw transaction inserting `rows` events with a multi-row `unnest` insert (or a plain one-row
    /// insert), optionally with Herald's serialisation (lock the head row, write it back).
    async fn raw_transactions(&self, transactions: usize, rows: usize, serialise: bool) -> f64 {
        let insert = self
            .raw
            .prepare(
                "INSERT INTO raw_events
                   (position, id, stream, version, category, event_type, data, metadata, recorded_at)
                 SELECT nextval('raw_positions'), t.id, $2, 0, 'order', 'OrderPlaced', $3, $4, 0
                 FROM unnest($1::uuid[]) AS t(id)",
            )
            .await
            .unwrap();
        let lock = self
            .raw
            .prepare("SELECT position FROM raw_head FOR UPDATE")
            .await
            .unwrap();
        let set = self
            .raw
            .prepare("UPDATE raw_head SET position = position + $1")
            .await
            .unwrap();
        let start = Instant::now();
        for _ in 0..transactions {
            let ids: Vec<Uuid> = (0..rows).map(|_| Uuid::now_v7()).collect();
            self.raw.batch_execute("BEGIN").await.unwrap();
            if serialise {
                self.raw.query_one(&lock, &[]).await.unwrap();
            }
            self.raw
                .execute(&insert, &[&ids, &"raw-1", &DATA, &METADATA])
                .await
                .unwrap();
            if serialise {
                self.raw.execute(&set, &[&(rows as i64)]).await.unwrap();
            }
            self.raw.batch_execute("COMMIT").await.unwrap();
        }
        rate(transactions * rows, start.elapsed())
    }

    /// Like [`Bench::raw_transactions`], but each transaction is one round trip: `BEGIN`, (lock,) insert,
    /// (head update,) `COMMIT` pipelined, as Herald's writer sends an append-only batch. The pair with and
    /// without the head statements is the cost of Herald's serialisation measured the way Herald pays it.
    async fn raw_pipelined(&self, transactions: usize, rows: usize, serialise: bool) -> f64 {
        let insert = self
            .raw
            .prepare(
                "INSERT INTO raw_events
                   (position, id, stream, version, category, event_type, data, metadata, recorded_at)
                 SELECT nextval('raw_positions'), t.id, $2, 0, 'order', 'OrderPlaced', $3, $4, 0
                 FROM unnest($1::uuid[]) AS t(id)",
            )
            .await
            .unwrap();
        let lock = self
            .raw
            .prepare("SELECT position FROM raw_head FOR UPDATE")
            .await
            .unwrap();
        let set = self
            .raw
            .prepare("UPDATE raw_head SET position = position + $1")
            .await
            .unwrap();
        let start = Instant::now();
        for _ in 0..transactions {
            let ids: Vec<Uuid> = (0..rows).map(|_| Uuid::now_v7()).collect();
            let n = rows as i64;
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
                [&ids, &"raw-3", &DATA, &METADATA];
            let (begun, locked, inserted, set, committed) = tokio::join!(
                self.raw.batch_execute("BEGIN"),
                async {
                    if serialise {
                        self.raw.query_one(&lock, &[]).await.map(|_| ())
                    } else {
                        Ok(())
                    }
                },
                self.raw.execute(&insert, &params),
                async {
                    if serialise {
                        self.raw.execute(&set, &[&n]).await.map(|_| ())
                    } else {
                        Ok(())
                    }
                },
                self.raw.batch_execute("COMMIT"),
            );
            begun.unwrap();
            locked.unwrap();
            inserted.unwrap();
            set.unwrap();
            committed.unwrap();
        }
        rate(transactions * rows, start.elapsed())
    }

    /// Raw single-row transactions from 16 connections at once (PostgreSQL's own WAL group flush helps).
    async fn raw_concurrent(&self) -> f64 {
        let start = Instant::now();
        let tasks: Vec<_> = self
            .raw_pool
            .iter()
            .map(|client| {
                let client = Arc::clone(client);
                tokio::spawn(async move {
                    let insert = client
                        .prepare(
                            "INSERT INTO raw_events
                               (position, id, stream, version, category, event_type, data, metadata, recorded_at)
                             VALUES (nextval('raw_positions'), $1, 'raw-2', 0, 'raw', 'OrderPlaced', $2, $3, 0)",
                        )
                        .await
                        .unwrap();
                    for _ in 0..CONCURRENT_APPENDS_PER_TASK {
                        client.batch_execute("BEGIN").await.unwrap();
                        client
                            .execute(&insert, &[&Uuid::now_v7(), &DATA, &METADATA])
                            .await
                            .unwrap();
                        client.batch_execute("COMMIT").await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        rate(
            CONCURRENT_TASKS * CONCURRENT_APPENDS_PER_TASK,
            start.elapsed(),
        )
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = std::env::var("HERALD_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let schema = format!("herald_bench_{}", Uuid::now_v7().simple());
        let store = Arc::new(
            PostgresStore::open(&url(), PostgresConfig::default().schema(schema.clone()))
                .await
                .expect("opening the bench store (is PostgreSQL running? scripts/services.sh)"),
        );
        let raw = connect(&schema).await;
        raw.batch_execute(
            "CREATE TABLE raw_events (LIKE events INCLUDING ALL);
             CREATE SEQUENCE raw_positions;
             CREATE TABLE raw_head (position bigint NOT NULL);
             INSERT INTO raw_head VALUES (0);",
        )
        .await
        .unwrap();
        let mut raw_pool = Vec::new();
        for _ in 0..CONCURRENT_TASKS {
            raw_pool.push(Arc::new(connect(&schema).await));
        }
        let mut bench = Bench {
            store,
            raw,
            raw_pool,
            schema: schema.clone(),
            stream_counter: 0,
        };
        let names = [
            "herald: 1-event appends, 1 task",
            "raw: 1-row INSERT transactions, 1 connection",
            "raw: 1-row INSERT + head lock/update (Herald's serialisation), 1 connection",
            "herald: 1-event appends, 16 tasks",
            "raw: 1-row INSERT transactions, 16 connections",
            "herald: 100-event appends, 1 task",
            "raw: 100-row INSERT transactions, 1 connection",
            "raw: 100-row INSERT + head lock/update, 1 connection",
            "raw: 1-row INSERT, one pipelined round trip, 1 connection",
            "raw: 1-row INSERT + head lock/update, one pipelined round trip, 1 connection",
            "raw: 100-row INSERT, one pipelined round trip, 1 connection",
            "raw: 100-row INSERT + head lock/update, one pipelined round trip, 1 connection",
            "herald: read the global log (events/s)",
            "raw: SELECT the same rows in pages of 1000 (rows/s)",
        ];
        let mut results: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
        for round in 0..rounds {
            let r = [
                bench.herald_single().await,
                bench.raw_transactions(SINGLE_APPENDS, 1, false).await,
                bench.raw_transactions(SINGLE_APPENDS, 1, true).await,
                bench.herald_concurrent().await,
                bench.raw_concurrent().await,
                bench.herald_batches().await,
                bench.raw_transactions(BATCHES, BATCH_SIZE, false).await,
                bench.raw_transactions(BATCHES, BATCH_SIZE, true).await,
                bench.raw_pipelined(SINGLE_APPENDS, 1, false).await,
                bench.raw_pipelined(SINGLE_APPENDS, 1, true).await,
                bench.raw_pipelined(BATCHES, BATCH_SIZE, false).await,
                bench.raw_pipelined(BATCHES, BATCH_SIZE, true).await,
                bench.herald_read_all().await,
                bench.raw_read_all().await,
            ];
            eprintln!("round {}: {:?}", round + 1, r.map(|x| x.round()));
            for (i, x) in r.into_iter().enumerate() {
                results[i].push(x);
            }
        }
        let stats = bench.store.write_stats();
        println!("| measurement | median | runs |");
        println!("| --- | ---: | --- |");
        for (name, runs) in names.iter().zip(results) {
            let runs_text: Vec<String> = runs.iter().map(|x| format!("{x:.0}")).collect();
            println!(
                "| {name} | {:.0}/s | {} |",
                median(runs),
                runs_text.join(", ")
            );
        }
        println!(
            "\nherald writer: {} requests in {} transactions (average batch {:.1}; {} in one round trip)",
            stats.requests,
            stats.transactions,
            stats.requests as f64 / stats.transactions.max(1) as f64,
            stats.one_round_trip
        );
        let schema = bench.schema.clone();
        drop(bench);
        let cleanup = connect("public").await;
        cleanup
            .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
            .await
            .unwrap();
    });
}
