//! Consumer groups whose members join and leave at run time: membership with leases, generations and an
//! eager (stop-the-world) rebalance. The protocol and its guarantees are described in the
//! [subscription module docs](crate::subscription#dynamic-membership); this module holds the pieces:
//!
//! - [`DynamicGroup`]: the configuration a [`Subscription`](crate::Subscription) member runs with
//!   ([`Subscription::dynamic_group`](crate::Subscription::dynamic_group)).
//! - `generation`: the checkpoint keys of a group and the handover between its generations.
//! - `member`: one member's run (its heartbeat task and its loop).
//! - [`MembershipStore`]: where members register with a lease, one implementation per backend, each in the
//!   checkpoint store's database (the in-memory, SQLite and PostgreSQL checkpoint stores implement it).
//! - Leases are measured on herald-core's [`Clock`] (microseconds; tests move a
//!   [`ManualClock`](herald_core::ManualClock) instead of sleeping for lease durations). Every member of a group
//!   must read the same time, to within a small fraction of the lease: one process's clock, or machines with
//!   synchronised clocks.
//! - [`Assignment`]: what a member currently does, published on a watch channel.

mod generation;
mod member;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use herald_core::clock::micros;
use herald_core::{Clock, SystemClock};

use crate::error::{EsError, Result};
use crate::subscription::GroupMember;

/// One member's heartbeat: registers or renews its lease and reports the generation it has acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// The member's id (stable across restarts if you want the same index back; any unique string works).
    pub member: String,
    /// The group clock's time of this heartbeat (µs since the Unix epoch, [`Clock::now_micros`]). Members
    /// whose lease ended at or before it are dropped.
    pub now: i64,
    /// When this member's lease ends unless renewed (µs on the group clock).
    pub expires_at: i64,
    /// The newest generation this member has acknowledged: it handles nothing under an older one.
    pub acknowledged: u64,
}

/// A group's membership as one heartbeat left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupView {
    /// Bumped every time the set of live members changes.
    pub generation: u64,
    /// The live members of this generation, sorted by id: a member's index is its position here.
    pub members: Vec<String>,
    /// Every member of this generation has acknowledged it: nobody handles under an older one, so its
    /// members may start.
    pub settled: bool,
}

/// Where the members of dynamic groups register. Each operation is atomic in its store (one transaction
/// on SQL backends), so concurrent heartbeats of several processes agree on one generation.
#[async_trait]
pub trait MembershipStore: Send + Sync + 'static {
    /// Registers or renews `beat.member` in `group`, drops members whose lease ended at or before `beat.now`,
    /// bumps the generation when the set of live members changed, and returns the resulting view.
    async fn heartbeat(&self, group: &str, beat: &Heartbeat) -> Result<GroupView>;
    /// Removes `member` from `group` (a clean stop), bumping the generation when it was a member.
    async fn leave(&self, group: &str, member: &str) -> Result<()>;
}

/// One member's lease as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lease {
    /// µs on the group clock.
    pub(crate) expires_at: i64,
    pub(crate) acknowledged: u64,
}

/// A group's stored state; the backends load it, apply one operation and write it back in a transaction,
/// so the rules live here once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct GroupState {
    pub(crate) generation: u64,
    pub(crate) members: Vec<String>,
    pub(crate) leases: BTreeMap<String, Lease>,
    /// The newest generation ever settled: its members may have started from the checkpoints of every
    /// earlier one, so those are fenced ([`crate::Fence::Generation`]). Never goes back.
    pub(crate) settled: u64,
}

impl GroupState {
    pub(crate) fn beat(&mut self, beat: &Heartbeat) {
        self.leases
            .retain(|id, lease| *id == beat.member || lease.expires_at > beat.now);
        self.leases.insert(
            beat.member.clone(),
            Lease {
                expires_at: beat.expires_at,
                acknowledged: beat.acknowledged,
            },
        );
        self.renumber();
        self.record_settled();
    }

    pub(crate) fn leave(&mut self, member: &str) {
        self.leases.remove(member);
        self.renumber();
        self.record_settled();
    }

    /// Records a settled generation. Called after every change: a member starts handling only after a
    /// heartbeat returned a settled view, and that heartbeat's transaction recorded it first.
    fn record_settled(&mut self) {
        if self.view().settled {
            self.settled = self.settled.max(self.generation);
        }
    }

