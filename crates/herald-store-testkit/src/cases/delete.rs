//! Deleting a stream: its entries go, its version resets; the global log, categories, ids and links from
//! other streams keep the events.

use herald_core::{EventStore, ExpectedVersion, Origin, ReadQuery};

use crate::Capabilities;
use crate::support::*;

async fn delete(store: &Store, name: &str) {
    store
        .delete_stream(&stream(name), ExpectedVersion::Any)
        .await
        .unwrap_or_else(|e| panic!("deleting {name}: {e}"));
}

/// A deleted stream reads as empty and has no version.
pub async fn deleted_stream_reads_empty(store: Store, _caps: Capabilities) {
    append_n(&store, "s", 3).await;
    delete(&store, "s").await;
    assert!(read_stream(&store, "s").await.is_empty());
    assert!(
        read(&store, ReadQuery::stream(stream("s")).backward())
            .await
            .is_empty()
    );
    assert_eq!(store.stream_version(&stream("s")).await.unwrap(), None);
}

/// A deleted stream can be written again from version 0, and reads only its new events.
pub async fn deleted_stream_is_recreated_from_version_0(store: Store, _caps: Capabilities) {
    let old = append_n(&store, "s", 3).await;
    delete(&store, "s").await;
    let new = store
        .append(&stream("s"), events(2), ExpectedVersion::NoStream)
        .await
        .unwrap();
    assert_eq!((new.first_version, new.last_version), (0, 1));
    assert_eq!((new.first_position, new.last_position), (4, 5));
    let read = read_stream(&store, "s").await;
    assert_eq!(ids(&read), new.ids);
    assert_eq!(versions(&read), vec![0, 1]);
    // The old events keep the place they were appended at.
    let first = store.event(old.ids[0]).await.unwrap().unwrap();
    assert_eq!(
        (first.stream.as_str(), first.version, first.position),
        ("s", 0, 1)
    );
}

/// A deleted stream's events stay readable by id and in the global log, as appended.
pub async fn events_stay_by_id_and_in_the_global_log(store: Store, _caps: Capabilities) {
    let a = append_n(&store, "s", 2).await;
    delete(&store, "s").await;
    for (i, id) in a.ids.iter().enumerate() {
        let e = store.event(*id).await.unwrap().expect("still there by id");
        assert_eq!((e.stream.as_str(), e.version), ("s", i as u64));
    }
    assert_eq!(ids(&read_all(&store).await), a.ids);
}

/// A deleted stream's events stay in its category's read.
pub async fn events_stay_in_the_category(store: Store, _caps: Capabilities) {
    let a = append_n(&store, "c-1", 2).await;
    let b = append_n(&store, "c-2", 1).await;
    delete(&store, "c-1").await;
    let cat = read(&store, ReadQuery::category("c")).await;
    assert_eq!(ids(&cat), [a.ids.clone(), b.ids].concat());
}

/// Links from other streams to a deleted stream's events still resolve, with their origin.
pub async fn links_from_elsewhere_still_resolve(store: Store, _caps: Capabilities) {
    let a = append_n(&store, "s", 2).await;
    store
        .link(&stream("l"), &a.ids, ExpectedVersion::Any)
        .await
        .unwrap();
    delete(&store, "s").await;
    let read = read_stream(&store, "l").await;
    assert_eq!(ids(&read), a.ids);
    assert_eq!(
        read[1].origin,
        Some(Origin {
            stream: "s".into(),
            version: 1
        })
    );
    assert_eq!(store.stream_version(&stream("l")).await.unwrap(), Some(1));
}

/// Deleting one stream leaves every other stream untouched.
pub async fn other_streams_are_untouched(store: Store, _caps: Capabilities) {
    append_n(&store, "s", 2).await;
    let t = append_n(&store, "t", 2).await;
    let s1 = append_n(&store, "s-1", 1).await;
    delete(&store, "s").await;
    assert_eq!(ids(&read_stream(&store, "t").await), t.ids);
    assert_eq!(ids(&read_stream(&store, "s-1").await), s1.ids);
    assert_eq!(store.stream_version(&stream("t")).await.unwrap(), Some(1));
}

