//! Typed events, schema versions and upcasting.
//!
//! Backends store serialized records; this module turns them into typed events and back, once, for every
//! backend. An aggregate's events are one Rust type implementing [`EventSet`] (usually an enum). The default
//! encoding is serde's *adjacently tagged* form — put `#[serde(tag = "type", content = "data")]` on the enum —
//! so the variant name (or its `#[serde(rename)]`) is the stable stored type name and the variant's content is
//! the stored data. Override [`EventSet::encode`]/[`EventSet::decode`] for any other mapping.
//!
//! # Where the schema version lives
//!
//! In the event's **metadata**, key `schema_version` (a JSON integer, see
//! [`SCHEMA_VERSION_KEY`](herald_core::SCHEMA_VERSION_KEY)); an event without
//! it is version 1, so events written by other tools (the CLI) read as version 1. The data stays exactly the
//! user's payload. [`EventSet::schema_version`] says which version the code writes today.
//!
//! # Upcasting
//!
//! [`Upcasters`] hold one step per `(type, from_version)`, each turning the JSON data of version `n` into
//! version `n + 1`. On read, steps run in a chain (v1 → v2 → v3) until the current version; stored history is
//! never rewritten. A missing step, a failing step, a version newer than the code, or data that does not
//! deserialize afterwards is an [`EsError`] naming the event id, type and version — never a silent default.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;

use herald_core::time::OffsetDateTime;
use herald_core::{NewEvent, RecordedEvent};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::error::{EsError, Result};
use crate::metadata::CommandMetadata;

/// A set of typed events stored under stable type names with a schema version per type.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use herald_es::EventSet;
///
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// #[serde(tag = "type", content = "data")]
/// enum AccountEvent {
///     Opened { owner: String },
///     #[serde(rename = "MoneyDeposited")]
///     Deposited { cents: u64 },
/// }
/// impl EventSet for AccountEvent {
///     fn schema_version(event_type: &str) -> u32 {
///         if event_type == "MoneyDeposited" { 2 } else { 1 }
///     }
/// }
///
/// let (t, data) = AccountEvent::Deposited { cents: 5 }.encode().unwrap();
/// assert_eq!((t.as_str(), data.as_str()), ("MoneyDeposited", r#"{"cents":5}"#));
/// let value = serde_json::from_str(&data).unwrap();
/// assert_eq!(AccountEvent::decode(&t, value).unwrap(), AccountEvent::Deposited { cents: 5 });
/// ```
pub trait EventSet: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The schema version this code writes (and upcasts to) for `event_type`. Default: 1.
    fn schema_version(event_type: &str) -> u32 {
        let _ = event_type;
        1
    }

    /// Splits an event into its stored type name and JSON data text. Default: the adjacently tagged serde
    /// form, serialized once, so the data keeps the field order of the Rust type.
    fn encode(&self) -> std::result::Result<(String, String), String> {
        #[derive(serde::Deserialize)]
        struct Parts<'a> {
            #[serde(rename = "type")]
            event_type: String,
            #[serde(borrow)]
            data: Option<&'a serde_json::value::RawValue>,
        }
        const NEEDS_TAG: &str =
            "the default encoding needs #[serde(tag = \"type\", content = \"data\")]";
        let text = serde_json::to_string(self).map_err(|e| e.to_string())?;
        let parts: Parts<'_> = serde_json::from_str(&text).map_err(|_| NEEDS_TAG.to_owned())?;
        let data = parts
            .data
            .map_or_else(|| "null".to_owned(), |d| d.get().to_owned());
        Ok((parts.event_type, data))
    }

    /// Builds an event from its stored type name and (upcast) JSON data. Default: the adjacently tagged form.
    fn decode(event_type: &str, data: Value) -> std::result::Result<Self, String> {
        let unit = data.is_null();
        let mut map = Map::with_capacity(2);
        map.insert("type".into(), Value::String(event_type.to_owned()));
        map.insert("data".into(), data);
        match serde_json::from_value(Value::Object(map.clone())) {
            Ok(event) => Ok(event),
            Err(first) if unit => {
                // Unit variants encode without content; accept them without `data` too.
                map.remove("data");
                serde_json::from_value(Value::Object(map)).map_err(|_| first.to_string())
            }
            Err(e) => Err(e.to_string()),
        }
    }
}

