//! Bad input to `JobStore`: every rule broken is `Error::InvalidInput` naming the job type or the limit, and
//! nothing is stored — no job for a batch with one bad job, no event for an append whose job is bad.

mod common;

use common::Fixture;
use herald_core::{ExpectedVersion, NewEvent, StreamName};
use herald_jobs::{Error, ListFilter, NewJob};
use uuid::Uuid;

fn bad_jobs() -> Vec<(NewJob, &'static str)> {
    vec![
        (NewJob::raw("", "{}"), "job type name"),
        (NewJob::raw("x".repeat(256), "{}"), "job type name"),
        (
            NewJob::raw("mail", "{}").queue(""),
            "queue name of job `mail`",
        ),
        (
            NewJob::raw("mail", "{}").max_attempts(0),
            "max_attempts of job `mail`",
        ),
        (
            NewJob::raw("mail", "{}").id(Uuid::nil()),
            "job `mail` has the nil UUID",
        ),
        (NewJob::raw("mail", "not json"), "arguments of job `mail`"),
        (
            NewJob::raw("mail", "{}").metadata("[1]"),
            "metadata of job `mail`",
        ),
    ]
}

fn assert_invalid<T: std::fmt::Debug>(result: herald_jobs::Result<T>, names: &str) {
    match result {
        Err(Error::InvalidInput(message)) => assert!(message.contains(names), "{message}"),
        other => panic!("expected invalid input naming {names:?}, got {other:?}"),
    }
}

async fn bad_jobs_are_refused_and_nothing_is_stored(f: Fixture) {
    let good = || NewJob::raw("mail", "{}");
    for (bad, names) in bad_jobs() {
        assert_invalid(f.jobs.enqueue(bad.clone()).await, names);
        assert_invalid(f.jobs.enqueue_bulk(vec![good(), bad.clone()]).await, names);
        let stream = StreamName::new("order-1").unwrap();
        let appended = f
            .jobs
            .append_with_jobs(
                &*f.store,
                &stream,
                vec![NewEvent::new("OrderPaid")],
                ExpectedVersion::Any,
                vec![good(), bad],
            )
            .await;
        assert_invalid(appended, names);
        assert_eq!(f.store.stream_version(&stream).await.unwrap(), None);
    }
    let stats = f.jobs.stats().await.unwrap();
    assert!(stats.queues.is_empty() && stats.dead == 0, "{stats:?}");
}

async fn out_of_range_views_and_the_nil_id_are_invalid_input(f: Fixture) {
    for limit in [0, herald_jobs::MAX_LIST_LIMIT + 1] {
        let filter = ListFilter {
            limit: Some(limit),
            ..ListFilter::default()
        };
        assert_invalid(f.jobs.list(filter).await, &limit.to_string());
        assert_invalid(f.jobs.dead(limit).await, &limit.to_string());
    }
    assert_invalid(f.jobs.retry_dead(Uuid::nil()).await, "nil UUID");
    assert_invalid(f.jobs.discard_dead(Uuid::nil()).await, "nil UUID");
    assert_invalid(f.jobs.cancel(Uuid::nil()).await, "nil UUID");
    // An id that could exist but does not is a miss, not bad input.
    let id = Uuid::now_v7();
    assert!(matches!(
        f.jobs.retry_dead(id).await,
        Err(Error::JobNotFound { id: missing }) if missing == id
    ));
}

all_backends!(
    bad_jobs_are_refused_and_nothing_is_stored,
    out_of_range_views_and_the_nil_id_are_invalid_input,
);
