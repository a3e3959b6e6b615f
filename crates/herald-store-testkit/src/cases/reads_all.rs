//! Reading the global log: every event once, in position order.

use herald_core::{EventStore, ExpectedVersion, ReadQuery};

use crate::Capabilities;
use crate::support::*;

async fn ten_events(store: &Store) {
    for i in 0..10 {
        append(store, &format!("s-{}", i % 3), vec![event("E", i)]).await;
    }
}

/// An empty store's global log is empty, forward and backward.
pub async fn empty_store_reads_empty(store: Store, _caps: Capabilities) {
    assert!(read(&store, ReadQuery::all()).await.is_empty());
    assert!(read(&store, ReadQuery::all().backward()).await.is_empty());
    assert!(store.read_page(&ReadQuery::all()).await.unwrap().is_empty());
}

/// The global log holds every stream's events in position order, each with its own stream and version.
pub async fn forward_in_position_order_across_streams(store: Store, _caps: Capabilities) {
    ten_events(&store).await;
    let all = read(&store, ReadQuery::all()).await;
    assert_eq!(positions(&all), (1..=10).collect::<Vec<_>>());
    assert_eq!(ns(&all), (0..10).collect::<Vec<_>>());
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e.stream, format!("s-{}", i % 3));
        assert_eq!(e.version, (i / 3) as u64);
        assert_eq!(e.origin, None);
    }
}

/// Backward reads the global log newest first.
pub async fn backward_newest_first(store: Store, _caps: Capabilities) {
    ten_events(&store).await;
    assert_eq!(
        positions(&read(&store, ReadQuery::all().backward()).await),
        (1..=10).rev().collect::<Vec<_>>()
    );
}

/// `from` is an inclusive position, forward and backward.
pub async fn from_is_an_inclusive_position(store: Store, _caps: Capabilities) {
    ten_events(&store).await;
    assert_eq!(
        positions(&read(&store, ReadQuery::all().from(7)).await),
        vec![7, 8, 9, 10]
    );
    assert_eq!(
        positions(&read(&store, ReadQuery::all().backward().from(3)).await),
        vec![3, 2, 1]
    );
    assert_eq!(
        positions(&read(&store, ReadQuery::all().from(1)).await).len(),
        10
    );
}

/// Forward from position 0 reads from the start; backward from 0 is empty (positions start at 1).
pub async fn from_zero(store: Store, _caps: Capabilities) {
    ten_events(&store).await;
    assert_eq!(read(&store, ReadQuery::all().from(0)).await.len(), 10);
    assert!(
        read(&store, ReadQuery::all().backward().from(0))
            .await
            .is_empty()
    );
}

/// Forward from beyond the end is empty; backward from beyond the end starts at the last event.
pub async fn from_beyond_the_end(store: Store, _caps: Capabilities) {
    ten_events(&store).await;
    assert!(read(&store, ReadQuery::all().from(11)).await.is_empty());
    assert_eq!(
        positions(&read(&store, ReadQuery::all().backward().from(500)).await)[0],
        10
    );
}

/// A limit caps the global read in both directions and with `from`.
pub async fn limit_caps_the_result(store: Store, _caps: Capabilities) {
    ten_events(&store).await;
    assert_eq!(
        positions(&read(&store, ReadQuery::all().limit(3)).await),
        vec![1, 2, 3]
    );
    assert_eq!(
        positions(&read(&store, ReadQuery::all().backward().limit(3)).await),
        vec![10, 9, 8]
    );
    assert_eq!(
        positions(&read(&store, ReadQuery::all().from(5).limit(2)).await),
        vec![5, 6]
    );
    assert_eq!(
        positions(&read(&store, ReadQuery::all().backward().from(5).limit(2)).await),
        vec![5, 4]
    );
}

/// Paging the global log in batches of 3 over 10 events skips and repeats nothing.
pub async fn paging_in_small_batches(store: Store, _caps: Capabilities) {
    ten_events(&store).await;
    for batch in [1, 3, 4, 10, 11] {
        assert_eq!(
            positions(&read(&store, ReadQuery::all().batch_size(batch)).await),
            (1..=10).collect::<Vec<_>>(),
            "batch {batch}"
        );
        assert_eq!(
            positions(&read(&store, ReadQuery::all().backward().batch_size(batch)).await),
            (1..=10).rev().collect::<Vec<_>>(),
            "backward batch {batch}"
        );
    }
    assert_eq!(
        positions(&read(&store, ReadQuery::all().batch_size(3).from(2).limit(5)).await),
        vec![2, 3, 4, 5, 6]
    );
}

/// `read_page` on the global log returns one page.
pub async fn read_page_returns_one_page(store: Store, _caps: Capabilities) {
    ten_events(&store).await;
    let page = store
        .read_page(&ReadQuery::all().batch_size(4).from(3))
        .await
        .unwrap();
    assert_eq!(positions(&page), vec![3, 4, 5, 6]);
    let page = store
        .read_page(&ReadQuery::all().batch_size(4).backward().from(2))
        .await
        .unwrap();
    assert_eq!(positions(&page), vec![2, 1]);
}

/// The global log keeps a deleted stream's events, as appended.
pub async fn keeps_deleted_streams_events(store: Store, _caps: Capabilities) {
    let a = append_n(&store, "a", 2).await;
    append_n(&store, "b", 1).await;
    store
        .delete_stream(&stream("a"), ExpectedVersion::Any)
        .await
        .unwrap();
    let all = read(&store, ReadQuery::all()).await;
    assert_eq!(all.len(), 3);
    assert_eq!(ids(&all[..2]), a.ids);
    assert_eq!(
        (all[1].stream.as_str(), all[1].version, all[1].position),
        ("a", 1, 2)
    );
}

/// The global log of a store with 3,000 events across 30 streams has positions 1..=3000 with no gap or
/// repeat.
pub async fn large_log_is_gapless(store: Store, _caps: Capabilities) {
    for i in 0..30 {
        append_n(&store, &format!("s-{i}"), 100).await;
    }
    let all = read(&store, ReadQuery::all().batch_size(256)).await;
    assert_eq!(positions(&all), (1..=3_000).collect::<Vec<_>>());
}
