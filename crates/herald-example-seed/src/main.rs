//! The seed flow of Herald, end to end, on SQLite.
//!
//! Run it (from the repository root):
//!
//! ```text
//! cargo run -p herald-example-seed                  # writes ./seed.db and ./seed-outbox.log
//! cargo run -p herald-example-seed -- /tmp/demo.db  # or any path
//! ```
//!
//! then inspect the database with the CLI:
//!
//! ```text
//! cargo run -p herald-cli -- --database sqlite://seed.db read --category user
//! cargo run -p herald-cli -- --database sqlite://seed.db streams
//! ```
//!
//! What happens:
//!
//! 1. `RegisterUser` commands go through the command bus (logging, correlation, validation, timing
//!    middleware) to the `User` aggregate, which decides `UserRegistered` (or refuses a duplicate).
//! 2. A durable subscription (the welcome-email handler) sends each new user a "welcome email" — here a line
//!    in `seed-outbox.log` — and checkpoints in the same SQLite file, so a re-run sends no email twice.
//! 3. A projection keeps a `users` table (read model) in the same file, in one transaction with its
//!    checkpoint.
//! 4. An `Order` aggregate shows optimistic concurrency: two clients load the same version, the second save
//!    is refused with a version conflict; concurrent commands succeed through the retrying repository.
//!
//! Run it twice: the second run finds the users already registered, sends no email, and adds a new order.
//!
//! It is written the way an application would be: against the `herald` facade alone (features `sqlite`, `es`,
//! `notify`), reaching SQLite's transaction type through `herald::sqlite::rusqlite`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use herald::es::command::{
    Command, CommandBus, CommandTiming, Correlation, Logging, Timing, Validation, command_fn,
};
use herald::es::sqlite::{
    SqliteCheckpointStore, SqliteProjection, SqliteReadModel, SqliteSnapshotStore,
};
use herald::es::{
    Aggregate, BoxError, BusError, CancellationToken, Codec, CommandMetadata, DecodedEvent,
    EventSet, ExecuteError, Repository, RetryPolicy, SnapshotPolicy, Subscription, typed_handler,
};
use herald::sqlite::rusqlite::{self, Transaction};
use herald::sqlite::{SqliteConfig, SqliteStore};
use herald::{EventStore, EventStoreExt, ReadQuery, ReadScope, RecordedEvent, StreamName};
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

/// The `users` read model.
struct UsersTable;

impl SqliteReadModel for UsersTable {
    fn setup(&self, tx: &Transaction<'_>) -> rusqlite::Result<()> {
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS users (
                 email TEXT PRIMARY KEY, name TEXT NOT NULL, registered_at TEXT NOT NULL)",
        )
    }
    fn apply(&self, tx: &Transaction<'_>, event: &RecordedEvent) -> Result<(), BoxError> {
        let UserEvent::UserRegistered { email, name } =
            UserEvent::decode(&event.event_type, serde_json::from_str(&event.data)?)?;
        let at = herald::timefmt::format_rfc3339_micros(event.recorded_at);
        tx.execute(
            "INSERT OR REPLACE INTO users (email, name, registered_at) VALUES (?1, ?2, ?3)",
            [email, name, at],
        )?;
        Ok(())
    }
    fn reset(&self, tx: &Transaction<'_>) -> rusqlite::Result<()> {
        tx.execute("DELETE FROM users", []).map(|_| ())
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

// ----------------------------------------------------------------------------------------------- main

fn outbox_path(db: &Path) -> PathBuf {
    let stem = db.file_stem().and_then(|s| s.to_str()).unwrap_or("seed");
    db.with_file_name(format!("{stem}-outbox.log"))
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
    let db = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "seed.db".into()));
    let outbox = outbox_path(&db);
    println!("database: {}   outbox: {}", db.display(), outbox.display());

    let store: Arc<dyn EventStore> =
        Arc::new(SqliteStore::open(&db, SqliteConfig::default()).await?);
    let checkpoints = Arc::new(SqliteCheckpointStore::open(&db).await?);
    let snapshots = Arc::new(SqliteSnapshotStore::open(&db).await?);

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

    let users = Repository::<User>::new(store.clone());
    // 8 concurrent writers on one stream need up to 8 rounds: allow more attempts than the default.
    let orders = Repository::<Order>::new(store.clone())
        .with_snapshots(snapshots, SnapshotPolicy::every(5))
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

    // Background: welcome emails (durable subscription) and the users read model (projection).
    let cancel = CancellationToken::new();
    let mailer = Arc::new(
        Subscription::category("welcome-email", "user", store.clone(), checkpoints.clone())?
            .types(["UserRegistered"])?,
    );
    let mailer_task = tokio::spawn({
        let (mailer, cancel, outbox) = (mailer.clone(), cancel.clone(), outbox.clone());
        async move {
            // Typed: each event is decoded (and upcast, were there old versions) into `UserEvent`.
            let send = typed_handler(
                Codec::<UserEvent>::default(),
                move |e: DecodedEvent<UserEvent>| {
                    let outbox = outbox.clone();
                    async move {
                        let UserEvent::UserRegistered { email, name } = e.event;
                        let mut file = std::fs::OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(&outbox)?;
                        writeln!(
                            file,
                            "To: {name} <{email}>  Subject: Welcome to Herald!  (event {})",
                            e.id
                        )?;
                        println!("  [email] welcome email sent to {email}");
                        Ok::<(), BoxError>(())
                    }
                },
            );
            mailer.run(&send, &cancel).await
        }
    });
    let projection = Arc::new(
        SqliteProjection::open(
            "users",
            &db,
            ReadScope::Category("user".into()),
            store.clone(),
            UsersTable,
        )
        .await?,
    );
    let projection_task = tokio::spawn({
        let (p, c) = (projection.clone(), cancel.clone());
        async move { p.run(&c).await }
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

    // Wait (on the subscriptions' progress, not on a timer) until both have handled every user event.
    let target = last_position(&*store, "user").await;
    if target > 0 {
        mailer
            .progress()
            .wait_for(|p| p.is_some_and(|p| p >= target))
            .await?;
        projection
            .progress()
            .wait_for(|p| p.is_some_and(|p| p >= target))
            .await?;
    }
    println!(
        "\n2. users read model (table `users`, projected in the same transaction as its checkpoint)"
    );
    let rows = projection
        .query(|c| {
            let mut stmt =
                c.prepare("SELECT email, name, registered_at FROM users ORDER BY email")?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })
        .await?;
    for (email, name, at) in rows {
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

    cancel.cancel();
    mailer_task.await??;
    projection_task.await??;

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
    let events = store.read_to_vec(ReadQuery::stream(first_user)).await?;
    if let Some(e) = events.first() {
        println!("   metadata of UserRegistered(ada): {}", e.metadata);
    }
    let url = format!("sqlite://{}", db.display());
    println!("\ninspect it with the CLI:");
    println!("  cargo run -p herald-cli -- --database {url} read --category user");
    println!("  cargo run -p herald-cli -- --database {url} read order-{order_id}");
    println!("  cargo run -p herald-cli -- --database {url} streams");
    println!("  cat {}", outbox.display());
    Ok(())
}
