//! Time filters: `recorded_after` and `recorded_before` exclusive, `recorded_at_or_after` inclusive, with
//! boundaries taken from `recorded_at` values read back (so a bound equals an event's time exactly).

use herald_core::time::{Duration, OffsetDateTime, UtcOffset};
use herald_core::{EventStore, ReadQuery, RecordedEvent};

use crate::Capabilities;
use crate::support::*;

/// Three events in `t-1`, `t-2`, `t-1`, each committed strictly later than the previous one.
async fn three_ticks(store: &Store) -> [RecordedEvent; 3] {
    let a = append_then_tick(store, "t-1", event("A", 0)).await;
    let b = append_then_tick(store, "t-2", event("B", 1)).await;
    let c = append_then_tick(store, "t-1", event("C", 2)).await;
    assert!(a.recorded_at < b.recorded_at && b.recorded_at < c.recorded_at);
    [a, b, c]
}

/// Appends separated in time get increasing `recorded_at`.
pub async fn separated_appends_get_increasing_times(store: Store, _caps: Capabilities) {
    let [a, b, c] = three_ticks(&store).await;
    let all = read_all(&store).await;
    assert_eq!(
        all.iter().map(|e| e.recorded_at).collect::<Vec<_>>(),
        vec![a.recorded_at, b.recorded_at, c.recorded_at]
    );
}

/// `recorded_after` is exclusive: an event recorded exactly then is excluded, one recorded a microsecond
/// later is included.
pub async fn recorded_after_is_exclusive(store: Store, _caps: Capabilities) {
    let [a, b, _] = three_ticks(&store).await;
    let got = read(&store, ReadQuery::all().recorded_after(b.recorded_at)).await;
    assert_eq!(ns(&got), vec![2]);
    let just_before_b = b.recorded_at - Duration::microseconds(1);
    assert!(just_before_b >= a.recorded_at);
    let got = read(&store, ReadQuery::all().recorded_after(just_before_b)).await;
    assert_eq!(ns(&got), vec![1, 2]);
}

/// `recorded_at_or_after` is inclusive: an event recorded exactly then is included, also when the bound has
/// a fraction of a microsecond below it (stores keep whole microseconds).
pub async fn recorded_at_or_after_is_inclusive(store: Store, _caps: Capabilities) {
    let [a, b, _] = three_ticks(&store).await;
    let got = read(&store, ReadQuery::all().recorded_at_or_after(b.recorded_at)).await;
    assert_eq!(ns(&got), vec![1, 2]);
    let fraction_before_b = b.recorded_at - Duration::nanoseconds(500);
    assert!(fraction_before_b > a.recorded_at);
    let got = read(
        &store,
        ReadQuery::all().recorded_at_or_after(fraction_before_b),
    )
    .await;
    assert_eq!(ns(&got), vec![1, 2]);
    let fraction_after_b = b.recorded_at + Duration::nanoseconds(500);
    let got = read(
        &store,
        ReadQuery::all().recorded_at_or_after(fraction_after_b),
    )
    .await;
    assert_eq!(ns(&got), vec![2]);
}

/// `recorded_before` is exclusive: an event recorded exactly then is excluded.
pub async fn recorded_before_is_exclusive(store: Store, _caps: Capabilities) {
    let [_, b, _] = three_ticks(&store).await;
    let got = read(&store, ReadQuery::all().recorded_before(b.recorded_at)).await;
    assert_eq!(ns(&got), vec![0]);
}

/// `[t, u)` keeps what was recorded from `t` up to, not including, `u`; `(t, u)` excludes both ends.
pub async fn range_is_half_open(store: Store, _caps: Capabilities) {
    let [a, b, c] = three_ticks(&store).await;
    let open = |from, to| ReadQuery::all().recorded_after(from).recorded_before(to);
    assert!(
        read(&store, open(a.recorded_at, b.recorded_at))
            .await
            .is_empty()
    );
    assert_eq!(
        ns(&read(&store, open(a.recorded_at, c.recorded_at)).await),
        vec![1]
    );
    let q = |from, to| {
        ReadQuery::all()
            .recorded_at_or_after(from)
            .recorded_before(to)
    };
    assert_eq!(
        ns(&read(&store, q(b.recorded_at, c.recorded_at)).await),
        vec![1]
    );
    assert_eq!(
        ns(&read(&store, q(a.recorded_at, c.recorded_at)).await),
        vec![0, 1]
    );
    assert_eq!(
        ns(&read(
            &store,
            q(a.recorded_at, c.recorded_at + Duration::microseconds(1))
        )
        .await),
        vec![0, 1, 2]
    );
}

/// An empty or inverted range reads as empty, without error.
pub async fn empty_or_inverted_range_is_empty(store: Store, _caps: Capabilities) {
    let [_, b, c] = three_ticks(&store).await;
    let q = |from, to| {
        ReadQuery::all()
            .recorded_at_or_after(from)
            .recorded_before(to)
    };
    assert!(
        read(&store, q(b.recorded_at, b.recorded_at))
            .await
            .is_empty()
    );
    assert!(
        read(&store, q(c.recorded_at, b.recorded_at))
            .await
            .is_empty()
    );
}

