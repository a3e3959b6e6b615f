//! The write rules, decided once for every backend: given the facts a backend looked up (a stream's version,
//! where each id of an append is stored, what each id of a link points at), these pure functions say what a
//! write does — write at which versions, answer an idempotent retry with its original result, or refuse with
//! which error. Backends look facts up and write; they do not re-decide, so an append, link or delete is
//! answered alike (same variant, same message) on every backend. The precedence they implement:
//!
//! - **Append**: the ids first. If any id is stored, the append is an idempotent retry (every id sits, in
//!   order, at consecutive versions and positions of this stream, which still holds them) or a duplicate,
//!   whatever it expected. Only an append of fresh ids is checked against its expected version, then against
//!   the largest storable version. A backend that lets the unique index on ids find stored ids may leave ids
//!   [`IdFact::Unknown`]; a refusal then becomes [`AppendDecision::LookUpIds`]: it stands only once the ids
//!   are known.
//! - **Link**: the expected version and the version range first, then each id in order: an unknown id is
//!   [`Error::EventNotFound`], an event the stream already holds (appended there and not deleted since, or
//!   linked before) is [`Error::DuplicateEvent`].
//! - **Delete**: the expected version; a stream that does not exist is left as it is.

use uuid::Uuid;

use crate::error::{Error, Result};
use crate::event::NewEvent;
use crate::store::AppendResult;
use crate::version::{ExpectedVersion, MAX_VERSION};

/// The reasons an [`Error::DuplicateEvent`] gives: one wording on every backend.
pub mod reason {
    /// The same id twice in one append.
    pub const TWICE_IN_APPEND: &str = "the id appears twice in one append";
    /// The same id twice in one link.
    pub const TWICE_IN_LINK: &str = "the id appears twice in one link";
    /// An append mixing stored and new ids (a retry repeats a committed append exactly).
    pub const MIXES_STORED_AND_NEW: &str =
        "the id is already used by a stored event (the append mixes new and stored ids)";
    /// An append reusing the id of an event appended to another stream.
    pub const OTHER_STREAM: &str = "the id is already used by an event of another stream";
    /// An append reusing the id of an event of this stream that a delete removed from it.
    pub const DELETED: &str = "the id belongs to an event of this stream that was deleted";
    /// An append reusing ids of this stream, but not as they were appended (order, subset, superset).
    pub const NOT_AN_EXACT_REPEAT: &str =
        "the id is already stored, but not as an exact repeat of a committed append";
    /// A link of an event into a stream that already holds it.
    pub const ALREADY_IN_STREAM: &str = "the event is already in this stream";
}

/// The versions a write takes in its stream, first and last (inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Versions {
    /// Version of the first entry written.
    pub first: u64,
    /// Version of the last entry written: the stream's version after the write.
    pub last: u64,
}

/// Checks `expected` against the stream's `current` version (`None`: no stream) and that `count` new entries
/// stay within [`MAX_VERSION`]; returns the versions they take. Appends of fresh ids and links call it.
pub fn next_versions(
    stream: &str,
    expected: ExpectedVersion,
    current: Option<u64>,
    count: usize,
) -> Result<Versions> {
    expected.check(stream, current)?;
    let first = current.map_or(0, |v| v.saturating_add(1));
    let last = (count as u64)
        .checked_sub(1)
        .map(|more| first.saturating_add(more));
    match last {
        None => Err(Error::invalid(format!(
            "a write to stream `{}` has no events; give at least one",
            stream.escape_debug()
        ))),
        Some(last) if last > MAX_VERSION => Err(Error::invalid(format!(
            "stream `{}` would pass the largest version {MAX_VERSION}",
            stream.escape_debug()
        ))),
        Some(last) => Ok(Versions { first, last }),
    }
}

/// Where a stored event sits, as a backend looked it up by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredEvent<'a> {
    /// The stream it was appended to.
    pub stream: &'a str,
    /// Its version in that stream.
    pub version: u64,
    /// Its global position.
    pub position: u64,
    /// Whether `stream` still holds it as its own entry at `version`; false once a delete removed it (the
    /// stream may have been written again since). Read only when `stream` is the append's stream, so a
    /// backend that cannot tell for other streams may leave it false there.
    pub in_stream: bool,
}

