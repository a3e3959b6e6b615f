//! Extension points that write inside an append's transaction (the outbox pattern).
//!
//! Code outside the store (an outbox, a broker relay) must write its rows atomically with the events that
//! cause them (durable jobs have their own path: the job router and `append_with_jobs`): no event without its side-effect rows, no row for an event that was rolled back. A hook
//! registered with [`crate::PostgresConfig::with_append_hook`] runs for every append; an extra given to
//! [`crate::PostgresStore::append_with`] runs for that append only. Both run after the append's events are
//! inserted, inside the group-commit transaction, so what they write commits or rolls back with the events.
//!
//! # Hooks return statements, the writer sends them
//!
//! A hook does not get the connection: it *describes* its writes as SQL statements with parameters
//! ([`HookWrites::push`]), and the writer sends them in the batch's write pipeline, after the batch's events
//! and before `COMMIT`. A hooked append therefore costs no round trip of its own and shares its group commit
//! with every other request of the batch. The writer decides the batch before it writes anything, so a hook
//! gets the append's final positions and versions.
//!
//! An async hook holding the connection would spend a round trip per statement it awaits, while every
//! Herald writer of every process waits on the head lock this transaction holds (see the crate docs); a hook
//! that cannot await cannot stall it. Statements are prepared once per connection and cached by their text,
//! so use parameters (`$1`, …) rather than formatting values into the SQL. Arrays (`$1::uuid[]` with
//! `unnest`) write many rows in one statement.
//!
//! # Failure is per append
//!
//! If a hook or extra returns an error, that append fails and writes nothing. If one of its statements fails
//! on the server (or cannot be prepared), the whole batch transaction is rolled back, that append fails,
//! and the writer runs the batch again without it; the other requests of the batch commit as if it had never
//! been sent (no hole in the global order). The caller gets [`herald_core::Error::Backend`] naming the
//! stream. Hooks are not run for a refused append (version conflict, duplicate id), nor for an idempotent
//! retry of an already committed append, which writes nothing (its rows were written with the original
//! append).
//!
//! Because a batch can be decided again, a hook (and an [`AppendExtra`]) may be called more than once for
//! one append, with different positions; only the statements of the last call are committed. Describe the
//! writes for the positions given, and keep no other state per call.
//!
//! Statements run on the writer's connection, whose `search_path` is the store's schema, while the head row
//! is locked: keep them to a few indexed writes. The session plans for index access (generic plans,
//! sequential scans and hash or merge joins disabled), which suits inserts and key lookups. Statements must
//! not end the transaction or manage savepoints (`BEGIN`, `COMMIT`, `ROLLBACK`, `SAVEPOINT`, `RELEASE`, …
//! are refused by [`HookWrites::push`]).

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

pub use herald_core::AppendedEvent;
use herald_core::{AppendResult, Error, Result};
use tokio_postgres::types::ToSql;

/// The error type hooks and extras return: anything that can say what went wrong.
pub type HookError = herald_core::BoxError;

/// One parameter of a hook statement (any value tokio-postgres can send: `String`, `i64`, `Uuid`, `Vec<_>`…).
pub type HookParam = Box<dyn ToSql + Send + Sync>;

/// Longest SQL text of one hook statement, in bytes.
pub const MAX_HOOK_SQL_LEN: usize = 64 * 1024;

/// One SQL statement a hook asks the writer to run.
pub(crate) struct HookStatement {
    pub(crate) sql: Cow<'static, str>,
    pub(crate) params: Vec<HookParam>,
}

/// The statements hooks and extras write for one append, run in order after the append's events are inserted.
#[derive(Default)]
pub struct HookWrites {
    pub(crate) statements: Vec<HookStatement>,
}

impl fmt::Debug for HookWrites {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.statements.iter().map(|s| &s.sql))
            .finish()
    }
}

/// First words of statements that would end the batch's transaction or meddle with its savepoints.
const REFUSED_COMMANDS: &[&str] = &[
    "begin",
    "start",
    "commit",
    "end",
    "rollback",
    "abort",
    "savepoint",
    "release",
    "prepare",
];

