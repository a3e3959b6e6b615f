//! `herald jobs …`: inspect and manage the durable job queue in the database the URL names (SQLite file,
//! PostgreSQL schema, or `memory://`, which starts empty), opened with [`herald::open`] like every other
//! command, so URL options mean the same here as for `append` or `read`.
//!
//! Output: with `--json`, one JSON value a line (`stats` one object, `list`/`dead` one job a line, the
//! operations one result object); without, the same lines as short text. Exit codes as everywhere: 4 for an
//! unknown job id, 5 for bad input (a state that does not exist, a limit out of range, a database URL this
//! build cannot open), 6 when a dead job's unique key is taken by a live job, 1 otherwise.

use clap::{Args, Subcommand};
use herald::Error;
use herald::core::error::escape_controls;
use herald::jobs::{JobState, JobStore, ListFilter};
use herald::uuid::Uuid;

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

fn parse_id(text: &str) -> Result<Uuid, CliError> {
    let id = Uuid::parse_str(text)
        .map_err(|e| CliError::Store(Error::invalid(format!("`{text}` is not a UUID: {e}"))))?;
    Ok(id)
}

async fn open(database: &str) -> Result<JobStore, CliError> {
    Ok(herald::open(database).await?.jobs)
}

/// Runs a `herald jobs` command; returns the lines to print.
pub(crate) async fn run(database: &str, args: JobsArgs) -> Result<Vec<String>, CliError> {
    let jobs = open(database).await?;
    let json = args.json;
    let lines = match args.command {
        JobsCommand::Stats => {
            let stats = jobs.stats().await?;
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
                state: state.as_deref().map(str::parse::<JobState>).transpose()?,
                limit: Some(limit),
            };
            let list = jobs.list(filter).await?;
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
            let dead = jobs.dead(limit).await?;
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
                            // A handler's error text is outside input: kept on the job's one line.
                            escape_controls(j.last_error.as_deref().unwrap_or(""))
                        )
                    }
                })
                .collect()
        }
        JobsCommand::Retry { id } => {
            let id = parse_id(&id)?;
            jobs.retry_dead(id).await?;
            vec![outcome(json, "retried", serde_json::json!({ "id": id }))]
        }
        JobsCommand::RetryAll => {
            let n = jobs.retry_all_dead().await?;
            vec![outcome(json, "retried", serde_json::json!({ "count": n }))]
        }
        JobsCommand::Discard { id } => {
            let id = parse_id(&id)?;
            jobs.discard_dead(id).await?;
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
