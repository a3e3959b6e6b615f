//! Streaming reads, following the log live, and the commit head every follower waits on.

use std::time::Duration;

use futures::StreamExt;
use herald_core::{EventStore, EventStoreExt, ExpectedVersion, Head, ReadQuery};

use crate::Capabilities;
use crate::support::*;

/// How long a live event may take to reach a follower before the case fails (a bound, not a wait: the
/// follower wakes as soon as the commit is published).
const LIVE: Duration = Duration::from_secs(10);

async fn next(
    follow: &mut futures::stream::BoxStream<'_, herald_core::Result<herald_core::RecordedEvent>>,
) -> herald_core::RecordedEvent {
    tokio::time::timeout(LIVE, follow.next())
        .await
        .expect("the follower got the next event in time")
        .expect("a follow never ends")
        .expect("no error")
}

/// `EventStoreExt::read` streams a large result in batches, in order, and ends.
pub async fn read_streams_in_batches(store: Store, _caps: Capabilities) {
    append_n(&store, "s", 25).await;
    let mut stream = store.read(ReadQuery::stream(stream("s")).batch_size(4));
    let mut seen = Vec::new();
    while let Some(e) = stream.next().await {
        seen.push(e.unwrap().version);
    }
    assert_eq!(seen, (0..25).collect::<Vec<_>>());
}

/// An invalid query makes the streaming read yield one error and end.
pub async fn invalid_streaming_read_yields_one_error(store: Store, _caps: Capabilities) {
    let mut stream = store.read(ReadQuery::all().limit(0));
    assert_invalid(
        stream.next().await.expect("an error").map(|_| ()),
        &["limit"],
    );
    assert!(stream.next().await.is_none());
}

/// A follow of the global log yields history, then events committed after it started, with no gap or
/// repeat at the seam.
pub async fn follow_all_history_then_live(store: Store, _caps: Capabilities) {
    append_n(&store, "a", 5).await;
    let mut follow = store.follow(ReadQuery::all().batch_size(2));
    for p in 1..=5 {
        assert_eq!(next(&mut follow).await.position, p);
    }
    append_n(&store, "b", 3).await;
    append_n(&store, "a", 1).await;
    for p in 6..=9 {
        assert_eq!(next(&mut follow).await.position, p);
    }
}

/// A follow started on an empty store wakes on the first commit.
pub async fn follow_wakes_on_the_first_commit(store: Store, _caps: Capabilities) {
    let follower = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut follow = store.follow(ReadQuery::all());
            let mut got = Vec::new();
            for _ in 0..3 {
                got.push(next(&mut follow).await.position);
            }
            got
        })
    };
    tokio::task::yield_now().await;
    append_n(&store, "s", 2).await;
    append_n(&store, "t", 1).await;
    assert_eq!(follower.await.unwrap(), vec![1, 2, 3]);
}

/// A follow of one stream from a version sees only that stream, from that version, then live.
pub async fn follow_stream_from_a_version(store: Store, _caps: Capabilities) {
    append_n(&store, "s", 4).await;
    append_n(&store, "noise", 2).await;
    let mut follow = store.follow(ReadQuery::stream(stream("s")).from(2));
    assert_eq!(next(&mut follow).await.version, 2);
    assert_eq!(next(&mut follow).await.version, 3);
    append_n(&store, "noise", 1).await;
    append_n(&store, "s", 1).await;
    let e = next(&mut follow).await;
    assert_eq!((e.stream.as_str(), e.version), ("s", 4));
}

/// A follow of a category sees only that category, live.
pub async fn follow_a_category(store: Store, _caps: Capabilities) {
    append_n(&store, "c-1", 1).await;
    let mut follow = store.follow(ReadQuery::category("c"));
    assert_eq!(next(&mut follow).await.stream, "c-1");
    append_n(&store, "d-1", 2).await;
    append_n(&store, "c-2", 1).await;
    let e = next(&mut follow).await;
    assert_eq!((e.stream.as_str(), e.position), ("c-2", 4));
}

/// A follow with a type filter skips other types in history and live.
pub async fn follow_with_a_type_filter(store: Store, _caps: Capabilities) {
    append(&store, "s", vec![event("A", 0), event("B", 1)]).await;
    let mut follow = store.follow(ReadQuery::all().types(["B"]));
    assert_eq!(ns(&[next(&mut follow).await]), vec![1]);
    append(
        &store,
        "s",
        vec![event("A", 2), event("A", 3), event("B", 4)],
    )
    .await;
    assert_eq!(ns(&[next(&mut follow).await]), vec![4]);
}