/// One upcasting step: the data of schema version `n` in, the data of version `n + 1` out.
pub type UpcastFn = Arc<dyn Fn(Value) -> std::result::Result<Value, String> + Send + Sync>;

/// Upcasting steps by `(event type, from version)`.
///
/// ```
/// use herald_es::Upcasters;
/// use serde_json::json;
/// let upcasters = Upcasters::new()
///     // v1 had `name`; v2 splits it.
///     .add("UserRegistered", 1, |mut d| {
///         let name = d["name"].take();
///         Ok(json!({ "first": name, "last": "" }))
///     })
///     // v3 adds `email`.
///     .add("UserRegistered", 2, |mut d| {
///         d["email"] = json!(null);
///         Ok(d)
///     });
/// let v3 = upcasters.upcast("UserRegistered", 1, 3, json!({"name": "Ada"})).unwrap();
/// assert_eq!(v3, json!({"first": "Ada", "last": "", "email": null}));
/// ```
#[derive(Clone, Default)]
pub struct Upcasters {
    steps: HashMap<(String, u32), UpcastFn>,
}

impl std::fmt::Debug for Upcasters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut steps: Vec<_> = self.steps.keys().collect();
        steps.sort();
        f.debug_struct("Upcasters").field("steps", &steps).finish()
    }
}

impl Upcasters {
    /// No steps.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the step from `from_version` to `from_version + 1` for `event_type` (replacing one already there).
    pub fn add(
        mut self,
        event_type: impl Into<String>,
        from_version: u32,
        step: impl Fn(Value) -> std::result::Result<Value, String> + Send + Sync + 'static,
    ) -> Self {
        self.steps
            .insert((event_type.into(), from_version), Arc::new(step));
        self
    }

    /// Runs the chain from `stored` to `current`. The error says which step failed or is missing.
    pub fn upcast(
        &self,
        event_type: &str,
        stored: u32,
        current: u32,
        mut data: Value,
    ) -> std::result::Result<Value, (u32, String)> {
        if stored > current {
            return Err((
                stored,
                format!(
                    "stored schema version {stored} is newer than this code's version {current}"
                ),
            ));
        }
        for version in stored..current {
            let step = self
                .steps
                .get(&(event_type.to_owned(), version))
                .ok_or_else(|| {
                    (
                        version,
                        format!("no upcaster from version {version} to {}", version + 1),
                    )
                })?;
            data = step(data).map_err(|e| {
                (
                    version,
                    format!("upcaster to version {} failed: {e}", version + 1),
                )
            })?;
        }
        Ok(data)
    }
}

/// A typed event read back, with where it sits in the store: a [`RecordedEvent`] whose data is decoded.
/// Not called an envelope: herald-notify's `Envelope` is an event in flight with its metadata, before it is
/// stored.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedEvent<E> {
    /// The typed event (upcast to the current schema version).
    pub event: E,
    /// The event id.
    pub id: Uuid,
    /// Stored type name.
    pub event_type: String,
    /// Schema version it was stored with.
    pub stored_schema_version: u32,
    /// Stream it was read from.
    pub stream: String,
    /// Version in that stream.
    pub version: u64,
    /// Global position.
    pub position: u64,
    /// Metadata JSON text as stored.
    pub metadata: String,
    /// Commit time.
    pub recorded_at: OffsetDateTime,
}

/// Encodes typed events into [`NewEvent`]s and decodes [`RecordedEvent`]s, upcasting on the way in.
pub struct Codec<E> {
    upcasters: Upcasters,
    _events: PhantomData<fn() -> E>,
}

impl<E> Clone for Codec<E> {
    fn clone(&self) -> Self {
        Codec {
            upcasters: self.upcasters.clone(),
            _events: PhantomData,
        }
    }
}

impl<E> std::fmt::Debug for Codec<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec")
            .field("upcasters", &self.upcasters)
            .finish()
    }
}

impl<E: EventSet> Default for Codec<E> {
    fn default() -> Self {
        Self::new(Upcasters::new())
    }
}

