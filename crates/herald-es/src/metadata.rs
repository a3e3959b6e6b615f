//! Command metadata, and how it becomes the metadata of the events a command causes.
//!
//! Every event written through this crate carries, in its metadata JSON object:
//!
//! | key | value |
//! | --- | --- |
//! | `correlation_id` | the command's correlation (the conversation it belongs to; the command id when it starts one) |
//! | `causation_id` | the event that caused the command when there is one (a process manager), else the command id |
//! | `command_id` | the command that wrote the event |
//! | `schema_version` | the event type's schema version the payload was written with (see [`crate::codec`]) |
//!
//! plus every user key of [`CommandMetadata::extra`]. Keys this crate writes win over user keys of the same name.

use herald_core::RecordedEvent;
use herald_core::event::{CAUSATION_ID, CORRELATION_ID};
use serde_json::{Map, Value};
use uuid::Uuid;

/// Metadata key of the command id in event metadata.
pub const COMMAND_ID: &str = "command_id";

/// What travels with a command: its id, its correlation and causation, and user keys (user id, tenant, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct CommandMetadata {
    /// This command's id (fresh UUIDv7 by default).
    pub command_id: Uuid,
    /// The conversation this command belongs to; `None`: it starts one (its own id is used), unless the
    /// [`crate::command::Correlation`] middleware inherits one from the command being handled.
    pub correlation_id: Option<Uuid>,
    /// The event or command that caused this command, when there is one.
    pub causation_id: Option<Uuid>,
    /// User keys copied into every event the command causes.
    pub extra: Map<String, Value>,
}

impl Default for CommandMetadata {
    fn default() -> Self {
        Self::new()
    }
}

impl CommandMetadata {
    /// Fresh metadata: a new command id, no correlation or causation yet.
    pub fn new() -> Self {
        CommandMetadata {
            command_id: Uuid::now_v7(),
            correlation_id: None,
            causation_id: None,
            extra: Map::new(),
        }
    }

    /// Metadata for a command caused by `event`: same correlation (the event's, or its id when it has none),
    /// causation = the event id.
    pub fn caused_by(event: &RecordedEvent) -> Self {
        CommandMetadata {
            correlation_id: Some(event.correlation_id().unwrap_or(event.id)),
            causation_id: Some(event.id),
            ..Self::new()
        }
    }

    /// Sets the correlation id.
    pub fn with_correlation(mut self, id: Uuid) -> Self {
        self.correlation_id = Some(id);
        self
    }

    /// Sets the command id.
    pub fn with_command_id(mut self, id: Uuid) -> Self {
        self.command_id = id;
        self
    }

    /// Adds a user key copied into the events' metadata.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.extra.insert(key.into(), value.into());
        self
    }

    /// The effective correlation id: the one set, or the command id.
    pub fn correlation(&self) -> Uuid {
        self.correlation_id.unwrap_or(self.command_id)
    }

    /// The causation id written on caused events: the causing event when set, or the command id.
    pub fn causation(&self) -> Uuid {
        self.causation_id.unwrap_or(self.command_id)
    }

    /// The id of the `index`-th event this command causes, derived from the command id (used by
    /// [`crate::Repository::idempotent`]): the command id with its 62 random low bits mixed with `index`, so
    /// the version and variant bits stay valid and every index gives another id.
    pub fn event_id(&self, index: usize) -> Uuid {
        const LOW_62: u128 = (1 << 62) - 1;
        let mix = ((index as u128 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)) & LOW_62;
        let mix = if mix == 0 { 1 } else { mix };
        Uuid::from_u128(self.command_id.as_u128() ^ mix)
    }

    /// The metadata JSON object text of an event this command causes, written with `schema_version`.
    pub fn event_metadata(&self, schema_version: u32) -> String {
        let mut map = Map::with_capacity(4 + self.extra.len());
        map.insert(
            CORRELATION_ID.into(),
            Value::String(self.correlation().to_string()),
        );
        map.insert(
            CAUSATION_ID.into(),
            Value::String(self.causation().to_string()),
        );
        map.insert(
            COMMAND_ID.into(),
            Value::String(self.command_id.to_string()),
        );
        map.insert(
            herald_core::SCHEMA_VERSION_KEY.into(),
            Value::from(schema_version),
        );
        for (k, v) in &self.extra {
            map.entry(k.clone()).or_insert_with(|| v.clone());
        }
        Value::Object(map).to_string()
    }
}
