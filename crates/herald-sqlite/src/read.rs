//! Reads: a small pool of connections that run on tokio's blocking pool. In WAL mode a reader works on a
//! snapshot and never waits for the writer, so reads do not queue behind group commits.
//!
//! A page read is one SQL statement that applies scope, direction, start, page size, type filter and time
//! range, so a filtered read never drags non-matching rows into Rust.

use std::sync::{Arc, Mutex, PoisonError};

use herald_core::query::{Direction, ReadQuery, ReadScope};
use herald_core::version::stored_u64;
use herald_core::{Error, Origin, RecordedEvent, Result, StreamInfo, timefmt};
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, Row, params_from_iter};
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::schema::backend;

/// Read connections; a semaphore permit guarantees a free connection in the vector.
pub(crate) struct ReadPool {
    connections: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
}

/// Hands a connection back to the pool even when the read panics.
struct Lease<'a> {
    pool: &'a ReadPool,
    conn: Option<Connection>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool
                .connections
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(conn);
        }
    }
}

impl ReadPool {
    pub(crate) fn new(connections: Vec<Connection>) -> Self {
        let permits = Arc::new(Semaphore::new(connections.len()));
        ReadPool {
            connections: Mutex::new(connections),
            permits,
        }
    }

    /// Runs `f` on a pooled connection on the blocking thread pool.
    pub(crate) async fn run<T, F>(self: &Arc<Self>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| Error::Closed)?;
        let pool = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let conn = pool
                .connections
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop();
            let lease = Lease { pool: &pool, conn };
            let result = match &lease.conn {
                Some(conn) => f(conn),
                None => Err(Error::backend("read pool lost a connection")),
            };
            drop(lease);
            drop(permit);
            result
        })
        .await
        .map_err(|e| Error::backend(format!("read task failed: {e}")))?
    }
}

const EVENT_COLUMNS: &str =
    "e.id, e.type, e.data, e.metadata, e.recorded_at, e.position, e.stream, e.version";

/// Builds the page query: SQL text (cached as a prepared statement per shape) and its parameters.
fn page_statement(query: &ReadQuery) -> (String, Vec<Value>) {
    let forward = query.direction == Direction::Forward;
    let (cmp, order) = if forward {
        (">=", "ASC")
    } else {
        ("<=", "DESC")
    };
    let from = query
        .from
        .map_or(if forward { 0 } else { i64::MAX }, |f| f as i64);
    let mut params: Vec<Value> = Vec::with_capacity(4 + query.types.len());
    let mut sql = String::with_capacity(256);
    let key = match &query.scope {
        ReadScope::Stream(stream) => {
            // CROSS JOIN keeps stream_entries as the outer loop: walk the stream by version, look events up
            // by rowid.
            sql.push_str(&format!(
                "SELECT {EVENT_COLUMNS}, se.version, se.is_link \
                 FROM stream_entries se CROSS JOIN events e ON e.position = se.position \
                 WHERE se.stream = ? AND se.version {cmp} ?"
            ));
            params.push(Value::Text(stream.as_str().to_owned()));
            "se.version"
        }
        ReadScope::All => {
            sql.push_str(&format!(
                "SELECT {EVENT_COLUMNS} FROM events e WHERE e.position {cmp} ?"
            ));
            "e.position"
        }
        ReadScope::Category(category) => {
            sql.push_str(&format!(
                "SELECT {EVENT_COLUMNS} FROM events e INDEXED BY events_by_category \
                 WHERE e.category = ? AND e.position {cmp} ?"
            ));
            params.push(Value::Text(category.clone()));
            "e.position"
        }
    };
    params.push(Value::Integer(from));
    if !query.types.is_empty() {
        sql.push_str(" AND e.type IN (");
        for (i, t) in query.types.iter().enumerate() {
            sql.push_str(if i == 0 { "?" } else { ", ?" });
            params.push(Value::Text(t.clone()));
        }
        sql.push(')');
    }
    if let Some(after) = query.recorded_after {
        sql.push_str(" AND e.recorded_at > ?");
        params.push(Value::Integer(timefmt::to_unix_micros(after)));
    }
    if let Some(before) = query.recorded_before {
        sql.push_str(" AND e.recorded_at < ?");
        params.push(Value::Integer(timefmt::to_unix_micros(before)));
    }
    sql.push_str(&format!(" ORDER BY {key} {order} LIMIT ?"));
    params.push(Value::Integer(query.page_size() as i64));
    (sql, params)
}

/// One page of `query` (already validated).
pub(crate) fn read_page(conn: &Connection, query: &ReadQuery) -> Result<Vec<RecordedEvent>> {
    let (sql, params) = page_statement(query);
    let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
    let mut rows = stmt.query(params_from_iter(params)).map_err(backend)?;
    let mut page = Vec::with_capacity(query.page_size().min(1024));
    let through_stream = match &query.scope {
        ReadScope::Stream(s) => Some(s.as_str()),
        _ => None,
    };
    while let Some(row) = rows.next().map_err(backend)? {
        let mut event = recorded(row)?;
        if let Some(stream) = through_stream {
            let version: i64 = row.get(8).map_err(backend)?;
            let is_link: bool = row.get(9).map_err(backend)?;
            if is_link {
                event.origin = Some(Origin {
                    stream: std::mem::replace(&mut event.stream, stream.to_owned()),
                    version: event.version,
                });
            }
            event.version = stored_u64(version, || {
                format!(
                    "the entry of stored event {} in stream `{stream}`: version",
                    event.id
                )
            })?;
        }
        page.push(event);
    }
    Ok(page)
}

