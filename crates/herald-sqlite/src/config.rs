//! How a store is opened: typed configuration with a builder, and the `sqlite://` URL form the CLI and server
//! take. The library never reads environment variables; the binary does and hands the result here.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use std::sync::Arc;

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
/// Default largest number of write requests the writer commits in one transaction.
pub const DEFAULT_MAX_BATCH: usize = 512;
/// Default time a connection waits for a lock held by another process before failing.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// Connections serving reads in parallel with the writer (WAL readers never wait for it). At least 1.
    pub read_connections: usize,
    /// Most write requests (appends, links, deletes) committed together in one transaction. At least 1.
    pub max_batch: usize,
    /// How long to wait for a lock held by another process (another store on the same file).
    pub busy_timeout: Duration,
    /// Hooks run inside every append's savepoint (see [`crate::hook`]); none by default.
    pub append_hooks: AppendHooks,
    /// Computes the jobs of every append, written in its transaction (see [`SqliteConfig::with_job_router`]);
    /// none by default.
    pub job_router: JobRouting,
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

    /// Sets the number of read connections (at least 1).
    pub fn read_connections(mut self, n: usize) -> Self {
        self.read_connections = n;
        self
    }

    /// Sets the largest group-commit batch, in write requests (at least 1; 1 disables group commit).
    pub fn max_batch(mut self, n: usize) -> Self {
        self.max_batch = n;
        self
    }

    /// Sets the lock wait for contention with other processes.
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
        if self.read_connections == 0 {
            return Err(Error::invalid("read_connections must be at least 1"));
        }
        if self.max_batch == 0 {
            return Err(Error::invalid("max_batch must be at least 1"));
        }
        Ok(())
    }
}

/// A parsed `sqlite://` URL: the database file and the settings given in its query string.
///
/// `sqlite://herald.db` is the relative path `herald.db`, `sqlite:///var/lib/herald.db` the absolute path
/// `/var/lib/herald.db`. The query string may set `durability=full|normal`, `read_connections=N` and
/// `max_batch=N`.
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
        let rest = url.strip_prefix("sqlite://").ok_or_else(|| {
            Error::invalid(format!(
                "database URL `{url}` does not start with sqlite:// (try sqlite://herald.db)"
            ))
        })?;
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        if path.is_empty() {
            return Err(Error::invalid(format!(
                "database URL `{url}` names no file (try sqlite://herald.db)"
            )));
        }
        let mut config = base;
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let number = |what: &str| -> Result<usize> {
                value.parse().map_err(|_| {
                    Error::invalid(format!(
                        "database URL `{url}`: {what} `{value}` is not a number"
                    ))
                })
            };
            match key {
                "durability" | "synchronous" => config.durability = value.parse()?,
                "read_connections" => config.read_connections = number(key)?,
                "max_batch" => config.max_batch = number(key)?,
                _ => {
                    return Err(Error::invalid(format!(
                        "database URL `{url}`: unknown parameter `{key}` (known: durability, read_connections, max_batch)"
                    )));
                }
            }
        }
        config.validate()?;
        Ok(SqliteUrl {
            path: Path::new(path).to_path_buf(),
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
    use super::*;

    #[test]
    fn parses_relative_absolute_and_parameters() {
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
        ] {
            let err = bad.parse::<SqliteUrl>().unwrap_err();
            assert!(matches!(err, Error::InvalidInput(_)), "{bad}: {err}");
        }
    }
}
