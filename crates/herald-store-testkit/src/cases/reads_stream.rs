//! Reading one stream: direction, inclusive `from`, limits, paging, and streams that do not exist.

use herald_core::{EventStore, ReadQuery};

use crate::Capabilities;
use crate::support::*;

fn q(name: &str) -> ReadQuery {
    ReadQuery::stream(stream(name))
}

/// A stream that does not exist reads as empty, forward and backward, and its version is none.
pub async fn missing_stream_reads_empty(store: Store, _caps: Capabilities) {
    append_n(&store, "other", 3).await;
    assert!(read(&store, q("missing")).await.is_empty());
    assert!(read(&store, q("missing").backward()).await.is_empty());
    assert!(read(&store, q("missing").from(2).limit(5)).await.is_empty());
    assert!(store.read_page(&q("missing")).await.unwrap().is_empty());
}

/// A forward read gives the stream's events in version order, and only that stream's.
pub async fn forward_read_in_version_order(store: Store, _caps: Capabilities) {
    for i in 0..5 {
        append(&store, "s", vec![event("E", i)]).await;
        append_n(&store, "noise", 1).await;
    }
    let read = read(&store, q("s")).await;
    assert_eq!(ns(&read), vec![0, 1, 2, 3, 4]);
    assert_eq!(versions(&read), vec![0, 1, 2, 3, 4]);
    assert_eq!(positions(&read), vec![1, 3, 5, 7, 9]);
    assert!(read.iter().all(|e| e.stream == "s"));
}

/// A backward read gives the newest event first.
pub async fn backward_read_newest_first(store: Store, _caps: Capabilities) {
    append_n(&store, "s", 5).await;
    assert_eq!(
        versions(&read(&store, q("s").backward()).await),
        vec![4, 3, 2, 1, 0]
    );
}

/// A forward `from` is inclusive.
pub async fn forward_from_is_inclusive(store: Store, _caps: Capabilities) {
    append_n(&store, "s", 5).await;
    assert_eq!(versions(&read(&store, q("s").from(2)).await), vec![2, 3, 4]);
    assert_eq!(
        versions(&read(&store, q("s").from(0)).await),
        vec![0, 1, 2, 3, 4]
    );
    assert_eq!(versions(&read(&store, q("s").from(4)).await), vec![4]);
}

/// A backward `from` is inclusive: it starts at that version and goes down.
pub async fn backward_from_is_inclusive(store: Store, _caps: Capabilities) {
    append_n(&store, "s", 5).await;
    assert_eq!(
        versions(&read(&store, q("s").backward().from(2)).await),
        vec![2, 1, 0]
    );
    assert_eq!(
        versions(&read(&store, q("s").backward().from(4)).await),
        vec![4, 3, 2, 1, 0]
    );
}

/// Backward from 0 gives exactly the first event.
pub async fn backward_from_zero_gives_the_first_event(store: Store, _caps: Capabilities) {
    append_n(&store, "s", 3).await;
    assert_eq!(
        versions(&read(&store, q("s").backward().from(0)).await),
        vec![0]
    );
}

/// Forward from beyond the end is empty.
pub async fn forward_from_beyond_the_end_is_empty(store: Store, _caps: Capabilities) {
    append_n(&store, "s", 3).await;
    assert!(read(&store, q("s").from(3)).await.is_empty());
    assert!(read(&store, q("s").from(1_000_000)).await.is_empty());
}

/// Backward from beyond the end starts at the last event.
pub async fn backward_from_beyond_the_end_starts_at_the_last(store: Store, _caps: Capabilities) {
    append_n(&store, "s", 3).await;
    assert_eq!(
        versions(&read(&store, q("s").backward().from(99)).await),
        vec![2, 1, 0]
    );
}

/// A limit caps the number of events, forward and backward, and a larger limit returns everything.
pub async fn limit_caps_the_result(store: Store, _caps: Capabilities) {
    append_n(&store, "s", 6).await;
    assert_eq!(versions(&read(&store, q("s").limit(2)).await), vec![0, 1]);
    assert_eq!(
        versions(&read(&store, q("s").backward().limit(2)).await),
        vec![5, 4]
    );
    assert_eq!(read(&store, q("s").limit(100)).await.len(), 6);
    assert_eq!(
        versions(&read(&store, q("s").from(3).limit(2)).await),
        vec![3, 4]
    );
    assert_eq!(
        versions(&read(&store, q("s").backward().from(3).limit(2)).await),
        vec![3, 2]
    );
}

/// A batch size smaller than the result makes the read page (3 at a time over 10 events), with nothing
/// skipped or repeated, forward and backward.
pub async fn paging_in_small_batches(store: Store, _caps: Capabilities) {
    append_n(&store, "s", 10).await;
    for batch in [1, 2, 3, 9, 10, 11] {
        assert_eq!(
            versions(&read(&store, q("s").batch_size(batch)).await),
            (0..10).collect::<Vec<_>>(),
            "batch {batch}"
        );
        assert_eq!(
            versions(&read(&store, q("s").backward().batch_size(batch)).await),
            (0..10).rev().collect::<Vec<_>>(),
            "backward batch {batch}"
        );
    }
    assert_eq!(
        versions(&read(&store, q("s").batch_size(3).limit(7)).await),
        (0..7).collect::<Vec<_>>()
    );
    assert_eq!(
        versions(&read(&store, q("s").batch_size(3).from(2).limit(5).backward()).await),
        vec![2, 1, 0]
    );
}

/// `read_page` returns at most one page: the batch size, capped by the limit, starting at `from`.
pub async fn read_page_returns_one_page(store: Store, _caps: Capabilities) {
    append_n(&store, "s", 10).await;
    let page = store.read_page(&q("s").batch_size(3)).await.unwrap();
    assert_eq!(versions(&page), vec![0, 1, 2]);
    let page = store
        .read_page(&q("s").batch_size(3).from(8))
        .await
        .unwrap();
    assert_eq!(versions(&page), vec![8, 9]);
    let page = store
        .read_page(&q("s").batch_size(5).limit(2).backward())
        .await
        .unwrap();
    assert_eq!(versions(&page), vec![9, 8]);
}

/// A long stream (2,000 events) reads completely in order with a modest batch size.
pub async fn long_stream_reads_completely(store: Store, _caps: Capabilities) {
    for _ in 0..4 {
        append_n(&store, "long", 500).await;
    }
    let read = read(&store, q("long").batch_size(128)).await;
    assert_eq!(versions(&read), (0..2_000).collect::<Vec<_>>());
    let back = read_rev(&store).await;
    assert_eq!(back.len(), 2_000);
    assert_eq!(back[0].version, 1_999);
}

async fn read_rev(store: &Store) -> Vec<herald_core::RecordedEvent> {
    read(store, q("long").backward().batch_size(333)).await
}

/// Streams whose names share a prefix are not mixed up: reading `s` does not return `s-1` or `s1`.
pub async fn prefix_sharing_streams_stay_apart(store: Store, _caps: Capabilities) {
    append_n(&store, "s", 1).await;
    append_n(&store, "s-1", 2).await;
    append_n(&store, "s1", 3).await;
    assert_eq!(read(&store, q("s")).await.len(), 1);
    assert_eq!(read(&store, q("s-1")).await.len(), 2);
    assert_eq!(read(&store, q("s1")).await.len(), 3);
}
