//! One active runner per subscription or projection name: leases with fencing tokens (`herald_es::lease`).
//!
//! - Every checkpoint store refuses a write made with a stale token and changes nothing (in-memory, SQLite,
//!   PostgreSQL).
//! - Two runners of one name in one process: the second waits while the first holds the lease, takes over
//!   when the first stops (released) or when its lease ends (aborted), and every event is applied once.
//! - A runner overtaken in the middle of a batch (PostgreSQL: paused inside its transaction) has the batch
//!   refused and rolled back.
//! - Split brain with real processes: the owning runner is SIGSTOPped past its lease with a batch in hand
//!   (SQLite: read, before its transaction; PostgreSQL: inside its transaction), a second process takes over
//!   and finishes, the first is SIGCONTed: its write is refused, it exits with the fenced error and the read
//!   model counts each event once.
//!
//! The PostgreSQL cases skip (printed) when the server is unreachable, unless `CI` is set.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::Fixture;
use herald_core::{EventStore, ReadScope, RecordedEvent};
use herald_es::postgres::{PostgresProjection, PostgresReadModel};
use herald_es::sqlite::{SqliteProjection, SqliteReadModel};
use herald_es::{
    BoxError, CancellationToken, EsError, EventHandler, Fence, Heartbeat, LeaseConfig, LeaseGrant,
    ManualClock, Projector, ReadModel, Subscription, WhenHeld,
};
use tokio::sync::{Notify, watch};

const WAIT: Duration = Duration::from_secs(60);
const LEASE: Duration = Duration::from_secs(10);

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// Leases on a manual clock: they end only when the test moves it. Heartbeats (and retries while waiting)
/// every 20 ms of real time.
fn leases(clock: &ManualClock) -> LeaseConfig {
    LeaseConfig::new()
        .lease(LEASE)
        .unwrap()
        .heartbeat(Duration::from_millis(20))
        .unwrap()
        .clock(Arc::new(clock.clone()))
}

async fn wait_progress(rx: watch::Receiver<Option<u64>>, target: u64) {
    let mut rx = rx;
    within(
        &format!("progress {target}"),
        rx.wait_for(|p| *p == Some(target)),
    )
    .await
    .unwrap();
}

// ---------------------------------------------------------------------------------------------------------
// The store's rule: a stale token is refused and changes nothing.

async fn stale_token_is_refused_and_changes_nothing(f: Fixture) {
    let cps = &f.checkpoints;
    let LeaseGrant::Granted { token: first } = cps
        .acquire_lease("p", "runner-a", 1_000, 2_000)
        .await
        .unwrap()
    else {
        panic!("a free lease is granted");
    };
    let fence = |token| Fence::Lease {
        name: "p".into(),
        token,
    };
    cps.save_fenced("p", 5, &fence(first)).await.unwrap();
    assert_eq!(cps.load("p").await.unwrap(), Some(5));

    // Held until 2,000: another owner is refused before, granted at 2,000, with a greater token.
    assert_eq!(
        cps.acquire_lease("p", "runner-b", 1_999, 3_000)
            .await
            .unwrap(),
        LeaseGrant::Held {
            owner: "runner-a".into(),
            expires_at: 2_000
        }
    );
    let LeaseGrant::Granted { token: second } = cps
        .acquire_lease("p", "runner-b", 2_000, 3_000)
        .await
        .unwrap()
    else {
        panic!("an ended lease is granted");
    };
    assert!(second > first);

    // The overtaken runner: its save, renewal and release are refused or ignored, nothing changes.
    let refused = cps.save_fenced("p", 9, &fence(first)).await.unwrap_err();
    assert!(
        matches!(&refused, EsError::Fenced { name, token } if name == "p" && *token == first),
        "{refused:?}"
    );
    assert_eq!(cps.load("p").await.unwrap(), Some(5), "nothing written");
    let refused = cps.save_fenced("new", 1, &fence(first)).await.unwrap_err();
    assert!(refused.is_fenced());
    assert_eq!(cps.load("new").await.unwrap(), None, "nothing created");
    assert!(
        cps.renew_lease("p", first, 9_000)
            .await
            .unwrap_err()
            .is_fenced()
    );
    cps.release_lease("p", first).await.unwrap();
    assert!(
        matches!(
            cps.acquire_lease("p", "runner-c", 2_500, 4_000).await.unwrap(),
            LeaseGrant::Held { owner, .. } if owner == "runner-b"
        ),
        "a stale release does not free the lease"
    );

    // The holder renews, saves, releases; then the next grant is immediate and its token greater again.
    cps.renew_lease("p", second, 5_000).await.unwrap();
    cps.save_fenced("p", 7, &fence(second)).await.unwrap();
    assert_eq!(cps.load("p").await.unwrap(), Some(7));
    cps.release_lease("p", second).await.unwrap();
    let LeaseGrant::Granted { token: third } = cps
        .acquire_lease("p", "runner-c", 2_500, 4_000)
        .await
        .unwrap()
    else {
        panic!("a released lease is granted at once");
    };
    assert!(third > second);
    // Leases are per name.
    assert!(matches!(
        cps.acquire_lease("q", "runner-a", 2_500, 4_000)
            .await
            .unwrap(),
        LeaseGrant::Granted { .. }
    ));
    // An unleased name fences every token.
    assert!(
        cps.save_fenced(
            "z",
            1,
            &Fence::Lease {
                name: "z".into(),
                token: 1
            }
        )
        .await
        .unwrap_err()
        .is_fenced()
    );
}

