//! The one error type of the event-sourcing layer. Store errors pass through unchanged in
//! [`EsError::Store`], so a caller can still branch on [`herald_core::Error::WrongExpectedVersion`].

use uuid::Uuid;

/// Result alias for this crate.
pub type Result<T, E = EsError> = std::result::Result<T, E>;

/// What went wrong below the domain: storage, encoding, decoding, upcasting, checkpoints.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EsError {
    /// The event store refused or failed (a conflict is `Store(WrongExpectedVersion { .. })`).
    #[error(transparent)]
    Store(#[from] herald_core::Error),
    /// A stored event could not be turned into the current typed event: its payload does not deserialize after
    /// upcasting. The stored event is untouched; fix the type or add an upcaster.
    #[error(
        "event {id} of type `{event_type}` (schema version {schema_version}) cannot be decoded: {message}"
    )]
    Decode {
        /// The event id.
        id: Uuid,
        /// Its stored type.
        event_type: String,
        /// Its stored schema version.
        schema_version: u32,
        /// What failed.
        message: String,
    },
    /// An upcaster is missing or failed, or the stored schema version is newer than this code knows.
    #[error(
        "event {id} of type `{event_type}` cannot be upcast from schema version {from_version}: {message}"
    )]
    Upcast {
        /// The event id.
        id: Uuid,
        /// Its stored type.
        event_type: String,
        /// The schema version the failing step started from.
        from_version: u32,
        /// What failed.
        message: String,
    },
    /// A typed event, state or command could not be serialized.
    #[error("cannot encode {what}: {message}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// The serializer's message.
        message: String,
    },
    /// A snapshot, checkpoint or read-model store failed.
    #[error("{what} failed: {message}")]
    Storage {
        /// Which store and operation.
        what: &'static str,
        /// The driver's message.
        message: String,
    },
    /// An event handler (subscription, projection, process manager) failed; the subscription stops without
    /// moving its checkpoint past the event, so a restart delivers it again.
    #[error("handler `{handler}` failed on event {event_id}: {message}")]
    Handler {
        /// The subscription or projection name.
        handler: String,
        /// The event being handled.
        event_id: Uuid,
        /// The handler's message.
        message: String,
    },
    /// This runner no longer owns `name`: another runner took its lease over (token `token` is no longer
    /// current), or, for a dynamic group member, a later generation of group `name` settled after generation
    /// `token`. The refused write changed nothing (a transactional projection's read-model changes rolled
    /// back with it). The run stops: another runner is handling the subscription now; restart this one as a
    /// standby if wanted (it waits for the lease).
    #[error(
        "`{name}`: fencing token {token} is no longer current (another runner took over); write refused"
    )]
    Fenced {
        /// The lease (checkpoint) name, or the dynamic group.
        name: String,
        /// The stale fencing token, or the dynamic member's generation.
        token: u64,
    },
    /// Another runner holds the lease of `name` and the run was configured not to wait
    /// ([`WhenHeld::Fail`](crate::WhenHeld::Fail)).
    #[error("`{name}` is already running (lease held by {owner})")]
    LeaseHeld {
        /// The lease (checkpoint) name.
        name: String,
        /// The holder's owner id (process id and run id).
        owner: String,
    },
    /// Bad configuration or input (empty names, zero sizes, member index out of range).
    #[error("invalid input: {0}")]
    InvalidInput(String),
}

impl EsError {
    /// True when this is the store's optimistic-concurrency conflict.
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            EsError::Store(herald_core::Error::WrongExpectedVersion { .. })
        )
    }

    /// True when a write was refused because another runner took over ([`EsError::Fenced`]).
    pub fn is_fenced(&self) -> bool {
        matches!(self, EsError::Fenced { .. })
    }

    pub(crate) fn storage(what: &'static str, e: impl std::fmt::Display) -> Self {
        EsError::Storage {
            what,
            message: e.to_string(),
        }
    }
}
