//! Running one case: each abstract [`Op`] becomes a concrete [`Call`] against the state reached so far, runs
//! on the store and on the [`Reference`], and the two outcomes must be equal. After every call the store's
//! head must reach the model's last position; at the end the whole store (global log, every stream, the
//! listing, every id) must equal the model, and `recorded_at` must follow the commits.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use herald_core::uuid::Uuid;
use herald_core::{
    Error, EventStoreExt, ExpectedVersion, NewEvent, ReadQuery, RecordedEvent, StreamName,
};

use super::call::{Call, ID_BASE, Outcome, Refusal, Seen};
use super::ops::{
    Bad, CATEGORIES, EventSpec, Expect, IdRef, Op, PREFIXES, ReadSpec, RetryShape, STREAMS, TYPES,
};
use super::reference::Reference;
use crate::Store;

/// How long one store call may take before the case fails as hung.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// What a case has handed out so far, to resolve abstract choices.
#[derive(Default)]
struct Context {
    /// Ids issued so far (`ID_BASE + 1`, `+ 2`, ...).
    issued: u128,
    /// Ids given to appends, stored or refused, in order of first use.
    known: Vec<Uuid>,
    /// Successful appends (stream and events), for retries.
    appended: Vec<(String, Vec<NewEvent>)>,
    /// Numbers the events' data, so every payload differs.
    payloads: u64,
}

impl Context {
    fn fresh_id(&mut self) -> Uuid {
        self.issued += 1;
        Uuid::from_u128(ID_BASE + self.issued)
    }

    fn id(&mut self, id: IdRef) -> Uuid {
        match id {
            IdRef::Fresh => self.fresh_id(),
            IdRef::Known(i) if !self.known.is_empty() => self.known[i as usize % self.known.len()],
            IdRef::Known(_) | IdRef::Unknown => self.fresh_id(),
            IdRef::Nil => Uuid::nil(),
        }
    }

    fn event(&mut self, spec: &EventSpec) -> NewEvent {
        self.payloads += 1;
        // Whitespace, an escape and a non-ASCII character: kept byte for byte.
        let data = format!(" {{\"n\": {}, \"s\": \"\\u00e9 é\"}} ", self.payloads);
        let mut event = NewEvent::new(TYPES[spec.ty as usize % TYPES.len()])
            .with_id(self.id(spec.id))
            .with_data(data)
            .with_metadata(format!(r#"{{"op":{}}}"#, self.payloads));
        match spec.bad {
            None => {}
            Some(Bad::DataNotJson) => event.data = "{not json".to_owned(),
            Some(Bad::MetadataNotObject) => event.metadata = "[1]".to_owned(),
            Some(Bad::EmptyType) => event.event_type = String::new(),
        }
        event
    }

    fn expected(&self, expect: Expect, current: Option<u64>) -> ExpectedVersion {
        match expect {
            Expect::Any => ExpectedVersion::Any,
            Expect::NoStream => ExpectedVersion::NoStream,
            Expect::StreamExists => ExpectedVersion::StreamExists,
            Expect::Exact(n) => ExpectedVersion::Exact(u64::from(n)),
            Expect::Current => current.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact),
            Expect::Next => ExpectedVersion::Exact(current.map_or(1, |v| v + 1)),
            Expect::OutOfRange => ExpectedVersion::Exact(i64::MAX as u64 + 1),
        }
    }

    fn query(&self, scope: ReadQuery, read: &ReadSpec) -> ReadQuery {
        let mut query = scope.batch_size(read.batch as usize);
        if read.backward {
            query = query.backward();
        }
        query.from = read.from.map(u64::from);
        query.limit = read.limit.map(u64::from);
        if read.types != 0 {
            query = query.types(
                TYPES
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| read.types & (1 << i) != 0)
                    .map(|(_, t)| *t),
            );
        }
        query
    }

