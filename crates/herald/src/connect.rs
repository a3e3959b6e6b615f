//! Choosing a backend from a database URL, as the CLI and server do at run time.

use std::sync::Arc;

use herald_core::url::{DatabaseUrl, Scheme};
use herald_core::{Error, EventStore, Result};

/// The database used when none is given: a SQLite file `herald.db` in the working directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://herald.db";

/// Opens the store a URL names, creating its schema on first use. The URL is parsed once, by
/// [`DatabaseUrl`], and each backend reads its options from that parse.
///
/// | URL | backend |
/// | --- | --- |
/// | `sqlite://PATH[?durability=full\|normal&read_connections=N&max_batch=N]` (`sqlite://herald.db` relative, `sqlite:///var/lib/herald.db` absolute) | SQLite file |
/// | `memory://` | in-memory, gone when the process ends |
/// | `postgres://USER@HOST:PORT/DB[?schema=S&pool_size=N&max_batch=N]` (feature `postgres`) | PostgreSQL, schema `herald` by default |
pub async fn connect(url: &str) -> Result<Arc<dyn EventStore>> {
    let url = DatabaseUrl::parse(url)?;
    match url.scheme() {
        Scheme::Memory => {
            url.check_options(&[])?;
            Ok(Arc::new(herald_memory::InMemoryStore::new()))
        }
        #[cfg(feature = "sqlite")]
        Scheme::Sqlite => {
            let sqlite =
                herald_sqlite::SqliteUrl::from_url(&url, herald_sqlite::SqliteConfig::default())?;
            Ok(Arc::new(
                herald_sqlite::SqliteStore::open(sqlite.path, sqlite.config).await?,
            ))
        }
        #[cfg(feature = "postgres")]
        Scheme::Postgres => {
            let pg = herald_postgres::PostgresUrl::from_url(
                &url,
                herald_postgres::PostgresConfig::default(),
            )?;
            Ok(Arc::new(
                herald_postgres::PostgresStore::open(&pg.connection, pg.config).await?,
            ))
        }
        other => Err(Error::invalid(format!(
            "database URL scheme `{other}` is not supported by this build; use {}",
            supported()
        ))),
    }
}

/// The URL forms this build opens, for messages.
fn supported() -> &'static str {
    match (cfg!(feature = "sqlite"), cfg!(feature = "postgres")) {
        (true, true) => "sqlite://PATH, postgres://USER@HOST/DB or memory://",
        (true, false) => "sqlite://PATH or memory://",
        (false, true) => "postgres://USER@HOST/DB or memory://",
        (false, false) => "memory://",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_and_bad_urls() {
        assert!(connect("memory://").await.is_ok());
        for bad in [
            "",
            "herald.db",
            "mysql://h/db",
            "memory://?x=1",
            "sqlite://",
        ] {
            let err = connect(bad).await.err().unwrap();
            assert!(matches!(err, Error::InvalidInput(_)), "{bad}: {err}");
        }
    }
}
