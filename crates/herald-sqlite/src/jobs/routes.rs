//! Delivery routes on SQLite (the [`DeliveryRoutes`] port): the `herald_routes` table (job migration 2),
//! written through the job queue's writer, and the append path's read of it ([`load_matchers`]), once per
//! write transaction of the store's writer. SQLite has one writer at a time, so a route added by any
//! process before a batch's `BEGIN IMMEDIATE` is seen by that batch, and none can change during it.

use async_trait::async_trait;
use herald_core::delivery::{
    DeliveryRoute, DeliveryRoutes, RouteMatcher, StreamPattern, route_from_columns, target_json,
};
use herald_core::{Error, Result};
use rusqlite::{Connection, OptionalExtension, params};

use super::SqliteJobQueue;
use crate::schema::backend;

const COLUMNS: &str = "name, stream_prefix, stream_exact, event_type, target, max_attempts";

/// The routes as the append path matches them. An empty table costs one indexless scan of nothing.
pub(crate) fn load_matchers(conn: &Connection) -> rusqlite::Result<Vec<RouteMatcher>> {
    let mut stmt = conn.prepare_cached(
        "SELECT name, stream_prefix, stream_exact, event_type, kind, max_attempts FROM herald_routes
         ORDER BY name",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(RouteMatcher {
            name: r.get(0)?,
            stream: StreamPattern {
                prefix: r.get(1)?,
                exact: r.get(2)?,
            },
            event_type: r.get(3)?,
            kind: r.get(4)?,
            max_attempts: r.get::<_, i64>(5)?.clamp(1, i64::from(u32::MAX)) as u32,
        })
    })?;
    rows.collect()
}

fn decode(
    r: &rusqlite::Row<'_>,
) -> rusqlite::Result<(String, String, bool, Option<String>, String, i64)> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
    ))
}

fn to_route(
    (name, prefix, exact, event_type, target, attempts): (
        String,
        String,
        bool,
        Option<String>,
        String,
        i64,
    ),
) -> Result<DeliveryRoute> {
    route_from_columns(name, prefix, exact, event_type, &target, attempts)
}

#[async_trait]
impl DeliveryRoutes for SqliteJobQueue {
    async fn add_route(&self, route: DeliveryRoute) -> Result<()> {
        route.validate()?;
        let now = self.now();
        self.write(move |conn| {
            let inserted = conn
                .prepare_cached(
                    "INSERT INTO herald_routes (name, stream_prefix, stream_exact, event_type, kind, target,
                        max_attempts, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (name) DO NOTHING",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        route.name,
                        route.stream.prefix,
                        route.stream.exact,
                        route.event_type,
                        route.target.kind(),
                        target_json(&route.target),
                        i64::from(route.max_attempts),
                        now
                    ])
                })
                .map_err(backend)?;
            if inserted == 0 {
                return Err(Error::invalid(format!(
                    "route `{}` already exists; remove it first",
                    route.name
                )));
            }
            Ok(())
        })
        .await
    }

    async fn routes(&self) -> Result<Vec<DeliveryRoute>> {
        let rows = self
            .read(|conn| {
                let mut stmt = conn.prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM herald_routes ORDER BY name"
                ))?;
                let rows = stmt.query_map([], decode)?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        rows.into_iter().map(to_route).collect()
    }

    async fn route(&self, name: &str) -> Result<Option<DeliveryRoute>> {
        let name = name.to_owned();
        let row = self
            .read(move |conn| {
                conn.prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM herald_routes WHERE name = ?1"
                ))?
                .query_row([name], decode)
                .optional()
            })
            .await?;
        row.map(to_route).transpose()
    }

    async fn remove_route(&self, name: &str) -> Result<bool> {
        let name = name.to_owned();
        self.write(move |conn| {
            conn.prepare_cached("DELETE FROM herald_routes WHERE name = ?1")
                .and_then(|mut s| s.execute([name]))
                .map(|n| n > 0)
                .map_err(backend)
        })
        .await
    }
}
