//! Durable catch-up subscriptions and consumer groups.
//!
//! A [`Subscription`] reads a stream, a category or the global log from its stored checkpoint, in batches,
//! then keeps following live commits ([`EventStoreExt::follow`]: the switch from history to live re-reads from
//! the cursor after the last event yielded, so nothing is skipped or repeated at the seam). After each batch
//! is handled it stores the cursor of the last event in a [`CheckpointStore`]; a restart resumes after it.
//! [`Subscription::run`] stops cleanly when its [`CancellationToken`] is cancelled (after the event being
//! handled, with the checkpoint saved).
//!
//! # Delivery guarantee
//!
//! **At least once, in order.** A crash between handling events and saving the checkpoint redelivers at most
//! the last unsaved batch (`batch_size` events; set it to 1 to redeliver at most one event). Handlers should be
//! idempotent by event id, or keep their effect and the checkpoint in one transaction (see
//! [`crate::sqlite::SqliteProjection`], which is exactly-once for a read model in the same SQLite file).
//! A handler error stops the subscription with [`EsError::Handler`]; the checkpoint stays before the failed
//! event, so the next run delivers it again. A store error stops it too. Neither is retried here: the
//! caller decides (restart with a backoff, alert, park the event); a panicking handler panics the task
//! running [`Subscription::run`], with the same checkpoint guarantee. The exception is a store that is
//! [unavailable](herald_core::Error::Unavailable) (a database server restarting): the follow under the
//! subscription reconnects with a backoff and resumes after the last event it read, logging each attempt
//! at `warn`, so catch-up and live reads ride out a restart (a checkpoint save that fails meanwhile still
//! stops the run).
//!
//! # One runner per checkpoint
//!
//! Starting the same subscription (same name) in two processes does not handle every event twice: a run
//! first takes a **lease** on its checkpoint key in the checkpoint store's database, and every checkpoint
//! write carries the lease's **fencing token** ([`CheckpointStore::save_fenced`]). A second run of the same
//! name waits (retrying every heartbeat) until the first stops (it releases the lease) or its lease ends,
//! then resumes from the first one's checkpoint; configured with [`WhenHeld::Fail`](crate::WhenHeld::Fail) it
//! fails at once with [`EsError::LeaseHeld`]. A run whose lease was taken over (it was paused past its lease:
//! SIGSTOP, a long GC or VM pause) stops with [`EsError::Fenced`]: it checks its lease before every event and
//! its checkpoint write is refused by the token, so it cannot move the checkpoint. Settings:
//! [`Subscription::lease`] with a [`LeaseConfig`] (lease 10 s by default, heartbeat a third of it, the
//! [`Clock`](crate::Clock)); the protocol and its assumptions are in [`crate::lease`]. Static group members
//! lease their own key (`name#IofN`); dynamic members are fenced by generation instead (below).
//!
//! # Consumer groups
//!
//! Members share a category (or the global log). Each reads the whole scope and handles only the streams it
//! owns: member `index` of `count` owns stream `s` when `stable_hash(s) % count == index` ([`stable_hash`] is
//! FNV-1a 64 of the stream name: the same on every machine and Rust version). One stream has one owner at a
//! time, so per-stream order holds. There are two ways to say who the members are.
//!
//! ## Static membership
//!
//! [`Subscription::member`] with a [`GroupMember`] `(index, count)` fixed by configuration. Each member keeps
//! its own checkpoint, named `{name}#{index}of{count}`.
//!
//! **Membership changes (join, leave) are done by restart:** stop every member, start the new set with the new
//! `count`. A member whose checkpoint does not exist yet starts from the *safe point* of the previous
//! generation: for each earlier `count` whose members all have checkpoints, the lowest of them (every event at
//! or below it was handled by its owner at the time); the highest such point across generations. Events after
//! it may be handled again by a new owner (at least once, as always), none are lost. Running two generations at
//! once is not detected and breaks per-stream order: do not.
//!
//! ## Dynamic membership
//!
//! [`Subscription::dynamic_group`] with a [`DynamicGroup`]: members join and leave while the others run, and
//! [`Subscription::run`] rebalances by itself. The group is named after the subscription.
//!
//! - **Registration.** Each member registers in a [`MembershipStore`](crate::MembershipStore) — the
//!   checkpoint store's own database: [`InMemoryCheckpointStore`](crate::InMemoryCheckpointStore),
//!   `sqlite::SqliteCheckpointStore` and `postgres::PostgresCheckpointStore` implement it — with a lease it
//!   renews every heartbeat. A member whose run ends (cancelled, or stopped by an error) deregisters; a member
//!   that dies (SIGKILL, a lost machine, its task aborted) is dropped by the next heartbeat of another member
//!   after its lease ended. Leases are measured on a [`Clock`](crate::Clock) (tests use
//!   [`ManualClock`](crate::ManualClock)).
//! - **Generations.** Every change of the live member set bumps the group's *generation*. A generation's
//!   members, sorted by id, give each its `(index, count)`; [`Subscription::assignment`] publishes it.
//! - **Rebalance: eager, stop-the-world.** On a new generation every member stops handling before its next
//!   event (a batch boundary at worst: the check runs before every event), saves its checkpoint and
//!   acknowledges the generation in its next heartbeat. A member starts handling under a generation only
//!   when *every* member of it has acknowledged it; a member that dies instead of acknowledging is dropped
//!   when its lease ends, which makes a new generation without it. A member also stops handling when its own
//!   lease ends without renewal (it cannot reach the store), because the others may then drop it. So no two
//!   members handle the same stream at the same time, and per-stream order holds across rebalances. This is
//!   the simple, safe choice; its cost is that the whole group pauses for up to about two heartbeat
//!   intervals per change (a lease more when a member dies), even members whose streams did not move, and
//!   that every member rereads the scope from the new generation's start.
//! - **Where members resume.** Checkpoints are per generation: `{name}#{index}of{count}@{generation}`. The
//!   first member to start a generation records its *start*, `{name}#start@{generation}of{count}`: the lowest
//!   final checkpoint of the previous generation that started (every event at or below it was handled), or,
//!   for a group's first generation, the static safe point above (so a static group can become a dynamic
//!   one). Every member reads from the start and skips, as already handled, the events of a stream at or below
//!   the final checkpoint of that stream's owner in an earlier generation. After a clean join or leave,
//!   nothing is handled twice; after a member dies, the events it handled after its last checkpoint (at most
//!   one batch) are handled again by the streams' new owners. Nothing is lost either way (at least once, as
//!   always). Records of old generations are deleted once a later start covers them.
//! - **Failures.** A membership store error ends [`Subscription::run`] with [`EsError::Storage`] (the
//!   member leaves if it can); the caller restarts it, as for any store error. A handler error ends this
//!   member's run and it leaves: the stream's new owner gets the failed event again, so a poison event stops
//!   each member in turn until it is dealt with (park it in the handler). A member stuck in a handler call
//!   (or a checkpoint save) cannot acknowledge, which pauses the whole group; after a lease without
//!   acknowledging it stops renewing its lease, so the others drop it when the lease ends and go on, and it
//!   rejoins once unstuck. The stuck call itself may then overlap the new owner's handling of that stream:
//!   give handlers timeouts shorter than the lease.
//! - **Fencing.** A member's checkpoint writes carry its generation ([`Fence::Generation`](crate::Fence)): the
//!   store refuses them, changing nothing, once a later generation has settled (every member of it
//!   acknowledged it, so it may have started from this generation's checkpoints). A member paused past its
//!   lease (SIGSTOP) is dropped and the group moves on; when it resumes, its late checkpoint write is refused
//!   and it goes back to waiting for a generation, rejoining as a new member. Writes made during an ordinary
//!   rebalance (before the new generation settles) are accepted.
//! - **Assumptions.** Member ids are unique within the group. Members read the same time to within a small
//!   fraction of the lease (one process, or synchronised clocks). One handler call finishes well within the
//!   lease: a member checks its lease before each event, not during one. Use the membership store of the
//!   database that holds the checkpoints (generation numbers name them).
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use herald_core::EventStore;
//! use herald_es::{
//!     Assignment, CancellationToken, DynamicGroup, InMemoryCheckpointStore, Subscription, handler_fn,
//! };
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let store: Arc<dyn EventStore> = Arc::new(herald_memory::InMemoryStore::new());
//! // Checkpoints and membership in one database (the SQLite and PostgreSQL checkpoint stores are both, too).
//! let checkpoints = Arc::new(InMemoryCheckpointStore::new());
//! let member = |id: &str| -> herald_es::Result<Arc<Subscription>> {
//!     let group = DynamicGroup::new(checkpoints.clone(), id)?
//!         .lease(Duration::from_secs(10))?
//!         .heartbeat(Duration::from_millis(20))?;
//!     Ok(Arc::new(
//!         Subscription::category("mailer", "cart", store.clone(), checkpoints.clone())?
//!             .dynamic_group(group)?,
//!     ))
//! };
//! let cancel = CancellationToken::new();
//! let mut runs = Vec::new();
//! let mut members = Vec::new();
//! for id in ["host-a", "host-b"] {
//!     let (sub, cancel) = (member(id)?, cancel.clone());
//!     members.push(sub.clone());
//!     runs.push(tokio::spawn(async move {
//!         sub.run(&handler_fn(|_event| async { Ok(()) }), &cancel).await
//!     }));
//! }
//! // Both settle into one generation of two members (host-a is index 0: ids are sorted).
//! let now = members[0]
//!     .assignment()
//!     .wait_for(|a| matches!(a, Assignment::Active { member, .. } if member.count() == 2))
//!     .await?
//!     .clone();
//! assert!(matches!(now, Assignment::Active { member, .. } if member.index() == 0));
//! cancel.cancel(); // both leave the group
//! for run in runs {
//!     run.await??;
//! }
//! # Ok::<(), herald_es::BoxError>(())
//! # }).unwrap();
//! ```
//!
//! ## Costs
//!
//! Every member reads the whole scope and skips what it does not own, so reads grow with the member count;
//! the handlers' work is what gets divided. That suits handlers that cost more than a read (I/O, remote
//! calls), which is what groups are for. A dynamic member adds one heartbeat (one small transaction) per
//! heartbeat interval, and each rebalance rereads the scope from the generation's start.

