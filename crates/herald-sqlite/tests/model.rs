//! The model-based test (`herald-store-testkit`'s `model` module): random sequences of writes and reads on
//! a SQLite file (default, durable settings; a fresh temporary file per sequence), checked against the
//! reference model. `HERALD_MODEL_CASES` runs more.

use herald_sqlite::{SqliteConfig, SqliteStore};

async fn fresh_store() -> SqliteStore {
    SqliteStore::open_temporary_with(SqliteConfig::default())
        .await
        .expect("opening a temporary SQLite store")
}

herald_store_testkit::model_tests!(fresh_store);