    /// A new generation whenever the live set differs from the current generation's members. The generation
    /// never goes back (checkpoint keys contain it), even when the group empties.
    fn renumber(&mut self) {
        if !self.members.iter().eq(self.leases.keys()) {
            self.generation += 1;
            self.members = self.leases.keys().cloned().collect();
        }
    }

    pub(crate) fn view(&self) -> GroupView {
        GroupView {
            generation: self.generation,
            members: self.members.clone(),
            settled: self.members.iter().all(|m| {
                self.leases
                    .get(m)
                    .is_some_and(|l| l.acknowledged >= self.generation)
            }),
        }
    }
}

/// What one member of a dynamic group is doing, published by
/// [`Subscription::assignment`](crate::Subscription::assignment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Assignment {
    /// Not running (before `run`, after it returned), or not in a group.
    Idle,
    /// Stopped at a batch boundary, waiting until every member has acknowledged `generation`.
    Rebalancing {
        /// The generation being settled.
        generation: u64,
    },
    /// Handling the streams `member` owns in `generation`.
    Active {
        /// The settled generation.
        generation: u64,
        /// This member's index and the group's size in it.
        member: GroupMember,
    },
}

const DEFAULT_LEASE: Duration = Duration::from_secs(10);

/// Membership of a consumer group whose members join and leave at run time. See the
/// [subscription module docs](crate::subscription#dynamic-membership).
#[derive(Clone)]
pub struct DynamicGroup {
    store: Arc<dyn MembershipStore>,
    member: String,
    lease: Duration,
    heartbeat: Option<Duration>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for DynamicGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamicGroup")
            .field("member", &self.member)
            .field("lease", &self.lease)
            .field("heartbeat", &self.heartbeat_interval())
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

impl DynamicGroup {
    /// Member `member` (unique in the group: 1 to 200 bytes without control characters) registering in
    /// `store`, which must be the membership store of the database holding the subscription's checkpoints
    /// (the same object, for the in-memory, SQLite and PostgreSQL checkpoint stores): generations number
    /// the checkpoints. Lease 10 s on the system clock, heartbeat every third of the lease.
    pub fn new(store: Arc<dyn MembershipStore>, member: impl Into<String>) -> Result<Self> {
        let member = member.into();
        if member.is_empty() || member.len() > 200 || member.chars().any(char::is_control) {
            return Err(EsError::InvalidInput(format!(
                "group member id {member:?} must be 1 to 200 bytes without control characters"
            )));
        }
        Ok(DynamicGroup {
            store,
            member,
            lease: DEFAULT_LEASE,
            heartbeat: None,
            clock: Arc::new(SystemClock),
        })
    }

    /// How long a member stays registered without a heartbeat (10 ms to 24 h; default 10 s). A member that
    /// dies is dropped this long after its last heartbeat; a member that cannot renew its lease stops
    /// handling when it ends. One handler call must finish well within it.
    pub fn lease(mut self, lease: Duration) -> Result<Self> {
        crate::lease::check_lease_range("group lease", lease)?;
        self.lease = lease;
        self.check_heartbeat()?;
        Ok(self)
    }

    /// Real time between heartbeats (default a third of the lease; at least 1 ms, below half the lease).
    /// A rebalance takes up to about two heartbeats (one for every member to see the change, one for the last
    /// acknowledgement to be seen).
    pub fn heartbeat(mut self, every: Duration) -> Result<Self> {
        self.heartbeat = Some(every);
        self.check_heartbeat()?;
        Ok(self)
    }

    /// The clock leases are measured on (default [`SystemClock`]).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// This member's id.
    pub fn member(&self) -> &str {
        &self.member
    }

    fn check_heartbeat(&self) -> Result<()> {
        crate::lease::check_heartbeat_fits("group heartbeat", self.heartbeat_interval(), self.lease)
    }

    fn heartbeat_interval(&self) -> Duration {
        self.heartbeat.unwrap_or(self.lease / 3)
    }

    fn lease_micros(&self) -> i64 {
        micros(self.lease)
    }
}

pub(crate) use generation::{GroupKey, reset, static_safe_point};
pub(crate) use member::run;

#[cfg(test)]
mod tests {
    use tokio::sync::watch;
    use tokio_util::sync::CancellationToken;