use std::sync::Arc;

use herald_core::{EventStore, EventStoreExt, ReadQuery, ReadScope, RecordedEvent, StreamName};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::checkpoint::CheckpointStore;
use crate::error::{EsError, Result};
use crate::group::{self, Assignment, DynamicGroup, GroupKey};
use crate::lease::{HeldLease, LeaseConfig};

mod feed;
mod handler;

pub(crate) use feed::Feed;
pub use handler::{EventHandler, FnHandler, TypedHandler, handler_fn, typed_handler};

/// Re-exported where handlers meet it: the workspace's one boxed error, [`herald_core::BoxError`].
pub use herald_core::BoxError;

/// FNV-1a, 64 bits: a hash that never changes across machines, processes or Rust versions.
pub fn stable_hash(s: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in s.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// One member of a consumer group: `index` of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GroupMember {
    index: u32,
    count: u32,
}

impl GroupMember {
    /// Member `index` (0-based) of `count`.
    pub fn new(index: u32, count: u32) -> Result<Self> {
        if count == 0 || index >= count {
            return Err(EsError::InvalidInput(format!(
                "group member index {index} is out of range for {count} members"
            )));
        }
        Ok(GroupMember { index, count })
    }

    /// This member's index.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The group's size.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Whether this member handles `stream`.
    pub fn owns(&self, stream: &str) -> bool {
        stable_hash(stream) % u64::from(self.count) == u64::from(self.index)
    }

