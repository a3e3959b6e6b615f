//! The decision of whole batches, in memory: versions and positions across requests, retries and refusals,
//! deletes that free a stream's former events, and what a batch needs looked up.

use herald_core::rules::reason;
use tokio::sync::oneshot;

use super::*;

fn append(stream: &str, events: &[NewEvent], expected: ExpectedVersion) -> Request {
    WriteRequest::Append {
        stream: stream.to_owned(),
        events: events.to_vec(),
        expected,
        extra: None,
        reply: oneshot::channel().0,
    }
}

fn link(stream: &str, ids: &[Uuid], expected: ExpectedVersion) -> Request {
    WriteRequest::Link {
        stream: stream.to_owned(),
        ids: ids.to_vec(),
        expected,
        reply: oneshot::channel().0,
    }
}

fn delete(stream: &str, expected: ExpectedVersion) -> Request {
    WriteRequest::Delete {
        stream: stream.to_owned(),
        expected,
        reply: oneshot::channel().0,
    }
}

fn events(n: usize) -> Vec<NewEvent> {
    (0..n).map(|_| NewEvent::new("T")).collect()
}

/// `streams` looked up at these versions (`None`: missing).
fn known(streams: &[(&str, Option<u64>)]) -> Known {
    let mut known = Known::default();
    for (name, version) in streams {
        let state = StreamState {
            version: *version,
            deleted_through: 0,
        };
        known.streams.insert((*name).to_owned(), state);
    }
    known
}

/// `event` looked up: stored in `stream` at `version`, `position`.
fn stored(known: &mut Known, event: &NewEvent, stream: &str, version: i64, position: i64) {
    known.looked_up.insert(event.id);
    let at = KnownEvent {
        position,
        stream: stream.to_owned(),
        version,
    };
    known.events.insert(event.id, at);
}

fn decide<'a>(batch: &'a [Request], known: &Known, next_position: u64) -> Plan<'a> {
    let tail = Tail {
        next_position,
        recorded_at: 0,
    };
    Plan::decide(batch, &[], known, &tail, &[])
}

fn appended(outcome: &Option<Outcome>) -> &AppendResult {
    match outcome {
        Some(Outcome::Append(Ok(r))) => r,
        _ => panic!("expected an accepted append"),
    }
}

fn refusal(outcome: &Option<Outcome>) -> &Error {
    match outcome {
        Some(Outcome::Append(Err(e)) | Outcome::Link(Err(e)) | Outcome::Delete(Err(e))) => e,
        _ => panic!("expected a refusal"),
    }
}

#[test]
fn appends_of_a_batch_take_consecutive_versions_and_positions() {
    let (a, b, c) = (events(2), events(1), events(1));
    let batch = [
        append("a", &a, ExpectedVersion::NoStream),
        append("b", &b, ExpectedVersion::Exact(4)),
        append("a", &c, ExpectedVersion::Exact(1)),
    ];
    let plan = decide(&batch, &known(&[("a", None), ("b", Some(4))]), 10);
    let firsts: Vec<_> = plan
        .outcomes
        .iter()
        .map(|o| {
            let r = appended(o);
            (r.first_version, r.last_version, r.first_position)
        })
        .collect();
    assert_eq!(firsts, [(0, 1, 10), (5, 5, 12), (2, 2, 13)]);
    assert_eq!(plan.events.positions, [10, 11, 12, 13]);
    assert_eq!(plan.events.versions, [0, 1, 5, 2]);
    assert_eq!(plan.events.streams, ["a", "a", "b", "a"]);
    assert_eq!(plan.versions[&"a"], Some(2));
    assert_eq!(plan.last_position, 13);
    assert!(plan.unchecked_refusals.is_empty());
}

