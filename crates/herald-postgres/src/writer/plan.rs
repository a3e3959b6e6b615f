//! The pure decision of a batch: what step 1 looked up ([`Known`]), and every request decided in order, as if
//! run one by one against it, into outcomes and the batch's net writes ([`Plan`]). The rules themselves
//! (retry or duplicate, expected versions, ranges, links, deletes) are [`herald_core::rules`]; this file
//! turns the batch's state into their facts and keeps that state moving from one request to the next (an
//! event appended earlier in the batch is stored for the next request, a delete resets its stream). No
//! database here: the tests at the bottom decide batches in memory.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use herald_core::stream::category_of;
use herald_core::version::MAX_VERSION;
use herald_core::{AppendResult, Error, ExpectedVersion, LinkResult, NewEvent, Result};
use uuid::Uuid;

use super::{Outcome, Request, WriteRequest};
use crate::hook::{AppendExtra, AppendHook, AppendedEvent, HookError, HookWrites};

/// Where the batch's events go and when they are recorded.
pub(super) struct Tail {
    pub(super) next_position: u64,
    /// Microseconds since the Unix epoch: every event of the batch gets it.
    pub(super) recorded_at: i64,
}

/// A stream's state as the batch sees it.
#[derive(Clone, Default)]
pub(super) struct StreamState {
    pub(super) version: Option<u64>,
    /// Its events at positions up to this one were removed from it by a delete (0: never deleted).
    pub(super) deleted_through: i64,
}

/// A stored event (or one appended earlier in the batch).
#[derive(Clone)]
pub(super) struct KnownEvent {
    pub(super) position: i64,
    pub(super) stream: String,
    pub(super) version: i64,
}

/// What the batch's checks need to know.
#[derive(Default)]
pub(super) struct Needs {
    pub(super) streams: Vec<String>,
    pub(super) ids: Vec<Uuid>,
    /// `(stream, id)`: is that stored event linked into that stream?
    pub(super) links: (Vec<String>, Vec<Uuid>),
}

impl Needs {
    pub(super) fn is_empty(&self) -> bool {
        self.streams.is_empty() && self.ids.is_empty() && self.links.0.is_empty()
    }
}

/// What step 1 read: the database as every request of the batch starts from.
#[derive(Default)]
pub(super) struct Known {
    pub(super) streams: HashMap<String, StreamState>,
    pub(super) events: HashMap<Uuid, KnownEvent>,
    /// Ids looked up, found or not.
    pub(super) looked_up: HashSet<Uuid>,
    /// `(stream, position)` of link entries found.
    pub(super) linked: HashSet<(String, i64)>,
    pub(super) links_looked_up: HashSet<(String, Uuid)>,
}

impl Known {
    /// What `requests` need that is not known yet. Links always need their events; appends need their ids
    /// only when `check_ids` (otherwise the unique index checks them, see the module docs).
    pub(super) fn needs(&self, requests: &[Request], check_ids: bool) -> Needs {
        let mut needs = Needs::default();
        let mut streams = HashSet::new();
        let mut ids = HashSet::new();
        let mut links = HashSet::new();
        for request in requests {
            let (stream, wanted): (&String, &[Uuid]) = match request {
                WriteRequest::Append { stream, events, .. } => {
                    if check_ids {
                        for e in events {
                            if !self.looked_up.contains(&e.id) && ids.insert(e.id) {
                                needs.ids.push(e.id);
                            }
                        }
                    }
                    (stream, &[])
                }
                WriteRequest::Link { stream, ids, .. } => (stream, ids),
                WriteRequest::Delete { stream, .. } => (stream, &[]),
            };
            if !self.streams.contains_key(stream) && streams.insert(stream.as_str()) {
                needs.streams.push(stream.clone());
            }
            for id in wanted {
                if !self.looked_up.contains(id) && ids.insert(*id) {
                    needs.ids.push(*id);
                }
                let pair = (stream.clone(), *id);
                if !self.links_looked_up.contains(&pair) && links.insert(pair) {
                    needs.links.0.push(stream.clone());
                    needs.links.1.push(*id);
                }
            }
        }
        needs
    }

