//! How a store is opened: typed configuration with a builder, and the `sqlite://` URL form the CLI and server
//! take. The library never reads environment variables; the binary does and hands the result here.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use herald_core::url::{DatabaseUrl, Scheme, check_range};
use herald_core::{Error, JobRouter, Limits, Result};

use crate::hook::{AppendHook, AppendHooks, JobRouting};

/// What an acknowledged append survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `PRAGMA synchronous = FULL`: the WAL is fsynced at every commit, so an acknowledged append survives a
    /// process kill **and** a power loss or OS crash. The default.
    #[default]
    Full,
    /// `PRAGMA synchronous = NORMAL` in WAL mode: the WAL is fsynced only at checkpoints. An acknowledged append
    /// survives a process kill, but the last commits may be lost on power loss or OS crash (the database stays
    /// consistent). Faster: a commit costs no fsync.
    Normal,
}

impl Durability {
    pub(crate) fn pragma_value(self) -> &'static str {
        match self {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        }
    }
}

impl FromStr for Durability {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "full" => Ok(Durability::Full),
            "normal" => Ok(Durability::Normal),
            _ => Err(Error::invalid(format!(
                "durability `{s}` is not `full` or `normal`"
            ))),
        }
    }
}

/// Default number of read connections.
pub const DEFAULT_READ_CONNECTIONS: usize = 4;
/// Most read connections accepted. Each holds a file handle and up to 32 MiB of page cache, and two cores
/// gain nothing from dozens of readers.
pub const MAX_READ_CONNECTIONS: usize = 64;
/// Default largest number of write requests the writer commits in one transaction.
pub const DEFAULT_MAX_BATCH: usize = 512;
/// Largest `max_batch` accepted: the writer reserves room for a whole batch up front, and past a few
/// thousand requests a batch only delays the first reply without saving fsyncs.
pub const MAX_BATCH_LIMIT: usize = 16_384;
/// Default time a connection waits for a lock held by another process before failing.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest `busy_timeout` accepted (SQLite takes it in milliseconds as a C `int`; a writer blocked for
/// longer is stuck, not busy).
pub const MAX_BUSY_TIMEOUT: Duration = Duration::from_secs(3600);

/// The query options a `sqlite://` URL may carry (`synchronous` is another name for `durability`).
const URL_OPTIONS: &[&str] = &[
    "durability",
    "synchronous",
    "read_connections",
    "max_batch",
    "mode",
];

/// Settings of a [`crate::SqliteStore`].
///
/// ```
/// use herald_sqlite::{Durability, SqliteConfig};
/// let config = SqliteConfig::default()
///     .durability(Durability::Normal)
///     .read_connections(2)
///     .max_batch(128);
/// assert_eq!(config.durability, Durability::Normal);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteConfig {
    /// What an acknowledged append survives (default [`Durability::Full`]).
    pub durability: Durability,
    /// Size limits enforced before anything is written.
    pub limits: Limits,
    /// Connections serving reads in parallel with the writer (WAL readers never wait for it). 1 to
    /// [`MAX_READ_CONNECTIONS`].
    pub read_connections: usize,
    /// Most write requests (appends, links, deletes) committed together in one transaction. 1 to
    /// [`MAX_BATCH_LIMIT`].
    pub max_batch: usize,
    /// How long to wait for a lock held by another process (another store on the same file). At most
    /// [`MAX_BUSY_TIMEOUT`].
    pub busy_timeout: Duration,
    /// Hooks run inside every append's savepoint (see [`crate::hook`]); none by default.
    pub append_hooks: AppendHooks,
    /// Computes the jobs of every append, written in its transaction (see [`SqliteConfig::with_job_router`]);
    /// none by default.
    pub job_router: JobRouting,
    /// Open the file read-only (URL: `mode=ro`; default `mode=rw`): nothing is written, not even a migration,
    /// and writes are refused with [`Error::Unsupported`]. The file must exist at this build's schema. A file
    /// this process cannot write opens read-only without asking.
    pub read_only: bool,
}

impl Default for SqliteConfig {
    fn default() -> Self {
        SqliteConfig {
            durability: Durability::Full,
            limits: Limits::default(),
            read_connections: DEFAULT_READ_CONNECTIONS,
            max_batch: DEFAULT_MAX_BATCH,
            busy_timeout: DEFAULT_BUSY_TIMEOUT,
            append_hooks: AppendHooks::default(),
            job_router: JobRouting::default(),
            read_only: false,
        }
    }
}