/// What a backend knows about one id of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdFact<'a> {
    /// Not looked up: the backend lets the unique index on ids find a stored one while it inserts.
    Unknown,
    /// No event has this id.
    Free,
    /// An event with this id is stored (or was appended earlier in the same batch).
    Stored(StoredEvent<'a>),
}

/// What an append does, decided by [`decide_append`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendDecision {
    /// Write the events, at these versions.
    Write(Versions),
    /// An idempotent retry of a committed append: answer with its original result and write nothing.
    Retry(AppendResult),
    /// The append would be refused, but some of its ids were not looked up and it may be the retry of a
    /// committed append (which succeeds whatever it expected): look them up and decide again.
    LookUpIds,
}

/// Decides an append of `events` to `stream`, whose version is `current`, given `fact` for each event's id
/// (see the module docs for the precedence). `Err` is the refusal: [`Error::DuplicateEvent`],
/// [`Error::WrongExpectedVersion`], or [`Error::InvalidInput`] past the largest version.
pub fn decide_append<'a>(
    stream: &str,
    expected: ExpectedVersion,
    current: Option<u64>,
    events: &[NewEvent],
    fact: impl Fn(Uuid) -> IdFact<'a>,
) -> Result<AppendDecision> {
    let mut first_stored = None;
    let (mut unknown, mut free) = (false, false);
    for event in events {
        match fact(event.id) {
            IdFact::Unknown => unknown = true,
            IdFact::Free => free = true,
            IdFact::Stored(_) => {
                first_stored.get_or_insert(event.id);
            }
        }
    }
    let Some(first_stored) = first_stored else {
        return match next_versions(stream, expected, current, events.len()) {
            Ok(versions) => Ok(AppendDecision::Write(versions)),
            Err(_) if unknown => Ok(AppendDecision::LookUpIds),
            Err(refused) => Err(refused),
        };
    };
    if unknown {
        // A stored id makes it a retry or a duplicate; which one depends on the ids not looked up.
        return Ok(AppendDecision::LookUpIds);
    }
    if free {
        return Err(duplicate(
            first_stored,
            stream,
            reason::MIXES_STORED_AND_NEW,
        ));
    }
    retry(stream, events, fact).map(AppendDecision::Retry)
}

/// Every id of the append is stored: the original result when they sit, in order, at consecutive versions
/// and positions of `stream`, which still holds them; otherwise a duplicate naming the first id out of place.
fn retry<'a>(
    stream: &str,
    events: &[NewEvent],
    fact: impl Fn(Uuid) -> IdFact<'a>,
) -> Result<AppendResult> {
    let mut first: Option<StoredEvent<'a>> = None;
    let mut last: Option<StoredEvent<'a>> = None;
    for (i, event) in events.iter().enumerate() {
        let IdFact::Stored(stored) = fact(event.id) else {
            return Err(duplicate(event.id, stream, reason::MIXES_STORED_AND_NEW));
        };
        if stored.stream != stream {
            return Err(duplicate(event.id, stream, reason::OTHER_STREAM));
        }
        if !stored.in_stream {
            return Err(duplicate(event.id, stream, reason::DELETED));
        }
        let start = *first.get_or_insert(stored);
        let step = i as u64;
        let in_place = start.version.checked_add(step) == Some(stored.version)
            && start.position.checked_add(step) == Some(stored.position);
        if !in_place {
            return Err(duplicate(event.id, stream, reason::NOT_AN_EXACT_REPEAT));
        }
        last = Some(stored);
    }
    let (Some(first), Some(last)) = (first, last) else {
        return Err(Error::invalid(format!(
            "an append to stream `{}` has no events; give at least one",
            stream.escape_debug()
        )));
    };
    Ok(AppendResult {
        stream: stream.to_owned(),
        first_version: first.version,
        last_version: last.version,
        first_position: first.position,
        last_position: last.position,
        ids: events.iter().map(|e| e.id).collect(),
    })
}

/// What a backend knows about one id of a link. `P` is how the backend points at the event (its position).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkTarget<P> {
    /// No event has this id.
    Missing,
    /// The stream already holds the event: appended there (and not deleted since) or linked before.
    InStream,
    /// A stored event the stream does not hold.
    Linkable(P),
}

