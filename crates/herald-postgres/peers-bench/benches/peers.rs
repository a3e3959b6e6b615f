//! Herald beside the Rust peer `cqrs-es` + `postgres-es` (sqlx), committing the same events to the same
//! PostgreSQL, interleaved round by round; medians of the rounds.
//!
//! ```text
//! cd crates/herald-postgres/peers-bench && cargo bench --bench peers
//! HERALD_BENCH_ROUNDS=7 cargo bench --bench peers      # HERALD_BENCH_POSTGRES_URL for another server
//! ```
//!
//! The peer commits through `PostgresEventRepository::persist` (its commit path, without loading the
//! aggregate first, which is the most favourable way to use it): one transaction per call, one `INSERT` per
//! event, payload and metadata as `json`. Each task writes its own aggregate, as each Herald task writes its
//! own stream. Both use the server's default durability.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::{PersistedEventRepository, SerializedEvent};
use cqrs_es::{Aggregate, DomainEvent};
use herald_core::{EventStore, ExpectedVersion, NewEvent, StreamName};
use herald_postgres::{PostgresConfig, PostgresStore};
use postgres_es::PostgresEventRepository;
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

const SINGLE_APPENDS: usize = 500;
const TASKS: usize = 16;
const APPENDS_PER_TASK: usize = 100;
const BATCHES: usize = 50;
const BATCH_SIZE: usize = 100;
const DATA: &str = r#"{"order_id":"0190c8a4-5c56-7d3e-8f00-000000000001","amount":4200,"currency":"EUR","lines":[{"sku":"A-1","qty":2}]}"#;
const METADATA: &str = r#"{"correlation_id":"0190c8a4-5c56-7d3e-8f00-000000000002"}"#;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Order;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OrderPlaced(serde_json::Value);

impl DomainEvent for OrderPlaced {
    fn event_type(&self) -> String {
        "OrderPlaced".to_owned()
    }
    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

#[derive(Debug)]
struct Never;

impl std::fmt::Display for Never {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("never")
    }
}

impl std::error::Error for Never {}

impl Aggregate for Order {
    const TYPE: &'static str = "order";
    type Command = ();
    type Event = OrderPlaced;
    type Error = Never;
    type Services = ();

    async fn handle(&mut self, _: (), _: &(), _: &EventSink<Self>) -> Result<(), Never> {
        Ok(())
    }

    fn apply(&mut self, _: OrderPlaced) {}
}

fn url() -> String {
    std::env::var("HERALD_BENCH_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".to_owned())
}

fn rate(events: usize, elapsed: Duration) -> f64 {
    events as f64 / elapsed.as_secs_f64()
}

fn herald_event() -> NewEvent {
    NewEvent::new("OrderPlaced")
        .with_data(DATA)
        .with_metadata(METADATA)
}

fn peer_events(aggregate: &str, first_sequence: usize, n: usize) -> Vec<SerializedEvent> {
    let payload: serde_json::Value = serde_json::from_str(DATA).unwrap();
    let metadata: serde_json::Value = serde_json::from_str(METADATA).unwrap();
    (0..n)
        .map(|i| {
            SerializedEvent::new(
                aggregate.to_owned(),
                first_sequence + i,
                Order::TYPE.to_owned(),
                "OrderPlaced".to_owned(),
                "1".to_owned(),
                payload.clone(),
                metadata.clone(),
            )
        })
        .collect()
}

struct Bench {
    herald: Arc<PostgresStore>,
    peer: Arc<PostgresEventRepository>,
    counter: usize,
}

impl Bench {
    fn next(&mut self) -> String {
        self.counter += 1;
        format!("order-{}", self.counter)
    }