    use super::member::{Beat, current, heartbeat_loop};
    use super::*;

    fn beat(member: &str, now: i64, acknowledged: u64) -> Heartbeat {
        Heartbeat {
            member: member.into(),
            now,
            expires_at: now + 100,
            acknowledged,
        }
    }

    #[test]
    fn generations_follow_the_live_set() {
        let mut g = GroupState::default();
        g.beat(&beat("b", 0, 0));
        assert_eq!(g.view().generation, 1);
        assert!(!g.view().settled);
        g.beat(&beat("b", 10, 1));
        assert!(g.view().settled);
        g.beat(&beat("a", 20, 0));
        assert_eq!(g.view().members, ["a", "b"]);
        assert_eq!(g.view().generation, 2);
        g.beat(&beat("a", 30, 2));
        assert!(!g.view().settled, "b has not acknowledged generation 2");
        assert_eq!(g.settled, 1, "b may still save generation 1's checkpoint");
        g.beat(&beat("b", 40, 2));
        assert!(g.view().settled);
        assert_eq!(
            g.settled, 2,
            "generation 2 settled: generation 1's checkpoints are fenced"
        );
        // Renewals change nothing.
        g.beat(&beat("a", 50, 2));
        assert_eq!(g.view().generation, 2);
        // b's lease (until 140) ends: the next heartbeat after it drops b.
        g.beat(&beat("a", 140, 2));
        assert_eq!(g.view().members, ["a"]);
        assert_eq!(g.view().generation, 3);
        g.leave("a");
        assert_eq!(g.view().generation, 4);
        assert!(g.view().members.is_empty());
        g.leave("a");
        assert_eq!(g.view().generation, 4, "leaving twice is harmless");
    }

    /// Leases are microseconds on herald-core's clock: a heartbeat at `now` holds the lease until
    /// `now + lease` in µs, and the member sees its lease end exactly when the clock passes it.
    #[tokio::test]
    async fn heartbeats_measure_leases_in_microseconds() {
        let clock = herald_core::ManualClock::at_micros(5_000_000);
        let store = Arc::new(crate::checkpoint::InMemoryCheckpointStore::new());
        let group = DynamicGroup::new(store, "m")
            .unwrap()
            .lease(Duration::from_millis(1500))
            .unwrap()
            .clock(Arc::new(clock.clone()));
        assert_eq!(group.lease_micros(), 1_500_000);
        let (_ack_tx, ack_rx) = watch::channel(0u64);
        let (beat_tx, mut beat_rx) = watch::channel(Beat::Pending);
        let stop = CancellationToken::new();
        let task = tokio::spawn(heartbeat_loop(
            group,
            "g".into(),
            ack_rx,
            beat_tx,
            stop.clone(),
        ));
        let beat = beat_rx
            .wait_for(|b| matches!(b, Beat::Ok { .. }))
            .await
            .unwrap()
            .clone();
        stop.cancel();
        task.await.unwrap();
        let Beat::Ok { view, lease_until } = beat else {
            unreachable!()
        };
        assert_eq!(lease_until, 6_500_000);
        let (_, rx) = watch::channel(Beat::Ok { view, lease_until });
        assert!(current(&rx, 1, &clock));
        clock.advance(Duration::from_micros(1_499_999));
        assert!(current(&rx, 1, &clock), "one µs before the lease ends");
        clock.advance(Duration::from_micros(1));
        assert!(!current(&rx, 1, &clock), "the lease has ended");
    }

    #[test]
    fn group_keys_parse_strictly() {
        assert_eq!(GroupKey::parse("1of3"), Some(GroupKey::Static { count: 3 }));
        assert_eq!(
            GroupKey::parse("1of3@7"),
            Some(GroupKey::Member {
                generation: 7,
                index: 1,
                count: 3
            })
        );
        assert_eq!(
            GroupKey::parse("start@7of3"),
            Some(GroupKey::Start {
                generation: 7,
                count: 3
            })
        );
        for junk in ["3of3", "xof3", "1of", "1of3@", "start@of3", "1of3@x"] {
            assert_eq!(GroupKey::parse(junk), None, "{junk}");
        }
    }
}
