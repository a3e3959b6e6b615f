//! Delivery routes on PostgreSQL (the [`DeliveryRoutes`] port): the `herald_routes` table (job migration 2)
//! and the statement every store's writer sends: one `INSERT … SELECT` per group-commit batch that joins all
//! the batch's appended events with the routes table, sent in the batch's write pipeline (no round trip of its
//! own) and so inside its transaction. Under READ COMMITTED the statement sees every route committed before it
//! starts, so a route added by any process applies to every append that starts after `add` returned; there
//! is no cache to go stale. (It was one statement per append, run while the batch holds the head-row lock:
//! 16 concurrent appenders paid ~30 %; see `benchmarks/delivery-routes-2026-12-02.md`.) The join matches on the columns [`StreamPattern`](herald_core::delivery::StreamPattern) stores
//! (prefix or exact name, event type or any), the same rule [`delivery_jobs`](herald_core::delivery::delivery_jobs)
//! applies on the other backends, and builds [`DeliveryJobArgs`](herald_core::delivery::DeliveryJobArgs)
//! with the same keys.

use async_trait::async_trait;
use herald_core::delivery::{DeliveryRoute, DeliveryRoutes, route_from_columns, target_json};
use herald_core::{Error, Result};
use tokio_postgres::Row;

use super::PostgresJobQueue;
use crate::schema::backend;

const COLUMNS: &str = "name, stream_prefix, stream_exact, event_type, target, max_attempts";

fn to_route(row: &Row) -> Result<DeliveryRoute> {
    route_from_columns(
        row.get(0),
        row.get(1),
        row.get(2),
        row.get(3),
        row.get::<_, &str>(4),
        i64::from(row.get::<_, i32>(5)),
    )
}

#[async_trait]
impl DeliveryRoutes for PostgresJobQueue {
    async fn add_route(&self, route: DeliveryRoute) -> Result<()> {
        route.validate()?;
        let s = &self.schema;
        let now = self.config.clock.now_micros();
        let client = self.client().await?;
        let inserted = client
            .execute(
                &format!(
                    "INSERT INTO {s}.herald_routes (name, stream_prefix, stream_exact, event_type, kind, target,
                        max_attempts, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (name) DO NOTHING"
                ),
                &[
                    &route.name,
                    &route.stream.prefix,
                    &route.stream.exact,
                    &route.event_type,
                    &route.target.kind(),
                    &target_json(&route.target),
                    &(route.max_attempts as i32),
                    &now,
                ],
            )
            .await
            .map_err(backend)?;
        if inserted == 0 {
            return Err(Error::invalid(format!(
                "route `{}` already exists; remove it first",
                route.name
            )));
        }
        Ok(())
    }

    async fn routes(&self) -> Result<Vec<DeliveryRoute>> {
        let s = &self.schema;
        let client = self.client().await?;
        let rows = client
            .query(
                &format!("SELECT {COLUMNS} FROM {s}.herald_routes ORDER BY name"),
                &[],
            )
            .await
            .map_err(backend)?;
        rows.iter().map(to_route).collect()
    }

    async fn route(&self, name: &str) -> Result<Option<DeliveryRoute>> {
        let s = &self.schema;
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!("SELECT {COLUMNS} FROM {s}.herald_routes WHERE name = $1"),
                &[&name],
            )
            .await
            .map_err(backend)?;
        row.as_ref().map(to_route).transpose()
    }

    async fn remove_route(&self, name: &str) -> Result<bool> {
        let s = &self.schema;
        let client = self.client().await?;
        let n = client
            .execute(
                &format!("DELETE FROM {s}.herald_routes WHERE name = $1"),
                &[&name],
            )
            .await
            .map_err(backend)?;
        Ok(n > 0)
    }
}

/// The delivery statement of the store in `schema`: the delivery jobs of every event a batch appends, computed
/// by the database from the routes table inside the batch's transaction. The writer sends it once per batch
/// that appends events, in the batch's write pipeline (no round trip of its own): `$1`–`$4` are the batch's
/// events (stream, id, type, position; the arrays the event insert gets), `$5` the enqueue clock. Jobs are
/// inserted in the order of the events' positions, then of the routes' names, as if appended one by one. Jobs
/// ready now `NOTIFY` the workers at commit, like a job router's.
pub(crate) fn delivery_statement(schema: &str) -> String {
    let s = schema;
    format!(
        "WITH ins AS (
            INSERT INTO {s}.herald_jobs (job_id, queue, kind, args, metadata, priority, state, run_at,
                attempt, max_attempts, unique_key, order_key, errors, enqueued_at)
            SELECT gen_random_uuid(), r.kind, r.kind,
                json_build_object('route', r.name, 'event_id', e.id, 'stream', e.stream,
                    'event_type', e.event_type, 'position', e.position)::text,
                '{{}}', 0, 0, $5::int8, 0, r.max_attempts, NULL, NULL, '[]', $5::int8
            FROM unnest($1::text[], $2::uuid[], $3::text[], $4::int8[]) AS e(stream, id, event_type, position)
            JOIN {s}.herald_routes r
              ON CASE WHEN r.stream_exact THEN r.stream_prefix = e.stream
                      ELSE starts_with(e.stream, r.stream_prefix) END
             AND (r.event_type IS NULL OR r.event_type = e.event_type)
            ORDER BY e.position, r.name
            RETURNING state
         ), woke AS (
            SELECT pg_notify('herald_jobs_{s}', '') FROM ins LIMIT 1
         )
         SELECT count(*) FROM woke"
    )
}