/// Decides one id of a link: where the new entry points, or the refusal.
pub fn link_entry<P>(stream: &str, id: Uuid, target: LinkTarget<P>) -> Result<P> {
    match target {
        LinkTarget::Missing => Err(Error::EventNotFound { id }),
        LinkTarget::InStream => Err(already_in_stream(stream, id)),
        LinkTarget::Linkable(to) => Ok(to),
    }
}

/// The refusal of a link of `id` into a stream that already holds it. For backends whose unique index on
/// links tells them so while inserting (the fact [`LinkTarget::InStream`] found late).
pub fn already_in_stream(stream: &str, id: Uuid) -> Error {
    duplicate(id, stream, reason::ALREADY_IN_STREAM)
}

/// Decides a link of `ids` into `stream`, whose version is `current`, looking each id up with `target`
/// (called in order, only once the expected version and the range passed): the versions the entries take
/// and where they point, in order.
pub fn decide_link<P>(
    stream: &str,
    expected: ExpectedVersion,
    current: Option<u64>,
    ids: &[Uuid],
    mut target: impl FnMut(Uuid) -> LinkTarget<P>,
) -> Result<(Versions, Vec<P>)> {
    let versions = next_versions(stream, expected, current, ids.len())?;
    let entries = ids
        .iter()
        .map(|id| link_entry(stream, *id, target(*id)))
        .collect::<Result<Vec<P>>>()?;
    Ok((versions, entries))
}

/// What a delete does, decided by [`decide_delete`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteDecision {
    /// Remove the stream's entries and its version.
    Remove,
    /// The stream does not exist: nothing to write (the delete still succeeds).
    Nothing,
}

/// Decides a delete of `stream`, whose version is `current`.
pub fn decide_delete(
    stream: &str,
    expected: ExpectedVersion,
    current: Option<u64>,
) -> Result<DeleteDecision> {
    expected.check(stream, current)?;
    Ok(match current {
        Some(_) => DeleteDecision::Remove,
        None => DeleteDecision::Nothing,
    })
}

