//! The invariants a chaos run must end with, checked against the database and the roles' logs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use herald::{EventStoreExt, ReadQuery, RecordedEvent};
use uuid::Uuid;

use crate::logs::read_lines;
use crate::roles::{JOB_MAX_ATTEMPTS, PROJECTION, batch_of};
use crate::scenario::log_path;
use crate::{Result, context};

/// How many of each role the run had (one log per slot).
pub(crate) struct Expect {
    pub(crate) appenders: usize,
    pub(crate) followers: usize,
    pub(crate) workers: usize,
}

/// Where the parts are, while the run settles.
#[derive(Debug)]
pub(crate) struct Progress {
    head: u64,
    followers: Vec<u64>,
    projection: Option<u64>,
    jobs_left: u64,
    dead: u64,
}

impl Progress {
    pub(crate) fn caught_up(&self) -> bool {
        self.followers.iter().all(|&f| f == self.head)
            && self.projection.unwrap_or(0) == self.head
            && self.jobs_left == 0
            && self.dead == 0
    }
}

/// The log's head, each follower's last logged position, the projection's checkpoint and the jobs left.
pub(crate) async fn progress(
    herald: &herald::Herald,
    _url: &str,
    dir: &Path,
    followers: usize,
) -> Result<Progress> {
    let last = herald
        .store
        .read_to_vec(ReadQuery::all().backward().limit(1))
        .await
        .map_err(context("reading the head"))?;
    let head = last.first().map_or(0, |e| e.position);
    let mut positions = Vec::new();
    for index in 0..followers {
        let lines = read_lines(&log_path(dir, "follow", index))?;
        let last = lines
            .last()
            .map_or(Ok(0), |l| parse_follow_line(l).map(|(p, _)| p))?;
        positions.push(last);
    }
    let projection = herald
        .checkpoints
        .load(PROJECTION)
        .await
        .map_err(context("loading the projection's checkpoint"))?;
    let stats = herald
        .job_queue
        .stats()
        .await
        .map_err(context("reading job stats"))?;
    let jobs_left = stats
        .queues
        .iter()
        .map(|q| q.available + q.scheduled + q.running)
        .sum();
    Ok(Progress {
        head,
        followers: positions,
        projection,
        jobs_left,
        dead: stats.dead,
    })
}

/// What the checker counted.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) events: u64,
    pub(crate) acknowledged: u64,
    pub(crate) batches: u64,
    pub(crate) runs: u64,
    pub(crate) planned_failures: u64,
    pub(crate) cut_runs: u64,
    pub(crate) highest_attempt: u32,
    pub(crate) followers: usize,
    pub(crate) streams: usize,
}

/// Checks every invariant; the first violation found is the error (with what was expected and seen).
pub(crate) async fn check(
    herald: &herald::Herald,
    url: &str,
    dir: &Path,
    expect: &Expect,
) -> Result<Report> {
    let events = herald
        .store
        .read_to_vec(ReadQuery::all())
        .await
        .map_err(context("reading the log"))?;
    let mut report = Report {
        events: events.len() as u64,
        followers: expect.followers,
        ..Report::default()
    };

    let batches = check_events(&events, dir, expect.appenders, &mut report)?;

    // Jobs: exactly the stored batches have one (committed in the append's transaction), each ran to success.
    let mut job_of_batch: HashMap<Uuid, Uuid> = HashMap::new();
    let mut done: HashSet<Uuid> = HashSet::new();
    let mut starts = 0u64;
    let mut ends = 0u64;
    for index in 0..expect.workers {
        for line in read_lines(&log_path(dir, "work", index))? {
            let parts: Vec<&str> = line.split(' ').collect();
            let [what, job, attempt, batch] = parts[..] else {
                return Err(format!("bad worker log line `{line}`"));
            };
            let job: Uuid = job.parse().map_err(context("worker log job id"))?;
            let batch: Uuid = batch.parse().map_err(context("worker log batch"))?;
            let attempt: u32 = attempt.parse().map_err(context("worker log attempt"))?;
            if !batches.contains_key(&batch) {
                return Err(format!(
                    "job {job} ran for batch {batch}, which is not stored: a job committed without its events"
                ));
            }
            if let Some(other) = job_of_batch.insert(batch, job).filter(|o| *o != job) {
                return Err(format!("batch {batch} has two jobs: {other} and {job}"));
            }
            if attempt == 0 || attempt > JOB_MAX_ATTEMPTS {
                return Err(format!("job {job} ran with attempt number {attempt}"));
            }
            report.highest_attempt = report.highest_attempt.max(attempt);
            match what {
                "start" => starts += 1,
                "fail" => {
                    ends += 1;
                    report.planned_failures += 1;
                }
                "done" => {
                    ends += 1;
                    done.insert(batch);
                }
                _ => return Err(format!("bad worker log line `{line}`")),
            }
        }
    }
    if let Some(batch) = batches.keys().find(|b| !done.contains(b)) {
        return Err(format!("the job of batch {batch} never ran to success"));
    }
    report.runs = starts;
    report.cut_runs = starts.saturating_sub(ends);
    let stats = herald
        .job_queue
        .stats()
        .await
        .map_err(context("reading job stats"))?;
    if stats.dead > 0 {
        return Err(format!("{} jobs are dead", stats.dead));
    }

    // Followers: each saw every event once, in order.
    for index in 0..expect.followers {
        let lines = read_lines(&log_path(dir, "follow", index))?;
        if lines.len() != events.len() {
            return Err(format!(
                "follower {index} logged {} events, the log holds {}",
                lines.len(),
                events.len()
            ));
        }
        for (line, event) in lines.iter().zip(&events) {
            let (position, id) = parse_follow_line(line)?;
            if position != event.position || id != event.id {
                return Err(format!(
                    "follower {index} logged `{line}` where the log has {} {}",
                    event.position, event.id
                ));
            }
        }
    }

    // The projection equals a fresh fold of the log.
    let mut fold: BTreeMap<String, i64> = BTreeMap::new();
    for event in &events {
        *fold.entry(event.stream.clone()).or_default() += 1;
    }
    let model = read_model(url).await?;
    if model != fold {
        let differences: Vec<String> = fold
            .keys()
            .chain(model.keys())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .filter(|s| model.get(*s) != fold.get(*s))
            .map(|s| {
                let (m, f) = (model.get(s).unwrap_or(&0), fold.get(s).unwrap_or(&0));
                format!("{s}: read model {m}, log {f}")
            })
            .collect();
        return Err(format!(
            "the projection's read model differs from a fold of the log in {} streams ({})",
            differences.len(),
            differences.join("; ")
        ));
    }
    report.streams = fold.len();
    let checkpoint = herald
        .checkpoints
        .load(PROJECTION)
        .await
        .map_err(context("loading the projection's checkpoint"))?;
    if checkpoint.unwrap_or(0) != events.len() as u64 {
        return Err(format!(
            "the projection's checkpoint is {checkpoint:?}, the head {}",
            events.len()
        ));
    }
    Ok(report)
}