/// Deleting a stream that does not exist is a no-op with `Any` and `NoStream`, and a conflict with
/// `StreamExists` or `Exact`.
pub async fn deleting_a_missing_stream(store: Store, _caps: Capabilities) {
    append_n(&store, "other", 1).await;
    let before = snapshot(&store).await;
    for expected in [ExpectedVersion::Any, ExpectedVersion::NoStream] {
        store
            .delete_stream(&stream("missing"), expected)
            .await
            .unwrap();
    }
    for expected in [ExpectedVersion::StreamExists, ExpectedVersion::Exact(0)] {
        assert_wrong_version(
            store.delete_stream(&stream("missing"), expected).await,
            "missing",
            expected,
            None,
        );
    }
    assert_unchanged(&store, &before, "deleting a missing stream").await;
}

/// Delete checks the expected version; a wrong one names stream, expected and actual and deletes nothing.
pub async fn delete_checks_the_expected_version(store: Store, _caps: Capabilities) {
    append_n(&store, "s", 3).await;
    let before = snapshot(&store).await;
    assert_wrong_version(
        store
            .delete_stream(&stream("s"), ExpectedVersion::Exact(1))
            .await,
        "s",
        ExpectedVersion::Exact(1),
        Some(2),
    );
    assert_wrong_version(
        store
            .delete_stream(&stream("s"), ExpectedVersion::NoStream)
            .await,
        "s",
        ExpectedVersion::NoStream,
        Some(2),
    );
    assert_unchanged(&store, &before, "a delete with a wrong expected version").await;
    store
        .delete_stream(&stream("s"), ExpectedVersion::Exact(2))
        .await
        .unwrap();
    assert_eq!(store.stream_version(&stream("s")).await.unwrap(), None);
}

/// Deleting twice: the second delete is a no-op with `Any`, a conflict with `StreamExists`.
pub async fn deleting_twice(store: Store, _caps: Capabilities) {
    append_n(&store, "s", 1).await;
    delete(&store, "s").await;
    delete(&store, "s").await;
    assert_wrong_version(
        store
            .delete_stream(&stream("s"), ExpectedVersion::StreamExists)
            .await,
        "s",
        ExpectedVersion::StreamExists,
        None,
    );
}

/// A deleted stream is absent from the streams listing, and back once written again.
pub async fn deleted_stream_leaves_the_listing(store: Store, _caps: Capabilities) {
    append_n(&store, "a", 1).await;
    append_n(&store, "b", 1).await;
    delete(&store, "a").await;
    let names: Vec<_> = store
        .streams("", None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.stream)
        .collect();
    assert_eq!(names, vec!["b"]);
    append_n(&store, "a", 1).await;
    let listed = store.streams("", None, 10).await.unwrap();
    assert_eq!(listed[0].stream, "a");
    assert_eq!(listed[0].version, 0);
}

/// Deleting a stream removes its links too; the linked events stay in their own streams.
pub async fn deleting_removes_links_only_from_that_stream(store: Store, _caps: Capabilities) {
    let a = append_n(&store, "a", 2).await;
    store
        .link(&stream("mixed"), &a.ids, ExpectedVersion::Any)
        .await
        .unwrap();
    append_n(&store, "mixed", 1).await;
    delete(&store, "mixed").await;
    assert!(read_stream(&store, "mixed").await.is_empty());
    assert_eq!(ids(&read_stream(&store, "a").await), a.ids);
    // The events can be linked into the recreated stream again: it no longer holds them.
    let r = store
        .link(&stream("mixed"), &a.ids, ExpectedVersion::NoStream)
        .await
        .unwrap();
    assert_eq!((r.first_version, r.last_version), (0, 1));
}

/// An event appended to a stream, which is deleted, can be linked back into it (it no longer holds it).
pub async fn deleted_events_can_be_linked_back(store: Store, _caps: Capabilities) {
    let a = append_n(&store, "s", 1).await;
    delete(&store, "s").await;
    store
        .link(&stream("s"), &a.ids, ExpectedVersion::NoStream)
        .await
        .unwrap();
    let read = read_stream(&store, "s").await;
    assert_eq!(ids(&read), a.ids);
    assert_eq!(
        read[0].origin,
        Some(Origin {
            stream: "s".into(),
            version: 0
        }),
        "the old place in the stream is the origin"
    );
}
