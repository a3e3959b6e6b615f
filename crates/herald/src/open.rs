//! [`open`]: everything Herald keeps in one database, from its URL — the event store, the job queue beside
//! it (jobs commit in the appends' transactions), the async-handler routes the store writes jobs for, and
//! (feature `es`) the checkpoints of subscriptions and projections. The URL is the only thing that differs
//! between `memory://`, `sqlite://` and `postgres://`.

use std::sync::Arc;

use herald_core::delivery::DeliveryRoutes;
use herald_core::jobs::{JobQueue, JobsConfig};
use herald_core::{Error, EventStore, Result};

/// What [`open_with`] opens besides the URL.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// The job queue's settings (lease, dead-set limits, durability, clock).
    pub jobs: JobsConfig,
}

/// Herald on one database. Cheap to clone: every part is shared.
#[derive(Clone)]
pub struct Herald {
    /// The event store.
    pub store: Arc<dyn EventStore>,
    /// The job queue in the same database (the port; [`Herald::jobs`] is its face with the worker pool's
    /// conveniences).
    pub job_queue: Arc<dyn JobQueue>,
    /// The delivery routes in the same database (webhooks and programs run by `herald worker`): every
    /// append, by any process, writes their jobs in its own transaction.
    pub routes: Arc<dyn DeliveryRoutes>,
    /// The job queue, ready for a [`WorkerPool`](herald_jobs::WorkerPool),
    /// [`Scheduler`](herald_jobs::Scheduler) or [`JobStore::append_with_jobs`](herald_jobs::JobStore::append_with_jobs).
    #[cfg(feature = "jobs")]
    pub jobs: herald_jobs::JobStore,
    /// The async event handlers' routes: the store writes one job per matching (event, route) in every
    /// append's transaction. Add routes at any time.
    #[cfg(feature = "jobs")]
    pub handlers: herald_jobs::AsyncHandlers,
    /// Checkpoints of subscriptions and projections, in the same database (in memory for `memory://`).
    #[cfg(feature = "es")]
    pub checkpoints: Arc<dyn herald_es::CheckpointStore>,
    /// Membership of dynamic consumer groups, in the same database (the same object as `checkpoints`).
    #[cfg(feature = "es")]
    pub memberships: Arc<dyn herald_es::MembershipStore>,
}

impl std::fmt::Debug for Herald {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Herald")
            .field("job_queue", &self.job_queue.describe())
            .finish_non_exhaustive()
    }
}

/// Opens Herald on the database a URL names (see [`connect`](crate::connect) for the URLs), with default
/// options, creating its tables on first use.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), herald::Error> {
/// use herald::{ExpectedVersion, NewEvent, StreamName};
///
/// let herald = herald::open("memory://").await?; // or "sqlite://herald.db", "postgres://…"
/// let job = herald::core::NewJob::raw("send_receipt", r#"{"order":"order-1"}"#);
/// let now = herald.job_queue.config().clock.now_micros();
/// let placed = vec![NewEvent::new("OrderPlaced")];
/// let order = StreamName::new("order-1")?;
/// herald.store.append_with_jobs(&order, placed, ExpectedVersion::NoStream, vec![job], now).await?;
/// assert_eq!(herald.job_queue.stats().await?.queues[0].available, 1);
/// # Ok(())
/// # }
/// ```
pub async fn open(url: &str) -> Result<Herald> {
    open_with(url, OpenOptions::default()).await
}

/// [`open`] with options.
pub async fn open_with(url: &str, options: OpenOptions) -> Result<Herald> {
    let (scheme, _) = url.split_once("://").ok_or_else(|| {
        Error::invalid(format!(
            "database URL `{}` has no scheme; use sqlite://PATH, postgres://… or memory://",
            url.escape_debug()
        ))
    })?;
    #[cfg(feature = "jobs")]
    let handlers = herald_jobs::AsyncHandlers::new(&options.jobs);
    #[cfg(feature = "jobs")]
    let router = Some(handlers.router());
    #[cfg(not(feature = "jobs"))]
    let router: Option<Arc<dyn herald_core::JobRouter>> = None;
    let parts = match scheme {
        "memory" => memory(options.jobs, router),
        #[cfg(feature = "sqlite")]
        "sqlite" => sqlite(url, options.jobs, router).await?,
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => postgres(url, options.jobs, router).await?,
        other => {
            return Err(Error::invalid(format!(
                "database URL scheme `{}` is not supported by this build; use {}",
                other.escape_debug(),
                SUPPORTED
            )));
        }
    };
    Ok(Herald {
        store: parts.store,
        #[cfg(feature = "jobs")]
        jobs: herald_jobs::JobStore::new(Arc::clone(&parts.job_queue)),
        job_queue: parts.job_queue,
        routes: parts.routes,
        #[cfg(feature = "jobs")]
        handlers,
        #[cfg(feature = "es")]
        memberships: parts.checkpoints.clone(),
        #[cfg(feature = "es")]
        checkpoints: parts.checkpoints,
    })
}