/// A follow with a limit ends after that many events, counting history and live.
pub async fn follow_with_a_limit_ends(store: Store, _caps: Capabilities) {
    append_n(&store, "s", 2).await;
    let mut follow = store.follow(ReadQuery::all().limit(3));
    next(&mut follow).await;
    next(&mut follow).await;
    append_n(&store, "s", 2).await;
    assert_eq!(next(&mut follow).await.position, 3);
    assert!(follow.next().await.is_none(), "ends at the limit");
}

/// A follower reading while 4 writers append 200 events sees every position exactly once, in order.
pub async fn follow_sees_every_event_under_concurrent_writers(store: Store, _caps: Capabilities) {
    let writers = 4;
    let per_writer = 50;
    let total = (writers * per_writer) as u64;
    let follower = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut follow = store.follow(ReadQuery::all().batch_size(7));
            let mut got = Vec::new();
            while (got.len() as u64) < total {
                got.push(next(&mut follow).await.position);
            }
            got
        })
    };
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for _ in 0..per_writer {
                    store
                        .append(&stream(&format!("w-{w}")), events(1), ExpectedVersion::Any)
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(follower.await.unwrap(), (1..=total).collect::<Vec<_>>());
}

/// A fresh store's head is at position 0.
pub async fn fresh_head_is_at_position_0(store: Store, _caps: Capabilities) {
    assert_eq!(store.watch_head().borrow().position, 0);
}

/// After an append, the head shows its last position and the commit count grows.
pub async fn head_moves_after_each_append(store: Store, _caps: Capabilities) {
    let watch = store.watch_head();
    let start = *watch.borrow();
    let r = append_n(&store, "s", 3).await;
    let h1 = *watch.borrow();
    assert_eq!(h1.position, r.last_position);
    assert!(h1.commits > start.commits);
    append_n(&store, "t", 1).await;
    let h2 = *watch.borrow();
    assert_eq!(h2.position, 4);
    assert!(h2.commits > h1.commits);
}

/// Links and deletes are commits: the commit count grows, the position does not move.
pub async fn links_and_deletes_are_commits(store: Store, _caps: Capabilities) {
    let a = append_n(&store, "s", 2).await;
    let watch = store.watch_head();
    let h0 = *watch.borrow();
    store
        .link(&stream("l"), &a.ids, ExpectedVersion::Any)
        .await
        .unwrap();
    let h1 = *watch.borrow();
    assert!(h1.commits > h0.commits, "a link bumps the commit count");
    assert_eq!(h1.position, 2);
    store
        .delete_stream(&stream("l"), ExpectedVersion::Any)
        .await
        .unwrap();
    let h2 = *watch.borrow();
    assert!(h2.commits > h1.commits, "a delete bumps the commit count");
    assert_eq!(h2.position, 2);
}

/// A task waiting on the head wakes after a commit from another task, and a read then sees the commit.
pub async fn waiting_on_the_head_wakes_after_a_commit(store: Store, _caps: Capabilities) {
    let mut watch = store.watch_head();
    watch.borrow_and_update();
    let waiter = {
        let store = store.clone();
        tokio::spawn(async move {
            tokio::time::timeout(LIVE, watch.changed())
                .await
                .expect("woken in time")
                .expect("store alive");
            let head: Head = *watch.borrow_and_update();
            let all = read_all(&store).await;
            (head, all.len() as u64)
        })
    };
    append_n(&store, "s", 2).await;
    let (head, visible) = waiter.await.unwrap();
    assert!(head.position >= 1);
    assert!(
        visible >= head.position,
        "published head {head:?} but only {visible} events visible"
    );
}

/// Idempotent retries and rejected writes do not move the head's position.
pub async fn rejected_and_retried_writes_do_not_move_the_head(store: Store, _caps: Capabilities) {
    let batch = events(2);
    append(&store, "s", batch.clone()).await;
    let watch = store.watch_head();
    append(&store, "s", batch).await;
    let _ = store
        .append(&stream("s"), events(1), ExpectedVersion::NoStream)
        .await
        .unwrap_err();
    assert_eq!(watch.borrow().position, 2);
}

/// Each of several receivers of the head sees the latest commit.
pub async fn every_receiver_sees_the_head(store: Store, _caps: Capabilities) {
    let receivers: Vec<_> = (0..3).map(|_| store.watch_head()).collect();
    append_n(&store, "s", 5).await;
    for r in &receivers {
        assert_eq!(r.borrow().position, 5);
    }
    assert_eq!(store.watch_head().borrow().position, 5);
}
