//! Snapshots: an aggregate's state saved every N events, so loading replays only what came after.
//!
//! A snapshot records the stream version it covers **and the id of the event at that version**. On load the
//! repository reads the stream from that version and uses the snapshot only if the event there is still the
//! same one; a snapshot whose schema version differs from [`crate::Aggregate::SNAPSHOT_VERSION`], whose state
//! does not deserialize, that a store fails to return, or that no longer matches the stream (deleted and
//! rewritten) is ignored and the aggregate is rebuilt by full replay. A snapshot can make loading faster,
//! never wrong.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::TryStreamExt;
use herald_core::{EventStore, EventStoreExt, ExpectedVersion, NewEvent, ReadQuery, StreamName};
use uuid::Uuid;

use crate::error::{EsError, Result};

/// A stored snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The aggregate's stream.
    pub stream: String,
    /// The stream version the state includes (the last event applied).
    pub version: u64,
    /// The id of the event at `version`, checked on load.
    pub event_id: Uuid,
    /// The state's schema version ([`crate::Aggregate::SNAPSHOT_VERSION`] when it was written).
    pub schema_version: u32,
    /// The state, JSON text.
    pub state: String,
}

/// Where snapshots live. One (the latest) per stream.
#[async_trait]
pub trait SnapshotStore: Send + Sync + 'static {
    /// The latest snapshot of `stream`.
    async fn load(&self, stream: &str) -> Result<Option<Snapshot>>;
    /// Stores `snapshot`, replacing an older one of the same stream (a snapshot at a lower version than the
    /// one stored is ignored, so racing writers cannot move it backwards).
    async fn save(&self, snapshot: &Snapshot) -> Result<()>;
    /// Removes the snapshot of `stream`.
    async fn delete(&self, stream: &str) -> Result<()>;
}

/// When to take a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotPolicy {
    every: u64,
}

impl SnapshotPolicy {
    /// A snapshot each time the stream's event count crosses a multiple of `n` (`n` at least 1).
    pub fn every(n: u64) -> Self {
        SnapshotPolicy { every: n.max(1) }
    }

    /// The interval.
    pub fn interval(&self) -> u64 {
        self.every
    }

    /// Whether a save that moved the stream from `before` (version, `None`: no stream) to `after` should
    /// snapshot.
    pub fn should_snapshot(&self, before: Option<u64>, after: u64) -> bool {
        let count_before = before.map_or(0, |v| v + 1);
        let count_after = after + 1;
        count_after / self.every > count_before / self.every
    }
}

/// Snapshots in memory: for tests and demos.
#[derive(Debug, Default)]
pub struct InMemorySnapshotStore {
    snapshots: Mutex<HashMap<String, Snapshot>>,
}

impl InMemorySnapshotStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Overwrites a snapshot unconditionally: for tests that plant corrupt or stale snapshots.
    pub fn put(&self, snapshot: Snapshot) {
        self.lock().insert(snapshot.stream.clone(), snapshot);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Snapshot>> {
        self.snapshots.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl SnapshotStore for InMemorySnapshotStore {
    async fn load(&self, stream: &str) -> Result<Option<Snapshot>> {
        Ok(self.lock().get(stream).cloned())
    }

    async fn save(&self, snapshot: &Snapshot) -> Result<()> {
        let mut map = self.lock();
        match map.get(&snapshot.stream) {
            Some(existing) if existing.version > snapshot.version => {}
            _ => {
                map.insert(snapshot.stream.clone(), snapshot.clone());
            }
        }
        Ok(())
    }

    async fn delete(&self, stream: &str) -> Result<()> {
        self.lock().remove(stream);
        Ok(())
    }
}

/// Snapshots kept in the event store itself, so they work on every backend (PostgreSQL included): the
/// snapshot of stream `s` is the last event of stream `{prefix}-{s}` (type `Snapshot`, data = the state,
/// metadata = version, event id and schema version).
///
/// Trade-offs: snapshot events take global positions, so a subscription to the **global log** sees them
/// (category subscriptions do not, unless they subscribe to the snapshot category); older snapshots stay in
/// the snapshot stream until [`SnapshotStore::delete`]. "Older snapshots are ignored" is best effort here
/// (check, then append): a stale snapshot written by a racing saver only makes the next load replay more.
/// Prefer [`crate::sqlite::SqliteSnapshotStore`] on SQLite.
pub struct EventStoreSnapshotStore {
    store: Arc<dyn EventStore>,
    prefix: String,
}

impl std::fmt::Debug for EventStoreSnapshotStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStoreSnapshotStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SnapshotMeta {
    version: u64,
    event_id: Uuid,
    schema_version: u32,
}

impl EventStoreSnapshotStore {
    /// Snapshots in streams `snapshot-{stream}`.
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        Self::with_prefix(store, "snapshot")
    }

    /// Snapshots in streams `{prefix}-{stream}` (`prefix`: a category name, no `-`).
    pub fn with_prefix(store: Arc<dyn EventStore>, prefix: impl Into<String>) -> Self {
        EventStoreSnapshotStore {
            store,
            prefix: prefix.into(),
        }
    }

    fn stream(&self, stream: &str) -> Result<StreamName> {
        Ok(StreamName::new(format!("{}-{stream}", self.prefix))?)
    }
}

#[async_trait]
impl SnapshotStore for EventStoreSnapshotStore {
    async fn load(&self, stream: &str) -> Result<Option<Snapshot>> {
        let query = ReadQuery::stream(self.stream(stream)?).backward().limit(1);
        let Some(event) = self.store.read(query).try_next().await? else {
            return Ok(None);
        };
        let meta: SnapshotMeta = serde_json::from_str(&event.metadata)
            .map_err(|e| EsError::storage("reading a snapshot event's metadata", e))?;
        Ok(Some(Snapshot {
            stream: stream.to_owned(),
            version: meta.version,
            event_id: meta.event_id,
            schema_version: meta.schema_version,
            state: event.data,
        }))
    }

    async fn save(&self, snapshot: &Snapshot) -> Result<()> {
        if let Some(existing) = self.load(&snapshot.stream).await?
            && existing.version > snapshot.version
        {
            return Ok(());
        }
        self.put(snapshot).await
    }

    async fn delete(&self, stream: &str) -> Result<()> {
        self.store
            .delete_stream(&self.stream(stream)?, ExpectedVersion::Any)
            .await?;
        Ok(())
    }
}

impl EventStoreSnapshotStore {
    /// Appends a snapshot unconditionally (no "older is ignored" check): for tests that plant snapshots.
    pub async fn put(&self, snapshot: &Snapshot) -> Result<()> {
        let meta = serde_json::to_string(&SnapshotMeta {
            version: snapshot.version,
            event_id: snapshot.event_id,
            schema_version: snapshot.schema_version,
        })
        .map_err(|e| EsError::Encode {
            what: "snapshot metadata",
            message: e.to_string(),
        })?;
        let event = NewEvent::new("Snapshot")
            .with_data(snapshot.state.clone())
            .with_metadata(meta);
        self.store
            .append(
                &self.stream(&snapshot.stream)?,
                vec![event],
                ExpectedVersion::Any,
            )
            .await?;
        Ok(())
    }
}
