//! Event ids: idempotent retries of a committed append, and every other reuse of an id as a duplicate.

use herald_core::{EventStore, ExpectedVersion, NewEvent};

use crate::Capabilities;
use crate::support::*;

/// Repeating a committed append exactly returns the original result and writes nothing.
pub async fn exact_retry_returns_the_original_result(store: Store, _caps: Capabilities) {
    append_n(&store, "s", 2).await;
    let batch = events(3);
    let first = append(&store, "s", batch.clone()).await;
    let before = snapshot(&store).await;
    let again = append(&store, "s", batch).await;
    assert_eq!(again, first);
    assert_eq!((again.first_version, again.first_position), (2, 3));
    assert_unchanged(&store, &before, "an idempotent retry").await;
}

/// A retry is not re-checked against the expected version: `NoStream` retried after the stream exists
/// still returns the original result.
pub async fn retry_ignores_the_expected_version(store: Store, _caps: Capabilities) {
    let batch = events(2);
    let first = store
        .append(&stream("s"), batch.clone(), ExpectedVersion::NoStream)
        .await
        .unwrap();
    let again = store
        .append(&stream("s"), batch.clone(), ExpectedVersion::NoStream)
        .await
        .unwrap();
    assert_eq!(again, first);
    let again = store
        .append(&stream("s"), batch, ExpectedVersion::Exact(0))
        .await
        .unwrap();
    assert_eq!(again, first);
    assert_eq!(read_all(&store).await.len(), 2);
}

/// A retry after later appends (to the same and other streams) still returns the original result.
pub async fn retry_after_later_appends_returns_the_original(store: Store, _caps: Capabilities) {
    let batch = events(2);
    let first = append(&store, "s", batch.clone()).await;
    append_n(&store, "s", 3).await;
    append_n(&store, "t", 1).await;
    let before = snapshot(&store).await;
    assert_eq!(append(&store, "s", batch).await, first);
    assert_unchanged(&store, &before, "a late retry").await;
}

/// A retry of a single-event append returns its original version and position.
pub async fn single_event_retry_is_idempotent(store: Store, _caps: Capabilities) {
    append_n(&store, "other", 4).await;
    let e = NewEvent::new("T");
    let first = append(&store, "s", vec![e.clone()]).await;
    assert_eq!(append(&store, "s", vec![e]).await, first);
    assert_eq!((first.first_version, first.first_position), (0, 5));
    assert_eq!(read_all(&store).await.len(), 5);
}

/// New ids alongside an already stored one (partial overlap) are a duplicate naming the stored id; the new
/// events are not written.
pub async fn partial_overlap_is_a_duplicate(store: Store, _caps: Capabilities) {
    let old = NewEvent::new("T");
    append(&store, "s", vec![old.clone()]).await;
    let fresh = NewEvent::new("T");
    let before = snapshot(&store).await;
    assert_duplicate(
        store
            .append(
                &stream("s"),
                vec![old.clone(), fresh.clone()],
                ExpectedVersion::Any,
            )
            .await,
        old.id,
        "s",
    );
    assert_duplicate(
        store
            .append(
                &stream("s"),
                vec![fresh.clone(), old.clone()],
                ExpectedVersion::Any,
            )
            .await,
        old.id,
        "s",
    );
    assert_unchanged(&store, &before, "a partially overlapping append").await;
    assert!(store.event(fresh.id).await.unwrap().is_none());
}

/// Extending a committed append with more events (a superset) is a duplicate, not a retry.
pub async fn superset_of_a_committed_append_is_a_duplicate(store: Store, _caps: Capabilities) {
    let batch = events(2);
    append(&store, "s", batch.clone()).await;
    let mut more = batch.clone();
    more.push(NewEvent::new("T"));
    let before = snapshot(&store).await;
    assert_duplicate(
        store.append(&stream("s"), more, ExpectedVersion::Any).await,
        batch[0].id,
        "s",
    );
    assert_unchanged(&store, &before, "a superset append").await;
}

/// Reusing an id in another stream is a duplicate naming the id and the stream aimed at.
pub async fn same_id_in_another_stream_is_a_duplicate(store: Store, _caps: Capabilities) {
    let e = NewEvent::new("T");
    append(&store, "a", vec![e.clone()]).await;
    let before = snapshot(&store).await;
    assert_duplicate(
        store
            .append(&stream("b"), vec![e.clone()], ExpectedVersion::Any)
            .await,
        e.id,
        "b",
    );
    assert_unchanged(&store, &before, "an append reusing an id in another stream").await;
    assert_eq!(store.stream_version(&stream("b")).await.unwrap(), None);
}

