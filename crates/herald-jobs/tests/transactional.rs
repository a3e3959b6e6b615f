//! Jobs written in the same transaction as event appends, on every backend: async event handlers
//! (`AsyncHandlers`, the event store's job router) and `JobStore::append_with_jobs`; refused and rolled-back
//! appends leave no job, and the worker pool hands async handlers their event.
//!
//! The port's own transactional semantics (idempotent retries, unique keys, final positions under racing
//! appends, wake-ups) are the conformance suite's `transactional::*` and `wakeups::*` cases; a statement of
//! `append_with` failing on the PostgreSQL server and rolling back the router's jobs is herald-postgres's
//! `tests/jobs.rs` (`router_jobs_roll_back_with_an_append_whose_extra_fails_on_the_server`).

mod common;

use std::sync::Arc;

use common::{Fixture, Kind, eventually};
use herald_core::{Error, EventStoreExt, ExpectedVersion, NewEvent, ReadQuery, StreamName};
use herald_jobs::{
    AsyncHandlers, JobInfo, JobResult, JobStore, ListFilter, NewJob, Route, WorkerPool,
};
use tokio_util::sync::CancellationToken;

/// A fixture of `kind` whose event store routes `UserRegistered` to `send_welcome` (queue `mailers`) and
/// every event to `audit`; `None` when PostgreSQL is unreachable outside CI.
async fn routed(kind: Kind, test: &str) -> Option<Fixture> {
    common::fixture_with(kind, test, common::config, |config| {
        let handlers = AsyncHandlers::new(config);
        handlers.route(Route::new("send_welcome", &["UserRegistered"]).queue("mailers"));
        handlers.route(Route::new("audit", &[]));
        Some(handlers.router())
    })
    .await
}

async fn live(jobs: &JobStore) -> Vec<JobInfo> {
    jobs.list(ListFilter::default()).await.unwrap()
}

async fn an_append_writes_one_job_per_event_and_matching_handler(f: Fixture) {
    let s = StreamName::new("user-1").unwrap();
    let correlation = uuid::Uuid::now_v7();
    let registered = NewEvent::new("UserRegistered")
        .with_metadata(format!(r#"{{"correlation_id":"{correlation}"}}"#));
    let id = registered.id;
    f.store
        .append(
            &s,
            vec![registered, NewEvent::new("ProfileUpdated")],
            ExpectedVersion::NoStream,
        )
        .await
        .unwrap();
    let all = live(&f.jobs).await;
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

async fn refused_appends_write_no_job(f: Fixture) {
    let s = StreamName::new("user-1").unwrap();
    f.store
        .append(
            &s,
            vec![NewEvent::new("UserRegistered")],
            ExpectedVersion::NoStream,
        )
        .await
        .unwrap();
    assert_eq!(live(&f.jobs).await.len(), 2);
    // Version conflict.
    let err = f
        .store
        .append(
            &s,
            vec![NewEvent::new("UserRegistered")],
            ExpectedVersion::NoStream,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::WrongExpectedVersion { .. }), "{err}");
    // Duplicate id.
    let first = f
        .store
        .read_to_vec(ReadQuery::stream(s.clone()))
        .await
        .unwrap()[0]
        .id;
    let other = StreamName::new("user-2").unwrap();
    let err = f
        .store
        .append(
            &other,
            vec![NewEvent::new("UserRegistered").with_id(first)],
            ExpectedVersion::Any,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::DuplicateEvent { .. }), "{err}");
    // Conflicting append_with_jobs.
    let err = f
        .jobs
        .append_with_jobs(
            &*f.store,
            &s,
            vec![NewEvent::new("X")],
            ExpectedVersion::Exact(7),
            vec![NewJob::raw("extra", "{}")],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::WrongExpectedVersion { .. }), "{err}");
    assert_eq!(live(&f.jobs).await.len(), 2, "no job from a refused append");
}