    fn key(&self, name: &str) -> String {
        format!("{name}#{}of{}", self.index, self.count)
    }
}

/// Counts of one [`Subscription::run`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SubscriptionStats {
    /// Events given to the handler.
    pub handled: u64,
    /// Events read but owned by another group member.
    pub skipped: u64,
    /// Cursor of the last event done (checkpointed), if any.
    pub cursor: Option<u64>,
}

/// A durable catch-up subscription. See the [module docs](self).
pub struct Subscription {
    name: String,
    query: ReadQuery,
    group: Option<GroupMember>,
    dynamic: Option<DynamicGroup>,
    store: Arc<dyn EventStore>,
    checkpoints: Arc<dyn CheckpointStore>,
    progress: watch::Sender<Option<u64>>,
    assignment: watch::Sender<Assignment>,
    lease: LeaseConfig,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("name", &self.name)
            .field("scope", &self.query.scope)
            .field("group", &self.group)
            .field("dynamic", &self.dynamic)
            .finish_non_exhaustive()
    }
}

pub(crate) fn validate_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 200
        || name.contains('#')
        || name.chars().any(char::is_control)
    {
        return Err(EsError::InvalidInput(format!(
            "subscription name {name:?} must be 1 to 200 bytes without `#` or control characters"
        )));
    }
    Ok(())
}

