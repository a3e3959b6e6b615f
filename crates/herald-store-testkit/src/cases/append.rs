//! Appending: versions, positions, what an append returns and what reads give back.

use herald_core::{EventStore, ExpectedVersion, NewEvent, timefmt};

use crate::Capabilities;
use crate::support::*;

/// The first event of a store gets stream version 0 and global position 1.
pub async fn first_append_gets_version_0_and_position_1(store: Store, _caps: Capabilities) {
    let e = NewEvent::new("Created");
    let id = e.id;
    let r = store
        .append(&stream("order-1"), vec![e], ExpectedVersion::Any)
        .await
        .unwrap();
    assert_eq!(r.stream, "order-1");
    assert_eq!((r.first_version, r.last_version), (0, 0));
    assert_eq!((r.first_position, r.last_position), (1, 1));
    assert_eq!(r.ids, vec![id]);
}

/// One append of several events gets consecutive versions and positions, and lists the ids in order.
pub async fn batch_append_gets_consecutive_versions_and_positions(
    store: Store,
    _caps: Capabilities,
) {
    let batch = events(5);
    let want = new_ids(&batch);
    let r = append(&store, "s", batch).await;
    assert_eq!((r.first_version, r.last_version), (0, 4));
    assert_eq!((r.first_position, r.last_position), (1, 5));
    assert_eq!(r.ids, want);
    let read = read_stream(&store, "s").await;
    assert_eq!(ids(&read), want);
    assert_eq!(versions(&read), vec![0, 1, 2, 3, 4]);
    assert_eq!(positions(&read), vec![1, 2, 3, 4, 5]);
}

/// Later appends continue the stream's versions and the global positions.
pub async fn later_appends_continue_versions_and_positions(store: Store, _caps: Capabilities) {
    append_n(&store, "s", 2).await;
    let r = append_n(&store, "s", 3).await;
    assert_eq!((r.first_version, r.last_version), (2, 4));
    assert_eq!((r.first_position, r.last_position), (3, 5));
}

/// Appends to different streams share one gapless global sequence, while each stream counts from 0.
pub async fn streams_share_one_global_sequence(store: Store, _caps: Capabilities) {
    let a = append_n(&store, "a-1", 2).await;
    let b = append_n(&store, "b-1", 3).await;
    let a2 = append_n(&store, "a-1", 1).await;
    assert_eq!((a.first_position, a.last_position), (1, 2));
    assert_eq!(
        (b.first_version, b.first_position, b.last_position),
        (0, 3, 5)
    );
    assert_eq!((a2.first_version, a2.first_position), (2, 6));
    assert_eq!(positions(&read_all(&store).await), vec![1, 2, 3, 4, 5, 6]);
}

