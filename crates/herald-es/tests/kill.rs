//! Restart after a real crash: a child process (this test binary, re-executed on an `#[ignore]`d test chosen
//! by an environment variable) runs a SQLite projection and a file-writing subscription while events are
//! appended live; the parent SIGKILLs it mid-flight, restarts both in-process and checks:
//!
//! - the projection (read model + checkpoint in one transaction) applied every event exactly once: no loss,
//!   no duplicate, across history, the live seam and the crash;
//! - the plain subscription (at least once) lost nothing and redelivered only events after its last
//!   checkpoint (at most one batch).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use herald_core::{
    EventStore, EventStoreExt, ExpectedVersion, NewEvent, ReadQuery, ReadScope, RecordedEvent,
    StreamName,
};
use herald_es::sqlite::{SqliteCheckpointStore, SqliteProjection, SqliteReadModel};
use herald_es::{
    BoxError, CancellationToken, CheckpointStore, LeaseConfig, Subscription, handler_fn,
};
use herald_sqlite::{SqliteConfig, SqliteStore};
use rusqlite::Transaction;

const CHILD_ENV: &str = "HERALD_ES_KILL_CHILD_DB";
const MAIL_BATCH: usize = 10;

struct Ledger;

impl SqliteReadModel for Ledger {
    fn setup(&self, tx: &Transaction<'_>) -> rusqlite::Result<()> {
        // No unique constraint on purpose: a duplicate application must be visible, not rejected.
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS ledger_seen (position INTEGER NOT NULL, id TEXT NOT NULL)",
        )
    }
    fn apply(&self, tx: &Transaction<'_>, event: &RecordedEvent) -> Result<(), BoxError> {
        tx.execute(
            "INSERT INTO ledger_seen (position, id) VALUES (?1, ?2)",
            rusqlite::params![event.position as i64, event.id.to_string()],
        )?;
        Ok(())
    }
    fn reset(&self, tx: &Transaction<'_>) -> rusqlite::Result<()> {
        tx.execute("DELETE FROM ledger_seen", []).map(|_| ())
    }
}

fn mail_log(db: &Path) -> std::path::PathBuf {
    db.with_extension("mail.log")
}

/// The "mailer": appends one line per event to a file, in one write each.
fn mailer(path: std::path::PathBuf) -> impl herald_es::EventHandler {
    handler_fn(move |event: RecordedEvent| {
        let path = path.clone();
        async move {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            file.write_all(format!("{}\n", event.position).as_bytes())?;
            Ok::<(), BoxError>(())
        }
    })
}

async fn wait_child(progress: &mut tokio::sync::mpsc::UnboundedReceiver<u64>, target: u64) -> u64 {
    while let Some(p) = progress.recv().await {
        if p >= target {
            return p;
        }
    }
    panic!("child exited before reaching {target}");
}

async fn open_parts(
    path: &Path,
) -> (
    Arc<dyn EventStore>,
    Arc<SqliteProjection<Ledger>>,
    Arc<Subscription>,
) {
    let store: Arc<dyn EventStore> = Arc::new(
        SqliteStore::open(path, SqliteConfig::default())
            .await
            .unwrap(),
    );
    let projection = SqliteProjection::open(
        "ledger",
        path,
        ReadScope::Category("acct".into()),
        store.clone(),
        Ledger,
    )
    .await
    .unwrap()
    .batch_size(50)
    .unwrap()
    .lease(short_lease());
    let checkpoints = Arc::new(SqliteCheckpointStore::open(path).await.unwrap());
    let mail = Subscription::category("mailer", "acct", store.clone(), checkpoints)
        .unwrap()
        .batch_size(MAIL_BATCH)
        .unwrap()
        .lease(short_lease());
    (store, Arc::new(projection), Arc::new(mail))
}

/// A killed runner holds its lease until it ends: a short one, so the restart does not wait long.
fn short_lease() -> LeaseConfig {
    LeaseConfig::new()
        .lease(std::time::Duration::from_secs(1))
        .unwrap()
}

