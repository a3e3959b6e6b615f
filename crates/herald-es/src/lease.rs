//! One active runner per checkpoint: leases with fencing tokens.
//!
//! A [`Subscription`](crate::Subscription) (plain or a static group member),
//! `sqlite::SqliteProjection` and `postgres::PostgresProjection` (features `sqlite`, `postgres`) take a
//! **lease** on their checkpoint name before they read anything, in the checkpoint store's own database
//! (table `herald_es_leases`). Every grant bumps the name's **fencing token** (an epoch that only grows), and
//! every checkpoint write of a leased runner carries its token ([`CheckpointStore::save_fenced`]): the
//! store refuses it, inside the write's own transaction, unless that token is still the current one. A
//! transactional projection writes its read model in that same transaction, so the refusal rolls the
//! read-model changes back too. This is Kafka's producer/consumer epoch fencing, not a lock: it does not
//! rely on a process noticing that it lost its lease. A process paused past its lease (SIGSTOP, a long GC
//! pause, a frozen VM) whose database session stays alive would keep an advisory lock; with a token, its
//! next write after another runner took over fails with [`EsError::Fenced`] and its run stops with it.
//!
//! - **Acquire.** A run takes the lease when nobody holds it or the holder's lease ended (its expiry is at or
//!   before now on the [`LeaseConfig::clock`]). Otherwise it waits, retrying every heartbeat interval, until
//!   the holder stops (a clean stop releases the lease at once) or its lease ends ([`WhenHeld::Wait`], the
//!   default), or fails at once with [`EsError::LeaseHeld`] naming the holder ([`WhenHeld::Fail`]).
//! - **Renew.** A heartbeat task renews the lease every [`LeaseConfig::heartbeat`] interval (default a third
//!   of the lease). A renewal refused because the token changed ends the run with [`EsError::Fenced`]; a
//!   renewal that fails for another reason (the database is unreachable) is retried at the next interval.
//! - **Stop handling when the lease may have lapsed.** A plain subscription checks before every event that
//!   its lease has not ended on its clock; if it has, it waits for the next renewal's outcome (renewed:
//!   go on; fenced: stop). That keeps a resumed process from calling its handler once it has been overtaken,
//!   as far as it can tell; the token check at the checkpoint write is what guarantees it.
//! - **What is guaranteed.** For a transactional projection: exactly once for its read model, whatever the
//!   number of runners and pauses (a runner's write either commits while its token is current, or rolls
//!   back). For a plain subscription: one runner handles at a time as long as no process pauses for longer
//!   than its lease in the middle of a batch; a paused one handles at most that batch again (at least once,
//!   as always) and cannot move the checkpoint.
//! - **Assumptions.** Runners of one name read the same time to within a small fraction of the lease (one
//!   machine, or synchronised clocks); a skewed clock can only make a runner take over early, which the
//!   token still fences. A runner killed without a clean stop (SIGKILL) holds the lease until it ends: a
//!   restart waits that long (set a short lease where restarts must be fast).
//!
//! Dynamic consumer group members are fenced the same way by their group's generation instead of a lease
//! (see [`Fence::Generation`] and the [subscription docs](crate::subscription#dynamic-membership)).

use std::sync::Arc;
use std::time::Duration;

use herald_core::clock::micros;
use herald_core::{Clock, SystemClock};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::checkpoint::CheckpointStore;
use crate::error::{EsError, Result};

const DEFAULT_LEASE: Duration = Duration::from_secs(10);
const MIN_LEASE: Duration = Duration::from_millis(10);
const MAX_LEASE: Duration = Duration::from_secs(24 * 3600);

/// The one range of every lease in herald-es (projection and subscription leases, group membership):
/// `what` names it in the refusal.
pub(crate) fn check_lease_range(what: &str, lease: Duration) -> Result<()> {
    if (MIN_LEASE..=MAX_LEASE).contains(&lease) {
        Ok(())
    } else {
        Err(EsError::InvalidInput(format!(
            "{what} {lease:?} is out of range (10 ms to 24 h)"
        )))
    }
}

