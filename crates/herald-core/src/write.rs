//! For backend implementers: the write requests a store handle sends to its single writer task, and their
//! answers. Both SQL backends batch these into group commits; sharing the types keeps their plumbing one.

use tokio::sync::oneshot;
use uuid::Uuid;

use crate::{AppendResult, Error, ExpectedVersion, LinkResult, NewEvent, Result};

/// One write request and where its answer goes. `X` is the backend's per-append extra work (its
/// `append_with` closure).
pub enum WriteRequest<X> {
    /// An append of `events` to `stream`.
    Append {
        /// The stream, already validated.
        stream: String,
        /// The events, already validated.
        events: Vec<NewEvent>,
        /// The append's expectation.
        expected: ExpectedVersion,
        /// Backend-specific work in the append's transaction (`append_with`).
        extra: Option<X>,
        /// Where the result goes.
        reply: oneshot::Sender<Result<AppendResult>>,
    },
    /// A link of stored events into `stream`.
    Link {
        /// The stream, already validated.
        stream: String,
        /// The events to link, in order.
        ids: Vec<Uuid>,
        /// The link's expectation.
        expected: ExpectedVersion,
        /// Where the result goes.
        reply: oneshot::Sender<Result<LinkResult>>,
    },
    /// A delete of `stream`.
    Delete {
        /// The stream, already validated.
        stream: String,
        /// The delete's expectation.
        expected: ExpectedVersion,
        /// Where the result goes.
        reply: oneshot::Sender<Result<()>>,
    },
}

/// A request's result, held by the writer until its batch commits.
pub enum WriteOutcome {
    /// The result of an append.
    Append(Result<AppendResult>),
    /// The result of a link.
    Link(Result<LinkResult>),
    /// The result of a delete.
    Delete(Result<()>),
}

impl WriteOutcome {
    /// Whether the request succeeded: a commit for the head's count (idempotent retries included; the
    /// position only moves when events were written).
    pub fn succeeded(&self) -> bool {
        match self {
            WriteOutcome::Append(r) => r.is_ok(),
            WriteOutcome::Link(r) => r.is_ok(),
            WriteOutcome::Delete(r) => r.is_ok(),
        }
    }
}

impl<X> WriteRequest<X> {
    /// Answers this request with `err`.
    pub fn fail(self, err: Error) {
        // A caller that gave up (dropped its future) no longer listens: ignoring the send error is right.
        match self {
            WriteRequest::Append { reply, .. } => {
                let _ = reply.send(Err(err));
            }
            WriteRequest::Link { reply, .. } => {
                let _ = reply.send(Err(err));
            }
            WriteRequest::Delete { reply, .. } => {
                let _ = reply.send(Err(err));
            }
        }
    }

    /// Answers this request with its `outcome` (a mismatched outcome is answered as an internal error).
    pub fn reply(self, outcome: WriteOutcome) {
        match (self, outcome) {
            (WriteRequest::Append { reply, .. }, WriteOutcome::Append(r)) => {
                let _ = reply.send(r);
            }
            (WriteRequest::Link { reply, .. }, WriteOutcome::Link(r)) => {
                let _ = reply.send(r);
            }
            (WriteRequest::Delete { reply, .. }, WriteOutcome::Delete(r)) => {
                let _ = reply.send(r);
            }
            (request, _) => {
                request.fail(Error::backend("internal: outcome does not match request"))
            }
        }
    }
}
