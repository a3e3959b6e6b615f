//! The pure decision of a batch: what step 1 looked up ([`Known`]), and every request decided in order, as if
//! run one by one against it, into outcomes and the batch's net writes ([`Plan`]). The rules themselves
//! (retry or duplicate, expected versions, ranges, links, deletes) are [`herald_core::rules`]; this file
//! turns the batch's state into their facts and keeps that state moving from one request to the next (an
//! event appended earlier in the batch is stored for the next request, a delete resets its stream). No
//! database here: the tests (`plan/tests.rs`) decide whole batches in memory.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use herald_core::rules::{self, AppendDecision, DeleteDecision, IdFact, LinkTarget, StoredEvent};
use herald_core::stream::category_of;
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
        self.streams.extend(found.streams);
        self.looked_up.extend(needs.ids.iter().copied());
        self.events.extend(found.events);
        self.links_looked_up.extend(
            needs
                .links
                .0
                .iter()
                .cloned()
                .zip(needs.links.1.iter().copied()),
        );
        self.linked.extend(found.linked);
    }
}

/// What a look-up found.
#[derive(Default)]
pub(super) struct Found {
    /// The named streams that exist or were deleted (the others are missing).
    pub(super) streams: Vec<(String, StreamState)>,
    /// The stored events among the ids.
    pub(super) events: Vec<(Uuid, KnownEvent)>,
    /// `(stream, position)` of the link entries among the pairs.
    pub(super) linked: Vec<(String, i64)>,
}

/// The batch decided: every request's outcome and the net writes.
pub(super) struct Plan<'a> {
    /// `None` for requests settled by an earlier attempt.
    pub(super) outcomes: Vec<Option<Outcome>>,
    /// Ids of appends the write rules could not decide before their ids are looked up
    /// ([`AppendDecision::LookUpIds`]): look them up and decide the batch again.
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
            looked_up: &known.looked_up,
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
struct Decider<'k> {
    streams: HashMap<String, StreamState>,
    /// Stored events: looked up, or appended earlier in the batch.
    events: HashMap<Uuid, KnownEvent>,
    linked: HashSet<(String, i64)>,
    /// Ids looked up, found or not: an id neither here nor in `events` is unknown (see the module docs).
    looked_up: &'k HashSet<Uuid>,
    next_position: u64,
}

impl Decider<'_> {
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
    ) -> Result<AppendResult> {
        let state = self.stream(stream)?.clone();
        let fact = |id| match self.events.get(&id) {
            Some(event) => IdFact::Stored(StoredEvent {
                stream: &event.stream,
                version: event.version as u64,
                position: event.position as u64,
                // Events before the stream's last delete left it.
                in_stream: event.stream == stream && event.position > state.deleted_through,
            }),
            None if self.looked_up.contains(&id) => IdFact::Free,
            None => IdFact::Unknown,
        };
        let first_version =
            match rules::decide_append(stream, expected, state.version, events, fact)? {
                AppendDecision::Write(versions) => versions.first,
                AppendDecision::Retry(original) => return Ok(original),
                AppendDecision::LookUpIds => {
                    // The caller looks the ids up and decides the batch again; this outcome is dropped then.
                    plan.unchecked_refusals.extend(events.iter().map(|e| e.id));
                    return Err(Error::backend(
                        "internal: an append was answered before its ids were looked up",
                    ));
                }
            };
        let count = events.len() as u64;
        let result = AppendResult {
            stream: stream.to_owned(),
            first_version,
            last_version: first_version + count - 1,
            first_position: self.next_position,
            last_position: self.next_position + count - 1,
            ids: events.iter().map(|e| e.id).collect(),
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
        let target = |id| match self.events.get(&id) {
            None => LinkTarget::Missing,
            Some(event)
                if (event.stream == stream && event.position > state.deleted_through)
                    || self.linked.contains(&(stream.to_owned(), event.position)) =>
            {
                LinkTarget::InStream
            }
            Some(event) => LinkTarget::Linkable(event.position),
        };
        let (versions, positions) =
            rules::decide_link(stream, expected, state.version, ids, target)?;
        let (first_version, last_version) = (versions.first, versions.last);
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
        match rules::decide_delete(stream, expected, state.version)? {
            DeleteDecision::Remove => {}
            DeleteDecision::Nothing => return Ok(()),
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

#[cfg(test)]
mod tests;
