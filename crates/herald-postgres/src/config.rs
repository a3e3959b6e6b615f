//! How a store is opened: typed configuration with a builder, and the `postgres://` URL form the CLI and
//! server take. The library never reads environment variables; the binary does and hands the result here.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use herald_core::url::{DatabaseUrl, Scheme, check_range};
use herald_core::{Error, Limits, Result};

use herald_core::jobs::JobRouter;

use crate::hook::{AppendHook, AppendHooks};
use crate::jobs::JobRouters;

/// Default schema holding Herald's tables.
pub const DEFAULT_SCHEMA: &str = "herald";
/// Default largest number of read connections in the pool (opened on demand).
pub const DEFAULT_POOL_SIZE: usize = 8;
/// Largest `pool_size` accepted: above it one store alone would exhaust a default server
/// (`max_connections` is 100 out of the box); raise the server's limit and use several stores instead.
pub const MAX_POOL_SIZE: usize = 256;
/// Default largest number of write requests the writer commits in one transaction.
pub const DEFAULT_MAX_BATCH: usize = 256;
/// Largest `max_batch` accepted: the writer reserves room for a whole batch up front, and past a few
/// thousand requests a batch only delays the first reply without saving WAL flushes.
pub const MAX_BATCH_LIMIT: usize = 16_384;

/// How long opening one connection (TCP connect, start-up, authentication) may take when the URL gives no
/// `connect_timeout`: a server that accepts connections and never answers fails an open (and each
/// reconnect attempt) after this, with [`Error::Unavailable`] naming its host and port.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest `connect_timeout` (seconds) a URL may give; the smallest is 1.
pub const MAX_CONNECT_TIMEOUT_SECS: u64 = 600;

/// How long one read (a page, an event, a stream's version, a page of streams: one statement each) may wait
/// for the server's answer by default; see [`PostgresConfig::read_timeout`].
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest `read_timeout` (seconds) accepted; the smallest is 1.
pub const MAX_READ_TIMEOUT_SECS: u64 = 3600;

/// Herald's own query options; every other option of a `postgres://` URL is the driver's.
const HERALD_OPTIONS: &[&str] = &["schema", "pool_size", "max_batch", "read_timeout"];
/// Longest schema name accepted (the LISTEN channel name, `herald_` + schema, must fit in 63 bytes).
pub const MAX_SCHEMA_LEN: usize = 48;

/// Settings of a [`crate::PostgresStore`].
///
/// ```
/// use herald_postgres::PostgresConfig;
/// let config = PostgresConfig::default().schema("orders").pool_size(4).max_batch(128);
/// assert_eq!(config.schema, "orders");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresConfig {
    /// Schema holding the tables (created on open): lowercase ASCII letters, digits and `_`, not starting
    /// with a digit, at most [`MAX_SCHEMA_LEN`] bytes.
    pub schema: String,
    /// Most read connections (opened on demand), 1 to [`MAX_POOL_SIZE`]. Writes use one more connection, live
    /// notifications another.
    pub pool_size: usize,
    /// Most write requests committed in one transaction, 1 to [`MAX_BATCH_LIMIT`].
    pub max_batch: usize,
    /// How long one read may wait for the server's answer (1 s to [`MAX_READ_TIMEOUT_SECS`], default
    /// [`DEFAULT_READ_TIMEOUT`]); URL option `read_timeout` (seconds). A read not answered in time is
    /// [`Error::Unavailable`] and its connection is closed. It bounds each statement, not a whole read: a
    /// long read or a follow is many short statements, so it is never cut short by this, and a follower
    /// retries a timed-out page on a fresh connection. Writes have no such client-side bound: an append
    /// abandoned while its `COMMIT` is in flight may have committed, so the writer waits for the answer (TCP
    /// keepalives end a connection to a vanished peer in about a minute; a server-side `statement_timeout`,
    /// set through the driver's `options`, bounds slow statements).
    pub read_timeout: Duration,
    /// Size limits enforced before anything is written.
    pub limits: Limits,
    /// Hooks run inside every append's transaction (see [`crate::hook`]); none by default.
    pub append_hooks: AppendHooks,
    /// Routers whose jobs are enqueued inside every append's transaction; none by default.
    pub job_routers: JobRouters,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            schema: DEFAULT_SCHEMA.to_owned(),
            pool_size: DEFAULT_POOL_SIZE,
            max_batch: DEFAULT_MAX_BATCH,
            read_timeout: DEFAULT_READ_TIMEOUT,
            limits: Limits::default(),
            append_hooks: AppendHooks::default(),
            job_routers: JobRouters::default(),
        }
    }
}

impl PostgresConfig {
    /// Uses this schema.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Most read connections (1 to [`MAX_POOL_SIZE`]).
    pub fn pool_size(mut self, n: usize) -> Self {
        self.pool_size = n;
        self
    }

