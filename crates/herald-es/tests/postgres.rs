//! PostgreSQL checkpoints and transactional projections, including a real crash (SIGKILL of a child
//! process) while events are appended live: the projection applies every event exactly once, and a
//! subscription with PostgreSQL checkpoints resumes with no loss. Also: checkpoint stores of members starting
//! together on a fresh schema all connect, and errors carry the server's message.
//!
//! Skipped (printed) when PostgreSQL is unreachable, unless `CI` is set.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use herald_core::{
    EventStore, EventStoreExt, ExpectedVersion, NewEvent, ReadQuery, ReadScope, RecordedEvent,
    StreamName,
};
use herald_es::postgres::{PostgresCheckpointStore, PostgresProjection, PostgresReadModel};
use herald_es::{BoxError, CancellationToken, CheckpointStore, Subscription, handler_fn};
use herald_postgres::{PostgresConfig, PostgresStore};
use tokio_postgres::Transaction;

const CHILD_SCHEMA: &str = "HERALD_ES_PG_CHILD_SCHEMA";

use herald_store_testkit::postgres::{TestSchema, available, server_url as url};

async fn open_store(test: &str, schema: &str) -> Option<Arc<dyn EventStore>> {
    if !available(test).await {
        return None;
    }
    Some(Arc::new(
        PostgresStore::open(&url(), PostgresConfig::default().schema(schema))
            .await
            .unwrap(),
    ))
}

fn new_schema() -> TestSchema {
    TestSchema::new("herald_es_pg")
}

struct Ledger;

#[async_trait]
impl PostgresReadModel for Ledger {
    async fn setup(&self, tx: &Transaction<'_>) -> Result<(), tokio_postgres::Error> {
        // No unique constraint: a duplicate application must show.
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS ledger_seen (position BIGINT NOT NULL, data TEXT NOT NULL)",
        )
        .await
    }
    async fn apply(&self, tx: &Transaction<'_>, e: &RecordedEvent) -> Result<(), BoxError> {
        if e.data == r#""poison""# {
            return Err("poisoned event".into());
        }
        tx.execute(
            "INSERT INTO ledger_seen (position, data) VALUES ($1, $2)",
            &[&(e.position as i64), &e.data],
        )
        .await?;
        Ok(())
    }
    async fn reset(&self, tx: &Transaction<'_>) -> Result<(), tokio_postgres::Error> {
        tx.execute("DELETE FROM ledger_seen", &[]).await.map(|_| ())
    }
}

async fn seen(p: &PostgresProjection<Ledger>) -> Vec<u64> {
    p.with_client(async |c| {
        let rows = c
            .query("SELECT position FROM ledger_seen ORDER BY position", &[])
            .await?;
        Ok(rows.iter().map(|r| r.get::<_, i64>(0) as u64).collect())
    })
    .await
    .unwrap()
}

async fn append(store: &dyn EventStore, stream: &str, data: &str) -> u64 {
    store
        .append(
            &StreamName::new(stream).unwrap(),
            vec![NewEvent::new("Deposited").with_data(data)],
            ExpectedVersion::Any,
        )
        .await
        .unwrap()
        .last_position
}

