//! The operations a model case is made of, as proptest generates and shrinks them: abstract choices (which
//! stream of a small pool, which earlier id, which kind of expectation) that [`super::exec`] turns into
//! concrete store calls against the state reached so far. Abstract choices keep every sequence meaningful
//! while proptest removes and simplifies operations: "the second id appended so far" still names an id after
//! the operations before it shrank away.

use proptest::collection::vec;
use proptest::prelude::*;

/// The streams a case writes to: two categories with several streams, a stream named like its category
/// (no `-`), and one whose category (`ab`) starts like another's (`a`), so category reads must match the
/// whole part before the first `-`.
pub const STREAMS: [&str; 5] = ["a-1", "a-2", "b-1", "b", "ab-1"];
/// The categories a case reads: the three written to and one never written to.
pub const CATEGORIES: [&str; 4] = ["a", "b", "ab", "c"];
/// The event types a case writes; type filters pick subsets of them.
pub const TYPES: [&str; 3] = ["A", "B", "C"];
/// Prefixes for stream listings: everything, a category's own streams, a prefix of two categories, a
/// prefix that matches nothing.
pub const PREFIXES: [&str; 5] = ["", "a-", "a", "b", "z"];

/// Which id an event or a link uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdRef {
    /// A new id, never used before.
    Fresh,
    /// The id at this index from the most recent (modulo their number) among the ids given to earlier
    /// appends, stored or refused: reusing an id is a retry, a duplicate, or (when it was refused) new.
    Known(u8),
    /// An id no append was ever given: a link to it is `EventNotFound`.
    Unknown,
    /// The nil UUID: invalid input.
    Nil,
}

/// What the caller expects the stream's version to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// [`herald_core::ExpectedVersion::Any`].
    Any,
    /// [`herald_core::ExpectedVersion::NoStream`].
    NoStream,
    /// [`herald_core::ExpectedVersion::StreamExists`].
    StreamExists,
    /// `Exact(n)` for a small fixed `n`: right or wrong depending on the history.
    Exact(u8),
    /// The right expectation: `Exact` of the current version, or `NoStream` when the stream does not exist.
    Current,
    /// `Exact` of one past the current version: always wrong.
    Next,
    /// `Exact` past the largest storable version: invalid input.
    OutOfRange,
}

/// How an event of an append is broken, if it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bad {
    /// Data that is not JSON.
    DataNotJson,
    /// Metadata that is JSON but not an object.
    MetadataNotObject,
    /// An empty event type.
    EmptyType,
}

/// One event of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventSpec {
    /// Its id.
    pub id: IdRef,
    /// Its type: an index into [`TYPES`].
    pub ty: u8,
    /// Whether (and how) it is invalid.
    pub bad: Option<Bad>,
}

/// How a retry repeats an earlier append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryShape {
    /// The same events, the same order, the same stream: an idempotent retry while the stream holds them.
    Same,
    /// The same events in reverse order.
    Reversed,
    /// The events after the first (a part of the append).
    Tail,
    /// The same events to another stream (an index into [`STREAMS`], skipping the original).
    OtherStream(u8),
}

/// The options of a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadSpec {
    /// Newest first.
    pub backward: bool,
    /// Inclusive start (version or position).
    pub from: Option<u8>,
    /// Most events; 0 is invalid input.
    pub limit: Option<u8>,
    /// A bit set over [`TYPES`]; 0 means no type filter.
    pub types: u8,
    /// Events per page of a streaming read (1 to 4, so results span pages).
    pub batch: u8,
    /// One `read_page` call instead of a streaming read.
    pub page_only: bool,
}

/// One step of a model case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Append these events (none: invalid input) to a stream of [`STREAMS`].
    Append {
        /// Index into [`STREAMS`].
        stream: u8,
        /// The events.
        events: Vec<EventSpec>,
        /// The expectation.
        expected: Expect,
    },
    /// Repeat an earlier successful append (by index, modulo their number), shaped by `shape`.
    Retry {
        /// Which earlier successful append.
        append: u8,
        /// How it is repeated.
        shape: RetryShape,
        /// The expectation (a true retry succeeds whatever it is).
        expected: Expect,
    },
    /// Link ids (none: invalid input) into a stream.
    Link {
        /// Index into [`STREAMS`].
        stream: u8,
        /// The ids.
        ids: Vec<IdRef>,
        /// The expectation.
        expected: Expect,
    },
    /// Delete a stream.
    Delete {
        /// Index into [`STREAMS`].
        stream: u8,
        /// The expectation.
        expected: Expect,
    },
    /// Read a stream.
    ReadStream {
        /// Index into [`STREAMS`].
        stream: u8,
        /// The options.
        read: ReadSpec,
    },
    /// Read the global log.
    ReadAll {
        /// The options.
        read: ReadSpec,
    },
    /// Read a category.
    ReadCategory {
        /// Index into [`CATEGORIES`].
        category: u8,
        /// The options.
        read: ReadSpec,
    },
    /// Look an event up by id.
    Event {
        /// The id.
        id: IdRef,
    },
    /// A stream's version.
    StreamVersion {
        /// Index into [`STREAMS`].
        stream: u8,
    },
    /// List streams.
    Streams {
        /// Index into [`PREFIXES`].
        prefix: u8,
        /// Exclusive cursor: an index into [`STREAMS`].
        after: Option<u8>,
        /// Most streams; 0 is invalid input.
        limit: u8,
    },
}