    async fn herald(&mut self, tasks: usize, appends: usize, size: usize) -> f64 {
        let streams: Vec<_> = (0..tasks)
            .map(|_| StreamName::new(self.next()).unwrap())
            .collect();
        let start = Instant::now();
        let handles: Vec<_> = streams
            .into_iter()
            .map(|stream| {
                let store = Arc::clone(&self.herald);
                tokio::spawn(async move {
                    for _ in 0..appends {
                        let events = (0..size).map(|_| herald_event()).collect();
                        store
                            .append(&stream, events, ExpectedVersion::Any)
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.await.unwrap();
        }
        rate(tasks * appends * size, start.elapsed())
    }

    async fn peer(&mut self, tasks: usize, appends: usize, size: usize) -> f64 {
        let aggregates: Vec<_> = (0..tasks).map(|_| self.next()).collect();
        let start = Instant::now();
        let handles: Vec<_> = aggregates
            .into_iter()
            .map(|aggregate| {
                let repo = Arc::clone(&self.peer);
                tokio::spawn(async move {
                    for a in 0..appends {
                        let events = peer_events(&aggregate, a * size + 1, size);
                        repo.persist::<Order>(&events, None).await.unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.await.unwrap();
        }
        rate(tasks * appends * size, start.elapsed())
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
        let schema = format!("herald_peers_{}", uuid::Uuid::now_v7().simple());
        let herald = Arc::new(
            PostgresStore::open(&url(), PostgresConfig::default().schema(schema.clone()))
                .await
                .expect("opening the Herald store (is PostgreSQL running? scripts/services.sh)"),
        );
        let options: PgConnectOptions = url().parse().unwrap();
        let pool = PgPoolOptions::new()
            .max_connections(TASKS as u32)
            .connect_with(options.options([("search_path", schema.as_str())]))
            .await
            .unwrap();
        // postgres-es's own schema (its db/init.sql), in tables of their own.
        sqlx::raw_sql(
            "CREATE TABLE pges_events (
                aggregate_type text NOT NULL, aggregate_id text NOT NULL,
                sequence bigint CHECK (sequence >= 0) NOT NULL,
                event_type text NOT NULL, event_version text NOT NULL,
                payload json NOT NULL, metadata json NOT NULL,
                PRIMARY KEY (aggregate_type, aggregate_id, sequence));
             CREATE TABLE pges_snapshots (
                aggregate_type text NOT NULL, aggregate_id text NOT NULL,
                last_sequence bigint CHECK (last_sequence >= 0) NOT NULL,
                current_snapshot bigint CHECK (current_snapshot >= 0) NOT NULL,
                payload json NOT NULL,
                PRIMARY KEY (aggregate_type, aggregate_id, last_sequence));",
        )
        .execute(&pool)
        .await
        .unwrap();
        let peer = Arc::new(
            PostgresEventRepository::new(pool.clone()).with_tables("pges_events", "pges_snapshots"),
        );
        let mut bench = Bench {
            herald,
            peer,
            counter: 0,
        };
        let names = [
            "herald: 1-event appends, 1 task",
            "postgres-es: 1-event persist, 1 task",
            "herald: 1-event appends, 16 tasks",
            "postgres-es: 1-event persist, 16 tasks",
            "herald: 100-event appends, 1 task",
            "postgres-es: 100-event persist, 1 task",
        ];
        let mut results: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
        for round in 0..rounds {
            let r = [
                bench.herald(1, SINGLE_APPENDS, 1).await,
                bench.peer(1, SINGLE_APPENDS, 1).await,
                bench.herald(TASKS, APPENDS_PER_TASK, 1).await,
                bench.peer(TASKS, APPENDS_PER_TASK, 1).await,
                bench.herald(1, BATCHES, BATCH_SIZE).await,
                bench.peer(1, BATCHES, BATCH_SIZE).await,
            ];
            eprintln!("round {}: {:?}", round + 1, r.map(|x| x.round()));
            for (i, x) in r.into_iter().enumerate() {
                results[i].push(x);
            }
        }
        println!("| measurement | median (events/s) | runs |");
        println!("| --- | ---: | --- |");
        for (name, runs) in names.iter().zip(results) {
            let text: Vec<String> = runs.iter().map(|x| format!("{x:.0}")).collect();
            println!("| {name} | {:.0}/s | {} |", median(runs), text.join(", "));
        }
        drop(bench);
        let drop_schema = format!("DROP SCHEMA {schema} CASCADE");
        sqlx::raw_sql(&drop_schema).execute(&pool).await.unwrap();
    });
}
