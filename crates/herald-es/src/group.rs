//! Consumer groups whose members join and leave at run time: membership with leases, generations and an
//! eager (stop-the-world) rebalance. The protocol and its guarantees are described in the
//! [subscription module docs](crate::subscription#dynamic-membership); this module holds the pieces:
//!
//! - [`DynamicGroup`]: the configuration a [`Subscription`] member runs with
//!   ([`Subscription::dynamic_group`]).
//! - [`MembershipStore`]: where members register with a lease, one implementation per backend, each in the
//!   checkpoint store's database (the in-memory, SQLite and PostgreSQL checkpoint stores implement it).
//! - Leases are measured on herald-core's [`Clock`] (microseconds; tests move a
//!   [`ManualClock`](herald_core::ManualClock) instead of sleeping for lease durations). Every member of a group
//!   must read the same time, to within a small fraction of the lease: one process's clock, or machines with
//!   synchronised clocks.
//! - [`Assignment`]: what a member currently does, published on a watch channel.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use herald_core::clock::micros;
use herald_core::{Clock, EventStoreExt, RecordedEvent, SystemClock};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::checkpoint::CheckpointStore;
use crate::error::{EsError, Result};
use crate::subscription::{
    EventHandler, Feed, GroupMember, Subscription, SubscriptionStats, stable_hash,
};

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
    }

    pub(crate) fn leave(&mut self, member: &str) {
        self.leases.remove(member);
        self.renumber();
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
/// [`Subscription::assignment`].
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
const MAX_LEASE: Duration = Duration::from_secs(24 * 3600);
const MIN_LEASE: Duration = Duration::from_millis(10);

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
        if !(MIN_LEASE..=MAX_LEASE).contains(&lease) {
            return Err(EsError::InvalidInput(format!(
                "group lease {lease:?} is out of range (10 ms to 24 h)"
            )));
        }
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
        let every = self.heartbeat_interval();
        if every < Duration::from_millis(1) || every * 2 >= self.lease {
            return Err(EsError::InvalidInput(format!(
                "group heartbeat {every:?} must be at least 1 ms and below half the lease ({:?})",
                self.lease
            )));
        }
        Ok(())
    }

    fn heartbeat_interval(&self) -> Duration {
        self.heartbeat.unwrap_or(self.lease / 3)
    }

    fn lease_micros(&self) -> i64 {
        micros(self.lease)
    }
}

/// A checkpoint key of a subscription's group, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GroupKey {
    /// `name#{index}of{count}`: a static member.
    Static { count: u32 },
    /// `name#{index}of{count}@{generation}`: a dynamic member's checkpoint in one generation.
    Member {
        generation: u64,
        index: u32,
        count: u32,
    },
    /// `name#start@{generation}of{count}`: where every member of a generation started.
    Start { generation: u64, count: u32 },
}

impl GroupKey {
    /// Parses what follows `name#`; `None` for anything else (it is ignored).
    pub(crate) fn parse(rest: &str) -> Option<GroupKey> {
        fn index_of(s: &str) -> Option<(u32, u32)> {
            let (index, count) = s.split_once("of")?;
            let (index, count) = (index.parse().ok()?, count.parse().ok()?);
            (index < count).then_some((index, count))
        }
        if let Some(start) = rest.strip_prefix("start@") {
            let (generation, count) = start.split_once("of")?;
            return Some(GroupKey::Start {
                generation: generation.parse().ok()?,
                count: count.parse().ok()?,
            });
        }
        if let Some((member, generation)) = rest.split_once('@') {
            let (index, count) = index_of(member)?;
            return Some(GroupKey::Member {
                generation: generation.parse().ok()?,
                index,
                count,
            });
        }
        index_of(rest).map(|(_, count)| GroupKey::Static { count })
    }
}

pub(crate) fn member_key(name: &str, generation: u64, member: GroupMember) -> String {
    format!("{name}#{}of{}@{generation}", member.index(), member.count())
}

fn start_key(name: &str, generation: u64, count: u32) -> String {
    format!("{name}#start@{generation}of{count}")
}

/// The static-group safe point over listed checkpoints (see the module docs of `subscription`): for each
/// static generation (`count`) other than `except` whose members all have checkpoints, the lowest cursor;
/// the highest of those.
pub(crate) fn static_safe_point(
    listed: &[(GroupKey, u64)],
    except_count: Option<u32>,
) -> Option<u64> {
    let mut generations: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for (key, cursor) in listed {
        if let GroupKey::Static { count } = key
            && Some(*count) != except_count
        {
            generations.entry(*count).or_default().push(*cursor);
        }
    }
    generations
        .iter()
        .filter(|(count, cursors)| cursors.len() == **count as usize)
        .filter_map(|(_, cursors)| cursors.iter().min().copied())
        .max()
}

