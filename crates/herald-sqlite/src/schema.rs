//! Opening connections and the embedded schema migrations.
//!
//! Migrations are numbered SQL scripts applied in order on open; `PRAGMA user_version` records how many have
//! run. They run inside `BEGIN IMMEDIATE`, so two processes opening a fresh file at once serialise on the
//! write lock and the second one finds the work done. The job tables' migrations (`jobs/schema.rs`, their own
//! bookkeeping) run in the same transaction, so opening a store or a job queue leaves the file with both.

use std::path::Path;
use std::time::Duration;

use herald_core::{Error, Result};
use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use crate::config::{Durability, SqliteConfig};
use crate::error::context;

/// Marks a Herald database (`PRAGMA application_id`), so a foreign SQLite file is refused, not modified.
/// Public so that crates keeping their own tables in the same file can stamp a fresh file.
pub const APPLICATION_ID: i32 = 0x4845_5241; // "HERA"

/// The migrations, in order. Never edit a released one: append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: events, stream entries, stream versions.
    "
    -- Every event once, in global order. `position` is the rowid: contiguous, assigned by the single writer.
    -- `stream`/`version` are where it was appended (the origin when read through a link).
    CREATE TABLE events (
        position    INTEGER PRIMARY KEY,
        id          BLOB    NOT NULL UNIQUE,
        stream      TEXT    NOT NULL,
        version     INTEGER NOT NULL,
        category    TEXT    NOT NULL,
        type        TEXT    NOT NULL,
        data        TEXT    NOT NULL,
        metadata    TEXT    NOT NULL,
        recorded_at INTEGER NOT NULL
    );
    CREATE INDEX events_by_category ON events (category, position);

    -- What a stream read walks: own events and links, by version.
    CREATE TABLE stream_entries (
        stream   TEXT    NOT NULL,
        version  INTEGER NOT NULL,
        position INTEGER NOT NULL,
        is_link  INTEGER NOT NULL,
        PRIMARY KEY (stream, version)
    ) WITHOUT ROWID;
    -- An event sits at most once in a stream (appended or linked).
    CREATE UNIQUE INDEX stream_entries_by_event ON stream_entries (stream, position);

    -- Existing streams and their versions: O(log n) version checks and prefix listing.
    CREATE TABLE streams (
        name    TEXT    PRIMARY KEY,
        version INTEGER NOT NULL
    ) WITHOUT ROWID;
    ",
    // 2: uniqueness of (stream, position) only for links. An appended event's entry never needs the index
    // (its position is fresh), and skipping it saves one B-tree page write per stream per commit (measured:
    // the writer's time is mostly WAL page writes). The writer checks "linking an event into the stream it
    // was appended to" itself, with a lookup on the entry's primary key.
    "
    DROP INDEX stream_entries_by_event;
    CREATE UNIQUE INDEX stream_entries_links ON stream_entries (stream, position) WHERE is_link = 1;
    ",
];

/// Opens a connection with the pragmas every Herald connection uses: the event store's writer, readers and
/// checkpointer, and the job queue's (which pass their own lock wait and durability). A file this process
/// may not write (its permissions, or a read-only directory) opens read-only: see [`connect_mode`].
pub(crate) fn connect(
    path: &Path,
    busy_timeout: Duration,
    durability: Durability,
) -> Result<Connection> {
    connect_mode(path, busy_timeout, durability, false)
}

/// [`connect`], read-only when `read_only` (the file must exist; nothing is ever written through it), or when
/// the file cannot be written: SQLite then opens it read-only by itself. A WAL file in a directory this
/// process cannot write, with no `-wal` file beside it (the last writer closed cleanly, so the file holds
/// everything), cannot have its shared-memory index created: it is opened `immutable` then, which reads the
/// file without locks. Nobody can be writing it then: a writer would need to create the `-wal` file in that
/// same directory.
pub(crate) fn connect_mode(
    path: &Path,
    busy_timeout: Duration,
    durability: Durability,
    read_only: bool,
) -> Result<Connection> {
    refuse_empty_file(path)?;
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE
    };
    open_probed(path, busy_timeout, durability, flags)
}