impl Subscription {
    /// A subscription named `name` (its checkpoint key) over `scope`.
    pub fn new(
        name: impl Into<String>,
        scope: ReadScope,
        store: Arc<dyn EventStore>,
        checkpoints: Arc<dyn CheckpointStore>,
    ) -> Result<Self> {
        let name = name.into();
        validate_name(&name)?;
        let query = ReadQuery {
            scope,
            ..ReadQuery::all()
        }
        .batch_size(256);
        query.validate()?;
        Ok(Subscription {
            name,
            query,
            group: None,
            dynamic: None,
            store,
            checkpoints,
            progress: watch::channel(None).0,
            assignment: watch::channel(Assignment::Idle).0,
            lease: LeaseConfig::default(),
        })
    }

    /// A subscription to one stream (cursor: stream version).
    pub fn stream(
        name: impl Into<String>,
        stream: StreamName,
        store: Arc<dyn EventStore>,
        checkpoints: Arc<dyn CheckpointStore>,
    ) -> Result<Self> {
        Self::new(name, ReadScope::Stream(stream), store, checkpoints)
    }

    /// A subscription to a category (cursor: global position).
    pub fn category(
        name: impl Into<String>,
        category: impl Into<String>,
        store: Arc<dyn EventStore>,
        checkpoints: Arc<dyn CheckpointStore>,
    ) -> Result<Self> {
        Self::new(
            name,
            ReadScope::Category(category.into()),
            store,
            checkpoints,
        )
    }

    /// A subscription to the global log (cursor: global position).
    pub fn all(
        name: impl Into<String>,
        store: Arc<dyn EventStore>,
        checkpoints: Arc<dyn CheckpointStore>,
    ) -> Result<Self> {
        Self::new(name, ReadScope::All, store, checkpoints)
    }

    /// Only events of these types are read (filtered by the store); the checkpoint moves with the last
    /// matching event.
    pub fn types<I, S>(mut self, types: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.query = self.query.types(types);
        self.query.validate()?;
        Ok(self)
    }

    /// Events read and handled per batch; the checkpoint is saved after each batch (1 to 10,000; default 256).
    pub fn batch_size(mut self, n: usize) -> Result<Self> {
        self.query = self.query.batch_size(n);
        self.query.validate()?;
        Ok(self)
    }

    /// How runs hold the lease on the checkpoint key (default [`LeaseConfig::default`]: 10 s, waiting while
    /// another runner holds it). See [single ownership](crate::subscription#one-runner-per-checkpoint). Not
    /// used by dynamic group members, which are fenced by their group's generation.
    pub fn lease(mut self, config: LeaseConfig) -> Self {
        self.lease = config;
        self
    }