/// Bounds far in the past or future select all or nothing.
pub async fn distant_bounds(store: Store, _caps: Capabilities) {
    three_ticks(&store).await;
    let past = OffsetDateTime::UNIX_EPOCH;
    let future = OffsetDateTime::now_utc() + Duration::days(3650);
    assert_eq!(
        read(&store, ReadQuery::all().recorded_after(past))
            .await
            .len(),
        3
    );
    assert_eq!(
        read(&store, ReadQuery::all().recorded_before(future))
            .await
            .len(),
        3
    );
    assert!(
        read(&store, ReadQuery::all().recorded_after(future))
            .await
            .is_empty()
    );
    assert!(
        read(&store, ReadQuery::all().recorded_before(past))
            .await
            .is_empty()
    );
}

/// A bound given in another UTC offset means the same instant.
pub async fn bounds_in_other_offsets_mean_the_same_instant(store: Store, _caps: Capabilities) {
    let [_, b, _] = three_ticks(&store).await;
    let plus_two = UtcOffset::from_hms(2, 0, 0).unwrap();
    let minus_five = UtcOffset::from_hms(-5, -30, 0).unwrap();
    let got = read(
        &store,
        ReadQuery::all().recorded_after(b.recorded_at.to_offset(plus_two)),
    )
    .await;
    assert_eq!(ns(&got), vec![2]);
    let got = read(
        &store,
        ReadQuery::all().recorded_at_or_after(b.recorded_at.to_offset(plus_two)),
    )
    .await;
    assert_eq!(ns(&got), vec![1, 2]);
    let got = read(
        &store,
        ReadQuery::all().recorded_before(b.recorded_at.to_offset(minus_five)),
    )
    .await;
    assert_eq!(ns(&got), vec![0]);
    for e in read_all(&store).await {
        assert!(e.recorded_at.offset().is_utc(), "read back in UTC");
    }
}

/// Time filters apply to stream reads, forward and backward.
pub async fn time_filters_on_stream_reads(store: Store, _caps: Capabilities) {
    let [_, b, c] = three_ticks(&store).await;
    let q = ReadQuery::stream(stream("t-1"));
    assert_eq!(
        ns(&read(&store, q.clone().recorded_at_or_after(b.recorded_at)).await),
        vec![2]
    );
    assert_eq!(
        ns(&read(&store, q.clone().recorded_after(c.recorded_at)).await),
        Vec::<u64>::new()
    );
    assert_eq!(
        ns(&read(&store, q.clone().recorded_before(c.recorded_at).backward()).await),
        vec![0]
    );
}

/// Time filters apply to category reads, with other options.
pub async fn time_filters_on_category_reads(store: Store, _caps: Capabilities) {
    let [a, b, _] = three_ticks(&store).await;
    let q = ReadQuery::category("t");
    assert_eq!(
        ns(&read(
            &store,
            q.clone().recorded_at_or_after(b.recorded_at).backward()
        )
        .await),
        vec![2, 1]
    );
    assert_eq!(
        ns(&read(&store, q.clone().recorded_after(b.recorded_at).backward()).await),
        vec![2]
    );
    assert_eq!(
        ns(&read(
            &store,
            q.recorded_after(a.recorded_at)
                .types(["A", "C"])
                .limit(1)
                .backward()
        )
        .await),
        vec![2]
    );
}

/// `recorded_at` is the same whichever way an event is read: by id, in its stream, in the global log, in
/// its category, through a link.
pub async fn recorded_at_is_the_same_everywhere(store: Store, _caps: Capabilities) {
    let [a, ..] = three_ticks(&store).await;
    store
        .link(&stream("l"), &[a.id], herald_core::ExpectedVersion::Any)
        .await
        .unwrap();
    let by_id = store.event(a.id).await.unwrap().unwrap().recorded_at;
    let places = [
        read_stream(&store, "t-1").await[0].recorded_at,
        read_all(&store).await[0].recorded_at,
        read(&store, ReadQuery::category("t")).await[0].recorded_at,
        read_stream(&store, "l").await[0].recorded_at,
    ];
    assert!(places.iter().all(|t| *t == by_id), "{places:?} vs {by_id}");
    assert_eq!(by_id, a.recorded_at);
}

/// Time filters page correctly when the batch size is smaller than the result.
pub async fn time_filters_page_correctly(store: Store, _caps: Capabilities) {
    let mut times = Vec::new();
    for i in 0..10 {
        times.push(
            append_then_tick(&store, "p-1", event("E", i))
                .await
                .recorded_at,
        );
    }
    let got = read(
        &store,
        ReadQuery::all()
            .recorded_at_or_after(times[2])
            .recorded_before(times[8])
            .batch_size(2),
    )
    .await;
    assert_eq!(ns(&got), vec![2, 3, 4, 5, 6, 7]);
    let got = read(
        &store,
        ReadQuery::all()
            .recorded_after(times[2])
            .recorded_before(times[8])
            .batch_size(2),
    )
    .await;
    assert_eq!(ns(&got), vec![3, 4, 5, 6, 7]);
    let got = read(
        &store,
        ReadQuery::stream(stream("p-1"))
            .recorded_at_or_after(times[2])
            .recorded_before(times[8])
            .batch_size(4)
            .backward(),
    )
    .await;
    assert_eq!(ns(&got), vec![7, 6, 5, 4, 3, 2]);
}