    pub(super) fn merge(&mut self, needs: &Needs, found: Found) {
        for name in &needs.streams {
            self.streams.entry(name.clone()).or_default();
        }
        for row in found.streams {
            let name: String = row.get(0);
            let version: Option<i64> = row.get(1);
            let through: Option<i64> = row.get(2);
            self.streams.insert(
                name,
                StreamState {
                    version: version.map(|v| v as u64),
                    deleted_through: through.unwrap_or(0),
                },
            );
        }
        self.looked_up.extend(needs.ids.iter().copied());
        for row in found.events {
            self.events.insert(
                row.get(0),
                KnownEvent {
                    position: row.get(1),
                    stream: row.get(2),
                    version: row.get(3),
                },
            );
        }
        self.links_looked_up.extend(
            needs
                .links
                .0
                .iter()
                .cloned()
                .zip(needs.links.1.iter().copied()),
        );
        for row in found.linked {
            self.linked.insert((row.get(0), row.get(1)));
        }
    }
}

/// The rows a look-up returned.
pub(super) struct Found {
    pub(super) streams: Vec<tokio_postgres::Row>,
    pub(super) events: Vec<tokio_postgres::Row>,
    pub(super) linked: Vec<tokio_postgres::Row>,
}

/// The batch decided: every request's outcome and the net writes.
pub(super) struct Plan<'a> {
    /// `None` for requests settled by an earlier attempt.
    pub(super) outcomes: Vec<Option<Outcome>>,
    /// Ids of appends refused for their expected version without their ids looked up.
    pub(super) unchecked_refusals: Vec<Uuid>,
    pub(super) events: EventRows<'a>,
    /// New link entries: stream, version, position.
    pub(super) links: Vec<(&'a str, i64, i64)>,
    /// Streams deleted, with the position their events are removed through.
    pub(super) deleted: HashMap<&'a str, i64>,
    /// Final versions of the streams the batch changed (`None`: deleted).
    pub(super) versions: HashMap<&'a str, Option<u64>>,
    /// Hook statements, by the index of their append.
    pub(super) hooks: Vec<(usize, HookWrites)>,
    pub(super) last_position: u64,
    /// Every stream the batch named, as the batch leaves it.
    pub(super) streams: HashMap<String, StreamState>,
}

/// The events to insert, as the columns' arrays.
#[derive(Default)]
pub(super) struct EventRows<'a> {
    pub(super) positions: Vec<i64>,
    pub(super) ids: Vec<Uuid>,
    pub(super) streams: Vec<&'a str>,
    pub(super) versions: Vec<i64>,
    pub(super) categories: Vec<&'a str>,
    pub(super) types: Vec<&'a str>,
    pub(super) data: Vec<&'a str>,
    pub(super) metadata: Vec<&'a str>,
    pub(super) recorded_at: i64,
}

impl<'a> Plan<'a> {
    /// Decides every request of `batch` in order, as if run one by one against `known`.
    pub(super) fn decide(
        batch: &'a [Request],
        settled: &[Option<Outcome>],
        known: &Known,
        tail: &Tail,
        hooks: &[Arc<dyn AppendHook>],
        check_ids: bool,
    ) -> Self {
        let mut plan = Plan {
            outcomes: Vec::with_capacity(batch.len()),
            unchecked_refusals: Vec::new(),
            events: EventRows {
                recorded_at: tail.recorded_at,
                ..EventRows::default()
            },
            links: Vec::new(),
            deleted: HashMap::new(),
            versions: HashMap::new(),
            hooks: Vec::new(),
            last_position: tail.next_position - 1,
            streams: HashMap::new(),
        };
        let mut state = Decider {
            streams: known.streams.clone(),
            events: known.events.clone(),
            linked: known.linked.clone(),
            next_position: tail.next_position,
        };
        for (index, request) in batch.iter().enumerate() {
            if settled.get(index).is_some_and(Option::is_some) {
                plan.outcomes.push(None);
                continue;
            }
            let outcome = match request {
                WriteRequest::Append {
                    stream,
                    events,
                    expected,
                    extra,
                    ..
                } => Outcome::Append(state.append(
                    &mut plan,
                    index,
                    (stream, events, *expected),
                    hooks,
                    extra.as_ref(),
                    check_ids || events.iter().all(|e| known.looked_up.contains(&e.id)),
                )),
                WriteRequest::Link {
                    stream,
                    ids,
                    expected,
                    ..
                } => Outcome::Link(state.link(&mut plan, stream, ids, *expected)),
                WriteRequest::Delete {
                    stream, expected, ..
                } => Outcome::Delete(state.delete(&mut plan, stream, *expected)),
            };
            plan.outcomes.push(Some(outcome));
        }
        plan.last_position = state.next_position - 1;
        plan.streams = state.streams;
        plan
    }