impl SqliteConfig {
    /// Sets the durability.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Sets the size limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Opens the file read-only (see [`SqliteConfig::read_only`]).
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// Sets the number of read connections (1 to [`MAX_READ_CONNECTIONS`]).
    pub fn read_connections(mut self, n: usize) -> Self {
        self.read_connections = n;
        self
    }

    /// Sets the largest group-commit batch, in write requests (1 to [`MAX_BATCH_LIMIT`]; 1 disables group
    /// commit).
    pub fn max_batch(mut self, n: usize) -> Self {
        self.max_batch = n;
        self
    }

    /// Sets the lock wait for contention with other processes (at most [`MAX_BUSY_TIMEOUT`]).
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// Adds a hook that the writer calls inside every append's savepoint, so the rows it writes commit or roll
    /// back with the events (see [`crate::hook`]). Hooks run in the order they were added.
    pub fn with_append_hook(mut self, hook: Arc<dyn AppendHook>) -> Self {
        self.append_hooks.0.push(hook);
        self
    }

    /// Sets the job router: for every append that writes events, the writer calls
    /// [`JobRouter::jobs_for`] with the appended events (ids, versions and positions final) inside the
    /// append's savepoint, after the append hooks, and inserts the jobs it returns into the job tables of the
    /// store's file, enqueued at [`JobRouter::now_micros`]: they commit with the events or not at all. A refused
    /// append and an idempotent retry write no event and call no router. The jobs are stored as returned
    /// (validate them in the router if they come from input). After a commit that wrote jobs the store wakes
    /// its job queues' idle workers (see [`crate::SqliteStore::job_queue`]). Replaces any router set before.
    pub fn with_job_router(mut self, router: Arc<dyn JobRouter>) -> Self {
        self.job_router = JobRouting(Some(router));
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        check_range(
            "read_connections",
            self.read_connections,
            1..=MAX_READ_CONNECTIONS,
        )?;
        check_range("max_batch", self.max_batch, 1..=MAX_BATCH_LIMIT)?;
        if self.busy_timeout > MAX_BUSY_TIMEOUT {
            return Err(Error::invalid(format!(
                "busy_timeout must be at most {MAX_BUSY_TIMEOUT:?} (got {:?})",
                self.busy_timeout
            )));
        }
        Ok(())
    }
}

/// A parsed `sqlite://` URL: the database file and the settings given in its query string. Parsed by
/// herald-core's [`DatabaseUrl`], like every database URL of the workspace.
///
/// `sqlite://herald.db` is the relative path `herald.db`, `sqlite:///var/lib/herald.db` the absolute path
/// `/var/lib/herald.db`. The query string may set `durability=full|normal`, `read_connections=N` (1 to
/// [`MAX_READ_CONNECTIONS`]) and `max_batch=N` (1 to [`MAX_BATCH_LIMIT`]).
///
/// ```
/// use herald_sqlite::{Durability, SqliteUrl};
/// let url: SqliteUrl = "sqlite:///tmp/h.db?durability=normal".parse()?;
/// assert_eq!(url.path, std::path::Path::new("/tmp/h.db"));
/// assert_eq!(url.config.durability, Durability::Normal);
/// let rel: SqliteUrl = "sqlite://herald.db".parse()?;
/// assert_eq!(rel.path, std::path::Path::new("herald.db"));
/// # Ok::<(), herald_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteUrl {
    /// The database file.
    pub path: PathBuf,
    /// Defaults, overridden by the URL's query parameters.
    pub config: SqliteConfig,
}

impl SqliteUrl {
    /// Parses `url` starting from `base` settings (query parameters override them).
    pub fn parse_with(url: &str, base: SqliteConfig) -> Result<Self> {
        Self::from_url(&DatabaseUrl::parse(url)?, base)
    }