/// A dynamic group member's checkpoint is fenced by its generation: accepted while a rebalance settles (the
/// member saves what it did before acknowledging), refused once a later generation settled (a member paused
/// past its lease, dropped, resuming).
async fn a_group_generation_is_fenced_once_a_later_one_settled(f: Fixture) {
    let (cps, groups) = (&f.checkpoints, &f.memberships);
    let beat = |member: &str, now: i64, acknowledged: u64| Heartbeat {
        member: member.into(),
        now,
        expires_at: now + 1_000,
        acknowledged,
    };
    let fence = |generation| Fence::Generation {
        group: "g".into(),
        generation,
    };
    let first = groups.heartbeat("g", &beat("a", 0, 0)).await.unwrap();
    let settled = groups
        .heartbeat("g", &beat("a", 1, first.generation))
        .await
        .unwrap();
    assert!(settled.settled);
    let key = "g#0of1@1";
    cps.save_fenced(key, 10, &fence(first.generation))
        .await
        .unwrap();

    // b joins: a new generation, not settled yet; a may still save what it did in the first.
    let second = groups.heartbeat("g", &beat("b", 2, 0)).await.unwrap();
    assert!(second.generation > first.generation && !second.settled);
    cps.save_fenced(key, 12, &fence(first.generation))
        .await
        .unwrap();

    // Both acknowledge: the second generation settled, the first is fenced.
    groups
        .heartbeat("g", &beat("a", 3, second.generation))
        .await
        .unwrap();
    let now = groups
        .heartbeat("g", &beat("b", 4, second.generation))
        .await
        .unwrap();
    assert!(now.settled);
    let err = cps
        .save_fenced(key, 20, &fence(first.generation))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, EsError::Fenced { name, token } if name == "g" && *token == first.generation),
        "{err:?}"
    );
    assert_eq!(cps.load(key).await.unwrap(), Some(12), "nothing written");
    cps.save_fenced("g#0of2@2", 30, &fence(second.generation))
        .await
        .unwrap();
    assert_eq!(cps.load("g#0of2@2").await.unwrap(), Some(30));
}

// ---------------------------------------------------------------------------------------------------------
// Two subscription runners of one name in one process.

/// Counts deliveries by event id.
#[derive(Default)]
struct Deliveries(Mutex<HashMap<uuid::Uuid, u32>>);

impl Deliveries {
    fn exactly_once(&self, expected: usize) {
        let seen = self.0.lock().unwrap();
        assert_eq!(seen.len(), expected, "every event delivered");
        let dups: Vec<_> = seen.iter().filter(|(_, n)| **n != 1).collect();
        assert!(dups.is_empty(), "delivered more than once: {dups:?}");
    }
}

#[async_trait]
impl EventHandler for Deliveries {
    async fn handle(&self, event: &RecordedEvent) -> Result<(), BoxError> {
        *self.0.lock().unwrap().entry(event.id).or_default() += 1;
        Ok(())
    }
}

fn mailer(f: &Fixture, clock: &ManualClock) -> Arc<Subscription> {
    Arc::new(
        Subscription::category("mailer", "acct", f.store.clone(), f.checkpoints.clone())
            .unwrap()
            .batch_size(7)
            .unwrap()
            .lease(leases(clock)),
    )
}