    pub(super) fn writes_nothing(&self) -> bool {
        self.events.ids.is_empty()
            && self.links.is_empty()
            && self.deleted.is_empty()
            && self.versions.is_empty()
            && self.hooks.is_empty()
    }
}

/// The state of the streams and events as the requests of a batch are decided one after another.
struct Decider {
    streams: HashMap<String, StreamState>,
    events: HashMap<Uuid, KnownEvent>,
    linked: HashSet<(String, i64)>,
    next_position: u64,
}

impl Decider {
    fn stream(&mut self, stream: &str) -> Result<&mut StreamState> {
        self.streams
            .get_mut(stream)
            .ok_or_else(|| Error::backend(format!("internal: stream `{stream}` was not looked up")))
    }

    fn append<'a>(
        &mut self,
        plan: &mut Plan<'a>,
        index: usize,
        (stream, events, expected): (&'a str, &'a [NewEvent], ExpectedVersion),
        hooks: &[Arc<dyn AppendHook>],
        extra: Option<&AppendExtra>,
        ids_known: bool,
    ) -> Result<AppendResult> {
        let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
        let state = self.stream(stream)?.clone();
        if ids.iter().any(|id| self.events.contains_key(id)) {
            let stored = ids
                .iter()
                .filter_map(|id| {
                    self.events.get(id).map(|e| Stored {
                        id: *id,
                        position: e.position,
                        version: e.version,
                        in_own_stream: e.stream == stream && e.position > state.deleted_through,
                        stream: e.stream.clone(),
                    })
                })
                .collect();
            return retry_or_duplicate(stream, &ids, stored);
        }
        let count = events.len() as u64;
        let first_version = state.version.map_or(0, |v| v + 1);
        if let Err(refused) = expected
            .check(stream, state.version)
            .and_then(|()| check_range(stream, first_version, events.len()))
        {
            if !ids_known {
                plan.unchecked_refusals.extend(ids);
            }
            return Err(refused);
        }
        let result = AppendResult {
            stream: stream.to_owned(),
            first_version,
            last_version: first_version + count - 1,
            first_position: self.next_position,
            last_position: self.next_position + count - 1,
            ids,
        };
        if !hooks.is_empty() || extra.is_some() {
            let mut writes = HookWrites::default();
            if let Err(e) = collect_hook_writes(stream, events, &result, hooks, extra, &mut writes)
            {
                return Err(Error::backend(format!(
                    "an append hook refused the append to `{stream}`: {e}"
                )));
            }
            if !writes.is_empty() {
                plan.hooks.push((index, writes));
            }
        }
        let category = category_of(stream);
        let rows = &mut plan.events;
        for (i, event) in events.iter().enumerate() {
            let position = (result.first_position + i as u64) as i64;
            let version = (first_version + i as u64) as i64;
            rows.positions.push(position);
            rows.ids.push(event.id);
            rows.streams.push(stream);
            rows.versions.push(version);
            rows.categories.push(category);
            rows.types.push(&event.event_type);
            rows.data.push(&event.data);
            rows.metadata.push(&event.metadata);
            self.events.insert(
                event.id,
                KnownEvent {
                    position,
                    stream: stream.to_owned(),
                    version,
                },
            );
        }
        self.stream(stream)?.version = Some(result.last_version);
        plan.versions.insert(stream, Some(result.last_version));
        self.next_position += count;
        Ok(result)
    }

    fn link<'a>(
        &mut self,
        plan: &mut Plan<'a>,
        stream: &'a str,
        ids: &[Uuid],
        expected: ExpectedVersion,
    ) -> Result<LinkResult> {
        let state = self.stream(stream)?.clone();
        expected.check(stream, state.version)?;
        let first_version = state.version.map_or(0, |v| v + 1);
        check_range(stream, first_version, ids.len())?;
        let mut positions = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(event) = self.events.get(id) else {
                return Err(Error::EventNotFound { id: *id });
            };
            let own = event.stream == stream && event.position > state.deleted_through;
            if own || self.linked.contains(&(stream.to_owned(), event.position)) {
                return Err(Error::DuplicateEvent {
                    id: *id,
                    stream: stream.to_owned(),
                    reason: "the event is already in this stream",
                });
            }
            positions.push(event.position);
        }
        let last_version = first_version + ids.len() as u64 - 1;
        for (i, position) in positions.into_iter().enumerate() {
            plan.links
                .push((stream, (first_version + i as u64) as i64, position));
            self.linked.insert((stream.to_owned(), position));
        }
        self.stream(stream)?.version = Some(last_version);
        plan.versions.insert(stream, Some(last_version));
        Ok(LinkResult {
            stream: stream.to_owned(),
            first_version,
            last_version,
        })
    }

    fn delete<'a>(
        &mut self,
        plan: &mut Plan<'a>,
        stream: &'a str,
        expected: ExpectedVersion,
    ) -> Result<()> {
        let next_position = self.next_position;
        let state = self.stream(stream)?;
        expected.check(stream, state.version)?;
        if state.version.is_none() {
            return Ok(());
        }
        // Every event of the log so far: the stream's own events are all at or before it.
        let through = next_position as i64 - 1;
        state.version = None;
        state.deleted_through = through;
        self.linked.retain(|(s, _)| s != stream);
        plan.links.retain(|l| l.0 != stream);
        plan.deleted.insert(stream, through);
        plan.versions.insert(stream, None);
        Ok(())
    }
}

