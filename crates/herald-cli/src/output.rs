//! JSON lines for stdout. Event data and metadata are embedded exactly as stored (key order, big numbers and
//! escapes untouched); only line breaks between JSON tokens become spaces, so each event stays on one line.

use std::borrow::Cow;

use herald::{RecordedEvent, timefmt};
use serde::Serialize;
use serde_json::value::RawValue;

/// One event, as `herald read` prints it.
#[derive(Serialize)]
struct EventLine<'a> {
    id: herald::uuid::Uuid,
    #[serde(rename = "type")]
    event_type: &'a str,
    stream: &'a str,
    version: u64,
    position: u64,
    data: &'a RawValue,
    metadata: &'a RawValue,
    recorded_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    origin_stream: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    origin_version: Option<u64>,
}

/// Renders an event as one JSON line (no trailing newline).
pub(crate) fn event_line(event: &RecordedEvent) -> Result<String, serde_json::Error> {
    let data = one_line(&event.data);
    let metadata = one_line(&event.metadata);
    let data: &RawValue = serde_json::from_str(&data)?;
    let metadata: &RawValue = serde_json::from_str(&metadata)?;
    serde_json::to_string(&EventLine {
        id: event.id,
        event_type: &event.event_type,
        stream: &event.stream,
        version: event.version,
        position: event.position,
        data,
        metadata,
        recorded_at: timefmt::format_rfc3339_micros(event.recorded_at),
        origin_stream: event.origin.as_ref().map(|o| o.stream.as_str()),
        origin_version: event.origin.as_ref().map(|o| o.version),
    })
}

/// JSON forbids raw line breaks inside strings, so any in stored JSON text are whitespace between tokens and
/// can become spaces without changing the value.
fn one_line(json: &str) -> Cow<'_, str> {
    if json.contains(['\n', '\r']) {
        Cow::Owned(json.replace(['\n', '\r'], " "))
    } else {
        Cow::Borrowed(json)
    }
}

/// Serializes any value as one JSON line.
pub(crate) fn json_line<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("output types always serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_breaks_between_tokens_become_spaces() {
        assert_eq!(
            one_line("{\n \"a\": \"x\\ny\"\r\n}"),
            "{  \"a\": \"x\\ny\"  }"
        );
        assert!(matches!(one_line("{}"), Cow::Borrowed(_)));
    }
}
