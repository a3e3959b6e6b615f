//! Point lookups: an event by id, a stream's version.

use herald_core::uuid::Uuid;
use herald_core::{EventStore, ExpectedVersion, NewEvent};

use crate::Capabilities;
use crate::support::*;

/// `event(id)` returns the event as appended, with every field.
pub async fn event_by_id_returns_the_event(store: Store, _caps: Capabilities) {
    append_n(&store, "other", 2).await;
    let e = NewEvent::new("Found")
        .with_data(r#"{"k":[1,2]}"#)
        .with_metadata(r#"{"m":true}"#);
    append_n(&store, "s", 1).await;
    append(&store, "s", vec![e.clone()]).await;
    let got = store.event(e.id).await.unwrap().unwrap();
    assert_eq!(got.id, e.id);
    assert_eq!(got.event_type, "Found");
    assert_eq!(
        (got.stream.as_str(), got.version, got.position),
        ("s", 1, 4)
    );
    assert_eq!(
        (got.data.as_str(), got.metadata.as_str()),
        (e.data.as_str(), e.metadata.as_str())
    );
    assert_eq!(got.origin, None);
    assert_eq!(got, read_stream(&store, "s").await[1]);
}

/// `event(id)` of an unknown id is `None`, not an error.
pub async fn unknown_id_is_none(store: Store, _caps: Capabilities) {
    assert!(store.event(Uuid::now_v7()).await.unwrap().is_none());
    append_n(&store, "s", 1).await;
    assert!(store.event(Uuid::now_v7()).await.unwrap().is_none());
    assert!(store.event(Uuid::max()).await.unwrap().is_none());
}

/// `event(nil)` is `None`: no event can have the nil id (append and link reject it), so it is unknown.
pub async fn nil_id_lookup_is_none(store: Store, _caps: Capabilities) {
    append_n(&store, "s", 1).await;
    assert!(store.event(Uuid::nil()).await.unwrap().is_none());
}

/// `event(id)` of an event only reachable through a link (its stream deleted) still returns it as
/// appended.
pub async fn event_by_id_after_its_stream_is_deleted(store: Store, _caps: Capabilities) {
    let a = append_n(&store, "s", 1).await;
    store
        .link(&stream("l"), &a.ids, ExpectedVersion::Any)
        .await
        .unwrap();
    store
        .delete_stream(&stream("s"), ExpectedVersion::Any)
        .await
        .unwrap();
    let got = store.event(a.ids[0]).await.unwrap().unwrap();
    assert_eq!(
        (got.stream.as_str(), got.version, got.origin),
        ("s", 0, None)
    );
}

/// `stream_version` counts links and is `None` for a stream that never existed.
pub async fn stream_version_counts_links(store: Store, _caps: Capabilities) {
    let a = append_n(&store, "a", 3).await;
    assert_eq!(store.stream_version(&stream("l")).await.unwrap(), None);
    store
        .link(&stream("l"), &a.ids, ExpectedVersion::Any)
        .await
        .unwrap();
    assert_eq!(store.stream_version(&stream("l")).await.unwrap(), Some(2));
    assert_eq!(store.stream_version(&stream("a")).await.unwrap(), Some(2));
    assert_eq!(store.stream_version(&stream("a-")).await.unwrap(), None);
}

/// A UUID that differs from a stored id in one bit is not found.
pub async fn near_miss_ids_are_not_found(store: Store, _caps: Capabilities) {
    let a = append_n(&store, "s", 1).await;
    let mut bytes = *a.ids[0].as_bytes();
    bytes[15] ^= 1;
    assert!(
        store
            .event(Uuid::from_bytes(bytes))
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.event(a.ids[0]).await.unwrap().is_some());
}
