#![allow(dead_code, unreachable_pub, missing_docs)]

//! Shared by the integration tests: one fixture per backend (an in-memory store, an SQLite file in a
//! temporary directory, or a fresh PostgreSQL schema dropped afterwards), each with its event store and its
//! job queue on the same database; `all_backends!` runs a test body on each, `database_backends!` on SQLite
//! and PostgreSQL only (for what needs a second process or a file). When PostgreSQL is unreachable its tests
//! fail if `CI` is set and skip with a printed reason otherwise.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use herald_core::{EventStore, JobRouter};
use herald_jobs::{JobStore, JobsConfig, ManualClock};
use herald_memory::InMemoryStore;
use herald_postgres::{PostgresConfig, PostgresJobQueue, PostgresStore};
use herald_sqlite::{Durability, SqliteConfig, SqliteJobQueue, SqliteStore};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Memory,
    Sqlite,
    Postgres,
}

pub struct Fixture {
    pub kind: Kind,
    pub dir: tempfile::TempDir,
    /// The event store on the same database as `jobs` (with the router given to `fixture_with`).
    pub store: Arc<dyn EventStore>,
    /// `store` itself when it is SQLite's (for what only SQLite has: `append_with`).
    pub sqlite: Option<Arc<SqliteStore>>,
    /// `store` itself when it is PostgreSQL's.
    pub postgres: Option<Arc<PostgresStore>>,
    pub jobs: JobStore,
    pub clock: ManualClock,
    /// The database URL (`memory://`, `sqlite://…` or `postgres://…?schema=…`).
    pub url: String,
    pub schema: Option<TestSchema>,
    memory: Option<InMemoryStore>,
}

impl Fixture {
    /// Another job-queue handle on the same database (another process, for SQLite and PostgreSQL).
    pub async fn reopen(&self, config: JobsConfig) -> JobStore {
        match &self.memory {
            Some(store) => JobStore::from(store.job_queue(config)),
            None => open_url(&self.url, config).await.unwrap(),
        }
    }

    /// A new fixture of the same backend (a new database).
    pub async fn again(&self) -> Fixture {
        fixture(self.kind, "again").await.expect("available before")
    }
}

pub fn config(clock: &ManualClock) -> JobsConfig {
    JobsConfig::default().clock(clock.clone()).full_sync(false)
}

pub use herald_store_testkit::postgres::{TestSchema, available as postgres_available};

/// Opens the job queue a `sqlite://PATH` or `postgres://…` URL names (what a worker process does).
pub async fn open_url(url: &str, config: JobsConfig) -> herald_jobs::Result<JobStore> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        return Ok(JobStore::from(SqliteJobQueue::open(path, config).await?));
    }
    Ok(JobStore::from(PostgresJobQueue::open(url, config).await?))
}

/// A URL (for `kind`) naming a fresh database: a file in `dir`, or a new schema.
pub fn fresh_url(kind: Kind, dir: &std::path::Path) -> (String, Option<TestSchema>) {
    match kind {
        Kind::Memory => ("memory://".to_owned(), None),
        Kind::Sqlite => (
            format!("sqlite://{}", dir.join("herald.db").display()),
            None,
        ),
        Kind::Postgres => {
            let schema = TestSchema::new("hj");
            (schema.url(), Some(schema))
        }
    }
}

/// A fresh store and job queue of `kind` on a manual clock; `None` when PostgreSQL is unreachable outside CI.
pub async fn fixture(kind: Kind, test: &str) -> Option<Fixture> {
    fixture_with(kind, test, config, |_| None).await
}

/// [`fixture`] with the job queue opened with `config(clock)`, and whose event store writes the jobs of the
/// router `router(&that config)` returns (if any) in every append's transaction (`AsyncHandlers::new(config)`
/// stamps its jobs with the queue's clock).
pub async fn fixture_with(
    kind: Kind,
    test: &str,
    config: impl FnOnce(&ManualClock) -> JobsConfig,
    router: impl FnOnce(&JobsConfig) -> Option<Arc<dyn JobRouter>>,
) -> Option<Fixture> {
    if kind == Kind::Postgres && !postgres_available(test).await {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at_micros(1_700_000_000_000_000);
    let config = config(&clock);
    let router = router(&config);
    let (url, schema) = fresh_url(kind, dir.path());
    let (mut sqlite, mut postgres) = (None, None);
    let (store, jobs, memory): (Arc<dyn EventStore>, JobStore, _) = match kind {
        Kind::Memory => {
            let store = match router {
                Some(router) => InMemoryStore::with_job_router(router),
                None => InMemoryStore::new(),
            };
            let jobs = JobStore::from(store.job_queue(config));
            (Arc::new(store.clone()), jobs, Some(store))
        }
        Kind::Sqlite => {
            let mut store_config = SqliteConfig::default().durability(Durability::Normal);
            if let Some(router) = router {
                store_config = store_config.with_job_router(router);
            }
            let store = SqliteStore::open(dir.path().join("herald.db"), store_config)
                .await
                .unwrap();
            let jobs = JobStore::from(store.job_queue(config).await.unwrap());
            let store = Arc::new(store);
            sqlite = Some(Arc::clone(&store));
            (store, jobs, None)
        }
        Kind::Postgres => {
            let schema_name = schema.as_ref().map(|s| s.name().to_owned()).unwrap();
            let mut store_config = PostgresConfig::default().schema(schema_name);
            if let Some(router) = router {
                store_config = store_config.with_job_router(router);
            }
            let store =
                PostgresStore::open(&herald_store_testkit::postgres::server_url(), store_config)
                    .await
                    .unwrap();
            let jobs = JobStore::from(store.job_queue(config).await.unwrap());
            let store = Arc::new(store);
            postgres = Some(Arc::clone(&store));
            (store, jobs, None)
        }
    };
    Some(Fixture {
        kind,
        dir,
        store,
        sqlite,
        postgres,
        jobs,
        clock,
        url,
        schema,
        memory,
    })
}

/// Runs each named `async fn(Fixture)` once per backend: `memory::NAME`, `sqlite::NAME` and `postgres::NAME`.
#[macro_export]
macro_rules! all_backends {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $name() {
                    let f = $crate::common::fixture($crate::common::Kind::Memory, stringify!($name))
                        .await
                        .unwrap();
                    super::$name(f).await;
                }
            )*
        }
        $crate::database_backends!($($name),*);
    };
}

/// Runs each named `async fn(Fixture)` on the database backends: `sqlite::NAME` and `postgres::NAME`.
#[macro_export]
macro_rules! database_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let f = $crate::common::fixture($crate::common::Kind::Sqlite, stringify!($name))
                        .await
                        .unwrap();
                    super::$name(f).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    if let Some(f) =
                        $crate::common::fixture($crate::common::Kind::Postgres, stringify!($name)).await
                    {
                        super::$name(f).await;
                    }
                }
            )*
        }
    };
}

/// Waits (polling, bounded) until `check` holds: waiting for a condition, never a fixed sleep.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