/// Opens `path` with `flags`, falling back to an immutable read-only open as [`connect_mode`] says.
fn open_probed(
    path: &Path,
    busy_timeout: Duration,
    durability: Durability,
    flags: OpenFlags,
) -> Result<Connection> {
    // Probe before the pragmas: on such a file every statement fails, the first pragma included.
    let conn = open_raw(path, flags)?;
    if !cannot_open_wal_index(&conn) {
        return configure(conn, busy_timeout, durability);
    }
    drop(conn);
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    if Path::new(&wal).exists() {
        return Err(Error::backend(format!(
            "cannot read SQLite database {}: its directory is not writable, so the shared-memory index of its \
             WAL cannot be created, and a -wal file with commits not yet copied into the database exists; \
             read it where the directory is writable",
            path.display()
        )));
    }
    tracing::debug!(path = %path.display(), "opening immutable: read-only directory, no WAL file");
    let conn = open_raw(
        Path::new(&immutable_uri(path)),
        OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?;
    configure(conn, busy_timeout, durability)
}

/// How long an existing empty file may stay empty before it is refused: Herald writes a new file's header
/// within microseconds of creating it, so another process opening the same new path at that moment waits
/// this long for the creator, never more.
const EMPTY_FILE_GRACE: Duration = Duration::from_secs(1);

/// Refuses an existing file of 0 bytes (with no write-ahead log holding pages): SQLite would take it as an
/// empty database and Herald would quietly start a new store in it, hiding a truncated database or a wrong
/// path. Herald never leaves a file it created empty (switching to WAL writes the header at once), so an
/// empty file is someone else's; a store is created only where no file exists.
fn refuse_empty_file(path: &Path) -> Result<()> {
    let deadline = std::time::Instant::now() + EMPTY_FILE_GRACE;
    while is_empty_database_file(path) {
        if std::time::Instant::now() >= deadline {
            return Err(Error::invalid(format!(
                "SQLite database {} is an empty file (0 bytes) that Herald did not create; refusing to start \
                 a new store in it (it may be a truncated database or the wrong path): remove the file to \
                 create a new store there",
                path.display()
            )));
        }
        // Polling: the creator in another process cannot signal this one.
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// An existing regular file of 0 bytes whose write-ahead log (if any) is empty too.
fn is_empty_database_file(path: &Path) -> bool {
    let len = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len())
    };
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    len(path) == Some(0) && len(Path::new(&wal)).unwrap_or(0) == 0
}

/// Whether reading through `conn` fails because the WAL's shared-memory index (`-shm`) cannot be opened or
/// created (a read-only directory).
fn cannot_open_wal_index(conn: &Connection) -> bool {
    match conn.query_row("PRAGMA schema_version", [], |r| r.get::<_, i64>(0)) {
        Ok(_) => false,
        Err(e) => matches!(
            e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::CannotOpen | rusqlite::ErrorCode::ReadOnly)
        ),
    }
}

/// `file:PATH?immutable=1`, with the characters a URI gives meaning to escaped.
fn immutable_uri(path: &Path) -> String {
    let mut uri = String::from("file:");
    for b in path.as_os_str().as_encoded_bytes() {
        match b {
            b'?' | b'#' | b'%' => uri.push_str(&format!("%{b:02X}")),
            _ => uri.push(char::from(*b)),
        }
    }
    // Non-ASCII bytes were pushed as Latin-1 characters above: escape them instead.
    let mut escaped = String::with_capacity(uri.len());
    for c in uri.chars() {
        if c.is_ascii() {
            escaped.push(c);
        } else {
            escaped.push_str(&format!("%{:02X}", c as u32));
        }
    }
    escaped.push_str("?immutable=1");
    escaped
}

/// Opens the existing Herald database at `path` for a crate that keeps tables of its own in the file
/// (herald-es's checkpoints, snapshots and read models): the store's pragmas, never creating a file, refusing
/// one that is not a Herald database (so a mistyped path never modifies an unrelated file), then `tables`
/// (idempotent DDL, `CREATE TABLE IF NOT EXISTS …`). Open the event store on the file first: it creates and
/// stamps it.
///
/// The DDL first runs in a deferred transaction: when the tables exist it writes nothing and so takes no write
/// lock (a write transaction held elsewhere does not make the open wait, and a read-only file opens). When it
/// must write and another opener got there first (`SQLITE_BUSY`), it runs again in one `BEGIN IMMEDIATE`, so
/// concurrent openers serialise.
pub fn open_existing(path: &Path, config: &SqliteConfig, tables: &str) -> Result<Connection> {
    let mut conn = open_probed(
        path,
        config.busy_timeout,
        config.durability,
        OpenFlags::SQLITE_OPEN_READ_WRITE,
    )?;
    let app_id: i32 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(backend)?;
    if app_id != APPLICATION_ID {
        return Err(Error::invalid(format!(
            "{} is not a Herald database; open it with the Herald SQLite event store first",
            path.display()
        )));
    }
    let deferred = (|| {
        let tx = conn.transaction()?;
        tx.execute_batch(tables)?;
        tx.commit()
    })();
    match deferred {
        Ok(()) => return Ok(conn),
        Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) => {}
        Err(e) => return Err(backend(e)),
    }
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(backend)?;
    tx.execute_batch(tables).map_err(backend)?;
    tx.commit().map_err(backend)?;
    Ok(conn)
}