/// The same ids in another order are a duplicate, not a retry.
pub async fn reordered_retry_is_a_duplicate(store: Store, _caps: Capabilities) {
    let batch = events(3);
    append(&store, "s", batch.clone()).await;
    let mut reordered = batch.clone();
    reordered.swap(0, 2);
    let before = snapshot(&store).await;
    assert_duplicate_of_any(
        store
            .append(&stream("s"), reordered, ExpectedVersion::Any)
            .await,
        &new_ids(&batch),
        "s",
    );
    assert_duplicate_of_any(
        store
            .append(
                &stream("s"),
                vec![batch[2].clone(), batch[1].clone()],
                ExpectedVersion::Any,
            )
            .await,
        &new_ids(&batch),
        "s",
    );
    assert_unchanged(&store, &before, "a reordered retry").await;
}

/// The same id twice in one append is a duplicate; nothing is written.
pub async fn same_id_twice_in_one_append_is_a_duplicate(store: Store, _caps: Capabilities) {
    let e = NewEvent::new("T");
    let before = snapshot(&store).await;
    assert_duplicate(
        store
            .append(
                &stream("s"),
                vec![e.clone(), NewEvent::new("U"), e.clone()],
                ExpectedVersion::Any,
            )
            .await,
        e.id,
        "s",
    );
    assert_unchanged(&store, &before, "an append with an id twice").await;
}

/// An append reusing the id of an event linked into the target stream is a duplicate.
pub async fn reusing_a_linked_events_id_is_a_duplicate(store: Store, _caps: Capabilities) {
    let e = NewEvent::new("T");
    append(&store, "origin", vec![e.clone()]).await;
    store
        .link(&stream("target"), &[e.id], ExpectedVersion::Any)
        .await
        .unwrap();
    let before = snapshot(&store).await;
    assert_duplicate(
        store
            .append(&stream("target"), vec![e.clone()], ExpectedVersion::Any)
            .await,
        e.id,
        "target",
    );
    assert_unchanged(&store, &before, "an append reusing a linked id").await;
}

/// After a stream is deleted, appending its old events again is a duplicate: the ids still belong to the
/// events kept in the global log.
pub async fn retry_after_delete_is_a_duplicate(store: Store, _caps: Capabilities) {
    let batch = events(2);
    append(&store, "s", batch.clone()).await;
    store
        .delete_stream(&stream("s"), ExpectedVersion::Any)
        .await
        .unwrap();
    let before = snapshot(&store).await;
    assert_duplicate(
        store
            .append(&stream("s"), batch.clone(), ExpectedVersion::Any)
            .await,
        batch[0].id,
        "s",
    );
    assert_unchanged(&store, &before, "re-appending a deleted stream's events").await;
}

/// A rejected duplicate keeps the original event intact and consumes no position.
pub async fn duplicate_keeps_the_original_and_leaves_no_gap(store: Store, _caps: Capabilities) {
    let e = NewEvent::new("Original").with_data(r#"{"v":1}"#);
    append(&store, "a", vec![e.clone()]).await;
    let impostor = e.clone().with_data(r#"{"v":2}"#);
    assert_duplicate(
        store
            .append(&stream("b"), vec![impostor], ExpectedVersion::Any)
            .await,
        e.id,
        "b",
    );
    let stored = store.event(e.id).await.unwrap().unwrap();
    assert_eq!(
        (stored.stream.as_str(), stored.data.as_str()),
        ("a", r#"{"v":1}"#)
    );
    assert_eq!(append_n(&store, "c", 1).await.first_position, 2);
}

/// Ids are unique across the store, not per stream: 200 events in 20 streams all keep their own id.
pub async fn ids_are_unique_across_streams(store: Store, _caps: Capabilities) {
    let mut all = Vec::new();
    for i in 0..20 {
        let batch = events(10);
        all.extend(new_ids(&batch));
        append(&store, &format!("s-{i}"), batch).await;
    }
    assert_eq!(ids(&read_all(&store).await), all);
}
