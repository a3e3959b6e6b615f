//! Delivery routes on PostgreSQL (the [`DeliveryRoutes`] port): the `herald_routes` table (job migration 2)
//! and the append hook every store runs: one `INSERT … SELECT` per append that joins the appended events with
//! the routes table, sent in the append's statement pipeline (no round trip of its own) and so inside its
//! transaction. Under READ COMMITTED the statement sees every route committed before it starts, so a route
//! added by any process applies to every append that starts after `add` returned; there is no cache to go
//! stale. The join matches on the columns [`StreamPattern`](herald_core::delivery::StreamPattern) stores
//! (prefix or exact name, event type or any), the same rule [`delivery_jobs`](herald_core::delivery::delivery_jobs)
//! applies on the other backends, and builds [`DeliveryJobArgs`](herald_core::delivery::DeliveryJobArgs)
//! with the same keys.

use async_trait::async_trait;
use herald_core::delivery::{DeliveryRoute, DeliveryRoutes, route_from_columns, target_json};
use herald_core::{Error, Result};
use tokio_postgres::Row;

use super::PostgresJobQueue;
use crate::hook::{AppendHook, AppendedEvent, HookError, HookParam, HookWrites};
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

/// The append hook of every store: the delivery jobs of an append, computed by the database from the routes
/// table inside the append's transaction. Jobs ready now `NOTIFY` the workers at commit, like a job router's.
pub(crate) struct DeliveryHook {
    pub(crate) sql: String,
    pub(crate) clock: std::sync::Arc<dyn herald_core::Clock>,
}

impl DeliveryHook {
    pub(crate) fn new(schema: &str) -> Self {
        let s = schema;
        DeliveryHook {
            sql: format!(
                "WITH ins AS (
                    INSERT INTO {s}.herald_jobs (job_id, queue, kind, args, metadata, priority, state, run_at,
                        attempt, max_attempts, unique_key, order_key, errors, enqueued_at)
                    SELECT gen_random_uuid(), r.kind, r.kind,
                        json_build_object('route', r.name, 'event_id', e.id, 'stream', $1::text,
                            'event_type', e.event_type, 'position', e.position)::text,
                        '{{}}', 0, 0, $5::int8, 0, r.max_attempts, NULL, NULL, '[]', $5::int8
                    FROM unnest($2::uuid[], $3::text[], $4::int8[]) WITH ORDINALITY AS e(id, event_type, position, ord)
                    JOIN {s}.herald_routes r
                      ON CASE WHEN r.stream_exact THEN r.stream_prefix = $1::text
                              ELSE starts_with($1::text, r.stream_prefix) END
                     AND (r.event_type IS NULL OR r.event_type = e.event_type)
                    ORDER BY e.ord, r.name
                    RETURNING state
                 ), woke AS (
                    SELECT pg_notify('herald_jobs_{s}', '') FROM ins LIMIT 1
                 )
                 SELECT count(*) FROM woke"
            ),
            clock: std::sync::Arc::new(herald_core::SystemClock),
        }
    }
}

impl AppendHook for DeliveryHook {
    fn on_append(
        &self,
        stream: &str,
        events: &[AppendedEvent<'_>],
        writes: &mut HookWrites,
    ) -> std::result::Result<(), HookError> {
        let ids: Vec<uuid::Uuid> = events.iter().map(|e| e.id).collect();
        let types: Vec<String> = events.iter().map(|e| e.event_type.to_owned()).collect();
        let positions: Vec<i64> = events.iter().map(|e| e.position as i64).collect();
        let params: Vec<HookParam> = vec![
            Box::new(stream.to_owned()),
            Box::new(ids),
            Box::new(types),
            Box::new(positions),
            Box::new(self.clock.now_micros()),
        ];
        writes.push(self.sql.clone(), params)?;
        Ok(())
    }
}
