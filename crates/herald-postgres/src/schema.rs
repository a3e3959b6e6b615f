//! Connecting, and the embedded schema migrations.
//!
//! Every connection Herald opens has `search_path` set to the store's schema, so the SQL names tables
//! unqualified. Migrations are numbered SQL scripts applied in order on open; `herald_migrations` records which
//! have run. They run in one transaction that first takes a transaction-scoped advisory lock derived from the
//! schema name, so several processes opening a fresh database at once serialise there and the later ones find
//! the work done.

use std::time::Duration;

use herald_core::{Error, Result};
use tokio_postgres::error::SqlState;
use tokio_postgres::tls::NoTlsStream;
use tokio_postgres::{Client, Config, Connection, NoTls, Socket};

use crate::config::DEFAULT_CONNECT_TIMEOUT;

/// The migrations, in order. Never edit a released one: append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: events, stream entries, stream versions, and the head row that serialises position assignment.
    r#"
    -- Every event once, in global order. `position` is assigned by the writer holding the `head` row lock,
    -- so positions are contiguous and commit-ordered. `stream`/`version` are where it was appended (the
    -- origin when read through a link). Data and metadata are text: kept byte for byte (not jsonb).
    CREATE TABLE events (
        position    bigint PRIMARY KEY,
        id          uuid   NOT NULL UNIQUE,
        stream      text   COLLATE "C" NOT NULL,
        version     bigint NOT NULL,
        category    text   COLLATE "C" NOT NULL,
        event_type  text   COLLATE "C" NOT NULL,
        data        text   NOT NULL,
        metadata    text   NOT NULL,
        recorded_at bigint NOT NULL -- microseconds since the Unix epoch, UTC
    );
    CREATE INDEX events_by_category ON events (category, position);

    -- What a stream read walks: own events and links, by version (links only since migration 2).
    CREATE TABLE stream_entries (
        stream   text    COLLATE "C" NOT NULL,
        version  bigint  NOT NULL,
        position bigint  NOT NULL,
        is_link  boolean NOT NULL,
        PRIMARY KEY (stream, version)
    );
    -- An event sits at most once in a stream (appended or linked).
    CREATE UNIQUE INDEX stream_entries_by_event ON stream_entries (stream, position);

    -- Existing streams and their versions; "C" collation: listing in byte order, prefix ranges.
    CREATE TABLE streams (
        name    text   COLLATE "C" PRIMARY KEY,
        version bigint NOT NULL
    );

    -- The end of the global log. Every write transaction locks this row first (SELECT ... FOR UPDATE) and
    -- holds it until COMMIT: this is what makes positions gap-free in commit order across processes.
    CREATE TABLE head (
        singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
        position    bigint  NOT NULL,
        recorded_at bigint  NOT NULL
    );
    INSERT INTO head (position, recorded_at) VALUES (0, 0);
    "#,
    // 2: a stream's own events are found in `events` by (stream, version); `stream_entries` keeps links only.
    // An append then writes one row and four index entries per event instead of two rows and five. A delete
    // cannot remove events from the global log, so it records up to which position the stream's events are
    // gone (`deleted_streams`); a stream re-created after a delete starts at version 0 again, which is why
    // `events_by_stream` is not unique. The head row is only locked from now on, never rewritten: the end
    // of the log and its clock are read from `events`. A process still running a migration-1 writer would
    // write the old layout (own entries, deletes without a `deleted_streams` row): two triggers refuse both
    // with an error that says to restart it. Neither costs the current writer anything on appends (the
    // first fires only for own entries, the second only on deletes).
    r#"
    CREATE TABLE deleted_streams (
        name             text   COLLATE "C" PRIMARY KEY,
        through_position bigint NOT NULL
    );
    -- Events whose own entry is gone were removed from their stream by a delete.
    INSERT INTO deleted_streams (name, through_position)
    SELECT e.stream, max(e.position) FROM events e
    WHERE NOT EXISTS (
        SELECT 1 FROM stream_entries se
        WHERE se.stream = e.stream AND se.position = e.position AND NOT se.is_link
    )
    GROUP BY e.stream;
    CREATE INDEX events_by_stream ON events (stream, version);
    DELETE FROM stream_entries WHERE NOT is_link;
    UPDATE head SET position = (SELECT coalesce(max(position), 0) FROM events);

    CREATE FUNCTION {s}.herald_refuse_old_append() RETURNS trigger LANGUAGE plpgsql AS $body$
    BEGIN
        RAISE EXCEPTION 'this Herald event store was upgraded (schema `{s}`, migration 2) while this process '
                        'still runs an older Herald, whose appends would be read wrongly; restart it with the '
                        'current version'
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END
    $body$;
    CREATE TRIGGER herald_refuse_old_append BEFORE INSERT ON {s}.stream_entries
        FOR EACH ROW WHEN (NOT NEW.is_link) EXECUTE FUNCTION {s}.herald_refuse_old_append();

    -- The current writer records a delete in `deleted_streams` before it removes the stream's row.
    CREATE FUNCTION {s}.herald_refuse_old_delete() RETURNS trigger LANGUAGE plpgsql AS $body$
    BEGIN
        IF EXISTS (
            SELECT 1 FROM {s}.events e
            WHERE e.stream = OLD.name
              AND e.position > coalesce(
                  (SELECT d.through_position FROM {s}.deleted_streams d WHERE d.name = OLD.name), 0)
        ) THEN
            RAISE EXCEPTION 'this Herald event store was upgraded (schema `{s}`, migration 2) while this '
                            'process still runs an older Herald, whose deletes would be read wrongly; restart '
                            'it with the current version'
                USING ERRCODE = 'object_not_in_prerequisite_state';
        END IF;
        RETURN OLD;
    END
    $body$;
    CREATE TRIGGER herald_refuse_old_delete BEFORE DELETE ON {s}.streams
        FOR EACH ROW EXECUTE FUNCTION {s}.herald_refuse_old_delete();
    "#,
];

