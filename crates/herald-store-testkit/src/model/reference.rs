//! The reference model: the store's documented semantics ([`herald_core`]'s crate docs, the rules module's
//! precedence, the conformance suite's pinned decisions) written as plainly as possible over a `Vec` and a
//! map. It shares no code with any backend, nor with `herald_core::rules` or `herald_core::Limits` (it would
//! then agree with their bugs): where it and a store disagree, one of them is wrong, and the docs decide.

use std::collections::{BTreeMap, HashSet};

use herald_core::uuid::Uuid;
use herald_core::{
    AppendResult, Direction, ExpectedVersion, LinkResult, NewEvent, ReadQuery, ReadScope,
};

use super::call::{Call, Outcome, Refusal, Seen};

/// Largest version or position the store accepts (signed 64-bit in the SQL backends).
const MAX_VERSION: u64 = i64::MAX as u64;

/// An event in the global log; its position is its index plus one.
#[derive(Debug, Clone)]
struct Logged {
    id: Uuid,
    event_type: String,
    stream: String,
    version: u64,
    data: String,
    metadata: String,
    /// Which successful append wrote it: events of one append share one `recorded_at`.
    commit: usize,
}

/// One entry of a stream.
#[derive(Debug, Clone, Copy)]
struct Entry {
    position: u64,
    link: bool,
}

/// The whole store, as the docs describe it.
#[derive(Debug, Default)]
pub struct Reference {
    log: Vec<Logged>,
    /// Existing streams (at least one entry); a delete removes the stream, so its version resets.
    streams: BTreeMap<String, Vec<Entry>>,
    commits: usize,
}

impl Reference {
    /// The global position of the last event (0: empty).
    pub fn position(&self) -> u64 {
        self.log.len() as u64
    }

    /// A stream's version (`None`: it does not exist).
    pub fn version(&self, stream: &str) -> Option<u64> {
        self.streams.get(stream).map(|e| e.len() as u64 - 1)
    }

    /// The streams that exist, in name order.
    pub fn stream_names(&self) -> Vec<String> {
        self.streams.keys().cloned().collect()
    }

    /// For each logged event (in position order), the append it came from.
    pub fn commits(&self) -> Vec<usize> {
        self.log.iter().map(|e| e.commit).collect()
    }

    fn position_of(&self, id: Uuid) -> Option<u64> {
        self.log
            .iter()
            .position(|e| e.id == id)
            .map(|i| i as u64 + 1)
    }

    fn logged(&self, position: u64) -> &Logged {
        &self.log[position as usize - 1]
    }

    /// The event as appended (its own stream and version, no origin).
    fn as_appended(&self, position: u64) -> Seen {
        let e = self.logged(position);
        Seen {
            id: e.id,
            event_type: e.event_type.clone(),
            stream: e.stream.clone(),
            version: e.version,
            position,
            data: e.data.clone(),
            metadata: e.metadata.clone(),
            origin: None,
        }
    }

    /// A stream entry as read through `stream`.
    fn as_entry(&self, stream: &str, version: u64, entry: Entry) -> Seen {
        let e = self.logged(entry.position);
        Seen {
            stream: stream.to_owned(),
            version,
            origin: entry.link.then(|| (e.stream.clone(), e.version)),
            ..self.as_appended(entry.position)
        }
    }

    /// Answers `call` and applies it.
    pub fn apply(&mut self, call: &Call) -> Outcome {
        let answered = match call {
            Call::Append {
                stream,
                events,
                expected,
            } => self
                .append(stream, events, *expected)
                .map(Outcome::Appended),
            Call::Link {
                stream,
                ids,
                expected,
            } => self.link(stream, ids, *expected).map(Outcome::Linked),
            Call::Delete { stream, expected } => {
                self.delete(stream, *expected).map(|()| Outcome::Deleted)
            }
            read => return self.answer(read),
        };
        answered.unwrap_or_else(Outcome::Refused)
    }

    /// Answers a call that reads (a write is a bug in the runner).
    pub fn answer(&self, call: &Call) -> Outcome {
        let answered = match call {
            Call::Read { query, page_only } => self.read(query, *page_only).map(Outcome::Events),
            Call::Event(id) => Ok(Outcome::Event(
                self.position_of(*id).map(|p| self.as_appended(p)),
            )),
            Call::StreamVersion(stream) => Ok(Outcome::Version(self.version(stream))),
            Call::Streams {
                prefix,
                after,
                limit,
            } => self
                .list(prefix, after.as_deref(), *limit)
                .map(Outcome::Streams),
            write => panic!("the model answers reads only here, not {write}"),
        };
        answered.unwrap_or_else(Outcome::Refused)
    }

