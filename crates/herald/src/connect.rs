//! Choosing a backend from a database URL, as the CLI and server do at run time.

use std::sync::Arc;

use herald_core::{Error, EventStore, Result};

/// The database used when none is given: a SQLite file `herald.db` in the working directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://herald.db";

/// Opens the store a URL names, creating its schema on first use.
///
/// | URL | backend |
/// | --- | --- |
/// | `sqlite://PATH` (`sqlite://herald.db` relative, `sqlite:///var/lib/herald.db` absolute) | SQLite file |
/// | `memory://` | in-memory, gone when the process ends |
/// | `postgres://USER@HOST:PORT/DB[?schema=S]` (feature `postgres`) | PostgreSQL, schema `herald` by default |
pub async fn connect(url: &str) -> Result<Arc<dyn EventStore>> {
    let (scheme, _) = url.split_once("://").ok_or_else(|| {
        Error::invalid(format!(
            "database URL `{url}` has no scheme; use sqlite://PATH or memory://"
        ))
    })?;
    match scheme {
        "memory" => Ok(Arc::new(herald_memory::InMemoryStore::new())),
        #[cfg(feature = "sqlite")]
        "sqlite" => Ok(Arc::new(herald_sqlite::SqliteStore::open_url(url).await?)),
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => Ok(Arc::new(
            herald_postgres::PostgresStore::open_url(url).await?,
        )),
        other => Err(Error::invalid(format!(
            "database URL scheme `{other}` is not supported by this build; use sqlite://PATH or memory://"
        ))),
    }
}
