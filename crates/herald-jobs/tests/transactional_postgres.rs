//! Transactional enqueue on PostgreSQL: async event handlers (a herald-postgres append hook) and
//! `append_with_jobs_postgres`; refused and rolled-back appends leave no job.

mod common;

use std::sync::Arc;

use common::eventually;
use herald_core::{EventStore, EventStoreExt, ExpectedVersion, NewEvent, ReadQuery, StreamName};
use herald_jobs::{
    AsyncHandlers, JobInfo, JobResult, JobStore, JobsConfig, ListFilter, NewJob, Route, WorkerPool,
};
use herald_postgres::{PostgresConfig, PostgresStore};
use tokio_util::sync::CancellationToken;

struct Setup {
    jobs: JobStore,
    store: Arc<PostgresStore>,
    _schema: common::TestSchema,
}

/// Jobs and events in one fresh schema, the routing hook installed; `None` when PostgreSQL is unreachable.
async fn open(test: &str) -> Option<Setup> {
    if !common::postgres_available(test).await {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let (url, schema) = common::fresh_url(common::Kind::Postgres, dir.path());
    let schema = schema.unwrap();
    let jobs = JobStore::open_url(&url, JobsConfig::default())
        .await
        .unwrap();
    let handlers = AsyncHandlers::new(&jobs);
    handlers.route(Route::new("send_welcome", &["UserRegistered"]).queue("mailers"));
    handlers.route(Route::new("audit", &[]));
    let config = PostgresConfig::default()
        .schema(schema.name())
        .with_append_hook(handlers.postgres_hook().unwrap());
    let store = Arc::new(
        PostgresStore::open(&herald_store_testkit::postgres::server_url(), config)
            .await
            .unwrap(),
    );
    Some(Setup {
        jobs,
        store,
        _schema: schema,
    })
}

async fn live(jobs: &JobStore) -> Vec<JobInfo> {
    jobs.list(ListFilter::default()).await.unwrap()
}

#[tokio::test]
async fn an_append_writes_one_job_per_event_and_matching_handler() {
    let Some(Setup {
        jobs,
        store,
        _schema,
    }) = open("an_append_writes_one_job_per_event_and_matching_handler").await
    else {
        return;
    };
    let s = StreamName::new("user-1").unwrap();
    let correlation = uuid::Uuid::now_v7();
    let registered = NewEvent::new("UserRegistered")
        .with_metadata(format!(r#"{{"correlation_id":"{correlation}"}}"#));
    let id = registered.id;
    store
        .append(
            &s,
            vec![registered, NewEvent::new("ProfileUpdated")],
            ExpectedVersion::NoStream,
        )
        .await
        .unwrap();
    let all = live(&jobs).await;
    let mut kinds: Vec<_> = all
        .iter()
        .map(|j| (j.kind.as_str(), j.queue.as_str()))
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            ("audit", "default"),
            ("audit", "default"),
            ("send_welcome", "mailers")
        ]
    );
    let welcome = all.iter().find(|j| j.kind == "send_welcome").unwrap();
    let meta: serde_json::Value = serde_json::from_str(&welcome.metadata).unwrap();
    assert_eq!(meta["causation_id"], id.to_string());
    assert_eq!(meta["correlation_id"], correlation.to_string());
}

#[tokio::test]
async fn refused_appends_write_no_job() {
    let Some(Setup {
        jobs,
        store,
        _schema,
    }) = open("refused_appends_write_no_job").await
    else {
        return;
    };
    let s = StreamName::new("user-1").unwrap();
    store
        .append(
            &s,
            vec![NewEvent::new("UserRegistered")],
            ExpectedVersion::NoStream,
        )
        .await
        .unwrap();
    assert_eq!(live(&jobs).await.len(), 2);
    let err = store
        .append(
            &s,
            vec![NewEvent::new("UserRegistered")],
            ExpectedVersion::NoStream,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, herald_core::Error::WrongExpectedVersion { .. }),
        "{err}"
    );
    let first = store
        .read_to_vec(ReadQuery::stream(s.clone()))
        .await
        .unwrap()[0]
        .id;
    let other = StreamName::new("user-2").unwrap();
    let err = store
        .append(
            &other,
            vec![NewEvent::new("UserRegistered").with_id(first)],
            ExpectedVersion::Any,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, herald_core::Error::DuplicateEvent { .. }),
        "{err}"
    );
    let err = jobs
        .append_with_jobs_postgres(
            &store,
            &s,
            vec![NewEvent::new("X")],
            ExpectedVersion::Exact(7),
            vec![NewJob::raw("extra", "{}")],
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("version"), "{err}");
    assert_eq!(live(&jobs).await.len(), 2, "no job from a refused append");
}

#[tokio::test]
async fn a_rolled_back_append_leaves_neither_events_nor_jobs() {
    let Some(Setup {
        jobs,
        store,
        _schema,
    }) = open("a_rolled_back_append_leaves_neither_events_nor_jobs").await
    else {
        return;
    };
    let s = StreamName::new("order-1").unwrap();
    // The hook writes the `audit` job, then the extra's statement fails on the server: the whole append
    // rolls back, the hook's job with it.
    let err = store
        .append_with(
            &s,
            vec![NewEvent::new("UserRegistered")],
            ExpectedVersion::Any,
            Box::new(|_, writes| {
                writes.push("SELECT 1 / 0", vec![])?;
                Ok(())
            }),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, herald_core::Error::Backend { .. }), "{err}");
    assert!(live(&jobs).await.is_empty());
    assert_eq!(store.stream_version(&s).await.unwrap(), None);
    let ok = jobs
        .append_with_jobs_postgres(
            &store,
            &s,
            vec![NewEvent::new("OrderPlaced")],
            ExpectedVersion::NoStream,
            vec![NewJob::raw("extra", "{}")],
        )
        .await
        .unwrap();
    assert_eq!(ok.first_position, 1, "the rolled-back append left no gap");
    let mut kinds: Vec<_> = live(&jobs).await.into_iter().map(|j| j.kind).collect();
    kinds.sort();
    assert_eq!(kinds, ["audit", "extra"]);
}

#[tokio::test]
async fn async_handlers_receive_their_event() {
    let Some(Setup {
        jobs,
        store,
        _schema,
    }) = open("async_handlers_receive_their_event").await
    else {
        return;
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let pool = WorkerPool::builder(jobs.clone())
        .queue("mailers", 2)
        .events(store.clone())
        .handle_events("send_welcome", move |event, ctx| {
            let tx = tx.clone();
            async move {
                tx.send((event.id, event.event_type, ctx.causation_id()))
                    .unwrap();
                JobResult::Success
            }
        })
        .start(stop.clone());
    let s = StreamName::new("user-9").unwrap();
    let r = store
        .append(
            &s,
            vec![NewEvent::new("UserRegistered")],
            ExpectedVersion::Any,
        )
        .await
        .unwrap();
    let (id, ty, causation) = rx.recv().await.unwrap();
    assert_eq!(
        (id, ty.as_str(), causation),
        (r.ids[0], "UserRegistered", Some(r.ids[0]))
    );
    eventually("welcome job done", || async {
        live(&jobs).await.iter().all(|j| j.kind != "send_welcome")
    })
    .await;
    stop.cancel();
    pool.join().await;
}
