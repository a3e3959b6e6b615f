#![allow(dead_code, unreachable_pub, missing_docs)]

//! Shared by the integration tests: one fixture per backend (an SQLite file in a temporary directory, or a
//! fresh PostgreSQL schema dropped afterwards), and `both_backends!`, which runs a test body on each. When
//! PostgreSQL is unreachable its tests fail if `CI` is set and skip with a printed reason otherwise.

use std::future::Future;
use std::time::Duration;

use herald_jobs::{JobStore, JobsConfig, ManualClock};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
}

pub struct Fixture {
    pub kind: Kind,
    pub dir: tempfile::TempDir,
    pub jobs: JobStore,
    pub clock: ManualClock,
    /// The database URL (`sqlite://…` or `postgres://…?schema=…`).
    pub url: String,
    pub schema: Option<TestSchema>,
}

impl Fixture {
    /// Another store handle on the same database.
    pub async fn reopen(&self, config: JobsConfig) -> JobStore {
        JobStore::open_url(&self.url, config).await.unwrap()
    }

    /// A new fixture of the same backend (a new file or schema).
    pub async fn again(&self) -> Fixture {
        fixture(self.kind, "again").await.expect("available before")
    }
}

pub fn config(clock: &ManualClock) -> JobsConfig {
    JobsConfig::default().clock(clock.clone()).full_sync(false)
}

pub use herald_store_testkit::postgres::{TestSchema, available as postgres_available};

/// A URL (for `kind`) naming a fresh database: a file in `dir`, or a new schema.
pub fn fresh_url(kind: Kind, dir: &std::path::Path) -> (String, Option<TestSchema>) {
    match kind {
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

/// A fresh store of `kind` on a manual clock; `None` when PostgreSQL is unreachable outside CI.
pub async fn fixture(kind: Kind, test: &str) -> Option<Fixture> {
    if kind == Kind::Postgres && !postgres_available(test).await {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at_micros(1_700_000_000_000_000);
    let (url, schema) = fresh_url(kind, dir.path());
    let jobs = JobStore::open_url(&url, config(&clock)).await.unwrap();
    Some(Fixture {
        kind,
        dir,
        jobs,
        clock,
        url,
        schema,
    })
}

/// Runs each named `async fn(Fixture)` once per backend: `sqlite::NAME` and `postgres::NAME`.
#[macro_export]
macro_rules! both_backends {
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
