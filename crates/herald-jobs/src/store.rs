//! [`JobStore`]: the job tables, one writer thread with group commit, and the operations on jobs.
//!
//! Every write (enqueue, claim, completion, lease renewal, dead-set operation) is a closure sent to one writer
//! thread that owns a write connection. It runs whatever is queued in one `BEGIN IMMEDIATE … COMMIT` (one
//! fsync), each closure in its own savepoint, and answers after the commit. The event store's writer and this
//! one share SQLite's write lock (WAL; `busy_timeout`); reads use their own connection and never wait.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use herald_sqlite::rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use tokio::sync::{Notify, oneshot};
use uuid::Uuid;

use crate::clock::{Clock, SystemClock, micros};
use crate::error::{JobError, Result};
use crate::job::NewJob;
use crate::schema::{self, AVAILABLE, RUNNING, SCHEDULED};

/// Settings of a [`JobStore`].
#[derive(Debug, Clone)]
pub struct JobsConfig {
    /// The time source (tests use [`crate::ManualClock`]).
    pub clock: Arc<dyn Clock>,
    /// How long a claimed job stays leased without renewal; workers renew every third of it. A worker that
    /// dies loses its jobs to others after at most this long. Default 30 s.
    pub lease: Duration,
    /// Dead jobs kept at most (oldest dropped first). Default 10,000.
    pub dead_max_jobs: u64,
    /// Dead jobs kept at most this long. Default 180 days.
    pub dead_max_age: Duration,
    /// `synchronous = FULL` (true, default): every committed job survives power loss. `false`: NORMAL. On
    /// PostgreSQL: `synchronous_commit` on (true) or off (false) for the store's connections.
    pub full_sync: bool,
    /// How long to wait for SQLite's write lock held by another connection. Default 5 s. (SQLite only.)
    pub busy_timeout: Duration,
    /// With `full_sync`: also fsync claims, completions and lease renewals (true, default). `false`: only
    /// batches holding an enqueue or a dead-set operation are fsynced, the others commit with `synchronous =
    /// NORMAL` (the WAL is append-only, so the next fsync makes them durable too). Enqueued jobs stay
    /// power-loss safe; a power loss may forget that a job started or finished, so it runs again — which
    /// at-least-once delivery allows anyway. Faster draining and lower enqueue → start latency. On PostgreSQL
    /// the same split: claims, completions and renewals go through connections with `synchronous_commit =
    /// off`, enqueues and dead-set operations stay flushed.
    pub durable_progress: bool,
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            clock: Arc::new(SystemClock),
            lease: Duration::from_secs(30),
            dead_max_jobs: 10_000,
            dead_max_age: Duration::from_secs(180 * 24 * 3600),
            full_sync: true,
            busy_timeout: Duration::from_secs(5),
            durable_progress: true,
        }
    }
}

impl JobsConfig {
    /// Sets the clock.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }
    /// Sets the lease.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }
    /// Sets the dead-set limits.
    pub fn dead_limits(mut self, max_jobs: u64, max_age: Duration) -> Self {
        self.dead_max_jobs = max_jobs;
        self.dead_max_age = max_age;
        self
    }
    /// Sets the durability (`true`: FULL).
    pub fn full_sync(mut self, full: bool) -> Self {
        self.full_sync = full;
        self
    }
    /// Sets whether claims, completions and renewals are fsynced too (see [`JobsConfig::durable_progress`]).
    pub fn durable_progress(mut self, durable: bool) -> Self {
        self.durable_progress = durable;
        self
    }
}

type Reply = Box<dyn FnOnce(Option<Arc<JobError>>) + Send>;
/// One write for the writer thread. `durable`: its batch must be fsynced (enqueues, dead-set operations);
/// progress (claims, completions, renewals) is fsynced only when [`JobsConfig::durable_progress`] is set.
struct Op {
    durable: bool,
    run: OpFn,
}

/// Runs the write; returns whether it succeeded (else its savepoint is rolled back) and its reply.
type OpFn = Box<dyn FnOnce(&Connection) -> (bool, Reply) + Send>;

pub(crate) struct Inner {
    pub(crate) config: JobsConfig,
    pub(crate) wake: Arc<Notify>,
    pub(crate) backend: Backend,
}

/// Where the jobs are.
pub(crate) enum Backend {
    Sqlite(SqliteBackend),
    #[cfg(feature = "postgres")]
    Postgres(Box<crate::postgres::PgBackend>),
}

/// The SQLite file, its writer thread and its read connection.
pub(crate) struct SqliteBackend {
    path: PathBuf,
    ops: Mutex<Option<mpsc::Sender<Op>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    read: Arc<Mutex<Connection>>,
}

impl Drop for SqliteBackend {
    fn drop(&mut self) {
        self.ops.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(w) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = w.join();
        }
    }
}

/// The durable job queue, in the event store's database: an SQLite file ([`JobStore::open`]) or a PostgreSQL
/// schema (`JobStore::open_postgres`, feature `postgres`). Same API and semantics on both. Cheap to clone.
#[derive(Clone)]
pub struct JobStore {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for JobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("JobStore");
        match &self.inner.backend {
            Backend::Sqlite(s) => d.field("path", &s.path),
            #[cfg(feature = "postgres")]
            Backend::Postgres(p) => d.field("schema", &p.schema),
        };
        d.finish_non_exhaustive()
    }
}

