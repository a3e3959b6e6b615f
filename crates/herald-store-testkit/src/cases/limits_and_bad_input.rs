//! Size limits and bad input: each rejected with InvalidInput naming the problem, and nothing written.

use herald_core::query::MAX_BATCH_SIZE;
use herald_core::uuid::Uuid;
use herald_core::version::MAX_VERSION;
use herald_core::{EventStore, ExpectedVersion, NewEvent, ReadQuery, StreamName};

use crate::Capabilities;
use crate::support::*;

/// An event whose type + data + metadata is exactly `bytes` long.
fn event_of_size(bytes: usize) -> NewEvent {
    // type "T" (1) + metadata "{}" (2) + data `"…"` (2 + body)
    let body = bytes - 5;
    NewEvent::new("T").with_data(format!("\"{}\"", "x".repeat(body)))
}

/// Limit-sized payloads are skipped only when the limit is large (over 1 MB) and the backend declares it
/// cannot store large payloads.
fn skip_limit_sized(caps: &Capabilities, case: &str) -> bool {
    let skip_it = !caps.large_payloads && caps.limits.max_event_bytes > LARGE;
    if skip_it {
        skip(
            case,
            "the backend declares large_payloads = false and its event-size limit is over 1 MB",
        );
    }
    skip_it
}

/// What counts as a large payload for [`Capabilities::large_payloads`].
const LARGE: usize = 1_000_000;

async fn rejects(store: &Store, events: Vec<NewEvent>, needles: &[&str]) {
    let before = snapshot(store).await;
    assert_invalid(
        store
            .append(&stream("s"), events, ExpectedVersion::Any)
            .await,
        needles,
    );
    assert_unchanged(store, &before, "a rejected append").await;
}

/// An event exactly at the size limit is accepted and read back whole.
pub async fn event_at_the_size_limit_is_accepted(store: Store, caps: Capabilities) {
    if skip_limit_sized(
        &caps,
        "limits_and_bad_input::event_at_the_size_limit_is_accepted",
    ) {
        return;
    }
    let e = event_of_size(caps.limits.max_event_bytes);
    let want = e.data.clone();
    append(&store, "s", vec![e]).await;
    let got = &read_stream(&store, "s").await[0];
    assert_eq!(got.data.len(), want.len());
    assert!(got.data == want);
}

/// One byte over the size limit is InvalidInput naming the limit; nothing is written.
pub async fn one_byte_over_the_limit_is_rejected(store: Store, caps: Capabilities) {
    if skip_limit_sized(
        &caps,
        "limits_and_bad_input::one_byte_over_the_limit_is_rejected",
    ) {
        return;
    }
    append_n(&store, "s", 1).await;
    let limit = caps.limits.max_event_bytes.to_string();
    let size = (caps.limits.max_event_bytes + 1).to_string();
    rejects(
        &store,
        vec![event_of_size(caps.limits.max_event_bytes + 1)],
        &[&limit, &size, "limit", "`s`"],
    )
    .await;
}

/// Size counts metadata and type too: a big metadata object can push an event over the limit.
pub async fn size_counts_metadata_and_type(store: Store, caps: Capabilities) {
    if skip_limit_sized(&caps, "limits_and_bad_input::size_counts_metadata_and_type") {
        return;
    }
    let half = caps.limits.max_event_bytes / 2;
    let e = NewEvent::new("T")
        .with_data(format!("\"{}\"", "d".repeat(half)))
        .with_metadata(format!("{{\"m\":\"{}\"}}", "m".repeat(half)));
    rejects(&store, vec![e], &["limit"]).await;
}

/// One oversized event in a batch rejects the whole batch.
pub async fn oversized_event_in_a_batch_rejects_all(store: Store, caps: Capabilities) {
    if skip_limit_sized(
        &caps,
        "limits_and_bad_input::oversized_event_in_a_batch_rejects_all",
    ) {
        return;
    }
    let mut batch = events(3);
    batch.insert(2, event_of_size(caps.limits.max_event_bytes + 1));
    rejects(&store, batch, &["event 2", "limit"]).await;
    assert_eq!(append_n(&store, "s", 1).await.first_position, 1);
}

