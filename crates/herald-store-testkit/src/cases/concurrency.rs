//! Many tasks at once: every append keeps its own check and result, readers never see a gap, and
//! idempotency and duplicate detection hold under races.

use std::sync::Arc;

use herald_core::{Error, EventStore, ExpectedVersion, NewEvent, ReadQuery};
use tokio::sync::Barrier;

use crate::Capabilities;
use crate::support::*;

/// 8 tasks each append 20 times to their own stream with `Exact` versions: all succeed, every stream has
/// versions 0..20, and the global log has positions 1..=160 with no gap.
pub async fn writers_on_separate_streams_all_succeed(store: Store, _caps: Capabilities) {
    let tasks: Vec<_> = (0..8)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let name = stream(&format!("w-{w}"));
                let mut expected = ExpectedVersion::NoStream;
                for _ in 0..20 {
                    let r = store.append(&name, events(1), expected).await.unwrap();
                    expected = ExpectedVersion::Exact(r.last_version);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    for w in 0..8 {
        assert_eq!(
            versions(&read_stream(&store, &format!("w-{w}")).await),
            (0..20).collect::<Vec<_>>()
        );
    }
    assert_eq!(
        positions(&read_all(&store).await),
        (1..=160).collect::<Vec<_>>()
    );
}

/// While writers append, every global read shows a gapless prefix 1..=k of the log (a reader never sees a
/// later position before an earlier one has committed).
pub async fn readers_never_see_a_gap(store: Store, _caps: Capabilities) {
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..40 {
                    store
                        .append(
                            &stream(&format!("w-{w}")),
                            events(1 + i % 3),
                            ExpectedVersion::Any,
                        )
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    let reader = {
        let store = store.clone();
        let done = done.clone();
        tokio::spawn(async move {
            loop {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                let all = read(&store, ReadQuery::all().batch_size(50)).await;
                let got = positions(&all);
                assert_eq!(
                    got,
                    (1..=got.len() as u64).collect::<Vec<_>>(),
                    "a reader saw a gap"
                );
                if finished {
                    // The read that began after every writer finished sees the whole log.
                    return got.len();
                }
                tokio::task::yield_now().await;
            }
        })
    };
    for w in writers {
        w.await.unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let per_writer: usize = (0..40).map(|i| 1 + i % 3).sum();
    assert_eq!(
        reader.await.unwrap(),
        4 * per_writer,
        "the last read missed events"
    );
}

/// The same append (same ids) sent by 8 tasks at once is written once; every task gets the same result.
pub async fn concurrent_identical_appends_are_written_once(store: Store, _caps: Capabilities) {
    append_n(&store, "s", 1).await;
    let batch = events(3);
    let barrier = Arc::new(Barrier::new(8));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            let batch = batch.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                store
                    .append(&stream("s"), batch, ExpectedVersion::Exact(0))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    assert!(results.iter().all(|r| *r == results[0]));
    assert_eq!((results[0].first_version, results[0].last_version), (1, 3));
    assert_eq!(read_all(&store).await.len(), 4);
}

/// One id appended to 8 different streams at once: exactly one append succeeds, the others are
/// duplicates, and the id is stored once.
pub async fn racing_the_same_id_into_different_streams(store: Store, _caps: Capabilities) {
    let e = NewEvent::new("T");
    let barrier = Arc::new(Barrier::new(8));
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            let e = e.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                let name = format!("s-{i}");
                (
                    name.clone(),
                    store
                        .append(&stream(&name), vec![e], ExpectedVersion::Any)
                        .await,
                )
            })
        })
        .collect();
    let mut winners = 0;
    for t in tasks {
        let (name, result) = t.await.unwrap();
        match result {
            Ok(_) => winners += 1,
            other => assert_duplicate(other, e.id, &name),
        }
    }
    assert_eq!(winners, 1);
    assert_eq!(ids(&read_all(&store).await), vec![e.id]);
}

/// One event linked into the same stream by 8 tasks at once: exactly one link succeeds.
pub async fn racing_links_of_one_event(store: Store, _caps: Capabilities) {
    let a = append_n(&store, "a", 1).await;
    let barrier = Arc::new(Barrier::new(8));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            let ids = a.ids.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                store.link(&stream("l"), &ids, ExpectedVersion::Any).await
            })
        })
        .collect();
    let mut winners = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(r) => {
                winners += 1;
                assert_eq!(r.first_version, 0);
            }
            other => assert_duplicate(other, a.ids[0], "l"),
        }
    }
    assert_eq!(winners, 1);
    assert_eq!(read_stream(&store, "l").await.len(), 1);
}

/// Writers with `Exact` on one stream that retry on conflict all land eventually, each append at a
/// distinct version (optimistic concurrency works as a loop).
pub async fn optimistic_retry_loops_converge(store: Store, _caps: Capabilities) {
    let tasks: Vec<_> = (0..6)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let name = stream("counter");
                let mut conflicts = 0u32;
                for i in 0..5 {
                    loop {
                        let current = store.stream_version(&name).await.unwrap();
                        let expected =
                            current.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
                        match store
                            .append(&name, vec![event(&format!("W{w}"), i)], expected)
                            .await
                        {
                            Ok(_) => break,
                            Err(Error::WrongExpectedVersion { .. }) => {
                                conflicts += 1;
                                tokio::task::yield_now().await;
                            }
                            Err(e) => panic!("unexpected {e}"),
                        }
                    }
                }
                conflicts
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let read = read_stream(&store, "counter").await;
    assert_eq!(versions(&read), (0..30).collect::<Vec<_>>());
    for w in 0..6 {
        let mine: Vec<u64> = read
            .iter()
            .filter(|e| e.event_type == format!("W{w}"))
            .map(|e| ns(std::slice::from_ref(e))[0])
            .collect();
        assert_eq!(
            mine,
            vec![0, 1, 2, 3, 4],
            "writer {w}'s events in its order"
        );
    }
}

/// Appends, links and deletes racing on overlapping streams leave a consistent store: the global log is
/// gapless and every listed stream reads back versions 0..=version.
pub async fn mixed_operations_leave_a_consistent_store(store: Store, _caps: Capabilities) {
    let seed = append_n(&store, "seed", 10).await;
    let tasks: Vec<_> = (0..6)
        .map(|w| {
            let store = store.clone();
            let seed = seed.ids.clone();
            tokio::spawn(async move {
                for i in 0..30usize {
                    let name = stream(&format!("m-{}", (w + i) % 4));
                    match i % 5 {
                        0..=2 => {
                            store
                                .append(&name, events(1), ExpectedVersion::Any)
                                .await
                                .unwrap();
                        }
                        3 => {
                            // The only refusal possible: the stream already holds that event.
                            match store
                                .link(&name, &[seed[(w + i) % 10]], ExpectedVersion::Any)
                                .await
                            {
                                Ok(_) | Err(Error::DuplicateEvent { .. }) => {}
                                Err(e) => panic!("link into {name} failed: {e}"),
                            }
                        }
                        _ => store
                            .delete_stream(&name, ExpectedVersion::Any)
                            .await
                            .unwrap(),
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let all = read_all(&store).await;
    assert_eq!(positions(&all), (1..=all.len() as u64).collect::<Vec<_>>());
    assert_eq!(all.len(), 10 + 6 * 18);
    for info in store.streams("", None, 100).await.unwrap() {
        let read = read_stream(&store, &info.stream).await;
        assert_eq!(
            versions(&read),
            (0..=info.version).collect::<Vec<_>>(),
            "{}",
            info.stream
        );
    }
}
