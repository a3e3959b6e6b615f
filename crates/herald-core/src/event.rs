//! Events as written ([`NewEvent`]) and as read back ([`RecordedEvent`]).
//!
//! Data and metadata are JSON text, stored and returned byte for byte. Metadata is a JSON object; Herald reads
//! `correlation_id`, `causation_id` and `schema_version` from it and leaves every other key to the user.

use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::{Error, Result};

/// Metadata key holding the id shared by every event of one conversation or workflow.
pub const CORRELATION_ID: &str = "correlation_id";
/// Metadata key holding the id of the event (or command) that caused this one.
pub const CAUSATION_ID: &str = "causation_id";
/// Metadata key holding the schema version the event's data was written with: a JSON integer (`u32`, from 1;
/// absent means 1), the same number herald-notify's `DomainEvent::SCHEMA_VERSION` and herald-es's
/// `EventSet::schema_version` give. Named `…_KEY` because `SCHEMA_VERSION` is that number, not the key.
pub const SCHEMA_VERSION_KEY: &str = "schema_version";

/// An event to append. The id is a fresh UUIDv7 unless set; data defaults to `{}` and metadata to `{}`.
///
/// ```
/// use herald_core::NewEvent;
/// let event = NewEvent::new("UserRegistered")
///     .with_data(r#"{"email":"ada@example.com"}"#)
///     .with_metadata(r#"{"correlation_id":"0190c8a4-5c56-7d3e-8f00-000000000001"}"#);
/// assert_eq!(event.event_type, "UserRegistered");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// Unique across the store. Repeating an append with the same ids is idempotent.
    pub id: Uuid,
    /// The event's type name, 1 to 255 bytes, no control characters.
    pub event_type: String,
    /// JSON text (any JSON value), kept byte for byte.
    pub data: String,
    /// JSON object text, kept byte for byte.
    pub metadata: String,
}

impl NewEvent {
    /// An event of `event_type` with a new UUIDv7 id, data `{}` and metadata `{}`.
    pub fn new(event_type: impl Into<String>) -> Self {
        NewEvent {
            id: Uuid::now_v7(),
            event_type: event_type.into(),
            data: "{}".to_owned(),
            metadata: "{}".to_owned(),
        }
    }

    /// Sets the data to this JSON text (validated on append).
    pub fn with_data(mut self, json: impl Into<String>) -> Self {
        self.data = json.into();
        self
    }

    /// Sets the data by serializing `value`.
    pub fn with_data_value<T: Serialize + ?Sized>(mut self, value: &T) -> Result<Self> {
        self.data = serde_json::to_string(value)
            .map_err(|e| Error::invalid(format!("event data does not serialize to JSON: {e}")))?;
        Ok(self)
    }

    /// Sets the metadata to this JSON object text (validated on append).
    pub fn with_metadata(mut self, json: impl Into<String>) -> Self {
        self.metadata = json.into();
        self
    }

    /// Sets the id.
    pub fn with_id(mut self, id: Uuid) -> Self {
        self.id = id;
        self
    }
}

/// Where an event was first written, when it is read through a link from another stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Origin {
    /// The stream the event was appended to.
    pub stream: String,
    /// Its version there.
    pub version: u64,
}

/// An event as stored.
///
/// `stream` and `version` are the place it was read from: its own stream, or — when read through a link — the
/// linking stream, with [`RecordedEvent::origin`] naming where it was appended. `position` is the event's place
/// in the global log, which is the same wherever it is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    /// The event id.
    pub id: Uuid,
    /// The event type.
    pub event_type: String,
    /// The stream it was read from.
    pub stream: String,
    /// Its version in that stream (0 for the first event).
    pub version: u64,
    /// Its global position (1 for the first event in the store; only grows in commit order).
    pub position: u64,
    /// Data, JSON text exactly as written.
    pub data: String,
    /// Metadata, JSON object text exactly as written.
    pub metadata: String,
    /// Commit time, UTC, microsecond precision.
    pub recorded_at: OffsetDateTime,
    /// Set when read through a link.
    pub origin: Option<Origin>,
}

impl RecordedEvent {
    /// The `correlation_id` metadata value, when it is a UUID.
    pub fn correlation_id(&self) -> Option<Uuid> {
        metadata_uuid(&self.metadata, CORRELATION_ID)
    }

    /// The `causation_id` metadata value, when it is a UUID.
    pub fn causation_id(&self) -> Option<Uuid> {
        metadata_uuid(&self.metadata, CAUSATION_ID)
    }

    /// Deserializes the data into `T`; the error names the event id and type.
    pub fn data_as<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_str(&self.data).map_err(|e| {
            Error::invalid(format!(
                "data of event {} ({}) does not deserialize: {e}",
                self.id, self.event_type
            ))
        })
    }

    /// True when this entry is a link to an event appended elsewhere.
    pub fn is_link(&self) -> bool {
        self.origin.is_some()
    }
}

/// Reads a UUID-valued key from metadata JSON text.
pub fn metadata_uuid(metadata: &str, key: &str) -> Option<Uuid> {
    #[derive(serde::Deserialize)]
    struct Ids {
        correlation_id: Option<String>,
        causation_id: Option<String>,
    }
    let ids: Ids = serde_json::from_str(metadata).ok()?;
    let value = match key {
        CORRELATION_ID => ids.correlation_id,
        CAUSATION_ID => ids.causation_id,
        _ => None,
    }?;
    Uuid::parse_str(&value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_correlation_and_causation_from_metadata() {
        let c = Uuid::now_v7();
        let meta = format!(r#"{{"user":1,"correlation_id":"{c}","causation_id":"nope"}}"#);
        assert_eq!(metadata_uuid(&meta, CORRELATION_ID), Some(c));
        assert_eq!(metadata_uuid(&meta, CAUSATION_ID), None);
        assert_eq!(metadata_uuid("not json", CORRELATION_ID), None);
    }
}

/// One event of an append as the backends' append hooks see it: already inserted, with its place in the
/// stream and the log, borrowing the appended event's text.
#[derive(Debug, Clone, Copy)]
pub struct AppendedEvent<'a> {
    /// The event id.
    pub id: Uuid,
    /// The event type.
    pub event_type: &'a str,
    /// Its version in the stream appended to.
    pub version: u64,
    /// Its global position.
    pub position: u64,
    /// Data, JSON text as written.
    pub data: &'a str,
    /// Metadata, JSON object text as written.
    pub metadata: &'a str,
}

impl<'a> AppendedEvent<'a> {
    /// The events of one append, placed where `result` says the append wrote them.
    pub fn list(events: &'a [NewEvent], result: &crate::AppendResult) -> Vec<AppendedEvent<'a>> {
        events
            .iter()
            .enumerate()
            .map(|(i, e)| AppendedEvent {
                id: e.id,
                event_type: &e.event_type,
                version: result.first_version + i as u64,
                position: result.first_position + i as u64,
                data: &e.data,
                metadata: &e.metadata,
            })
            .collect()
    }
}