/// A job leased to a worker.
#[derive(Debug, Clone)]
pub(crate) struct Claimed {
    pub(crate) row: i64,
    pub(crate) id: Uuid,
    pub(crate) queue: String,
    pub(crate) kind: String,
    pub(crate) args: String,
    pub(crate) metadata: String,
    pub(crate) attempt: u32,
    pub(crate) max_attempts: u32,
    /// It has an ordering key: later jobs of that key wait for it.
    pub(crate) ordered: bool,
}

/// What a worker decided for a claimed job.
#[derive(Debug, Clone)]
pub(crate) enum Finish {
    Delete,
    Reschedule {
        at: i64,
        error: String,
    },
    Dead {
        error: String,
    },
    /// Not run (shutdown before start): back to available, the attempt not counted.
    Release,
}

#[derive(Debug, Clone)]
pub(crate) struct Completion {
    pub(crate) row: i64,
    pub(crate) attempt: u32,
    pub(crate) finish: Finish,
    /// The job has an ordering key ([`Claimed::ordered`]).
    pub(crate) ordered: bool,
    /// The job's type has a concurrency limit in the pool that ran it.
    pub(crate) limited: bool,
}

impl Completion {
    /// Whether committing this completion may make a job runnable that waited for this one: the next job of
    /// its ordering key (once it is deleted or dead: a retrying job keeps its key), or another job of its
    /// limited type (the slot is free whatever the outcome). Not a release: the released job is available
    /// again itself, which the release announces like an enqueue (on PostgreSQL with its own `NOTIFY`).
    pub(crate) fn unblocks_others(&self) -> bool {
        match self.finish {
            Finish::Delete | Finish::Dead { .. } => self.ordered || self.limited,
            Finish::Reschedule { .. } => self.limited,
            Finish::Release => false,
        }
    }
}

/// A live job (pending or running), as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobInfo {
    /// Job id.
    pub id: Uuid,
    /// Queue.
    pub queue: String,
    /// Job type.
    pub kind: String,
    /// `available`, `scheduled` or `running`.
    pub state: &'static str,
    /// Arguments JSON text.
    pub args: String,
    /// Metadata JSON text.
    pub metadata: String,
    /// Priority.
    pub priority: i32,
    /// Attempts started so far.
    pub attempt: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// For pending jobs when it may run; for running jobs when the lease ends (µs since epoch).
    pub run_at: i64,
    /// Unique key.
    pub unique_key: Option<String>,
    /// Ordering key.
    pub order_key: Option<String>,
    /// Last error.
    pub last_error: Option<String>,
    /// Enqueue time (µs since epoch).
    pub enqueued_at: i64,
}

/// A job in the dead set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadJob {
    /// Job id.
    pub id: Uuid,
    /// Queue.
    pub queue: String,
    /// Job type.
    pub kind: String,
    /// Arguments JSON text.
    pub args: String,
    /// Metadata JSON text.
    pub metadata: String,
    /// Attempts made.
    pub attempt: u32,
    /// The last error.
    pub last_error: Option<String>,
    /// Attempt history: a JSON array of `{"attempt","at","error"}`.
    pub errors: String,
    /// Enqueue time (µs since epoch).
    pub enqueued_at: i64,
    /// When it died (µs since epoch).
    pub died_at: i64,
}

/// Counts per queue.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct QueueStats {
    /// The queue.
    pub queue: String,
    /// Ready to run now.
    pub available: u64,
    /// Waiting for their time (delayed or retrying).
    pub scheduled: u64,
    /// Leased by a worker.
    pub running: u64,
}

/// What the store holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Per queue, by name.
    pub queues: Vec<QueueStats>,
    /// Jobs in the dead set.
    pub dead: u64,
}

/// Filter for [`JobStore::list`].
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only this queue.
    pub queue: Option<String>,
    /// Only this state (`available`, `scheduled`, `running`).
    pub state: Option<String>,
    /// At most this many (default 100).
    pub limit: Option<usize>,
}

const JOB_COLUMNS: &str =
    "job_id, queue, kind, state, args, metadata, priority, attempt, max_attempts, run_at,
     unique_key, order_key, last_error, enqueued_at";

fn job_info(r: &herald_sqlite::rusqlite::Row<'_>) -> herald_sqlite::rusqlite::Result<JobInfo> {
    Ok(JobInfo {
        id: Uuid::from_slice(&r.get::<_, Vec<u8>>(0)?).unwrap_or_default(),
        queue: r.get(1)?,
        kind: r.get(2)?,
        state: state_name(r.get(3)?),
        args: r.get(4)?,
        metadata: r.get(5)?,
        priority: r.get(6)?,
        attempt: r.get(7)?,
        max_attempts: r.get(8)?,
        run_at: r.get(9)?,
        unique_key: r.get(10)?,
        order_key: r.get(11)?,
        last_error: r.get(12)?,
        enqueued_at: r.get(13)?,
    })
}

pub(crate) fn state_name(s: i64) -> &'static str {
    match s {
        AVAILABLE => "available",
        SCHEDULED => "scheduled",
        _ => "running",
    }
}