fn spawn_sub(
    sub: &Arc<Subscription>,
    handler: &Arc<Deliveries>,
    cancel: &CancellationToken,
) -> tokio::task::JoinHandle<herald_es::Result<herald_es::SubscriptionStats>> {
    let (sub, handler, cancel) = (sub.clone(), handler.clone(), cancel.clone());
    tokio::spawn(async move { sub.run(&*handler, &cancel).await })
}

async fn two_subscription_runners_take_turns(f: Fixture) {
    let clock = ManualClock::at_micros(1_000_000_000);
    let handler = Arc::new(Deliveries::default());
    let first = f.append_raw("acct-1", 40, "Deposited").await;
    let (a, a_stop) = (mailer(&f, &clock), CancellationToken::new());
    let a_run = spawn_sub(&a, &handler, &a_stop);
    wait_progress(a.progress(), first).await;

    // B waits while A holds the lease: A handles the next events alone.
    let (b, b_stop) = (mailer(&f, &clock), CancellationToken::new());
    let b_run = spawn_sub(&b, &handler, &b_stop);
    let second = f.append_raw("acct-2", 30, "Deposited").await;
    wait_progress(a.progress(), second).await;
    assert_eq!(*b.progress().borrow(), None, "the standby has not started");

    // A stops cleanly (releases): B takes over from A's checkpoint.
    a_stop.cancel();
    within("a stops", a_run).await.unwrap().unwrap();
    wait_progress(b.progress(), second).await;
    let third = f.append_raw("acct-3", 30, "Deposited").await;
    wait_progress(b.progress(), third).await;
    handler.exactly_once(100);

    // B dies without releasing: C waits until B's lease ends on the clock, then takes over.
    b_run.abort();
    let _ = b_run.await;
    let (c, c_stop) = (mailer(&f, &clock), CancellationToken::new());
    let c_run = spawn_sub(&c, &handler, &c_stop);
    clock.advance(LEASE);
    wait_progress(c.progress(), third).await;
    let fourth = f.append_raw("acct-4", 5, "Deposited").await;
    wait_progress(c.progress(), fourth).await;
    c_stop.cancel();
    within("c stops", c_run).await.unwrap().unwrap();
    handler.exactly_once(105);
    drop(b_stop);
}

async fn a_second_runner_configured_to_fail_fails_clearly(f: Fixture) {
    let clock = ManualClock::at_micros(1_000_000_000);
    let handler = Arc::new(Deliveries::default());
    let first = f.append_raw("acct-1", 3, "Deposited").await;
    let (a, a_stop) = (mailer(&f, &clock), CancellationToken::new());
    let a_run = spawn_sub(&a, &handler, &a_stop);
    wait_progress(a.progress(), first).await;
    let b = Subscription::category("mailer", "acct", f.store.clone(), f.checkpoints.clone())
        .unwrap()
        .lease(leases(&clock).when_held(WhenHeld::Fail));
    let err = within("b fails", b.run(&*handler, &CancellationToken::new()))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, EsError::LeaseHeld { name, .. } if name == "mailer"),
        "{err:?}"
    );
    a_stop.cancel();
    within("a stops", a_run).await.unwrap().unwrap();
    handler.exactly_once(3);
}

// ---------------------------------------------------------------------------------------------------------
// Two projection runners of one name in one process: the in-memory projector, and the transactional SQLite
// and PostgreSQL projections (read model and checkpoint in one transaction).

/// A projection whose read model is one counter, on any backend.
#[async_trait]
trait Counting: Send + Sync + 'static {
    async fn run(&self, cancel: &CancellationToken) -> herald_es::Result<u64>;
    fn progress(&self) -> watch::Receiver<Option<u64>>;
    async fn count(&self) -> i64;
}

#[derive(Default)]
struct MemCounter(AtomicU64);

#[async_trait]
impl ReadModel for MemCounter {
    async fn apply(&self, _: &RecordedEvent) -> Result<(), BoxError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    async fn reset(&self) -> Result<(), BoxError> {
        self.0.store(0, Ordering::SeqCst);
        Ok(())
    }
}

#[async_trait]
impl Counting for Projector<MemCounter> {
    async fn run(&self, cancel: &CancellationToken) -> herald_es::Result<u64> {
        Ok(Projector::run(self, cancel).await?.handled)
    }
    fn progress(&self) -> watch::Receiver<Option<u64>> {
        self.subscription().progress()
    }
    async fn count(&self) -> i64 {
        self.model().0.load(Ordering::SeqCst) as i64
    }
}

