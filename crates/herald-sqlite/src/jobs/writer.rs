//! The job queue's writer thread and its group commit. Every write of the queue (enqueue, claim, completion,
//! lease renewal, dead-set operation, cron tick) is a closure sent to one thread that owns a write connection.
//! It runs whatever is queued in one `BEGIN IMMEDIATE … COMMIT` (one fsync), each closure in its own
//! savepoint (a closure that fails undoes only its own rows), and answers every caller after the commit. If
//! the batch transaction itself fails, every caller of the batch gets the same error ([`DriverError`], the
//! driver's error kept as its source). The event store's writer and this one share SQLite's write lock (WAL;
//! `busy_timeout`); reads do not go through here.

use std::sync::mpsc;
use std::thread::JoinHandle;

use herald_core::{Error, Result};
use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::config::Durability;
use crate::error::DriverError;

/// Most writes committed in one transaction.
const MAX_BATCH: usize = 1024;

/// One write for the writer thread.
struct Op {
    /// Its batch must be flushed (enqueues, dead-set operations); progress (claims, completions, renewals) is
    /// flushed only with `JobsConfig::durable_progress`.
    durable: bool,
    task: Box<dyn Task>,
}

/// A write and its caller, seen by the writer without its result type.
trait Task: Send {
    /// Runs the write; returns whether it succeeded (else its savepoint is rolled back).
    fn run(&mut self, conn: &Connection) -> bool;
    /// Answers the caller once the batch is over: with its own result, or with the batch's failure.
    fn answer(self: Box<Self>, failed: Option<&DriverError>);
}

/// A caller's closure, then its result, and where the answer goes.
struct Call<T, F> {
    write: Option<F>,
    result: Option<Result<T>>,
    reply: oneshot::Sender<Result<T>>,
}

impl<T, F> Task for Call<T, F>
where
    T: Send,
    F: FnOnce(&Connection) -> Result<T> + Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let result = match self.write.take() {
            Some(write) => write(conn),
            None => Err(Error::backend("internal: a job write ran twice")),
        };
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn answer(self: Box<Self>, failed: Option<&DriverError>) {
        let answer = match (failed, self.result) {
            (Some(failed), _) => Err(failed.to_error()),
            (None, Some(result)) => result,
            (None, None) => Err(Error::backend(
                "internal: a job write was answered without running",
            )),
        };
        // A caller that gave up (dropped its future) no longer listens.
        let _ = self.reply.send(answer);
    }
}

/// The handle of the writer thread: dropping it lets the thread commit what is queued, then joins it.
pub(crate) struct Writer {
    ops: Option<mpsc::Sender<Op>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Starts the thread on `conn`. `full_sync` and `durable_progress` are the queue's settings of the same
    /// names.
    pub(crate) fn start(conn: Connection, full_sync: bool, durable_progress: bool) -> Result<Self> {
        let (ops, queued) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("herald-sqlite-jobs-writer".to_owned())
            .spawn(move || run(conn, queued, full_sync, durable_progress))
            .map_err(|e| Error::backend(format!("cannot start the job writer thread: {e}")))?;
        Ok(Writer {
            ops: Some(ops),
            thread: Some(thread),
        })
    }

    /// Runs `write` in the next batch transaction, in its own savepoint (an `Err` undoes only what it wrote),
    /// and answers after the commit. `durable`: see [`Op::durable`].
    pub(crate) async fn write<T, F>(&self, durable: bool, write: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let task = Box::new(Call {
            write: Some(write),
            result: None,
            reply,
        });
        let ops = self.ops.as_ref().ok_or(Error::Closed)?;
        ops.send(Op { durable, task }).map_err(|_| Error::Closed)?;
        // The writer drops a reply unanswered only when it died (a panic in a write): the queue is closed.
        answer.await.map_err(|_| Error::Closed)?
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop once it has drained the queue.
        self.ops.take();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("herald-sqlite job writer thread panicked");
        }
    }
}

/// The thread's body: one transaction per batch of queued writes, until every sender is gone.
fn run(conn: Connection, ops: mpsc::Receiver<Op>, full_sync: bool, durable_progress: bool) {
    let mut batch: Vec<Op> = Vec::new();
    // The connection was opened with `synchronous` matching `full_sync`.
    let mut synced = full_sync;
    while let Ok(first) = ops.recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match ops.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let sync = full_sync && (durable_progress || batch.iter().any(|op| op.durable));
        let result = (|| -> rusqlite::Result<()> {
            if sync != synced {
                let durability = if sync {
                    Durability::Full
                } else {
                    Durability::Normal
                };
                conn.pragma_update(None, "synchronous", durability.pragma_value())?;
                synced = sync;
            }
            conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
            for op in batch.iter_mut() {
                conn.prepare_cached("SAVEPOINT op")?.execute([])?;
                let ok = op.task.run(&conn);
                if conn.is_autocommit() {
                    // SQLite rolled the whole transaction back on its own (I/O error, disk full).
                    return Err(rusqlite::Error::SqliteFailure(
                        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
                        Some("SQLite rolled the job batch back".to_owned()),
                    ));
                }
                if !ok {
                    conn.prepare_cached("ROLLBACK TO op")?.execute([])?;
                }
                conn.prepare_cached("RELEASE op")?.execute([])?;
            }
            conn.prepare_cached("COMMIT")?.execute([])?;
            Ok(())
        })();
        let failed = match result {
            Ok(()) => None,
            Err(e) => {
                if !conn.is_autocommit()
                    && let Err(rollback) = conn.execute_batch("ROLLBACK")
                {
                    tracing::error!(error = %rollback, "herald-sqlite job rollback failed");
                }
                tracing::error!(error = %e, writes = batch.len(), "herald-sqlite job batch failed; nothing written");
                Some(DriverError::shared(
                    "the job batch transaction failed; nothing was written",
                    e,
                ))
            }
        };
        // Writes not reached before a failure get the batch's error too: nothing of theirs was written.
        for op in batch.drain(..) {
            op.task.answer(failed.as_ref());
        }
    }
    tracing::debug!("herald-sqlite job writer stopped");
}
