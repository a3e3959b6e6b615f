//! Expected versions, each variant on a new, an existing and a deleted stream, and racing writers.

use std::sync::Arc;

use herald_core::{Error, EventStore, ExpectedVersion, NewEvent, version::MAX_VERSION};

use crate::Capabilities;
use crate::support::*;

async fn try_append(
    store: &Store,
    name: &str,
    expected: ExpectedVersion,
) -> herald_core::Result<herald_core::AppendResult> {
    store
        .append(&stream(name), vec![NewEvent::new("T")], expected)
        .await
}

async fn deleted(store: &Store, name: &str) {
    append_n(store, name, 2).await;
    store
        .delete_stream(&stream(name), ExpectedVersion::Any)
        .await
        .unwrap();
}

/// `NoStream` on a stream that does not exist succeeds at version 0.
pub async fn no_stream_on_new_stream_succeeds(store: Store, _caps: Capabilities) {
    let r = try_append(&store, "s", ExpectedVersion::NoStream)
        .await
        .unwrap();
    assert_eq!(r.first_version, 0);
}

/// `NoStream` on an existing stream fails, naming the stream, `no-stream` and the actual version.
pub async fn no_stream_on_existing_stream_fails(store: Store, _caps: Capabilities) {
    append_n(&store, "s", 3).await;
    let before = snapshot(&store).await;
    assert_wrong_version(
        try_append(&store, "s", ExpectedVersion::NoStream).await,
        "s",
        ExpectedVersion::NoStream,
        Some(2),
    );
    assert_unchanged(&store, &before, "a failed NoStream append").await;
}

/// `NoStream` on a deleted stream succeeds and starts again at version 0.
pub async fn no_stream_on_deleted_stream_succeeds(store: Store, _caps: Capabilities) {
    deleted(&store, "s").await;
    let r = try_append(&store, "s", ExpectedVersion::NoStream)
        .await
        .unwrap();
    assert_eq!((r.first_version, r.first_position), (0, 3));
}

/// `StreamExists` on a stream that does not exist fails with actual "no stream".
pub async fn stream_exists_on_new_stream_fails(store: Store, _caps: Capabilities) {
    let before = snapshot(&store).await;
    assert_wrong_version(
        try_append(&store, "s", ExpectedVersion::StreamExists).await,
        "s",
        ExpectedVersion::StreamExists,
        None,
    );
    assert_unchanged(&store, &before, "a failed StreamExists append").await;
}

/// `StreamExists` on an existing stream succeeds.
pub async fn stream_exists_on_existing_stream_succeeds(store: Store, _caps: Capabilities) {
    append_n(&store, "s", 1).await;
    let r = try_append(&store, "s", ExpectedVersion::StreamExists)
        .await
        .unwrap();
    assert_eq!(r.first_version, 1);
}

/// `StreamExists` on a deleted stream fails: a deleted stream does not exist.
pub async fn stream_exists_on_deleted_stream_fails(store: Store, _caps: Capabilities) {
    deleted(&store, "s").await;
    assert_wrong_version(
        try_append(&store, "s", ExpectedVersion::StreamExists).await,
        "s",
        ExpectedVersion::StreamExists,
        None,
    );
}

/// `Exact(v)` at the current version succeeds, and chains: each append expects the previous one's version.
pub async fn exact_current_version_succeeds_and_chains(store: Store, _caps: Capabilities) {
    let mut r = try_append(&store, "s", ExpectedVersion::NoStream)
        .await
        .unwrap();
    for _ in 0..5 {
        r = try_append(&store, "s", ExpectedVersion::Exact(r.last_version))
            .await
            .unwrap();
    }
    assert_eq!(r.last_version, 5);
}

