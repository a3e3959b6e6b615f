//! Data and metadata come back byte for byte, whatever JSON they hold and however they are read.

use herald_core::{EventStore, ExpectedVersion, NewEvent, ReadQuery, RecordedEvent};

use crate::Capabilities;
use crate::support::*;

/// Appends one event with this data and metadata to `p-1` (also linked into `q`), then checks that every
/// way of reading it returns both byte for byte.
async fn round_trip(store: &Store, event_type: &str, data: &str, metadata: &str) {
    let e = NewEvent::new(event_type)
        .with_data(data)
        .with_metadata(metadata);
    let id = e.id;
    append(store, "p-1", vec![e]).await;
    store
        .link(&stream("q"), &[id], ExpectedVersion::Any)
        .await
        .unwrap();
    let mut reads: Vec<(&str, RecordedEvent)> =
        vec![("by id", store.event(id).await.unwrap().expect("by id"))];
    let pick = |events: Vec<RecordedEvent>| events.into_iter().find(|e| e.id == id).expect("read");
    reads.push(("stream", pick(read_stream(store, "p-1").await)));
    reads.push(("global", pick(read_all(store).await)));
    reads.push((
        "global backward",
        pick(read(store, ReadQuery::all().backward()).await),
    ));
    reads.push((
        "category",
        pick(read(store, ReadQuery::category("p")).await),
    ));
    reads.push(("link", pick(read_stream(store, "q").await)));
    reads.push((
        "page",
        pick(
            store
                .read_page(&ReadQuery::all().batch_size(10_000))
                .await
                .unwrap(),
        ),
    ));
    for (how, e) in reads {
        assert_eq!(e.event_type, event_type, "type via {how}");
        assert!(
            e.data == data,
            "data via {how} differs: {:?}",
            preview(&e.data)
        );
        assert!(
            e.metadata == metadata,
            "metadata via {how} differs: {:?}",
            preview(&e.metadata)
        );
    }
}

fn preview(s: &str) -> String {
    s.chars().take(80).collect()
}

/// Unicode survives: emoji (incl. ZWJ sequences and flags), RTL text, CJK, combining marks, astral planes.
pub async fn unicode_data_survives(store: Store, _caps: Capabilities) {
    round_trip(
        &store,
        "Unicode",
        r#"{"emoji":"😀👩‍👩‍👧‍👦🇵🇱","rtl":"שלום עולם مرحبا","cjk":"漢字かなカナ한글","combining":"e\u0301 é","astral":"𝄞𐍈","ascii":"plain"}"#,
        r#"{"note":"ünïcødé ✓ 🎉"}"#,
    )
    .await;
}

/// Unicode in event types and in metadata keys survives.
pub async fn unicode_types_and_keys_survive(store: Store, _caps: Capabilities) {
    round_trip(
        &store,
        "Bestellung✓Aufgegeben",
        r#"{"ключ":"значение"}"#,
        r#"{"🔑":"🚪"}"#,
    )
    .await;
}

/// Integers beyond 64 bits and negative big integers survive as written.
pub async fn big_integers_survive(store: Store, _caps: Capabilities) {
    round_trip(
        &store,
        "Big",
        r#"{"big":123456789012345678901234567890,"neg":-98765432109876543210987654321,"u64max":18446744073709551615,"i64min":-9223372036854775808}"#,
        r#"{"seq":99999999999999999999}"#,
    )
    .await;
}

/// Floats survive textually: `1e400` (beyond f64), `0.1`, `-0.0`, `1.0E+2`, `5e-324`, trailing zeros.
pub async fn floats_survive_textually(store: Store, _caps: Capabilities) {
    round_trip(
        &store,
        "Floats",
        r#"{"huge":1e400,"tenth":0.1,"negzero":-0.0,"exp":1.0E+2,"tiny":5e-324,"zeros":1.500000,"pi":3.14159265358979323846264338327950288}"#,
        "{}",
    )
    .await;
}

/// Escapes survive unexpanded: `\u0000`, surrogate pairs, `\"`, `\\`, `\/`, `\n`, `\t`, `\u00e9`.
pub async fn escapes_survive_unexpanded(store: Store, _caps: Capabilities) {
    round_trip(
        &store,
        "Escapes",
        r#"{"nul":"a\u0000b","pair":"\ud83d\ude00","quote":"\"","backslash":"\\","slash":"\/","ctl":"\n\t\r\b\f","e":"\u00e9","\u0000key":1}"#,
        r#"{"m":"\u0000"}"#,
    )
    .await;
}