/// Maps the [`EVENT_COLUMNS`] of a row to an event as appended. A row that does not decode (a damaged or
/// hand-edited file) is an error naming the event by position, and stream and version when those decode.
fn recorded(row: &Row<'_>) -> Result<RecordedEvent> {
    // The position is the rowid: always an integer, but a negative one was never written by Herald (a damaged
    // file): the event is named by id, as its position is what is damaged. Wrapped into a huge number it
    // would send a paged read round in circles.
    let position = row.get::<_, i64>(5).map_err(backend)?;
    let position = stored_u64(position, || match row.get::<_, [u8; 16]>(0) {
        Ok(id) => format!("the position of stored event {}", Uuid::from_bytes(id)),
        Err(_) => "the position of a stored event".to_owned(),
    })?;
    let corrupt = |e: Error| {
        let stream = row.get::<_, String>(6).ok();
        let version = row
            .get::<_, i64>(7)
            .ok()
            .and_then(|v| u64::try_from(v).ok());
        Error::corrupt_event(position, stream.as_deref(), version, e)
    };
    let column = |e: rusqlite::Error| corrupt(backend(e));
    let id: [u8; 16] = row.get(0).map_err(column)?;
    let recorded_at: i64 = row.get(4).map_err(column)?;
    let version: i64 = row.get(7).map_err(column)?;
    Ok(RecordedEvent {
        id: Uuid::from_bytes(id),
        event_type: row.get(1).map_err(column)?,
        data: row.get(2).map_err(column)?,
        metadata: row.get(3).map_err(column)?,
        recorded_at: timefmt::from_unix_micros(recorded_at).map_err(corrupt)?,
        position,
        stream: row.get(6).map_err(column)?,
        version: stored_u64(version, || "its version".to_owned()).map_err(corrupt)?,
        origin: None,
    })
}

pub(crate) fn event(conn: &Connection, id: Uuid) -> Result<Option<RecordedEvent>> {
    let sql = format!("SELECT {EVENT_COLUMNS} FROM events e WHERE e.id = ?1");
    let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
    let mut rows = stmt.query([id.as_bytes()]).map_err(backend)?;
    match rows.next().map_err(backend)? {
        Some(row) => recorded(row).map(Some),
        None => Ok(None),
    }
}

pub(crate) fn stream_version(conn: &Connection, stream: &str) -> Result<Option<u64>> {
    conn.prepare_cached("SELECT version FROM streams WHERE name = ?1")
        .map_err(backend)?
        .query_row([stream], |r| r.get::<_, i64>(0))
        .optional()
        .map(|v| v.map(|v| v as u64))
        .map_err(backend)
}

/// The smallest string greater than every string starting with `prefix`, when one exists: the prefix with
/// its last character incremented (UTF-8 byte order is code point order, which SQLite's BINARY collation uses).
fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = (u32::from(last) + 1..=u32::from(char::MAX)).find_map(char::from_u32);
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

pub(crate) fn streams(
    conn: &Connection,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<StreamInfo>> {
    let lower = match after {
        Some(after) if after >= prefix => after,
        _ => prefix,
    };
    let upper = prefix_upper_bound(prefix);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    // Separate statement shapes, so SQLite sees plain range bounds and stops at the end of the prefix.
    let mut sql = String::from("SELECT name, version FROM streams WHERE name >= ?1");
    let mut values: Vec<Value> = vec![Value::Text(lower.to_owned())];
    if let Some(after) = after {
        sql.push_str(&format!(" AND name > ?{}", values.len() + 1));
        values.push(Value::Text(after.to_owned()));
    }
    if let Some(upper) = upper {
        sql.push_str(&format!(" AND name < ?{}", values.len() + 1));
        values.push(Value::Text(upper));
    }
    sql.push_str(&format!(" ORDER BY name LIMIT ?{}", values.len() + 1));
    values.push(Value::Integer(limit));
    let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
    let rows = stmt
        .query_map(params_from_iter(values), |r| {
            Ok(StreamInfo {
                stream: r.get(0)?,
                version: r.get::<_, i64>(1)? as u64,
            })
        })
        .map_err(backend)?;
    let mut out = Vec::new();
    for row in rows {
        let info = row.map_err(backend)?;
        // The range already guarantees it; kept as a cheap safety net.
        if info.stream.starts_with(prefix) {
            out.push(info);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_bounds() {
        assert_eq!(prefix_upper_bound("ab").as_deref(), Some("ac"));
        assert_eq!(prefix_upper_bound(""), None);
        assert_eq!(
            prefix_upper_bound("a\u{D7FF}").as_deref(),
            Some("a\u{E000}")
        );
        assert_eq!(prefix_upper_bound("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_upper_bound("\u{10FFFF}"), None);
    }
}