async fn run_until(p: &Arc<PostgresProjection<Ledger>>, target: u64) -> u64 {
    let cancel = CancellationToken::new();
    let mut progress = p.progress();
    let run = tokio::spawn({
        let (p, c) = (p.clone(), cancel.clone());
        async move { p.run(&c).await }
    });
    progress
        .wait_for(|c| c.is_some_and(|c| c >= target))
        .await
        .unwrap();
    cancel.cancel();
    run.await.unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_and_transactional_projection() {
    let schema = new_schema();
    let Some(store) = open_store("checkpoints_and_transactional_projection", schema.name()).await
    else {
        return;
    };
    let cps = PostgresCheckpointStore::connect(&url(), schema.name())
        .await
        .unwrap();
    assert_eq!(cps.load("a").await.unwrap(), None);
    cps.save("a", 5).await.unwrap();
    cps.save("a", 7).await.unwrap();
    cps.save("g#0of2", 1).await.unwrap();
    cps.save("g#1of2", 2).await.unwrap();
    cps.save("gx", 3).await.unwrap();
    assert_eq!(cps.load("a").await.unwrap(), Some(7));
    assert_eq!(
        cps.list("g#").await.unwrap(),
        vec![("g#0of2".to_owned(), 1), ("g#1of2".to_owned(), 2)]
    );
    cps.delete("a").await.unwrap();
    assert_eq!(cps.load("a").await.unwrap(), None);
    assert!(
        PostgresCheckpointStore::connect(&url(), "Bad-Name")
            .await
            .is_err()
    );

    for i in 0..5 {
        append(&*store, &format!("acct-{i}"), "1").await;
    }
    let last = append(&*store, "other-1", "1").await - 1;
    let p = Arc::new(
        PostgresProjection::open(
            "ledger",
            &url(),
            schema.name(),
            ReadScope::Category("acct".into()),
            store.clone(),
            Ledger,
        )
        .await
        .unwrap(),
    );
    assert_eq!(run_until(&p, last).await, 5);
    assert_eq!(seen(&p).await, vec![1, 2, 3, 4, 5]);
    assert_eq!(p.checkpoint().await.unwrap(), Some(5));
    // The checkpoint store reads the projection's checkpoint (same table).
    assert_eq!(cps.load("ledger").await.unwrap(), Some(5));

    // A failing event rolls back its whole batch; the checkpoint stays.
    store
        .append(
            &StreamName::new("acct-9").unwrap(),
            vec![
                NewEvent::new("Deposited").with_data("2"),
                NewEvent::new("Deposited").with_data(r#""poison""#),
            ],
            ExpectedVersion::Any,
        )
        .await
        .unwrap();
    let err = p.run(&CancellationToken::new()).await.unwrap_err();
    assert!(err.to_string().contains("poisoned"), "{err}");
    assert_eq!(seen(&p).await.len(), 5);
    assert_eq!(p.checkpoint().await.unwrap(), Some(5));

    // Reset empties the model and the checkpoint together.
    p.reset().await.unwrap();
    assert!(seen(&p).await.is_empty());
    assert_eq!(p.checkpoint().await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_resumes_with_postgres_checkpoints() {
    let schema = new_schema();
    let Some(store) = open_store(
        "subscription_resumes_with_postgres_checkpoints",
        schema.name(),
    )
    .await
    else {
        return;
    };
    let cps = Arc::new(
        PostgresCheckpointStore::connect(&url(), schema.name())
            .await
            .unwrap(),
    );
    for i in 0..50 {
        append(&*store, &format!("acct-{}", i % 5), &i.to_string()).await;
    }
    let got = Arc::new(std::sync::Mutex::new(Vec::new()));
    for stop in [7usize, 20] {
        let cancel = CancellationToken::new();
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let handler = handler_fn({
            let (got, cancel, count) = (got.clone(), cancel.clone(), count.clone());
            move |e: RecordedEvent| {
                got.lock().unwrap().push(e.position);
                if count.fetch_add(1, Ordering::SeqCst) + 1 == stop {
                    cancel.cancel();
                }
                async { Ok::<(), BoxError>(()) }
            }
        });
        let sub = Subscription::category("resume", "acct", store.clone(), cps.clone())
            .unwrap()
            .batch_size(8)
            .unwrap();
        sub.run(&handler, &cancel).await.unwrap();
    }
    let sub =
        Arc::new(Subscription::category("resume", "acct", store.clone(), cps.clone()).unwrap());
    let cancel = CancellationToken::new();
    let run = tokio::spawn({
        let (sub, got, cancel) = (sub.clone(), got.clone(), cancel.clone());
        async move {
            let handler = handler_fn(move |e: RecordedEvent| {
                got.lock().unwrap().push(e.position);
                async { Ok::<(), BoxError>(()) }
            });
            sub.run(&handler, &cancel).await
        }
    });
    let live = append(&*store, "acct-live", "\"x\"").await;
    sub.progress().wait_for(|c| *c == Some(live)).await.unwrap();
    cancel.cancel();
    run.await.unwrap().unwrap();
    let expected: Vec<u64> = (1..=51).collect();
    assert_eq!(
        *got.lock().unwrap(),
        expected,
        "no loss, no duplicate across restarts"
    );
}

/// Child process of `projection_survives_sigkill`: runs the projection until killed.
#[test]
#[ignore = "child process of projection_survives_sigkill"]
fn pg_kill_child_runner() {
    let Ok(schema) = std::env::var(CHILD_SCHEMA) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let store = open_store("child", &schema).await.unwrap();
        let p = PostgresProjection::open(
            "ledger",
            &url(),
            &schema,
            ReadScope::Category("acct".into()),
            store,
            Ledger,
        )
        .await
        .unwrap()
        .batch_size(50)
        .unwrap()
        // Killed, it holds its lease until the lease ends: a short one, so the restart does not wait long.
        .lease(
            herald_es::LeaseConfig::new()
                .lease(std::time::Duration::from_secs(1))
                .unwrap(),
        );
        let mut progress = p.progress();
        tokio::spawn(async move {
            while progress.changed().await.is_ok() {
                let cursor = *progress.borrow_and_update();
                if let Some(c) = cursor {
                    println!("progress {c}");
                    std::io::stdout().flush().unwrap();
                }
            }
        });
        p.run(&CancellationToken::new()).await.unwrap();
    });
}

async fn wait_child(progress: &mut tokio::sync::mpsc::UnboundedReceiver<u64>, target: u64) {
    while let Some(p) = progress.recv().await {
        if p >= target {
            return;
        }
    }
    panic!("child exited before reaching {target}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projection_survives_sigkill() {
    let schema = new_schema();
    let Some(store) = open_store("projection_survives_sigkill", schema.name()).await else {
        return;
    };
    for batch in 0..20 {
        let events = (0..100)
            .map(|i| NewEvent::new("Deposited").with_data(format!("{i}")))
            .collect();
        store
            .append(
                &StreamName::new(format!("acct-{batch}")).unwrap(),
                events,
                ExpectedVersion::Any,
            )
            .await
            .unwrap();
    }
    let history_end = 2000;
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "pg_kill_child_runner",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_SCHEMA, schema.name())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, mut progress) = tokio::sync::mpsc::unbounded_channel::<u64>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(n) = line
                .strip_prefix("progress ")
                .and_then(|n| n.trim().parse().ok())
                && tx.send(n).is_err()
            {
                break;
            }
        }
    });
    wait_child(&mut progress, 500).await;
    let writing = Arc::new(AtomicBool::new(true));
    let writer = tokio::spawn({
        let (store, writing) = (store.clone(), writing.clone());
        async move {
            let mut i = 0u64;
            while writing.load(Ordering::Relaxed) {
                append(&*store, &format!("acct-live{}", i % 7), "1").await;
                i += 1;
            }
        }
    });
    wait_child(&mut progress, history_end + 20).await;
    child.kill().unwrap();
    assert!(!child.wait().unwrap().success());
    writing.store(false, Ordering::Relaxed);
    writer.await.unwrap();

    let last = append(&*store, "acct-after", "1").await;
    let expected: Vec<u64> = store
        .read_to_vec(ReadQuery::category("acct"))
        .await
        .unwrap()
        .iter()
        .map(|e| e.position)
        .collect();
    assert_eq!(*expected.last().unwrap(), last);
    let p = Arc::new(
        PostgresProjection::open(
            "ledger",
            &url(),
            schema.name(),
            ReadScope::Category("acct".into()),
            store.clone(),
            Ledger,
        )
        .await
        .unwrap(),
    );
    run_until(&p, last).await;
    assert_eq!(seen(&p).await, expected, "exactly once across the kill");
}