/// Key order survives: `{"b":1,"a":2}` stays in that order, at every nesting level.
pub async fn key_order_survives(store: Store, _caps: Capabilities) {
    round_trip(
        &store,
        "Order",
        r#"{"b":1,"a":2,"nested":{"z":[{"y":1,"x":2}],"c":null}}"#,
        r#"{"z":1,"causation_id":"x","a":0}"#,
    )
    .await;
}

/// Duplicate keys (valid JSON text) are kept, not collapsed.
pub async fn duplicate_keys_survive(store: Store, _caps: Capabilities) {
    round_trip(&store, "Dup", r#"{"a":1,"a":2}"#, r#"{"k":1,"k":1}"#).await;
}

/// Whitespace inside the JSON survives: indentation, newlines, tabs, spaces around separators.
pub async fn whitespace_inside_survives(store: Store, _caps: Capabilities) {
    round_trip(
        &store,
        "Pretty",
        "{\n  \"a\" : [ 1 ,\t2 ],\r\n\t\"b\":{ }\n}",
        "{ \"k\" :\n \"v\" }",
    )
    .await;
}

/// Any JSON value can be data: strings, arrays, numbers, booleans, null, empty containers.
pub async fn any_json_value_is_data(store: Store, _caps: Capabilities) {
    for (i, data) in [
        r#""just a string""#,
        "[1,\"two\",{\"three\":3},[]]",
        "null",
        "true",
        "false",
        "42",
        "-1.5e-7",
        "[]",
        "{}",
        r#""""#,
    ]
    .into_iter()
    .enumerate()
    {
        round_trip(&store, &format!("Value{i}"), data, "{}").await;
    }
}

/// Nested metadata with correlation and causation ids survives, and the ids are readable.
pub async fn metadata_with_correlation_and_causation(store: Store, _caps: Capabilities) {
    let c = herald_core::uuid::Uuid::now_v7();
    let k = herald_core::uuid::Uuid::now_v7();
    let meta = format!(
        r#"{{"correlation_id":"{c}","causation_id":"{k}","user":{{"id":7,"roles":["a","b"]}},"trace":"00-abc-01"}}"#
    );
    round_trip(&store, "Meta", "{}", &meta).await;
    let e = &read_stream(&store, "p-1").await[0];
    assert_eq!(e.correlation_id(), Some(c));
    assert_eq!(e.causation_id(), Some(k));
}

/// A 1 MB payload survives byte for byte.
pub async fn one_megabyte_payload_survives(store: Store, caps: Capabilities) {
    let case = "payload_fidelity::one_megabyte_payload_survives";
    if !caps.large_payloads {
        return skip(case, "the backend declares large_payloads = false");
    }
    if caps.limits.max_event_bytes < 1_000_100 {
        return skip(
            case,
            "the backend's declared event-size limit is below 1 MB",
        );
    }
    let body: String = (0..1_000_000u32)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let data = format!(r#"{{"blob":"{body}","tail":"ü😀"}}"#);
    round_trip(&store, "Big", &data, "{}").await;
}

/// Many events with distinct payloads in one append each keep their own payload.
pub async fn many_payloads_keep_their_own_bytes(store: Store, _caps: Capabilities) {
    let batch: Vec<NewEvent> = (0..200)
        .map(|i| {
            NewEvent::new("E")
                .with_data(format!(r#"{{"i":{i},"s":"{}"}}"#, "é".repeat(i)))
                .with_metadata(format!(r#"{{"i":{i}}}"#))
        })
        .collect();
    append(&store, "many", batch.clone()).await;
    let read = read(&store, ReadQuery::stream(stream("many")).batch_size(7)).await;
    for (want, got) in batch.iter().zip(&read) {
        assert_eq!((&got.data, &got.metadata), (&want.data, &want.metadata));
    }
    assert_eq!(read.len(), 200);
}

/// Data with leading and trailing whitespace around the JSON value is kept as given.
pub async fn surrounding_whitespace_survives(store: Store, _caps: Capabilities) {
    round_trip(&store, "Padded", " \n{\"a\":1}\t ", "{}").await;
}
