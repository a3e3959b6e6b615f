//! Group commit with several appends per statement: appends that land in one batch (same streams, clashing
//! ids, conflicting expectations, idempotent retries) get exactly the results they would get one by one,
//! and the global log stays gap-free.

mod support;

use std::collections::HashMap;
use std::sync::Arc;

use herald_core::{
    AppendResult, Error, EventStore, EventStoreExt, ExpectedVersion, NewEvent, ReadQuery,
    StreamName,
};
use uuid::Uuid;

fn stream(name: &str) -> StreamName {
    StreamName::new(name).unwrap()
}

fn events(n: usize) -> Vec<NewEvent> {
    (0..n)
        .map(|i| NewEvent::new("E").with_data(format!(r#"{{"i":{i}}}"#)))
        .collect()
}

/// Sends all `appends` at once (so the writer batches them) and returns their results in order.
async fn burst(
    store: &Arc<herald_postgres::PostgresStore>,
    appends: Vec<(&'static str, Vec<NewEvent>, ExpectedVersion)>,
) -> Vec<herald_core::Result<AppendResult>> {
    futures::future::join_all(appends.into_iter().map(|(name, events, expected)| {
        let store = Arc::clone(store);
        async move { store.append(&stream(name), events, expected).await }
    }))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_mixed_appends_behaves_as_if_run_one_by_one() {
    if !support::postgres_available("a_burst_of_mixed_appends_behaves_as_if_run_one_by_one").await {
        return;
    }
    let (store, _schema) = support::fresh_store(|c| c).await;
    let store = Arc::new(store);
    let existing = events(2);
    let first = store
        .append(&stream("a"), existing.clone(), ExpectedVersion::NoStream)
        .await
        .unwrap();
    assert_eq!(first.last_position, 2);

    let shared = NewEvent::new("Shared").with_id(Uuid::now_v7());
    for round in 0..20 {
        let before = store.write_stats();
        let results = burst(
            &store,
            vec![
                // The same stream three times: each sees the one before.
                ("b", events(1), ExpectedVersion::Any),
                ("b", events(2), ExpectedVersion::Any),
                ("b", events(1), ExpectedVersion::Any),
                // Two racing to create one stream: exactly one wins.
                ("c", events(1), ExpectedVersion::NoStream),
                ("c", events(1), ExpectedVersion::NoStream),
                // A stale expectation, a matching one, one on a missing stream.
                ("a", events(1), ExpectedVersion::Exact(0)),
                ("d", events(3), ExpectedVersion::Any),
                ("e", events(1), ExpectedVersion::StreamExists),
                // An idempotent retry of the first append, and an append reusing its ids elsewhere.
                ("a", existing.clone(), ExpectedVersion::NoStream),
                ("f", vec![existing[0].clone()], ExpectedVersion::Any),
                // Two appends sharing an id in one burst: the first stores it, the second repeats it (an
                // idempotent retry when it targets the same stream at the same place, else a duplicate).
                ("g", vec![shared.clone()], ExpectedVersion::Any),
                ("h", vec![shared.clone()], ExpectedVersion::Any),
            ],
        )
        .await;
        let after = store.write_stats();
        let (requests, transactions) = (
            after.requests - before.requests,
            after.transactions - before.transactions,
        );
        assert_eq!(requests, 12);
        assert!(transactions <= 12);

        let ok = |i: usize| results[i].as_ref().unwrap_or_else(|e| panic!("{i}: {e}"));
        // Stream b: three appends, contiguous versions in request order.
        let b0 = (round * 4) as u64;
        assert_eq!(
            (
                ok(0).first_version,
                ok(1).first_version,
                ok(2).first_version
            ),
            (b0, b0 + 1, b0 + 3)
        );
        // Stream c: only the first round creates it, and then only one of the two.
        let c_wins = results[3..5].iter().filter(|r| r.is_ok()).count();
        assert_eq!(c_wins, usize::from(round == 0), "round {round}");
        for r in &results[3..5] {
            if let Err(e) = r {
                assert!(matches!(e, Error::WrongExpectedVersion { .. }), "{e}");
            }
        }
        assert!(matches!(
            results[5],
            Err(Error::WrongExpectedVersion { .. })
        ));
        assert_eq!(ok(6).last_version - ok(6).first_version, 2);
        assert!(matches!(
            results[7],
            Err(Error::WrongExpectedVersion { .. })
        ));
        assert_eq!(
            ok(8),
            &first,
            "idempotent retry answers the original result"
        );
        assert!(matches!(results[9], Err(Error::DuplicateEvent { .. })));
        // Later rounds repeat g's append exactly: idempotent retries of the first.
        assert_eq!((ok(10).first_version, ok(10).stream.as_str()), (0, "g"));
        assert!(matches!(results[11], Err(Error::DuplicateEvent { .. })));
    }
    // The bursts were batched (several appends per transaction, so per statement), or this test proved
    // nothing about batches.
    let stats = store.write_stats();
    assert!(
        stats.transactions * 2 < stats.requests,
        "too few appends shared a transaction: {stats:?}"
    );
    // The log: gap-free, every event where its append said.
    let all = store.read_to_vec(ReadQuery::all()).await.unwrap();
    let mut by_position = HashMap::new();
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e.position, i as u64 + 1, "hole in the global order");
        by_position.insert(e.position, e);
    }
    assert_eq!(store.watch_head().borrow().position, all.len() as u64);
    assert_eq!(
        store.stream_version(&stream("b")).await.unwrap(),
        Some(20 * 4 - 1)
    );
    let b = store
        .read_to_vec(ReadQuery::stream(stream("b")))
        .await
        .unwrap();
    for (v, e) in b.iter().enumerate() {
        assert_eq!(e.version, v as u64);
        assert_eq!(by_position[&e.position].id, e.id);
    }
}

/// The server ends every connection of the store (as a restart or failover would): appends in flight fail
/// as unavailable (transient) or succeed, nothing is half-written, and the writer and notifier reconnect by
/// themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_reconnects_after_its_connections_are_killed() {
    if !support::postgres_available("the_writer_reconnects_after_its_connections_are_killed").await
    {
        return;
    }
    let schema = support::TestSchema::new();
    // A name of its own, so that only this store's connections are ended (tests run in parallel).
    let app = format!("herald_kill_{}", &schema.name()[12..24]);
    let url = format!("{}?application_name={app}", support::database_url());
    let store = Arc::new(
        herald_postgres::PostgresStore::open(&url, schema.config())
            .await
            .unwrap(),
    );
    let (admin, connection) =
        tokio_postgres::connect(&support::database_url(), tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(connection);
    let mut committed = 0u64;
    for round in 0..5 {
        // A burst in flight while the connections are ended.
        let burst = futures::future::join_all((0..16).map(|i| {
            let store = Arc::clone(&store);
            async move {
                store
                    .append(
                        &stream(&format!("k-{round}-{i}")),
                        events(1),
                        ExpectedVersion::NoStream,
                    )
                    .await
            }
        }));
        let app_param: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&app];
        let kill = admin.query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &app_param,
        );
        let (results, killed) = tokio::join!(burst, kill);
        // At least the writer was connected (the listener, notifier and readers may be between connections:
        // they reconnect on their own schedule).
        let killed = killed.unwrap();
        assert!(!killed.is_empty(), "no connection of the store was ended");
        for r in results {
            match r {
                Ok(_) => committed += 1,
                // A connection ended under a request is the server being unavailable.
                Err(e) => assert!(matches!(e, Error::Unavailable { .. }), "{e}"),
            }
        }
        // Afterwards the store works again within a few attempts (the first may still meet the dead
        // connection before the writer has noticed it is gone).
        let mut attempts = 0;
        loop {
            attempts += 1;
            match store
                .append(&stream("after"), events(1), ExpectedVersion::Any)
                .await
            {
                Ok(_) => {
                    committed += 1;
                    break;
                }
                Err(e) => {
                    assert!(matches!(e, Error::Unavailable { .. }), "{e}");
                    assert!(attempts < 5, "the writer does not recover: {e}");
                }
            }
        }
    }
    let all = store.read_to_vec(ReadQuery::all()).await.unwrap();
    assert_eq!(
        all.len() as u64,
        committed,
        "every acknowledged append, nothing else"
    );
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e.position, i as u64 + 1, "hole in the global order");
    }
}

