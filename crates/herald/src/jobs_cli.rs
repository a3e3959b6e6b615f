//! `herald jobs …`: inspect and manage the durable job queue (herald-jobs) in a SQLite database, or a
//! PostgreSQL one (`postgres://…[?schema=S]`, the job tables in the event store's schema) with the `postgres`
//! feature.
//!
//! Output: with `--json`, one JSON value a line (`stats` one object, `list`/`dead` one job a line, the
//! operations one result object); without, the same lines as short text. Exit codes as everywhere: 4 for an
//! unknown job id, 5 for bad input (a state that does not exist, a database URL that is neither SQLite nor
//! PostgreSQL), 1 otherwise.

use clap::{Args, Subcommand};
use herald_core::Error;
use herald_core::url::{DatabaseUrl, Scheme};
use herald_jobs::{JobError, JobStore, JobsConfig, ListFilter};
use uuid::Uuid;

use crate::cli::CliError;
use crate::output::json_line;

/// `herald jobs` arguments.
#[derive(Debug, Args)]
pub(crate) struct JobsArgs {
    /// Print JSON lines instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: JobsCommand,
}

#[derive(Debug, Subcommand)]
enum JobsCommand {
    /// Counts per queue (available, scheduled, running) and the dead set's size.
    Stats,
    /// Pending and running jobs, by queue then enqueue order.
    List {
        /// Only this queue.
        #[arg(long)]
        queue: Option<String>,
        /// Only this state: available, scheduled or running.
        #[arg(long)]
        state: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// The dead set (jobs out of attempts), most recent first.
    Dead {
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Move a dead job back to its queue.
    Retry {
        /// The job id.
        id: String,
    },
    /// Move every dead job back to its queue.
    RetryAll,
    /// Delete a dead job.
    Discard {
        /// The job id.
        id: String,
    },
}

fn cli_error(e: JobError) -> CliError {
    match e {
        JobError::NotFound(id) => CliError::NotFound(format!("job {id} not found")),
        JobError::InvalidInput(m) => CliError::Store(Error::invalid(m)),
        other => CliError::Store(Error::backend(other.to_string())),
    }
}

fn parse_id(text: &str) -> Result<Uuid, CliError> {
    Uuid::parse_str(text)
        .map_err(|e| CliError::Store(Error::invalid(format!("`{text}` is not a UUID: {e}"))))
}

async fn open(database: &str) -> Result<JobStore, CliError> {
    let url = DatabaseUrl::parse(database)?;
    match url.scheme() {
        Scheme::Sqlite => {
            let (path, config) = sqlite_jobs(&url)?;
            JobStore::open(path, config).await.map_err(cli_error)
        }
        #[cfg(feature = "postgres")]
        Scheme::Postgres => JobStore::open_postgres(url.as_str(), JobsConfig::default())
            .await
            .map_err(cli_error),
        _ => Err(CliError::Store(url.invalid(format!(
            "herald jobs needs a sqlite://{} database",
            if cfg!(feature = "postgres") {
                " or postgres://"
            } else {
                ""
            }
        )))),
    }
}

/// The job store's file and settings for a `sqlite://` URL: the same options the event store takes, read
/// the same way (`sqlite://shop.db?durability=normal` is the file `shop.db`, flushed at checkpoints only).
fn sqlite_jobs(url: &DatabaseUrl) -> Result<(std::path::PathBuf, JobsConfig), CliError> {
    let sqlite = herald_sqlite::SqliteUrl::from_url(url, herald_sqlite::SqliteConfig::default())?;
    let config = JobsConfig {
        full_sync: sqlite.config.durability == herald_sqlite::Durability::Full,
        busy_timeout: sqlite.config.busy_timeout,
        ..JobsConfig::default()
    };
    Ok((sqlite.path, config))
}

/// Runs a `herald jobs` command; returns the lines to print.
pub(crate) async fn run(database: &str, args: JobsArgs) -> Result<Vec<String>, CliError> {
    let jobs = open(database).await?;
    let json = args.json;
    let lines = match args.command {
        JobsCommand::Stats => {
            let stats = jobs.stats().await.map_err(cli_error)?;
            if json {
                vec![json_line(&stats)]
            } else {
                let mut lines: Vec<String> = stats
                    .queues
                    .iter()
                    .map(|q| {
                        format!(
                            "queue {}: {} available, {} scheduled, {} running",
                            q.queue, q.available, q.scheduled, q.running
                        )
                    })
                    .collect();
                lines.push(format!("dead: {}", stats.dead));
                lines
            }
        }
        JobsCommand::List {
            queue,
            state,
            limit,
        } => {
            let filter = ListFilter {
                queue,
                state,
                limit: Some(limit),
            };
            let list = jobs.list(filter).await.map_err(cli_error)?;
            list.iter()
                .map(|j| {
                    if json {
                        json_line(j)
                    } else {
                        format!(
                            "{} {} {} {} attempt {}/{}",
                            j.id, j.queue, j.kind, j.state, j.attempt, j.max_attempts
                        )
                    }
                })
                .collect()
        }
        JobsCommand::Dead { limit } => {
            let dead = jobs.dead(limit).await.map_err(cli_error)?;
            dead.iter()
                .map(|j| {
                    if json {
                        json_line(j)
                    } else {
                        format!(
                            "{} {} {} attempts {}: {}",
                            j.id,
                            j.queue,
                            j.kind,
                            j.attempt,
                            j.last_error.as_deref().unwrap_or("")
                        )
                    }
                })
                .collect()
        }
        JobsCommand::Retry { id } => {
            let id = parse_id(&id)?;
            jobs.retry_dead(id).await.map_err(cli_error)?;
            vec![outcome(json, "retried", serde_json::json!({ "id": id }))]
        }
        JobsCommand::RetryAll => {
            let n = jobs.retry_all_dead().await.map_err(cli_error)?;
            vec![outcome(json, "retried", serde_json::json!({ "count": n }))]
        }
        JobsCommand::Discard { id } => {
            let id = parse_id(&id)?;
            jobs.discard_dead(id).await.map_err(cli_error)?;
            vec![outcome(json, "discarded", serde_json::json!({ "id": id }))]
        }
    };
    Ok(lines)
}

fn outcome(json: bool, what: &str, mut value: serde_json::Value) -> String {
    if json {
        value[what] = serde_json::Value::Bool(true);
        json_line(&value)
    } else {
        let detail = value
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| {
                        format!("{k} {}", v.as_str().map_or(v.to_string(), str::to_owned))
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        format!("{what}: {detail}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `herald jobs` opened `sqlite://shop.db?durability=normal` as `shop.db` but dropped the option (every
    /// job write was still fsynced); the URL's options now reach the job store as they reach the event store.
    #[tokio::test]
    async fn sqlite_url_options_reach_the_job_store() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("shop.db");
        let jobs = open(&format!("sqlite://{}?durability=normal", file.display()))
            .await
            .unwrap();
        assert_eq!(jobs.path(), Some(file.as_path()));
        assert!(!jobs.config().full_sync, "durability=normal");
        let jobs = open(&format!("sqlite://{}", file.display())).await.unwrap();
        assert!(jobs.config().full_sync, "durability defaults to full");
        let (path, _) =
            sqlite_jobs(&DatabaseUrl::parse("sqlite://shop.db?durability=normal").unwrap())
                .unwrap();
        assert_eq!(path, std::path::Path::new("shop.db"), "relative form");
        for bad in [
            "sqlite://shop.db?read_connections=0",
            "sqlite://shop.db?colour=red",
            "memory://",
        ] {
            assert!(open(bad).await.is_err(), "{bad}");
        }
    }
}