/// Data that is not JSON is InvalidInput mentioning `data` and JSON.
pub async fn invalid_json_data_is_rejected(store: Store, _caps: Capabilities) {
    for bad in [
        "{",
        "",
        "nope",
        "{\"a\":}",
        "{} trailing",
        "{'a':1}",
        "[1,]",
        "NaN",
        "\"unterminated",
    ] {
        rejects(
            &store,
            vec![NewEvent::new("T").with_data(bad)],
            &["data", "json"],
        )
        .await;
    }
}

/// Metadata that is not JSON is InvalidInput mentioning `metadata`.
pub async fn invalid_json_metadata_is_rejected(store: Store, _caps: Capabilities) {
    for bad in ["{", "", "{\"a\" 1}"] {
        rejects(
            &store,
            vec![NewEvent::new("T").with_metadata(bad)],
            &["metadata", "json"],
        )
        .await;
    }
}

/// Metadata must be a JSON object: arrays, strings, numbers and null are rejected.
pub async fn metadata_must_be_an_object(store: Store, _caps: Capabilities) {
    for bad in ["[]", "\"s\"", "1", "null", "true", "[{}]"] {
        rejects(
            &store,
            vec![NewEvent::new("T").with_metadata(bad)],
            &["metadata", "object"],
        )
        .await;
    }
}

/// Event types must be 1 to 255 bytes without control characters; 255 bytes is fine.
pub async fn bad_event_types_are_rejected(store: Store, _caps: Capabilities) {
    rejects(&store, vec![NewEvent::new("")], &["event type", "empty"]).await;
    rejects(
        &store,
        vec![NewEvent::new("x".repeat(256))],
        &["event type", "255"],
    )
    .await;
    for bad in ["a\nb", "tab\t", "nul\0", "del\u{7f}", "\u{85}next-line"] {
        rejects(&store, vec![NewEvent::new(bad)], &["event type", "control"]).await;
    }
    append(&store, "s", vec![NewEvent::new("y".repeat(255))]).await;
}

/// The nil UUID is not an event id.
pub async fn nil_id_is_rejected(store: Store, _caps: Capabilities) {
    rejects(
        &store,
        vec![NewEvent::new("T").with_id(Uuid::nil())],
        &["nil"],
    )
    .await;
}

/// An append with no events is invalid input naming the stream.
pub async fn empty_append_is_rejected(store: Store, _caps: Capabilities) {
    rejects(&store, vec![], &["no events", "`s`"]).await;
    assert_eq!(store.stream_version(&stream("s")).await.unwrap(), None);
}

/// One bad event in a batch (the last one) rejects the whole batch and names its index.
pub async fn one_bad_event_rejects_the_batch(store: Store, _caps: Capabilities) {
    let mut batch = events(4);
    batch.push(NewEvent::new("T").with_data("{oops"));
    rejects(&store, batch, &["event 4", "data"]).await;
}

/// More events than `max_events_per_append` in one call is invalid input naming the limit.
pub async fn too_many_events_in_one_append(store: Store, caps: Capabilities) {
    let max = caps.limits.max_events_per_append;
    let batch: Vec<NewEvent> = (0..=max).map(|_| NewEvent::new("T")).collect();
    rejects(&store, batch, &[&max.to_string(), "limit"]).await;
}

/// Rejected writes consume no position: the next good append continues the log without a gap.
pub async fn rejected_writes_leave_no_gap(store: Store, _caps: Capabilities) {
    append_n(&store, "s", 2).await;
    let _ = store
        .append(&stream("s"), vec![NewEvent::new("")], ExpectedVersion::Any)
        .await
        .unwrap_err();
    let _ = store
        .append(&stream("s"), events(2), ExpectedVersion::Exact(9))
        .await
        .unwrap_err();
    let _ = store
        .link(&stream("l"), &[Uuid::now_v7()], ExpectedVersion::Any)
        .await
        .unwrap_err();
    assert_eq!(append_n(&store, "t", 1).await.first_position, 3);
    assert_eq!(store.watch_head().borrow().position, 3);
}

/// Read limit 0 is invalid input mentioning the limit.
pub async fn read_limit_zero_is_rejected(store: Store, _caps: Capabilities) {
    append_n(&store, "s", 1).await;
    for q in [
        ReadQuery::all().limit(0),
        ReadQuery::stream(stream("s")).limit(0),
        ReadQuery::category("s").limit(0),
    ] {
        assert_invalid(read_error(&store, q).await, &["limit"]);
    }
}