/// Members of one group often start together: their checkpoint (and membership) stores then connect to a
/// fresh schema at the same moment, and each must find its tables, none fail on another's `CREATE`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn checkpoint_stores_connecting_at_once_to_a_fresh_schema_all_succeed() {
    if !available("checkpoint_stores_connecting_at_once_to_a_fresh_schema_all_succeed").await {
        return;
    }
    for _ in 0..5 {
        let schema = new_schema();
        let connecting: Vec<_> = (0..8)
            .map(|i| {
                let name = schema.name().to_owned();
                tokio::spawn(async move {
                    let store = PostgresCheckpointStore::connect(&url(), &name).await?;
                    store.save(&format!("c{i}"), i).await?;
                    Ok::<_, herald_es::EsError>(store)
                })
            })
            .collect();
        let mut stores = Vec::new();
        for c in connecting {
            stores.push(c.await.unwrap().unwrap());
        }
        assert_eq!(stores[0].list("c").await.unwrap().len(), 8);
    }
}

/// Event stores and checkpoint stores opening together on a fresh schema: one migrator for both, whose schema
/// lock orders every component's `CREATE SCHEMA IF NOT EXISTS` (concurrent ones fail on a catalog index).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_and_checkpoint_stores_opening_at_once_on_a_fresh_schema_all_succeed() {
    if !available("event_and_checkpoint_stores_opening_at_once_on_a_fresh_schema_all_succeed").await
    {
        return;
    }
    for _ in 0..5 {
        let schema = new_schema();
        let opening: Vec<_> = (0..8)
            .map(|i| {
                let name = schema.name().to_owned();
                tokio::spawn(async move {
                    if i % 2 == 0 {
                        PostgresStore::open(&url(), PostgresConfig::default().schema(&name))
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string())
                    } else {
                        PostgresCheckpointStore::connect(&url(), &name)
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string())
                    }
                })
            })
            .collect();
        for o in opening {
            o.await.unwrap().unwrap();
        }
    }
}

/// A server error names its cause (tokio-postgres alone displays only "db error").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_errors_carry_the_server_message() {
    if !available("postgres_errors_carry_the_server_message").await {
        return;
    }
    let schema = new_schema();
    let cps = PostgresCheckpointStore::connect(&url(), schema.name())
        .await
        .unwrap();
    let (client, connection) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    client
        .batch_execute(&format!(
            "DROP TABLE {}.herald_es_checkpoints",
            schema.name()
        ))
        .await
        .unwrap();
    drop(client);
    connection.await.unwrap().unwrap();
    let err = cps.save("c", 1).await.unwrap_err().to_string();
    assert!(err.contains("saving a checkpoint"), "{err}");
    assert!(
        err.contains("herald_es_checkpoints")
            && err.contains("does not exist")
            && err.contains("42P01"),
        "{err}"
    );
}
