//! `herald worker`: runs the delivery jobs of the database's routes (`herald routes`) until SIGINT or SIGTERM:
//! webhooks (`herald.webhook`) and programs (`herald.shell`). It claims only from the queues of the kinds it
//! runs (each kind has its own queue), so jobs of other kinds — other workers' Rust handlers — are never
//! leased by it and keep their attempts. Failures retry with the job queue's backoff (Sidekiq's by default,
//! or `--backoff-first`/`--backoff-max`), then go to the dead set (`herald jobs dead`).
//!
//! Prints one JSON line when it has started (`{"worker":"started","queues":[…]}`), then nothing on stdout;
//! each failed delivery is logged on stderr with `HERALD_LOG=warn`. Exit 0 after a signal, once running
//! deliveries finished (or were released to the queue after the shutdown timeout).

use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use herald::Error;
use herald::core::Backoff;
use herald::core::delivery::{SHELL_KIND, WEBHOOK_KIND};
use herald::jobs::{HandlerOptions, WorkerPool};
use tokio_util::sync::CancellationToken;

use crate::cli::CliError;
use crate::deliver::Deliverer;
use crate::output::json_line;

/// A kind of delivery the worker can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Kind {
    /// POST to a URL.
    Webhook,
    /// Run a program.
    Shell,
}

impl Kind {
    fn queue(self) -> &'static str {
        match self {
            Kind::Webhook => WEBHOOK_KIND,
            Kind::Shell => SHELL_KIND,
        }
    }
}

/// `herald worker` arguments.
#[derive(Debug, Args)]
pub(crate) struct WorkerArgs {
    /// The kinds to run (comma-separated; default both).
    #[arg(long, value_delimiter = ',', default_values = ["webhook", "shell"])]
    kinds: Vec<Kind>,
    /// Deliveries of one kind running at once in this process.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// First retry delay in seconds: retries then wait first, 2×first, 4×first… up to --backoff-max
    /// (default: the job queue's Sidekiq-like schedule, 15 s, 16 s, 31 s, … about 20 days over 25 attempts).
    #[arg(long)]
    backoff_first: Option<f64>,
    /// Longest retry delay in seconds, with --backoff-first (default 3600).
    #[arg(long, default_value_t = 3600.0, requires = "backoff_first")]
    backoff_max: f64,
    /// Seconds between looks for jobs nobody woke this worker for (other processes' appends on SQLite).
    #[arg(long, default_value_t = 1.0)]
    poll_interval: f64,
}

fn seconds(name: &str, value: f64, max: f64) -> Result<Duration, Error> {
    if !(value > 0.0 && value <= max) {
        return Err(Error::invalid(format!(
            "{name} {value} is out of range: more than 0 and at most {max} seconds"
        )));
    }
    Ok(Duration::from_secs_f64(value))
}

/// Runs the worker until SIGINT or SIGTERM.
pub(crate) async fn run(database: &str, args: WorkerArgs) -> Result<(), CliError> {
    if args.concurrency == 0 || args.concurrency > 1024 {
        return Err(Error::invalid(format!(
            "--concurrency {} is out of range 1 to 1024",
            args.concurrency
        ))
        .into());
    }
    let poll = seconds("--poll-interval", args.poll_interval, 3600.0)?;
    let backoff = match args.backoff_first {
        Some(first) => {
            let max = seconds("--backoff-max", args.backoff_max, 30.0 * 86_400.0)?;
            let first = seconds("--backoff-first", first, max.as_secs_f64())?;
            Backoff::exponential(first, max)
        }
        None => Backoff::sidekiq(),
    };
    if database.starts_with("memory:") {
        // Nothing else could ever enqueue into this process's private memory.
        return Err(Error::invalid(
            "herald worker needs a database other processes share (sqlite://PATH or postgres://…); \
             memory:// lives and dies with one process",
        )
        .into());
    }
    let herald = herald::open(database).await?;
    let deliverer = Arc::new(Deliverer {
        routes: Arc::clone(&herald.routes),
        events: Arc::clone(&herald.store),
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(Error::backend)?,
    });
    let mut kinds = args.kinds;
    kinds.sort_by_key(|k| k.queue());
    kinds.dedup();
    let mut pool = WorkerPool::builder(herald.jobs.clone())
        .events(Arc::clone(&herald.store))
        .poll_interval(poll);
    for kind in &kinds {
        let deliverer = Arc::clone(&deliverer);
        pool = pool
            .queue(kind.queue(), args.concurrency)
            .options(
                kind.queue(),
                HandlerOptions {
                    backoff: Some(backoff.clone()),
                    max_concurrency: None,
                },
            )
            .handle_raw(kind.queue(), move |job_args, ctx| {
                let deliverer = Arc::clone(&deliverer);
                async move { deliverer.run(&job_args, ctx).await }
            });
    }
    let stop = CancellationToken::new();
    let pool = pool.start(stop.clone());
    let queues: Vec<&str> = kinds.iter().map(|k| k.queue()).collect();
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "{}",
            json_line(&serde_json::json!({"worker": "started", "queues": queues}))
        )?;
        out.flush()?;
    }
    crate::cli::shutdown_signal().await;
    stop.cancel();
    pool.join().await;
    Ok(())
}