    /// Most write requests per transaction (1 to [`MAX_BATCH_LIMIT`]).
    pub fn max_batch(mut self, n: usize) -> Self {
        self.max_batch = n;
        self
    }

    /// How long one read may wait for an answer (1 s to [`MAX_READ_TIMEOUT_SECS`]).
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = timeout;
        self
    }

    /// Size limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Adds a hook that the writer runs for every append, inside its transaction, so the rows it writes
    /// commit or roll back with the events (see [`crate::hook`]). Hooks run in the order they were added.
    pub fn with_append_hook(mut self, hook: Arc<dyn AppendHook>) -> Self {
        self.append_hooks.0.push(hook);
        self
    }

    /// Adds a job router: for every append that writes events, the writer asks it for the jobs those events
    /// cause ([`JobRouter::jobs_for`], with their final ids, versions and positions) and enqueues them in the
    /// append's transaction, stamped with [`JobRouter::now_micros`], into the job tables of the store's
    /// schema (created on open). A refused append and an idempotent retry enqueue nothing. Routers run after
    /// the append hooks, in the order they were added.
    pub fn with_job_router(mut self, router: Arc<dyn JobRouter>) -> Self {
        self.job_routers.0.push(router);
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        validate_schema_name(&self.schema)?;
        check_range("pool_size", self.pool_size, 1..=MAX_POOL_SIZE)?;
        check_range("max_batch", self.max_batch, 1..=MAX_BATCH_LIMIT)?;
        if !(Duration::from_secs(1)..=Duration::from_secs(MAX_READ_TIMEOUT_SECS))
            .contains(&self.read_timeout)
        {
            return Err(Error::invalid(format!(
                "read_timeout must be from 1 to {MAX_READ_TIMEOUT_SECS} seconds (got {:?})",
                self.read_timeout
            )));
        }
        Ok(())
    }
}

/// Checks that `s` can name Herald's schema: it is spliced into SQL unquoted, so only plain lowercase
/// identifiers are accepted (and not PostgreSQL's reserved `pg_` prefix). Every component that keeps tables in
/// the store's schema (jobs, checkpoints) checks its schema name with this.
pub fn validate_schema_name(s: &str) -> Result<()> {
    let valid_chars = s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    let starts_ok = s
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'_');
    if !valid_chars || !starts_ok || s.len() > MAX_SCHEMA_LEN || s.starts_with("pg_") {
        return Err(Error::invalid(format!(
            "schema name `{s}` is not valid: use 1 to {MAX_SCHEMA_LEN} lowercase ASCII letters, digits \
             and `_`, not starting with a digit or `pg_`"
        )));
    }
    Ok(())
}

/// A parsed `postgres://` (or `postgresql://`) URL: the connection part for the driver and Herald's own
/// parameters (`schema`, `pool_size` 1 to [`MAX_POOL_SIZE`], `max_batch` 1 to [`MAX_BATCH_LIMIT`],
/// `read_timeout` 1 to [`MAX_READ_TIMEOUT_SECS`] seconds), which are taken out of the query string.
/// `connect_timeout` (seconds, 1 to [`MAX_CONNECT_TIMEOUT_SECS`], default [`DEFAULT_CONNECT_TIMEOUT`]) stays
/// for the driver and bounds every connection Herald opens, start-up and authentication included. Parsed by
/// herald-core's [`DatabaseUrl`], like every database URL of the workspace.
///
/// ```
/// use herald_postgres::PostgresUrl;
/// let url: PostgresUrl = "postgres://root@127.0.0.1:5432/test?schema=app&pool_size=4".parse()?;
/// assert_eq!(url.connection, "postgres://root@127.0.0.1:5432/test");
/// assert_eq!(url.config.schema, "app");
/// assert_eq!(url.config.pool_size, 4);
/// # Ok::<(), herald_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresUrl {
    /// The URL without Herald's parameters, as the driver takes it (other parameters such as
    /// `connect_timeout` or `application_name` stay, byte for byte).
    pub connection: String,
    /// Settings from the URL's Herald parameters, defaults otherwise.
    pub config: PostgresConfig,
}

impl PostgresUrl {
    /// Parses `url`, starting from `base` for the settings the URL does not give.
    pub fn parse_with(url: &str, base: PostgresConfig) -> Result<Self> {
        Self::from_url(&DatabaseUrl::parse(url)?, base)
    }