    /// Makes this subscription one member of a static consumer group (category or global scope only).
    pub fn member(mut self, member: GroupMember) -> Result<Self> {
        self.check_group_scope()?;
        if self.dynamic.is_some() {
            return Err(EsError::InvalidInput(format!(
                "subscription `{}` is already a dynamic group member; a member is static or dynamic, not both",
                self.name
            )));
        }
        self.group = Some(member);
        Ok(self)
    }

    /// Makes this subscription a member of a consumer group whose members join and leave at run time (category
    /// or global scope only); the group is named after the subscription. See
    /// [dynamic membership](crate::subscription#dynamic-membership).
    pub fn dynamic_group(mut self, group: DynamicGroup) -> Result<Self> {
        self.check_group_scope()?;
        if self.group.is_some() {
            return Err(EsError::InvalidInput(format!(
                "subscription `{}` is already a static group member; a member is static or dynamic, not both",
                self.name
            )));
        }
        self.dynamic = Some(group);
        Ok(self)
    }

    fn check_group_scope(&self) -> Result<()> {
        if matches!(self.query.scope, ReadScope::Stream(_)) {
            return Err(EsError::InvalidInput(format!(
                "subscription `{}`: consumer groups share a category or the global log, not one stream",
                self.name
            )));
        }
        Ok(())
    }

    /// A receiver of what this dynamic group member does: [`Assignment::Rebalancing`] while a generation
    /// settles, [`Assignment::Active`] with its generation, index and count while it handles events,
    /// [`Assignment::Idle`] outside [`Subscription::run`] (and always for other subscriptions).
    pub fn assignment(&self) -> watch::Receiver<Assignment> {
        self.assignment.subscribe()
    }

    pub(crate) fn assignment_sender(&self) -> &watch::Sender<Assignment> {
        &self.assignment
    }

    pub(crate) fn progress_sender(&self) -> &watch::Sender<Option<u64>> {
        &self.progress
    }

    pub(crate) fn checkpoint_store(&self) -> Arc<dyn CheckpointStore> {
        self.checkpoints.clone()
    }

    pub(crate) fn event_store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    pub(crate) fn query(&self) -> &ReadQuery {
        &self.query
    }

    /// The subscription's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key its checkpoint is stored under (`name`, or `name#IofN` for a static group member). A dynamic
    /// member has one checkpoint per generation, `name#IofN@G` (and each generation's start point,
    /// `name#start@GofN`); this returns `name` for it.
    pub fn checkpoint_key(&self) -> String {
        match &self.group {
            Some(member) => member.key(&self.name),
            None => self.name.clone(),
        }
    }

    /// A receiver of the last checkpointed cursor (set to the stored checkpoint when a run starts, then after
    /// every batch): wait on it to know an event has been handled. A dynamic group member sets it to its
    /// generation's start each time it starts handling in one, so it can go back after a rebalance (read
    /// it together with [`Subscription::assignment`]).
    pub fn progress(&self) -> watch::Receiver<Option<u64>> {
        self.progress.subscribe()
    }

    /// Deletes this subscription's checkpoint: the next run starts from the beginning. For a dynamic group
    /// member, deletes every dynamic checkpoint of the group (stop every member first); its next generation
    /// then starts from the beginning, or from the static safe point if static checkpoints of the same name
    /// remain.
    pub async fn reset(&self) -> Result<()> {
        if self.dynamic.is_some() {
            group::reset(&*self.checkpoints, &self.name).await?;
        } else {
            self.checkpoints.delete(&self.checkpoint_key()).await?;
        }
        self.progress.send_replace(None);
        Ok(())
    }

