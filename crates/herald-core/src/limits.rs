//! Input rules every backend enforces before it writes, so a bad append is rejected the same way everywhere
//! and nothing already stored is touched.

use std::collections::HashSet;

use serde::de::IgnoredAny;

use crate::error::{Error, Result};
use crate::event::NewEvent;
use crate::rules::reason;
use crate::stream::{StreamName, validate_name};
use crate::version::ExpectedVersion;

/// Default largest event (type + data + metadata), in bytes: 8 MiB.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 8 * 1024 * 1024;
/// Default largest number of events in one append or link.
pub const DEFAULT_MAX_EVENTS_PER_APPEND: usize = 100_000;

/// Size limits of a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest event (type + data + metadata bytes). Larger is invalid input.
    pub max_event_bytes: usize,
    /// Most events in one append or link call.
    pub max_events_per_append: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            max_events_per_append: DEFAULT_MAX_EVENTS_PER_APPEND,
        }
    }
}

impl Limits {
    /// Checks an append: at least one event, within the count limit, every event valid, no id twice.
    pub fn validate_append(
        &self,
        stream: &StreamName,
        events: &[NewEvent],
        expected: ExpectedVersion,
    ) -> Result<()> {
        expected.validate()?;
        self.validate_count(stream, events.len(), "append")?;
        let mut seen = HashSet::with_capacity(events.len());
        for (index, event) in events.iter().enumerate() {
            self.validate_event(stream, index, event)?;
            if !seen.insert(event.id) {
                return Err(Error::DuplicateEvent {
                    id: event.id,
                    stream: stream.to_string(),
                    reason: reason::TWICE_IN_APPEND,
                });
            }
        }
        Ok(())
    }

    /// Checks a link: at least one id, within the count limit, no nil id, no id twice.
    pub fn validate_link(
        &self,
        stream: &StreamName,
        ids: &[uuid::Uuid],
        expected: ExpectedVersion,
    ) -> Result<()> {
        expected.validate()?;
        self.validate_count(stream, ids.len(), "link")?;
        let mut seen = HashSet::with_capacity(ids.len());
        for id in ids {
            if id.is_nil() {
                return Err(Error::invalid(format!(
                    "link to stream `{stream}`: the nil UUID is not an event id"
                )));
            }
            if !seen.insert(*id) {
                return Err(Error::DuplicateEvent {
                    id: *id,
                    stream: stream.to_string(),
                    reason: reason::TWICE_IN_LINK,
                });
            }
        }
        Ok(())
    }

    /// Checks a delete: its expected version must be storable.
    pub fn validate_delete(&self, expected: ExpectedVersion) -> Result<()> {
        expected.validate()
    }

    /// Checks a streams listing: at least one stream per page.
    pub fn validate_streams(&self, limit: usize) -> Result<()> {
        if limit == 0 {
            return Err(Error::invalid("streams limit must be at least 1"));
        }
        Ok(())
    }

    fn validate_count(&self, stream: &StreamName, count: usize, what: &str) -> Result<()> {
        if count == 0 {
            return Err(Error::invalid(format!(
                "{what} to stream `{stream}` has no events; give at least one"
            )));
        }
        if count > self.max_events_per_append {
            return Err(Error::invalid(format!(
                "{what} to stream `{stream}` has {count} events; the limit is {} per call",
                self.max_events_per_append
            )));
        }
        Ok(())
    }

    fn validate_event(&self, stream: &StreamName, index: usize, event: &NewEvent) -> Result<()> {
        let at = || format!("event {index} ({}) for stream `{stream}`", event.id);
        if event.id.is_nil() {
            return Err(Error::invalid(format!(
                "{}: the nil UUID is not a valid event id",
                at()
            )));
        }
        validate_name("event type", &event.event_type)
            .map_err(|e| Error::invalid(format!("{}: {}", at(), strip_prefix(&e))))?;
        let size = event.event_type.len() + event.data.len() + event.metadata.len();
        if size > self.max_event_bytes {
            return Err(Error::invalid(format!(
                "{}: event is {size} bytes; the limit is {} bytes",
                at(),
                self.max_event_bytes
            )));
        }
        validate_json(&event.data)
            .map_err(|e| Error::invalid(format!("{}: data is not valid JSON: {e}", at())))?;
        validate_json(&event.metadata)
            .map_err(|e| Error::invalid(format!("{}: metadata is not valid JSON: {e}", at())))?;
        if !event.metadata.trim_start().starts_with('{') {
            return Err(Error::invalid(format!(
                "{}: metadata must be a JSON object",
                at()
            )));
        }
        Ok(())
    }
}

/// Checks JSON syntax without building a value, so numbers of any size pass and nothing is re-encoded.
pub fn validate_json(text: &str) -> std::result::Result<(), serde_json::Error> {
    serde_json::from_str::<IgnoredAny>(text).map(|_| ())
}

fn strip_prefix(e: &Error) -> String {
    match e {
        Error::InvalidInput(m) => m.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream() -> StreamName {
        StreamName::new("s").unwrap()
    }

    #[test]
    fn accepts_big_integers_and_escaped_nul() {
        let e =
            NewEvent::new("T").with_data(r#"{"n":123456789012345678901234567890,"z":"\u0000"}"#);
        Limits::default()
            .validate_append(&stream(), &[e], ExpectedVersion::Any)
            .unwrap();
    }

    #[test]
    fn deletes_and_listings_are_checked_once() {
        let limits = Limits::default();
        assert!(limits.validate_delete(ExpectedVersion::Exact(3)).is_ok());
        assert!(matches!(
            limits.validate_delete(ExpectedVersion::Exact(u64::MAX)),
            Err(Error::InvalidInput(_))
        ));
        assert!(limits.validate_streams(1).is_ok());
        assert!(
            matches!(limits.validate_streams(0), Err(Error::InvalidInput(m)) if m.contains("limit"))
        );
    }

    #[test]
    fn rejects_bad_events() {
        let limits = Limits {
            max_event_bytes: 64,
            ..Limits::default()
        };
        let cases = [
            NewEvent::new("T").with_data("{"),
            NewEvent::new("T").with_metadata("[]"),
            NewEvent::new("T").with_metadata("{} trailing"),
            NewEvent::new(""),
            NewEvent::new("T\n"),
            NewEvent::new("T").with_id(uuid::Uuid::nil()),
            NewEvent::new("T").with_data(format!("\"{}\"", "x".repeat(100))),
        ];
        for e in cases {
            let err = limits
                .validate_append(&stream(), std::slice::from_ref(&e), ExpectedVersion::Any)
                .unwrap_err();
            assert!(matches!(err, Error::InvalidInput(_)), "{e:?} gave {err}");
        }
        assert!(
            limits
                .validate_append(&stream(), &[], ExpectedVersion::Any)
                .is_err()
        );
    }
}
