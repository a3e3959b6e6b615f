//! Shared by the integration tests: the test database, a fresh schema per test (dropped afterwards), and
//! the rule for an unreachable server (fail when `CI` is set, skip with a printed reason otherwise).

// Each test binary uses part of this module.
#![allow(dead_code, unreachable_pub, unused_imports)]

use herald_postgres::{PostgresConfig, PostgresStore};

pub use herald_store_testkit::postgres::{
    available as postgres_available, server_url as database_url,
};

/// A schema of its own for one test (the testkit's guard: dropped with everything in it afterwards), and the
/// store configuration that uses it.
#[derive(Debug)]
pub struct TestSchema(herald_store_testkit::postgres::TestSchema);

impl TestSchema {
    pub fn new() -> Self {
        TestSchema(herald_store_testkit::postgres::TestSchema::new(
            "herald_test",
        ))
    }

    pub fn name(&self) -> &str {
        self.0.name()
    }

    /// The test server's URL for this schema, reached through a loopback proxy on `port`.
    pub fn url_via(&self, port: u16) -> String {
        self.0.url_via(port)
    }

    pub fn config(&self) -> PostgresConfig {
        PostgresConfig::default().schema(self.name())
    }
}

/// Opens a store on a fresh schema; panics with the reason when PostgreSQL is unreachable.
pub async fn fresh_store(
    config: impl FnOnce(PostgresConfig) -> PostgresConfig,
) -> (PostgresStore, TestSchema) {
    let schema = TestSchema::new();
    let store = PostgresStore::open(&database_url(), config(schema.config()))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot open a PostgreSQL store at {} (start it with scripts/services.sh): {e}",
                database_url()
            )
        });
    (store, schema)
}
