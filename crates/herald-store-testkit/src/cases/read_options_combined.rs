//! Read options in combination, checked against a model: every combination of direction, `from`, limit,
//! types and batch size, over each scope, must equal the full forward read filtered by hand.

use herald_core::time::OffsetDateTime;
use herald_core::{Direction, EventStore, ExpectedVersion, ReadQuery, ReadScope, RecordedEvent};

use crate::Capabilities;
use crate::support::*;

/// 24 events over `m-1`, `m-2`, `n-1`, types A/B/C, plus links into `m-2` so stream reads see links too.
async fn fixture(store: &Store) {
    let types = ["A", "B", "C", "A", "B", "A"];
    for i in 0..24usize {
        let name = ["m-1", "m-2", "n-1", "m-1"][i % 4];
        append(store, name, vec![event(types[i % 6], i)]).await;
    }
    let n = read_stream(store, "n-1").await;
    store
        .link(&stream("m-2"), &[n[0].id, n[3].id], ExpectedVersion::Any)
        .await
        .unwrap();
}

/// The expected result of `query`, computed from the unfiltered forward read of its scope.
fn model(full: &[RecordedEvent], query: &ReadQuery) -> Vec<(herald_core::uuid::Uuid, u64)> {
    let key = |e: &RecordedEvent| match query.scope {
        ReadScope::Stream(_) => e.version,
        _ => e.position,
    };
    let mut out: Vec<&RecordedEvent> = full
        .iter()
        .filter(|e| query.types.is_empty() || query.types.contains(&e.event_type))
        .filter(|e| query.recorded_after.is_none_or(|t| e.recorded_at > t))
        .filter(|e| query.recorded_before.is_none_or(|t| e.recorded_at < t))
        .filter(|e| match (query.direction, query.from) {
            (_, None) => true,
            (Direction::Forward, Some(f)) => key(e) >= f,
            (Direction::Backward, Some(f)) => key(e) <= f,
        })
        .collect();
    if query.direction == Direction::Backward {
        out.reverse();
    }
    if let Some(limit) = query.limit {
        out.truncate(limit as usize);
    }
    out.into_iter().map(|e| (e.id, key(e))).collect()
}

async fn check_matrix(store: &Store, base: ReadQuery, froms: &[u64], times: &[OffsetDateTime]) {
    let full = read(store, base.clone()).await;
    assert!(!full.is_empty(), "fixture for {base:?}");
    let type_sets: [&[&str]; 4] = [&[], &["A"], &["B", "C"], &["Z"]];
    let mut time_ranges = vec![(None, None)];
    if let [t1, t2, ..] = times {
        time_ranges.push((Some(*t1), None));
        time_ranges.push((None, Some(*t2)));
        time_ranges.push((Some(*t1), Some(*t2)));
    }
    let mut checked = 0;
    for direction in [Direction::Forward, Direction::Backward] {
        for from in std::iter::once(None).chain(froms.iter().copied().map(Some)) {
            for limit in [None, Some(1), Some(4), Some(100)] {
                for types in type_sets {
                    for (after, before) in &time_ranges {
                        for batch in [2, 5, 512] {
                            let mut q = base.clone().batch_size(batch).types(types.iter().copied());
                            q.direction = direction;
                            q.from = from;
                            q.limit = limit;
                            q.recorded_after = *after;
                            q.recorded_before = *before;
                            let want = model(&full, &q);
                            let got = read(store, q.clone()).await;
                            let got_keys: Vec<_> = got
                                .iter()
                                .map(|e| {
                                    (
                                        e.id,
                                        match q.scope {
                                            ReadScope::Stream(_) => e.version,
                                            _ => e.position,
                                        },
                                    )
                                })
                                .collect();
                            assert_eq!(got_keys, want, "query {q:?}");
                            // Whatever the options, an event reads the same as in the unfiltered read.
                            for e in &got {
                                assert!(full.contains(e), "{e:?} differs from the unfiltered read");
                            }
                            checked += 1;
                        }
                    }
                }
            }
        }
    }
    assert!(checked > 100);
}

/// Every combination of options on a stream read (which includes links) matches the model.
pub async fn stream_read_option_matrix(store: Store, _caps: Capabilities) {
    fixture(&store).await;
    check_matrix(
        &store,
        ReadQuery::stream(stream("m-2")),
        &[0, 1, 3, 6, 7, 50],
        &[],
    )
    .await;
}