/// `Exact(v)` below the current version fails, naming expected and actual.
pub async fn exact_stale_version_fails(store: Store, _caps: Capabilities) {
    append_n(&store, "s", 4).await;
    let before = snapshot(&store).await;
    assert_wrong_version(
        try_append(&store, "s", ExpectedVersion::Exact(1)).await,
        "s",
        ExpectedVersion::Exact(1),
        Some(3),
    );
    assert_unchanged(&store, &before, "a stale Exact append").await;
}

/// `Exact(v)` above the current version fails.
pub async fn exact_future_version_fails(store: Store, _caps: Capabilities) {
    append_n(&store, "s", 1).await;
    assert_wrong_version(
        try_append(&store, "s", ExpectedVersion::Exact(1)).await,
        "s",
        ExpectedVersion::Exact(1),
        Some(0),
    );
}

/// `Exact(0)` on a stream that does not exist fails with actual "no stream" (version 0 is the first event).
pub async fn exact_zero_on_new_stream_fails(store: Store, _caps: Capabilities) {
    assert_wrong_version(
        try_append(&store, "s", ExpectedVersion::Exact(0)).await,
        "s",
        ExpectedVersion::Exact(0),
        None,
    );
    assert_eq!(read_all(&store).await.len(), 0);
}

/// After a delete, `Exact` with the old version fails: the version was reset.
pub async fn exact_old_version_on_deleted_stream_fails(store: Store, _caps: Capabilities) {
    deleted(&store, "s").await;
    assert_wrong_version(
        try_append(&store, "s", ExpectedVersion::Exact(1)).await,
        "s",
        ExpectedVersion::Exact(1),
        None,
    );
}

/// `Any` succeeds on a new, an existing and a deleted stream.
pub async fn any_succeeds_on_new_existing_and_deleted_streams(store: Store, _caps: Capabilities) {
    assert_eq!(
        try_append(&store, "new", ExpectedVersion::Any)
            .await
            .unwrap()
            .first_version,
        0
    );
    append_n(&store, "existing", 2).await;
    assert_eq!(
        try_append(&store, "existing", ExpectedVersion::Any)
            .await
            .unwrap()
            .first_version,
        2
    );
    deleted(&store, "gone").await;
    assert_eq!(
        try_append(&store, "gone", ExpectedVersion::Any)
            .await
            .unwrap()
            .first_version,
        0
    );
}

/// A failed check on a multi-event append writes none of its events and consumes no position.
pub async fn failed_check_writes_nothing_and_consumes_no_position(
    store: Store,
    _caps: Capabilities,
) {
    append_n(&store, "s", 1).await;
    let batch = events(3);
    let rejected = new_ids(&batch);
    let before = snapshot(&store).await;
    assert_wrong_version(
        store
            .append(&stream("s"), batch, ExpectedVersion::Exact(7))
            .await,
        "s",
        ExpectedVersion::Exact(7),
        Some(0),
    );
    assert_unchanged(&store, &before, "a failed multi-event append").await;
    for id in rejected {
        assert!(store.event(id).await.unwrap().is_none());
    }
    let r = append_n(&store, "t", 1).await;
    assert_eq!(r.first_position, 2, "a failed append must not leave a gap");
}

/// An expected version beyond what a backend can store is invalid input, not a conflict.
pub async fn exact_out_of_range_is_invalid(store: Store, _caps: Capabilities) {
    assert_invalid(
        try_append(&store, "s", ExpectedVersion::Exact(MAX_VERSION + 1)).await,
        &["expected version", "out of range"],
    );
    assert_invalid(
        try_append(&store, "s", ExpectedVersion::Exact(u64::MAX)).await,
        &["out of range"],
    );
    assert_eq!(read_all(&store).await.len(), 0);
}

/// The conflict message reads `wrong expected version for stream `s`: expected N, actual M`.
pub async fn conflict_message_names_stream_expected_and_actual(store: Store, _caps: Capabilities) {
    append_n(&store, "order-7", 6).await;
    let err = try_append(&store, "order-7", ExpectedVersion::Exact(2))
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(message.contains("order-7"), "{message}");
    assert!(message.contains("expected 2"), "{message}");
    assert!(message.contains("actual 5"), "{message}");
}