/// The URLs this build opens.
const SUPPORTED: &str = if cfg!(all(feature = "sqlite", feature = "postgres")) {
    "sqlite://PATH, postgres://… or memory://"
} else if cfg!(feature = "sqlite") {
    "sqlite://PATH or memory://"
} else if cfg!(feature = "postgres") {
    "postgres://… or memory:// (SQLite needs the `sqlite` feature)"
} else {
    "memory:// (SQLite and PostgreSQL need the `sqlite` and `postgres` features)"
};

/// What each backend opens: the parts of [`Herald`] that depend on it.
struct Parts {
    store: Arc<dyn EventStore>,
    job_queue: Arc<dyn JobQueue>,
    routes: Arc<dyn DeliveryRoutes>,
    #[cfg(feature = "es")]
    checkpoints: Arc<dyn EsCheckpoints>,
}

/// A checkpoint store that is also the membership store of dynamic consumer groups (each backend's is both).
#[cfg(feature = "es")]
trait EsCheckpoints: herald_es::CheckpointStore + herald_es::MembershipStore {}
#[cfg(feature = "es")]
impl<T: herald_es::CheckpointStore + herald_es::MembershipStore> EsCheckpoints for T {}

fn memory(jobs: JobsConfig, router: Option<Arc<dyn herald_core::JobRouter>>) -> Parts {
    let store = match router {
        Some(router) => herald_memory::InMemoryStore::with_job_router(router),
        None => herald_memory::InMemoryStore::new(),
    };
    let queue = Arc::new(store.job_queue(jobs));
    Parts {
        job_queue: queue.clone(),
        routes: queue,
        store: Arc::new(store),
        #[cfg(feature = "es")]
        checkpoints: Arc::new(herald_es::InMemoryCheckpointStore::new()),
    }
}

#[cfg(feature = "sqlite")]
async fn sqlite(
    url: &str,
    jobs: JobsConfig,
    router: Option<Arc<dyn herald_core::JobRouter>>,
) -> Result<Parts> {
    let mut parsed: herald_sqlite::SqliteUrl = url.parse()?;
    if let Some(router) = router {
        parsed.config = parsed.config.with_job_router(router);
    }
    // The URL's options mean the same for the jobs as for the events: `durability=normal` relaxes both.
    let mut jobs = jobs;
    jobs.full_sync &= parsed.config.durability == herald_sqlite::Durability::Full;
    jobs.busy_timeout = parsed.config.busy_timeout;
    let store = herald_sqlite::SqliteStore::open(&parsed.path, parsed.config).await?;
    #[cfg(feature = "es")]
    let checkpoints = herald_es::sqlite::SqliteCheckpointStore::open(&parsed.path)
        .await
        .map_err(es_error)?;
    let queue = Arc::new(store.job_queue(jobs).await?);
    Ok(Parts {
        job_queue: queue.clone(),
        routes: queue,
        store: Arc::new(store),
        #[cfg(feature = "es")]
        checkpoints: Arc::new(checkpoints),
    })
}

#[cfg(feature = "postgres")]
async fn postgres(
    url: &str,
    jobs: JobsConfig,
    router: Option<Arc<dyn herald_core::JobRouter>>,
) -> Result<Parts> {
    let mut parsed: herald_postgres::PostgresUrl = url.parse()?;
    if let Some(router) = router {
        parsed.config = parsed.config.with_job_router(router);
    }
    #[cfg(feature = "es")]
    let schema = parsed.config.schema.clone();
    let store = herald_postgres::PostgresStore::open(&parsed.connection, parsed.config).await?;
    #[cfg(feature = "es")]
    let checkpoints =
        herald_es::postgres::PostgresCheckpointStore::connect(&parsed.connection, &schema)
            .await
            .map_err(es_error)?;
    let queue = Arc::new(store.job_queue(jobs).await?);
    Ok(Parts {
        job_queue: queue.clone(),
        routes: queue,
        store: Arc::new(store),
        #[cfg(feature = "es")]
        checkpoints: Arc::new(checkpoints),
    })
}

/// herald-es reports opening failures as its own error; the store's kind is kept when it is one.
#[cfg(all(feature = "es", any(feature = "sqlite", feature = "postgres")))]
fn es_error(e: herald_es::EsError) -> Error {
    match e {
        herald_es::EsError::Store(e) => e,
        other => Error::backend(other),
    }
}
