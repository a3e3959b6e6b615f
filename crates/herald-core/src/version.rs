//! Optimistic concurrency: what the caller believes a stream's version is when it writes.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// The version a caller expects a stream to be at when appending, linking or deleting. The check runs inside
/// the write's transaction, so two writers expecting the same `Exact(v)` can never both succeed.
///
/// Stream versions start at 0 for the first event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ExpectedVersion {
    /// No check: write whatever the version is. Events still get real, consecutive versions.
    #[default]
    Any,
    /// The stream must not exist (no event, or deleted).
    NoStream,
    /// The stream must exist (hold at least one event).
    StreamExists,
    /// The stream's last event must have exactly this version.
    Exact(u64),
}

/// Largest stream version or position a backend accepts: positions and versions are stored as signed 64-bit
/// integers by the SQL backends.
pub const MAX_VERSION: u64 = i64::MAX as u64;

impl ExpectedVersion {
    /// Checks the expectation against the stream's current version (`None`: no stream).
    pub fn check(self, stream: &str, actual: Option<u64>) -> Result<()> {
        let ok = match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual.is_none(),
            ExpectedVersion::StreamExists => actual.is_some(),
            ExpectedVersion::Exact(v) => actual == Some(v),
        };
        if ok {
            Ok(())
        } else {
            Err(Error::WrongExpectedVersion {
                stream: stream.to_owned(),
                expected: self,
                actual,
            })
        }
    }

    /// Rejects versions a backend cannot store.
    pub fn validate(self) -> Result<()> {
        match self {
            ExpectedVersion::Exact(v) if v > MAX_VERSION => Err(Error::invalid(format!(
                "expected version {v} is out of range (at most {MAX_VERSION})"
            ))),
            _ => Ok(()),
        }
    }
}

/// A version or position as a backend reads it back (a signed 64-bit integer in SQL). Herald never writes a
/// negative one, so a negative value means the row was damaged outside Herald: [`Error::Backend`] naming
/// `what` (which event, which column). Never a wrap-around to a huge number, which would send a paged read
/// back to the start of the log, round in circles.
pub fn stored_u64(value: i64, what: impl FnOnce() -> String) -> Result<u64> {
    u64::try_from(value).map_err(|_| {
        Error::backend(format!(
            "{} is {value}, which Herald never writes: the stored row is corrupt",
            what()
        ))
    })
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any"),
            ExpectedVersion::NoStream => f.write_str("no-stream"),
            ExpectedVersion::StreamExists => f.write_str("exists"),
            ExpectedVersion::Exact(v) => write!(f, "{v}"),
        }
    }
}

impl FromStr for ExpectedVersion {
    type Err = Error;

    /// Parses `any`, `no-stream`, `exists` or a version number, as the CLI takes them.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "any" => Ok(ExpectedVersion::Any),
            "no-stream" => Ok(ExpectedVersion::NoStream),
            "exists" => Ok(ExpectedVersion::StreamExists),
            n => {
                let v: u64 = n.parse().map_err(|_| {
                    Error::invalid(format!(
                        "expected version `{s}` is not any, no-stream, exists or a number from 0 to {MAX_VERSION}"
                    ))
                })?;
                let expected = ExpectedVersion::Exact(v);
                expected.validate()?;
                Ok(expected)
            }
        }
    }
}

/// Formats a current version for messages: a number, or `no stream`.
pub(crate) fn display_version(v: Option<u64>) -> String {
    match v {
        Some(v) => v.to_string(),
        None => "no stream".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_displays_every_form() {
        for (text, v) in [
            ("any", ExpectedVersion::Any),
            ("no-stream", ExpectedVersion::NoStream),
            ("exists", ExpectedVersion::StreamExists),
            ("17", ExpectedVersion::Exact(17)),
        ] {
            assert_eq!(text.parse::<ExpectedVersion>().unwrap(), v);
            assert_eq!(v.to_string(), text);
        }
        assert!("-1".parse::<ExpectedVersion>().is_err());
        assert!("9223372036854775808".parse::<ExpectedVersion>().is_err());
        assert!("Any".parse::<ExpectedVersion>().is_err());
    }

    #[test]
    fn negative_stored_numbers_are_corrupt_rows() {
        assert_eq!(stored_u64(7, || "v".into()).unwrap(), 7);
        let err = stored_u64(i64::MIN, || "stored event e: position".into()).unwrap_err();
        assert!(matches!(err, Error::Backend { .. }), "{err:?}");
        assert!(
            err.to_string().contains("stored event e: position"),
            "{err}"
        );
    }

    #[test]
    fn check_names_stream_expected_and_actual() {
        let err = ExpectedVersion::Exact(3)
            .check("order-1", Some(5))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "wrong expected version for stream `order-1`: expected 3, actual 5"
        );
        let err = ExpectedVersion::StreamExists.check("a", None).unwrap_err();
        assert!(err.to_string().contains("actual no stream"));
        assert!(ExpectedVersion::NoStream.check("a", None).is_ok());
        assert!(ExpectedVersion::NoStream.check("a", Some(0)).is_err());
        assert!(ExpectedVersion::Any.check("a", Some(9)).is_ok());
    }
}