/// N writers racing with the same `Exact(v)`: exactly one wins, every other gets WrongExpectedVersion
/// naming the stream, `v`, and the winner's version.
pub async fn racing_exact_writers_have_one_winner(store: Store, _caps: Capabilities) {
    append_n(&store, "race", 3).await;
    let writers = 8;
    let barrier = Arc::new(tokio::sync::Barrier::new(writers));
    let tasks: Vec<_> = (0..writers)
        .map(|_| {
            let store = store.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                store
                    .append(&stream("race"), events(2), ExpectedVersion::Exact(2))
                    .await
            })
        })
        .collect();
    let mut winners = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(r) => {
                winners += 1;
                assert_eq!((r.first_version, r.last_version), (3, 4));
            }
            other => assert_wrong_version(other, "race", ExpectedVersion::Exact(2), Some(4)),
        }
    }
    assert_eq!(winners, 1, "exactly one Exact(2) writer wins");
    assert_eq!(read_stream(&store, "race").await.len(), 5);
    assert_eq!(read_all(&store).await.len(), 5);
}

/// N writers racing with `NoStream` on a new stream: exactly one creates it.
pub async fn racing_no_stream_writers_have_one_winner(store: Store, _caps: Capabilities) {
    let writers = 8;
    let barrier = Arc::new(tokio::sync::Barrier::new(writers));
    let tasks: Vec<_> = (0..writers)
        .map(|_| {
            let store = store.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                store
                    .append(&stream("fresh"), events(1), ExpectedVersion::NoStream)
                    .await
            })
        })
        .collect();
    let mut winners = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(r) => {
                winners += 1;
                assert_eq!(r.first_version, 0);
            }
            other => assert_wrong_version(other, "fresh", ExpectedVersion::NoStream, Some(0)),
        }
    }
    assert_eq!(winners, 1);
    assert_eq!(read_all(&store).await.len(), 1);
}

/// Racing `Any` appends to one stream all land, with distinct contiguous versions and positions.
pub async fn racing_any_writers_all_land(store: Store, _caps: Capabilities) {
    let writers = 16;
    let per_writer = 5;
    let barrier = Arc::new(tokio::sync::Barrier::new(writers));
    let tasks: Vec<_> = (0..writers)
        .map(|_| {
            let store = store.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                let mut results = Vec::new();
                for _ in 0..per_writer {
                    results.push(
                        store
                            .append(&stream("hot"), events(2), ExpectedVersion::Any)
                            .await
                            .unwrap(),
                    );
                }
                results
            })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.extend(task.await.unwrap());
    }
    let total = (writers * per_writer * 2) as u64;
    let mut vs: Vec<u64> = results
        .iter()
        .flat_map(|r| [r.first_version, r.last_version])
        .collect();
    vs.sort_unstable();
    vs.dedup();
    assert_eq!(vs, (0..total).collect::<Vec<_>>(), "versions are distinct");
    for r in &results {
        assert_eq!(r.last_version, r.first_version + 1);
        assert_eq!(r.last_position, r.first_position + 1);
    }
    let read = read_stream(&store, "hot").await;
    assert_eq!(versions(&read), (0..total).collect::<Vec<_>>());
    assert_eq!(positions(&read), (1..=total).collect::<Vec<_>>());
}

/// A conflict is an error value, never a panic: the store keeps working after many conflicts.
pub async fn store_keeps_working_after_conflicts(store: Store, _caps: Capabilities) {
    append_n(&store, "s", 1).await;
    for v in 1..20 {
        let err = try_append(&store, "s", ExpectedVersion::Exact(v))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::WrongExpectedVersion { .. }), "{err}");
    }
    let r = try_append(&store, "s", ExpectedVersion::Exact(0))
        .await
        .unwrap();
    assert_eq!((r.first_version, r.first_position), (1, 2));
}