/// Inserts `job` on `conn` (inside the caller's transaction) at time `now`. Returns false when a job with the
/// same unique key is pending or running (nothing inserted). The building block of transactional enqueue:
/// call it from an [append hook](herald_sqlite::hook) or [`herald_sqlite::SqliteStore::append_with`].
pub fn insert_job(
    conn: &Connection,
    job: &NewJob,
    now: i64,
) -> herald_sqlite::rusqlite::Result<bool> {
    let run_at = job.run_at(now);
    let state = if run_at <= now { AVAILABLE } else { SCHEDULED };
    let mut insert = conn.prepare_cached(
        "INSERT INTO herald_jobs (job_id, queue, kind, args, metadata, priority, state, run_at, attempt,
             max_attempts, unique_key, order_key, errors, enqueued_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0, ?9, ?10, ?11, '[]', ?12)
         ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL DO NOTHING",
    )?;
    let n = insert.execute(params![
        job.id.as_bytes(),
        job.queue,
        job.kind,
        job.args,
        job.metadata,
        job.priority,
        state,
        run_at,
        job.max_attempts,
        job.unique_key,
        job.order_key,
        now,
    ])?;
    Ok(n == 1)
}

impl JobStore {
    /// Opens (creating when missing) the job tables in the SQLite file at `path`. The file may be the event
    /// store's (the usual case) and may be opened before or after it.
    pub async fn open(path: impl AsRef<Path>, config: JobsConfig) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let (p, c) = (path.clone(), config.clone());
        let (write, read) = tokio::task::spawn_blocking(move || {
            let mut write = schema::connect(&p, c.busy_timeout, c.full_sync)?;
            schema::migrate(&mut write)?;
            let read = schema::connect(&p, c.busy_timeout, c.full_sync)?;
            Ok::<_, JobError>((write, read))
        })
        .await
        .map_err(|e| JobError::backend(format!("open task failed: {e}")))??;
        let (tx, rx) = mpsc::channel::<Op>();
        let writer = std::thread::Builder::new()
            .name("herald-jobs-writer".to_owned())
            .spawn({
                let modes = (config.full_sync, config.durable_progress);
                move || run_writer(write, rx, modes)
            })
            .map_err(|e| JobError::backend(format!("cannot start the job writer: {e}")))?;
        Ok(JobStore {
            inner: Arc::new(Inner {
                config,
                wake: Arc::new(Notify::new()),
                backend: Backend::Sqlite(SqliteBackend {
                    path,
                    ops: Mutex::new(Some(tx)),
                    writer: Mutex::new(Some(writer)),
                    read: Arc::new(Mutex::new(read)),
                }),
            }),
        })
    }

    /// Opens (creating when missing) the job tables in the PostgreSQL database a
    /// `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?schema=S&pool_size=N]` URL names (`postgresql://` too),
    /// in schema `S` — by default `herald`, the event store's — with at most `N` connections (default 8), plus
    /// one that listens for wake-ups. Several processes may open the same schema at once.
    #[cfg(feature = "postgres")]
    pub async fn open_postgres(url: &str, config: JobsConfig) -> Result<Self> {
        let wake = Arc::new(Notify::new());
        let pg = crate::postgres::PgBackend::open(url, &config, Arc::clone(&wake)).await?;
        Ok(JobStore {
            inner: Arc::new(Inner {
                config,
                wake,
                backend: Backend::Postgres(Box::new(pg)),
            }),
        })
    }

    /// Opens the job store a URL names: `sqlite://PATH`, or `postgres://…` / `postgresql://…` (feature
    /// `postgres`, see `JobStore::open_postgres`).
    pub async fn open_url(url: &str, config: JobsConfig) -> Result<Self> {
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(JobError::invalid("sqlite:// URL without a path"));
            }
            return Self::open(path, config).await;
        }
        #[cfg(feature = "postgres")]
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Self::open_postgres(url, config).await;
        }
        Err(JobError::invalid(format!(
            "job store URL `{url}` is not sqlite://PATH{}",
            if cfg!(feature = "postgres") {
                " or postgres://…"
            } else {
                " (PostgreSQL needs herald-jobs' `postgres` feature)"
            }
        )))
    }

    /// The SQLite file, or `None` on PostgreSQL.
    pub fn path(&self) -> Option<&Path> {
        match &self.inner.backend {
            Backend::Sqlite(s) => Some(&s.path),
            #[cfg(feature = "postgres")]
            Backend::Postgres(_) => None,
        }
    }

    /// The PostgreSQL schema holding the job tables, or `None` on SQLite.
    pub fn postgres_schema(&self) -> Option<&str> {
        match &self.inner.backend {
            Backend::Sqlite(_) => None,
            #[cfg(feature = "postgres")]
            Backend::Postgres(p) => Some(&p.schema),
        }
    }

    #[cfg(feature = "postgres")]
    pub(crate) fn pg(&self) -> Option<&crate::postgres::PgBackend> {
        match &self.inner.backend {
            Backend::Postgres(p) => Some(p.as_ref()),
            Backend::Sqlite(_) => None,
        }
    }

    fn sqlite(&self) -> Result<&SqliteBackend> {
        match &self.inner.backend {
            Backend::Sqlite(s) => Ok(s),
            #[cfg(feature = "postgres")]
            Backend::Postgres(_) => Err(JobError::backend(
                "an SQLite operation reached a PostgreSQL job store (a Herald bug)",
            )),
        }
    }

    /// The store's clock reading, µs since the epoch.
    pub fn now_micros(&self) -> i64 {
        self.inner.config.clock.now_micros()
    }

    /// The settings.
    pub fn config(&self) -> &JobsConfig {
        &self.inner.config
    }

    /// Wakes idle workers of this process (done automatically after every enqueue through this handle).
    pub fn wake(&self) {
        self.inner.wake.notify_waiters();
    }

    /// Runs `f` on the writer thread inside the next batch transaction (in its own savepoint: an `Err` undoes
    /// only what `f` wrote) and answers after the commit.
    pub(crate) async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.write_op(true, f).await
    }

    /// [`JobStore::write`] for progress (claims, completions, renewals): see [`JobsConfig::durable_progress`].
    pub(crate) async fn write_progress<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.write_op(false, f).await
    }

    async fn write_op<T: Send + 'static>(
        &self,
        durable: bool,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        let run: OpFn = Box::new(move |conn: &Connection| {
            let result = f(conn);
            let ok = result.is_ok();
            let reply: Reply = Box::new(move |commit_error| {
                let _ = tx.send(match commit_error {
                    None => result,
                    Some(e) => Err((*e).clone()),
                });
            });
            (ok, reply)
        });
        let op = Op { durable, run };
        let sqlite = self.sqlite()?;
        {
            let ops = sqlite.ops.lock().unwrap_or_else(|e| e.into_inner());
            ops.as_ref()
                .ok_or(JobError::Closed)?
                .send(op)
                .map_err(|_| JobError::Closed)?;
        }
        // A dropped reply means the op never ran: the store closed, or the batch transaction failed before
        // reaching it (the writer logged why).
        rx.await.map_err(|_| {
            let open = sqlite
                .ops
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some();
            if open {
                JobError::backend(
                    "the job batch transaction failed before this operation ran; nothing written",
                )
            } else {
                JobError::Closed
            }
        })?
    }

    /// Runs a read on the read connection, on tokio's blocking pool.
    pub(crate) async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let read = Arc::clone(&self.sqlite()?.read);
        tokio::task::spawn_blocking(move || {
            let conn = read.lock().unwrap_or_else(|e| e.into_inner());
            f(&conn)
        })
        .await
        .map_err(|e| JobError::backend(format!("read task failed: {e}")))?
    }

    /// Enqueues one job durably. Returns its id, or `None` when it has a unique key and a job with that key is
    /// already pending or running (nothing enqueued).
    pub async fn enqueue(&self, job: NewJob) -> Result<Option<Uuid>> {
        job.validate()?;
        let now = self.now_micros();
        let id = job.id;
        #[cfg(feature = "postgres")]
        if let Some(pg) = self.pg() {
            let ids = pg.insert(std::slice::from_ref(&job), now).await?;
            self.wake();
            return Ok(ids.first().copied());
        }
        let inserted = self
            .write(move |conn| Ok(insert_job(conn, &job, now)?))
            .await?;
        self.wake();
        Ok(inserted.then_some(id))
    }

    /// Enqueues many jobs in one transaction (all or none). Returns the ids inserted (jobs skipped for their
    /// unique key are left out).
    pub async fn enqueue_bulk(&self, jobs: Vec<NewJob>) -> Result<Vec<Uuid>> {
        for job in &jobs {
            job.validate()?;
        }
        let now = self.now_micros();
        #[cfg(feature = "postgres")]
        if let Some(pg) = self.pg() {
            let ids = pg.insert(&jobs, now).await?;
            self.wake();
            return Ok(ids);
        }
        let ids = self
            .write(move |conn| {
                let mut ids = Vec::with_capacity(jobs.len());
                for job in &jobs {
                    if insert_job(conn, job, now)? {
                        ids.push(job.id);
                    }
                }
                Ok(ids)
            })
            .await?;
        self.wake();
        Ok(ids)
    }

    /// Appends `events` to `stream` and enqueues `jobs` in the same transaction: both commit or neither does
    /// (a refused append — version conflict, duplicate — enqueues nothing). The store must share this file.
    pub async fn append_with_jobs(
        &self,
        store: &herald_sqlite::SqliteStore,
        stream: &herald_core::StreamName,
        events: Vec<herald_core::NewEvent>,
        expected: herald_core::ExpectedVersion,
        jobs: Vec<NewJob>,
    ) -> Result<herald_core::AppendResult> {
        for job in &jobs {
            job.validate()?;
        }
        self.sqlite().map_err(|_| {
            JobError::invalid(
                "append_with_jobs with an SQLite event store needs an SQLite job store",
            )
        })?;
        let clock = Arc::clone(&self.inner.config.clock);
        let result = store
            .append_with(
                stream,
                events,
                expected,
                Box::new(move |conn, _| {
                    let now = clock.now_micros();
                    for job in &jobs {
                        insert_job(conn, job, now)?;
                    }
                    Ok(())
                }),
            )
            .await?;
        self.wake();
        Ok(result)
    }

    /// [`JobStore::append_with_jobs`] on PostgreSQL (feature `postgres`): appends `events` to `stream` in
    /// `store` and enqueues `jobs` in the same transaction (an extra statement of the append): both commit or
    /// neither does. This job store must be PostgreSQL on the store's database.
    #[cfg(feature = "postgres")]
    pub async fn append_with_jobs_postgres(
        &self,
        store: &herald_postgres::PostgresStore,
        stream: &herald_core::StreamName,
        events: Vec<herald_core::NewEvent>,
        expected: herald_core::ExpectedVersion,
        jobs: Vec<NewJob>,
    ) -> Result<herald_core::AppendResult> {
        for job in &jobs {
            job.validate()?;
        }
        let Some(pg) = self.pg() else {
            return Err(JobError::invalid(
                "append_with_jobs_postgres needs a PostgreSQL job store",
            ));
        };
        let schema = pg.schema.clone();
        let clock = Arc::clone(&self.inner.config.clock);
        let result = store
            .append_with(
                stream,
                events,
                expected,
                Box::new(move |_, writes| {
                    crate::postgres::push_inserts(writes, &schema, &jobs, clock.now_micros())
                }),
            )
            .await?;
        self.wake();
        Ok(result)
    }

    /// Claims up to `limit` runnable jobs of `queue` for `owner`: first returns expired leases to the queue (or
    /// the dead set when their attempts are used up) and makes due scheduled jobs available, then leases jobs
    /// by priority and enqueue order, skipping jobs behind an earlier job with the same ordering key and job
    /// types at their concurrency limit (`limits`: type → most running at once, across processes).
    pub(crate) async fn claim(
        &self,
        queue: String,
        owner: Uuid,
        limit: usize,
        limits: Arc<Vec<(String, u32)>>,
    ) -> Result<Vec<Claimed>> {
        #[cfg(feature = "postgres")]
        if let Some(pg) = self.pg() {
            return pg
                .claim(&self.inner.config, &queue, owner, limit, &limits)
                .await;
        }
        let clock = Arc::clone(&self.inner.config.clock);
        let lease = micros(self.inner.config.lease);
        let dead_limits = (
            self.inner.config.dead_max_jobs,
            self.inner.config.dead_max_age,
        );
        self.write_progress(move |conn| {
            let now = clock.now_micros();
            maintain(conn, now, dead_limits)?;
            let mut remaining: Vec<(String, i64)> = Vec::new();
            for (kind, max) in limits.iter() {
                let running: i64 = conn
                    .prepare_cached("SELECT count(*) FROM herald_jobs WHERE state = 2 AND kind = ?1")?
                    .query_row([kind], |r| r.get(0))?;
                remaining.push((kind.clone(), i64::from(*max) - running));
            }
            let full: Vec<&str> = remaining
                .iter()
                .filter(|(_, r)| *r <= 0)
                .map(|(k, _)| k.as_str())
                .collect();
            let full_json = serde_json::to_string(&full).unwrap_or_else(|_| "[]".into());
            let mut select = conn.prepare_cached(
                "SELECT j.id, j.kind FROM herald_jobs j INDEXED BY herald_jobs_available
                 WHERE j.state = 0 AND j.queue = ?1
                   AND (j.order_key IS NULL OR NOT EXISTS (
                         SELECT 1 FROM herald_jobs k WHERE k.order_key = j.order_key AND k.id < j.id))
                   AND j.kind NOT IN (SELECT value FROM json_each(?2))
                 ORDER BY j.priority DESC, j.id
                 LIMIT ?3",
            )?;
            let candidates: Vec<(i64, String)> = select
                .query_map(params![queue, full_json, limit as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?
                .collect::<std::result::Result<_, _>>()?;
            let mut take = conn.prepare_cached(
                "UPDATE herald_jobs SET state = 2, attempt = attempt + 1, run_at = ?2, lease_owner = ?3
                 WHERE id = ?1
                 RETURNING job_id, queue, kind, args, metadata, attempt, max_attempts, order_key IS NOT NULL",
            )?;
            let mut claimed = Vec::with_capacity(candidates.len());
            for (row, kind) in candidates {
                if let Some((_, left)) = remaining.iter_mut().find(|(k, _)| *k == kind) {
                    if *left <= 0 {
                        continue;
                    }
                    *left -= 1;
                }
                let job = take.query_row(params![row, now + lease, owner.as_bytes()], |r| {
                    Ok(Claimed {
                        row,
                        id: Uuid::from_slice(&r.get::<_, Vec<u8>>(0)?).unwrap_or_default(),
                        queue: r.get(1)?,
                        kind: r.get(2)?,
                        args: r.get(3)?,
                        metadata: r.get(4)?,
                        attempt: r.get(5)?,
                        max_attempts: r.get(6)?,
                        ordered: r.get(7)?,
                    })
                })?;
                claimed.push(job);
            }
            Ok(claimed)
        })
        .await
    }

    /// Records finished runs of `owner`'s jobs in one transaction. A completion whose lease was lost (the job
    /// was re-leased after expiry) changes nothing.
    pub(crate) async fn complete(&self, owner: Uuid, done: Vec<Completion>) -> Result<()> {
        #[cfg(feature = "postgres")]
        if let Some(pg) = self.pg() {
            return pg.complete(&self.inner.config, owner, done).await;
        }
        let clock = Arc::clone(&self.inner.config.clock);
        let (dead_max, dead_age) = (
            self.inner.config.dead_max_jobs,
            self.inner.config.dead_max_age,
        );
        self.write_progress(move |conn| {
            let now = clock.now_micros();
            let mut died = false;
            let own = "id = ?1 AND lease_owner = ?2 AND attempt = ?3 AND state = 2";
            for c in &done {
                let key = params![c.row, owner.as_bytes(), c.attempt];
                match &c.finish {
                    Finish::Delete => {
                        conn.prepare_cached(&format!("DELETE FROM herald_jobs WHERE {own}"))?
                            .execute(key)?;
                    }
                    Finish::Release => {
                        conn.prepare_cached(&format!(
                            "UPDATE herald_jobs SET state = 0, attempt = attempt - 1, lease_owner = NULL,
                                 run_at = ?4 WHERE {own}"
                        ))?
                        .execute(params![c.row, owner.as_bytes(), c.attempt, now])?;
                    }
                    Finish::Reschedule { at, error } => {
                        conn.prepare_cached(&format!(
                            "UPDATE herald_jobs SET state = 1, run_at = ?4, lease_owner = NULL, last_error = ?5,
                                 errors = json_insert(errors, '$[#]',
                                     json_object('attempt', attempt, 'at', ?6, 'error', ?5))
                             WHERE {own}"
                        ))?
                        .execute(params![c.row, owner.as_bytes(), c.attempt, at, error, now])?;
                    }
                    Finish::Dead { error } => {
                        let moved = conn
                            .prepare_cached(&format!(
                                "INSERT INTO herald_jobs_dead (job_id, queue, kind, args, metadata, priority,
                                     attempt, max_attempts, unique_key, order_key, last_error, errors,
                                     enqueued_at, died_at)
                                 SELECT job_id, queue, kind, args, metadata, priority, attempt, max_attempts,
                                     unique_key, order_key, ?4,
                                     json_insert(errors, '$[#]',
                                         json_object('attempt', attempt, 'at', ?5, 'error', ?4)),
                                     enqueued_at, ?5
                                 FROM herald_jobs WHERE {own}"
                            ))?
                            .execute(params![c.row, owner.as_bytes(), c.attempt, error, now])?;
                        if moved == 1 {
                            conn.prepare_cached(&format!("DELETE FROM herald_jobs WHERE {own}"))?
                                .execute(key)?;
                            died = true;
                        }
                    }
                }
            }
            if died {
                trim_dead(conn, now, dead_max, dead_age)?;
            }
            Ok(())
        })
        .await
    }

    /// Extends the leases of every job `owner` holds.
    pub(crate) async fn renew(&self, owner: Uuid) -> Result<usize> {
        #[cfg(feature = "postgres")]
        if let Some(pg) = self.pg() {
            return pg.renew(&self.inner.config, owner).await;
        }
        let clock = Arc::clone(&self.inner.config.clock);
        let lease = micros(self.inner.config.lease);
        self.write_progress(move |conn| {
            let until = clock.now_micros() + lease;
            Ok(conn
                .prepare_cached(
                    "UPDATE herald_jobs SET run_at = ?1 WHERE state = 2 AND lease_owner = ?2",
                )?
                .execute(params![until, owner.as_bytes()])?)
        })
        .await
    }

    /// Returns every job `owner` still holds to the queue (shutdown after the timeout). The attempt counts.
    pub(crate) async fn release_all(&self, owner: Uuid) -> Result<usize> {
        #[cfg(feature = "postgres")]
        if let Some(pg) = self.pg() {
            let n = pg.release_all(&self.inner.config, owner).await?;
            self.wake();
            return Ok(n);
        }
        let clock = Arc::clone(&self.inner.config.clock);
        let n = self
            .write_progress(move |conn| {
                Ok(conn
                    .prepare_cached(
                        "UPDATE herald_jobs SET state = 0, run_at = ?1, lease_owner = NULL
                         WHERE state = 2 AND lease_owner = ?2",
                    )?
                    .execute(params![clock.now_micros(), owner.as_bytes()])?)
            })
            .await?;
        self.wake();
        Ok(n)
    }

    /// Counts per queue and the dead set's size.
    pub async fn stats(&self) -> Result<Stats> {
        let now = self.now_micros();
        #[cfg(feature = "postgres")]
        if let Some(pg) = self.pg() {
            return pg.stats(now).await;
        }
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT queue, state, run_at <= ?1, count(*) FROM herald_jobs GROUP BY 1, 2, 3 ORDER BY 1",
            )?;
            let rows = stmt.query_map([now], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, bool>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })?;
            let mut queues: Vec<QueueStats> = Vec::new();
            for row in rows {
                let (queue, state, due, n) = row?;
                if queues.last().is_none_or(|q| q.queue != queue) {
                    queues.push(QueueStats {
                        queue,
                        ..QueueStats::default()
                    });
                }
                let q = queues.last_mut().expect("pushed");
                match state {
                    AVAILABLE => q.available += n as u64,
                    // A scheduled job whose time has come is available (promoted on the next claim).
                    SCHEDULED if due => q.available += n as u64,
                    SCHEDULED => q.scheduled += n as u64,
                    _ => q.running += n as u64,
                }
            }
            let dead: i64 = conn.query_row("SELECT count(*) FROM herald_jobs_dead", [], |r| r.get(0))?;
            Ok(Stats {
                queues,
                dead: dead as u64,
            })
        })
        .await
    }

    /// Live jobs, in queue then enqueue order.
    pub async fn list(&self, filter: ListFilter) -> Result<Vec<JobInfo>> {
        let state = match filter.state.as_deref() {
            None => None,
            Some("available") => Some(AVAILABLE),
            Some("scheduled") => Some(SCHEDULED),
            Some("running") => Some(RUNNING),
            Some(other) => {
                return Err(JobError::invalid(format!(
                    "state `{other}` is not available, scheduled or running (dead jobs: see the dead set)"
                )));
            }
        };
        let limit = i64::try_from(filter.limit.unwrap_or(100)).unwrap_or(i64::MAX);
        #[cfg(feature = "postgres")]
        if let Some(pg) = self.pg() {
            return pg.list(filter.queue, state, limit, None).await;
        }
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {JOB_COLUMNS} FROM herald_jobs
                 WHERE (?1 IS NULL OR queue = ?1) AND (?2 IS NULL OR state = ?2)
                 ORDER BY queue, id LIMIT ?3"
            ))?;
            let rows = stmt.query_map(params![filter.queue, state, limit], job_info)?;
            Ok(rows.collect::<std::result::Result<_, _>>()?)
        })
        .await
    }

    /// One live (pending or running) job by id.
    pub async fn job(&self, id: Uuid) -> Result<Option<JobInfo>> {
        #[cfg(feature = "postgres")]
        if let Some(pg) = self.pg() {
            return Ok(pg.list(None, None, 1, Some(id)).await?.pop());
        }
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(&format!(
                    "SELECT {JOB_COLUMNS} FROM herald_jobs WHERE job_id = ?1"
                ))?
                .query_row([id.as_bytes()], job_info)
                .optional()?)
        })
        .await
    }

    /// The dead set, most recent first.
    pub async fn dead(&self, limit: usize) -> Result<Vec<DeadJob>> {
        #[cfg(feature = "postgres")]
        if let Some(pg) = self.pg() {
            return pg.dead(i64::try_from(limit).unwrap_or(i64::MAX)).await;
        }
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT job_id, queue, kind, args, metadata, attempt, last_error, errors, enqueued_at, died_at
                 FROM herald_jobs_dead ORDER BY id DESC LIMIT ?1",
            )?;
            let rows = stmt.query_map([limit as i64], |r| {
                Ok(DeadJob {
                    id: Uuid::from_slice(&r.get::<_, Vec<u8>>(0)?).unwrap_or_default(),
                    queue: r.get(1)?,
                    kind: r.get(2)?,
                    args: r.get(3)?,
                    metadata: r.get(4)?,
                    attempt: r.get(5)?,
                    last_error: r.get(6)?,
                    errors: r.get(7)?,
                    enqueued_at: r.get(8)?,
                    died_at: r.get(9)?,
                })
            })?;
            Ok(rows.collect::<std::result::Result<_, _>>()?)
        })
        .await
    }

    /// Moves a dead job back to its queue, ready now, with a fresh attempt count (history kept).
    pub async fn retry_dead(&self, id: Uuid) -> Result<()> {
        let now = self.now_micros();
        #[cfg(feature = "postgres")]
        let n = match self.pg() {
            Some(pg) => pg.retry_dead(Some(id), now).await?,
            None => {
                self.write(move |conn| retry_dead_rows(conn, Some(id), now))
                    .await?
            }
        };
        #[cfg(not(feature = "postgres"))]
        let n = self
            .write(move |conn| retry_dead_rows(conn, Some(id), now))
            .await?;
        if n == 0 {
            return Err(JobError::NotFound(id));
        }
        self.wake();
        Ok(())
    }

    /// Moves every dead job back to its queue. Returns how many.
    pub async fn retry_all_dead(&self) -> Result<usize> {
        let now = self.now_micros();
        #[cfg(feature = "postgres")]
        let n = match self.pg() {
            Some(pg) => pg.retry_dead(None, now).await?,
            None => {
                self.write(move |conn| retry_dead_rows(conn, None, now))
                    .await?
            }
        };
        #[cfg(not(feature = "postgres"))]
        let n = self
            .write(move |conn| retry_dead_rows(conn, None, now))
            .await?;
        self.wake();
        Ok(n)
    }

    /// Removes a dead job for good.
    pub async fn discard_dead(&self, id: Uuid) -> Result<()> {
        #[cfg(feature = "postgres")]
        if let Some(pg) = self.pg() {
            return match pg.discard_dead(id).await? {
                0 => Err(JobError::NotFound(id)),
                _ => Ok(()),
            };
        }
        let n = self
            .write(move |conn| {
                Ok(conn.execute(
                    "DELETE FROM herald_jobs_dead WHERE job_id = ?1",
                    [id.as_bytes()],
                )?)
            })
            .await?;
        if n == 0 {
            return Err(JobError::NotFound(id));
        }
        Ok(())
    }

    /// Removes a pending job (not a running one). Returns false when there is no such pending job.
    pub async fn cancel(&self, id: Uuid) -> Result<bool> {
        #[cfg(feature = "postgres")]
        if let Some(pg) = self.pg() {
            return Ok(pg.cancel(id).await? == 1);
        }
        let n = self
            .write(move |conn| {
                Ok(conn.execute(
                    "DELETE FROM herald_jobs WHERE job_id = ?1 AND state <> 2",
                    [id.as_bytes()],
                )?)
            })
            .await?;
        Ok(n == 1)
    }
}

