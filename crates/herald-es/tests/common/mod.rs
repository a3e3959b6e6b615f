//! Shared test domain (an order aggregate) and fixtures for both backends.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::path::PathBuf;
use std::sync::Arc;

use herald_core::{EventStore, ExpectedVersion, NewEvent, StreamName};
use herald_es::sqlite::{SqliteCheckpointStore, SqliteSnapshotStore};
use herald_es::{
    Aggregate, CheckpointStore, EventSet, EventStoreSnapshotStore, InMemoryCheckpointStore,
    InMemorySnapshotStore, MembershipStore, Snapshot, SnapshotStore,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum OrderEvent {
    OrderPlaced { customer: String },
    ItemAdded { sku: String, qty: u32 },
    OrderPaid { cents: u64 },
    OrderCancelled,
}

impl EventSet for OrderEvent {
    fn schema_version(event_type: &str) -> u32 {
        match event_type {
            // v1 {"product"}, v2 {"sku"}, v3 {"sku","qty"}
            "ItemAdded" => 3,
            _ => 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum OrderCommand {
    Place { customer: String },
    AddItem { sku: String, qty: u32 },
    Pay { cents: u64 },
    Cancel,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OrderError {
    #[error("order already placed")]
    AlreadyPlaced,
    #[error("order not placed")]
    NotPlaced,
    #[error("order is closed")]
    Closed,
    #[error("quantity must be positive")]
    ZeroQuantity,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Order {
    pub placed: bool,
    pub closed: bool,
    pub customer: String,
    pub items: u64,
    pub paid: u64,
}

impl Aggregate for Order {
    const CATEGORY: &'static str = "order";
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Error = OrderError;

    fn decide(&self, command: &OrderCommand) -> Result<Vec<OrderEvent>, OrderError> {
        match command {
            OrderCommand::Place { customer } => {
                if self.placed {
                    return Err(OrderError::AlreadyPlaced);
                }
                Ok(vec![OrderEvent::OrderPlaced {
                    customer: customer.clone(),
                }])
            }
            OrderCommand::AddItem { sku, qty } => {
                if !self.placed {
                    return Err(OrderError::NotPlaced);
                }
                if self.closed {
                    return Err(OrderError::Closed);
                }
                if *qty == 0 {
                    return Err(OrderError::ZeroQuantity);
                }
                Ok(vec![OrderEvent::ItemAdded {
                    sku: sku.clone(),
                    qty: *qty,
                }])
            }
            OrderCommand::Pay { cents } => {
                if !self.placed {
                    return Err(OrderError::NotPlaced);
                }
                if self.closed {
                    return Err(OrderError::Closed);
                }
                Ok(vec![OrderEvent::OrderPaid { cents: *cents }])
            }
            OrderCommand::Cancel => {
                if self.closed {
                    return Err(OrderError::Closed);
                }
                Ok(vec![OrderEvent::OrderCancelled])
            }
        }
    }

    fn apply(&mut self, event: &OrderEvent) {
        match event {
            OrderEvent::OrderPlaced { customer } => {
                self.placed = true;
                self.customer = customer.clone();
            }
            OrderEvent::ItemAdded { qty, .. } => self.items += u64::from(*qty),
            OrderEvent::OrderPaid { cents } => {
                self.paid += cents;
                self.closed = true;
            }
            OrderEvent::OrderCancelled => self.closed = true,
        }
    }
}

/// A store plus the checkpoint and snapshot stores that go with its backend.
pub struct Fixture {
    pub store: Arc<dyn EventStore>,
    pub path: Option<PathBuf>,
    pub backend: &'static str,
    memory_snapshots: Option<Arc<InMemorySnapshotStore>>,
    sqlite_snapshots: Option<SqliteSnapshotStore>,
    store_snapshots: Option<Arc<EventStoreSnapshotStore>>,
    pub checkpoints: Arc<dyn CheckpointStore>,
    /// Dynamic consumer group membership, in the same database as `checkpoints` (the same object).
    pub memberships: Arc<dyn MembershipStore>,
    /// The job queue in the store's database (jobs enqueued in appends' transactions land here).
    pub jobs: Arc<dyn herald_core::JobQueue>,
    /// Drops the PostgreSQL test schema last, after the store.
    _schema: Option<herald_store_testkit::postgres::TestSchema>,
}

impl Fixture {
    pub async fn memory() -> Self {
        let checkpoints = Arc::new(InMemoryCheckpointStore::new());
        let store = herald_memory::InMemoryStore::new();
        Fixture {
            jobs: Arc::new(store.job_queue(herald_core::JobsConfig::default())),
            store: Arc::new(store),
            path: None,
            backend: "memory",
            memory_snapshots: Some(Arc::new(InMemorySnapshotStore::new())),
            sqlite_snapshots: None,
            store_snapshots: None,
            checkpoints: checkpoints.clone(),
            memberships: checkpoints,
            _schema: None,
        }
    }

    /// The PostgreSQL backend in a fresh schema (`HERALD_TEST_POSTGRES_URL`, default the local `test`
    /// database), with snapshots in the event store ([`EventStoreSnapshotStore`]) and checkpoints and group
    /// membership in the same schema ([`herald_es::postgres::PostgresCheckpointStore`]). `None` (skip,
    /// printed) when the server is unreachable, unless `CI` is set.
    pub async fn postgres(test: &str) -> Option<Self> {
        if !herald_store_testkit::postgres::available(test).await {
            return None;
        }
        let url = herald_store_testkit::postgres::server_url();
        let schema = herald_store_testkit::postgres::TestSchema::new("herald_es_test");
        let config = herald_postgres::PostgresConfig::default().schema(schema.name());
        let store = herald_postgres::PostgresStore::open(&url, config)
            .await
            .unwrap();
        let jobs: Arc<dyn herald_core::JobQueue> = Arc::new(
            store
                .job_queue(herald_core::JobsConfig::default())
                .await
                .unwrap(),
        );
        let store: Arc<dyn EventStore> = Arc::new(store);
        let checkpoints = Arc::new(
            herald_es::postgres::PostgresCheckpointStore::connect(&url, schema.name())
                .await
                .unwrap(),
        );
        Some(Fixture {
            jobs,
            store_snapshots: Some(Arc::new(EventStoreSnapshotStore::new(store.clone()))),
            store,
            path: None,
            backend: "postgres",
            memory_snapshots: None,
            sqlite_snapshots: None,
            checkpoints: checkpoints.clone(),
            memberships: checkpoints,
            _schema: Some(schema),
        })
    }

    pub async fn sqlite() -> Self {
        let store = herald_sqlite::SqliteStore::open_temporary().await.unwrap();
        let path = store.path().to_path_buf();
        let checkpoints = Arc::new(SqliteCheckpointStore::open(&path).await.unwrap());
        let jobs = Arc::new(
            store
                .job_queue(herald_core::JobsConfig::default())
                .await
                .unwrap(),
        );
        Fixture {
            jobs,
            store: Arc::new(store),
            sqlite_snapshots: Some(SqliteSnapshotStore::open(&path).await.unwrap()),
            checkpoints: checkpoints.clone(),
            memberships: checkpoints,
            path: Some(path),
            backend: "sqlite",
            memory_snapshots: None,
            store_snapshots: None,
            _schema: None,
        }
    }

    /// The PostgreSQL test schema (`None` on the other backends).
    pub fn schema(&self) -> Option<&str> {
        self._schema.as_ref().map(|s| s.name())
    }

    pub fn snapshots(&self) -> Arc<dyn SnapshotStore> {
        match (
            &self.memory_snapshots,
            &self.sqlite_snapshots,
            &self.store_snapshots,
        ) {
            (Some(m), _, _) => m.clone(),
            (_, Some(s), _) => Arc::new(s.clone()),
            (_, _, Some(s)) => s.clone(),
            _ => unreachable!(),
        }
    }

    /// Plants a snapshot unconditionally. `false` when the backend cannot even hold it (a snapshot kept in the
    /// event store must be JSON: the store refuses corrupt text, which is one corruption less to survive).
    pub async fn plant_snapshot(&self, snapshot: Snapshot) -> bool {
        match (
            &self.memory_snapshots,
            &self.sqlite_snapshots,
            &self.store_snapshots,
        ) {
            (Some(m), _, _) => m.put(snapshot),
            (_, Some(s), _) => s.put(snapshot).await.unwrap(),
            (_, _, Some(s)) => {
                if let Err(e) = s.put(&snapshot).await {
                    assert!(e.to_string().contains("not valid JSON"), "{e}");
                    return false;
                }
            }
            _ => unreachable!(),
        }
        true
    }

    /// Appends `n` raw events to `stream`, returns the last position.
    pub async fn append_raw(&self, stream: &str, n: usize, event_type: &str) -> u64 {
        let events = (0..n)
            .map(|i| NewEvent::new(event_type).with_data(format!(r#"{{"i":{i}}}"#)))
            .collect();
        self.store
            .append(
                &StreamName::new(stream).unwrap(),
                events,
                ExpectedVersion::Any,
            )
            .await
            .unwrap()
            .last_position
    }
}

/// Expands test functions `async fn name(f: Fixture)` into one `#[tokio::test]` per backend (in-memory,
/// SQLite, PostgreSQL).
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Fixture::memory().await).await
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Fixture::sqlite().await).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(f) = $crate::common::Fixture::postgres(stringify!($name)).await {
                        super::$name(f).await
                    }
                }
            )*
        }
    };
}
