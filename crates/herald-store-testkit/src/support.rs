//! Helpers the cases share: building events, reading everything back, snapshots that prove a rejected write
//! changed nothing, and assertions that check an error's variant *and* what its message names.

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_core::time::OffsetDateTime;
use herald_core::uuid::Uuid;
use herald_core::{
    Error, EventStore, EventStoreExt, ExpectedVersion, NewEvent, ReadQuery, RecordedEvent,
    StreamInfo, StreamName, timefmt,
};

/// The store handle every case receives: dyn, because that is how the CLI and server hold a backend.
pub type Store = Arc<dyn EventStore>;

/// A valid stream name (panics on an invalid one: for literals in tests).
pub fn stream(name: &str) -> StreamName {
    StreamName::new(name).unwrap_or_else(|e| panic!("test stream name {name:?}: {e}"))
}

/// A new event of `event_type` with data `{"n":n}`.
pub fn event(event_type: &str, n: usize) -> NewEvent {
    NewEvent::new(event_type).with_data(format!(r#"{{"n":{n}}}"#))
}

/// `count` events of type `E`, data `{"n":0}`, `{"n":1}`, ...
pub fn events(count: usize) -> Vec<NewEvent> {
    (0..count).map(|n| event("E", n)).collect()
}

/// Appends `count` events to `name` with `Any`, one append, and returns the result.
pub async fn append_n(store: &Store, name: &str, count: usize) -> herald_core::AppendResult {
    store
        .append(&stream(name), events(count), ExpectedVersion::Any)
        .await
        .unwrap_or_else(|e| panic!("appending {count} events to {name}: {e}"))
}

/// Appends `events` to `name` with `Any` and returns the result.
pub async fn append(store: &Store, name: &str, events: Vec<NewEvent>) -> herald_core::AppendResult {
    store
        .append(&stream(name), events, ExpectedVersion::Any)
        .await
        .unwrap_or_else(|e| panic!("appending to {name}: {e}"))
}

/// The whole result of `query` (through [`EventStoreExt::read`], so paging is exercised).
pub async fn read(store: &Store, query: ReadQuery) -> Vec<RecordedEvent> {
    store
        .read_to_vec(query.clone())
        .await
        .unwrap_or_else(|e| panic!("reading {query:?}: {e}"))
}

/// A whole stream, forward.
pub async fn read_stream(store: &Store, name: &str) -> Vec<RecordedEvent> {
    read(store, ReadQuery::stream(stream(name))).await
}

/// The whole global log, forward.
pub async fn read_all(store: &Store) -> Vec<RecordedEvent> {
    read(store, ReadQuery::all()).await
}

/// The ids of `events`, in order.
pub fn ids(events: &[RecordedEvent]) -> Vec<Uuid> {
    events.iter().map(|e| e.id).collect()
}

/// The ids of new events, in order.
pub fn new_ids(events: &[NewEvent]) -> Vec<Uuid> {
    events.iter().map(|e| e.id).collect()
}

/// The versions of `events`, in order.
pub fn versions(events: &[RecordedEvent]) -> Vec<u64> {
    events.iter().map(|e| e.version).collect()
}

/// The global positions of `events`, in order.
pub fn positions(events: &[RecordedEvent]) -> Vec<u64> {
    events.iter().map(|e| e.position).collect()
}

/// The `n` values of events built by [`event`], in order.
pub fn ns(events: &[RecordedEvent]) -> Vec<u64> {
    events
        .iter()
        .map(|e| {
            let v: serde_json::Value = serde_json::from_str(&e.data).expect("data is JSON");
            v["n"].as_u64().expect("data has n")
        })
        .collect()
}

/// Everything observable about a store: to prove that a rejected write changed nothing.
#[derive(Debug, PartialEq, Eq)]
pub struct Snapshot {
    all: Vec<RecordedEvent>,
    streams: Vec<StreamInfo>,
    contents: Vec<Vec<RecordedEvent>>,
    position: u64,
}

/// Takes a [`Snapshot`].
pub async fn snapshot(store: &Store) -> Snapshot {
    let all = read_all(store).await;
    let streams = store
        .streams("", None, 100_000)
        .await
        .expect("listing streams");
    let mut contents = Vec::with_capacity(streams.len());
    for info in &streams {
        contents.push(read_stream(store, &info.stream).await);
    }
    Snapshot {
        all,
        streams,
        contents,
        position: store.watch_head().borrow().position,
    }
}

/// Asserts that nothing observable changed since `before` was taken.
pub async fn assert_unchanged(store: &Store, before: &Snapshot, what: &str) {
    let after = snapshot(store).await;
    assert_eq!(&after, before, "{what} must leave the store unchanged");
}

/// Waits (a bounded spin, yielding to the runtime) until the clock has passed `t`, so the next commit is
/// recorded strictly later. Not a sleep: it returns as soon as the microsecond clock moves on.
pub async fn wait_until_after(t: OffsetDateTime) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while timefmt::now_micros() <= t {
        assert!(
            Instant::now() < deadline,
            "the clock did not pass {t} within 5 s"
        );
        tokio::task::yield_now().await;
    }
}

/// Appends one event and makes sure the clock has moved past its `recorded_at` before returning it.
pub async fn append_then_tick(store: &Store, name: &str, event: NewEvent) -> RecordedEvent {
    let id = event.id;
    append(store, name, vec![event]).await;
    let recorded = store
        .event(id)
        .await
        .expect("event")
        .expect("just appended");
    wait_until_after(recorded.recorded_at).await;
    recorded
}

/// Asserts `result` is [`Error::WrongExpectedVersion`] with these fields, and that its message names them.
#[track_caller]
pub fn assert_wrong_version<T: std::fmt::Debug>(
    result: herald_core::Result<T>,
    stream: &str,
    expected: ExpectedVersion,
    actual: Option<u64>,
) {
    match result {
        Err(Error::WrongExpectedVersion {
            stream: s,
            expected: e,
            actual: a,
        }) => {
            assert_eq!(
                (s.as_str(), e, a),
                (stream, expected, actual),
                "WrongExpectedVersion fields"
            );
            let message = Error::WrongExpectedVersion {
                stream: s,
                expected: e,
                actual: a,
            }
            .to_string();
            assert!(message.contains(stream), "{message:?} names the stream");
            assert!(
                message.contains(&expected.to_string()),
                "{message:?} names the expected version"
            );
            let actual_text = actual.map_or("no stream".to_owned(), |v| v.to_string());
            assert!(
                message.contains(&actual_text),
                "{message:?} names the actual version"
            );
        }
        other => panic!(
            "expected WrongExpectedVersion for `{stream}` (expected {expected}, actual {actual:?}), got {other:?}"
        ),
    }
}

/// Asserts `result` is [`Error::DuplicateEvent`] for this id and stream, named in the message.
#[track_caller]
pub fn assert_duplicate<T: std::fmt::Debug>(
    result: herald_core::Result<T>,
    id: Uuid,
    stream: &str,
) {
    match result {
        Err(e @ Error::DuplicateEvent { .. }) => {
            let Error::DuplicateEvent {
                id: got, stream: s, ..
            } = &e
            else {
                unreachable!()
            };
            assert_eq!((*got, s.as_str()), (id, stream), "DuplicateEvent fields");
            let message = e.to_string();
            assert!(
                message.contains(&id.to_string()),
                "{message:?} names the id"
            );
            assert!(message.contains(stream), "{message:?} names the stream");
        }
        other => panic!("expected DuplicateEvent {id} in `{stream}`, got {other:?}"),
    }
}

/// Asserts `result` is [`Error::EventNotFound`] for this id, named in the message.
#[track_caller]
pub fn assert_not_found<T: std::fmt::Debug>(result: herald_core::Result<T>, id: Uuid) {
    match result {
        Err(e @ Error::EventNotFound { .. }) => {
            let Error::EventNotFound { id: got } = &e else {
                unreachable!()
            };
            assert_eq!(*got, id, "EventNotFound id");
            assert!(e.to_string().contains(&id.to_string()), "{e} names the id");
        }
        other => panic!("expected EventNotFound {id}, got {other:?}"),
    }
}

/// Asserts `result` is [`Error::InvalidInput`] whose message contains every one of `needles`
/// (case-insensitive).
#[track_caller]
pub fn assert_invalid<T: std::fmt::Debug>(result: herald_core::Result<T>, needles: &[&str]) {
    match result {
        Err(Error::InvalidInput(message)) => {
            let lower = message.to_lowercase();
            for needle in needles {
                assert!(
                    lower.contains(&needle.to_lowercase()),
                    "invalid-input message {message:?} should mention {needle:?}"
                );
            }
        }
        other => panic!("expected InvalidInput mentioning {needles:?}, got {other:?}"),
    }
}

/// The error of a read, whether the backend rejects it in `read_page` or the stream reports it.
pub async fn read_error(store: &Store, query: ReadQuery) -> herald_core::Result<()> {
    let page = store.read_page(&query).await;
    let streamed = store.read_to_vec(query).await;
    match (page, streamed) {
        (Err(a), Err(b)) => {
            assert_eq!(
                a.to_string(),
                b.to_string(),
                "read_page and read must reject alike"
            );
            Err(a)
        }
        (page, streamed) => {
            panic!("expected the read to be rejected, got page {page:?} and stream {streamed:?}")
        }
    }
}

/// Prints a loud skip line (visible with `--nocapture` and in failing output) for a case the backend's
/// declared capabilities rule out.
pub fn skip(case: &str, why: &str) {
    eprintln!("SKIPPED {case}: {why}");
}

/// Asserts `result` is [`Error::DuplicateEvent`] for `stream` naming one of `ids` (for cases where several
/// ids clash and which one is reported first is the backend's choice).
#[track_caller]
pub fn assert_duplicate_of_any<T: std::fmt::Debug>(
    result: herald_core::Result<T>,
    ids: &[Uuid],
    stream: &str,
) {
    match result {
        Err(Error::DuplicateEvent {
            id,
            stream: s,
            reason,
        }) => {
            assert!(
                ids.contains(&id),
                "DuplicateEvent names {id}, not one of {ids:?}"
            );
            assert_duplicate::<()>(
                Err(Error::DuplicateEvent {
                    id,
                    stream: s,
                    reason,
                }),
                id,
                stream,
            );
        }
        other => panic!("expected DuplicateEvent in `{stream}` for one of {ids:?}, got {other:?}"),
    }
}
