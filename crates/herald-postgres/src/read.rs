//! Reads: a pool of connections (opened on demand), each statement prepared once per connection.
//!
//! A page read is one SQL statement that applies scope, direction, start, page size, type filter and time
//! range. Each statement runs on its own snapshot; because positions become visible in order (see the crate
//! docs), a snapshot always holds a gap-free prefix of the global log.

use deadpool_postgres::{Object, Pool};
use herald_core::query::{Direction, ReadQuery, ReadScope};
use herald_core::version::stored_u64;
use std::time::Duration;

use herald_core::{Error, Origin, RecordedEvent, Result, StreamInfo, timefmt};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use crate::schema::{backend, pool_error_at};

type Param = Box<dyn ToSql + Sync + Send>;

/// The read connections of a store, and the server they go to (for messages).
pub(crate) struct Reads {
    pub(crate) pool: Pool,
    /// See [`crate::schema::server`].
    pub(crate) server: String,
    /// How long one read (one statement) may wait for the server's answer.
    pub(crate) answer_timeout: Duration,
}

/// The outcome of one read on `client` that had `reads.answer_timeout` to answer. A server that did not
/// answer in time (alive but stalled: TCP keepalives cannot tell) is [`Error::Unavailable`], and the
/// connection, which may still be waiting for that answer, is taken out of the pool and closed, so the next
/// read opens a fresh one instead of queueing behind it.
fn settle<T>(
    reads: &Reads,
    client: Object,
    answer: std::result::Result<Result<T>, tokio::time::error::Elapsed>,
) -> Result<T> {
    match answer {
        Ok(result) => result,
        Err(_) => {
            drop(Object::take(client));
            Err(Error::unavailable(
                reads.server.clone(),
                format!(
                    "no answer to a read within {} s (read_timeout)",
                    reads.answer_timeout.as_secs_f64()
                ),
            ))
        }
    }
}

/// A read connection: a server that cannot be reached, or opens no connection within `connect_timeout`, is
/// [`Error::Unavailable`] naming it.
pub(crate) async fn client(reads: &Reads) -> Result<Object> {
    reads
        .pool
        .get()
        .await
        .map_err(|e| pool_error_at(e, &reads.server))
}

const EVENT_COLUMNS: &str =
    "e.id, e.event_type, e.data, e.metadata, e.recorded_at, e.position, e.stream, e.version";

