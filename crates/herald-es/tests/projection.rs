//! Projections: one-off folds, persistent projections with reset and rebuild, and the SQLite projection whose
//! read model and checkpoint commit together.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use common::Fixture;
use herald_core::{ReadQuery, ReadScope, RecordedEvent};
use herald_es::sqlite::{SqliteProjection, SqliteReadModel};
use herald_es::{
    BoxError, CancellationToken, EsError, Projection, Projector, ReadModel, Subscription,
};
use rusqlite::Transaction;

async fn one_off_fold_over_any_scope(f: Fixture) {
    f.append_raw("acct-1", 3, "Deposited").await;
    f.append_raw("acct-2", 2, "Deposited").await;
    f.append_raw("acct-2", 1, "Withdrawn").await;
    f.append_raw("other-1", 4, "Deposited").await;
    let per_stream = Projection::init(BTreeMap::<String, i64>::new())
        .when("Deposited", |m, e| {
            *m.entry(e.stream.clone()).or_default() += 1;
            Ok(())
        })
        .when("Withdrawn", |m, e| {
            *m.entry(e.stream.clone()).or_default() -= 1;
            Ok(())
        })
        .run(&*f.store, ReadQuery::category("acct"))
        .await
        .unwrap();
    assert_eq!(
        per_stream,
        BTreeMap::from([("acct-1".into(), 3), ("acct-2".into(), 1)])
    );
    let everything = Projection::init(0u32)
        .when_any(|n, _| {
            *n += 1;
            Ok(())
        })
        .run(&*f.store, ReadQuery::all())
        .await
        .unwrap();
    assert_eq!(everything, 10);
    let failing = Projection::init(())
        .when("Withdrawn", |_, _| Err("nope".into()))
        .run(&*f.store, ReadQuery::all())
        .await;
    let err = failing.unwrap_err();
    assert!(matches!(err, EsError::Handler { .. }), "{err:?}");
    assert!(err.to_string().contains("nope"));
}

#[derive(Default)]
struct Balances {
    by_stream: Mutex<BTreeMap<String, u64>>,
}

#[async_trait]
impl ReadModel for Balances {
    async fn apply(&self, event: &RecordedEvent) -> Result<(), BoxError> {
        *self
            .by_stream
            .lock()
            .unwrap()
            .entry(event.stream.clone())
            .or_default() += 1;
        Ok(())
    }
    async fn reset(&self) -> Result<(), BoxError> {
        self.by_stream.lock().unwrap().clear();
        Ok(())
    }
}

async fn run_until(projector: &Arc<Projector<Balances>>, target: u64) {
    let cancel = CancellationToken::new();
    let mut progress = projector.subscription().progress();
    let run = tokio::spawn({
        let (p, c) = (projector.clone(), cancel.clone());
        async move { p.run(&c).await }
    });
    progress
        .wait_for(|p| p.is_some_and(|p| p >= target))
        .await
        .unwrap();
    cancel.cancel();
    run.await.unwrap().unwrap();
}

async fn persistent_projection_resets_and_rebuilds(f: Fixture) {
    f.append_raw("acct-1", 3, "Deposited").await;
    let last = f.append_raw("acct-2", 2, "Deposited").await;
    let sub =
        Subscription::category("balances", "acct", f.store.clone(), f.checkpoints.clone()).unwrap();
    let projector = Arc::new(Projector::new(sub, Arc::new(Balances::default())));
    run_until(&projector, last).await;
    let built = projector.model().by_stream.lock().unwrap().clone();
    assert_eq!(
        built,
        BTreeMap::from([("acct-1".into(), 3), ("acct-2".into(), 2)])
    );
    projector.reset().await.unwrap();
    assert!(projector.model().by_stream.lock().unwrap().is_empty());
    assert_eq!(f.checkpoints.load("balances").await.unwrap(), None);
    run_until(&projector, last).await;
    assert_eq!(*projector.model().by_stream.lock().unwrap(), built);
}

on_both_backends!(
    one_off_fold_over_any_scope,
    persistent_projection_resets_and_rebuilds
);

/// A `users` read model: one row per stream, counting events; refuses an event whose data is `"poison"`.
struct Users;

