//! Fuzzing of event decoding: whatever another writer put in the store (the CLI, another service, an older
//! version, a hand edit), decoding a [`RecordedEvent`] into a typed event — schema version from metadata,
//! upcasting chain, serde — answers with the event or a typed [`EsError`] naming the event, never a panic and
//! never slowly. Inputs are valid stored events mutated (data and metadata text cut, spliced, re-typed;
//! schema versions out of range; unknown types) plus arbitrary text.
//!
//! `HERALD_FUZZ_CASES` (default 1,000) runs more.

use std::time::{Duration, Instant};

use herald_core::time::OffsetDateTime;
use herald_core::uuid::Uuid;
use herald_core::{RecordedEvent, SCHEMA_VERSION_KEY};
use herald_es::codec::stored_schema_version;
use herald_es::{Codec, EsError, EventSet, Upcasters};
use proptest::prelude::*;
use proptest::test_runner::Config;
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
enum Account {
    Opened { owner: String, limit: Option<u64> },
    Deposited { cents: u64 },
    Closed,
}

impl EventSet for Account {
    fn schema_version(event_type: &str) -> u32 {
        if event_type == "Deposited" { 3 } else { 1 }
    }
}

/// Deposited v1 `{"amount": n}` → v2 `{"cents": n}` → v3 (unchanged); each step refuses what it cannot read.
fn upcasters() -> Upcasters {
    Upcasters::new()
        .add("Deposited", 1, |d| {
            let amount = d.get("amount").cloned().ok_or("no amount")?;
            Ok(json!({ "cents": amount }))
        })
        .add("Deposited", 2, Ok)
}

fn config() -> Config {
    let cases = std::env::var("HERALD_FUZZ_CASES")
        .map(|v| v.parse().expect("HERALD_FUZZ_CASES is a number"))
        .unwrap_or(1_000);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

/// Text damage: a cut, a splice of a nasty piece, a character replaced.
fn damage(text: String, cut: Option<usize>, splice: Option<(usize, &str)>) -> String {
    let at = |i: usize, s: &str| {
        let mut i = i % (s.len() + 1);
        while !s.is_char_boundary(i) {
            i -= 1;
        }
        i
    };
    let mut text = text;
    if let Some((i, piece)) = splice {
        let i = at(i, &text);
        text.insert_str(i, piece);
    }
    if let Some(i) = cut {
        let i = at(i, &text);
        text.truncate(i);
    }
    text
}

const PIECES: &[&str] = &[
    "\"",
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "null",
    "-1",
    "1e400",
    "18446744073709551616",
    "\\u0000",
    "\\ud800",
    "é",
    "\"cents\":",
    "\"amount\":",
    "\"owner\":7,",
];

fn data() -> impl Strategy<Value = String> {
    let valid = prop_oneof![
        Just(r#"{"owner":"ada","limit":10}"#.to_owned()),
        Just(r#"{"owner":"ada"}"#.to_owned()),
        Just(r#"{"cents":5}"#.to_owned()),
        Just(r#"{"amount":5}"#.to_owned()),
        Just(r#"{"amount":"five"}"#.to_owned()),
        Just("null".to_owned()),
        Just("{}".to_owned()),
        Just(format!("{}{}", "[".repeat(300), "]".repeat(300))),
    ];
    prop_oneof![
        6 => (
            valid,
            proptest::option::of(any::<usize>()),
            proptest::option::of((any::<usize>(), proptest::sample::select(PIECES))),
        )
            .prop_map(|(v, cut, splice)| damage(v, cut, splice)),
        1 => any::<String>(),
    ]
}

fn metadata() -> impl Strategy<Value = String> {
    let version = prop_oneof![
        Just(json!(1)),
        Just(json!(2)),
        Just(json!(3)),
        Just(json!(0)),
        Just(json!(4)),
        Just(json!(u32::MAX)),
        Just(json!(u64::MAX)),
        Just(json!(-1)),
        Just(json!("2")),
        Just(json!(null)),
        Just(json!(2.5)),
    ];
    prop_oneof![
        4 => version.prop_map(|v| json!({ SCHEMA_VERSION_KEY: v, "correlation_id": "x" }).to_string()),
        1 => Just("{}".to_owned()),
        1 => Just("[]".to_owned()),
        1 => any::<String>(),
    ]
}

fn event_type() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(&["Opened", "Deposited", "Closed"][..]).prop_map(str::to_owned),
        1 => proptest::sample::select(&["", "opened", "Unknown", "type", "data"][..]).prop_map(str::to_owned),
        1 => any::<String>(),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn decoding_any_stored_event_is_an_event_or_a_typed_error(
        event_type in event_type(),
        data in data(),
        metadata in metadata(),
    ) {
        let id = Uuid::now_v7();
        let recorded = RecordedEvent {
            id,
            event_type: event_type.clone(),
            stream: "account-1".to_owned(),
            version: 0,
            position: 1,
            data,
            metadata,
            recorded_at: OffsetDateTime::UNIX_EPOCH,
            origin: None,
        };
        let codec = Codec::<Account>::new(upcasters());
        let start = Instant::now();
        let decoded = codec.decode(&recorded);
        let version = stored_schema_version(&recorded.metadata);
        prop_assert!(start.elapsed() < Duration::from_millis(500), "decoding took {:?}", start.elapsed());
        match decoded {
            Ok(event) => {
                prop_assert_eq!(event.id, id);
                prop_assert_eq!(event.stored_schema_version, version);
            }
            Err(EsError::Decode { id: named, event_type: t, .. }) => {
                prop_assert_eq!((named, t), (id, event_type));
            }
            Err(EsError::Upcast { id: named, event_type: t, from_version, .. }) => {
                prop_assert_eq!((named, t), (id, event_type.clone()));
                let current = Account::schema_version(&event_type);
                prop_assert!(
                    from_version == version || (version..current).contains(&from_version),
                    "upcasting from {} to {} failed at {}", version, current, from_version
                );
            }
            Err(other) => prop_assert!(false, "not a decode or upcast error: {other:?}"),
        }
    }
}
