//! PostgreSQL implementations: checkpoints, dynamic group membership and transactional projections, in the
//! herald-postgres store's schema, in tables of their own (`herald_es_checkpoints`, `herald_es_leases`,
//! `herald_es_groups`, `herald_es_group_members`, `herald_es_group_fences`, plus the read model's tables).
//! Each opens its own connection with `search_path` set to that schema, so a read model's unqualified table
//! names land there; herald-postgres's tables are never touched.
//!
//! [`PostgresProjection`] writes each batch of read-model changes **and** its checkpoint in one transaction:
//! after a crash they agree, so every event is applied exactly once. The same transaction checks the run's
//! fencing token under a share lock on the lease row (`herald_es_leases`, see [`crate::lease`]): a second
//! runner of the same name waits for the lease, and a runner overtaken while paused (even inside its
//! transaction: it holds no lock the new owner needs) has its batch refused and rolled back.

use tokio_postgres::{Client, NoTls};

use crate::error::{EsError, Result};

mod checkpoint;
mod projection;

pub use checkpoint::PostgresCheckpointStore;
pub use projection::{PostgresProjection, PostgresReadModel};

/// The server's message, code and detail, or the cause (tokio-postgres alone displays only "db error").
pub(super) fn pg_error(what: &'static str) -> impl Fn(tokio_postgres::Error) -> EsError {
    move |e| EsError::storage(what, herald_postgres::error_text(&e))
}

fn validate_schema(schema: &str) -> Result<()> {
    let ok = !schema.is_empty()
        && schema.len() <= 48
        && !schema.starts_with("pg_")
        && !schema.starts_with(|c: char| c.is_ascii_digit())
        && schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(EsError::InvalidInput(format!(
            "schema name `{schema}` is not valid: 1 to 48 lowercase ASCII letters, digits and `_`, not starting with a digit or `pg_`"
        )))
    }
}

/// This crate's tables, in `{s}` (see [`herald_postgres::apply_migrations`]). Never edit a released script:
/// append a new one. Script 1 uses `IF NOT EXISTS`: stores created before the migrator find their tables.
const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE IF NOT EXISTS {s}.herald_es_checkpoints (
        name       TEXT        PRIMARY KEY,
        cursor     BIGINT      NOT NULL,
        updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
    );
    CREATE TABLE IF NOT EXISTS {s}.herald_es_groups (
        name       TEXT   PRIMARY KEY,
        generation BIGINT NOT NULL,
        members    TEXT[] NOT NULL
    );
    CREATE TABLE IF NOT EXISTS {s}.herald_es_group_members (
        group_name   TEXT   NOT NULL,
        member       TEXT   NOT NULL,
        expires_at   BIGINT NOT NULL,
        acknowledged BIGINT NOT NULL,
        PRIMARY KEY (group_name, member)
    );",
    "
    CREATE TABLE {s}.herald_es_leases (
        name       TEXT   PRIMARY KEY,
        owner      TEXT   NOT NULL,
        token      BIGINT NOT NULL,
        expires_at BIGINT NOT NULL
    );
    CREATE TABLE {s}.herald_es_group_fences (
        name    TEXT   PRIMARY KEY,
        settled BIGINT NOT NULL
    );",
];

/// Connects (`connection`: a tokio-postgres connection string or `postgres://` URL without herald's own
/// parameters), sets `search_path` to `schema` and creates this crate's tables.
pub(super) async fn connect(connection: &str, schema: &str) -> Result<Client> {
    validate_schema(schema)?;
    let err = pg_error("connecting to PostgreSQL");
    let (mut client, conn) = tokio_postgres::connect(connection, NoTls)
        .await
        .map_err(&err)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::warn!(error = %e, "herald-es PostgreSQL connection ended");
        }
    });
    // The same migrator as the event store's and the job tables' (herald_postgres::apply_migrations): one
    // transaction under advisory locks, so members of a group starting together on a fresh schema (and an
    // event store opened at the same moment) create the schema and tables one at a time.
    herald_postgres::apply_migrations(&mut client, schema, "herald-es", MIGRATIONS).await?;
    client
        .batch_execute(&format!("SET search_path TO {schema}"))
        .await
        .map_err(&err)?;
    Ok(client)
}

pub(super) fn to_sql(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(super) fn from_sql(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}
