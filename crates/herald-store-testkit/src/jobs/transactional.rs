//! Jobs in an append's transaction, through the event store: [`EventStore::append_with_jobs`] and the
//! store's [`JobRouter`](herald_core::JobRouter). Events and jobs commit together or not at all.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use herald_core::jobs::{JobInfo, JobState, JobsConfig, ListFilter};
use herald_core::{Clock, Error, EventStore, ExpectedVersion, ManualClock, NewEvent, StreamName};

use super::support::*;
use super::{JobsBackend, JobsFixture};

fn stream(name: &str) -> StreamName {
    StreamName::new(name).expect("a valid stream name")
}

fn events(count: usize) -> Vec<NewEvent> {
    (0..count)
        .map(|n| NewEvent::new("Happened").with_data(format!(r#"{{"n":{n}}}"#)))
        .collect()
}

/// A fixture whose store routes every appended event to a `routed` job ([`RecordingRouter`]).
async fn open_routed(backend: &JobsBackend) -> (JobsFixture, ManualClock) {
    let clock = ManualClock::at_micros(START);
    let router = RecordingRouter::new(&clock);
    let config: JobsConfig = config(&clock);
    (backend.open(config, Some(router)).await, clock)
}

/// The live jobs of queue `routed`.
async fn routed_jobs(f: &JobsFixture) -> Vec<JobInfo> {
    f.queue()
        .list(ListFilter {
            queue: Some("routed".to_owned()),
            limit: Some(10_000),
            ..ListFilter::default()
        })
        .await
        .expect("list")
}

/// Every routed job names an event stored exactly where the job says (stream, version, position), and
/// every stored event has exactly one routed job.
async fn assert_routed_match_the_log(f: &JobsFixture, events: usize) {
    let jobs = routed_jobs(f).await;
    assert_eq!(jobs.len(), events, "one routed job per appended event");
    let mut seen = HashSet::new();
    for job in &jobs {
        let (stream, id, version, position) = routed(job);
        let event = f
            .store()
            .event(id)
            .await
            .expect("event")
            .unwrap_or_else(|| panic!("routed job names event {id}, which is not stored"));
        assert_eq!(
            (event.stream.as_str(), event.version, event.position),
            (stream.as_str(), version, position),
            "the routed job has the event's final place"
        );
        assert!(seen.insert(id), "event {id} routed twice");
    }
}

/// `append_with_jobs` writes the events and the jobs; the jobs are enqueued and run at the time given.
pub async fn append_with_jobs_commits_events_and_jobs(backend: JobsBackend) {
    let (f, clock) = open(&backend).await;
    clock.advance(Duration::from_secs(5));
    let now = clock.now_micros();
    let batch = events(2);
    let now_job = job("receipt", 1);
    let later = job("reminder", 2)
        .queue("mailers")
        .delay(Duration::from_secs(60));
    let written = f
        .store()
        .append_with_jobs(
            &stream("order-1"),
            batch.clone(),
            ExpectedVersion::NoStream,
            vec![now_job.clone(), later.clone()],
            now,
        )
        .await
        .expect("append_with_jobs");
    assert_eq!((written.first_version, written.last_version), (0, 1));
    assert_eq!((written.first_position, written.last_position), (1, 2));
    for event in &batch {
        assert!(f.store().event(event.id).await.expect("event").is_some());
    }
    let receipt = live_job(f.queue(), now_job.id).await;
    assert_eq!(
        (receipt.state, receipt.enqueued_at, receipt.run_at),
        (JobState::Available, now, now)
    );
    let reminder = live_job(f.queue(), later.id).await;
    assert_eq!(reminder.state, JobState::Scheduled);
    assert_eq!(reminder.run_at, now + 60 * SECOND);
    assert_eq!(reminder.queue, "mailers");
    assert_eq!(
        claimed_ids(&claim(f.queue(), "default", owner(), 10).await),
        [now_job.id]
    );
}

/// A version conflict is `Error::WrongExpectedVersion`, as from a plain append, and leaves neither events
/// nor jobs.
pub async fn wrong_expected_version_leaves_no_job(backend: JobsBackend) {
    let (f, clock) = open(&backend).await;
    let s = stream("order-1");
    f.store()
        .append(&s, events(1), ExpectedVersion::Any)
        .await
        .expect("append");
    for expected in [ExpectedVersion::NoStream, ExpectedVersion::Exact(7)] {
        let refused = f
            .store()
            .append_with_jobs(
                &s,
                events(1),
                expected,
                vec![job("x", 1)],
                clock.now_micros(),
            )
            .await;
        match refused {
            Err(Error::WrongExpectedVersion { stream, actual, .. }) => {
                assert_eq!((stream.as_str(), actual), ("order-1", Some(0)));
            }
            other => panic!("expected WrongExpectedVersion, got {other:?}"),
        }
    }
    assert!(
        live(f.queue()).await.is_empty(),
        "no job from a refused append"
    );
    assert_eq!(
        f.store().stream_version(&s).await.expect("version"),
        Some(0)
    );
    assert_eq!(f.store().watch_head().borrow().position, 1);
}

/// An event id already used elsewhere is `Error::DuplicateEvent`, and leaves no job.
pub async fn duplicate_event_id_leaves_no_job(backend: JobsBackend) {
    let (f, clock) = open(&backend).await;
    let taken = events(1);
    f.store()
        .append(&stream("a-1"), taken.clone(), ExpectedVersion::Any)
        .await
        .expect("append");
    let refused = f
        .store()
        .append_with_jobs(
            &stream("b-1"),
            taken,
            ExpectedVersion::Any,
            vec![job("x", 1)],
            clock.now_micros(),
        )
        .await;
    assert!(
        matches!(refused, Err(Error::DuplicateEvent { .. })),
        "{refused:?}"
    );
    assert!(live(f.queue()).await.is_empty());
    assert_eq!(
        f.store()
            .stream_version(&stream("b-1"))
            .await
            .expect("version"),
        None
    );
}

/// Invalid input (no events) is `Error::InvalidInput` and leaves no job.
pub async fn invalid_append_leaves_no_job(backend: JobsBackend) {
    let (f, clock) = open(&backend).await;
    let refused = f
        .store()
        .append_with_jobs(
            &stream("a-1"),
            Vec::new(),
            ExpectedVersion::Any,
            vec![job("x", 1)],
            clock.now_micros(),
        )
        .await;
    assert!(
        matches!(refused, Err(Error::InvalidInput(_))),
        "{refused:?}"
    );
    assert!(live(f.queue()).await.is_empty());
}

/// Retrying a committed `append_with_jobs` exactly returns the original result and enqueues nothing again,
/// whether the retry carries the same jobs or new ones.
pub async fn idempotent_retry_enqueues_nothing_again(backend: JobsBackend) {
    let (f, clock) = open(&backend).await;
    let s = stream("order-1");
    let batch = events(2);
    let jobs = vec![job("receipt", 1)];
    let first = f
        .store()
        .append_with_jobs(
            &s,
            batch.clone(),
            ExpectedVersion::NoStream,
            jobs.clone(),
            clock.now_micros(),
        )
        .await
        .expect("append_with_jobs");
    let same = f
        .store()
        .append_with_jobs(
            &s,
            batch.clone(),
            ExpectedVersion::NoStream,
            jobs.clone(),
            clock.now_micros(),
        )
        .await
        .expect("retry with the same jobs");
    let fresh = f
        .store()
        .append_with_jobs(
            &s,
            batch,
            ExpectedVersion::Any,
            vec![job("receipt", 2)],
            clock.now_micros(),
        )
        .await
        .expect("retry with new jobs");
    assert_eq!(same, first);
    assert_eq!(fresh, first);
    assert_eq!(info_ids(&live(f.queue()).await), [jobs[0].id]);
}

/// A job whose unique key a live job holds is skipped; the append and its other jobs go through.
pub async fn unique_key_taken_skips_the_job_not_the_append(backend: JobsBackend) {
    let (f, clock) = open(&backend).await;
    let holder = enqueue_one(f.queue(), job("u", 1).unique_key("k")).await;
    let other = job("u", 3);
    f.store()
        .append_with_jobs(
            &stream("a-1"),
            events(1),
            ExpectedVersion::Any,
            vec![job("u", 2).unique_key("k"), other.clone()],
            clock.now_micros(),
        )
        .await
        .expect("append_with_jobs");
    assert_eq!(info_ids(&live(f.queue()).await), [holder, other.id]);
    assert_eq!(
        f.store()
            .stream_version(&stream("a-1"))
            .await
            .expect("version"),
        Some(0)
    );
}

/// With a router, every append that writes events (plain or with jobs) writes the router's jobs, with the
/// events' final versions and positions, enqueued at the router's clock reading.
pub async fn router_jobs_follow_every_append_with_final_positions(backend: JobsBackend) {
    let (f, clock) = open_routed(&backend).await;
    let store = f.store();
    store
        .append(&stream("a-1"), events(2), ExpectedVersion::NoStream)
        .await
        .expect("append");
    clock.advance(Duration::from_secs(1));
    let extra = job("extra", 1);
    store
        .append_with_jobs(
            &stream("b-1"),
            events(1),
            ExpectedVersion::Any,
            vec![extra.clone()],
            clock.now_micros(),
        )
        .await
        .expect("append_with_jobs");
    store
        .append(&stream("a-1"), events(3), ExpectedVersion::Exact(1))
        .await
        .expect("append");
    assert_routed_match_the_log(&f, 6).await;
    let jobs = routed_jobs(&f).await;
    assert_eq!(jobs[0].enqueued_at, START, "the router's clock reading");
    assert_eq!(jobs[5].enqueued_at, START + SECOND);
    let places: Vec<_> = jobs
        .iter()
        .map(|j| {
            let r = routed(j);
            (r.0, r.2, r.3)
        })
        .collect();
    assert_eq!(
        places,
        [
            ("a-1".to_owned(), 0, 1),
            ("a-1".to_owned(), 1, 2),
            ("b-1".to_owned(), 0, 3),
            ("a-1".to_owned(), 2, 4),
            ("a-1".to_owned(), 3, 5),
            ("a-1".to_owned(), 4, 6),
        ],
        "routed jobs in append order, each with its event's place"
    );
    assert!(f.queue().job(extra.id).await.expect("job").is_some());
}

/// Eight tasks append at once (own streams and one shared stream): every routed job carries the position
/// and version its event really got.
pub async fn router_jobs_keep_positions_under_racing_appends(backend: JobsBackend) {
    let (f, _clock) = open_routed(&backend).await;
    let store: Arc<dyn EventStore> = Arc::clone(f.store());
    let tasks: Vec<_> = (0..8)
        .map(|w| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut written = 0;
                for i in 0..10 {
                    let name = if i % 2 == 0 {
                        format!("own-{w}")
                    } else {
                        "shared-1".to_owned()
                    };
                    let count = 1 + (i + w) % 3;
                    store
                        .append(&stream(&name), events(count), ExpectedVersion::Any)
                        .await
                        .expect("append");
                    written += count;
                }
                written
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await.expect("task");
    }
    assert_routed_match_the_log(&f, total).await;
}

/// Refused appends (version conflict, duplicate id, invalid input) and idempotent retries route nothing.
pub async fn refused_appends_route_nothing(backend: JobsBackend) {
    let (f, clock) = open_routed(&backend).await;
    let store = f.store();
    let s = stream("a-1");
    let batch = events(1);
    store
        .append(&s, batch.clone(), ExpectedVersion::NoStream)
        .await
        .expect("append");
    let conflict = store.append(&s, events(1), ExpectedVersion::NoStream).await;
    assert!(
        matches!(conflict, Err(Error::WrongExpectedVersion { .. })),
        "{conflict:?}"
    );
    let conflict = store
        .append_with_jobs(
            &s,
            events(1),
            ExpectedVersion::Exact(9),
            vec![job("x", 1)],
            clock.now_micros(),
        )
        .await;
    assert!(
        matches!(conflict, Err(Error::WrongExpectedVersion { .. })),
        "{conflict:?}"
    );
    let duplicate = store
        .append(&stream("b-1"), batch.clone(), ExpectedVersion::Any)
        .await;
    assert!(
        matches!(duplicate, Err(Error::DuplicateEvent { .. })),
        "{duplicate:?}"
    );
    let invalid = store.append(&s, Vec::new(), ExpectedVersion::Any).await;
    assert!(
        matches!(invalid, Err(Error::InvalidInput(_))),
        "{invalid:?}"
    );
    store
        .append(&s, batch.clone(), ExpectedVersion::Any)
        .await
        .expect("idempotent retry");
    store
        .append_with_jobs(
            &s,
            batch,
            ExpectedVersion::Any,
            Vec::new(),
            clock.now_micros(),
        )
        .await
        .expect("idempotent retry with jobs");
    assert_routed_match_the_log(&f, 1).await;
    assert_eq!(live(f.queue()).await.len(), 1);
}
