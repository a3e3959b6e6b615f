//! The job queue beside the store: `append_with_jobs` and job routers enqueue in the append's own transaction
//! (a refused append or an idempotent retry enqueues nothing), another handle's queue is woken when such an
//! append commits, and the queue's own errors keep their kinds. The cross-backend job semantics are the
//! testkit's conformance suite's business, not this file's.

mod support;

use std::sync::Arc;
use std::time::Duration;

use herald_core::clock::{Clock, ManualClock};
use herald_core::jobs::{
    ClaimRequest, Completion, Finish, JobQueue, JobRouter, JobState, JobsConfig, ListFilter, NewJob,
};
use herald_core::{AppendedEvent, Error, EventStore, ExpectedVersion, NewEvent, StreamName};
use herald_postgres::{PostgresJobQueue, insert_jobs, tokio_postgres};
use uuid::Uuid;

/// Long enough for a loaded machine; a passing test never waits for it.
const WAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn stream(name: &str) -> StreamName {
    StreamName::new(name).expect("valid stream name")
}

/// The server URL with the test's schema, as `PostgresJobQueue::open` takes it.
fn schema_url(schema: &support::TestSchema) -> String {
    let server = support::database_url();
    let separator = if server.contains('?') { '&' } else { '?' };
    format!("{server}{separator}schema={}", schema.name())
}

/// Every live job of the schema, in enqueue order.
async fn live_jobs(queue: &impl JobQueue) -> Vec<herald_core::jobs::JobInfo> {
    queue
        .list(ListFilter {
            limit: Some(1000),
            ..ListFilter::default()
        })
        .await
        .expect("list jobs")
}