/// The store's migration scripts, in order (for upgrade tests: apply a prefix to build an older layout).
#[doc(hidden)]
pub fn store_migrations() -> &'static [&'static str] {
    MIGRATIONS
}

/// Number of migrations this build knows.
pub(crate) fn latest_version() -> usize {
    MIGRATIONS.len()
}

/// A driver error as text that says what went wrong: a server error keeps its severity, message, SQLSTATE and
/// detail; another error its cause (the driver's own `Display` says only "db error", or omits the cause).
/// Other Herald crates that talk to PostgreSQL use it for their messages too.
pub fn error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut text = format!(
                "PostgreSQL {}: {} ({})",
                db.severity(),
                db.message(),
                db.code().code()
            );
            if let Some(detail) = db.detail() {
                text.push_str(&format!("; {detail}"));
            }
            text
        }
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

/// Whether a driver error means the server could not be reached or the connection broke (refused, reset,
/// closed, the server shutting down or not accepting connections yet: what a restart looks like), rather than
/// the server refusing a statement. Such an error is transient: [`Error::Unavailable`].
pub(crate) fn is_connection_error(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    if let Some(db) = e.as_db_error() {
        return [
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::CONNECTION_EXCEPTION,
            SqlState::CONNECTION_DOES_NOT_EXIST,
            SqlState::CONNECTION_FAILURE,
            SqlState::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
            SqlState::SQLSERVER_REJECTED_ESTABLISHMENT_OF_SQLCONNECTION,
        ]
        .contains(db.code());
    }
    // Refused, reset, broken pipe, end of stream: an I/O error somewhere in the chain.
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        if c.is::<std::io::Error>() {
            return true;
        }
        cause = c.source();
    }
    false
}

/// Wraps a driver error: a lost or refused connection as [`Error::Unavailable`] (transient), anything else as
/// [`Error::Backend`]; shown as [`error_text`] says, with the driver's error kept in the source chain (the
/// backend error's source is a [`DbError`], whose source is the driver's error), so a caller can still read
/// its SQLSTATE.
pub(crate) fn backend(e: tokio_postgres::Error) -> Error {
    if is_connection_error(&e) {
        return Error::Unavailable {
            what: "PostgreSQL".to_owned(),
            reason: error_text(&e),
            source: Some(Box::new(e)),
        };
    }
    Error::backend(DbError {
        text: error_text(&e),
        source: Box::new(e),
    })
}

/// Wraps a connection pool failure: a server or connection error as [`backend`] does, a pool that could not
/// open a connection in time as [`Error::Unavailable`] naming `server`, a closed pool as [`Error::Closed`],
/// anything else as [`Error::Backend`]; each keeps the original as the source.
pub(crate) fn pool_error(e: deadpool_postgres::PoolError) -> Error {
    pool_error_at(e, "PostgreSQL")
}

