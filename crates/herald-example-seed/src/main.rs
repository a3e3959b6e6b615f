// One file on purpose: an example reads top to bottom as one story (command, event, job, read model).
//! The seed flow of Herald, end to end, on any database: the database URL is the only input, and the same code
//! runs on `memory://`, `sqlite://` and `postgres://`.
//!
//! Run it (from the repository root):
//!
//! ```text
//! cargo run -p herald-example-seed                              # sqlite://seed.db: ./seed.db, ./seed-outbox.log
//! cargo run -p herald-example-seed -- sqlite:///tmp/demo.db     # outbox /tmp/demo-outbox.log
//! cargo run -p herald-example-seed -- memory://                 # gone at exit; outbox ./seed-memory-outbox.log
//! cargo run -p herald-example-seed -- 'postgres://root@127.0.0.1:5432/test?schema=seed'
//!                                                               # schema `seed`; outbox ./seed-postgres-outbox.log
//! cargo run -p herald-example-seed -- URL OUTBOX                # any URL, the outbox file named
//! ```
//!
//! Arguments: `[URL] [OUTBOX]`. The URL defaults to `sqlite://seed.db`. The outbox is the file the "welcome
//! emails" go to, one line each: `OUTBOX` when given, else beside a `sqlite://PATH` file (`PATH`'s stem +
//! `-outbox.log`), else `seed-SCHEME-outbox.log` in the working directory (shared by every PostgreSQL schema
//! you run it on: lines are keyed by event id, so that only mixes them).
//!
//! Then inspect the database with the CLI (any URL but `memory://`):
//!
//! ```text
//! cargo run -p herald-cli -- --database sqlite://seed.db read --category user
//! cargo run -p herald-cli -- --database sqlite://seed.db streams
//! cargo run -p herald-cli -- --database sqlite://seed.db jobs stats
//! ```
//!
//! What happens — everything through `herald::open_with(url, …)`, which opens the event store, its job queue,
//! the async handlers' routes and the checkpoints in that one database:
//!
//! 1. `RegisterUser` commands go through the command bus (correlation, logging, timing, validation
//!    middleware) to the `User` aggregate, which decides `UserRegistered` (or refuses a duplicate).
//! 2. The welcome email is an async event handler: the route `send_welcome` on `UserRegistered` makes the store
//!    write one job (queue `mailers`) in the append's own transaction — no user without their email job, no job
//!    for a refused command. A [`WorkerPool`] runs the jobs and appends a line to the outbox. Delivery is at
//!    least once (a job whose worker died runs again after its lease), so the handler looks the event id up in
//!    the outbox first: a redelivery or a re-run never sends an email twice. On SQLite and PostgreSQL the jobs
//!    outlive the process: a job left by an interrupted run is sent by the next. The program waits (30 s at
//!    most) until `mailers` has no job available, scheduled or running, then shuts the pool down.
//! 3. The `users` read model is a [`Projector`] over the `user` category, checkpointed in `herald.checkpoints`.
//!    It lives in memory, so it is rebuilt at each start ([`Projector::rebuild`]: empty it, delete the
//!    checkpoint, replay the category). A durable read model in the application's own tables, written in one
//!    transaction with its checkpoint (exactly once), is what `herald::es::sqlite::SqliteProjection` and
//!    `herald::es::postgres::PostgresProjection` are for — backend-specific, because the tables are.
//! 4. An `Order` aggregate shows optimistic concurrency: two clients load the same version, the second save is
//!    refused with a version conflict; concurrent commands succeed through the retrying repository; a command
//!    delivered twice is executed once. Its snapshots (every 5 versions) are kept in the event store itself
//!    ([`EventStoreSnapshotStore`]: streams `snapshot-order-…`), which works on every backend.
//! 5. Every command's duration comes back through the instrumentation API (`herald::notify`).
//!
//! Run it twice on one SQLite file or PostgreSQL schema: the second run finds the users already registered,
//! sends no email, and adds a new order. On `memory://` every run starts empty.
//!
//! It is written the way an application would be: against the `herald` facade alone (features `sqlite`,
//! `postgres`, `es`, `jobs`, `notify`), with no backend named in the code.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald::es::command::{
    Command, CommandBus, CommandTiming, Correlation, Logging, Timing, Validation, command_fn,
};
use herald::es::{
    Aggregate, BoxError, BusError, CancellationToken, Codec, CommandMetadata, EventSet,
    EventStoreSnapshotStore, ExecuteError, Projector, ReadModel, Repository, RetryPolicy,
    SnapshotPolicy, Subscription,
};
use herald::jobs::{JobContext, JobResult, JobStore, Route, WorkerPool};
use herald::{
    EventStore, EventStoreExt, JobsConfig, OpenOptions, ReadQuery, RecordedEvent, StreamName,
};
use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------------------------------------- users

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
enum UserEvent {
    UserRegistered { email: String, name: String },
}
impl EventSet for UserEvent {}