    /// The concrete call for `op` in the state `model` is in.
    fn resolve(&mut self, op: &Op, model: &Reference) -> Call {
        let stream = |i: u8| STREAMS[i as usize % STREAMS.len()].to_owned();
        let name = |s: &str| StreamName::new(s).expect("the pool's names are valid");
        match op {
            Op::Append {
                stream: s,
                events,
                expected,
            } => {
                let stream = stream(*s);
                let events: Vec<NewEvent> = events.iter().map(|e| self.event(e)).collect();
                for e in &events {
                    if !e.id.is_nil() && !self.known.contains(&e.id) {
                        self.known.push(e.id);
                    }
                }
                Call::Append {
                    expected: self.expected(*expected, model.version(&stream)),
                    stream,
                    events,
                }
            }
            Op::Retry {
                append,
                shape,
                expected,
            } if !self.appended.is_empty() => {
                let (original, events) =
                    self.appended[*append as usize % self.appended.len()].clone();
                let (stream, events) = match shape {
                    RetryShape::Same => (original, events),
                    RetryShape::Reversed => (original, events.into_iter().rev().collect()),
                    RetryShape::Tail if events.len() > 1 => (original, events[1..].to_vec()),
                    RetryShape::Tail => (original, events),
                    RetryShape::OtherStream(i) => {
                        let others: Vec<&str> =
                            STREAMS.iter().copied().filter(|s| *s != original).collect();
                        (others[*i as usize % others.len()].to_owned(), events)
                    }
                };
                Call::Append {
                    expected: self.expected(*expected, model.version(&stream)),
                    stream,
                    events,
                }
            }
            // Nothing to retry yet: the same event appended twice in a row would be a retry too.
            Op::Retry { .. } => Call::StreamVersion(stream(0)),
            Op::Link {
                stream: s,
                ids,
                expected,
            } => {
                let stream = stream(*s);
                Call::Link {
                    expected: self.expected(*expected, model.version(&stream)),
                    ids: ids.iter().map(|id| self.id(*id)).collect(),
                    stream,
                }
            }
            Op::Delete {
                stream: s,
                expected,
            } => {
                let stream = stream(*s);
                Call::Delete {
                    expected: self.expected(*expected, model.version(&stream)),
                    stream,
                }
            }
            Op::ReadStream { stream: s, read } => Call::Read {
                query: self.query(ReadQuery::stream(name(&stream(*s))), read),
                page_only: read.page_only,
            },
            Op::ReadAll { read } => Call::Read {
                query: self.query(ReadQuery::all(), read),
                page_only: read.page_only,
            },
            Op::ReadCategory { category, read } => Call::Read {
                query: self.query(
                    ReadQuery::category(CATEGORIES[*category as usize % CATEGORIES.len()]),
                    read,
                ),
                page_only: read.page_only,
            },
            Op::Event { id } => Call::Event(self.id(*id)),
            Op::StreamVersion { stream: s } => Call::StreamVersion(stream(*s)),
            Op::Streams {
                prefix,
                after,
                limit,
            } => Call::Streams {
                prefix: PREFIXES[*prefix as usize % PREFIXES.len()].to_owned(),
                after: after.map(stream),
                limit: usize::from(*limit),
            },
        }
    }
}

