//! The statements of the write connection: the session it runs in, the SQL it prepares once, the look-ups of
//! step 1, and the cache of hook statements.
//!
//! Every statement is simple (a key lookup or an `unnest` insert) and runs as a prepared statement with a
//! generic plan: nothing is planned per batch. The write session forbids sequential scans, hash joins and
//! merge joins, so a plan made while the tables were small stays an index lookup as they grow (measured: a
//! generic plan made on small tables and kept while they grow slowed appends several-fold within minutes).

use std::collections::HashMap;
use std::sync::Mutex;

use herald_core::Result;
use tokio_postgres::{Client, Statement};

use super::plan::{Found, KnownEvent, Needs, StreamState};
use crate::hook::HookWrites;
use crate::schema::backend;

/// Planner settings of the write session (see the module docs): generic plans (nothing planned per batch),
/// and no plan shape whose cost grows with the tables when an index lookup exists. No JIT: a disabled plan
/// shape that remains the only one (the one-row `head` table is scanned) carries a huge cost, which would
/// make PostgreSQL compile that statement on every execution (measured: 6.7 ms per batch).
const WRITE_SESSION: &str = "SET plan_cache_mode = force_generic_plan; SET enable_seqscan = off; \
                             SET enable_hashjoin = off; SET enable_mergejoin = off; SET jit = off";

/// Prepared statements of the write connection.
pub(super) struct Statements {
    pub(super) lock_head: Statement,
    pub(super) tail: Statement,
    pub(super) guard: Statement,
    pub(super) streams: Statement,
    pub(super) stored: Statement,
    pub(super) linked: Statement,
    pub(super) delete_links: Statement,
    pub(super) upsert_deleted: Statement,
    pub(super) delete_streams: Statement,
    pub(super) upsert_streams: Statement,
    pub(super) insert_events: Statement,
    pub(super) insert_links: Statement,
    /// The delivery routes' jobs of the batch's events (one per batch, see `jobs/routes.rs`).
    pub(super) deliver: Statement,
}

/// Locks the head row: the serialisation point of every Herald writer of every process.
const LOCK_HEAD: &str = "SELECT recorded_at FROM head FOR UPDATE";

/// The end of the log, its clock, the server's clock and the transaction's start. Runs after the lock is
/// granted, on a snapshot of its own: it sees every earlier writer's commit.
const TAIL: &str = "
    SELECT (SELECT position FROM events ORDER BY position DESC LIMIT 1),
           (SELECT recorded_at FROM events ORDER BY position DESC LIMIT 1),
           floor(extract(epoch FROM clock_timestamp()) * 1000000)::bigint,
           floor(extract(epoch FROM now()) * 1000000)::bigint";

/// The one-round-trip path's check (see the module docs): the log still ends where this writer left it
/// (`$2`) and every stream of the batch is as the writer believes (`$3`–`$5`); otherwise it fails (division by
/// zero), and the transaction with it. It returns the clock the batch's events get (`$1`: the last one's).
const GUARD: &str = "
    SELECT greatest($1::bigint, floor(extract(epoch FROM now()) * 1000000)::bigint)
    WHERE 1 / (CASE WHEN coalesce((SELECT position FROM events ORDER BY position DESC LIMIT 1), 0) = $2::bigint
                     AND NOT EXISTS (
                         SELECT 1
                         FROM unnest($3::text[], $4::bigint[], $5::bigint[]) AS t(name, version, through)
                         LEFT JOIN streams s ON s.name = t.name
                         LEFT JOIN deleted_streams d ON d.name = t.name
                         WHERE s.version IS DISTINCT FROM t.version
                            OR coalesce(d.through_position, 0) <> t.through)
                THEN 1 ELSE 0 END) = 1";

/// Version and last delete of each named stream (one row per name; NULLs when missing).
const STREAMS: &str = "
    SELECT n.name, s.version, d.through_position
    FROM unnest($1::text[]) AS n(name)
    LEFT JOIN streams s ON s.name = n.name
    LEFT JOIN deleted_streams d ON d.name = n.name";

/// The stored events among the ids.
const STORED: &str = "SELECT id, position, stream, version FROM events WHERE id = ANY($1::uuid[])";

/// Which `(stream, event id)` pairs are already linked.
const LINKED: &str = "
    SELECT t.stream, e.position
    FROM unnest($1::text[], $2::uuid[]) AS t(stream, id)
    JOIN events e ON e.id = t.id
    JOIN stream_entries se ON se.stream = t.stream AND se.position = e.position";

const DELETE_LINKS: &str = "DELETE FROM stream_entries WHERE stream = ANY($1::text[])";

const UPSERT_DELETED: &str = "
    INSERT INTO deleted_streams (name, through_position)
    SELECT * FROM unnest($1::text[], $2::bigint[])
    ON CONFLICT (name) DO UPDATE SET through_position = excluded.through_position";

const DELETE_STREAMS: &str = "DELETE FROM streams WHERE name = ANY($1::text[])";

const UPSERT_STREAMS: &str = "
    INSERT INTO streams (name, version)
    SELECT * FROM unnest($1::text[], $2::bigint[])
    ON CONFLICT (name) DO UPDATE SET version = excluded.version";

/// Every event of the batch. `$9` is the clock decided for the batch; `now()` (the transaction's start) only
/// matters on the one-round-trip path, where the guard computed the same value.
const INSERT_EVENTS: &str = "
    INSERT INTO events (position, id, stream, version, category, event_type, data, metadata, recorded_at)
    SELECT t.*, greatest($9::bigint, floor(extract(epoch FROM now()) * 1000000)::bigint)
    FROM unnest($1::bigint[], $2::uuid[], $3::text[], $4::bigint[], $5::text[], $6::text[], $7::text[],
                $8::text[]) AS t";

