//! [`PostgresJobQueue`] itself: opening it (standalone from a URL, or from an event store on the store's
//! database and schema), its connection pools and background tasks (the `LISTEN` connection and the
//! coalescing notifier), and how it names itself in logs.

use std::sync::Arc;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use herald_core::jobs::JobsConfig;
use herald_core::{Error, Result};
use tokio::sync::{Notify, oneshot};
use tokio_postgres::{Config, NoTls};

use super::sql::Sql;
use super::wake::{JobWakeups, notifier};
use crate::PostgresUrl;
use crate::listen::listen;
use crate::schema::{backend, pool_error};

/// herald-core's [`JobQueue`](herald_core::jobs::JobQueue) on PostgreSQL: the job tables of one schema (by
/// default the event store's, `herald`), shared by any number of processes. Open it standalone
/// ([`PostgresJobQueue::open`]) or from the event store ([`crate::PostgresStore::job_queue`]); the store's
/// [`append_with_jobs`](herald_core::EventStore::append_with_jobs) and job routers write to the same tables
/// in the append's transaction.
///
/// Claims lease jobs with `FOR UPDATE SKIP LOCKED`; idle workers of every process are woken by
/// `LISTEN`/`NOTIFY` within milliseconds of an enqueue (through any queue handle or event store) and of a
/// completion that frees an ordering key or a limited type's slot. Each handle uses up to `pool_size`
/// connections (at least 2), one more that listens, and, with
/// [`JobsConfig::durable_progress`]`(false)`, a second pool for claims, completions and renewals. Dropping
/// the handle stops its background tasks. It needs a running Tokio runtime.
pub struct PostgresJobQueue {
    pub(super) config: JobsConfig,
    pub(super) schema: String,
    /// Where the tables are, for logs (never the password).
    described: String,
    /// Enqueues, reads and dead-set operations.
    pool: Pool,
    /// Claims, completions, renewals (the same pool unless `durable_progress` is off).
    progress: Pool,
    pub(super) sql: Sql,
    /// Signalled by the listener on every notification, and after this handle's own enqueues.
    pub(super) wake: Arc<Notify>,
    /// Asks the notifier to `NOTIFY` the workers of every process (coalesced).
    pub(super) ready: Arc<Notify>,
    /// Dropping it stops the listener.
    _stop_listener: oneshot::Sender<()>,
    /// Dropping it stops the notifier.
    _stop_notifier: oneshot::Sender<()>,
}