/// How a member starts in a generation: after `start`, skipping the events an earlier generation's owner of
/// their stream had already finished.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Handover {
    /// Every event at or below this position was handled before the generation started (0: none).
    start: u64,
    /// For each earlier generation whose record is still useful, its members' final cursors by index (the
    /// vector's length is that generation's count). Each member's final cursor means: every event of the
    /// streams it owned then, at or below it, was handled. A member that stopped before checkpointing in a
    /// generation finished at that generation's start, which says less than what the generation before knew,
    /// so several generations are consulted, not only the last.
    earlier: Vec<Vec<u64>>,
}

impl Handover {
    fn already_handled(&self, event: &RecordedEvent) -> bool {
        let hash = stable_hash(&event.stream);
        self.earlier.iter().any(|finals| {
            !finals.is_empty()
                && finals
                    .get((hash % finals.len() as u64) as usize)
                    .is_some_and(|cursor| event.position <= *cursor)
        })
    }
}

/// Computes (or reads) where `generation` starts, records it, and forgets generations nobody needs again.
async fn handover(
    checkpoints: &dyn CheckpointStore,
    name: &str,
    generation: u64,
    count: u32,
) -> Result<Handover> {
    let prefix = format!("{name}#");
    // One list: a consistent snapshot on every backend. Clean-up only removes generations whose record adds
    // nothing above the start it wrote first, so a concurrent member reading after it decides the same.
    let listed: Vec<(GroupKey, u64)> = checkpoints
        .list(&prefix)
        .await?
        .into_iter()
        .filter_map(|(k, c)| GroupKey::parse(&k[prefix.len()..]).map(|key| (key, c)))
        .collect();
    let mut starts: BTreeMap<u64, (u32, u64)> = BTreeMap::new();
    let mut cursors: BTreeMap<(u64, u32), (u32, u64)> = BTreeMap::new();
    for (key, cursor) in &listed {
        match *key {
            GroupKey::Start { generation, count } => {
                starts.insert(generation, (count, *cursor));
            }
            GroupKey::Member {
                generation,
                index,
                count,
            } => {
                cursors.insert((generation, index), (count, *cursor));
            }
            GroupKey::Static { .. } => {}
        }
    }
    // Every earlier generation that started (its start is written before anyone handles in it), with its
    // members' final cursors; a member that never checkpointed in it finished at its start.
    let earlier: Vec<(u64, u64, Vec<u64>)> = starts
        .range(..generation)
        .map(|(&g, &(n, start))| {
            let finals = (0..n)
                .map(|index| match cursors.get(&(g, index)) {
                    Some(&(c, cursor)) if c == n => cursor.max(start),
                    _ => start,
                })
                .collect();
            (g, start, finals)
        })
        .collect();
    let start = match starts.get(&generation) {
        Some(&(_, start)) => start,
        None => {
            // The last generation that started: everyone who handled anything since did so in it, so every
            // event at or below its lowest final cursor is done.
            let start = match earlier.last() {
                Some((_, start, finals)) => finals.iter().copied().min().unwrap_or(*start),
                None => static_safe_point(&listed, None).unwrap_or(0),
            };
            // Every member computing this from a snapshot gets a value at or below the truth (checkpoints only
            // grow once their generation stopped), so a race between two writers stores a safe value either
            // way.
            checkpoints
                .save(&start_key(name, generation, count), start)
                .await?;
            tracing::info!(group = %name, generation, start, "group generation starts");
            // Generations whose every final cursor is at or below the new start add nothing any more.
            for (g, _, finals) in &earlier {
                if finals.iter().all(|c| *c <= start) {
                    let n = u32::try_from(finals.len()).unwrap_or(u32::MAX);
                    for index in 0..n {
                        if cursors.contains_key(&(*g, index))
                            && let Ok(member) = GroupMember::new(index, n)
                        {
                            checkpoints.delete(&member_key(name, *g, member)).await?;
                        }
                    }
                    checkpoints.delete(&start_key(name, *g, n)).await?;
                }
            }
            start
        }
    };
    Ok(Handover {
        start,
        earlier: earlier
            .into_iter()
            .map(|(_, _, finals)| finals)
            .filter(|finals| finals.iter().any(|c| *c > start))
            .collect(),
    })
}