/// A writer that was alone decides its next batch from memory in one round trip (lock, guard, writes,
/// `COMMIT`); the guard must catch every change another writer made meanwhile: appends (the log moved on),
/// and links and deletes, which leave the end of the log where it was. Each time, the stale writer's append
/// must land exactly where a fresh look-up would put it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_deciding_from_memory_sees_what_other_writers_changed() {
    if !support::postgres_available("a_writer_deciding_from_memory_sees_what_other_writers_changed")
        .await
    {
        return;
    }
    let (a, schema) = support::fresh_store(|c| c).await;
    let b = herald_postgres::PostgresStore::open(&support::database_url(), schema.config())
        .await
        .unwrap();
    let s = stream("shared");
    // `a` alone for a while: from the third batch on it decides from memory.
    for v in 0..4u64 {
        let r = a.append(&s, events(1), ExpectedVersion::Any).await.unwrap();
        assert_eq!((r.first_version, r.first_position), (v, v + 1));
    }

    // Another writer appends: the log's end moved.
    let by_b = b
        .append(&s, events(2), ExpectedVersion::Exact(3))
        .await
        .unwrap();
    assert_eq!((by_b.first_version, by_b.first_position), (4, 5));
    let r = a.append(&s, events(1), ExpectedVersion::Any).await.unwrap();
    assert_eq!((r.first_version, r.first_position), (6, 7));
    // Its memory is right again after the look-up; an `Exact` from memory works.
    let r = a
        .append(&s, events(1), ExpectedVersion::Exact(6))
        .await
        .unwrap();
    assert_eq!((r.first_version, r.first_position), (7, 8));
    let r = a
        .append(&s, events(1), ExpectedVersion::Exact(7))
        .await
        .unwrap();
    assert_eq!((r.first_version, r.first_position), (8, 9));

    // Another writer links into the stream: the log's end stays, the stream's version moves.
    let other = a
        .append(&stream("other"), events(1), ExpectedVersion::NoStream)
        .await
        .unwrap();
    let linked = b
        .link(&s, &other.ids, ExpectedVersion::Exact(8))
        .await
        .unwrap();
    assert_eq!(linked.first_version, 9);
    let stale = a
        .append(&s, events(1), ExpectedVersion::Exact(8))
        .await
        .unwrap_err();
    assert!(
        matches!(
            stale,
            Error::WrongExpectedVersion {
                actual: Some(9),
                ..
            }
        ),
        "{stale}"
    );
    let r = a.append(&s, events(1), ExpectedVersion::Any).await.unwrap();
    assert_eq!((r.first_version, r.first_position), (10, 11));
    for v in 11..14u64 {
        a.append(&s, events(1), ExpectedVersion::Exact(v - 1))
            .await
            .unwrap();
    }

    // Another writer deletes the stream: the log's end stays, the stream is gone.
    b.delete_stream(&s, ExpectedVersion::Exact(13))
        .await
        .unwrap();
    let r = a.append(&s, events(1), ExpectedVersion::Any).await.unwrap();
    assert_eq!(
        r.first_version, 0,
        "a deleted stream starts again at version 0"
    );
    let read = a.read_to_vec(ReadQuery::stream(s.clone())).await.unwrap();
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].id, r.ids[0]);

    // A guess from the expectation (a stream `a` never saw) that is wrong: refused, nothing written.
    let fresh = stream("made-by-b");
    b.append(&fresh, events(1), ExpectedVersion::NoStream)
        .await
        .unwrap();
    for _ in 0..3 {
        a.append(&stream("a-only"), events(1), ExpectedVersion::Any)
            .await
            .unwrap();
    }
    let before = a.watch_head().borrow().position;
    let wrong = a
        .append(&fresh, events(1), ExpectedVersion::NoStream)
        .await
        .unwrap_err();
    assert!(
        matches!(
            wrong,
            Error::WrongExpectedVersion {
                actual: Some(0),
                ..
            }
        ),
        "{wrong}"
    );
    assert_eq!(a.watch_head().borrow().position, before);

    // The paths this test is about were taken: batches decided from memory, and stale memories caught.
    let stats = a.write_stats();
    assert!(stats.one_round_trip >= 5, "{stats:?}");
    assert!(stats.transactions > stats.one_round_trip, "{stats:?}");

    // The whole log: gap-free, every event once.
    let all = a.read_to_vec(ReadQuery::all()).await.unwrap();
    let positions: Vec<u64> = all.iter().map(|e| e.position).collect();
    assert_eq!(positions, (1..=all.len() as u64).collect::<Vec<_>>());
}