/// Builds the page query: SQL text (prepared once per shape and connection) and its parameters.
///
/// A stream holds its own events (rows of `events` with that stream, after the stream's last delete) and
/// links (`stream_entries`); a stream read merges both by version, each side already filtered and limited,
/// then fetches the columns.
fn page_statement(query: &ReadQuery) -> (String, Vec<Param>) {
    let forward = query.direction == Direction::Forward;
    let (cmp, order) = if forward {
        (">=", "ASC")
    } else {
        ("<=", "DESC")
    };
    let from = query
        .from
        .map_or(if forward { 0 } else { i64::MAX }, |f| f as i64);
    let mut params: Vec<Param> = Vec::with_capacity(6);
    // The scope's parameters come first, then the filters', then the page size.
    match &query.scope {
        ReadScope::Stream(stream) => params.push(Box::new(stream.as_str().to_owned())),
        ReadScope::Category(category) => params.push(Box::new(category.clone())),
        ReadScope::All => {}
    }
    params.push(Box::new(from));
    let from_param = params.len();
    let mut push = |param: Param| {
        params.push(param);
        params.len()
    };
    let types = (!query.types.is_empty()).then(|| push(Box::new(query.types.clone())));
    let after = query
        .recorded_after
        .map(|t| push(Box::new(timefmt::to_unix_micros(t))));
    let before = query
        .recorded_before
        .map(|t| push(Box::new(timefmt::to_unix_micros(t))));
    let limit = push(Box::new(query.page_size() as i64));
    // The type and time filters, on the event row behind `alias`.
    let filtered = |alias: &str| {
        let mut sql = String::new();
        if let Some(n) = types {
            sql.push_str(&format!(" AND {alias}.event_type = ANY(${n}::text[])"));
        }
        if let Some(n) = after {
            sql.push_str(&format!(" AND {alias}.recorded_at > ${n}"));
        }
        if let Some(n) = before {
            sql.push_str(&format!(" AND {alias}.recorded_at < ${n}"));
        }
        sql
    };
    let sql = match &query.scope {
        ReadScope::Stream(_) => format!(
            "SELECT {EVENT_COLUMNS}, x.v, x.is_link FROM (
                (SELECT o.position, o.version AS v, false AS is_link FROM events o
                 WHERE o.stream = $1 AND o.version {cmp} ${from_param}
                   AND o.position > coalesce((SELECT d.through_position FROM deleted_streams d
                                              WHERE d.name = $1), 0){own}
                 ORDER BY o.version {order} LIMIT ${limit})
                UNION ALL
                (SELECT se.position, se.version, true FROM stream_entries se
                 JOIN events l ON l.position = se.position
                 WHERE se.stream = $1 AND se.version {cmp} ${from_param}{linked}
                 ORDER BY se.version {order} LIMIT ${limit})
             ) x JOIN events e ON e.position = x.position
             ORDER BY x.v {order} LIMIT ${limit}",
            own = filtered("o"),
            linked = filtered("l"),
        ),
        ReadScope::All => format!(
            "SELECT {EVENT_COLUMNS} FROM events e WHERE e.position {cmp} ${from_param}{f} \
             ORDER BY e.position {order} LIMIT ${limit}",
            f = filtered("e"),
        ),
        ReadScope::Category(_) => format!(
            "SELECT {EVENT_COLUMNS} FROM events e WHERE e.category = $1 AND e.position {cmp} ${from_param}{f} \
             ORDER BY e.position {order} LIMIT ${limit}",
            f = filtered("e"),
        ),
    };
    (sql, params)
}

/// One page of `query` (already validated).
pub(crate) async fn read_page(reads: &Reads, query: &ReadQuery) -> Result<Vec<RecordedEvent>> {
    let client = client(reads).await?;
    let answer = tokio::time::timeout(reads.answer_timeout, page_on(&client, query)).await;
    settle(reads, client, answer)
}