/// `append_with_jobs` commits the caller's jobs and the router's with the events; a refused one before it
/// left no job and no gap (the append takes position 1).
async fn append_with_jobs_commits_the_callers_and_the_routers_jobs(f: Fixture) {
    let s = StreamName::new("order-1").unwrap();
    let refused = f
        .jobs
        .append_with_jobs(
            &*f.store,
            &s,
            vec![NewEvent::new("OrderPlaced")],
            ExpectedVersion::Exact(0),
            vec![NewJob::raw("extra", "{}")],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(refused, Error::WrongExpectedVersion { .. }),
        "{refused}"
    );
    assert!(live(&f.jobs).await.is_empty());
    let ok = f
        .jobs
        .append_with_jobs(
            &*f.store,
            &s,
            vec![NewEvent::new("OrderPlaced")],
            ExpectedVersion::NoStream,
            vec![NewJob::raw("extra", "{}")],
        )
        .await
        .unwrap();
    assert_eq!(ok.first_position, 1);
    let mut kinds: Vec<_> = live(&f.jobs).await.into_iter().map(|j| j.kind).collect();
    kinds.sort();
    assert_eq!(kinds, ["audit", "extra"]);
}

async fn async_handlers_receive_their_event(f: Fixture) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let pool = WorkerPool::builder(f.jobs.clone())
        .queue("mailers", 2)
        .events(Arc::clone(&f.store))
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
    let r = f
        .store
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
        live(&f.jobs).await.iter().all(|j| j.kind != "send_welcome")
    })
    .await;
    stop.cancel();
    pool.join().await;
}

/// On SQLite, `append_with`'s extra runs in the append's transaction after the router: an extra that writes
/// a job and then fails rolls the whole append back, the router's jobs and its own with it.
#[tokio::test]
async fn sqlite_a_rolled_back_append_leaves_neither_events_nor_jobs() {
    let f = routed(
        Kind::Sqlite,
        "sqlite_a_rolled_back_append_leaves_neither_events_nor_jobs",
    )
    .await
    .unwrap();
    let store = f.sqlite.clone().unwrap();
    let s = StreamName::new("order-1").unwrap();
    let err = store
        .append_with(
            &s,
            vec![NewEvent::new("UserRegistered")],
            ExpectedVersion::Any,
            Box::new(|conn, _| {
                herald_sqlite::insert_job(conn, &NewJob::raw("extra", "{}"), 0)?;
                Err(herald_sqlite::rusqlite::Error::InvalidQuery)
            }),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Backend { .. }), "{err}");
    assert!(live(&f.jobs).await.is_empty());
    assert_eq!(f.store.stream_version(&s).await.unwrap(), None);
    // The next append takes position 1: the rolled-back one left no gap.
    let ok = f
        .jobs
        .append_with_jobs(
            &*f.store,
            &s,
            vec![NewEvent::new("OrderPlaced")],
            ExpectedVersion::NoStream,
            vec![NewJob::raw("extra", "{}")],
        )
        .await
        .unwrap();
    assert_eq!(ok.first_position, 1);
    let mut kinds: Vec<_> = live(&f.jobs).await.into_iter().map(|j| j.kind).collect();
    kinds.sort();
    assert_eq!(kinds, ["audit", "extra"]);
}

/// Runs each named `async fn(Fixture)` on every backend, with the routes of [`routed`]: `memory::NAME`,
/// `sqlite::NAME` and `postgres::NAME`.
macro_rules! routed_backends {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $name() {
                    let f = super::routed(super::Kind::Memory, stringify!($name)).await.unwrap();
                    super::$name(f).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let f = super::routed(super::Kind::Sqlite, stringify!($name)).await.unwrap();
                    super::$name(f).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    if let Some(f) = super::routed(super::Kind::Postgres, stringify!($name)).await {
                        super::$name(f).await;
                    }
                }
            )*
        }
    };
}

routed_backends!(
    an_append_writes_one_job_per_event_and_matching_handler,
    refused_appends_write_no_job,
    append_with_jobs_commits_the_callers_and_the_routers_jobs,
    async_handlers_receive_their_event,
);