/// A heartbeat renews a lease in time only if it is at least 1 ms and below half the lease.
pub(crate) fn check_heartbeat_fits(what: &str, every: Duration, lease: Duration) -> Result<()> {
    if every < Duration::from_millis(1) || every * 2 >= lease {
        return Err(EsError::InvalidInput(format!(
            "{what} {every:?} must be at least 1 ms and below half the lease ({lease:?})"
        )));
    }
    Ok(())
}

/// What a run does when another runner holds the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhenHeld {
    /// Wait until the holder stops or its lease ends, then take over (the default: a standby runner).
    #[default]
    Wait,
    /// Fail at once with [`EsError::LeaseHeld`].
    Fail,
}

/// How a runner holds its lease: length, heartbeat, what to do when another holds it, and the clock.
#[derive(Clone)]
pub struct LeaseConfig {
    lease: Duration,
    heartbeat: Option<Duration>,
    when_held: WhenHeld,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for LeaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseConfig")
            .field("lease", &self.lease)
            .field("heartbeat", &self.heartbeat_interval())
            .field("when_held", &self.when_held)
            .field("clock", &self.clock)
            .finish()
    }
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig {
            lease: DEFAULT_LEASE,
            heartbeat: None,
            when_held: WhenHeld::Wait,
            clock: Arc::new(SystemClock),
        }
    }
}

impl LeaseConfig {
    /// A 10 s lease on the system clock, renewed every third of it, waiting when held.
    pub fn new() -> Self {
        Self::default()
    }

    /// How long the lease lasts without renewal (10 ms to 24 h; default 10 s): how long a standby waits after
    /// the holder died, and how long a holder may pause before another may take over.
    pub fn lease(mut self, lease: Duration) -> Result<Self> {
        check_lease_range("lease", lease)?;
        self.lease = lease;
        self.check_heartbeat()?;
        Ok(self)
    }

    /// Real time between renewals, and between attempts while waiting (default a third of the lease; at
    /// least 1 ms, below half the lease).
    pub fn heartbeat(mut self, every: Duration) -> Result<Self> {
        self.heartbeat = Some(every);
        self.check_heartbeat()?;
        Ok(self)
    }

    /// What a run does when another runner holds the lease (default [`WhenHeld::Wait`]).
    pub fn when_held(mut self, when_held: WhenHeld) -> Self {
        self.when_held = when_held;
        self
    }

    /// The clock leases are measured on (default [`SystemClock`]; tests use
    /// [`ManualClock`](herald_core::ManualClock)).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    fn check_heartbeat(&self) -> Result<()> {
        check_heartbeat_fits("lease heartbeat", self.heartbeat_interval(), self.lease)
    }

    fn heartbeat_interval(&self) -> Duration {
        self.heartbeat.unwrap_or(self.lease / 3)
    }
}

/// The outcome of [`CheckpointStore::acquire_lease`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LeaseGrant {
    /// The caller holds the lease under this fencing token (greater than every earlier token of the name).
    Granted {
        /// The fencing token to pass to [`CheckpointStore::save_fenced`].
        token: u64,
    },
    /// Another runner holds it.
    Held {
        /// The holder's owner id.
        owner: String,
        /// When its lease ends unless renewed (µs on the runners' clock).
        expires_at: i64,
    },
}

/// What a fenced checkpoint write must still own for the store to accept it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fence {
    /// The lease `name` with fencing token `token` (a plain subscription, a static member, a projection).
    Lease {
        /// The lease's name (the checkpoint name of its runner).
        name: String,
        /// The token the runner was granted.
        token: u64,
    },
    /// Generation `generation` of dynamic group `group`: refused once a later generation has settled
    /// (every member acknowledged it, so its members may have started from this one's checkpoints).
    Generation {
        /// The group (the subscription's name).
        group: String,
        /// The generation the member handled in.
        generation: u64,
    },
}

/// A lease as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LeaseRecord {
    pub(crate) owner: String,
    pub(crate) token: u64,
    /// µs on the runners' clock.
    pub(crate) expires_at: i64,
}

