//! The processes a chaos run kills: each is this binary in one role, on the run's database URL.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use herald::core::NewJob;
use herald::es::CancellationToken;
use herald::jobs::{Backoff, HandlerOptions, JobResult, WorkerPool};
use herald::{
    EventStoreExt, ExpectedVersion, NewEvent, ReadQuery, ReadScope, RecordedEvent, StreamName,
};
use serde_json::json;

use crate::logs::{LineLog, read_lines};
use crate::{Result, context};

/// The job type every batch enqueues.
pub(crate) const JOB_KIND: &str = "chaos.batch";
/// The projection's name (its checkpoint key).
pub(crate) const PROJECTION: &str = "chaos-counts";
/// Attempts a chaos job may take: far more than kills and planned failures can use, so a dead job is a bug.
pub(crate) const JOB_MAX_ATTEMPTS: u32 = 100;
/// A killed worker's jobs come back after this lease; short, so a run converges quickly.
pub(crate) const JOB_LEASE: Duration = Duration::from_secs(2);
/// Events per projection transaction: small, so the projector is busy committing most of the time and kills
/// land between and inside its transactions rather than while it waits for events.
const PROJECTION_BATCH: usize = 2;
/// Streams the appenders spread their batches over.
const STREAMS: u32 = 16;

/// What an event carries: its batch (the batch's first event id), its index in the batch and the batch size.
pub(crate) fn batch_of(event: &RecordedEvent) -> Result<(uuid::Uuid, u64, u64)> {
    let data: serde_json::Value =
        serde_json::from_str(&event.data).map_err(context("decoding an event's data"))?;
    let batch = data["batch"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("event {} has no batch", event.id))?;
    let index = data["i"].as_u64().ok_or("event without index")?;
    let count = data["count"].as_u64().ok_or("event without count")?;
    Ok((batch, index, count))
}

/// The options every process opens Herald with (the job lease must agree between workers).
pub(crate) fn open_options() -> herald::OpenOptions {
    let mut options = herald::OpenOptions::default();
    options.jobs.lease = JOB_LEASE;
    options
}

#[derive(Debug, clap::Args)]
pub(crate) struct AppendArgs {
    #[arg(long)]
    url: String,
    /// Where acknowledged batches are logged: `stream id,id,…` per line.
    #[arg(long)]
    log: PathBuf,
    #[arg(long)]
    seed: u64,
    /// Pause between appends (so a run's event count stays bounded).
    #[arg(long, default_value_t = 5)]
    pause_ms: u64,
}