/// The schema version recorded in metadata JSON text under
/// [`SCHEMA_VERSION_KEY`](herald_core::SCHEMA_VERSION_KEY) (absent or unreadable: 1).
pub fn stored_schema_version(metadata: &str) -> u32 {
    // Reads only this key (serde skips the rest without building it); the field is SCHEMA_VERSION_KEY.
    #[derive(serde::Deserialize)]
    struct V {
        schema_version: Option<u32>,
    }
    serde_json::from_str::<V>(metadata)
        .ok()
        .and_then(|v| v.schema_version)
        .unwrap_or(1)
}

impl<E: EventSet> Codec<E> {
    /// A codec with these upcasters.
    pub fn new(upcasters: Upcasters) -> Self {
        Codec {
            upcasters,
            _events: PhantomData,
        }
    }

    /// The upcasters.
    pub fn upcasters(&self) -> &Upcasters {
        &self.upcasters
    }

    /// Encodes an event caused by a command with `metadata`.
    pub fn encode(&self, event: &E, metadata: &CommandMetadata) -> Result<NewEvent> {
        let (event_type, data) = event.encode().map_err(|message| EsError::Encode {
            what: "event",
            message,
        })?;
        let version = E::schema_version(&event_type);
        Ok(NewEvent::new(event_type)
            .with_data(data)
            .with_metadata(metadata.event_metadata(version)))
    }

    /// Decodes a stored event into the current typed form, upcasting old schema versions.
    pub fn decode(&self, recorded: &RecordedEvent) -> Result<DecodedEvent<E>> {
        let stored = stored_schema_version(&recorded.metadata);
        let event = self.decode_parts(recorded.id, &recorded.event_type, stored, &recorded.data)?;
        Ok(DecodedEvent {
            event,
            id: recorded.id,
            event_type: recorded.event_type.clone(),
            stored_schema_version: stored,
            stream: recorded.stream.clone(),
            version: recorded.version,
            position: recorded.position,
            metadata: recorded.metadata.clone(),
            recorded_at: recorded.recorded_at,
        })
    }

    /// Decodes only the typed event.
    pub fn decode_event(&self, recorded: &RecordedEvent) -> Result<E> {
        let stored = stored_schema_version(&recorded.metadata);
        self.decode_parts(recorded.id, &recorded.event_type, stored, &recorded.data)
    }

    fn decode_parts(&self, id: Uuid, event_type: &str, stored: u32, data: &str) -> Result<E> {
        let decode_error = |message: String| EsError::Decode {
            id,
            event_type: event_type.to_owned(),
            schema_version: stored,
            message,
        };
        let value: Value = serde_json::from_str(data)
            .map_err(|e| decode_error(format!("data is not JSON: {e}")))?;
        let current = E::schema_version(event_type);
        let value = if stored == current {
            value
        } else {
            self.upcasters
                .upcast(event_type, stored, current, value)
                .map_err(|(from_version, message)| EsError::Upcast {
                    id,
                    event_type: event_type.to_owned(),
                    from_version,
                    message,
                })?
        };
        E::decode(event_type, value).map_err(decode_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One key, one number: what herald-es writes and what herald-notify's `StorePublisher` writes (the
    /// `DomainEvent::SCHEMA_VERSION` under the same key) both read back as that version.
    #[test]
    fn schema_version_is_one_number_under_one_key() {
        let written = CommandMetadata::new().event_metadata(7);
        let value: Value = serde_json::from_str(&written).unwrap();
        assert_eq!(value[herald_core::SCHEMA_VERSION_KEY], 7);
        assert_eq!(stored_schema_version(&written), 7);
        let by_notify = format!(
            r#"{{"correlation_id":"{}","{}":3}}"#,
            Uuid::nil(),
            herald_core::SCHEMA_VERSION_KEY
        );
        assert_eq!(stored_schema_version(&by_notify), 3);
        assert_eq!(stored_schema_version("{}"), 1, "absent: version 1");
        assert_eq!(
            stored_schema_version(r#"{"schema_version":"2"}"#),
            1,
            "not a number"
        );
    }
}