/// Runs `call` on the store and reduces the answer to an [`Outcome`].
async fn on_store(store: &Store, call: &Call) -> Outcome {
    let name = |s: &str| StreamName::new(s).expect("the pool's names are valid");
    let refused = |e: Error| Outcome::Refused(Refusal::from(&e));
    let seen =
        |events: Vec<RecordedEvent>| Outcome::Events(events.iter().map(Seen::from).collect());
    match call {
        Call::Append {
            stream,
            events,
            expected,
        } => {
            let answer = store.append(&name(stream), events.clone(), *expected).await;
            match answer {
                Err(Error::DuplicateEvent { id, .. }) if !events.iter().any(|e| e.id == id) => {
                    Outcome::Refused(Refusal::Other(format!(
                        "DuplicateEvent names {id}, which is not in the append"
                    )))
                }
                other => other.map_or_else(refused, Outcome::Appended),
            }
        }
        Call::Link {
            stream,
            ids,
            expected,
        } => match store.link(&name(stream), ids, *expected).await {
            Err(Error::DuplicateEvent { id, .. }) if !ids.contains(&id) => {
                Outcome::Refused(Refusal::Other(format!(
                    "DuplicateEvent names {id}, which is not in the link"
                )))
            }
            other => other.map_or_else(refused, Outcome::Linked),
        },
        Call::Delete { stream, expected } => store
            .delete_stream(&name(stream), *expected)
            .await
            .map_or_else(refused, |()| Outcome::Deleted),
        Call::Read {
            query,
            page_only: true,
        } => store.read_page(query).await.map_or_else(refused, seen),
        Call::Read {
            query,
            page_only: false,
        } => store
            .read_to_vec(query.clone())
            .await
            .map_or_else(refused, seen),
        Call::Event(id) => store
            .event(*id)
            .await
            .map_or_else(refused, |e| Outcome::Event(e.as_ref().map(Seen::from))),
        Call::StreamVersion(stream) => store
            .stream_version(&name(stream))
            .await
            .map_or_else(refused, Outcome::Version),
        Call::Streams {
            prefix,
            after,
            limit,
        } => store
            .streams(prefix, after.as_deref(), *limit)
            .await
            .map_or_else(refused, |s| {
                Outcome::Streams(s.into_iter().map(|i| (i.stream, i.version)).collect())
            }),
    }
}

/// Waits until the store's head reaches `position` (the head is published after the commit, possibly
/// after the call returned).
async fn head_reaches(store: &Store, position: u64) -> Result<(), String> {
    let mut head = store.watch_head();
    let reached = tokio::time::timeout(CALL_TIMEOUT, async {
        loop {
            let now = head.borrow_and_update().position;
            if now == position {
                return Ok(());
            }
            if now > position {
                return Err(format!(
                    "the head is at {now}, past the last position {position}"
                ));
            }
            if head.changed().await.is_err() {
                return Err("the head's sender was dropped".to_owned());
            }
        }
    })
    .await;
    reached.unwrap_or_else(|_| {
        Err(format!(
            "the head did not reach position {position} within {CALL_TIMEOUT:?}"
        ))
    })
}

/// A case's report: the calls made, in order, with what the store answered, and how many calls ended
/// each way.
#[derive(Default)]
pub struct Trace {
    text: String,
    /// Calls made.
    pub calls: usize,
    /// Calls by kind and answer (`append: retry`, `link: Duplicate`, `read: empty`, ...).
    pub tally: BTreeMap<String, u64>,
}

/// A call's kind and answer, for the tally: what the sequences exercised.
fn label(call: &Call, outcome: &Outcome, wrote: bool) -> String {
    let kind = match call {
        Call::Append { .. } => "append",
        Call::Link { .. } => "link",
        Call::Delete { .. } => "delete",
        Call::Read { .. } => "read",
        Call::Event(_) => "event",
        Call::StreamVersion(_) => "stream_version",
        Call::Streams { .. } => "streams",
    };
    let answer = match outcome {
        Outcome::Appended(_) if !wrote => "retry (original result)",
        _ if events_empty(outcome) => "empty",
        Outcome::Refused(Refusal::WrongExpectedVersion { .. }) => "WrongExpectedVersion",
        Outcome::Refused(Refusal::Duplicate { .. }) => "DuplicateEvent",
        Outcome::Refused(Refusal::EventNotFound(_)) => "EventNotFound",
        Outcome::Refused(Refusal::InvalidInput) => "InvalidInput",
        Outcome::Refused(Refusal::Other(_)) => "other error",
        _ => "ok",
    };
    format!("{kind}: {answer}")
}

fn events_empty(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Events(e) if e.is_empty()) || matches!(outcome, Outcome::Event(None))
}

impl Trace {
    fn push(&mut self, call: &Call, outcome: &Outcome, wrote: bool) {
        self.calls += 1;
        *self.tally.entry(label(call, outcome, wrote)).or_default() += 1;
        let _ = writeln!(self.text, "  {:>2}. {call}\n      -> {outcome}", self.calls);
    }