/// [`pool_error`] naming the server (see [`server`]).
pub(crate) fn pool_error_at(e: deadpool_postgres::PoolError, server: &str) -> Error {
    use deadpool_postgres::PoolError;
    match e {
        PoolError::Backend(e) if is_connection_error(&e) => Error::Unavailable {
            what: server.to_owned(),
            reason: error_text(&e),
            source: Some(Box::new(e)),
        },
        PoolError::Backend(e) => backend(e),
        PoolError::Timeout(_) => Error::Unavailable {
            what: server.to_owned(),
            reason: "no connection could be opened in time (connect_timeout)".to_owned(),
            source: Some(Box::new(e)),
        },
        PoolError::Closed => Error::Closed,
        other => Error::backend(DbError {
            text: format!("PostgreSQL connection pool: {other}"),
            source: Box::new(other),
        }),
    }
}

/// A database (or connection pool) failure with a message that says what went wrong: the driver's own
/// `Display` is often only "db error", so the message is built when the error is wrapped and the driver's
/// error stays reachable as the source.
#[derive(Debug)]
pub(crate) struct DbError {
    pub(crate) text: String,
    pub(crate) source: Box<dyn std::error::Error + Send + Sync>,
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for DbError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// The driver configuration for `url`, with `search_path` pinned to `schema`.
pub(crate) fn pg_config(url: &str, schema: &str) -> Result<Config> {
    let mut config: Config = url
        .parse()
        .map_err(|e| Error::invalid(format!("PostgreSQL URL is not valid: {e}")))?;
    // The schema name is validated to [a-z0-9_], so it needs no quoting or escaping here.
    let options = match config.get_options() {
        Some(existing) if !existing.is_empty() => format!("{existing} -c search_path={schema}"),
        _ => format!("-c search_path={schema}"),
    };
    config.options(options);
    if config.get_application_name().is_none() {
        config.application_name("herald");
    }
    with_timeouts(&mut config);
    Ok(config)
}

/// The driver's default idle time before the first TCP keepalive probe (2 hours).
const DRIVER_KEEPALIVES_IDLE: Duration = Duration::from_secs(2 * 60 * 60);

/// Sets what the connection string leaves unset: the connect timeout ([`DEFAULT_CONNECT_TIMEOUT`]), and TCP
/// keepalives that find a dead peer (a machine gone, a cable cut: no reset ever arrives) in about a minute
/// instead of the driver's two hours: first probe after 30 s idle, then every 10 s, 3 unanswered ones end
/// the connection. They cannot find a server process that is alive and does not answer (its kernel answers
/// the probes); the connect timeout covers that at start-up.
pub(crate) fn with_timeouts(config: &mut Config) {
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
    }
    if config.get_keepalives() && config.get_keepalives_idle() == DRIVER_KEEPALIVES_IDLE {
        config.keepalives_idle(Duration::from_secs(30));
    }
    if config.get_keepalives_interval().is_none() {
        config.keepalives_interval(Duration::from_secs(10));
    }
    if config.get_keepalives_retries().is_none() {
        config.keepalives_retries(3);
    }
}

/// The bound on opening one connection: `connect_timeout` (the driver applies it to each TCP connect only;
/// Herald to the whole of TCP connect, TLS, start-up and authentication, so a server that accepts and never
/// answers cannot hold an open or a reconnect for ever).
pub(crate) fn connect_timeout(config: &Config) -> Duration {
    config
        .get_connect_timeout()
        .copied()
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT)
}

/// Opens one connection within [`connect_timeout`]: the client and the connection future the caller must
/// drive. A server that cannot be reached, refuses, or does not answer in time is [`Error::Unavailable`]
/// naming its host and port; a refusal by the server (authentication, unknown database) is
/// [`Error::Backend`].
pub(crate) async fn open_connection(
    config: &Config,
) -> Result<(Client, Connection<Socket, NoTlsStream>)> {
    let limit = connect_timeout(config);
    match tokio::time::timeout(limit, config.connect(NoTls)).await {
        Ok(Ok(pair)) => Ok(pair),
        Ok(Err(e)) if is_connection_error(&e) => Err(Error::Unavailable {
            what: server(config),
            reason: error_text(&e),
            source: Some(Box::new(e)),
        }),
        Ok(Err(e)) => Err(Error::backend(DbError {
            text: format!(
                "cannot connect to PostgreSQL ({}): {}",
                describe(config),
                error_text(&e)
            ),
            source: Box::new(e),
        })),
        Err(_) => Err(Error::unavailable(
            server(config),
            format!(
                "no answer within {} of connecting (connect_timeout)",
                seconds(limit)
            ),
        )),
    }
}