#[derive(Debug, Clone, Default)]
struct User {
    registered: bool,
}

#[derive(Debug, thiserror::Error)]
enum UserError {
    #[error("this email is already registered")]
    AlreadyRegistered,
}

impl Aggregate for User {
    const CATEGORY: &'static str = "user";
    type Command = RegisterUser;
    type Event = UserEvent;
    type Error = UserError;

    fn decide(&self, c: &RegisterUser) -> Result<Vec<UserEvent>, UserError> {
        if self.registered {
            return Err(UserError::AlreadyRegistered);
        }
        Ok(vec![UserEvent::UserRegistered {
            email: c.email.clone(),
            name: c.name.clone(),
        }])
    }
    fn apply(&mut self, event: &UserEvent) {
        match event {
            UserEvent::UserRegistered { .. } => self.registered = true,
        }
    }
}

#[derive(Debug, Clone)]
struct RegisterUser {
    email: String,
    name: String,
}

impl Command for RegisterUser {
    const NAME: &'static str = "RegisterUser";
    type Output = u64;
    type Error = ExecuteError<UserError>;
    fn validate(&self) -> Result<(), String> {
        if !self.email.contains('@') {
            return Err(format!("`{}` is not an email address", self.email));
        }
        if self.name.trim().is_empty() {
            return Err("name is empty".into());
        }
        Ok(())
    }
}

// --------------------------------------------------------------------------------------------- orders

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
enum OrderEvent {
    OrderPlaced { customer: String },
    ItemAdded { sku: String, qty: u32 },
    OrderPaid { cents: u64 },
}
impl EventSet for OrderEvent {}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Order {
    placed: bool,
    paid: bool,
    items: u32,
}

#[derive(Debug, thiserror::Error)]
enum OrderError {
    #[error("order not placed")]
    NotPlaced,
    #[error("order already placed")]
    AlreadyPlaced,
    #[error("order already paid")]
    Paid,
}

#[derive(Debug, Clone)]
enum OrderCommand {
    Place { customer: String },
    AddItem { sku: String, qty: u32 },
    Pay { cents: u64 },
}

impl Aggregate for Order {
    const CATEGORY: &'static str = "order";
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Error = OrderError;

    fn decide(&self, c: &OrderCommand) -> Result<Vec<OrderEvent>, OrderError> {
        match c {
            OrderCommand::Place { .. } if self.placed => Err(OrderError::AlreadyPlaced),
            OrderCommand::Place { customer } => Ok(vec![OrderEvent::OrderPlaced {
                customer: customer.clone(),
            }]),
            _ if !self.placed => Err(OrderError::NotPlaced),
            _ if self.paid => Err(OrderError::Paid),
            OrderCommand::AddItem { sku, qty } => Ok(vec![OrderEvent::ItemAdded {
                sku: sku.clone(),
                qty: *qty,
            }]),
            OrderCommand::Pay { cents } => Ok(vec![OrderEvent::OrderPaid { cents: *cents }]),
        }
    }
    fn apply(&mut self, e: &OrderEvent) {
        match e {
            OrderEvent::OrderPlaced { .. } => self.placed = true,
            OrderEvent::ItemAdded { qty, .. } => self.items += qty,
            OrderEvent::OrderPaid { .. } => self.paid = true,
        }
    }
}

