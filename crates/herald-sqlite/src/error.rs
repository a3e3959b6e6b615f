//! Driver errors with what Herald was doing when they happened. Every failure reaches callers as
//! [`herald_core::Error::Backend`] with a [`DriverError`] as its source, whose own source is the rusqlite error:
//! the chain is kept (callers and logs can walk to the driver's error code), never flattened into text. The
//! driver error sits behind an `Arc` because one failed batch transaction answers every caller of the batch
//! with the same error.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use herald_core::Error;

/// A driver error and what Herald was doing (the context leads the message; the driver error is the source).
#[derive(Debug, Clone)]
pub(crate) struct DriverError {
    context: Cow<'static, str>,
    source: Arc<rusqlite::Error>,
}

impl DriverError {
    /// The error shared by every caller of a failed batch.
    pub(crate) fn shared(context: impl Into<Cow<'static, str>>, source: rusqlite::Error) -> Self {
        DriverError {
            context: context.into(),
            source: Arc::new(source),
        }
    }

    /// The same error as a [`herald_core::Error::Backend`], for one more caller.
    pub(crate) fn to_error(&self) -> Error {
        Error::backend(self.clone())
    }
}

impl fmt::Display for DriverError {
    // The driver's message follows the context, as `herald_core::Error::Backend` prints its source: a log
    // line showing only the top error still says what SQLite reported.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.context, self.source)
    }
}

impl std::error::Error for DriverError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// Wraps a driver error with what was being done.
pub(crate) fn context(what: impl Into<Cow<'static, str>>, e: rusqlite::Error) -> Error {
    DriverError::shared(what, e).to_error()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_driver_error_as_source_for_every_caller() {
        let shared = DriverError::shared("the batch failed", rusqlite::Error::InvalidQuery);
        for _ in 0..2 {
            let err = shared.to_error();
            let Error::Backend { source } = &err else {
                panic!("not a backend error: {err}");
            };
            let driver = source.source().expect("the driver error is the source");
            assert!(driver.downcast_ref::<rusqlite::Error>().is_some());
            assert!(
                err.to_string()
                    .starts_with("backend error: the batch failed: ")
            );
        }
    }
}