/// Mostly the first two streams, so writes, deletes and links meet on the same streams often.
fn stream_index() -> impl Strategy<Value = u8> {
    prop_oneof![3 => 0u8..2, 1 => 0..STREAMS.len() as u8]
}

fn expect() -> impl Strategy<Value = Expect> {
    prop_oneof![
        8 => Just(Expect::Any),
        2 => Just(Expect::NoStream),
        2 => Just(Expect::StreamExists),
        2 => (0u8..4).prop_map(Expect::Exact),
        8 => Just(Expect::Current),
        1 => Just(Expect::Next),
        1 => Just(Expect::OutOfRange),
    ]
}

fn event_spec() -> impl Strategy<Value = EventSpec> {
    let id = prop_oneof![
        40 => Just(IdRef::Fresh),
        6 => any::<u8>().prop_map(IdRef::Known),
        1 => Just(IdRef::Nil),
    ];
    let bad = prop_oneof![
        100 => Just(None),
        1 => Just(Some(Bad::DataNotJson)),
        1 => Just(Some(Bad::MetadataNotObject)),
        1 => Just(Some(Bad::EmptyType)),
    ];
    (id, 0..TYPES.len() as u8, bad).prop_map(|(id, ty, bad)| EventSpec { id, ty, bad })
}

fn link_id() -> impl Strategy<Value = IdRef> {
    prop_oneof![
        40 => any::<u8>().prop_map(IdRef::Known),
        1 => Just(IdRef::Unknown),
        1 => Just(IdRef::Nil),
    ]
}

/// `from` values up to `max_from`, and limits where 0 (invalid) is rare.
fn read_spec(max_from: u8) -> impl Strategy<Value = ReadSpec> {
    let limit = prop_oneof![
        6 => Just(None),
        8 => (1u8..5).prop_map(Some),
        1 => Just(Some(0)),
    ];
    (
        any::<bool>(),
        proptest::option::weighted(0.4, 0..=max_from),
        limit,
        prop_oneof![3 => Just(0u8), 2 => 1u8..8],
        1u8..5,
        prop_oneof![4 => Just(false), 1 => Just(true)],
    )
        .prop_map(
            |(backward, from, limit, types, batch, page_only)| ReadSpec {
                backward,
                from,
                limit,
                types,
                batch,
                page_only,
            },
        )
}

fn op() -> impl Strategy<Value = Op> {
    let events = prop_oneof![
        40 => vec(event_spec(), 1..=3),
        1 => Just(Vec::new()),
    ];
    let link_ids = prop_oneof![
        40 => vec(link_id(), 1..=2),
        1 => Just(Vec::new()),
    ];
    let shape = prop_oneof![
        4 => Just(RetryShape::Same),
        1 => Just(RetryShape::Reversed),
        1 => Just(RetryShape::Tail),
        1 => (0u8..4).prop_map(RetryShape::OtherStream),
    ];
    prop_oneof![
        40 => (stream_index(), events, expect())
            .prop_map(|(stream, events, expected)| Op::Append { stream, events, expected }),
        5 => (any::<u8>(), shape, expect())
            .prop_map(|(append, shape, expected)| Op::Retry { append, shape, expected }),
        10 => (stream_index(), link_ids, expect())
            .prop_map(|(stream, ids, expected)| Op::Link { stream, ids, expected }),
        5 => (stream_index(), expect()).prop_map(|(stream, expected)| Op::Delete { stream, expected }),
        12 => (stream_index(), read_spec(4)).prop_map(|(stream, read)| Op::ReadStream { stream, read }),
        8 => read_spec(12).prop_map(|read| Op::ReadAll { read }),
        6 => (0..CATEGORIES.len() as u8, read_spec(12))
            .prop_map(|(category, read)| Op::ReadCategory { category, read }),
        4 => prop_oneof![4 => any::<u8>().prop_map(IdRef::Known), 1 => Just(IdRef::Unknown)]
            .prop_map(|id| Op::Event { id }),
        3 => stream_index().prop_map(|stream| Op::StreamVersion { stream }),
        4 => (
            0..PREFIXES.len() as u8,
            proptest::option::of(stream_index()),
            prop_oneof![6 => 1u8..4, 1 => Just(0u8)],
        )
            .prop_map(|(prefix, after, limit)| Op::Streams { prefix, after, limit }),
    ]
}

/// Sequences of 1 to `max_ops` operations.
pub fn ops(max_ops: usize) -> impl Strategy<Value = Vec<Op>> {
    vec(op(), 1..=max_ops.max(1))
}
