//! Where subscriptions and projections remember how far they got.
//!
//! A checkpoint is the cursor of the last event a subscription finished with: a stream version for a stream
//! subscription, a global position for a category or global one. Resuming reads from the cursor + 1.
//!
//! The store also holds the runners' leases and checks their fencing tokens ([`crate::lease`]): a write made
//! with [`CheckpointStore::save_fenced`] is refused, changing nothing, once its runner has been overtaken.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::error::Result;
use crate::group::{GroupState, GroupView, Heartbeat, MembershipStore};
use crate::lease::{self, Fence, LeaseGrant, LeaseRecord};

/// Stores checkpoints by name.
#[async_trait]
pub trait CheckpointStore: Send + Sync + 'static {
    /// The checkpoint named `name`.
    async fn load(&self, name: &str) -> Result<Option<u64>>;
    /// Stores `cursor` under `name` (unfenced: for tools and for runners without a lease).
    async fn save(&self, name: &str, cursor: u64) -> Result<()>;
    /// Stores `cursor` under `name` if `fence` still holds, checked atomically with the write (one
    /// transaction on SQL backends); otherwise [`EsError::Fenced`](crate::EsError::Fenced) and nothing changes.
    async fn save_fenced(&self, name: &str, cursor: u64, fence: &Fence) -> Result<()>;
    /// Grants lease `name` to `owner` until `expires_at` (µs) when it is free or its holder's lease ended at
    /// or before `now`, with a fencing token greater than every earlier one of `name`.
    async fn acquire_lease(
        &self,
        name: &str,
        owner: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<LeaseGrant>;
    /// Extends lease `name` to `expires_at` if `token` is still its current token, else
    /// [`EsError::Fenced`](crate::EsError::Fenced).
    async fn renew_lease(&self, name: &str, token: u64, expires_at: i64) -> Result<()>;
    /// Ends lease `name` now if `token` is still current (a clean stop), so a waiting runner takes over at
    /// once. The token stays, so later grants keep growing.
    async fn release_lease(&self, name: &str, token: u64) -> Result<()>;
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
    leases: Mutex<BTreeMap<String, LeaseRecord>>,
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

    async fn save_fenced(&self, name: &str, cursor: u64, fence: &Fence) -> Result<()> {
        // The fence's lock is held across the write, as a row lock would be.
        match fence {
            Fence::Lease { name: lease, token } => {
                let leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
                lease::check_token(lease, leases.get(lease).map(|l| l.token), *token)?;
                self.lock().insert(name.to_owned(), cursor);
            }
            Fence::Generation { group, generation } => {
                let groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
                let settled = groups.get(group).map_or(0, |g| g.settled);
                lease::check_generation(group, settled, *generation)?;
                self.lock().insert(name.to_owned(), cursor);
            }
        }
        Ok(())
    }

    async fn acquire_lease(
        &self,
        name: &str,
        owner: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<LeaseGrant> {
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        Ok(
            match lease::grant(leases.get(name), owner, now, expires_at) {
                Ok(record) => {
                    let token = record.token;
                    leases.insert(name.to_owned(), record);
                    LeaseGrant::Granted { token }
                }
                Err(held) => held,
            },
        )
    }

    async fn renew_lease(&self, name: &str, token: u64, expires_at: i64) -> Result<()> {
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        let current = leases.get_mut(name);
        lease::check_token(name, current.as_ref().map(|l| l.token), token)?;
        if let Some(l) = current {
            l.expires_at = expires_at;
        }
        Ok(())
    }

    async fn release_lease(&self, name: &str, token: u64) -> Result<()> {
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = leases.get_mut(name)
            && l.token == token
        {
            l.expires_at = i64::MIN;
        }
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