/// Every field written comes back from a stream read: id, type, stream, version, position, data,
/// metadata, and no origin.
pub async fn read_back_returns_every_field(store: Store, _caps: Capabilities) {
    let e = NewEvent::new("OrderPlaced")
        .with_data(r#"{"total":42,"items":["a","b"]}"#)
        .with_metadata(r#"{"correlation_id":"c","user":7}"#);
    let id = e.id;
    append(&store, "order-9", vec![e]).await;
    let read = read_stream(&store, "order-9").await;
    assert_eq!(read.len(), 1);
    let r = &read[0];
    assert_eq!(r.id, id);
    assert_eq!(r.event_type, "OrderPlaced");
    assert_eq!(r.stream, "order-9");
    assert_eq!((r.version, r.position), (0, 1));
    assert_eq!(r.data, r#"{"total":42,"items":["a","b"]}"#);
    assert_eq!(r.metadata, r#"{"correlation_id":"c","user":7}"#);
    assert_eq!(r.origin, None);
    assert!(!r.is_link());
}

/// Default data and metadata (`{}`) are stored as `{}`.
pub async fn default_data_and_metadata_are_empty_objects(store: Store, _caps: Capabilities) {
    append(&store, "s", vec![NewEvent::new("T")]).await;
    let r = &read_stream(&store, "s").await[0];
    assert_eq!((r.data.as_str(), r.metadata.as_str()), ("{}", "{}"));
}

/// `stream_version` follows appends: none before, then the last event's version.
pub async fn stream_version_follows_appends(store: Store, _caps: Capabilities) {
    let s = stream("s");
    assert_eq!(store.stream_version(&s).await.unwrap(), None);
    append_n(&store, "s", 1).await;
    assert_eq!(store.stream_version(&s).await.unwrap(), Some(0));
    append_n(&store, "s", 3).await;
    assert_eq!(store.stream_version(&s).await.unwrap(), Some(3));
    append_n(&store, "other", 5).await;
    assert_eq!(store.stream_version(&s).await.unwrap(), Some(3));
}

/// `Any` still assigns real, consecutive versions.
pub async fn any_assigns_real_versions(store: Store, _caps: Capabilities) {
    for i in 0..4u64 {
        let r = store
            .append(&stream("s"), vec![NewEvent::new("T")], ExpectedVersion::Any)
            .await
            .unwrap();
        assert_eq!(r.first_version, i);
    }
    assert_eq!(versions(&read_stream(&store, "s").await), vec![0, 1, 2, 3]);
}

/// `recorded_at` is UTC, whole microseconds, and within the time the append ran.
pub async fn recorded_at_is_utc_microseconds_within_the_append(store: Store, _caps: Capabilities) {
    let before = timefmt::now_micros();
    append_n(&store, "s", 1).await;
    let after = timefmt::now_micros();
    let r = &read_stream(&store, "s").await[0];
    assert_eq!(
        r.recorded_at.nanosecond() % 1_000,
        0,
        "microsecond precision"
    );
    assert!(r.recorded_at.offset().is_utc(), "UTC");
    assert!(
        before <= r.recorded_at && r.recorded_at <= after,
        "{} not within [{before}, {after}]",
        r.recorded_at
    );
}

/// Events of one append are one commit: they share `recorded_at`.
pub async fn events_of_one_append_share_recorded_at(store: Store, _caps: Capabilities) {
    append_n(&store, "s", 5).await;
    let read = read_stream(&store, "s").await;
    assert!(read.iter().all(|e| e.recorded_at == read[0].recorded_at));
}

/// `recorded_at` never decreases along the global log.
pub async fn recorded_at_follows_position_order(store: Store, _caps: Capabilities) {
    for i in 0..20 {
        append_n(&store, &format!("s-{}", i % 3), 1 + i % 2).await;
    }
    let all = read_all(&store).await;
    assert!(all.windows(2).all(|w| w[0].recorded_at <= w[1].recorded_at));
}

/// The ids given (here UUIDv7 from `NewEvent::new`) are the ids stored.
pub async fn given_ids_are_kept(store: Store, _caps: Capabilities) {
    let batch = events(3);
    let want = new_ids(&batch);
    append(&store, "s", batch).await;
    assert_eq!(ids(&read_all(&store).await), want);
    for id in want {
        assert_eq!(store.event(id).await.unwrap().unwrap().id, id);
    }
}

/// Fifty single-event appends to assorted streams get positions 1 to 50 with no gap.
pub async fn many_appends_keep_positions_gapless(store: Store, _caps: Capabilities) {
    for i in 0..50usize {
        let r = append_n(&store, &format!("s-{}", i % 7), 1).await;
        assert_eq!(r.first_position, i as u64 + 1);
    }
    assert_eq!(
        positions(&read_all(&store).await),
        (1..=50).collect::<Vec<_>>()
    );
}

/// A large batch (1,000 events) is one append with consecutive versions and positions.
pub async fn large_batch_is_one_append(store: Store, _caps: Capabilities) {
    append_n(&store, "before", 1).await;
    let r = append_n(&store, "s", 1_000).await;
    assert_eq!((r.first_version, r.last_version), (0, 999));
    assert_eq!((r.first_position, r.last_position), (2, 1_001));
    let read = read(
        &store,
        herald_core::ReadQuery::stream(stream("s")).batch_size(97),
    )
    .await;
    assert_eq!(ns(&read), (0..1_000).collect::<Vec<u64>>());
}

/// Unicode stream names, names with spaces and the longest valid name (255 bytes) work.
pub async fn unusual_valid_stream_names_work(store: Store, _caps: Capabilities) {
    let long = "x".repeat(255);
    for name in [
        "ünïcødé-✓",
        "a b",
        "-leading-dash",
        "שלום-1",
        "😀-1",
        long.as_str(),
    ] {
        let r = append_n(&store, name, 2).await;
        assert_eq!(r.stream, name);
        let read = read_stream(&store, name).await;
        assert_eq!(versions(&read), vec![0, 1], "{name}");
        assert!(read.iter().all(|e| e.stream == name));
    }
}

/// Stream names are case-sensitive and compared exactly: `order-1`, `Order-1`, `order-1 ` and `order-10`
/// are four streams.
pub async fn stream_names_are_exact(store: Store, _caps: Capabilities) {
    for (i, name) in ["order-1", "Order-1", "order-1 ", "order-10"]
        .into_iter()
        .enumerate()
    {
        append_n(&store, name, i + 1).await;
    }
    for (i, name) in ["order-1", "Order-1", "order-1 ", "order-10"]
        .into_iter()
        .enumerate()
    {
        assert_eq!(read_stream(&store, name).await.len(), i + 1, "{name}");
        assert_eq!(
            store.stream_version(&stream(name)).await.unwrap(),
            Some(i as u64)
        );
    }
}

/// The append result's positions match what the global log shows for those ids.
pub async fn append_result_matches_the_global_log(store: Store, _caps: Capabilities) {
    append_n(&store, "a", 3).await;
    let r = append_n(&store, "b", 4).await;
    let all = read_all(&store).await;
    let tail: Vec<_> = all
        .iter()
        .filter(|e| e.position >= r.first_position && e.position <= r.last_position)
        .collect();
    assert_eq!(tail.iter().map(|e| e.id).collect::<Vec<_>>(), r.ids);
    assert!(tail.iter().all(|e| e.stream == "b"));
}