/// Deletes every checkpoint of a dynamic group (member checkpoints and generation starts).
pub(crate) async fn reset(checkpoints: &dyn CheckpointStore, name: &str) -> Result<()> {
    let prefix = format!("{name}#");
    for (key, _) in checkpoints.list(&prefix).await? {
        if matches!(
            GroupKey::parse(&key[prefix.len()..]),
            Some(GroupKey::Member { .. } | GroupKey::Start { .. })
        ) {
            checkpoints.delete(&key).await?;
        }
    }
    Ok(())
}

/// The last heartbeat's outcome, from the heartbeat task to the member loop.
#[derive(Debug, Clone)]
enum Beat {
    Pending,
    /// `lease_until`: µs on the group clock.
    Ok {
        view: GroupView,
        lease_until: i64,
    },
    Failed(String),
}

/// Aborts the heartbeat task when the run is dropped (its task aborted, or a panic): the member then simply
/// stops renewing and is dropped when its lease ends, like a crashed process.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn heartbeat_loop(
    group: DynamicGroup,
    name: String,
    mut acknowledged: watch::Receiver<u64>,
    out: watch::Sender<Beat>,
    stop: CancellationToken,
) {
    let lease = group.lease_micros();
    let every = group.heartbeat_interval();
    // When this member first saw a generation newer than the one it acknowledged, on the group clock.
    let mut behind_since: Option<i64> = None;
    let mut last_acked = 0;
    loop {
        let now = group.clock.now_micros();
        let acked = *acknowledged.borrow_and_update();
        if acked != last_acked {
            // It acknowledged since: whatever it was behind on, it has caught up with.
            behind_since = None;
            last_acked = acked;
        }
        if behind_since.is_some_and(|since| now.saturating_sub(since) >= lease) {
            // Not acknowledging for a whole lease means the member is stuck (a handler call or a checkpoint
            // save that does not return): stop renewing, so the group drops this member when its lease ends
            // instead of waiting for it forever. Renewal resumes with its next acknowledgement.
            tracing::warn!(group = %name, member = %group.member, "group member has not acknowledged a new generation for a lease; letting its lease end");
            tokio::select! {
                biased;
                () = stop.cancelled() => return,
                changed = acknowledged.changed() => if changed.is_err() { return },
            }
            continue;
        }
        let beat = Heartbeat {
            member: group.member.clone(),
            now,
            expires_at: now.saturating_add(lease),
            acknowledged: acked,
        };
        match group.store.heartbeat(&name, &beat).await {
            Ok(view) => {
                if view.generation <= acked {
                    behind_since = None;
                } else if behind_since.is_none() {
                    behind_since = Some(now);
                }
                out.send_replace(Beat::Ok {
                    view,
                    lease_until: beat.expires_at,
                });
            }
            Err(e) => {
                out.send_replace(Beat::Failed(e.to_string()));
                return;
            }
        }
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            // An acknowledgement is sent at once: the rest of the group is waiting for it.
            changed = acknowledged.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// Why a member stopped handling in a generation.
enum Stop {
    /// The generation changed or this member's lease ran out: back to waiting for a settled generation.
    Rebalance,
    /// Cancelled by the caller.
    Cancelled,
}

/// [`Subscription::run`] for a dynamic group member.
pub(crate) async fn run<H: EventHandler + ?Sized>(
    sub: &Subscription,
    group: &DynamicGroup,
    handler: &H,
    cancel: &CancellationToken,
) -> Result<SubscriptionStats> {
    let (ack_tx, ack_rx) = watch::channel(0u64);
    let (beat_tx, beat_rx) = watch::channel(Beat::Pending);
    let stop = CancellationToken::new();
    let mut beats = AbortOnDrop(tokio::spawn(heartbeat_loop(
        group.clone(),
        sub.name().to_owned(),
        ack_rx,
        beat_tx,
        stop.clone(),
    )));
    let mut stats = SubscriptionStats::default();
    let result = member_loop(sub, group, handler, cancel, &ack_tx, beat_rx, &mut stats).await;
    // Stop heartbeats (letting one in flight finish) before leaving, so none re-registers this member after.
    stop.cancel();
    let _ = (&mut beats.0).await;
    let left = group.store.leave(sub.name(), &group.member).await;
    sub.assignment_sender().send_replace(Assignment::Idle);
    tracing::debug!(subscription = %sub.name(), member = %group.member, ?stats, "group member stopped");
    let stats = result?;
    left?;
    Ok(stats)
}

fn current(beat: &watch::Receiver<Beat>, generation: u64, clock: &dyn Clock) -> bool {
    match &*beat.borrow() {
        Beat::Ok { view, lease_until } => {
            view.generation == generation && clock.now_micros() < *lease_until
        }
        Beat::Pending | Beat::Failed(_) => false,
    }
}

async fn member_loop<H: EventHandler + ?Sized>(
    sub: &Subscription,
    group: &DynamicGroup,
    handler: &H,
    cancel: &CancellationToken,
    ack: &watch::Sender<u64>,
    mut beat: watch::Receiver<Beat>,
    stats: &mut SubscriptionStats,
) -> Result<SubscriptionStats> {
    let name = sub.name();
    let checkpoints = sub.checkpoint_store();
    let clock = &*group.clock;
    loop {
        // Wait, handling nothing, for a settled generation this member is part of.
        let (generation, member) = loop {
            let state = beat.borrow_and_update().clone();
            match state {
                Beat::Failed(message) => {
                    return Err(EsError::Storage {
                        what: "group heartbeat",
                        message,
                    });
                }
                Beat::Pending => {}
                Beat::Ok { view, lease_until } => {
                    if view.generation > *ack.borrow() {
                        // Nothing is being handled here: acknowledge at once.
                        ack.send_replace(view.generation);
                        sub.assignment_sender()
                            .send_replace(Assignment::Rebalancing {
                                generation: view.generation,
                            });
                    } else if view.settled
                        && view.generation == *ack.borrow()
                        && clock.now_micros() < lease_until
                        && let Some(index) = view.members.iter().position(|m| *m == group.member)
                    {
                        let member = GroupMember::new(
                            u32::try_from(index).unwrap_or(u32::MAX),
                            u32::try_from(view.members.len()).unwrap_or(u32::MAX),
                        )?;
                        break (view.generation, member);
                    }
                }
            }
            tokio::select! {
                biased;
                () = cancel.cancelled() => return Ok(*stats),
                changed = beat.changed() => if changed.is_err() {
                    return Err(EsError::Storage { what: "group heartbeat", message: "the heartbeat task ended".into() });
                },
            }
        };

        let handover = handover(&*checkpoints, name, generation, member.count()).await?;
        let key = member_key(name, generation, member);
        // A member that stopped and resumes in the same generation (its lease lapsed and was renewed before
        // anyone noticed) continues from its own checkpoint.
        let start = checkpoints
            .load(&key)
            .await?
            .unwrap_or(0)
            .max(handover.start);
        sub.progress_sender()
            .send_replace((start > 0).then_some(start));
        sub.assignment_sender()
            .send_replace(Assignment::Active { generation, member });
        tracing::info!(subscription = %name, member = %group.member, generation, index = member.index(), count = member.count(), start, "group member handling");
        let mut query = sub.query().clone();
        query.from = Some(start + 1);
        let batch_size = query.batch_size;
        let mut feed = Feed::new(sub.event_store().follow(query));
        let stop = 'generation: loop {
            let batch = tokio::select! {
                biased;
                batch = feed.next_batch(batch_size, cancel) => batch?,
                changed = beat.changed() => {
                    if changed.is_err() || !current(&beat, generation, clock) {
                        break 'generation Stop::Rebalance;
                    }
                    continue 'generation;
                }
            };
            let Some(batch) = batch else {
                break Stop::Cancelled;
            };
            let mut done = None;
            let mut failure = None;
            let mut stop = None;
            for event in &batch {
                // Before every event: a new generation or a lapsed lease means another member may own this
                // stream now or soon.
                if !current(&beat, generation, clock) {
                    stop = Some(Stop::Rebalance);
                    break;
                }
                if member.owns(&event.stream) && !handover.already_handled(event) {
                    if let Err(e) = handler.handle(event).await {
                        failure = Some(EsError::Handler {
                            handler: key.clone(),
                            event_id: event.id,
                            message: e.to_string(),
                        });
                        break;
                    }
                    stats.handled += 1;
                } else {
                    stats.skipped += 1;
                }
                done = Some(event.position);
                if cancel.is_cancelled() {
                    stop = Some(Stop::Cancelled);
                    break;
                }
            }
            if let Some(cursor) = done {
                checkpoints.save(&key, cursor).await?;
                stats.cursor = Some(cursor);
                sub.progress_sender().send_replace(Some(cursor));
            }
            if let Some(e) = failure {
                return Err(e);
            }
            if let Some(stop) = stop {
                break stop;
            }
        };
        match stop {
            Stop::Cancelled => return Ok(*stats),
            Stop::Rebalance => {
                tracing::info!(subscription = %name, member = %group.member, generation, "group member stopped for a rebalance");
            }
        }
    }
}

#[cfg(test)]
mod tests {
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
        g.beat(&beat("b", 40, 2));
        assert!(g.view().settled);
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