/// Every combination of options on the global log matches the model.
pub async fn global_read_option_matrix(store: Store, _caps: Capabilities) {
    fixture(&store).await;
    check_matrix(&store, ReadQuery::all(), &[0, 1, 2, 13, 24, 25, 99], &[]).await;
}

/// Every combination of options on a category read matches the model.
pub async fn category_read_option_matrix(store: Store, _caps: Capabilities) {
    fixture(&store).await;
    check_matrix(
        &store,
        ReadQuery::category("m"),
        &[0, 1, 3, 14, 24, 30],
        &[],
    )
    .await;
}

/// Time ranges combine with every other option on each scope.
pub async fn time_ranges_combine_with_every_option(store: Store, _caps: Capabilities) {
    for i in 0..12usize {
        let name = ["m-1", "m-2", "n-1"][i % 3];
        append_then_tick(&store, name, event(["A", "B", "C"][i % 3], i)).await;
    }
    let all = read_all(&store).await;
    let times = [all[3].recorded_at, all[9].recorded_at];
    check_matrix(&store, ReadQuery::all(), &[2, 8], &times).await;
    check_matrix(&store, ReadQuery::category("m"), &[5], &times).await;
    check_matrix(&store, ReadQuery::stream(stream("m-1")), &[1, 3], &times).await;
}

/// A type filter with a limit counts only matching events, in every scope.
pub async fn limit_counts_only_matching_events(store: Store, _caps: Capabilities) {
    fixture(&store).await;
    for base in [
        ReadQuery::all(),
        ReadQuery::category("m"),
        ReadQuery::stream(stream("m-1")),
    ] {
        let got = read(&store, base.clone().types(["C"]).limit(2)).await;
        assert_eq!(got.len(), 2, "{base:?}");
        assert!(got.iter().all(|e| e.event_type == "C"));
    }
}

/// Several types select the union, in the scope's order, not grouped by type.
pub async fn several_types_keep_the_scope_order(store: Store, _caps: Capabilities) {
    fixture(&store).await;
    let got = read(&store, ReadQuery::all().types(["C", "A"])).await;
    assert!(got.windows(2).all(|w| w[0].position < w[1].position));
    assert!(
        got.iter()
            .all(|e| e.event_type == "A" || e.event_type == "C")
    );
    assert_eq!(got.len(), 16);
}

/// A type filter whose matches are sparse still pages correctly with tiny batches, in both directions.
pub async fn sparse_type_matches_page_correctly(store: Store, _caps: Capabilities) {
    for i in 0..50 {
        let t = if i % 7 == 3 { "Rare" } else { "Common" };
        append(&store, "s-1", vec![event(t, i)]).await;
    }
    let want: Vec<u64> = (0..50).filter(|i| i % 7 == 3).collect();
    for base in [
        ReadQuery::all(),
        ReadQuery::category("s"),
        ReadQuery::stream(stream("s-1")),
    ] {
        for batch in [1, 2, 3] {
            let got = read(&store, base.clone().types(["Rare"]).batch_size(batch)).await;
            assert_eq!(ns(&got), want, "{base:?} batch {batch}");
            let got = read(
                &store,
                base.clone().types(["Rare"]).batch_size(batch).backward(),
            )
            .await;
            let mut back = want.clone();
            back.reverse();
            assert_eq!(ns(&got), back, "{base:?} backward batch {batch}");
        }
    }
}

/// An unknown type, or a `from` past every match, reads as empty without error.
pub async fn filters_that_match_nothing_read_empty(store: Store, _caps: Capabilities) {
    fixture(&store).await;
    assert!(
        read(&store, ReadQuery::all().types(["Nope"]))
            .await
            .is_empty()
    );
    assert!(
        read(&store, ReadQuery::all().types(["A"]).from(25))
            .await
            .is_empty()
    );
    assert!(
        read(
            &store,
            ReadQuery::stream(stream("m-1"))
                .types(["C"])
                .backward()
                .from(0)
        )
        .await
        .is_empty()
    );
}

/// The same query reads the same result through `read_page` loops and through the stream.
pub async fn read_page_and_streaming_agree(store: Store, _caps: Capabilities) {
    fixture(&store).await;
    let q = ReadQuery::category("m").types(["A", "B"]).batch_size(3);
    let mut by_hand = Vec::new();
    let mut page_query = q.clone();
    loop {
        let page = store.read_page(&page_query).await.unwrap();
        assert!(page.len() <= 3);
        let Some(last) = page.last() else { break };
        page_query.from = Some(last.position + 1);
        by_hand.extend(page);
    }
    assert_eq!(by_hand, read(&store, q).await);
}
