//! Group commit: concurrent writers share transactions yet keep their own checks and results.

use std::collections::BTreeSet;
use std::sync::Arc;

use herald_core::{
    Error, EventStore, EventStoreExt, ExpectedVersion, NewEvent, ReadQuery, StreamName,
};
use herald_sqlite::{Durability, SqliteConfig, SqliteStore};
use tokio::sync::Barrier;

async fn file_store(dir: &tempfile::TempDir) -> Arc<SqliteStore> {
    let config = SqliteConfig::default().durability(Durability::Full);
    Arc::new(
        SqliteStore::open(dir.path().join("g.db"), config)
            .await
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_exact_appends_have_exactly_one_winner_per_version() {
    let dir = tempfile::tempdir().unwrap();
    let store = file_store(&dir).await;
    let stream = StreamName::new("race-1").unwrap();
    const RACERS: usize = 16;
    const VERSIONS: u64 = 12;
    for round in 0..=VERSIONS {
        // Round 0 races on creating the stream, round v on Exact(v - 1).
        let expected = match round {
            0 => ExpectedVersion::NoStream,
            v => ExpectedVersion::Exact(v - 1),
        };
        let barrier = Arc::new(Barrier::new(RACERS));
        let mut tasks = Vec::new();
        for racer in 0..RACERS {
            let (store, stream, barrier) = (store.clone(), stream.clone(), barrier.clone());
            tasks.push(tokio::spawn(async move {
                let event = NewEvent::new("Raced").with_data(format!(r#"{{"racer":{racer}}}"#));
                barrier.wait().await;
                store.append(&stream, vec![event], expected).await
            }));
        }
        let mut winners = Vec::new();
        for task in tasks {
            match task.await.unwrap() {
                Ok(result) => winners.push(result),
                Err(Error::WrongExpectedVersion {
                    stream: s,
                    expected: e,
                    actual,
                }) => {
                    assert_eq!(s, "race-1");
                    assert_eq!(e, expected);
                    assert_eq!(actual, Some(round), "losers see the winner's version");
                }
                Err(other) => panic!("unexpected error {other}"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: exactly one winner");
        assert_eq!(winners[0].first_version, round);
        assert_eq!(winners[0].first_position, round + 1);
    }
    let events = store
        .read_to_vec(ReadQuery::stream(stream.clone()))
        .await
        .unwrap();
    assert_eq!(events.len() as u64, VERSIONS + 1);
    assert_eq!(store.stream_version(&stream).await.unwrap(), Some(VERSIONS));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_to_many_streams_get_contiguous_positions() {
    let dir = tempfile::tempdir().unwrap();
    let store = file_store(&dir).await;
    const TASKS: usize = 16;
    const APPENDS: usize = 30;
    let barrier = Arc::new(Barrier::new(TASKS));
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let (store, barrier) = (store.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let stream = StreamName::new(format!("many-{task}")).unwrap();
            barrier.wait().await;
            let mut results = Vec::new();
            for n in 0..APPENDS {
                let events = (0..1 + (n + task) % 3)
                    .map(|_| NewEvent::new("Landed"))
                    .collect();
                let expected = match results.last().map(|r: &herald_core::AppendResult| r) {
                    None => ExpectedVersion::NoStream,
                    Some(r) => ExpectedVersion::Exact(r.last_version),
                };
                results.push(store.append(&stream, events, expected).await.unwrap());
            }
            (stream, results)
        }));
    }
    let mut positions = BTreeSet::new();
    let mut total = 0u64;
    for task in tasks {
        let (stream, results) = task.await.unwrap();
        let mut next_version = 0;
        for r in &results {
            assert_eq!(r.first_version, next_version, "{stream}");
            next_version = r.last_version + 1;
            assert_eq!(
                r.last_position - r.first_position,
                r.last_version - r.first_version,
                "one append's positions are contiguous"
            );
            for p in r.first_position..=r.last_position {
                assert!(positions.insert(p), "position {p} given twice");
            }
            total += r.ids.len() as u64;
        }
        let read = store.read_to_vec(ReadQuery::stream(stream)).await.unwrap();
        let ids: Vec<_> = read.iter().map(|e| e.id).collect();
        let written: Vec<_> = results.iter().flat_map(|r| r.ids.clone()).collect();
        assert_eq!(ids, written);
    }
    assert_eq!(positions, (1..=total).collect::<BTreeSet<_>>());
    let log = store.read_to_vec(ReadQuery::all()).await.unwrap();
    assert_eq!(log.len() as u64, total);
    assert!(
        log.iter()
            .enumerate()
            .all(|(i, e)| e.position == i as u64 + 1)
    );
    let stats = store.write_stats();
    assert_eq!(stats.requests, (TASKS * APPENDS) as u64);
    assert!(stats.transactions >= 1 && stats.transactions <= stats.requests);
    eprintln!(
        "group commit: {} requests in {} transactions",
        stats.requests, stats.transactions
    );
}

/// A request refused inside a batch rolls back to its own savepoint only: the others in the same batch
/// commit. Submitting everything at once with `join_all` queues the requests together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_does_not_sink_its_batch() {
    let dir = tempfile::tempdir().unwrap();
    let store = file_store(&dir).await;
    let taken = NewEvent::new("First");
    let a = StreamName::new("batch-a").unwrap();
    store
        .append(&a, vec![taken.clone()], ExpectedVersion::NoStream)
        .await
        .unwrap();
    let mut futures = Vec::new();
    for i in 0..20u64 {
        let store = store.clone();
        let (a, taken) = (a.clone(), taken.clone());
        futures.push(tokio::spawn(async move {
            let s = StreamName::new(format!("batch-{i}")).unwrap();
            match i % 4 {
                // Duplicate id in another stream: refused.
                0 => store
                    .append(&s, vec![NewEvent::new("X"), taken], ExpectedVersion::Any)
                    .await
                    .map(|_| ()),
                // Wrong expected version: refused.
                1 => store
                    .append(&a, vec![NewEvent::new("X")], ExpectedVersion::Exact(99))
                    .await
                    .map(|_| ()),
                // Link of a known then an unknown id: refused after the first entry was written.
                2 => store
                    .link(&s, &[taken.id, uuid::Uuid::now_v7()], ExpectedVersion::Any)
                    .await
                    .map(|_| ()),
                _ => store
                    .append(&s, vec![NewEvent::new("Ok"); 1], ExpectedVersion::NoStream)
                    .await
                    .map(|_| ()),
            }
        }));
    }
    let results = futures::future::join_all(futures).await;
    for (i, r) in results.into_iter().enumerate() {
        let r = r.unwrap();
        match i % 4 {
            0 => assert!(matches!(r, Err(Error::DuplicateEvent { .. })), "{r:?}"),
            1 => assert!(
                matches!(r, Err(Error::WrongExpectedVersion { .. })),
                "{r:?}"
            ),
            2 => assert!(matches!(r, Err(Error::EventNotFound { .. })), "{r:?}"),
            _ => r.unwrap(),
        }
    }
    let log = store.read_to_vec(ReadQuery::all()).await.unwrap();
    assert_eq!(
        log.len(),
        1 + 5,
        "the first event plus the five good appends"
    );
    assert!(
        log.iter()
            .enumerate()
            .all(|(i, e)| e.position == i as u64 + 1)
    );
    assert!(log.iter().all(|e| e.event_type != "X"));
    // Refused requests left no stream behind (their partial entries were undone).
    let streams = store.streams("batch-", None, 100).await.unwrap();
    let names: Vec<_> = streams.iter().map(|s| s.stream.as_str()).collect();
    assert_eq!(names.len(), 6, "{names:?}");
    for i in (0..20).filter(|i| i % 4 != 3) {
        let s = StreamName::new(format!("batch-{i}")).unwrap();
        assert!(
            store
                .read_to_vec(ReadQuery::stream(s))
                .await
                .unwrap()
                .is_empty()
        );
    }
}

/// At low load a request is never held back for company: a lone sequential appender gets one transaction per
/// append, even right after a burst of concurrent appends taught the writer to expect larger batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_appender_commits_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = file_store(&dir).await;
    let burst: Vec<_> = (0..16)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let s = StreamName::new(format!("burst-{i}")).unwrap();
                store
                    .append(&s, vec![NewEvent::new("E")], ExpectedVersion::Any)
                    .await
            })
        })
        .collect();
    for b in burst {
        b.await.unwrap().unwrap();
    }
    let s = StreamName::new("alone").unwrap();
    // The first append after the burst may wait one short gather window; from then on none do.
    store
        .append(&s, vec![NewEvent::new("E")], ExpectedVersion::Any)
        .await
        .unwrap();
    let before = store.write_stats();
    for _ in 0..20 {
        store
            .append(&s, vec![NewEvent::new("E")], ExpectedVersion::Any)
            .await
            .unwrap();
    }
    let after = store.write_stats();
    assert_eq!(after.requests - before.requests, 20);
    assert_eq!(after.transactions - before.transactions, 20);
}