fn retry_dead_rows(conn: &Connection, id: Option<Uuid>, now: i64) -> Result<usize> {
    let filter = if id.is_some() {
        "WHERE job_id = ?2"
    } else {
        ""
    };
    let sql = format!(
        "INSERT INTO herald_jobs (job_id, queue, kind, args, metadata, priority, state, run_at, attempt,
             max_attempts, unique_key, order_key, last_error, errors, enqueued_at)
         SELECT job_id, queue, kind, args, metadata, priority, 0, ?1, 0, max_attempts, unique_key, order_key,
             last_error, errors, enqueued_at
         FROM herald_jobs_dead {filter} ORDER BY id"
    );
    let inserted = match id {
        Some(id) => conn.execute(&sql, params![now, id.as_bytes()]),
        None => conn.execute(&sql, params![now]),
    };
    let n = match inserted {
        Ok(n) => n,
        Err(e) if schema::is_constraint(&e) => {
            return Err(JobError::Duplicate(
                "a dead job's unique key is taken by a pending or running job".to_owned(),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    match id {
        Some(id) => conn.execute(
            "DELETE FROM herald_jobs_dead WHERE job_id = ?1",
            [id.as_bytes()],
        )?,
        None => conn.execute("DELETE FROM herald_jobs_dead", [])?,
    };
    Ok(n)
}

/// Housekeeping done at the start of every claim: expired leases go back to their queue (or to the dead set
/// when no attempt is left), due scheduled jobs become available, and the dead set is trimmed.
fn maintain(conn: &Connection, now: i64, (dead_max, dead_age): (u64, Duration)) -> Result<()> {
    let expired = "state = 2 AND run_at < ?1";
    let died = conn
        .prepare_cached(&format!(
            "INSERT INTO herald_jobs_dead (job_id, queue, kind, args, metadata, priority, attempt, max_attempts,
                 unique_key, order_key, last_error, errors, enqueued_at, died_at)
             SELECT job_id, queue, kind, args, metadata, priority, attempt, max_attempts, unique_key, order_key,
                 'lease expired (worker died?)',
                 json_insert(errors, '$[#]',
                     json_object('attempt', attempt, 'at', ?1, 'error', 'lease expired (worker died?)')),
                 enqueued_at, ?1
             FROM herald_jobs WHERE {expired} AND attempt >= max_attempts"
        ))?
        .execute([now])?;
    if died > 0 {
        conn.prepare_cached(&format!(
            "DELETE FROM herald_jobs WHERE {expired} AND attempt >= max_attempts"
        ))?
        .execute([now])?;
        trim_dead(conn, now, dead_max, dead_age)?;
    }
    conn.prepare_cached(&format!(
        "UPDATE herald_jobs SET state = 0, lease_owner = NULL, last_error = 'lease expired (worker died?)',
             errors = json_insert(errors, '$[#]',
                 json_object('attempt', attempt, 'at', ?1, 'error', 'lease expired (worker died?)'))
         WHERE {expired}"
    ))?
    .execute([now])?;
    conn.prepare_cached("UPDATE herald_jobs SET state = 0 WHERE state = 1 AND run_at <= ?1")?
        .execute([now])?;
    Ok(())
}

pub(crate) fn trim_dead(conn: &Connection, now: i64, max: u64, age: Duration) -> Result<()> {
    conn.prepare_cached("DELETE FROM herald_jobs_dead WHERE died_at < ?1")?
        .execute([now - micros(age)])?;
    conn.prepare_cached(
        "DELETE FROM herald_jobs_dead WHERE id <= (SELECT id FROM herald_jobs_dead ORDER BY id DESC
             LIMIT 1 OFFSET ?1)",
    )?
    .execute([max as i64])?;
    Ok(())
}

/// The writer thread: runs queued operations together, one transaction (one fsync) per batch.
fn run_writer(
    conn: Connection,
    ops: mpsc::Receiver<Op>,
    (full_sync, durable_progress): (bool, bool),
) {
    let mut batch: Vec<Op> = Vec::new();
    let mut synced = full_sync;
    while let Ok(first) = ops.recv() {
        batch.push(first);
        while batch.len() < 1024 {
            match ops.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let mut replies = Vec::with_capacity(batch.len());
        let sync = full_sync && (durable_progress || batch.iter().any(|op| op.durable));
        let result = (|| -> std::result::Result<(), herald_sqlite::rusqlite::Error> {
            if sync != synced {
                conn.pragma_update(None, "synchronous", if sync { "FULL" } else { "NORMAL" })?;
                synced = sync;
            }
            conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
            for op in batch.drain(..) {
                conn.prepare_cached("SAVEPOINT op")?.execute([])?;
                let (ok, reply) = (op.run)(&conn);
                replies.push(reply);
                if conn.is_autocommit() {
                    return Err(herald_sqlite::rusqlite::Error::SqliteFailure(
                        herald_sqlite::rusqlite::ffi::Error::new(
                            herald_sqlite::rusqlite::ffi::SQLITE_ABORT,
                        ),
                        Some("SQLite rolled the job batch back".to_owned()),
                    ));
                }
                if !ok {
                    conn.prepare_cached("ROLLBACK TO op")?.execute([])?;
                }
                conn.prepare_cached("RELEASE op")?.execute([])?;
            }
            conn.prepare_cached("COMMIT")?.execute([])?;
            Ok(())
        })();
        // Ops not yet run (an early failure) are dropped: their callers see the store closed for this call.
        batch.clear();
        let error = match result {
            Ok(()) => None,
            Err(e) => {
                if !conn.is_autocommit() {
                    let _ = conn.execute_batch("ROLLBACK");
                }
                tracing::error!(error = %e, "herald-jobs batch failed; nothing written");
                Some(Arc::new(JobError::backend(e)))
            }
        };
        for reply in replies {
            reply(error.clone());
        }
    }
}