/// A batch size of 0 or above the maximum is invalid input.
pub async fn bad_batch_sizes_are_rejected(store: Store, _caps: Capabilities) {
    for size in [0, MAX_BATCH_SIZE + 1] {
        assert_invalid(
            read_error(&store, ReadQuery::all().batch_size(size)).await,
            &["batch size", &size.to_string()],
        );
    }
}

/// Category names with `-`, empty, with control characters or starting with `$` are invalid input
/// naming the category.
pub async fn bad_categories_are_rejected(store: Store, _caps: Capabilities) {
    append_n(&store, "a-b", 1).await;
    assert_invalid(
        read_error(&store, ReadQuery::category("a-b")).await,
        &["`a-b`"],
    );
    assert_invalid(
        read_error(&store, ReadQuery::category("")).await,
        &["category", "empty"],
    );
    assert_invalid(
        read_error(&store, ReadQuery::category("$all")).await,
        &["$all"],
    );
    assert_invalid(
        read_error(&store, ReadQuery::category("a\nb")).await,
        &["control"],
    );
}

/// A `from` beyond the storable range is invalid input.
pub async fn from_out_of_range_is_rejected(store: Store, _caps: Capabilities) {
    for q in [
        ReadQuery::all().from(MAX_VERSION + 1),
        ReadQuery::stream(stream("s")).from(u64::MAX),
        ReadQuery::category("c").backward().from(u64::MAX),
    ] {
        assert_invalid(read_error(&store, q).await, &["out of range"]);
    }
    assert!(
        read(&store, ReadQuery::all().from(MAX_VERSION))
            .await
            .is_empty()
    );
}

/// An empty or control-character type filter is invalid input.
pub async fn bad_type_filters_are_rejected(store: Store, _caps: Capabilities) {
    assert_invalid(
        read_error(&store, ReadQuery::all().types([""])).await,
        &["event type filter", "empty"],
    );
    assert_invalid(
        read_error(&store, ReadQuery::all().types(["A", "b\n"])).await,
        &["control"],
    );
}

/// Expected versions out of range are invalid input for append, link and delete, and nothing changes.
pub async fn out_of_range_expected_versions_are_rejected(store: Store, _caps: Capabilities) {
    let a = append_n(&store, "s", 1).await;
    let before = snapshot(&store).await;
    let big = ExpectedVersion::Exact(MAX_VERSION + 1);
    assert_invalid(
        store.append(&stream("s"), events(1), big).await,
        &["out of range"],
    );
    assert_invalid(
        store.link(&stream("l"), &a.ids, big).await,
        &["out of range"],
    );
    assert_invalid(
        store.delete_stream(&stream("s"), big).await,
        &["out of range"],
    );
    assert_unchanged(&store, &before, "out-of-range expected versions").await;
}

/// Invalid stream names are rejected before they reach a store, naming the problem.
pub async fn invalid_stream_names_are_rejected(store: Store, _caps: Capabilities) {
    for (bad, needle) in [
        ("", "empty"),
        ("$all", "reserved"),
        ("$ce-order", "reserved"),
        ("tab\there", "control"),
        ("nul\0", "control"),
        ("new\nline", "control"),
    ] {
        assert_invalid(StreamName::new(bad), &[needle]);
    }
    assert_invalid(StreamName::new("x".repeat(256)), &["255"]);
    assert_invalid(StreamName::new("é".repeat(128)), &["256 bytes"]);
    assert!(read_all(&store).await.is_empty());
}

/// A streams listing with limit 0 is invalid input.
pub async fn streams_limit_zero_is_rejected(store: Store, _caps: Capabilities) {
    append_n(&store, "s", 1).await;
    assert_invalid(store.streams("", None, 0).await, &["limit"]);
}

/// Following backward is invalid input.
pub async fn follow_backward_is_rejected(store: Store, _caps: Capabilities) {
    use futures::StreamExt;
    use herald_core::EventStoreExt;
    append_n(&store, "s", 1).await;
    let mut follow = store.follow(ReadQuery::all().backward());
    assert_invalid(
        follow.next().await.expect("an error item").map(|_| ()),
        &["forward"],
    );
}