#[test]
fn a_retry_in_the_same_batch_gets_the_first_result_and_writes_once() {
    let e = events(2);
    let batch = [
        append("a", &e, ExpectedVersion::NoStream),
        append("a", &e, ExpectedVersion::NoStream),
    ];
    let plan = decide(&batch, &known(&[("a", None)]), 1);
    assert_eq!(appended(&plan.outcomes[0]), appended(&plan.outcomes[1]));
    assert_eq!(plan.events.ids.len(), 2);
}

#[test]
fn a_refusal_stands_only_once_the_ids_are_looked_up() {
    let e = events(1);
    let batch = [append("a", &e, ExpectedVersion::NoStream)];
    let mut known = known(&[("a", Some(3))]);
    let plan = decide(&batch, &known, 5);
    assert_eq!(plan.unchecked_refusals, [e[0].id]);
    assert!(plan.writes_nothing());
    known.looked_up.insert(e[0].id);
    let plan = decide(&batch, &known, 5);
    assert!(plan.unchecked_refusals.is_empty());
    assert!(matches!(
        refusal(&plan.outcomes[0]),
        Error::WrongExpectedVersion {
            actual: Some(3),
            ..
        }
    ));
}

#[test]
fn stored_ids_are_a_retry_or_a_duplicate_whatever_was_expected() {
    let e = events(1);
    let mut known = known(&[("a", Some(0)), ("b", None)]);
    stored(&mut known, &e[0], "a", 0, 1);
    let batch = [
        append("a", &e, ExpectedVersion::NoStream),
        append("b", &e, ExpectedVersion::NoStream),
    ];
    let plan = decide(&batch, &known, 2);
    let r = appended(&plan.outcomes[0]);
    assert_eq!((r.first_version, r.first_position), (0, 1));
    assert!(matches!(
        refusal(&plan.outcomes[1]),
        Error::DuplicateEvent {
            reason: reason::OTHER_STREAM,
            ..
        }
    ));
    assert!(plan.writes_nothing());
}

#[test]
fn a_delete_lets_the_stream_link_its_former_event_back() {
    let e = events(1);
    let mut known = known(&[("a", Some(0))]);
    stored(&mut known, &e[0], "a", 0, 1);
    let batch = [
        link("a", &[e[0].id], ExpectedVersion::Any),
        delete("a", ExpectedVersion::Exact(0)),
        link("a", &[e[0].id], ExpectedVersion::NoStream),
        append("a", &e, ExpectedVersion::Any),
    ];
    let plan = decide(&batch, &known, 7);
    assert!(matches!(
        refusal(&plan.outcomes[0]),
        Error::DuplicateEvent {
            reason: reason::ALREADY_IN_STREAM,
            ..
        }
    ));
    assert!(matches!(plan.outcomes[1], Some(Outcome::Delete(Ok(())))));
    assert!(matches!(
        &plan.outcomes[2],
        Some(Outcome::Link(Ok(r))) if (r.first_version, r.last_version) == (0, 0)
    ));
    // Its id is taken by the deleted event: not a retry.
    assert!(matches!(
        refusal(&plan.outcomes[3]),
        Error::DuplicateEvent {
            reason: reason::DELETED,
            ..
        }
    ));
    assert_eq!(plan.deleted[&"a"], 6);
    assert_eq!(plan.links, [("a", 0, 1)]);
    assert_eq!(plan.versions[&"a"], Some(0));
}

#[test]
fn links_need_their_events_and_appends_their_ids_only_on_a_retry() {
    let (e, id) = (events(1), Uuid::now_v7());
    let batch = [
        append("a", &e, ExpectedVersion::Any),
        link("l", &[id], ExpectedVersion::Any),
    ];
    let needs = Known::default().needs(&batch, false);
    assert_eq!(needs.streams, ["a", "l"]);
    assert_eq!(needs.ids, [id]);
    assert_eq!(needs.links, (vec!["l".to_owned()], vec![id]));
    let needs = Known::default().needs(&batch, true);
    assert_eq!(needs.ids, [e[0].id, id]);
}