fn duplicate(id: Uuid, stream: &str, reason: &'static str) -> Error {
    Error::DuplicateEvent {
        id,
        stream: stream.to_owned(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn events(n: usize) -> Vec<NewEvent> {
        (0..n).map(|_| NewEvent::new("T")).collect()
    }

    /// `events` stored in `stream` from `version`/`position` on, still held by it.
    fn stored_at<'a>(
        stream: &'a str,
        events: &[NewEvent],
        version: u64,
        position: u64,
    ) -> HashMap<Uuid, StoredEvent<'a>> {
        events
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let at = StoredEvent {
                    stream,
                    version: version + i as u64,
                    position: position + i as u64,
                    in_stream: true,
                };
                (e.id, at)
            })
            .collect()
    }

    fn looked_up<'a>(
        stored: &'a HashMap<Uuid, StoredEvent<'a>>,
    ) -> impl Fn(Uuid) -> IdFact<'a> + 'a {
        |id| stored.get(&id).map_or(IdFact::Free, |s| IdFact::Stored(*s))
    }

    fn reason_of<T: std::fmt::Debug>(result: Result<T>) -> (Uuid, &'static str) {
        match result {
            Err(Error::DuplicateEvent { id, reason, .. }) => (id, reason),
            other => panic!("expected DuplicateEvent, got {other:?}"),
        }
    }

    #[test]
    fn fresh_ids_take_the_next_versions() {
        let batch = events(3);
        let none = HashMap::new();
        let decided = decide_append(
            "s",
            ExpectedVersion::Exact(4),
            Some(4),
            &batch,
            looked_up(&none),
        );
        assert_eq!(
            decided.unwrap(),
            AppendDecision::Write(Versions { first: 5, last: 7 })
        );
        let decided = decide_append("s", ExpectedVersion::NoStream, None, &batch, |_| {
            IdFact::Unknown
        });
        assert_eq!(
            decided.unwrap(),
            AppendDecision::Write(Versions { first: 0, last: 2 })
        );
    }

    #[test]
    fn fresh_ids_with_a_wrong_expectation_are_a_conflict() {
        let batch = events(1);
        let none = HashMap::new();
        let err = decide_append(
            "s",
            ExpectedVersion::NoStream,
            Some(0),
            &batch,
            looked_up(&none),
        )
        .unwrap_err();
        assert!(matches!(
            err,
            Error::WrongExpectedVersion {
                expected: ExpectedVersion::NoStream,
                actual: Some(0),
                ..
            }
        ));
    }

    #[test]
    fn a_refusal_with_ids_not_looked_up_asks_for_them() {
        let batch = events(2);
        let decided = decide_append("s", ExpectedVersion::NoStream, Some(3), &batch, |_| {
            IdFact::Unknown
        });
        assert_eq!(decided.unwrap(), AppendDecision::LookUpIds);
        let decided = decide_append("s", ExpectedVersion::Any, Some(MAX_VERSION), &batch, |_| {
            IdFact::Unknown
        });
        assert_eq!(decided.unwrap(), AppendDecision::LookUpIds);
    }

    #[test]
    fn a_stored_id_beside_ids_not_looked_up_asks_for_them() {
        let batch = events(2);
        let stored = stored_at("s", &batch[..1], 0, 1);
        let decided = decide_append("s", ExpectedVersion::Any, Some(0), &batch, |id| {
            stored
                .get(&id)
                .map_or(IdFact::Unknown, |s| IdFact::Stored(*s))
        });
        assert_eq!(decided.unwrap(), AppendDecision::LookUpIds);
    }

    #[test]
    fn an_exact_repeat_is_a_retry_whatever_it_expects() {
        let batch = events(2);
        let stored = stored_at("s", &batch, 3, 10);
        for expected in [
            ExpectedVersion::NoStream,
            ExpectedVersion::Exact(99),
            ExpectedVersion::Any,
        ] {
            let decided =
                decide_append("s", expected, Some(8), &batch, looked_up(&stored)).unwrap();
            assert_eq!(
                decided,
                AppendDecision::Retry(AppendResult {
                    stream: "s".to_owned(),
                    first_version: 3,
                    last_version: 4,
                    first_position: 10,
                    last_position: 11,
                    ids: batch.iter().map(|e| e.id).collect(),
                })
            );
        }
    }

    #[test]
    fn stored_and_new_ids_are_a_duplicate_naming_the_first_stored() {
        let batch = events(3);
        let stored = stored_at("s", &batch[1..2], 0, 1);
        let decided = decide_append(
            "s",
            ExpectedVersion::Any,
            Some(0),
            &batch,
            looked_up(&stored),
        );
        assert_eq!(
            reason_of(decided),
            (batch[1].id, reason::MIXES_STORED_AND_NEW)
        );
    }

    #[test]
    fn an_id_of_another_stream_is_a_duplicate() {
        let batch = events(1);
        let stored = stored_at("other", &batch, 0, 1);
        let decided = decide_append("s", ExpectedVersion::Any, None, &batch, looked_up(&stored));
        assert_eq!(reason_of(decided), (batch[0].id, reason::OTHER_STREAM));
    }

    #[test]
    fn an_id_deleted_from_its_stream_is_a_duplicate() {
        let batch = events(1);
        let mut stored = stored_at("s", &batch, 0, 1);
        for s in stored.values_mut() {
            s.in_stream = false;
        }
        let decided = decide_append(
            "s",
            ExpectedVersion::NoStream,
            None,
            &batch,
            looked_up(&stored),
        );
        assert_eq!(reason_of(decided), (batch[0].id, reason::DELETED));
    }

    #[test]
    fn reordered_or_scattered_ids_are_a_duplicate() {
        let batch = events(2);
        let stored = stored_at("s", &batch, 0, 1);
        let reordered = vec![batch[1].clone(), batch[0].clone()];
        let decided = decide_append(
            "s",
            ExpectedVersion::Any,
            Some(1),
            &reordered,
            looked_up(&stored),
        );
        assert_eq!(
            reason_of(decided),
            (batch[0].id, reason::NOT_AN_EXACT_REPEAT)
        );
        // Consecutive versions, but appended separately with another stream's event between them.
        let mut scattered = stored_at("s", &batch[..1], 0, 1);
        scattered.extend(stored_at("s", &batch[1..], 1, 3));
        let decided = decide_append(
            "s",
            ExpectedVersion::Any,
            Some(1),
            &batch,
            looked_up(&scattered),
        );
        assert_eq!(
            reason_of(decided),
            (batch[1].id, reason::NOT_AN_EXACT_REPEAT)
        );
    }

    #[test]
    fn writes_past_the_largest_version_are_invalid() {
        let err = next_versions("s", ExpectedVersion::Any, Some(MAX_VERSION - 1), 2).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidInput(m) if m.contains("largest version")),
            "{err}"
        );
        assert_eq!(
            next_versions("s", ExpectedVersion::Any, Some(MAX_VERSION - 1), 1).unwrap(),
            Versions {
                first: MAX_VERSION,
                last: MAX_VERSION
            }
        );
        assert!(matches!(
            next_versions("s", ExpectedVersion::Any, Some(u64::MAX), 1),
            Err(Error::InvalidInput(_))
        ));
        assert!(matches!(
            next_versions("s", ExpectedVersion::Any, None, 0),
            Err(Error::InvalidInput(_))
        ));
        let empty: Vec<NewEvent> = Vec::new();
        assert!(matches!(
            decide_append("s", ExpectedVersion::Any, None, &empty, |_| IdFact::Free),
            Err(Error::InvalidInput(_))
        ));
    }

    #[test]
    fn messages_escape_the_stream_name() {
        let err = next_versions("a\nb", ExpectedVersion::Any, Some(MAX_VERSION), 1).unwrap_err();
        assert!(err.to_string().contains("`a\\nb`"), "{err}");
    }

    #[test]
    fn links_check_the_version_then_each_id_in_order() {
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let positions = HashMap::from([(a, 1u64), (b, 2)]);
        let target = |id| {
            positions
                .get(&id)
                .map_or(LinkTarget::Missing, |p| LinkTarget::Linkable(*p))
        };
        let (versions, entries) =
            decide_link("l", ExpectedVersion::Exact(0), Some(0), &[b, a], target).unwrap();
        assert_eq!(
            (versions, entries),
            (Versions { first: 1, last: 2 }, vec![2, 1])
        );
        assert!(matches!(
            decide_link("l", ExpectedVersion::Any, None, &[a, c], target),
            Err(Error::EventNotFound { id }) if id == c
        ));
        // The expectation is checked before any id is looked up.
        assert!(matches!(
            decide_link(
                "l",
                ExpectedVersion::NoStream,
                Some(0),
                &[c],
                |_| -> LinkTarget<u64> { panic!("looked up after a conflict") }
            ),
            Err(Error::WrongExpectedVersion { .. })
        ));
        let held = decide_link("l", ExpectedVersion::Any, Some(4), &[a, b], |id| {
            if id == b {
                LinkTarget::InStream
            } else {
                LinkTarget::Linkable(1)
            }
        });
        assert_eq!(reason_of(held), (b, reason::ALREADY_IN_STREAM));
        assert!(matches!(
            decide_link("l", ExpectedVersion::Any, Some(MAX_VERSION), &[a], target),
            Err(Error::InvalidInput(_))
        ));
    }

    #[test]
    fn deletes_check_the_version_and_skip_missing_streams() {
        assert_eq!(
            decide_delete("s", ExpectedVersion::Exact(2), Some(2)).unwrap(),
            DeleteDecision::Remove
        );
        assert_eq!(
            decide_delete("s", ExpectedVersion::NoStream, None).unwrap(),
            DeleteDecision::Nothing
        );
        assert_eq!(
            decide_delete("s", ExpectedVersion::Any, None).unwrap(),
            DeleteDecision::Nothing
        );
        assert!(matches!(
            decide_delete("s", ExpectedVersion::StreamExists, None),
            Err(Error::WrongExpectedVersion { actual: None, .. })
        ));
        assert!(matches!(
            decide_delete("s", ExpectedVersion::Exact(1), Some(2)),
            Err(Error::WrongExpectedVersion {
                actual: Some(2),
                ..
            })
        ));
    }
}