/// The one rule of granting, which every backend applies to the row it read (under a write lock): free or
/// ended leases are granted with the next token; a live one is not.
pub(crate) fn grant(
    current: Option<&LeaseRecord>,
    owner: &str,
    now: i64,
    expires_at: i64,
) -> std::result::Result<LeaseRecord, LeaseGrant> {
    match current {
        Some(held) if held.expires_at > now => Err(LeaseGrant::Held {
            owner: held.owner.clone(),
            expires_at: held.expires_at,
        }),
        _ => Ok(LeaseRecord {
            owner: owner.to_owned(),
            token: current.map_or(0, |c| c.token).saturating_add(1),
            expires_at,
        }),
    }
}

/// The fencing rule for a lease: `token` must be the stored one.
pub(crate) fn check_token(name: &str, current: Option<u64>, token: u64) -> Result<()> {
    if current == Some(token) {
        Ok(())
    } else {
        Err(EsError::Fenced {
            name: name.to_owned(),
            token,
        })
    }
}

/// The fencing rule for a dynamic group member: no generation after its own has settled.
pub(crate) fn check_generation(group: &str, settled: u64, generation: u64) -> Result<()> {
    if settled > generation {
        Err(EsError::Fenced {
            name: group.to_owned(),
            token: generation,
        })
    } else {
        Ok(())
    }
}

/// What the heartbeat task last learnt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    /// Held until this time (µs).
    Until(i64),
    /// Another runner took over.
    Fenced,
}

/// Aborts the heartbeat task when the holder is dropped (its run's task aborted, or a panic): the lease then
/// simply ends, like a crashed process's.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A lease held by one run, renewed by its heartbeat task until released or dropped.
pub(crate) struct HeldLease {
    name: String,
    token: u64,
    store: Arc<dyn CheckpointStore>,
    clock: Arc<dyn Clock>,
    status: watch::Receiver<Status>,
    stop: CancellationToken,
    task: AbortOnDrop,
}

impl HeldLease {
    /// Takes lease `name` in `store` (waiting or failing as configured). `None`: cancelled while waiting.
    pub(crate) async fn acquire(
        store: Arc<dyn CheckpointStore>,
        name: &str,
        config: &LeaseConfig,
        cancel: &CancellationToken,
    ) -> Result<Option<HeldLease>> {
        let owner = format!("pid {} run {}", std::process::id(), uuid::Uuid::now_v7());
        let lease = micros(config.lease);
        let every = config.heartbeat_interval();
        let mut waiting = false;
        let (token, until) = loop {
            let now = config.clock.now_micros();
            let until = now.saturating_add(lease);
            match store.acquire_lease(name, &owner, now, until).await? {
                LeaseGrant::Granted { token } => break (token, until),
                LeaseGrant::Held { owner, expires_at } => {
                    if config.when_held == WhenHeld::Fail {
                        return Err(EsError::LeaseHeld {
                            name: name.to_owned(),
                            owner,
                        });
                    }
                    if !waiting {
                        tracing::info!(lease = %name, holder = %owner, expires_at, "another runner holds the lease; waiting");
                        waiting = true;
                    }
                }
            }
            tokio::select! {
                biased;
                () = cancel.cancelled() => return Ok(None),
                () = tokio::time::sleep(every) => {}
            }
        };
        tracing::debug!(lease = %name, token, %owner, "lease acquired");
        let (tx, status) = watch::channel(Status::Until(until));
        let stop = CancellationToken::new();
        let task = tokio::spawn(heartbeat(
            store.clone(),
            name.to_owned(),
            token,
            config.clone(),
            tx,
            stop.clone(),
        ));
        Ok(Some(HeldLease {
            name: name.to_owned(),
            token,
            store,
            clock: config.clock.clone(),
            status,
            stop,
            task: AbortOnDrop(task),
        }))
    }

    /// The fence every checkpoint write of this run carries.
    pub(crate) fn fence(&self) -> Fence {
        Fence::Lease {
            name: self.name.clone(),
            token: self.token,
        }
    }

    /// The fencing token.
    pub(crate) fn token(&self) -> u64 {
        self.token
    }

    fn fenced(&self) -> EsError {
        EsError::Fenced {
            name: self.name.clone(),
            token: self.token,
        }
    }

    /// Resolves with [`EsError::Fenced`] once a renewal learnt that another runner took over.
    pub(crate) async fn lost(&self) -> EsError {
        let mut status = self.status.clone();
        // A closed channel means the heartbeat task is gone (released): nothing more to learn.
        if status.wait_for(|s| *s == Status::Fenced).await.is_err() {
            std::future::pending::<()>().await;
        }
        self.fenced()
    }