impl HookWrites {
    /// Adds one statement (a single SQL command; parameters `$1`, `$2`, … in order). Refused with
    /// [`Error::InvalidInput`]: empty or longer than [`MAX_HOOK_SQL_LEN`] bytes, or a transaction-control
    /// command. The statement's parameter count and types are checked by the server when it is prepared; a
    /// mismatch fails the append like any failing hook statement.
    ///
    /// ```
    /// use herald_postgres::HookWrites;
    /// let mut writes = HookWrites::default();
    /// writes.push("INSERT INTO audit (event_id) VALUES ($1::uuid)", vec![Box::new(uuid::Uuid::nil())])?;
    /// assert!(writes.push("COMMIT", vec![]).is_err());
    /// assert_eq!(writes.len(), 1);
    /// # Ok::<(), herald_core::Error>(())
    /// ```
    pub fn push(
        &mut self,
        sql: impl Into<Cow<'static, str>>,
        params: Vec<HookParam>,
    ) -> Result<&mut Self> {
        let sql = sql.into();
        let trimmed = sql.trim_start();
        if trimmed.is_empty() {
            return Err(Error::invalid("append hook statement is empty"));
        }
        if sql.len() > MAX_HOOK_SQL_LEN {
            return Err(Error::invalid(format!(
                "append hook statement is {} bytes, more than {MAX_HOOK_SQL_LEN}",
                sql.len()
            )));
        }
        let first_word: String = trimmed
            .chars()
            .take_while(|c| c.is_ascii_alphabetic())
            .collect::<String>()
            .to_ascii_lowercase();
        if REFUSED_COMMANDS.contains(&first_word.as_str()) {
            return Err(Error::invalid(format!(
                "append hook statement `{}` would control the append's transaction; hooks may only read \
                 and write rows",
                trimmed.chars().take(40).collect::<String>()
            )));
        }
        self.statements.push(HookStatement { sql, params });
        Ok(self)
    }

    /// Number of statements added.
    pub fn len(&self) -> usize {
        self.statements.len()
    }

    /// True when no statement was added.
    pub fn is_empty(&self) -> bool {
        self.statements.is_empty()
    }
}

/// Called by the writer for every append of a store it is registered on (see the module docs). Register with
/// [`crate::PostgresConfig::with_append_hook`].
pub trait AppendHook: Send + Sync + 'static {
    /// Adds this hook's statements for `events`, just appended to `stream`, to `writes`. It runs on the
    /// writer task while the head lock is held: compute, do not block. An error fails this append only. It
    /// may be called more than once for one append (with new positions when its batch is decided again after
    /// another append failed): it only describes writes, the writer runs the last call's.
    fn on_append(
        &self,
        stream: &str,
        events: &[AppendedEvent<'_>],
        writes: &mut HookWrites,
    ) -> std::result::Result<(), HookError>;
}

/// Work for one append only, run after the store's hooks: see [`crate::PostgresStore::append_with`]. It gets
/// the append's result (stream, versions, positions, ids) and adds its statements to `writes`. Like a hook,
/// it may be called again with a new result if the batch had to be decided again (see the module docs):
/// describe the writes for the result given, keep no count of calls.
pub type AppendExtra =
    Box<dyn Fn(&AppendResult, &mut HookWrites) -> std::result::Result<(), HookError> + Send + Sync>;

/// The hooks of a store, in registration order. Compared by identity.
#[derive(Clone, Default)]
pub struct AppendHooks(pub(crate) Vec<Arc<dyn AppendHook>>);

impl AppendHooks {
    /// True when no hook is registered.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of hooks registered.
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl fmt::Debug for AppendHooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AppendHooks({})", self.0.len())
    }
}

impl PartialEq for AppendHooks {
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len() && self.0.iter().zip(&other.0).all(|(a, b)| Arc::ptr_eq(a, b))
    }
}

impl Eq for AppendHooks {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_refuses_transaction_control_and_empty_statements() {
        let mut writes = HookWrites::default();
        for bad in [
            "",
            "   ",
            "COMMIT",
            " rollback to savepoint x",
            "Release x",
            "BEGIN",
            "end",
            "SAVEPOINT a",
            "prepare transaction 'x'",
        ] {
            let err = writes.push(bad, vec![]).unwrap_err();
            assert!(matches!(err, Error::InvalidInput(_)), "{bad}: {err}");
        }
        let long = format!("SELECT '{}'", "x".repeat(MAX_HOOK_SQL_LEN));
        assert!(writes.push(long, vec![]).is_err());
        writes
            .push("INSERT INTO t VALUES ($1)", vec![Box::new(1i64)])
            .unwrap()
            .push("SELECT pg_notify('c', 'x')", vec![])
            .unwrap();
        assert_eq!(writes.len(), 2);
        // "ended_at" or "committed" as a column name is not a command.
        assert!(writes.push("UPDATE t SET committed = true", vec![]).is_ok());
    }
}