/// The store's side of every run: positions 1..=N with each event once, every acknowledged batch stored
/// whole in its stream, every stored batch whole (acknowledged or not). Returns the batches by id.
pub(crate) fn check_events(
    events: &[RecordedEvent],
    dir: &Path,
    appenders: usize,
    report: &mut Report,
) -> Result<BTreeMap<Uuid, (u64, HashSet<u64>)>> {
    // The global order: positions 1..=N, each event once.
    let mut by_id: HashMap<Uuid, &RecordedEvent> = HashMap::new();
    for (i, event) in events.iter().enumerate() {
        if event.position != i as u64 + 1 {
            return Err(format!(
                "global order has a gap or is out of order: event {} of the log has position {}",
                i + 1,
                event.position
            ));
        }
        if by_id.insert(event.id, event).is_some() {
            return Err(format!("event {} is stored twice", event.id));
        }
    }

    // Every acknowledged batch is stored, whole, in its stream, with consecutive versions.
    for index in 0..appenders {
        for line in read_lines(&log_path(dir, "append", index))? {
            let (stream, ids) = line
                .split_once(' ')
                .ok_or_else(|| format!("bad appender log line `{line}`"))?;
            let mut previous: Option<u64> = None;
            for id in ids.split(',') {
                let id: Uuid = id.parse().map_err(context("appender log id"))?;
                let event = by_id
                    .get(&id)
                    .ok_or_else(|| format!("acknowledged event {id} (stream {stream}) is lost"))?;
                if event.stream != stream {
                    return Err(format!(
                        "acknowledged event {id} was appended to {stream} but is stored in {}",
                        event.stream
                    ));
                }
                if previous.is_some_and(|v| v + 1 != event.version) {
                    return Err(format!(
                        "acknowledged batch of {stream} is not contiguous at event {id}"
                    ));
                }
                previous = Some(event.version);
                report.acknowledged += 1;
            }
        }
    }

    // Every stored batch is whole (appends are atomic, acknowledged or not).
    let mut batches: BTreeMap<Uuid, (u64, HashSet<u64>)> = BTreeMap::new();
    for event in events {
        let (batch, index, count) = batch_of(event)?;
        let entry = batches.entry(batch).or_insert((count, HashSet::new()));
        entry.1.insert(index);
    }
    for (batch, (count, indexes)) in &batches {
        if indexes.len() as u64 != *count {
            return Err(format!(
                "batch {batch} is partial: {} of {count} events stored",
                indexes.len()
            ));
        }
    }
    report.batches = batches.len() as u64;
    Ok(batches)
}

fn parse_follow_line(line: &str) -> Result<(u64, Uuid)> {
    let (position, id) = line
        .split_once(' ')
        .ok_or_else(|| format!("bad follower log line `{line}`"))?;
    Ok((
        position.parse().map_err(context("follower log position"))?,
        id.parse().map_err(context("follower log id"))?,
    ))
}

/// The projection's table, stream by stream.
async fn read_model(url: &str) -> Result<BTreeMap<String, i64>> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        let path = path.to_owned();
        return tokio::task::spawn_blocking(move || -> Result<BTreeMap<String, i64>> {
            let conn = rusqlite::Connection::open(&path).map_err(context("opening SQLite"))?;
            let mut statement = conn
                .prepare("SELECT stream, n FROM chaos_counts")
                .map_err(context("reading the read model"))?;
            let rows = statement
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
                .map_err(context("reading the read model"))?;
            rows.collect::<rusqlite::Result<_>>()
                .map_err(context("reading the read model"))
        })
        .await
        .map_err(context("reading the read model"))?;
    }
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(context("connecting to PostgreSQL"))?;
    tokio::spawn(connection);
    let rows = client
        .query("SELECT stream, n FROM herald.chaos_counts", &[])
        .await
        .map_err(context("reading the read model"))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}