    /// `Ok(true)` when the lease has not ended on the clock (after waiting for the next renewal's outcome if
    /// it had), `Ok(false)` when cancelled while waiting, [`EsError::Fenced`] when another runner took over.
    pub(crate) async fn ensure(&self, cancel: &CancellationToken) -> Result<bool> {
        let mut status = self.status.clone();
        loop {
            match *status.borrow_and_update() {
                Status::Fenced => return Err(self.fenced()),
                Status::Until(until) if self.clock.now_micros() < until => return Ok(true),
                Status::Until(_) => {}
            }
            tokio::select! {
                biased;
                () = cancel.cancelled() => return Ok(false),
                changed = status.changed() => if changed.is_err() { return Err(self.fenced()) },
            }
        }
    }

    /// Stops renewing and gives the lease up, so a waiting runner takes over at once.
    pub(crate) async fn release(self) {
        self.stop.cancel();
        let HeldLease {
            name,
            token,
            store,
            mut task,
            ..
        } = self;
        let _ = (&mut task.0).await;
        if let Err(e) = store.release_lease(&name, token).await {
            tracing::warn!(lease = %name, error = %e, "could not release the lease; it ends on its own");
        }
    }
}

async fn heartbeat(
    store: Arc<dyn CheckpointStore>,
    name: String,
    token: u64,
    config: LeaseConfig,
    status: watch::Sender<Status>,
    stop: CancellationToken,
) {
    let lease = micros(config.lease);
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            () = tokio::time::sleep(config.heartbeat_interval()) => {}
        }
        let until = config.clock.now_micros().saturating_add(lease);
        match store.renew_lease(&name, token, until).await {
            Ok(()) => {
                status.send_replace(Status::Until(until));
            }
            Err(EsError::Fenced { .. }) => {
                tracing::warn!(lease = %name, token, "lease lost: another runner took over");
                status.send_replace(Status::Fenced);
                return;
            }
            Err(e) => {
                // The lease may still be ours: try again at the next interval; the run stops handling when
                // the lease ends meanwhile.
                tracing::warn!(lease = %name, error = %e, "lease renewal failed; retrying");
                status.send_modify(|_| {});
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(token: u64, expires_at: i64) -> LeaseRecord {
        LeaseRecord {
            owner: "a".into(),
            token,
            expires_at,
        }
    }

    #[test]
    fn grants_free_or_ended_leases_with_the_next_token() {
        assert_eq!(grant(None, "b", 10, 20).unwrap().token, 1);
        let granted = grant(Some(&held(7, 10)), "b", 10, 30).unwrap();
        assert_eq!(
            granted,
            LeaseRecord {
                owner: "b".into(),
                token: 8,
                expires_at: 30
            }
        );
        assert_eq!(
            grant(Some(&held(7, 11)), "b", 10, 30),
            Err(LeaseGrant::Held {
                owner: "a".into(),
                expires_at: 11
            })
        );
    }

    #[test]
    fn fences_stale_tokens_and_generations() {
        assert!(check_token("p", Some(3), 3).is_ok());
        assert!(matches!(
            check_token("p", Some(4), 3),
            Err(EsError::Fenced { token: 3, .. })
        ));
        assert!(matches!(
            check_token("p", None, 3),
            Err(EsError::Fenced { .. })
        ));
        assert!(check_generation("g", 5, 5).is_ok());
        assert!(check_generation("g", 4, 5).is_ok());
        assert!(matches!(
            check_generation("g", 6, 5),
            Err(EsError::Fenced { token: 5, .. })
        ));
    }

    #[test]
    fn config_bounds() {
        assert!(LeaseConfig::new().lease(Duration::from_millis(5)).is_err());
        assert!(
            LeaseConfig::new()
                .lease(Duration::from_secs(1))
                .unwrap()
                .heartbeat(Duration::from_millis(500))
                .is_err()
        );
        assert!(
            LeaseConfig::new()
                .lease(Duration::from_secs(1))
                .unwrap()
                .heartbeat(Duration::from_millis(300))
                .is_ok()
        );
    }
}
