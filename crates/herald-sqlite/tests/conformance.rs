//! The shared conformance suite (`herald-store-testkit`), run against a SQLite file with the default
//! (durable) settings, one fresh temporary file per case.

use herald_sqlite::{SqliteConfig, SqliteStore};

async fn fresh_store() -> SqliteStore {
    SqliteStore::open_temporary_with(SqliteConfig::default())
        .await
        .expect("opening a temporary SQLite store")
}

herald_store_testkit::conformance_tests!(fresh_store);