    /// The trace followed by why it failed.
    fn fail(&self, why: String) -> String {
        format!("{}{why}", self.text)
    }
}

/// Runs `ops` on `store` and on a fresh model; `Err` holds the trace and the first disagreement.
pub async fn run(store: &Store, ops: &[Op], trace: &mut Trace) -> Result<(), String> {
    let mut model = Reference::default();
    let mut context = Context::default();
    for op in ops {
        let call = context.resolve(op, &model);
        let before = model.position();
        let expected = model.apply(&call);
        let actual = tokio::time::timeout(CALL_TIMEOUT, on_store(store, &call))
            .await
            .map_err(|_| trace.fail(format!("{call} did not answer within {CALL_TIMEOUT:?}")))?;
        trace.push(&call, &actual, model.position() != before);
        if actual != expected {
            return Err(trace.fail(format!(
                "the store and the model disagree on the last call:\n  store: {actual}\n  model: {expected}\n  \
                 (store, in full: {actual:?})"
            )));
        }
        if let (Call::Append { stream, events, .. }, Outcome::Appended(_)) = (&call, &actual) {
            context.appended.push((stream.clone(), events.clone()));
        }
        if call.is_write() {
            head_reaches(store, model.position())
                .await
                .map_err(|why| trace.fail(why))?;
        }
    }
    whole_store_agrees(store, &model, &context)
        .await
        .map_err(|why| trace.fail(format!("at the end: {why}")))
}

/// The whole store equals the model: global log, every stream of the pool, the listing, every id, and
/// `recorded_at` follows the commits.
async fn whole_store_agrees(
    store: &Store,
    model: &Reference,
    context: &Context,
) -> Result<(), String> {
    let mut checks: Vec<Call> = vec![
        Call::Read {
            query: ReadQuery::all(),
            page_only: false,
        },
        Call::Streams {
            prefix: String::new(),
            after: None,
            limit: 1_000,
        },
    ];
    for stream in STREAMS {
        checks.push(Call::Read {
            query: ReadQuery::stream(StreamName::new(stream).expect("valid")),
            page_only: false,
        });
        checks.push(Call::StreamVersion(stream.to_owned()));
    }
    for id in &context.known {
        checks.push(Call::Event(*id));
    }
    for call in &checks {
        let expected = model.answer(call);
        let actual = on_store(store, call).await;
        if actual != expected {
            return Err(format!("{call}\n  store: {actual}\n  model: {expected}"));
        }
    }
    recorded_at_follows_commits(store, model).await
}

/// `recorded_at` is the commit time: one value for the events of one append, never decreasing along the
/// global log, and the linked event's own time on every link entry.
async fn recorded_at_follows_commits(store: &Store, model: &Reference) -> Result<(), String> {
    let all = store
        .read_to_vec(ReadQuery::all())
        .await
        .map_err(|e| format!("reading the global log: {e}"))?;
    let commits = model.commits();
    for (i, pair) in all.windows(2).enumerate() {
        let (a, b) = (&pair[0], &pair[1]);
        if b.recorded_at < a.recorded_at {
            return Err(format!(
                "recorded_at goes back in time from position {} to {}",
                a.position, b.position
            ));
        }
        if commits[i] == commits[i + 1] && a.recorded_at != b.recorded_at {
            return Err(format!(
                "positions {} and {} were appended together but have different recorded_at",
                a.position, b.position
            ));
        }
    }
    for stream in model.stream_names() {
        let query = ReadQuery::stream(StreamName::new(stream.as_str()).expect("valid"));
        let entries = store
            .read_to_vec(query)
            .await
            .map_err(|e| format!("reading {stream}: {e}"))?;
        for entry in entries {
            let original = &all[entry.position as usize - 1];
            if entry.recorded_at != original.recorded_at {
                return Err(format!(
                    "{stream}:{} has recorded_at {}, the event at position {} has {}",
                    entry.version, entry.recorded_at, entry.position, original.recorded_at
                ));
            }
        }
    }
    Ok(())
}