    /// The file and settings of an already parsed URL, starting from `base` settings (query parameters
    /// override them). Anything but a `sqlite://` URL, an unknown option or a value out of its range is
    /// [`Error::InvalidInput`].
    pub fn from_url(url: &DatabaseUrl, base: SqliteConfig) -> Result<Self> {
        let (Scheme::Sqlite, Some(path)) = (url.scheme(), url.path()) else {
            return Err(url.invalid("is not a sqlite:// URL (try sqlite://herald.db)"));
        };
        url.check_options(URL_OPTIONS)?;
        let mut config = base;
        let durability = url.option_parsed("durability")?;
        let synchronous = url.option_parsed("synchronous")?;
        if durability.is_some() && synchronous.is_some() {
            return Err(url.invalid("give durability or synchronous, not both"));
        }
        if let Some(durability) = durability.or(synchronous) {
            config.durability = durability;
        }
        if let Some(n) = url.option_in("read_connections", 1..=MAX_READ_CONNECTIONS)? {
            config.read_connections = n;
        }
        if let Some(n) = url.option_in("max_batch", 1..=MAX_BATCH_LIMIT)? {
            config.max_batch = n;
        }
        match url.option("mode")? {
            None => {}
            Some("ro") => config.read_only = true,
            Some("rw") => config.read_only = false,
            Some(_) => return Err(url.invalid("mode must be `ro` (read-only) or `rw`")),
        }
        config.validate()?;
        Ok(SqliteUrl {
            path: path.to_path_buf(),
            config,
        })
    }
}

impl FromStr for SqliteUrl {
    type Err = Error;
    fn from_str(url: &str) -> Result<Self> {
        SqliteUrl::parse_with(url, SqliteConfig::default())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn parses_relative_absolute_and_parameters() {
        // The bug a hand-rolled parser had elsewhere: the query is an option, not part of the file name.
        let u: SqliteUrl = "sqlite://shop.db?durability=normal".parse().unwrap();
        assert_eq!(u.path, Path::new("shop.db"));
        assert_eq!(u.config.durability, Durability::Normal);
        let u: SqliteUrl = "sqlite://data/h.db".parse().unwrap();
        assert_eq!(u.path, Path::new("data/h.db"));
        assert_eq!(u.config, SqliteConfig::default());
        let u: SqliteUrl = "sqlite:///abs/path.db?durability=NORMAL&read_connections=2&max_batch=9"
            .parse()
            .unwrap();
        assert_eq!(u.path, Path::new("/abs/path.db"));
        assert_eq!(u.config.durability, Durability::Normal);
        assert_eq!(u.config.read_connections, 2);
        assert_eq!(u.config.max_batch, 9);
    }

    #[test]
    fn rejects_bad_urls() {
        for bad in [
            "postgres://x",
            "sqlite://",
            "sqlite://x.db?durability=off",
            "sqlite://x.db?read_connections=0",
            "sqlite://x.db?max_batch=x",
            "sqlite://x.db?color=red",
            "sqlite://x.db?read_connections=65",
            "sqlite://x.db?max_batch=16385",
            "sqlite://x.db?max_batch=99999999999999999999999",
            "sqlite://x.db?durability=full&synchronous=normal",
            "sqlite://x.db?max_batch=2&max_batch=3",
            "memory://",
        ] {
            let err = bad.parse::<SqliteUrl>().unwrap_err();
            assert!(matches!(err, Error::InvalidInput(_)), "{bad}: {err}");
        }
        let err = "sqlite://x.db?read_connections=65"
            .parse::<SqliteUrl>()
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("read_connections must be from 1 to 64 (got 65)"),
            "{err}"
        );
    }

    #[test]
    fn every_numeric_setting_is_bounded() {
        let ok = SqliteConfig::default()
            .read_connections(MAX_READ_CONNECTIONS)
            .max_batch(MAX_BATCH_LIMIT)
            .busy_timeout(MAX_BUSY_TIMEOUT);
        assert!(ok.validate().is_ok());
        for bad in [
            SqliteConfig::default().read_connections(0),
            SqliteConfig::default().read_connections(MAX_READ_CONNECTIONS + 1),
            SqliteConfig::default().max_batch(0),
            SqliteConfig::default().max_batch(usize::MAX),
            SqliteConfig::default().busy_timeout(MAX_BUSY_TIMEOUT + Duration::from_millis(1)),
        ] {
            let err = bad.validate().unwrap_err();
            assert!(matches!(err, Error::InvalidInput(_)), "{err}");
        }
    }
}