/// Opens `path` (a file name, or a `file:` URI) with `mode` and no settings.
fn open_raw(path: &Path, mode: OpenFlags) -> Result<Connection> {
    let flags = mode | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
    Connection::open_with_flags(path, flags)
        .map_err(|e| context(format!("cannot open SQLite database {}", path.display()), e))
}

/// The pragmas every Herald connection uses.
fn configure(
    conn: Connection,
    busy_timeout: Duration,
    durability: Durability,
) -> Result<Connection> {
    conn.busy_timeout(busy_timeout).map_err(backend)?;
    conn.set_prepared_statement_cache_capacity(64);
    conn.pragma_update(None, "synchronous", durability.pragma_value())
        .map_err(backend)?;
    conn.pragma_update(None, "foreign_keys", false)
        .map_err(backend)?;
    // Negative: KiB. Keeps hot index pages of a large log in memory.
    conn.pragma_update(None, "cache_size", -32_768)
        .map_err(backend)?;
    conn.pragma_update(None, "temp_store", "MEMORY")
        .map_err(backend)?;
    // After a checkpoint, shrink a WAL that a burst grew, instead of keeping it at its largest size.
    conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)
        .map_err(backend)?;
    Ok(conn)
}

/// Whether the file is already what [`migrate`] would make of it: a Herald database in WAL mode at this
/// build's schema, job tables included. Read without taking the write lock (a WAL reader never waits for the
/// writer), so opening a current file never waits for, or is refused by, a write transaction held elsewhere,
/// and a read-only file opens.
fn is_current(conn: &Connection) -> Result<bool> {
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .map_err(backend)?;
    let app_id: i32 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(backend)?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(backend)?;
    // The journal mode matters to writers only: an immutable (read-only directory) connection reports
    // another, and may read anyway.
    let wal_or_reader = mode.eq_ignore_ascii_case("wal") || is_read_only(conn)?;
    Ok(wal_or_reader
        && app_id == APPLICATION_ID
        && version == latest_version()
        && crate::jobs::schema::is_current(conn)?)
}

/// Whether `conn` cannot write its database (opened read-only, or a file SQLite could only open read-only).
pub(crate) fn is_read_only(conn: &Connection) -> Result<bool> {
    conn.is_readonly(rusqlite::MAIN_DB).map_err(backend)
}

/// Puts the file in WAL mode and applies pending migrations, of the event tables and the job tables. Safe to
/// run from several processes at once. A file that is already current is only read (see [`is_current`]); one
/// that is not, on a read-only connection, is refused with a message that says to open it writable once.
pub(crate) fn migrate(conn: &mut Connection) -> Result<()> {
    if is_current(conn)? {
        return Ok(());
    }
    if is_read_only(conn)? {
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(backend)?;
        return Err(Error::backend(format!(
            "the database is read-only here and not at this Herald's schema (file: version {version}, this \
             build: {}; or not in WAL mode, or not a Herald database): open it once where it can be written",
            latest_version()
        )));
    }
    // Switching to WAL needs a brief exclusive lock; the busy timeout covers a concurrent opener.
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(backend)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::backend(format!(
            "SQLite refused WAL mode (journal_mode is {mode})"
        )));
    }
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(backend)?;
    let app_id: i32 = tx
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(backend)?;
    let version: i64 = tx
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(backend)?;
    if app_id != APPLICATION_ID {
        let tables: i64 = tx
            .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
            .map_err(backend)?;
        if app_id != 0 || tables != 0 {
            return Err(Error::backend(
                "the file is an SQLite database that Herald did not create; refusing to modify it",
            ));
        }
        tx.pragma_update(None, "application_id", APPLICATION_ID)
            .map_err(backend)?;
    }
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(Error::backend(format!(
            "the database schema is version {version}, newer than this Herald knows ({known}); upgrade Herald"
        )));
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.execute_batch(sql)
            .map_err(|e| context(format!("migration {} failed", index + 1), e))?;
        tracing::info!(migration = index + 1, "applied herald-sqlite migration");
    }
    if version < known {
        tx.pragma_update(None, "user_version", known)
            .map_err(backend)?;
    }
    // The job tables too, in the same transaction: an append can enqueue jobs on any store file, whether a
    // job queue was ever opened on it or not.
    crate::jobs::schema::migrate(&tx)?;
    tx.commit().map_err(backend)?;
    Ok(())
}

/// The schema version this build writes.
pub(crate) fn latest_version() -> i64 {
    MIGRATIONS.len() as i64
}

/// Wraps a driver error.
pub(crate) fn backend(e: rusqlite::Error) -> Error {
    Error::backend(e)
}

/// True when the driver reports a constraint violation (unique index, primary key), by error code.
pub(crate) fn is_constraint_violation(e: &rusqlite::Error) -> bool {
    e.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation)
}
