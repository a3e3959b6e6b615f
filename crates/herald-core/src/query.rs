//! What to read: a plain value built fluently, validated once, understood the same way by every backend.

use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::stream::{StreamName, validate_category, validate_name};
use crate::timefmt;
use crate::version::MAX_VERSION;

/// Default number of events a backend fetches per round trip when streaming a read.
pub const DEFAULT_BATCH_SIZE: usize = 512;
/// Largest batch a read may ask for.
pub const MAX_BATCH_SIZE: usize = 10_000;

/// Which events a read covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadScope {
    /// One stream, ordered by version, including events linked into it.
    Stream(StreamName),
    /// The global log: every event once, ordered by global position. Links are not repeated here.
    All,
    /// The events appended to streams of one category, ordered by global position (a filter of the global
    /// log, as in Message DB; events linked into the category's streams are read through those streams).
    Category(String),
}

/// Read direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    /// Oldest first.
    #[default]
    Forward,
    /// Newest first.
    Backward,
}

/// A read: scope, direction, start, limit and filters.
///
/// `from` is inclusive: a stream version for [`ReadScope::Stream`], a global position otherwise. Forward reads
/// start at the first event at or after it; backward reads at the last event at or before it.
///
/// ```
/// use herald_core::{ReadQuery, StreamName};
/// let q = ReadQuery::stream(StreamName::new("order-1")?)
///     .backward()
///     .from(10)
///     .limit(5)
///     .types(["OrderPlaced"]);
/// q.validate()?;
/// # Ok::<(), herald_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadQuery {
    /// What to read.
    pub scope: ReadScope,
    /// Forward or backward.
    pub direction: Direction,
    /// Inclusive start (version or position); `None`: the first (forward) or last (backward) event.
    pub from: Option<u64>,
    /// Most events to return; `None`: all.
    pub limit: Option<u64>,
    /// Only events of these types; empty: all types.
    pub types: Vec<String>,
    /// Only events recorded strictly after this time (an event recorded exactly then is excluded). For an
    /// inclusive bound use [`ReadQuery::recorded_at_or_after`].
    pub recorded_after: Option<OffsetDateTime>,
    /// Only events recorded strictly before this time.
    pub recorded_before: Option<OffsetDateTime>,
    /// Events fetched per round trip by streaming reads (memory stays bounded by this).
    pub batch_size: usize,
}

impl ReadQuery {
    fn with_scope(scope: ReadScope) -> Self {
        ReadQuery {
            scope,
            direction: Direction::Forward,
            from: None,
            limit: None,
            types: Vec::new(),
            recorded_after: None,
            recorded_before: None,
            batch_size: DEFAULT_BATCH_SIZE,
        }
    }

    /// Reads one stream.
    pub fn stream(stream: StreamName) -> Self {
        Self::with_scope(ReadScope::Stream(stream))
    }

    /// Reads the global log.
    pub fn all() -> Self {
        Self::with_scope(ReadScope::All)
    }

    /// Reads a category (validated by [`ReadQuery::validate`]).
    pub fn category(category: impl Into<String>) -> Self {
        Self::with_scope(ReadScope::Category(category.into()))
    }

    /// Newest first.
    pub fn backward(mut self) -> Self {
        self.direction = Direction::Backward;
        self
    }

    /// Oldest first (the default).
    pub fn forward(mut self) -> Self {
        self.direction = Direction::Forward;
        self
    }

    /// Inclusive start.
    pub fn from(mut self, from: u64) -> Self {
        self.from = Some(from);
        self
    }

    /// Most events to return.
    pub fn limit(mut self, limit: u64) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Only these event types.
    pub fn types<I, S>(mut self, types: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.types = types.into_iter().map(Into::into).collect();
        self
    }

    /// Only events recorded strictly after `t`: an event recorded exactly at `t` is excluded, as with
    /// [`ReadQuery::recorded_before`].
    pub fn recorded_after(mut self, t: OffsetDateTime) -> Self {
        self.recorded_after = Some(t);
        self
    }

    /// Only events recorded at or after `t` (inclusive), for half-open windows `[t, u)` that tile time with
    /// [`ReadQuery::recorded_before`]. Stores keep whole microseconds, so "at or after `t`" is exactly "after
    /// the last whole microsecond before `t`": this sets [`ReadQuery::recorded_after`] to that instant, and
    /// every backend needs only the one exclusive bound.
    pub fn recorded_at_or_after(mut self, t: OffsetDateTime) -> Self {
        self.recorded_after = Some(timefmt::last_micro_before(t));
        self
    }

    /// Only events recorded strictly before `t`.
    pub fn recorded_before(mut self, t: OffsetDateTime) -> Self {
        self.recorded_before = Some(t);
        self
    }

    /// Events per round trip.
    pub fn batch_size(mut self, size: usize) -> Self {
        self.batch_size = size;
        self
    }

    /// Most events one backend page may return: the batch size, capped by the limit.
    pub fn page_size(&self) -> usize {
        match self.limit {
            Some(limit) => (limit.min(self.batch_size as u64)) as usize,
            None => self.batch_size,
        }
    }

    /// Checks every field; backends call this before they read.
    pub fn validate(&self) -> Result<()> {
        if let ReadScope::Category(c) = &self.scope {
            validate_category(c)?;
        }
        if let Some(from) = self.from
            && from > MAX_VERSION
        {
            return Err(Error::invalid(format!(
                "read from {from} is out of range (at most {MAX_VERSION})"
            )));
        }
        if self.limit == Some(0) {
            return Err(Error::invalid("read limit must be at least 1"));
        }
        if self.batch_size == 0 || self.batch_size > MAX_BATCH_SIZE {
            return Err(Error::invalid(format!(
                "read batch size {} is out of range (1 to {MAX_BATCH_SIZE})",
                self.batch_size
            )));
        }
        for t in &self.types {
            validate_name("event type filter", t)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_problem() {
        let msg = |q: ReadQuery| q.validate().unwrap_err().to_string();
        assert!(msg(ReadQuery::all().limit(0)).contains("limit"));
        assert!(msg(ReadQuery::all().batch_size(0)).contains("batch size"));
        assert!(msg(ReadQuery::category("a-b")).contains("a-b"));
        assert!(msg(ReadQuery::all().from(u64::MAX)).contains("out of range"));
        assert!(msg(ReadQuery::all().types([""])).contains("empty"));
        assert_eq!(ReadQuery::all().limit(3).page_size(), 3);
    }
}