struct SqlCounter;

impl SqliteReadModel for SqlCounter {
    fn setup(&self, tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS deposits (id INTEGER PRIMARY KEY, n INTEGER NOT NULL);
             INSERT OR IGNORE INTO deposits (id, n) VALUES (1, 0);",
        )
    }
    fn apply(&self, tx: &rusqlite::Transaction<'_>, _: &RecordedEvent) -> Result<(), BoxError> {
        tx.execute("UPDATE deposits SET n = n + 1 WHERE id = 1", [])?;
        Ok(())
    }
    fn reset(&self, tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
        tx.execute("UPDATE deposits SET n = 0", []).map(|_| ())
    }
}

#[async_trait]
impl Counting for SqliteProjection<SqlCounter> {
    async fn run(&self, cancel: &CancellationToken) -> herald_es::Result<u64> {
        SqliteProjection::run(self, cancel).await
    }
    fn progress(&self) -> watch::Receiver<Option<u64>> {
        SqliteProjection::progress(self)
    }
    async fn count(&self) -> i64 {
        self.query(|c| c.query_row("SELECT n FROM deposits", [], |r| r.get(0)))
            .await
            .unwrap()
    }
}

struct PgCounter;

#[async_trait]
impl PostgresReadModel for PgCounter {
    async fn setup(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
    ) -> Result<(), tokio_postgres::Error> {
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS deposits (id INT PRIMARY KEY, n BIGINT NOT NULL);
             INSERT INTO deposits (id, n) VALUES (1, 0) ON CONFLICT DO NOTHING;",
        )
        .await
    }
    async fn apply(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        _: &RecordedEvent,
    ) -> Result<(), BoxError> {
        tx.execute("UPDATE deposits SET n = n + 1 WHERE id = 1", &[])
            .await?;
        Ok(())
    }
    async fn reset(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
    ) -> Result<(), tokio_postgres::Error> {
        tx.execute("UPDATE deposits SET n = 0", &[])
            .await
            .map(|_| ())
    }
}

#[async_trait]
impl Counting for PostgresProjection<PgCounter> {
    async fn run(&self, cancel: &CancellationToken) -> herald_es::Result<u64> {
        PostgresProjection::run(self, cancel).await
    }
    fn progress(&self) -> watch::Receiver<Option<u64>> {
        PostgresProjection::progress(self)
    }
    async fn count(&self) -> i64 {
        self.with_client(async |c| {
            c.query_one("SELECT n FROM deposits", &[])
                .await
                .map(|r| r.get(0))
        })
        .await
        .unwrap()
    }
}

/// A runner of projection `deposits` on the fixture's backend (the in-memory ones share `memory_model`).
async fn deposits(
    f: &Fixture,
    clock: &ManualClock,
    memory_model: &Arc<MemCounter>,
) -> Arc<dyn Counting> {
    let scope = ReadScope::Category("acct".into());
    match f.backend {
        "memory" => Arc::new(Projector::new(
            Subscription::new("deposits", scope, f.store.clone(), f.checkpoints.clone())
                .unwrap()
                .lease(leases(clock)),
            memory_model.clone(),
        )),
        "sqlite" => Arc::new(
            SqliteProjection::open(
                "deposits",
                f.path.as_ref().unwrap(),
                scope,
                f.store.clone(),
                SqlCounter,
            )
            .await
            .unwrap()
            .batch_size(7)
            .unwrap()
            .lease(leases(clock)),
        ),
        "postgres" => Arc::new(
            PostgresProjection::open(
                "deposits",
                &herald_store_testkit::postgres::server_url(),
                f.schema().unwrap(),
                scope,
                f.store.clone(),
                PgCounter,
            )
            .await
            .unwrap()
            .batch_size(7)
            .unwrap()
            .lease(leases(clock)),
        ),
        other => unreachable!("{other}"),
    }
}

fn spawn_projection(
    p: &Arc<dyn Counting>,
    cancel: &CancellationToken,
) -> tokio::task::JoinHandle<herald_es::Result<u64>> {
    let (p, cancel) = (p.clone(), cancel.clone());
    tokio::spawn(async move { p.run(&cancel).await })
}