#[tokio::test]
async fn append_with_jobs_commits_events_and_jobs_together() {
    if !support::postgres_available("append_with_jobs_commits_events_and_jobs_together").await {
        return;
    }
    let (store, _schema) = support::fresh_store(|c| c).await;
    let clock = ManualClock::at_micros(1_700_000_000_000_000);
    let queue = store
        .job_queue(JobsConfig::default().clock(clock.clone()))
        .await
        .expect("job queue");
    let order = stream("order-1");
    let placed = NewEvent::new("OrderPlaced");
    let receipt = NewJob::raw("send_receipt", r#"{"order":"order-1"}"#).queue("mailers");
    let later = NewJob::raw("remind", "{}").delay(Duration::from_secs(60));
    let now = clock.now_micros();
    let result = store
        .append_with_jobs(
            &order,
            vec![placed.clone()],
            ExpectedVersion::NoStream,
            vec![receipt.clone(), later.clone()],
            now,
        )
        .await
        .expect("append with jobs");
    assert_eq!(result.ids, [placed.id]);
    assert_eq!(store.stream_version(&order).await.unwrap(), Some(0));

    let job = queue
        .job(receipt.id)
        .await
        .unwrap()
        .expect("the receipt job");
    assert_eq!(
        (job.kind.as_str(), job.queue.as_str(), job.state),
        ("send_receipt", "mailers", JobState::Available)
    );
    assert_eq!(
        (job.args.as_str(), job.enqueued_at, job.run_at),
        (receipt.args.as_str(), now, now)
    );
    let job = queue.job(later.id).await.unwrap().expect("the delayed job");
    assert_eq!(job.state, JobState::Scheduled);
    assert_eq!(job.run_at, now + 60_000_000);

    // Repeating the committed append is an idempotent retry: the original result, and no job again.
    let again = NewJob::raw("send_receipt", "{}");
    let retried = store
        .append_with_jobs(
            &order,
            vec![placed],
            ExpectedVersion::NoStream,
            vec![again.clone()],
            now,
        )
        .await
        .expect("idempotent retry");
    assert_eq!(retried, result);
    assert_eq!(queue.job(again.id).await.unwrap(), None);
    assert_eq!(live_jobs(&queue).await.len(), 2);
}

#[tokio::test]
async fn a_refused_append_enqueues_nothing_and_keeps_its_error() {
    if !support::postgres_available("a_refused_append_enqueues_nothing_and_keeps_its_error").await {
        return;
    }
    let (store, _schema) = support::fresh_store(|c| c).await;
    let queue = store.job_queue(JobsConfig::default()).await.unwrap();
    let order = stream("order-2");
    store
        .append(
            &order,
            vec![NewEvent::new("OrderPlaced")],
            ExpectedVersion::NoStream,
        )
        .await
        .unwrap();

    let job = NewJob::raw("send_receipt", "{}");
    let refused = store
        .append_with_jobs(
            &order,
            vec![NewEvent::new("OrderPaid")],
            ExpectedVersion::NoStream,
            vec![job.clone()],
            0,
        )
        .await
        .expect_err("the stream exists");
    assert!(
        matches!(
            &refused,
            Error::WrongExpectedVersion { stream, actual: Some(0), .. } if stream == "order-2"
        ),
        "{refused:?}"
    );

    // A duplicate event id is refused with its own kind too.
    let stored = store
        .append(
            &stream("order-3"),
            vec![NewEvent::new("OrderPlaced")],
            ExpectedVersion::Any,
        )
        .await
        .unwrap();
    let mut reused = NewEvent::new("OrderPaid");
    reused.id = stored.ids[0];
    let duplicate = store
        .append_with_jobs(
            &order,
            vec![reused],
            ExpectedVersion::Any,
            vec![job.clone()],
            0,
        )
        .await
        .expect_err("the id is taken");
    assert!(
        matches!(duplicate, Error::DuplicateEvent { .. }),
        "{duplicate:?}"
    );

    assert_eq!(queue.job(job.id).await.unwrap(), None);
    assert!(live_jobs(&queue).await.is_empty());
    assert_eq!(store.stream_version(&order).await.unwrap(), Some(0));
}

/// One job per appended event, naming it: what an async event handler router does.
#[derive(Debug)]
struct PerEvent {
    clock: ManualClock,
}

impl JobRouter for PerEvent {
    fn jobs_for(&self, stream: &str, events: &[AppendedEvent<'_>]) -> Vec<NewJob> {
        events
            .iter()
            .map(|e| {
                NewJob::raw(
                    "project",
                    format!(
                        r#"{{"stream":"{stream}","event":"{}","position":{}}}"#,
                        e.id, e.position
                    ),
                )
                .order_key(stream)
            })
            .collect()
    }

    fn now_micros(&self) -> i64 {
        self.clock.now_micros()
    }
}

#[tokio::test]
async fn router_jobs_commit_with_the_append_and_never_for_a_refused_one() {
    if !support::postgres_available(
        "router_jobs_commit_with_the_append_and_never_for_a_refused_one",
    )
    .await
    {
        return;
    }
    let clock = ManualClock::at_micros(1_700_000_000_000_000);
    let router = Arc::new(PerEvent {
        clock: clock.clone(),
    });
    let (store, _schema) = support::fresh_store(|c| c.with_job_router(router)).await;
    let queue = store.job_queue(JobsConfig::default()).await.unwrap();
    let order = stream("order-4");
    let events = vec![NewEvent::new("OrderPlaced"), NewEvent::new("OrderPaid")];
    let result = store
        .append(&order, events.clone(), ExpectedVersion::NoStream)
        .await
        .unwrap();

    let jobs = live_jobs(&queue).await;
    let args: Vec<&str> = jobs.iter().map(|j| j.args.as_str()).collect();
    let expected: Vec<String> = result
        .ids
        .iter()
        .zip(result.first_position..)
        .map(|(id, position)| {
            format!(r#"{{"stream":"order-4","event":"{id}","position":{position}}}"#)
        })
        .collect();
    assert_eq!(args, expected);
    assert!(jobs.iter().all(|j| j.enqueued_at == clock.now_micros()));
    assert!(
        jobs.iter()
            .all(|j| j.order_key.as_deref() == Some("order-4"))
    );

    // Refused (version conflict), retried (already committed): no job either time.
    let refused = store
        .append(
            &order,
            vec![NewEvent::new("OrderShipped")],
            ExpectedVersion::NoStream,
        )
        .await
        .expect_err("the stream exists");
    assert!(
        matches!(refused, Error::WrongExpectedVersion { .. }),
        "{refused:?}"
    );
    store
        .append(&order, events, ExpectedVersion::NoStream)
        .await
        .expect("idempotent retry");
    assert_eq!(live_jobs(&queue).await.len(), 2);

    // The router's jobs and the caller's commit together.
    let caller = NewJob::raw("notify", "{}");
    store
        .append_with_jobs(
            &order,
            vec![NewEvent::new("OrderShipped")],
            ExpectedVersion::Exact(1),
            vec![caller.clone()],
            clock.now_micros(),
        )
        .await
        .unwrap();
    let kinds: Vec<String> = live_jobs(&queue)
        .await
        .into_iter()
        .map(|j| j.kind)
        .collect();
    assert_eq!(kinds, ["project", "project", "project", "notify"]);
}

/// A router's jobs are written in the append's own transaction: an `append_with` statement that fails on the
/// server after them rolls the whole append back, the router's jobs with it, and leaves no gap in the global
/// order (moved from herald-jobs, where `AsyncHandlers` was the router).
#[tokio::test]
async fn router_jobs_roll_back_with_an_append_whose_extra_fails_on_the_server() {
    if !support::postgres_available(
        "router_jobs_roll_back_with_an_append_whose_extra_fails_on_the_server",
    )
    .await
    {
        return;
    }
    let clock = ManualClock::at_micros(1_700_000_000_000_000);
    let router = Arc::new(PerEvent {
        clock: clock.clone(),
    });
    let (store, _schema) = support::fresh_store(|c| c.with_job_router(router)).await;
    let queue = store
        .job_queue(JobsConfig::default().clock(clock.clone()))
        .await
        .unwrap();
    let order = stream("order-6");
    let err = store
        .append_with(
            &order,
            vec![NewEvent::new("OrderPlaced")],
            ExpectedVersion::Any,
            Box::new(|_, writes| {
                writes.push("SELECT 1 / 0", vec![])?;
                Ok(())
            }),
        )
        .await
        .expect_err("the extra fails on the server");
    assert!(matches!(err, Error::Backend { .. }), "{err:?}");
    assert!(live_jobs(&queue).await.is_empty());
    assert_eq!(store.stream_version(&order).await.unwrap(), None);

    let caller = NewJob::raw("notify", "{}");
    let ok = store
        .append_with_jobs(
            &order,
            vec![NewEvent::new("OrderPlaced")],
            ExpectedVersion::NoStream,
            vec![caller],
            clock.now_micros(),
        )
        .await
        .unwrap();
    assert_eq!(ok.first_position, 1, "the rolled-back append left no gap");
    let mut kinds: Vec<String> = live_jobs(&queue)
        .await
        .into_iter()
        .map(|j| j.kind)
        .collect();
    kinds.sort();
    assert_eq!(kinds, ["notify", "project"]);
}

#[tokio::test]
async fn another_handles_queue_wakes_when_an_append_with_jobs_commits() {
    if !support::postgres_available("another_handles_queue_wakes_when_an_append_with_jobs_commits")
        .await
    {
        return;
    }
    let (store, schema) = support::fresh_store(|c| c).await;
    // Its own handle and connections, as another process would have: only a NOTIFY can reach it.
    let other = PostgresJobQueue::open(&schema_url(&schema), JobsConfig::default())
        .await
        .expect("open the queue from a URL");
    let wakeups = other.wakeups();
    let woken = wakeups.notified();
    tokio::pin!(woken);
    // Registered before the append, so a wake-up sent at any time after it counts.
    woken.as_mut().enable();

    let job = NewJob::raw("send_receipt", "{}");
    store
        .append_with_jobs(
            &stream("order-5"),
            vec![NewEvent::new("OrderPlaced")],
            ExpectedVersion::NoStream,
            vec![job.clone()],
            other.config().clock.now_micros(),
        )
        .await
        .unwrap();
    tokio::time::timeout(WAKE_TIMEOUT, woken)
        .await
        .expect("the other handle's queue is woken by the append's NOTIFY");
    assert!(other.job(job.id).await.unwrap().is_some());
}

#[tokio::test]
async fn opening_from_a_url_names_bad_options_and_describes_without_the_password() {
    if !support::postgres_available(
        "opening_from_a_url_names_bad_options_and_describes_without_the_password",
    )
    .await
    {
        return;
    }
    let server = support::database_url();
    let separator = if server.contains('?') { '&' } else { '?' };
    for (option, value) in [
        ("pool_size", "0"),
        ("pool_size", "many"),
        ("schema", "Bad"),
        ("schema", "Bad-Name"),
        // PostgreSQL's reserved prefix.
        ("schema", "pg_jobs"),
    ] {
        let url = format!("{server}{separator}{option}={value}");
        match PostgresJobQueue::open_url(&url).await {
            Err(Error::InvalidInput(message)) => {
                assert!(message.contains(option), "{option}={value}: {message}");
                if option == "schema" {
                    assert!(message.contains(value), "{option}={value}: {message}");
                }
            }
            other => panic!("{option}={value}: {other:?}"),
        }
    }
    // Another database's URL is refused before any connection, naming what it got.
    match PostgresJobQueue::open_url("mysql://root@localhost/test").await {
        Err(Error::InvalidInput(message)) => assert!(message.contains("mysql://"), "{message}"),
        other => panic!("mysql://: {other:?}"),
    }

    // The test server trusts its clients, so a password is accepted and ignored: it must not be shown.
    let schema = support::TestSchema::new();
    let with_password = schema_url(&schema).replacen("://root@", "://root:s3cret-pw@", 1);
    let queue = PostgresJobQueue::open_url(&with_password).await.unwrap();
    let described = queue.describe();
    assert!(described.contains(schema.name()), "{described}");
    assert!(!described.contains("s3cret-pw"), "{described}");
    assert!(!format!("{queue:?}").contains("s3cret-pw"));
}

#[tokio::test]
async fn retrying_a_dead_job_whose_unique_key_is_taken_is_a_duplicate_job() {
    if !support::postgres_available(
        "retrying_a_dead_job_whose_unique_key_is_taken_is_a_duplicate_job",
    )
    .await
    {
        return;
    }
    let (store, _schema) = support::fresh_store(|c| c).await;
    let queue = store.job_queue(JobsConfig::default()).await.unwrap();
    let first = NewJob::raw("charge", "{}")
        .unique_key("card-1")
        .max_attempts(1);
    assert_eq!(
        queue.enqueue(vec![first.clone()]).await.unwrap(),
        [first.id]
    );
    let owner = Uuid::now_v7();
    let claimed = queue
        .claim(ClaimRequest {
            queue: first.queue.clone(),
            owner,
            limit: 10,
            limits: Arc::new(Vec::new()),
        })
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    queue
        .complete(
            owner,
            vec![Completion {
                row: claimed[0].row,
                attempt: claimed[0].attempt,
                finish: Finish::Dead {
                    error: "declined".to_owned(),
                },
                ordered: false,
                limited: false,
            }],
        )
        .await
        .unwrap();
    let second = NewJob::raw("charge", "{}").unique_key("card-1");
    assert_eq!(
        queue.enqueue(vec![second.clone()]).await.unwrap(),
        [second.id]
    );

    let err = queue
        .retry_dead(Some(first.id))
        .await
        .expect_err("key taken");
    assert!(matches!(err, Error::DuplicateJob { .. }), "{err:?}");
    let dead = queue.dead(10).await.unwrap();
    assert_eq!(dead.len(), 1, "nothing moved");
    assert_eq!(dead[0].id, first.id);
}

#[tokio::test]
async fn insert_jobs_runs_in_the_callers_transaction() {
    if !support::postgres_available("insert_jobs_runs_in_the_callers_transaction").await {
        return;
    }
    let (store, schema) = support::fresh_store(|c| c).await;
    let queue = store.job_queue(JobsConfig::default()).await.unwrap();
    let (mut client, connection) =
        tokio_postgres::connect(&support::database_url(), tokio_postgres::NoTls)
            .await
            .unwrap();
    let connection = tokio::spawn(connection);

    let dropped = NewJob::raw("audit", "{}");
    let tx = client.transaction().await.unwrap();
    let ids = insert_jobs(&tx, schema.name(), std::slice::from_ref(&dropped), 0)
        .await
        .unwrap();
    assert_eq!(ids, [dropped.id]);
    tx.rollback().await.unwrap();
    assert_eq!(queue.job(dropped.id).await.unwrap(), None);

    let kept = NewJob::raw("audit", "{}");
    let tx = client.transaction().await.unwrap();
    insert_jobs(&tx, schema.name(), std::slice::from_ref(&kept), 0)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(queue.job(kept.id).await.unwrap().is_some());

    let bad = insert_jobs(&client, "Bad; DROP", std::slice::from_ref(&kept), 0).await;
    assert!(matches!(bad, Err(Error::InvalidInput(_))), "{bad:?}");
    drop(client);
    let _ = connection.await;
}
