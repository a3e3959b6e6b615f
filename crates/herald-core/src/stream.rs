//! Stream names and categories.
//!
//! A stream name is 1 to 255 bytes of UTF-8 without control characters and not starting with `$` (reserved
//! for Herald's own streams). Streams named `category-id` belong to the category before the first `-`
//! (`order-42` is in `order`); a name without `-` is its own category, as in Message DB.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// Longest stream name, in bytes.
pub const MAX_STREAM_NAME_BYTES: usize = 255;

/// A validated stream name. Construct with [`StreamName::new`] or `parse`; the check runs once, so every
/// backend can trust it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamName(String);

impl StreamName {
    /// Validates `name` as a stream name.
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        validate_name("stream name", &name)?;
        if name.starts_with('$') {
            return Err(Error::invalid(format!(
                "stream name `{name}` starts with `$`, which is reserved for Herald's own streams"
            )));
        }
        Ok(StreamName(name))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The category: the part before the first `-`, or the whole name when it has none.
    pub fn category(&self) -> &str {
        category_of(&self.0)
    }
}

/// The category of a stream name: the part before the first `-`, or the whole name.
pub fn category_of(stream: &str) -> &str {
    stream
        .split_once('-')
        .map_or(stream, |(category, _)| category)
}

/// Validates a category name for a category read: a valid stream name without `-`.
pub fn validate_category(category: &str) -> Result<()> {
    validate_name("category", category)?;
    if category.contains('-') {
        return Err(Error::invalid(format!(
            "category `{category}` contains `-`; a category is the part of a stream name before the first `-`"
        )));
    }
    if category.starts_with('$') {
        return Err(Error::invalid(format!(
            "category `{category}` starts with `$`, which is reserved"
        )));
    }
    Ok(())
}

/// Shared rule for names (streams, categories, event types): 1..=255 bytes, no control characters.
pub(crate) fn validate_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid(format!("{what} is empty")));
    }
    if name.len() > MAX_STREAM_NAME_BYTES {
        return Err(Error::invalid(format!(
            "{what} `{}…` is {} bytes long; the limit is {MAX_STREAM_NAME_BYTES}",
            truncate_for_message(name),
            name.len()
        )));
    }
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Err(Error::invalid(format!(
            "{what} {name:?} contains the control character {c:?}"
        )));
    }
    Ok(())
}

/// The first few characters of an over-long name, for error messages that stay readable.
fn truncate_for_message(name: &str) -> &str {
    let mut end = 40.min(name.len());
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

impl fmt::Display for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for StreamName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        StreamName::new(s)
    }
}

impl TryFrom<&str> for StreamName {
    type Error = Error;
    fn try_from(s: &str) -> Result<Self> {
        StreamName::new(s)
    }
}

impl TryFrom<String> for StreamName {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        StreamName::new(s)
    }
}

impl AsRef<str> for StreamName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_rejects_names() {
        for ok in [
            "a",
            "order-1",
            "ünïcødé-✓",
            &"x".repeat(255),
            "a b",
            "-leading-dash",
        ] {
            assert!(StreamName::new(ok).is_ok(), "{ok:?} should be valid");
        }
        for bad in [
            "",
            "$all",
            "tab\there",
            "nul\0",
            &"x".repeat(256),
            "new\nline",
        ] {
            assert!(StreamName::new(bad).is_err(), "{bad:?} should be invalid");
        }
    }

    #[test]
    fn category_is_the_part_before_the_first_dash() {
        assert_eq!(StreamName::new("order-1-2").unwrap().category(), "order");
        assert_eq!(StreamName::new("order").unwrap().category(), "order");
        assert_eq!(category_of("-x"), "");
        assert!(validate_category("order").is_ok());
        assert!(validate_category("or-der").is_err());
        assert!(validate_category("").is_err());
    }
}