const INSERT_LINKS: &str = "
    INSERT INTO stream_entries (stream, version, position, is_link)
    SELECT t.*, true FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS t";

impl Statements {
    /// Sets up the write session and prepares its statements (once per connection: a round trip each).
    pub(super) async fn prepare(
        client: &Client,
        delivery_sql: &str,
    ) -> std::result::Result<Self, tokio_postgres::Error> {
        client.batch_execute(WRITE_SESSION).await?;
        Ok(Statements {
            lock_head: client.prepare(LOCK_HEAD).await?,
            tail: client.prepare(TAIL).await?,
            guard: client.prepare(GUARD).await?,
            streams: client.prepare(STREAMS).await?,
            stored: client.prepare(STORED).await?,
            linked: client.prepare(LINKED).await?,
            delete_links: client.prepare(DELETE_LINKS).await?,
            upsert_deleted: client.prepare(UPSERT_DELETED).await?,
            delete_streams: client.prepare(DELETE_STREAMS).await?,
            upsert_streams: client.prepare(UPSERT_STREAMS).await?,
            insert_events: client.prepare(INSERT_EVENTS).await?,
            insert_links: client.prepare(INSERT_LINKS).await?,
            deliver: client.prepare(delivery_sql).await?,
        })
    }
}

/// The writer's connection, reopened when it breaks.
pub(super) struct Connection {
    pub(super) client: Client,
    pub(super) statements: Statements,
    /// Hook statements prepared on this connection, by SQL text (prepared statements outlive transactions).
    pub(super) hook_statements: Mutex<HashMap<String, Statement>>,
}

/// Most hook statements kept prepared per connection; the cache starts over beyond it (hooks that format
/// values into their SQL would otherwise grow it without bound).
const MAX_CACHED_HOOK_STATEMENTS: usize = 256;

impl Connection {
    pub(super) fn new(client: Client, statements: Statements) -> Self {
        Connection {
            client,
            statements,
            hook_statements: Mutex::new(HashMap::new()),
        }
    }
}

/// Runs the look-ups `needs` asks for, pipelined, and reads their rows into facts for the decision.
pub(super) async fn lookup(conn: &Connection, needs: &Needs) -> Result<Found> {
    if needs.is_empty() {
        return Ok(Found::default());
    }
    let st = &conn.statements;
    let (streams, events, linked) = tokio::join!(
        async {
            if needs.streams.is_empty() {
                return Ok(Vec::new());
            }
            conn.client.query(&st.streams, &[&needs.streams]).await
        },
        async {
            if needs.ids.is_empty() {
                return Ok(Vec::new());
            }
            conn.client.query(&st.stored, &[&needs.ids]).await
        },
        async {
            if needs.links.0.is_empty() {
                return Ok(Vec::new());
            }
            conn.client
                .query(&st.linked, &[&needs.links.0, &needs.links.1])
                .await
        },
    );
    let streams = streams.map_err(backend)?.into_iter().map(|row| {
        let version: Option<i64> = row.get(1);
        let through: Option<i64> = row.get(2);
        let state = StreamState {
            version: version.map(|v| v as u64),
            deleted_through: through.unwrap_or(0),
        };
        (row.get(0), state)
    });
    let events = events.map_err(backend)?.into_iter().map(|row| {
        let event = KnownEvent {
            position: row.get(1),
            stream: row.get(2),
            version: row.get(3),
        };
        (row.get(0), event)
    });
    let linked = linked.map_err(backend)?.into_iter();
    Ok(Found {
        streams: streams.collect(),
        events: events.collect(),
        linked: linked.map(|row| (row.get(0), row.get(1))).collect(),
    })
}

/// Prepares the hook statements of the batch not yet prepared on this connection (pipelined) and returns a
/// handle for every statement the batch uses. `Err` names the SQL the server refused.
pub(super) async fn prepare_hook_statements(
    conn: &Connection,
    hooks: &[(usize, HookWrites)],
) -> std::result::Result<HashMap<String, Statement>, (String, tokio_postgres::Error)> {
    let mut statements = HashMap::new();
    if hooks.is_empty() {
        return Ok(statements);
    }
    let mut missing: Vec<&str> = Vec::new();
    {
        let cache = conn
            .hook_statements
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for (_, writes) in hooks {
            for s in &writes.statements {
                let sql = s.sql.as_ref();
                match cache.get(sql) {
                    Some(prepared) => {
                        statements.insert(sql.to_owned(), prepared.clone());
                    }
                    None if !missing.contains(&sql) => missing.push(sql),
                    None => {}
                }
            }
        }
    }
    if missing.is_empty() {
        return Ok(statements);
    }
    let prepared =
        futures::future::join_all(missing.iter().map(|sql| conn.client.prepare(sql))).await;
    let mut cache = conn
        .hook_statements
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if cache.len() + missing.len() > MAX_CACHED_HOOK_STATEMENTS {
        cache.clear();
    }
    for (sql, result) in missing.iter().zip(prepared) {
        let statement = result.map_err(|e| ((*sql).to_owned(), e))?;
        cache.insert((*sql).to_owned(), statement.clone());
        statements.insert((*sql).to_owned(), statement);
    }
    Ok(statements)
}
