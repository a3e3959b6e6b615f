//! The one timestamp format Herald prints and parses: UTC RFC 3339 with microseconds
//! (`2026-11-26T17:37:18.123456Z`). Stores keep microsecond precision, so what is printed is what is stored.

use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{OffsetDateTime, UtcOffset};

use crate::error::{Error, Result};

/// The current time, truncated to whole microseconds (what stores keep).
pub fn now_micros() -> OffsetDateTime {
    truncate_to_micros(OffsetDateTime::now_utc())
}

/// Drops sub-microsecond precision.
pub fn truncate_to_micros(t: OffsetDateTime) -> OffsetDateTime {
    let nanos = t.nanosecond();
    t.replace_nanosecond(nanos - nanos % 1_000)
        .expect("truncating nanoseconds stays in range")
}

/// The last whole microsecond strictly before `t`: a stored time (whole microseconds) is at or after `t`
/// exactly when it is after this one.
pub fn last_micro_before(t: OffsetDateTime) -> OffsetDateTime {
    let whole = truncate_to_micros(t);
    let step = if whole == t {
        time::Duration::MICROSECOND
    } else {
        // `t` has a fraction of a microsecond: the whole microsecond below it is already strictly before.
        time::Duration::ZERO
    };
    whole.saturating_sub(step)
}

/// Microseconds since the Unix epoch, the integer form stores keep.
pub fn to_unix_micros(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000) as i64
}

/// The inverse of [`to_unix_micros`].
pub fn from_unix_micros(micros: i64) -> Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000)
        .map_err(|e| Error::backend(format!("stored timestamp {micros} is out of range: {e}")))
}

/// Formats as UTC RFC 3339 with exactly six fractional digits.
pub fn format_rfc3339_micros(t: OffsetDateTime) -> String {
    let format =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");
    t.to_offset(UtcOffset::UTC)
        .format(&format)
        .expect("a UTC timestamp always formats")
}

/// Parses an RFC 3339 timestamp (any offset, any precision) as given on a command line or in a query.
pub fn parse_rfc3339(text: &str) -> Result<OffsetDateTime> {
    OffsetDateTime::parse(text, &Rfc3339).map_err(|e| {
        Error::invalid(format!(
            "`{text}` is not an RFC 3339 timestamp such as 2026-01-31T12:00:00Z: {e}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_micro_precision() {
        let t = parse_rfc3339("2026-11-26T17:37:18.123456789+01:00").unwrap();
        let t = truncate_to_micros(t);
        assert_eq!(format_rfc3339_micros(t), "2026-11-26T16:37:18.123456Z");
        assert_eq!(from_unix_micros(to_unix_micros(t)).unwrap(), t);
        assert!(parse_rfc3339("yesterday").is_err());
    }

    #[test]
    fn last_micro_before_is_strictly_before_and_whole() {
        let whole = parse_rfc3339("2026-11-26T17:37:18.123456Z").unwrap();
        let fraction = parse_rfc3339("2026-11-26T17:37:18.1234565Z").unwrap();
        assert_eq!(
            format_rfc3339_micros(last_micro_before(whole)),
            "2026-11-26T17:37:18.123455Z"
        );
        assert_eq!(last_micro_before(fraction), whole);
    }
}