async fn two_projection_runners_count_each_event_once(f: Fixture) {
    let clock = ManualClock::at_micros(1_000_000_000);
    let model = Arc::new(MemCounter::default());
    let first = f.append_raw("acct-1", 40, "Deposited").await;
    let (a, a_stop) = (deposits(&f, &clock, &model).await, CancellationToken::new());
    let a_run = spawn_projection(&a, &a_stop);
    wait_progress(a.progress(), first).await;

    let (b, b_stop) = (deposits(&f, &clock, &model).await, CancellationToken::new());
    let b_run = spawn_projection(&b, &b_stop);
    let second = f.append_raw("acct-2", 30, "Deposited").await;
    wait_progress(a.progress(), second).await;
    assert_eq!(*b.progress().borrow(), None, "the standby has not started");
    assert_eq!(a.count().await, 70);

    a_stop.cancel();
    assert_eq!(within("a stops", a_run).await.unwrap().unwrap(), 70);
    wait_progress(b.progress(), second).await;
    let third = f.append_raw("acct-3", 30, "Deposited").await;
    wait_progress(b.progress(), third).await;
    assert_eq!(b.count().await, 100, "100 events, counted once each");

    // B dies holding the lease: C takes over when it ends, and counts nothing twice.
    b_run.abort();
    let _ = b_run.await;
    let (c, c_stop) = (deposits(&f, &clock, &model).await, CancellationToken::new());
    let c_run = spawn_projection(&c, &c_stop);
    clock.advance(LEASE);
    wait_progress(c.progress(), third).await;
    c_stop.cancel();
    assert_eq!(within("c stops", c_run).await.unwrap().unwrap(), 0);
    assert_eq!(c.count().await, 100);
    drop(b_stop);
}

on_both_backends!(
    stale_token_is_refused_and_changes_nothing,
    a_group_generation_is_fenced_once_a_later_one_settled,
    two_subscription_runners_take_turns,
    a_second_runner_configured_to_fail_fails_clearly,
    two_projection_runners_count_each_event_once,
);

// ---------------------------------------------------------------------------------------------------------
// Overtaken in the middle of a batch (PostgreSQL: a runner paused inside its transaction holds no lock the
// new owner needs; SQLite's single writer lock serialises the two instead, see the process test below).

/// One row per application (no unique constraint: a duplicate must show), with an optional gate that holds
/// the first application after `gate_after` until released.
struct GatedLedger {
    gate_after: u64,
    armed: AtomicBool,
    entered: Arc<Notify>,
    go: Arc<Notify>,
}

