//! Jobs in the store's file: `append_with_jobs` and the job router write job rows in the append's own
//! transaction (none for a refused append or an idempotent retry), the store's open creates the job tables,
//! and the queue's wake-ups fire after commits that wrote jobs. The queue's own semantics are the job
//! conformance suite's; a smoke test here checks the port's error kinds.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use herald_core::jobs::{ClaimRequest, Completion, Finish, JobQueue, JobsConfig, ListFilter};
use herald_core::{
    AppendedEvent, Error, EventStore, EventStoreExt, ExpectedVersion, JobRouter, ManualClock,
    NewEvent, NewJob, ReadQuery, StreamName,
};
use herald_sqlite::{Durability, SqliteConfig, SqliteJobQueue, SqliteStore};
use uuid::Uuid;

/// Long enough for a commit on a loaded machine; a missed wake-up fails the test instead of hanging it.
const WAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn name(s: &str) -> StreamName {
    StreamName::new(s).unwrap()
}

fn config() -> SqliteConfig {
    SqliteConfig::default().durability(Durability::Normal)
}

fn jobs_config() -> JobsConfig {
    JobsConfig::default().full_sync(false)
}

async fn all_jobs(queue: &SqliteJobQueue) -> Vec<herald_core::jobs::JobInfo> {
    queue.list(ListFilter::default()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_with_jobs_commits_events_and_jobs_together() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.db");
    let store = SqliteStore::open(&path, config()).await.unwrap();
    let order = name("order-1");
    let jobs = vec![
        NewJob::raw("send_receipt", r#"{"order":1}"#).queue("mailers"),
        NewJob::raw("reserve_stock", "{}").delay(Duration::from_secs(60)),
    ];
    let now = 1_700_000_000_000_000;
    let result = store
        .append_with_jobs(
            &order,
            vec![NewEvent::new("OrderPlaced")],
            ExpectedVersion::NoStream,
            jobs.clone(),
            now,
        )
        .await
        .unwrap();
    assert_eq!((result.first_version, result.first_position), (0, 1));
    let events = store.read_to_vec(ReadQuery::stream(order)).await.unwrap();
    assert_eq!(events.len(), 1);

    // A queue opened standalone on the same file sees the jobs, as enqueued at `now`.
    let queue = SqliteJobQueue::open(&path, jobs_config()).await.unwrap();
    let receipt = queue.job(jobs[0].id).await.unwrap().expect("receipt job");
    assert_eq!(
        (
            receipt.kind.as_str(),
            receipt.queue.as_str(),
            receipt.args.as_str()
        ),
        ("send_receipt", "mailers", r#"{"order":1}"#)
    );
    assert_eq!((receipt.enqueued_at, receipt.run_at), (now, now));
    let stock = queue.job(jobs[1].id).await.unwrap().expect("stock job");
    assert_eq!(stock.run_at, now + 60_000_000);
    assert_eq!(queue.describe(), path.display().to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_append_enqueues_nothing_and_keeps_its_error() {
    let store = SqliteStore::open_temporary_with(config()).await.unwrap();
    let queue = store.job_queue(jobs_config()).await.unwrap();
    let order = name("order-1");
    let first = NewEvent::new("OrderPlaced");
    store
        .append(&order, vec![first.clone()], ExpectedVersion::NoStream)
        .await
        .unwrap();

    let job = NewJob::raw("send_receipt", "{}");
    let err = store
        .append_with_jobs(
            &order,
            vec![NewEvent::new("OrderPlaced")],
            ExpectedVersion::NoStream,
            vec![job.clone()],
            0,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::WrongExpectedVersion {
                actual: Some(0),
                ..
            }
        ),
        "{err}"
    );

    // A duplicate id in another stream: refused too, with its own kind.
    let err = store
        .append_with_jobs(
            &name("order-2"),
            vec![first.clone()],
            ExpectedVersion::Any,
            vec![job.clone()],
            0,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::DuplicateEvent { .. }), "{err}");
    assert!(all_jobs(&queue).await.is_empty());
    assert_eq!(queue.stats().await.unwrap().queues, vec![]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_retry_enqueues_nothing_again() {
    let store = SqliteStore::open_temporary_with(config()).await.unwrap();
    let queue = store.job_queue(jobs_config()).await.unwrap();
    let order = name("order-1");
    let events = vec![NewEvent::new("OrderPlaced"), NewEvent::new("OrderPaid")];
    let first = store
        .append_with_jobs(
            &order,
            events.clone(),
            ExpectedVersion::NoStream,
            vec![NewJob::raw("send_receipt", "{}")],
            0,
        )
        .await
        .unwrap();
    // The caller retries after a lost reply, computing its job again (a fresh id).
    let retry = store
        .append_with_jobs(
            &order,
            events,
            ExpectedVersion::NoStream,
            vec![NewJob::raw("send_receipt", "{}")],
            0,
        )
        .await
        .unwrap();
    assert_eq!(retry, first);
    assert_eq!(all_jobs(&queue).await.len(), 1);
}

/// One job per appended event, counting its calls.
#[derive(Default)]
struct PerEvent {
    calls: AtomicUsize,
}

impl JobRouter for PerEvent {
    fn jobs_for(&self, stream: &str, events: &[AppendedEvent<'_>]) -> Vec<NewJob> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        events
            .iter()
            .map(|e| {
                NewJob::raw(
                    "project",
                    format!(
                        r#"{{"stream":"{stream}","position":{},"version":{}}}"#,
                        e.position, e.version
                    ),
                )
                .metadata(format!(r#"{{"causation_id":"{}"}}"#, e.id))
            })
            .collect()
    }

    fn now_micros(&self) -> i64 {
        42
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_jobs_are_written_with_the_append_and_not_for_a_refused_one() {
    let router = Arc::new(PerEvent::default());
    let store = SqliteStore::open_temporary_with(config().with_job_router(router.clone()))
        .await
        .unwrap();
    let queue = store.job_queue(jobs_config()).await.unwrap();
    let order = name("order-1");
    let result = store
        .append(
            &order,
            vec![NewEvent::new("OrderPlaced"), NewEvent::new("OrderPaid")],
            ExpectedVersion::NoStream,
        )
        .await
        .unwrap();
    let jobs = all_jobs(&queue).await;
    assert_eq!(jobs.len(), 2);
    for (i, job) in jobs.iter().enumerate() {
        assert_eq!(job.kind, "project");
        assert_eq!(
            job.args,
            format!(
                r#"{{"stream":"order-1","position":{},"version":{i}}}"#,
                i + 1
            )
        );
        assert_eq!(
            job.metadata,
            format!(r#"{{"causation_id":"{}"}}"#, result.ids[i])
        );
        assert_eq!(job.enqueued_at, 42, "enqueued at the router's clock");
    }

    // Refused: no event written, so no router call and no job.
    let calls = router.calls.load(Ordering::SeqCst);
    let err = store
        .append(
            &order,
            vec![NewEvent::new("OrderPlaced")],
            ExpectedVersion::NoStream,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::WrongExpectedVersion { .. }), "{err}");
    assert_eq!(router.calls.load(Ordering::SeqCst), calls);
    assert_eq!(all_jobs(&queue).await.len(), 2);

    // With append_with_jobs both the router's and the caller's jobs commit with the events.
    let own = NewJob::raw("send_receipt", "{}");
    store
        .append_with_jobs(
            &order,
            vec![NewEvent::new("OrderShipped")],
            ExpectedVersion::Exact(1),
            vec![own.clone()],
            7,
        )
        .await
        .unwrap();
    let jobs = all_jobs(&queue).await;
    assert_eq!(jobs.len(), 4);
    assert!(jobs.iter().any(|j| j.id == own.id && j.enqueued_at == 7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wakeups_fire_after_commits_that_wrote_jobs() {
    // No router here: only append_with_jobs's own jobs can wake the queue.
    let store = SqliteStore::open_temporary_with(config()).await.unwrap();
    let queue = store.job_queue(jobs_config()).await.unwrap();
    let wake = queue.wakeups();
    // A `Notified` receives `notify_waiters` from the moment it is created.
    let woken = wake.notified();
    store
        .append_with_jobs(
            &name("a-1"),
            vec![NewEvent::new("E")],
            ExpectedVersion::NoStream,
            vec![NewJob::raw("k", "{}")],
            0,
        )
        .await
        .unwrap();
    tokio::time::timeout(WAKE_TIMEOUT, woken)
        .await
        .expect("append_with_jobs wakes the queue");

    // The router's jobs of a plain append wake the queue of their store.
    let routed =
        SqliteStore::open_temporary_with(config().with_job_router(Arc::new(PerEvent::default())))
            .await
            .unwrap();
    let routed_wake = routed.job_queue(jobs_config()).await.unwrap().wakeups();
    let woken = routed_wake.notified();
    routed
        .append(
            &name("a-2"),
            vec![NewEvent::new("E")],
            ExpectedVersion::NoStream,
        )
        .await
        .unwrap();
    tokio::time::timeout(WAKE_TIMEOUT, woken)
        .await
        .expect("router jobs wake the queue");

    // A standalone queue has wake-ups of its own, fired by its enqueues.
    let own = SqliteJobQueue::open(store.path(), jobs_config())
        .await
        .unwrap();
    let own_wake = own.wakeups();
    assert!(!Arc::ptr_eq(&own_wake, &wake));
    let woken = own_wake.notified();
    own.enqueue(vec![NewJob::raw("k", "{}")]).await.unwrap();
    tokio::time::timeout(WAKE_TIMEOUT, woken)
        .await
        .expect("enqueue wakes the queue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_tables_come_with_any_store_file_and_migrate_once() {
    let dir = tempfile::tempdir().unwrap();
    // Queue first, then the store: the store opens the file the queue created, and enqueues in appends.
    let path = dir.path().join("q.db");
    let queue = SqliteJobQueue::open(&path, jobs_config()).await.unwrap();
    let store = SqliteStore::open(&path, config()).await.unwrap();
    let job = NewJob::raw("k", "{}");
    store
        .append_with_jobs(
            &name("s-1"),
            vec![NewEvent::new("E")],
            ExpectedVersion::Any,
            vec![job.clone()],
            0,
        )
        .await
        .unwrap();
    assert!(queue.job(job.id).await.unwrap().is_some());
    store.close().await;
    drop(queue);
    // Reopening adds no migration: one row per job migration in the job tables' own bookkeeping.
    SqliteStore::open(&path, config())
        .await
        .unwrap()
        .close()
        .await;
    drop(SqliteJobQueue::open(&path, jobs_config()).await.unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    let versions: Vec<i64> = conn
        .prepare("SELECT version FROM herald_jobs_schema ORDER BY version")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(versions, vec![1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_port_answers_with_its_documented_results_and_errors() {
    let clock = ManualClock::at_micros(1_000_000);
    let store = SqliteStore::open_temporary_with(config()).await.unwrap();
    let queue = store
        .job_queue(jobs_config().clock(clock.clone()))
        .await
        .unwrap();
    let dying = NewJob::raw("k", "{}").unique_key("u").max_attempts(1);
    assert_eq!(
        queue.enqueue(vec![dying.clone()]).await.unwrap(),
        vec![dying.id]
    );
    // The key is taken: skipped, not an error.
    let twin = NewJob::raw("k", "{}").unique_key("u");
    assert!(queue.enqueue(vec![twin.clone()]).await.unwrap().is_empty());

    let owner = Uuid::now_v7();
    let request = ClaimRequest {
        queue: "default".to_owned(),
        owner,
        limit: 10,
        limits: Arc::new(Vec::new()),
    };
    let claimed = queue.claim(request.clone()).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!((claimed[0].id, claimed[0].attempt), (dying.id, 1));
    assert_eq!(queue.renew(owner).await.unwrap(), 1);
    queue
        .complete(
            owner,
            vec![Completion {
                row: claimed[0].row,
                attempt: 1,
                finish: Finish::Dead {
                    error: "boom".to_owned(),
                },
                ordered: false,
                limited: false,
            }],
        )
        .await
        .unwrap();
    let dead = queue.dead(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].last_error.as_deref(), Some("boom"));

    // The key is free again: a new job takes it, and the dead one cannot come back while it lives.
    assert_eq!(
        queue.enqueue(vec![twin.clone()]).await.unwrap(),
        vec![twin.id]
    );
    let err = queue.retry_dead(Some(dying.id)).await.unwrap_err();
    assert!(matches!(err, Error::DuplicateJob { .. }), "{err}");
    assert_eq!(queue.dead(10).await.unwrap().len(), 1, "nothing moved");

    assert!(queue.cancel(twin.id).await.unwrap());
    assert!(!queue.cancel(twin.id).await.unwrap());
    assert_eq!(queue.retry_dead(Some(dying.id)).await.unwrap(), 1);
    assert_eq!(queue.retry_dead(Some(dying.id)).await.unwrap(), 0);
    assert!(!queue.discard_dead(dying.id).await.unwrap());
    assert_eq!(queue.release_all(owner).await.unwrap(), 0);
    let stats = queue.stats().await.unwrap();
    assert_eq!(
        (stats.queues.len(), stats.queues[0].available, stats.dead),
        (1, 1, 0)
    );
}
