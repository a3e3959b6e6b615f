//! Shared by the integration tests: the test database, a fresh schema per test (dropped afterwards), and
//! the rule for an unreachable server (fail when `CI` is set, skip with a printed reason otherwise).

#![allow(dead_code, unreachable_pub)]

use herald_postgres::{PostgresConfig, PostgresStore};

/// The database the tests use: `HERALD_TEST_POSTGRES_URL`, or the local server's `test` database.
pub fn database_url() -> String {
    std::env::var("HERALD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".to_owned())
}

/// A schema of its own for one test; dropped (with everything in it) when the guard is dropped.
#[derive(Debug)]
pub struct TestSchema {
    pub name: String,
}

impl TestSchema {
    pub fn new() -> Self {
        TestSchema {
            name: format!("herald_test_{}", uuid::Uuid::now_v7().simple()),
        }
    }

    pub fn config(&self) -> PostgresConfig {
        PostgresConfig::default().schema(self.name.clone())
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        // Drop may run inside a Tokio runtime, which cannot block on another one: use a plain thread.
        let name = self.name.clone();
        let url = database_url();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async move {
                let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .ok()?;
                tokio::spawn(connection);
                client
                    .batch_execute(&format!(
                        "SET lock_timeout = '10s'; DROP SCHEMA IF EXISTS {name} CASCADE"
                    ))
                    .await
                    .ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("note: could not drop test schema {}", self.name);
        }
    }
}

/// Whether PostgreSQL answers. When it does not: panics if `CI` is set, else prints why the test skips.
pub async fn postgres_available(test: &str) -> bool {
    let url = database_url();
    match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
        Ok((_client, connection)) => {
            drop(connection);
            true
        }
        Err(e) => {
            if std::env::var_os("CI").is_some() {
                panic!(
                    "{test}: PostgreSQL at {url} is unreachable ({e}); CI requires it (scripts/services.sh starts it)"
                );
            }
            eprintln!(
                "SKIPPED {test}: PostgreSQL at {url} is unreachable ({e}); set CI=1 to make this fail"
            );
            false
        }
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