    fn check(&self, stream: &str, expected: ExpectedVersion) -> Result<Option<u64>, Refusal> {
        let actual = self.version(stream);
        let ok = match expected {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual.is_none(),
            ExpectedVersion::StreamExists => actual.is_some(),
            ExpectedVersion::Exact(v) => actual == Some(v),
        };
        if ok {
            Ok(actual)
        } else {
            Err(Refusal::WrongExpectedVersion {
                stream: stream.to_owned(),
                expected,
                actual,
            })
        }
    }

    fn out_of_range(expected: ExpectedVersion) -> bool {
        matches!(expected, ExpectedVersion::Exact(v) if v > MAX_VERSION)
    }

    fn valid_event(e: &NewEvent) -> bool {
        let json = |text: &str| serde_json::from_str::<serde_json::Value>(text).is_ok();
        !e.id.is_nil()
            && !e.event_type.is_empty()
            && !e.event_type.chars().any(char::is_control)
            && e.event_type.len() <= 255
            && json(&e.data)
            && json(&e.metadata)
            && e.metadata.trim_start().starts_with('{')
    }

    /// Append: the input first (each event in order: invalid, or an id twice), then the ids (a stored id
    /// makes it a retry or a duplicate, whatever it expected), then the expected version.
    fn append(
        &mut self,
        stream: &str,
        events: &[NewEvent],
        expected: ExpectedVersion,
    ) -> Result<AppendResult, Refusal> {
        if Self::out_of_range(expected) || events.is_empty() {
            return Err(Refusal::InvalidInput);
        }
        let mut seen = HashSet::new();
        for e in events {
            if !Self::valid_event(e) {
                return Err(Refusal::InvalidInput);
            }
            if !seen.insert(e.id) {
                return Err(Refusal::Duplicate {
                    stream: stream.to_owned(),
                });
            }
        }
        let stored: Vec<Option<u64>> = events.iter().map(|e| self.position_of(e.id)).collect();
        if stored.iter().any(Option::is_some) {
            return self.retry(stream, events, &stored);
        }
        let current = self.check(stream, expected)?;
        let first_version = current.map_or(0, |v| v + 1);
        let first_position = self.position() + 1;
        self.commits += 1;
        for (i, e) in events.iter().enumerate() {
            self.log.push(Logged {
                id: e.id,
                event_type: e.event_type.clone(),
                stream: stream.to_owned(),
                version: first_version + i as u64,
                data: e.data.clone(),
                metadata: e.metadata.clone(),
                commit: self.commits,
            });
            self.streams
                .entry(stream.to_owned())
                .or_default()
                .push(Entry {
                    position: first_position + i as u64,
                    link: false,
                });
        }
        let count = events.len() as u64;
        Ok(AppendResult {
            stream: stream.to_owned(),
            first_version,
            last_version: first_version + count - 1,
            first_position,
            last_position: first_position + count - 1,
            ids: events.iter().map(|e| e.id).collect(),
        })
    }

    /// Some id is stored: the original result when every id sits, in order, at consecutive versions and
    /// positions of this stream, which still holds each as its own entry; otherwise a duplicate.
    fn retry(
        &self,
        stream: &str,
        events: &[NewEvent],
        stored: &[Option<u64>],
    ) -> Result<AppendResult, Refusal> {
        let duplicate = || Refusal::Duplicate {
            stream: stream.to_owned(),
        };
        let mut placed = Vec::with_capacity(events.len());
        for position in stored {
            let position = position.ok_or_else(duplicate)?;
            let e = self.logged(position);
            let held = self
                .streams
                .get(stream)
                .and_then(|entries| entries.get(e.version as usize))
                .is_some_and(|entry| !entry.link && entry.position == position);
            if e.stream != stream || !held {
                return Err(duplicate());
            }
            placed.push((e.version, position));
        }
        let (first_version, first_position) = placed[0];
        for (i, &(version, position)) in placed.iter().enumerate() {
            if version != first_version + i as u64 || position != first_position + i as u64 {
                return Err(duplicate());
            }
        }
        let (last_version, last_position) = placed[placed.len() - 1];
        Ok(AppendResult {
            stream: stream.to_owned(),
            first_version,
            last_version,
            first_position,
            last_position,
            ids: events.iter().map(|e| e.id).collect(),
        })
    }