/// Appends batches of 1–5 events with one job each, forever; logs each acknowledged batch. An error (the
/// server restarting) is reported and the next batch tried after a short pause, with new ids: whether the
/// failed one committed is for the checker to see (present once, or absent).
pub(crate) async fn append(args: AppendArgs) -> Result<()> {
    let herald = herald::open_with(&args.url, open_options())
        .await
        .map_err(context("opening the store"))?;
    let mut acked = LineLog::open(&args.log)?;
    let mut rng = fastrand::Rng::with_seed(args.seed);
    loop {
        let stream = format!("chaos-{}", rng.u32(0..STREAMS));
        let count = rng.u64(1..=5);
        let ids: Vec<uuid::Uuid> = (0..count).map(|_| uuid::Uuid::now_v7()).collect();
        let events = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                NewEvent::new("Ticked")
                    .with_id(*id)
                    .with_data(json!({"batch": ids[0], "i": i, "count": count}).to_string())
            })
            .collect();
        let job = NewJob::raw(JOB_KIND, json!({"batch": ids[0]}).to_string())
            .max_attempts(JOB_MAX_ATTEMPTS);
        let name = StreamName::new(stream.as_str()).map_err(context("stream name"))?;
        let now = herald.job_queue.config().clock.now_micros();
        match herald
            .store
            .append_with_jobs(&name, events, ExpectedVersion::Any, vec![job], now)
            .await
        {
            Ok(_) => {
                let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
                acked.line(&format!("{stream} {}", ids.join(",")))?;
            }
            Err(e) => {
                eprintln!(
                    "append failed (retrying): {}",
                    crate::one_line(&e.to_string())
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        if args.pause_ms > 0 {
            tokio::time::sleep(Duration::from_millis(args.pause_ms)).await;
        }
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct FollowArgs {
    #[arg(long)]
    url: String,
    /// `position id` per event seen; the follower resumes after its last line.
    #[arg(long)]
    log: PathBuf,
}

/// Follows the global log from after its own log's last position, writing each event. A follow rides out
/// server restarts by itself (it reconnects); if it ends anyway, the process exits with
/// [`EXIT_FOLLOW_BROKE`](crate::EXIT_FOLLOW_BROKE), which fails the run.
pub(crate) async fn follow(args: FollowArgs) -> Result<()> {
    let last = read_lines(&args.log)?
        .last()
        .map(|line| {
            line.split(' ')
                .next()
                .and_then(|p| p.parse::<u64>().ok())
                .ok_or_else(|| format!("bad follower log line `{line}`"))
        })
        .transpose()?
        .unwrap_or(0);
    let mut log = LineLog::open(&args.log)?;
    let herald = herald::open_with(&args.url, open_options())
        .await
        .map_err(context("opening the store"))?;
    let mut events = herald.store.follow(ReadQuery::all().from(last + 1));
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                eprintln!(
                    "herald-chaos: the follow ended: {}",
                    crate::one_line(&e.to_string())
                );
                std::process::exit(crate::EXIT_FOLLOW_BROKE);
            }
        };
        log.line(&format!("{} {}", event.position, event.id))?;
    }
    eprintln!("herald-chaos: the follow ended without an error");
    std::process::exit(crate::EXIT_FOLLOW_BROKE);
}

#[derive(Debug, clap::Args)]
pub(crate) struct ProjectArgs {
    #[arg(long)]
    url: String,
}

/// The projector holds its name's lease (one active runner): a SIGKILLed one keeps it until it ends, so its
/// replacement waits that long. A short lease keeps the run busy.
fn projection_lease() -> Result<herald::es::LeaseConfig> {
    herald::es::LeaseConfig::new()
        .lease(std::time::Duration::from_secs(1))
        .map_err(context("configuring the projection's lease"))
}

/// Runs the transactional projection counting events per stream, until it fails.
pub(crate) async fn project(args: ProjectArgs) -> Result<()> {
    let herald = herald::open_with(&args.url, open_options())
        .await
        .map_err(context("opening the store"))?;
    let cancel = CancellationToken::new();
    if let Some(path) = args.url.strip_prefix("sqlite://") {
        let projection = herald::es::sqlite::SqliteProjection::open(
            PROJECTION,
            path,
            ReadScope::All,
            herald.store.clone(),
            SqliteCounts,
        )
        .await
        .map_err(context("opening the projection"))?
        .batch_size(PROJECTION_BATCH)
        .map_err(context("sizing the projection's batches"))?
        .lease(projection_lease()?);
        projection
            .run(&cancel)
            .await
            .map_err(context("running the projection"))?;
    } else {
        let projection = herald::es::postgres::PostgresProjection::open(
            PROJECTION,
            &args.url,
            "herald",
            ReadScope::All,
            herald.store.clone(),
            PostgresCounts,
        )
        .await
        .map_err(context("opening the projection"))?
        .batch_size(PROJECTION_BATCH)
        .map_err(context("sizing the projection's batches"))?
        .lease(projection_lease()?);
        projection
            .run(&cancel)
            .await
            .map_err(context("running the projection"))?;
    }
    Err("the projection stopped".into())
}

/// Events per stream, in the SQLite file.
struct SqliteCounts;