fn check_range(stream: &str, first_version: u64, count: usize) -> Result<()> {
    if first_version.saturating_add(count as u64 - 1) > MAX_VERSION {
        return Err(Error::invalid(format!(
            "stream `{stream}` would pass the largest version {MAX_VERSION}"
        )));
    }
    Ok(())
}

/// A stored event met by an append's ids.
struct Stored {
    id: Uuid,
    position: i64,
    stream: String,
    version: i64,
    /// Still in the stream it was appended to (that stream was not deleted since).
    in_own_stream: bool,
}

/// Asks the store's hooks, then the append's extra, for their statements.
fn collect_hook_writes(
    stream: &str,
    events: &[NewEvent],
    result: &AppendResult,
    hooks: &[Arc<dyn AppendHook>],
    extra: Option<&AppendExtra>,
    writes: &mut HookWrites,
) -> std::result::Result<(), HookError> {
    if !hooks.is_empty() {
        let appended = AppendedEvent::list(events, result);
        for hook in hooks {
            hook.on_append(stream, &appended, writes)?;
        }
    }
    if let Some(extra) = extra {
        extra(result, writes)?;
    }
    Ok(())
}

/// Some id of the append is stored. It is an idempotent retry when every id sits, in order, at consecutive
/// versions of `stream` as an event appended there; otherwise it is a duplicate naming a stored id.
fn retry_or_duplicate(stream: &str, ids: &[Uuid], stored: Vec<Stored>) -> Result<AppendResult> {
    let duplicate = |id: Uuid, reason: &'static str| Error::DuplicateEvent {
        id,
        stream: stream.to_owned(),
        reason,
    };
    let mut by_id: std::collections::HashMap<Uuid, Stored> =
        stored.into_iter().map(|s| (s.id, s)).collect();
    let first_taken = ids
        .iter()
        .find(|id| by_id.contains_key(id))
        .map_or(Uuid::nil(), |id| *id);
    if by_id.is_empty() {
        return Err(Error::backend(format!(
            "internal: append to `{stream}` was taken for a retry without a stored id"
        )));
    }
    if by_id.len() < ids.len() {
        return Err(duplicate(
            first_taken,
            "the id is already used by a stored event (the append mixes new and stored ids)",
        ));
    }
    let rows: Vec<Stored> = ids.iter().filter_map(|id| by_id.remove(id)).collect();
    let (first_position, first_version) = (rows[0].position, rows[0].version);
    for (i, (id, row)) in ids.iter().zip(&rows).enumerate() {
        if row.stream != stream {
            return Err(duplicate(
                *id,
                "the id is already used by an event of another stream",
            ));
        }
        if !row.in_own_stream {
            return Err(duplicate(
                *id,
                "the id belongs to an event of this stream that was deleted",
            ));
        }
        if row.version != first_version + i as i64 || row.position != first_position + i as i64 {
            return Err(duplicate(
                *id,
                "the id is already stored, but not as an exact repeat of a committed append",
            ));
        }
    }
    let last = &rows[rows.len() - 1];
    Ok(AppendResult {
        stream: stream.to_owned(),
        first_version: first_version as u64,
        last_version: last.version as u64,
        first_position: first_position as u64,
        last_position: last.position as u64,
        ids: ids.to_vec(),
    })
}