async fn page_on(client: &Object, query: &ReadQuery) -> Result<Vec<RecordedEvent>> {
    let (sql, params) = page_statement(query);
    let statement = client.prepare_cached(&sql).await.map_err(backend)?;
    let refs: Vec<&(dyn ToSql + Sync)> = params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect();
    let rows = client.query(&statement, &refs).await.map_err(backend)?;
    let through_stream = match &query.scope {
        ReadScope::Stream(s) => Some(s.as_str()),
        _ => None,
    };
    let mut page = Vec::with_capacity(rows.len());
    for row in &rows {
        let mut event = recorded(row)?;
        if let Some(stream) = through_stream {
            let version: i64 = row.try_get(8).map_err(backend)?;
            let is_link: bool = row.try_get(9).map_err(backend)?;
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

/// Maps the [`EVENT_COLUMNS`] of a row to an event as appended. A row that does not decode (a value out of
/// range, edited by hand) is an error naming the event by position, stream and version.
fn recorded(row: &Row) -> Result<RecordedEvent> {
    // A negative position was never written by Herald (a hand-edited row): the event is named by id, as its
    // position is what is damaged. Wrapped into a huge number it would send a paged read round in circles.
    let position = row.try_get::<_, i64>(5).map_err(backend)?;
    let position = stored_u64(position, || match row.try_get::<_, Uuid>(0) {
        Ok(id) => format!("the position of stored event {id}"),
        Err(_) => "the position of a stored event".to_owned(),
    })?;
    let corrupt = |e: Error| {
        let stream = row.try_get::<_, String>(6).ok();
        let version = row
            .try_get::<_, i64>(7)
            .ok()
            .and_then(|v| u64::try_from(v).ok());
        Error::corrupt_event(position, stream.as_deref(), version, e)
    };
    let column = |e: tokio_postgres::Error| corrupt(backend(e));
    let recorded_at: i64 = row.try_get(4).map_err(column)?;
    let version: i64 = row.try_get(7).map_err(column)?;
    Ok(RecordedEvent {
        id: row.try_get(0).map_err(column)?,
        event_type: row.try_get(1).map_err(column)?,
        data: row.try_get(2).map_err(column)?,
        metadata: row.try_get(3).map_err(column)?,
        recorded_at: timefmt::from_unix_micros(recorded_at).map_err(corrupt)?,
        position,
        stream: row.try_get(6).map_err(column)?,
        version: stored_u64(version, || "its version".to_owned()).map_err(corrupt)?,
        origin: None,
    })
}

pub(crate) async fn event(reads: &Reads, id: Uuid) -> Result<Option<RecordedEvent>> {
    let client = client(reads).await?;
    let answer = tokio::time::timeout(reads.answer_timeout, event_on(&client, id)).await;
    settle(reads, client, answer)
}

async fn event_on(client: &Object, id: Uuid) -> Result<Option<RecordedEvent>> {
    let statement = client
        .prepare_cached(&format!(
            "SELECT {EVENT_COLUMNS} FROM events e WHERE e.id = $1"
        ))
        .await
        .map_err(backend)?;
    let row = client
        .query_opt(&statement, &[&id])
        .await
        .map_err(backend)?;
    row.as_ref().map(recorded).transpose()
}

pub(crate) async fn stream_version(reads: &Reads, stream: &str) -> Result<Option<u64>> {
    let client = client(reads).await?;
    let answer = tokio::time::timeout(reads.answer_timeout, version_on(&client, stream)).await;
    settle(reads, client, answer)
}

async fn version_on(client: &Object, stream: &str) -> Result<Option<u64>> {
    let statement = client
        .prepare_cached("SELECT version FROM streams WHERE name = $1")
        .await
        .map_err(backend)?;
    let row = client
        .query_opt(&statement, &[&stream])
        .await
        .map_err(backend)?;
    Ok(row.map(|r| r.get::<_, i64>(0) as u64))
}

/// The smallest string greater than every string starting with `prefix`, when one exists: the prefix with
/// its last character incremented (UTF-8 byte order is code point order, which the "C" collation uses).
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

pub(crate) async fn streams(
    reads: &Reads,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<StreamInfo>> {
    let lower = match after {
        Some(after) if after >= prefix => after,
        _ => prefix,
    };
    let mut params: Vec<Param> = vec![Box::new(lower.to_owned())];
    let mut sql = String::from("SELECT name, version FROM streams WHERE name >= $1");
    if let Some(after) = after {
        params.push(Box::new(after.to_owned()));
        sql.push_str(&format!(" AND name > ${}", params.len()));
    }
    if let Some(upper) = prefix_upper_bound(prefix) {
        params.push(Box::new(upper));
        sql.push_str(&format!(" AND name < ${}", params.len()));
    }
    params.push(Box::new(i64::try_from(limit).unwrap_or(i64::MAX)));
    sql.push_str(&format!(" ORDER BY name LIMIT ${}", params.len()));
    let client = client(reads).await?;
    let answer = tokio::time::timeout(
        reads.answer_timeout,
        streams_on(&client, &sql, &params, prefix),
    )
    .await;
    settle(reads, client, answer)
}

async fn streams_on(
    client: &Object,
    sql: &str,
    params: &[Param],
    prefix: &str,
) -> Result<Vec<StreamInfo>> {
    let statement = client.prepare_cached(sql).await.map_err(backend)?;
    let refs: Vec<&(dyn ToSql + Sync)> = params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect();
    let rows = client.query(&statement, &refs).await.map_err(backend)?;
    Ok(rows
        .iter()
        .map(|r| StreamInfo {
            stream: r.get(0),
            version: r.get::<_, i64>(1) as u64,
        })
        .filter(|info| info.stream.starts_with(prefix))
        .collect())
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