#[async_trait]
impl PostgresReadModel for GatedLedger {
    async fn setup(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
    ) -> Result<(), tokio_postgres::Error> {
        tx.batch_execute("CREATE TABLE IF NOT EXISTS ledger (position BIGINT NOT NULL)")
            .await
    }
    async fn apply(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        event: &RecordedEvent,
    ) -> Result<(), BoxError> {
        tx.execute(
            "INSERT INTO ledger (position) VALUES ($1)",
            &[&(event.position as i64)],
        )
        .await?;
        if event.position > self.gate_after && self.armed.swap(false, Ordering::SeqCst) {
            self.entered.notify_one();
            self.go.notified().await;
        }
        Ok(())
    }
    async fn reset(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
    ) -> Result<(), tokio_postgres::Error> {
        tx.execute("DELETE FROM ledger", &[]).await.map(|_| ())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_runner_overtaken_mid_batch_is_refused_and_rolled_back() {
    let Some(f) = Fixture::postgres("postgres_runner_overtaken_mid_batch").await else {
        return;
    };
    let clock = ManualClock::at_micros(1_000_000_000);
    let first = f.append_raw("acct-1", 40, "Deposited").await;
    let open = |gate_after: u64| {
        let f = &f;
        let clock = clock.clone();
        async move {
            Arc::new(
                PostgresProjection::open(
                    "ledger",
                    &herald_store_testkit::postgres::server_url(),
                    f.schema().unwrap(),
                    ReadScope::Category("acct".into()),
                    f.store.clone(),
                    GatedLedger {
                        gate_after,
                        armed: AtomicBool::new(gate_after > 0),
                        entered: Arc::new(Notify::new()),
                        go: Arc::new(Notify::new()),
                    },
                )
                .await
                .unwrap()
                .lease(leases(&clock)),
            )
        }
    };
    let a = open(first).await;
    let a_run = tokio::spawn({
        let a = a.clone();
        async move { a.run(&CancellationToken::new()).await }
    });
    wait_progress(a.progress(), first).await;
    let second = f.append_raw("acct-2", 30, "Deposited").await;
    // A is inside its next batch's transaction, stuck: its lease ends, B takes over and finishes.
    within("a enters the batch", a.model().entered.notified()).await;
    clock.advance(LEASE);
    let b = open(0).await;
    let b_stop = CancellationToken::new();
    let b_run = tokio::spawn({
        let (b, b_stop) = (b.clone(), b_stop.clone());
        async move { b.run(&b_stop).await }
    });
    wait_progress(b.progress(), second).await;
    b_stop.cancel();
    assert_eq!(within("b stops", b_run).await.unwrap().unwrap(), 30);
    // A resumes: its batch is refused by the token, and rolled back.
    a.model().go.notify_one();
    let err = within("a stops", a_run).await.unwrap().unwrap_err();
    assert!(
        matches!(&err, EsError::Fenced { name, .. } if name == "ledger"),
        "{err:?}"
    );
    let (rows, distinct): (i64, i64) = b
        .with_client(async |c| {
            c.query_one("SELECT count(*), count(DISTINCT position) FROM ledger", &[])
                .await
                .map(|r| (r.get(0), r.get(1)))
        })
        .await
        .unwrap();
    assert_eq!((rows, distinct), (70, 70), "each event applied once");
}

// ---------------------------------------------------------------------------------------------------------
// Split brain with real processes: SIGSTOP the owner past its lease, a second process takes over, SIGCONT.

const CHILD_DB: &str = "HERALD_ES_FENCE_CHILD";
const CHILD_STOP_AFTER: &str = "HERALD_ES_FENCE_STOP_AFTER";
/// The child's exit status when its run ended with [`EsError::Fenced`].
const EXIT_FENCED: i32 = 3;

/// Stops this process (SIGSTOP to itself) at the first event after a position, once, printing `stopping`
/// first: the pause lands at a known point, not wherever a signal from outside happens to find it.
#[derive(Default)]
struct Stopper {
    after: Option<u64>,
    stopped: AtomicBool,
}

impl Stopper {
    fn maybe_stop(&self, position: u64) {
        if self.after.is_some_and(|p| position > p) && !self.stopped.swap(true, Ordering::SeqCst) {
            println!("stopping");
            std::io::stdout().flush().unwrap();
            signal(std::process::id(), "STOP");
        }
    }
}

/// One row per application, no unique constraint: a duplicate must show, not be rejected.
struct Ledger {
    /// PostgreSQL child: stops inside the transaction of the batch holding the first event after the
    /// position (the runner holds no lock the new owner needs there).
    stop: Stopper,
}

/// The SQLite child's store: stops the process when a read returns the first event after the position, so
/// the runner is paused with the batch in hand, between its last lease check and its transaction (inside the
/// transaction it would hold SQLite's one write lock, and no other runner could take over until it resumed).
struct Pausing {
    inner: Arc<dyn EventStore>,
    stop: Stopper,
}

#[async_trait]
impl EventStore for Pausing {
    async fn append(
        &self,
        stream: &herald_core::StreamName,
        events: Vec<herald_core::NewEvent>,
        expected: herald_core::ExpectedVersion,
    ) -> herald_core::Result<herald_core::AppendResult> {
        self.inner.append(stream, events, expected).await
    }
    async fn link(
        &self,
        stream: &herald_core::StreamName,
        ids: &[uuid::Uuid],
        expected: herald_core::ExpectedVersion,
    ) -> herald_core::Result<herald_core::LinkResult> {
        self.inner.link(stream, ids, expected).await
    }
    async fn read_page(
        &self,
        query: &herald_core::ReadQuery,
    ) -> herald_core::Result<Vec<RecordedEvent>> {
        let page = self.inner.read_page(query).await?;
        if let Some(last) = page.last() {
            self.stop.maybe_stop(last.position);
        }
        Ok(page)
    }
    async fn event(&self, id: uuid::Uuid) -> herald_core::Result<Option<RecordedEvent>> {
        self.inner.event(id).await
    }
    async fn stream_version(
        &self,
        stream: &herald_core::StreamName,
    ) -> herald_core::Result<Option<u64>> {
        self.inner.stream_version(stream).await
    }
    async fn streams(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> herald_core::Result<Vec<herald_core::StreamInfo>> {
        self.inner.streams(prefix, after, limit).await
    }
    async fn delete_stream(
        &self,
        stream: &herald_core::StreamName,
        expected: herald_core::ExpectedVersion,
    ) -> herald_core::Result<()> {
        self.inner.delete_stream(stream, expected).await
    }
    fn watch_head(&self) -> watch::Receiver<herald_core::Head> {
        self.inner.watch_head()
    }
}

impl SqliteReadModel for Ledger {
    fn setup(&self, tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
        tx.execute_batch("CREATE TABLE IF NOT EXISTS ledger (position INTEGER NOT NULL)")
    }
    fn apply(&self, tx: &rusqlite::Transaction<'_>, event: &RecordedEvent) -> Result<(), BoxError> {
        tx.execute(
            "INSERT INTO ledger (position) VALUES (?1)",
            [event.position as i64],
        )?;
        Ok(())
    }
    fn reset(&self, tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
        tx.execute("DELETE FROM ledger", []).map(|_| ())
    }
}

#[async_trait]
impl PostgresReadModel for Ledger {
    async fn setup(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
    ) -> Result<(), tokio_postgres::Error> {
        tx.batch_execute("CREATE TABLE IF NOT EXISTS ledger (position BIGINT NOT NULL)")
            .await
    }
    async fn apply(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        event: &RecordedEvent,
    ) -> Result<(), BoxError> {
        tx.execute(
            "INSERT INTO ledger (position) VALUES ($1)",
            &[&(event.position as i64)],
        )
        .await?;
        self.stop.maybe_stop(event.position);
        Ok(())
    }
    async fn reset(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
    ) -> Result<(), tokio_postgres::Error> {
        tx.execute("DELETE FROM ledger", &[]).await.map(|_| ())
    }
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{sig} {pid}");
}

/// A real-time lease short enough for the test: 1 s, renewed every 100 ms.
fn short_lease() -> LeaseConfig {
    LeaseConfig::new()
        .lease(Duration::from_secs(1))
        .unwrap()
        .heartbeat(Duration::from_millis(100))
        .unwrap()
}

/// The child: runs projection `ledger` until stopped, printing `progress N` after each commit; exits with
/// [`EXIT_FENCED`] when fenced.
#[test]
#[ignore = "child process of the split-brain tests"]
fn fencing_child_runner() {
    let Ok(db) = std::env::var(CHILD_DB) else {
        return;
    };
    let stop_after = std::env::var(CHILD_STOP_AFTER)
        .ok()
        .map(|p| p.parse().unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let result = rt.block_on(async move {
        let stopper = || Stopper {
            after: stop_after,
            stopped: AtomicBool::new(false),
        };
        let scope = ReadScope::Category("acct".into());
        let report = |mut progress: watch::Receiver<Option<u64>>| {
            tokio::spawn(async move {
                while progress.changed().await.is_ok() {
                    if let Some(c) = *progress.borrow_and_update() {
                        println!("progress {c}");
                        std::io::stdout().flush().unwrap();
                    }
                }
            })
        };
        if let Some(path) = db.strip_prefix("sqlite:") {
            let store: Arc<dyn EventStore> = Arc::new(Pausing {
                inner: Arc::new(
                    herald_sqlite::SqliteStore::open(path, herald_sqlite::SqliteConfig::default())
                        .await
                        .unwrap(),
                ),
                stop: stopper(),
            });
            let model = Ledger {
                stop: Stopper::default(),
            };
            let p = SqliteProjection::open("ledger", path, scope, store, model)
                .await
                .unwrap()
                .batch_size(10)
                .unwrap()
                .lease(short_lease());
            report(p.progress());
            p.run(&CancellationToken::new()).await
        } else {
            let schema = db.strip_prefix("postgres:").unwrap();
            let url = herald_store_testkit::postgres::server_url();
            let store: Arc<dyn EventStore> = Arc::new(
                herald_postgres::PostgresStore::open(
                    &url,
                    herald_postgres::PostgresConfig::default().schema(schema),
                )
                .await
                .unwrap(),
            );
            let model = Ledger { stop: stopper() };
            let p = PostgresProjection::open("ledger", &url, schema, scope, store, model)
                .await
                .unwrap()
                .batch_size(10)
                .unwrap()
                .lease(short_lease());
            report(p.progress());
            p.run(&CancellationToken::new()).await
        }
    });
    match result {
        Err(e) if e.is_fenced() => {
            eprintln!("{e}");
            std::process::exit(EXIT_FENCED)
        }
        Err(e) => panic!("{e}"),
        Ok(_) => {}
    }
}

/// A running child and the lines it prints.
struct Runner {
    child: Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Runner {
    fn start(db: &str, stop_after: Option<u64>) -> Runner {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .args([
                "--ignored",
                "--exact",
                "fencing_child_runner",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DB, db)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(p) = stop_after {
            command.env(CHILD_STOP_AFTER, p.to_string());
        }
        let mut child = command.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Runner { child, lines }
    }

    async fn wait_line(&mut self, what: &str, pred: impl Fn(&str) -> bool) {
        within(what, async {
            while let Some(line) = self.lines.recv().await {
                if pred(&line) {
                    return;
                }
            }
            panic!("the child exited before {what}");
        })
        .await
    }

    async fn wait_progress(&mut self, target: u64) {
        self.wait_line(&format!("progress {target}"), |l| {
            l.strip_prefix("progress ")
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| n >= target)
        })
        .await
    }

    /// Waits until the kernel reports the process stopped (state `T` in /proc).
    async fn wait_stopped(&self) {
        let stat = format!("/proc/{}/stat", self.child.id());
        within("the child stops", async {
            loop {
                let text = std::fs::read_to_string(&stat).unwrap();
                // The state follows the command name in parentheses.
                if text
                    .rsplit_once(") ")
                    .is_some_and(|(_, rest)| rest.starts_with('T'))
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
    }

    async fn exit_code(&mut self) -> Option<i32> {
        within("the child exits", async {
            loop {
                if let Some(status) = self.child.try_wait().unwrap() {
                    return status.code();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }
}

/// A failing test must not leave its children running.
impl Drop for Runner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The common script: A projects the first 50 events; 50 more are appended and A stops itself with the
/// next batch in hand (see [`Stopper`]); B takes over once A's lease ended and projects them; A is resumed
/// (SIGCONT): its write must be refused, it must exit fenced, and the ledger must hold each of the 100
/// events once.
async fn split_brain(store: &Arc<dyn EventStore>, db: &str, ledger: impl AsyncFn() -> (i64, i64)) {
    let append = async |stream: &str, n: usize| {
        let events = (0..n)
            .map(|_| herald_core::NewEvent::new("Deposited"))
            .collect();
        store
            .append(
                &herald_core::StreamName::new(stream).unwrap(),
                events,
                herald_core::ExpectedVersion::Any,
            )
            .await
            .unwrap()
            .last_position
    };
    let first = append("acct-1", 50).await;
    let mut a = Runner::start(db, Some(first));
    a.wait_progress(first).await;
    let second = append("acct-2", 50).await;
    a.wait_line("the child stops itself", |l| l == "stopping")
        .await;
    a.wait_stopped().await;
    let mut b = Runner::start(db, None);
    b.wait_progress(second).await;
    assert_eq!(ledger().await, (100, 100), "B counted the rest once");
    signal(a.child.id(), "CONT");
    assert_eq!(
        a.exit_code().await,
        Some(EXIT_FENCED),
        "the resumed runner stops with the fenced error"
    );
    assert_eq!(
        ledger().await,
        (100, 100),
        "100 events, each applied exactly once"
    );
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_split_brain_paused_runner_is_fenced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fence.db");
    let store: Arc<dyn EventStore> = Arc::new(
        herald_sqlite::SqliteStore::open(&path, herald_sqlite::SqliteConfig::default())
            .await
            .unwrap(),
    );
    let db = format!("sqlite:{}", path.display());
    let ledger = async || {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.query_row(
            "SELECT count(*), count(DISTINCT position) FROM ledger",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
    };
    // Paused with its next batch read, before its transaction.
    split_brain(&store, &db, ledger).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_split_brain_paused_runner_is_fenced() {
    let Some(f) = Fixture::postgres("postgres_split_brain_paused_runner_is_fenced").await else {
        return;
    };
    let db = format!("postgres:{}", f.schema().unwrap());
    let url = herald_store_testkit::postgres::server_url();
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let table = format!("{}.ledger", f.schema().unwrap());
    let ledger = async || {
        let row = client
            .query_one(
                &format!("SELECT count(*), count(DISTINCT position) FROM {table}"),
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    // Paused in the middle of its batch's transaction.
    split_brain(&f.store, &db, ledger).await;
}