/// `5 s`, `0.5 s`.
fn seconds(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

/// Opens one connection (within [`connect_timeout`]) and drives it on a Tokio task.
pub(crate) async fn connect(config: &Config) -> Result<Client> {
    let (client, connection) = open_connection(config).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "herald-postgres connection ended");
        }
    });
    Ok(client)
}

/// Host, port and database, for messages (never the password).
pub(crate) fn describe(config: &Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_default();
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "host {host}, port {port}, database {}",
        config.get_dbname().unwrap_or("(default)")
    )
}

/// `PostgreSQL (host H, port P, database D)`: the server a connection goes to, as [`Error::Unavailable`]
/// names it (never the password).
pub(crate) fn server(config: &Config) -> String {
    format!("PostgreSQL ({})", describe(config))
}

/// A stable 64-bit key for the advisory lock guarding one component's migrations in `schema` (FNV-1a).
fn lock_key(component: &str, schema: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in component
        .bytes()
        .chain("-migrate:".bytes())
        .chain(schema.bytes())
    {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash as i64
}

/// Creates the store's schema when missing and applies its pending migrations.
pub(crate) async fn migrate(client: &mut Client, schema: &str) -> Result<()> {
    apply_migrations(client, schema, "herald", MIGRATIONS).await
}

/// Applies the pending `migrations` of one `component` (e.g. `"herald-jobs"`) in `schema`: creates the schema
/// when missing, records what ran in `{component}_migrations` (dashes as underscores), and runs everything in
/// one transaction under an advisory lock derived from the component and the schema, so several processes
/// opening a fresh database at once serialise there and the later ones find the work done. `{s}` in a
/// script is replaced by the schema name. Never edit a released script: append a new one.
///
/// Other Herald crates that keep tables beside the event store (durable jobs, checkpoints) use this too, so
/// every component migrates the same way.
pub async fn apply_migrations(
    client: &mut Client,
    schema: &str,
    component: &str,
    migrations: &[&str],
) -> Result<()> {
    // Both names end up in SQL text: refuse anything but plain identifiers before touching the database.
    crate::validate_schema_name(schema)?;
    let component_ok = component
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase())
        && component.len() <= 32
        && component
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !component_ok {
        return Err(Error::invalid(format!(
            "migration component `{component}` is not valid: use 1 to 32 lowercase ASCII letters, digits, `-` \
             and `_`, starting with a letter"
        )));
    }
    let table = format!("{}_migrations", component.replace('-', "_"));
    let tx = client.transaction().await.map_err(backend)?;
    // First a lock for the schema (every component's `CREATE SCHEMA IF NOT EXISTS` races with the others':
    // the later one fails on a catalog index), then the component's; always in this order.
    tx.execute(
        "SELECT pg_advisory_xact_lock($1), pg_advisory_xact_lock($2)",
        &[&lock_key("schema", schema), &lock_key(component, schema)],
    )
    .await
    .map_err(backend)?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}.{table} (
             version    integer     PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         );"
    ))
    .await
    .map_err(backend)?;
    let applied: i32 = tx
        .query_one(
            &format!("SELECT coalesce(max(version), 0) FROM {schema}.{table}"),
            &[],
        )
        .await
        .map_err(backend)?
        .get(0);
    let applied = applied as usize;
    if applied > migrations.len() {
        return Err(Error::backend(format!(
            "the {component} tables in schema `{schema}` are at migration {applied}, newer than this build \
             knows ({}); upgrade Herald",
            migrations.len()
        )));
    }
    for (index, sql) in migrations.iter().enumerate().skip(applied) {
        let version = index + 1;
        tx.batch_execute(&sql.replace("{s}", schema))
            .await
            .map_err(|e| {
                Error::backend(format!(
                    "{component} migration {version} in schema `{schema}` failed: {}",
                    backend(e)
                ))
            })?;
        tx.execute(
            &format!("INSERT INTO {schema}.{table} (version) VALUES ($1)"),
            &[&(version as i32)],
        )
        .await
        .map_err(backend)?;
        tracing::info!(schema, component, migration = version, "applied migration");
    }
    tx.commit().await.map_err(backend)
}