/// One bus command for every order command: `(order id, command)`; returns the attempts used and whether
/// it was a duplicate delivery.
struct OrderCmd(String, OrderCommand);

impl Command for OrderCmd {
    const NAME: &'static str = "Order";
    type Output = (u32, bool);
    type Error = ExecuteError<OrderError>;
}

// ----------------------------------------------------------------------------------- welcome emails

/// The async event handler's name (the kind of its jobs) and its queue.
const SEND_WELCOME: &str = "send_welcome";
const MAILERS: &str = "mailers";

/// The "mail server": a file with one line per email, ending with `(event ID)` — the key that makes sending
/// idempotent.
struct Outbox {
    path: PathBuf,
    /// Look-up and append are one step for the workers of this process.
    lock: Mutex<()>,
}

impl Outbox {
    fn key(event_id: herald::uuid::Uuid) -> String {
        format!("(event {event_id})")
    }

    /// Appends `line` for `event_id` unless a line for that event is already there; `false` when it was.
    fn send_once(&self, event_id: herald::uuid::Uuid, line: &str) -> std::io::Result<bool> {
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let key = Self::key(event_id);
        let sent = match std::fs::read_to_string(&self.path) {
            Ok(text) => text.lines().any(|l| l.ends_with(&key)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(e),
        };
        if sent {
            return Ok(false);
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        writeln!(file, "{line}  {key}")?;
        file.sync_data()?;
        Ok(true)
    }
}

/// The `send_welcome` handler: runs once per `UserRegistered` (at least once; idempotent by event id).
async fn send_welcome(outbox: &Outbox, event: RecordedEvent, ctx: JobContext) -> JobResult {
    // Typed: the event is decoded (and upcast, were there old versions) into `UserEvent`.
    let UserEvent::UserRegistered { email, name } =
        match Codec::<UserEvent>::default().decode_event(&event) {
            Ok(e) => e,
            Err(e) => return JobResult::fail(e),
        };
    let line = format!("To: {name} <{email}>  Subject: Welcome to Herald!");
    match outbox.send_once(event.id, &line) {
        Ok(true) => {
            println!(
                "  [email] welcome email sent to {email} (job {}, attempt {})",
                ctx.id, ctx.attempt
            );
            JobResult::Success
        }
        Ok(false) => {
            println!(
                "  [mailer] {email}: already in the outbox for event {}, not sent again",
                event.id
            );
            JobResult::Success
        }
        // Retried with backoff, then the dead set (`herald jobs dead`).
        Err(e) => JobResult::fail(format!("writing to the outbox: {e}")),
    }
}

/// Waits until `queue` has no job available, scheduled or running, for at most `within`; returns the jobs left.
async fn drain(jobs: &JobStore, queue: &str, within: Duration) -> herald::Result<u64> {
    let deadline = Instant::now() + within;
    loop {
        let left: u64 = jobs
            .stats()
            .await?
            .queues
            .iter()
            .filter(|q| q.queue == queue)
            .map(|q| q.available + q.scheduled + q.running)
            .sum();
        if left == 0 || Instant::now() >= deadline {
            return Ok(left);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ------------------------------------------------------------------------------------ users read model

/// The `users` read model: email → (name, registered at), in memory.
#[derive(Default)]
struct Users {
    rows: Mutex<BTreeMap<String, (String, String)>>,
}

#[async_trait::async_trait]
impl ReadModel for Users {
    async fn apply(&self, event: &RecordedEvent) -> Result<(), BoxError> {
        let UserEvent::UserRegistered { email, name } =
            Codec::<UserEvent>::default().decode_event(event)?;
        let at = herald::timefmt::format_rfc3339_micros(event.recorded_at);
        // Keyed by email: applying an event again (at-least-once delivery) changes nothing.
        self.rows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(email, (name, at));
        Ok(())
    }
    async fn reset(&self) -> Result<(), BoxError> {
        self.rows.lock().unwrap_or_else(|e| e.into_inner()).clear();
        Ok(())
    }
}

// ----------------------------------------------------------------------------------------------- main

/// The outbox file: the one given, else beside a SQLite file, else in the working directory.
fn outbox_path(url: &str, given: Option<String>) -> PathBuf {
    if let Some(path) = given {
        return PathBuf::from(path);
    }
    match url.strip_prefix("sqlite://") {
        Some(rest) => {
            let db = Path::new(rest.split('?').next().unwrap_or(rest));
            let stem = db.file_stem().and_then(|s| s.to_str()).unwrap_or("seed");
            db.with_file_name(format!("{stem}-outbox.log"))
        }
        None => {
            let scheme = url.split("://").next().unwrap_or("db");
            PathBuf::from(format!("seed-{scheme}-outbox.log"))
        }
    }
}

/// The URL with any password replaced by `***`, for printing.
fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    match rest[..authority_end].rsplit_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}{}", &rest[authority_end..])
        }
        _ => url.to_owned(),
    }
}

async fn last_position(store: &dyn EventStore, category: &str) -> u64 {
    store
        .read_to_vec(ReadQuery::category(category).backward().limit(1))
        .await
        .ok()
        .and_then(|v| v.first().map(|e| e.position))
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(|| "sqlite://seed.db".into());
    let outbox = Arc::new(Outbox {
        path: outbox_path(&url, args.next()),
        lock: Mutex::new(()),
    });
    let shown = redacted(&url);
    println!("database: {shown}   outbox: {}", outbox.path.display());

    // Everything in one database: the event store, its job queue, the async handlers' routes, checkpoints.
    // A worker that dies mid-job loses it to the next worker (or run) after 10 s.
    let herald = herald::open_with(
        &url,
        OpenOptions {
            jobs: JobsConfig::default().lease(Duration::from_secs(10)),
        },
    )
    .await?;
    // From now on every append of `UserRegistered` writes a `send_welcome` job in its own transaction.
    herald
        .handlers
        .route(Route::new(SEND_WELCOME, &["UserRegistered"]).queue(MAILERS));

    // Command timings through the instrumentation API.
    let timings: Arc<Mutex<Vec<CommandTiming>>> = Arc::default();
    let _timing = herald::notify::Notifier::global()
        .subscribe(herald::notify::Pattern::exact(Timing::EVENT), {
            let timings = timings.clone();
            move |e| {
                if let Some(t) = e.payload_as::<CommandTiming>() {
                    timings
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(t.clone());
                }
            }
        })
        .guard();

    let users = Repository::<User>::new(herald.store.clone());
    // 8 concurrent writers on one stream need up to 8 rounds: allow more attempts than the default.
    let orders = Repository::<Order>::new(herald.store.clone())
        .with_snapshots(
            Arc::new(EventStoreSnapshotStore::new(herald.store.clone())),
            SnapshotPolicy::every(5),
        )
        .with_retry(RetryPolicy {
            max_attempts: 30,
            ..RetryPolicy::default()
        })
        // A command delivered twice (same command id) is executed once.
        .idempotent(true);
    let bus = CommandBus::builder()
        // Correlation first, so logs and timings see the inherited correlation id.
        .middleware(Correlation)
        .middleware(Logging)
        .middleware(Timing::default())
        .middleware(Validation)
        .handler(command_fn({
            let users = users.clone();
            move |c: RegisterUser, meta: CommandMetadata| {
                let users = users.clone();
                async move {
                    let saved = users.execute(&c.email.to_lowercase(), &c, &meta).await?;
                    Ok(saved.append.map_or(0, |a| a.last_position))
                }
            }
        }))
        .handler(command_fn({
            let orders = orders.clone();
            move |OrderCmd(id, c): OrderCmd, meta: CommandMetadata| {
                let orders = orders.clone();
                async move {
                    let saved = orders.execute(&id, &c, &meta).await?;
                    Ok((saved.attempts, saved.duplicate))
                }
            }
        }))
        .build();

    // Background: the welcome emails (worker pool) and the users read model (projector).
    let cancel = CancellationToken::new();
    let pool = WorkerPool::builder(herald.jobs.clone())
        .queue(MAILERS, 2)
        // Async handlers load their event from the store; its commits wake the pool.
        .events(herald.store.clone())
        .handle_events(SEND_WELCOME, {
            let outbox = outbox.clone();
            move |event, ctx| {
                let outbox = outbox.clone();
                async move { send_welcome(&outbox, event, ctx).await }
            }
        })
        .start(cancel.clone());
    let projector = Arc::new(Projector::new(
        Subscription::category(
            "users-in-memory",
            "user",
            herald.store.clone(),
            herald.checkpoints.clone(),
        )?,
        Arc::new(Users::default()),
    ));
    let projector_task = tokio::spawn({
        let (p, c) = (projector.clone(), cancel.clone());
        async move { p.rebuild(&c).await }
    });

    println!("\n1. registering users through the command bus");
    let registrations = [
        ("ada@example.com", "Ada Lovelace"),
        ("grace@example.com", "Grace Hopper"),
        ("ada@example.com", "Ada again"),
        ("not-an-email", "Nobody"),
    ];
    for (email, name) in registrations {
        let cmd = RegisterUser {
            email: email.into(),
            name: name.into(),
        };
        match bus
            .dispatch(cmd, CommandMetadata::new().with("source", "seed-example"))
            .await
        {
            Ok(position) => {
                println!("  RegisterUser {email}: UserRegistered at global position {position}")
            }
            Err(BusError::Rejected(ExecuteError::Rejected(e))) => {
                println!("  RegisterUser {email}: rejected: {e}")
            }
            Err(BusError::Invalid { message, .. }) => {
                println!("  RegisterUser {email}: invalid: {message}")
            }
            Err(e) => return Err(e.into()),
        }
    }

    // The jobs were committed with the events: wait until the workers have done them (bounded), and until the
    // read model has every user event (on the projector's progress, not on a timer).
    let left = drain(&herald.jobs, MAILERS, Duration::from_secs(30)).await?;
    if left > 0 {
        println!(
            "  {left} welcome-email jobs still pending after 30 s: they stay queued (`herald jobs list`), a later run sends them"
        );
    }
    let target = last_position(&*herald.store, "user").await;
    if target > 0 {
        projector
            .subscription()
            .progress()
            .wait_for(|p| p.is_some_and(|p| p >= target))
            .await?;
    }
    println!(
        "\n2. users read model (in memory, rebuilt from the `user` category at start; checkpoint in the database)"
    );
    let rows = projector
        .model()
        .rows
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    for (email, (name, at)) in rows {
        println!("  {email:<20} {name:<15} {at}");
    }

    println!("\n3. optimistic concurrency on an order aggregate");
    let order_id = format!("{}", herald::uuid::Uuid::now_v7().simple());
    let order_id = &order_id[order_id.len() - 8..];
    bus.dispatch(
        OrderCmd(
            order_id.into(),
            OrderCommand::Place {
                customer: "ada@example.com".into(),
            },
        ),
        CommandMetadata::new(),
    )
    .await?;
    let client_a = orders.load(order_id).await?;
    let client_b = orders.load(order_id).await?;
    println!(
        "  clients A and B both loaded order-{order_id} at version {:?}",
        client_a.version
    );
    orders
        .save(
            &client_a,
            vec![OrderEvent::ItemAdded {
                sku: "book".into(),
                qty: 1,
            }],
            &CommandMetadata::new(),
        )
        .await?;
    println!(
        "  client A saved ItemAdded(book) with expected version {}",
        client_a.expected_version()
    );
    match orders
        .save(
            &client_b,
            vec![OrderEvent::ItemAdded {
                sku: "pen".into(),
                qty: 2,
            }],
            &CommandMetadata::new(),
        )
        .await
    {
        Err(e) if e.is_conflict() => println!("  client B refused: {e}"),
        other => println!("  client B: unexpected {other:?}"),
    }
    let concurrent: Vec<_> = (0..8)
        .map(|i| {
            let bus = bus.clone();
            let id = order_id.to_owned();
            tokio::spawn(async move {
                bus.dispatch(
                    OrderCmd(
                        id,
                        OrderCommand::AddItem {
                            sku: format!("sku-{i}"),
                            qty: 1,
                        },
                    ),
                    CommandMetadata::new(),
                )
                .await
            })
        })
        .collect();
    let mut attempts = 0;
    for task in concurrent {
        attempts += task.await??.0;
    }
    println!(
        "  8 concurrent AddItem commands: all committed using {attempts} attempts (conflicts retried from a fresh load)"
    );
    let pay = CommandMetadata::new();
    bus.dispatch(
        OrderCmd(order_id.into(), OrderCommand::Pay { cents: 4200 }),
        pay.clone(),
    )
    .await?;
    // The client timed out and sends the same command (same command id) again: executed once.
    let (_, duplicate) = bus
        .dispatch(
            OrderCmd(order_id.into(), OrderCommand::Pay { cents: 4200 }),
            pay,
        )
        .await?;
    println!(
        "  PayOrder delivered twice with one command id: second delivery duplicate = {duplicate}, nothing written"
    );
    let loaded = orders.load(order_id).await?;
    println!(
        "  order-{order_id}: {} items, paid: {}, version {:?} (loaded from the snapshot at version {:?}, replayed {} events)",
        loaded.state.items,
        loaded.state.paid,
        loaded.version,
        loaded.snapshot_version,
        loaded.replayed
    );
    match bus
        .dispatch(
            OrderCmd(order_id.into(), OrderCommand::Pay { cents: 1 }),
            CommandMetadata::new(),
        )
        .await
    {
        Err(BusError::Rejected(ExecuteError::Rejected(e))) => {
            println!("  paying twice: rejected: {e}")
        }
        other => println!("  paying twice: unexpected {other:?}"),
    }

    // Shut down: the pool stops claiming and lets running jobs finish; the projector stops after its batch.
    cancel.cancel();
    pool.join().await;
    projector_task.await??;

    let mut d: Vec<_> = timings
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|t| t.duration)
        .collect();
    d.sort();
    if let (Some(min), Some(max)) = (d.first(), d.last()) {
        println!(
            "\n4. {} commands timed through the instrumentation API: fastest {min:?}, median {:?}, slowest {max:?}",
            d.len(),
            d[d.len() / 2]
        );
    }
    let first_user = StreamName::new("user-ada@example.com")?;
    let events = herald
        .store
        .read_to_vec(ReadQuery::stream(first_user))
        .await?;
    if let Some(e) = events.first() {
        println!("   metadata of UserRegistered(ada): {}", e.metadata);
    }
    if url.starts_with("memory://") {
        println!("\nmemory://: the database is gone with the process; the emails are in:");
    } else {
        let db = if shown.contains(['?', '&', ' ']) {
            format!("'{shown}'")
        } else {
            shown
        };
        println!("\ninspect it with the CLI:");
        println!("  cargo run -p herald-cli -- --database {db} read --category user");
        println!("  cargo run -p herald-cli -- --database {db} read order-{order_id}");
        println!("  cargo run -p herald-cli -- --database {db} streams");
        println!("  cargo run -p herald-cli -- --database {db} jobs stats");
    }
    println!("  cat {}", outbox.path.display());
    Ok(())
}