/// The child: runs until killed, printing `progress N` after each projection commit.
#[test]
#[ignore = "child process of sqlite_projection_and_subscription_survive_sigkill"]
fn kill_child_runner() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let path = std::path::PathBuf::from(path);
        let (_store, projection, mail) = open_parts(&path).await;
        let mut progress = projection.progress();
        tokio::spawn(async move {
            while progress.changed().await.is_ok() {
                let cursor = *progress.borrow_and_update();
                if let Some(c) = cursor {
                    println!("progress {c}");
                    std::io::stdout().flush().unwrap();
                }
            }
        });
        let cancel = CancellationToken::new();
        let mailer_task = tokio::spawn({
            let (mail, cancel, log) = (mail.clone(), cancel.clone(), mail_log(&path));
            async move { mail.run(&mailer(log), &cancel).await }
        });
        projection.run(&cancel).await.unwrap();
        mailer_task.await.unwrap().unwrap();
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_projection_and_subscription_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kill.db");
    let store: Arc<dyn EventStore> = Arc::new(
        SqliteStore::open(&path, SqliteConfig::default())
            .await
            .unwrap(),
    );
    // History: 3,000 events in 30 streams, plus noise in another category.
    for batch in 0..30 {
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
        store
            .append(
                &StreamName::new("noise-1").unwrap(),
                vec![NewEvent::new("Noise")],
                ExpectedVersion::Any,
            )
            .await
            .unwrap();
    }
    let history_end = store
        .read_to_vec(ReadQuery::category("acct").backward().limit(1))
        .await
        .unwrap()[0]
        .position;

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "kill_child_runner",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &path)
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
    // Let it get into the history, then write live events while it runs.
    wait_child(&mut progress, 1000).await;
    let writing = Arc::new(AtomicBool::new(true));
    let writer = tokio::spawn({
        let (store, writing) = (store.clone(), writing.clone());
        async move {
            let mut last = 0;
            let mut i = 0u64;
            while writing.load(Ordering::Relaxed) {
                let s = StreamName::new(format!("acct-live{}", i % 7)).unwrap();
                last = store
                    .append(&s, vec![NewEvent::new("Deposited")], ExpectedVersion::Any)
                    .await
                    .unwrap()
                    .last_position;
                i += 1;
            }
            last
        }
    });
    // Past the seam into live events, then kill it mid-flight.
    wait_child(&mut progress, history_end + 20).await;
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "the child was killed");
    writing.store(false, Ordering::Relaxed);
    writer.await.unwrap();
    drop(progress);

    // Restart in this process: both resume from their checkpoints.
    let mail_checkpoint_at_kill = {
        let cps = SqliteCheckpointStore::open(&path).await.unwrap();
        cps.load("mailer").await.unwrap()
    };
    let (store2, projection, mail) = open_parts(&path).await;
    store2
        .append(
            &StreamName::new("acct-after").unwrap(),
            vec![NewEvent::new("Deposited")],
            ExpectedVersion::Any,
        )
        .await
        .unwrap();
    let expected: Vec<u64> = store2
        .read_to_vec(ReadQuery::category("acct"))
        .await
        .unwrap()
        .iter()
        .map(|e| e.position)
        .collect();
    let last = *expected.last().unwrap();
    let cancel = CancellationToken::new();
    let runs = (
        tokio::spawn({
            let (p, c) = (projection.clone(), cancel.clone());
            async move { p.run(&c).await }
        }),
        tokio::spawn({
            let (m, c, log) = (mail.clone(), cancel.clone(), mail_log(&path));
            async move { m.run(&mailer(log), &c).await }
        }),
    );
    projection
        .progress()
        .wait_for(|c| *c == Some(last))
        .await
        .unwrap();
    mail.progress()
        .wait_for(|c| *c == Some(last))
        .await
        .unwrap();
    cancel.cancel();
    runs.0.await.unwrap().unwrap();
    runs.1.await.unwrap().unwrap();

    // Exactly once for the transactional projection.
    let seen: Vec<u64> = projection
        .query(|c| {
            let mut stmt = c.prepare("SELECT position FROM ledger_seen ORDER BY position")?;
            let rows = stmt.query_map([], |r| r.get::<_, i64>(0).map(|p| p as u64))?;
            rows.collect()
        })
        .await
        .unwrap();
    assert_eq!(seen.len(), expected.len(), "no loss and no duplicate");
    assert_eq!(seen, expected);

    // At least once for the plain subscription: nothing lost; duplicates only after its checkpoint at the kill,
    // at most one batch.
    let log = std::fs::read_to_string(mail_log(&path)).unwrap();
    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    for line in log.lines() {
        *counts.entry(line.parse().unwrap()).or_default() += 1;
    }
    let delivered: BTreeSet<u64> = counts.keys().copied().collect();
    assert_eq!(
        delivered,
        expected.iter().copied().collect::<BTreeSet<_>>(),
        "no loss"
    );
    let dups: Vec<u64> = counts
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(p, _)| *p)
        .collect();
    eprintln!(
        "killed at projection > {history_end}; mailer checkpoint at kill {mail_checkpoint_at_kill:?}; \
         {} events, {} redelivered by the mailer",
        expected.len(),
        dups.len()
    );
    assert!(
        dups.len() <= MAIL_BATCH,
        "at most one batch redelivered: {dups:?}"
    );
    assert!(counts.values().all(|n| *n <= 2));
    if let Some(cp) = mail_checkpoint_at_kill {
        assert!(
            dups.iter().all(|p| *p > cp),
            "only events after the checkpoint are redelivered"
        );
    }
}