    /// Link: the input (nil, an id twice), the expected version, then each id in order: unknown, or
    /// already held by the stream (as its own entry or a link).
    fn link(
        &mut self,
        stream: &str,
        ids: &[Uuid],
        expected: ExpectedVersion,
    ) -> Result<LinkResult, Refusal> {
        if Self::out_of_range(expected) || ids.is_empty() {
            return Err(Refusal::InvalidInput);
        }
        let mut seen = HashSet::new();
        for id in ids {
            if id.is_nil() {
                return Err(Refusal::InvalidInput);
            }
            if !seen.insert(*id) {
                return Err(Refusal::Duplicate {
                    stream: stream.to_owned(),
                });
            }
        }
        let current = self.check(stream, expected)?;
        let held: HashSet<u64> = self
            .streams
            .get(stream)
            .map(|entries| entries.iter().map(|e| e.position).collect())
            .unwrap_or_default();
        let mut positions = Vec::with_capacity(ids.len());
        for id in ids {
            let position = self.position_of(*id).ok_or(Refusal::EventNotFound(*id))?;
            if held.contains(&position) {
                return Err(Refusal::Duplicate {
                    stream: stream.to_owned(),
                });
            }
            positions.push(position);
        }
        let first_version = current.map_or(0, |v| v + 1);
        let entries = self.streams.entry(stream.to_owned()).or_default();
        for position in positions {
            entries.push(Entry {
                position,
                link: true,
            });
        }
        Ok(LinkResult {
            stream: stream.to_owned(),
            first_version,
            last_version: first_version + ids.len() as u64 - 1,
        })
    }

    fn delete(&mut self, stream: &str, expected: ExpectedVersion) -> Result<(), Refusal> {
        if Self::out_of_range(expected) {
            return Err(Refusal::InvalidInput);
        }
        self.check(stream, expected)?;
        self.streams.remove(stream);
        Ok(())
    }

    fn read(&self, query: &ReadQuery, page_only: bool) -> Result<Vec<Seen>, Refusal> {
        let invalid_category = |c: &str| c.is_empty() || c.contains('-') || c.starts_with('$');
        if query.limit == Some(0)
            || query.batch_size == 0
            || query.from.is_some_and(|f| f > MAX_VERSION)
            || matches!(&query.scope, ReadScope::Category(c) if invalid_category(c))
        {
            return Err(Refusal::InvalidInput);
        }
        let wanted = |e: &Seen| query.types.is_empty() || query.types.contains(&e.event_type);
        // Every candidate in read order; `from` is inclusive, and a backward read starts at the last
        // entry at or before it.
        let candidates: Vec<Seen> = match &query.scope {
            ReadScope::Stream(stream) => {
                let entries = self
                    .streams
                    .get(stream.as_str())
                    .cloned()
                    .unwrap_or_default();
                let mut seen: Vec<Seen> = entries
                    .iter()
                    .enumerate()
                    .map(|(v, entry)| self.as_entry(stream.as_str(), v as u64, *entry))
                    .filter(|e| match (query.direction, query.from) {
                        (_, None) => true,
                        (Direction::Forward, Some(from)) => e.version >= from,
                        (Direction::Backward, Some(from)) => e.version <= from,
                    })
                    .collect();
                if query.direction == Direction::Backward {
                    seen.reverse();
                }
                seen
            }
            ReadScope::All | ReadScope::Category(_) => {
                let mut seen: Vec<Seen> = (1..=self.position())
                    .map(|p| self.as_appended(p))
                    .filter(|e| match &query.scope {
                        ReadScope::Category(c) => e.stream.split('-').next() == Some(c.as_str()),
                        _ => true,
                    })
                    .filter(|e| match (query.direction, query.from) {
                        (_, None) => true,
                        (Direction::Forward, Some(from)) => e.position >= from,
                        (Direction::Backward, Some(from)) => e.position <= from,
                    })
                    .collect();
                if query.direction == Direction::Backward {
                    seen.reverse();
                }
                seen
            }
        };
        let limit = query.limit.map_or(usize::MAX, |l| l as usize);
        let limit = if page_only {
            limit.min(query.batch_size)
        } else {
            limit
        };
        Ok(candidates.into_iter().filter(wanted).take(limit).collect())
    }

    fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, u64)>, Refusal> {
        if limit == 0 {
            return Err(Refusal::InvalidInput);
        }
        Ok(self
            .streams
            .iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .filter(|(name, _)| after.is_none_or(|a| name.as_str() > a))
            .take(limit)
            .map(|(name, entries)| (name.clone(), entries.len() as u64 - 1))
            .collect())
    }
}