    /// The connection and settings of an already parsed URL, starting from `base` for the settings it does
    /// not give. Anything but a `postgres://` URL, a Herald option out of its range, or a URL the driver
    /// refuses is [`Error::InvalidInput`].
    pub fn from_url(url: &DatabaseUrl, base: PostgresConfig) -> Result<Self> {
        if url.scheme() != Scheme::Postgres {
            return Err(url.invalid("is not a postgres:// or postgresql:// URL"));
        }
        let mut config = base;
        if let Some(schema) = url.option("schema")? {
            config.schema = schema.to_owned();
        }
        if let Some(n) = url.option_in("pool_size", 1..=MAX_POOL_SIZE)? {
            config.pool_size = n;
        }
        if let Some(n) = url.option_in("max_batch", 1..=MAX_BATCH_LIMIT)? {
            config.max_batch = n;
        }
        if let Some(seconds) = url.option_in("read_timeout", 1..=MAX_READ_TIMEOUT_SECS)? {
            config.read_timeout = Duration::from_secs(seconds);
        }
        // The driver's own option, kept in the connection string; checked here so that 0 (which the driver
        // takes as "wait for ever") and absurd values are refused like Herald's options.
        url.option_in("connect_timeout", 1..=MAX_CONNECT_TIMEOUT_SECS)?;
        config.validate()?;
        let connection = url.without_options(HERALD_OPTIONS);
        // Let the driver reject what it cannot use now (an unknown option, a bad value), with its own message.
        connection
            .parse::<tokio_postgres::Config>()
            .map_err(|e| url.invalid(format_args!("the driver refuses it: {e}")))?;
        Ok(PostgresUrl { connection, config })
    }
}

impl FromStr for PostgresUrl {
    type Err = Error;
    fn from_str(url: &str) -> Result<Self> {
        Self::parse_with(url, PostgresConfig::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_herald_parameters_and_keeps_the_rest() {
        let url: PostgresUrl =
            "postgresql://u@h/db?connect_timeout=3&schema=s_1&max_batch=9&application_name=x"
                .parse()
                .unwrap();
        assert_eq!(
            url.connection,
            "postgresql://u@h/db?connect_timeout=3&application_name=x"
        );
        assert_eq!(url.config.schema, "s_1");
        assert_eq!(url.config.max_batch, 9);
        assert_eq!(url.config.pool_size, DEFAULT_POOL_SIZE);
    }

    #[test]
    fn rejects_bad_urls_and_settings() {
        for bad in [
            "sqlite://x",
            "postgres://h/db?schema=Bad",
            "postgres://h/db?schema=1x",
            "postgres://h/db?schema=",
            "postgres://h/db?schema=pg_x",
            "postgres://h/db?pool_size=0",
            "postgres://h/db?max_batch=many",
            "postgres://h/db?nonsense=1",
            "postgres://h/db?pool_size=257",
            "postgres://h/db?max_batch=16385",
            "postgres://h/db?pool_size=-1",
            "postgres://h/db?schema=a&schema=b",
            "postgres://h:99999/db",
            "postgres://h/db?connect_timeout=0",
            "postgres://h/db?connect_timeout=601",
            "postgres://h/db?connect_timeout=soon",
            "postgres://h/db?read_timeout=0",
            "postgres://h/db?read_timeout=3601",
        ] {
            let err = bad.parse::<PostgresUrl>().unwrap_err();
            assert!(matches!(err, Error::InvalidInput(_)), "{bad}: {err}");
        }
        let long = format!("postgres://h/db?schema={}", "a".repeat(MAX_SCHEMA_LEN + 1));
        assert!(long.parse::<PostgresUrl>().is_err());
        let err = "postgres://u:hunter2@h/db?pool_size=1000"
            .parse::<PostgresUrl>()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("pool_size must be from 1 to 256 (got 1000)") && !err.contains("hunter2"),
            "{err}"
        );
    }

    #[test]
    fn every_numeric_setting_is_bounded() {
        let ok = PostgresConfig::default()
            .pool_size(MAX_POOL_SIZE)
            .max_batch(MAX_BATCH_LIMIT);
        assert!(ok.validate().is_ok());
        for bad in [
            PostgresConfig::default().pool_size(0),
            PostgresConfig::default().pool_size(MAX_POOL_SIZE + 1),
            PostgresConfig::default().max_batch(0),
            PostgresConfig::default().max_batch(usize::MAX),
        ] {
            let err = bad.validate().unwrap_err();
            assert!(matches!(err, Error::InvalidInput(_)), "{err}");
        }
    }

    #[test]
    fn keeps_passwords_and_driver_options_for_the_driver() {
        let url: PostgresUrl = "postgres://u:p%40ss@h:5433/db?options=-c%20x%3Dy&schema=app"
            .parse()
            .unwrap();
        assert_eq!(
            url.connection,
            "postgres://u:p%40ss@h:5433/db?options=-c%20x%3Dy"
        );
        let driver: tokio_postgres::Config = url.connection.parse().unwrap();
        assert_eq!(driver.get_password(), Some(&b"p@ss"[..]));
        assert_eq!(driver.get_options(), Some("-c x=y"));
    }
}
