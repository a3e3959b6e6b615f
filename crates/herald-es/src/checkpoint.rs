//! Where subscriptions and projections remember how far they got.
//!
//! A checkpoint is the cursor of the last event a subscription finished with: a stream version for a stream
//! subscription, a global position for a category or global one. Resuming reads from the cursor + 1.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::error::Result;
use crate::group::{GroupState, GroupView, Heartbeat, MembershipStore};

/// Stores checkpoints by name.
#[async_trait]
pub trait CheckpointStore: Send + Sync + 'static {
    /// The checkpoint named `name`.
    async fn load(&self, name: &str) -> Result<Option<u64>>;
    /// Stores `cursor` under `name`.
    async fn save(&self, name: &str, cursor: u64) -> Result<()>;
    /// Removes the checkpoint (the next run starts from the beginning).
    async fn delete(&self, name: &str) -> Result<()>;
    /// Every checkpoint whose name starts with `prefix`, by name.
    async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>>;
}

/// Checkpoints in memory: for tests, and for subscriptions whose read model is in memory too. Also the
/// [`MembershipStore`] of dynamic consumer groups whose members share this object (one process).
#[derive(Debug, Default)]
pub struct InMemoryCheckpointStore {
    checkpoints: Mutex<BTreeMap<String, u64>>,
    groups: Mutex<BTreeMap<String, GroupState>>,
}

impl InMemoryCheckpointStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, u64>> {
        self.checkpoints.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl CheckpointStore for InMemoryCheckpointStore {
    async fn load(&self, name: &str) -> Result<Option<u64>> {
        Ok(self.lock().get(name).copied())
    }

    async fn save(&self, name: &str, cursor: u64) -> Result<()> {
        self.lock().insert(name.to_owned(), cursor);
        Ok(())
    }

    async fn delete(&self, name: &str) -> Result<()> {
        self.lock().remove(name);
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        Ok(self
            .lock()
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), *v))
            .collect())
    }
}

#[async_trait]
impl MembershipStore for InMemoryCheckpointStore {
    async fn heartbeat(&self, group: &str, beat: &Heartbeat) -> Result<GroupView> {
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        let state = groups.entry(group.to_owned()).or_default();
        state.beat(beat);
        Ok(state.view())
    }

    async fn leave(&self, group: &str, member: &str) -> Result<()> {
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(state) = groups.get_mut(group) {
            state.leave(member);
        }
        Ok(())
    }
}