impl SqliteReadModel for Users {
    fn setup(&self, tx: &Transaction<'_>) -> rusqlite::Result<()> {
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS test_users (stream TEXT PRIMARY KEY, events INTEGER NOT NULL)",
        )
    }
    fn apply(&self, tx: &Transaction<'_>, event: &RecordedEvent) -> Result<(), BoxError> {
        if event.data == r#""poison""# {
            return Err("poisoned event".into());
        }
        tx.execute(
            "INSERT INTO test_users (stream, events) VALUES (?1, 1)
             ON CONFLICT (stream) DO UPDATE SET events = events + 1",
            [&event.stream],
        )?;
        Ok(())
    }
    fn reset(&self, tx: &Transaction<'_>) -> rusqlite::Result<()> {
        tx.execute("DELETE FROM test_users", []).map(|_| ())
    }
}

async fn run_sqlite_until(p: &Arc<SqliteProjection<Users>>, target: u64) -> herald_es::Result<u64> {
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
    run.await.unwrap()
}

async fn users(p: &SqliteProjection<Users>) -> Vec<(String, i64)> {
    p.query(|c| {
        let mut stmt = c.prepare("SELECT stream, events FROM test_users ORDER BY stream")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_projection_commits_read_model_and_checkpoint_together() {
    let f = Fixture::sqlite().await;
    let path = f.path.clone().unwrap();
    f.append_raw("user-1", 3, "UserRenamed").await;
    let last = f.append_raw("user-2", 2, "UserRenamed").await;
    let p = Arc::new(
        SqliteProjection::open(
            "users",
            &path,
            ReadScope::Category("user".into()),
            f.store.clone(),
            Users,
        )
        .await
        .unwrap(),
    );
    assert_eq!(run_sqlite_until(&p, last).await.unwrap(), 5);
    assert_eq!(
        users(&p).await,
        vec![("user-1".into(), 3), ("user-2".into(), 2)]
    );
    assert_eq!(p.checkpoint().await.unwrap(), Some(last));
    // The checkpoint is visible through the checkpoint store too (same table).
    assert_eq!(f.checkpoints.load("users").await.unwrap(), Some(last));

    // A batch with a failing event rolls back whole: neither the good events before it in the batch nor the
    // checkpoint move.
    let s3 = herald_core::StreamName::new("user-3").unwrap();
    f.store
        .append(
            &s3,
            vec![
                herald_core::NewEvent::new("UserRenamed").with_data("1"),
                herald_core::NewEvent::new("UserRenamed").with_data(r#""poison""#),
            ],
            herald_core::ExpectedVersion::Any,
        )
        .await
        .unwrap();
    let err = p.run(&CancellationToken::new()).await.unwrap_err();
    assert!(matches!(err, EsError::Handler { .. }), "{err:?}");
    assert!(err.to_string().contains("poisoned"), "{err}");
    assert_eq!(
        users(&p).await.len(),
        2,
        "user-3's good event rolled back with the batch"
    );
    assert_eq!(p.checkpoint().await.unwrap(), Some(last));

    // Reset + rebuild from scratch (after the poison is out of scope: rebuild a projection on user-1 only).
    p.reset().await.unwrap();
    assert!(users(&p).await.is_empty());
    assert_eq!(p.checkpoint().await.unwrap(), None);
    let one = Arc::new(
        SqliteProjection::open(
            "users-1",
            &path,
            ReadScope::Stream(herald_core::StreamName::new("user-1").unwrap()),
            f.store.clone(),
            Users,
        )
        .await
        .unwrap(),
    );
    assert_eq!(run_sqlite_until(&one, 2).await.unwrap(), 3);
    assert_eq!(
        one.checkpoint().await.unwrap(),
        Some(2),
        "stream scope: cursor is the version"
    );
    let cancel = CancellationToken::new();
    // Reset first so the progress receiver starts from `None`, then rebuild (which resets again).
    one.reset().await.unwrap();
    let rebuilt = {
        let mut progress = one.progress();
        let run = tokio::spawn({
            let (p, c) = (one.clone(), cancel.clone());
            async move { p.rebuild(&c).await }
        });
        progress.wait_for(|c| *c == Some(2)).await.unwrap();
        cancel.cancel();
        run.await.unwrap().unwrap()
    };
    assert_eq!(rebuilt, 3);
    assert_eq!(users(&one).await, vec![("user-1".into(), 3)]);
}

#[tokio::test]
async fn sqlite_stores_refuse_a_file_that_is_not_a_herald_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("foreign.db");
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch("CREATE TABLE t (x)")
        .unwrap();
    let err = herald_es::sqlite::SqliteCheckpointStore::open(&path)
        .await
        .unwrap_err();
    assert!(matches!(err, EsError::InvalidInput(_)), "{err:?}");
    assert!(err.to_string().contains("not a Herald database"), "{err}");
    assert!(
        herald_es::sqlite::SqliteSnapshotStore::open(dir.path().join("missing.db"))
            .await
            .is_err()
    );
}
