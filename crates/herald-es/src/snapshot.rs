//! Snapshots: an aggregate's state saved every N events, so loading replays only what came after.
//!
//! A snapshot records the stream version it covers **and the id of the event at that version**. On load the
//! repository reads the stream from that version and uses the snapshot only if the event there is still the
//! same one; a snapshot whose schema version differs from [`crate::Aggregate::SNAPSHOT_VERSION`], whose state
//! does not deserialize, that a store fails to return, or that no longer matches the stream (deleted and
//! rewritten) is ignored and the aggregate is rebuilt by full replay. A snapshot can make loading faster,
//! never wrong.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use uuid::Uuid;

use crate::error::Result;

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