impl herald::es::sqlite::SqliteReadModel for SqliteCounts {
    fn setup(&self, tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS chaos_counts (stream TEXT PRIMARY KEY, n INTEGER NOT NULL)",
        )
    }

    fn apply(
        &self,
        tx: &rusqlite::Transaction<'_>,
        event: &RecordedEvent,
    ) -> std::result::Result<(), herald::core::BoxError> {
        tx.execute(
            "INSERT INTO chaos_counts (stream, n) VALUES (?1, 1)
             ON CONFLICT (stream) DO UPDATE SET n = n + 1",
            [&event.stream],
        )?;
        Ok(())
    }

    fn reset(&self, tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
        tx.execute_batch("DELETE FROM chaos_counts")
    }
}

/// Events per stream, in the PostgreSQL schema.
struct PostgresCounts;

#[async_trait]
impl herald::es::postgres::PostgresReadModel for PostgresCounts {
    async fn setup(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
    ) -> std::result::Result<(), tokio_postgres::Error> {
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS chaos_counts (stream TEXT PRIMARY KEY, n BIGINT NOT NULL)",
        )
        .await
    }

    async fn apply(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        event: &RecordedEvent,
    ) -> std::result::Result<(), herald::core::BoxError> {
        tx.execute(
            "INSERT INTO chaos_counts (stream, n) VALUES ($1, 1)
             ON CONFLICT (stream) DO UPDATE SET n = chaos_counts.n + 1",
            &[&event.stream],
        )
        .await?;
        Ok(())
    }

    async fn reset(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
    ) -> std::result::Result<(), tokio_postgres::Error> {
        tx.batch_execute("DELETE FROM chaos_counts").await
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct WorkArgs {
    #[arg(long)]
    url: String,
    /// `start|done|fail job attempt batch` per run.
    #[arg(long)]
    log: PathBuf,
    #[arg(long)]
    seed: u64,
}

/// Runs the batches' jobs: each run logs its start, then one in eight fails (a planned retry), the rest
/// succeed and log `done`. Runs until killed.
pub(crate) async fn work(args: WorkArgs) -> Result<()> {
    let herald = herald::open_with(&args.url, open_options())
        .await
        .map_err(context("opening the store"))?;
    let log = Arc::new(Mutex::new(LineLog::open(&args.log)?));
    let rng = Arc::new(Mutex::new(fastrand::Rng::with_seed(args.seed)));
    let shutdown = CancellationToken::new();
    let pool = WorkerPool::builder(herald.jobs.clone())
        .queue("default", 4)
        .options(
            JOB_KIND,
            HandlerOptions {
                backoff: Some(Backoff::constant(Duration::from_millis(50))),
                max_concurrency: None,
            },
        )
        .handle_raw(JOB_KIND, move |args, ctx| {
            let log = log.clone();
            let fail = rng.lock().unwrap_or_else(|e| e.into_inner()).u8(0..8) == 0;
            async move {
                let batch = serde_json::from_str::<serde_json::Value>(&args)
                    .ok()
                    .and_then(|v| v["batch"].as_str().map(str::to_owned))
                    .unwrap_or_default();
                let write = |what: &str| {
                    let line = format!("{what} {} {} {batch}", ctx.id, ctx.attempt);
                    log.lock().unwrap_or_else(|e| e.into_inner()).line(&line)
                };
                if let Err(e) = write("start") {
                    return JobResult::retry(e);
                }
                // A little work, so kills land inside runs too.
                tokio::time::sleep(Duration::from_millis(2)).await;
                if fail {
                    return match write("fail") {
                        Ok(()) => JobResult::retry("planned failure"),
                        Err(e) => JobResult::retry(e),
                    };
                }
                match write("done") {
                    Ok(()) => JobResult::Success,
                    Err(e) => JobResult::retry(e),
                }
            }
        })
        .start(shutdown.clone());
    pool.join().await;
    Err("the worker pool stopped".into())
}