    /// The cursor the next run resumes after (`None`: from the beginning), with the static group rule of the
    /// module docs for a member without a checkpoint. (A dynamic member's start depends on the generation it
    /// joins; see [dynamic membership](crate::subscription#dynamic-membership).)
    pub async fn start_cursor(&self) -> Result<Option<u64>> {
        let key = self.checkpoint_key();
        if let Some(cursor) = self.checkpoints.load(&key).await? {
            return Ok(Some(cursor));
        }
        let Some(member) = self.group else {
            return Ok(None);
        };
        let prefix = format!("{}#", self.name);
        let listed: Vec<(GroupKey, u64)> = self
            .checkpoints
            .list(&prefix)
            .await?
            .into_iter()
            .filter_map(|(k, c)| GroupKey::parse(&k[prefix.len()..]).map(|key| (key, c)))
            .collect();
        let safe = group::static_safe_point(&listed, Some(member.count));
        if safe.is_some() {
            tracing::info!(subscription = %key, safe_point = ?safe, "new group member starts from the previous generation's safe point");
        }
        Ok(safe)
    }

    fn cursor_of(&self, event: &RecordedEvent) -> u64 {
        match self.query.scope {
            ReadScope::Stream(_) => event.version,
            ReadScope::All | ReadScope::Category(_) => event.position,
        }
    }

    /// Runs until `cancel` is cancelled (`Ok`) or the handler or the store fails (`Err`, checkpoint saved up to
    /// the last event handled).
    pub async fn run<H: EventHandler + ?Sized>(
        &self,
        handler: &H,
        cancel: &CancellationToken,
    ) -> Result<SubscriptionStats> {
        if let Some(dynamic) = &self.dynamic {
            return group::run(self, dynamic, handler, cancel).await;
        }
        let key = self.checkpoint_key();
        let Some(lease) =
            HeldLease::acquire(self.checkpoints.clone(), &key, &self.lease, cancel).await?
        else {
            return Ok(SubscriptionStats::default());
        };
        let result = self.run_leased(&key, &lease, handler, cancel).await;
        lease.release().await;
        result
    }

    async fn run_leased<H: EventHandler + ?Sized>(
        &self,
        key: &str,
        lease: &HeldLease,
        handler: &H,
        cancel: &CancellationToken,
    ) -> Result<SubscriptionStats> {
        // Read after the lease is held: the previous holder's last checkpoint is in it.
        let start = self.start_cursor().await?;
        let mut query = self.query.clone();
        query.from = start.map(|c| c + 1);
        let mut stats = SubscriptionStats {
            cursor: start,
            ..Default::default()
        };
        let batch_size = query.batch_size;
        self.progress.send_replace(start);
        let mut feed = Feed::new(self.store.follow(query));
        let fence = lease.fence();
        tracing::debug!(subscription = %key, token = lease.token(), from = ?start, "subscription started");
        loop {
            let batch = tokio::select! {
                biased;
                batch = feed.next_batch(batch_size, cancel) => batch?,
                fenced = lease.lost() => return Err(fenced),
            };
            let Some(batch) = batch else { break };
            let mut done = None;
            let mut failure = None;
            for event in &batch {
                // Before every event: a lapsed lease means another runner may own the checkpoint now.
                match lease.ensure(cancel).await {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
                let owned = self.group.is_none_or(|m| m.owns(&event.stream));
                if owned {
                    if let Err(e) = handler.handle(event).await {
                        failure = Some(EsError::Handler {
                            handler: key.to_owned(),
                            event_id: event.id,
                            message: e.to_string(),
                        });
                        break;
                    }
                    stats.handled += 1;
                } else {
                    stats.skipped += 1;
                }
                done = Some(self.cursor_of(event));
                if cancel.is_cancelled() {
                    break;
                }
            }
            if let Some(cursor) = done {
                self.checkpoints.save_fenced(key, cursor, &fence).await?;
                stats.cursor = Some(cursor);
                self.progress.send_replace(Some(cursor));
            }
            if let Some(e) = failure {
                return Err(e);
            }
            if cancel.is_cancelled() {
                break;
            }
        }
        tracing::debug!(subscription = %key, ?stats, "subscription stopped");
        Ok(stats)
    }
}