impl std::fmt::Debug for PostgresJobQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresJobQueue")
            .field("at", &self.described)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl PostgresJobQueue {
    /// Opens (creating when missing) the job tables in the PostgreSQL database a
    /// `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?schema=S&pool_size=N]` URL names (`postgresql://`
    /// too; other parameters go to the driver), in schema `S` (default `herald`, the event store's) with at
    /// most `N` connections (default 8, at least 2 are used). The URL is read by the store's parser
    /// ([`PostgresUrl`]): a bad value is [`Error::InvalidInput`] naming the parameter. Returns once the
    /// tables are migrated and the wake-up listener has connected (or failed its first attempt, which it
    /// keeps retrying). Several processes may open the same schema at once.
    pub async fn open(url: &str, config: JobsConfig) -> Result<Self> {
        let url: PostgresUrl = url.parse()?;
        let pg: Config = url
            .connection
            .parse()
            .map_err(|e| Error::invalid(format!("PostgreSQL URL is not valid: {e}")))?;
        Self::connect(
            pg,
            url.config.schema,
            url.config.pool_size,
            config,
            Arc::new(Notify::new()),
        )
        .await
    }

    /// [`PostgresJobQueue::open`] with the default [`JobsConfig`].
    pub async fn open_url(url: &str) -> Result<Self> {
        Self::open(url, JobsConfig::default()).await
    }

    /// Opens the queue on `pg` (the driver's settings, without a `search_path`: every statement names its
    /// tables) in `schema`; `wake` is what [`JobQueue::wakeups`](herald_core::jobs::JobQueue::wakeups)
    /// hands out (shared with the event store that opened the queue, so its appends wake local workers at
    /// once).
    pub(crate) async fn connect(
        mut pg: Config,
        schema: String,
        pool_size: usize,
        config: JobsConfig,
        wake: Arc<Notify>,
    ) -> Result<Self> {
        crate::validate_schema_name(&schema)?;
        if pool_size == 0 {
            return Err(Error::invalid("pool_size must be at least 1"));
        }
        if pg.get_application_name().is_none() {
            pg.application_name("herald-jobs");
        }
        crate::schema::with_timeouts(&mut pg);
        if !config.full_sync {
            pg = with_option(pg, "-c synchronous_commit=off");
        }
        let described = format!(
            "PostgreSQL {}, schema {schema}",
            crate::schema::describe(&pg)
        );
        let pool_size = pool_size.max(2);
        let main = build_pool(&pg, pool_size)?;
        let progress = if config.full_sync && !config.durable_progress {
            build_pool(
                &with_option(pg.clone(), "-c synchronous_commit=off"),
                pool_size,
            )?
        } else {
            main.clone()
        };
        let mut client = main.get().await.map_err(|e| {
            Error::backend(crate::schema::DbError {
                text: format!(
                    "cannot connect to {described} for the job queue: {}",
                    pool_error_text(&e)
                ),
                source: Box::new(e),
            })
        })?;
        super::migrate(&mut client, &schema).await?;
        drop(client);

        let (stop_listener, listener_stop) = oneshot::channel();
        let (listening, first_attempt) = oneshot::channel();
        tokio::spawn(listen(
            pg,
            format!("herald_jobs_{schema}"),
            JobWakeups(Arc::clone(&wake)),
            listener_stop,
            Some(listening),
        ));
        // Return once notifications reach this handle, so nothing committed after `open` goes unnoticed; a
        // listener that cannot connect keeps retrying (workers poll meanwhile).
        if let Ok(Err(e)) = first_attempt.await {
            tracing::warn!(error = %e, at = %described, "herald-postgres job queue cannot listen yet; workers will poll until it can");
        }
        let sql = Sql::new(&schema);
        let ready = Arc::new(Notify::new());
        let (stop_notifier, notifier_stop) = oneshot::channel();
        tokio::spawn(notifier(
            main.clone(),
            sql.notify.clone(),
            Arc::clone(&ready),
            notifier_stop,
        ));
        tracing::debug!(at = %described, "opened herald-postgres job queue");
        Ok(PostgresJobQueue {
            config,
            schema,
            described,
            pool: main,
            progress,
            sql,
            wake,
            ready,
            _stop_listener: stop_listener,
            _stop_notifier: stop_notifier,
        })
    }

    /// The schema holding the job tables.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    pub(super) fn described(&self) -> &str {
        &self.described
    }

    /// A connection for enqueues, reads and dead-set operations.
    pub(super) async fn client(&self) -> Result<Object> {
        self.pool.get().await.map_err(pool_error)
    }

    /// A connection for claims, completions and renewals (see [`JobsConfig::durable_progress`]).
    pub(super) async fn progress_client(&self) -> Result<Object> {
        self.progress.get().await.map_err(pool_error)
    }

    /// Wakes the workers of every process now (inline, on `client`).
    pub(super) async fn notify(&self, client: &Object) -> Result<()> {
        client
            .execute(self.sql.notify.as_str(), &[])
            .await
            .map_err(backend)?;
        Ok(())
    }
}

/// A pool error's message, with the server's words when it is a driver error.
fn pool_error_text(e: &deadpool_postgres::PoolError) -> String {
    match e {
        deadpool_postgres::PoolError::Backend(e) => crate::error_text(e),
        other => other.to_string(),
    }
}

fn build_pool(pg: &Config, size: usize) -> Result<Pool> {
    Pool::builder(Manager::from_config(
        pg.clone(),
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    ))
    .max_size(size)
    .runtime(deadpool_postgres::Runtime::Tokio1)
    // A server that accepts and never answers must not hold a claim or an enqueue for ever.
    .create_timeout(Some(crate::schema::connect_timeout(pg)))
    .build()
    .map_err(|e| Error::backend(format!("cannot build the PostgreSQL job queue's pool: {e}")))
}

/// `pg` with one more server option (`-c name=value`) after those it has.
fn with_option(mut pg: Config, option: &str) -> Config {
    let options = match pg.get_options() {
        Some(existing) if !existing.is_empty() => format!("{existing} {option}"),
        _ => option.to_owned(),
    };
    pg.options(options);
    pg
}
