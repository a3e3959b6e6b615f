//! WAL checkpoints off the writer's path.
//!
//! SQLite's automatic checkpoint runs inside the `COMMIT` that pushes the WAL past 1000 pages, on the writer's
//! thread: it copies pages into the database file and fsyncs it, so every thousandth page of writes stalls a
//! group commit (what that costs is in `benchmarks/sqlite.md`). Instead, a WAL
//! hook on the writer's connection wakes a checkpointer thread, which runs a `PASSIVE` checkpoint on its own
//! connection while the writer keeps committing. If writes outpace it and the WAL passes
//! [`INLINE_CHECKPOINT_PAGES`], the writer checkpoints inline once (it then completes, since nobody else
//! writes meanwhile), which bounds the WAL file.

use std::os::raw::c_int;
use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;

use herald_core::{Error, Result};
use rusqlite::Connection;
use rusqlite::wal::CheckpointMode;

use crate::config::SqliteConfig;
use crate::schema::{backend, connect};

/// WAL size (pages) at which the checkpointer is woken: SQLite's own default threshold.
pub(crate) const CHECKPOINT_PAGES: c_int = 1000;
/// WAL size at which the writer stops relying on the checkpointer and checkpoints itself.
pub(crate) const INLINE_CHECKPOINT_PAGES: c_int = 16 * CHECKPOINT_PAGES;

/// Replaces the automatic checkpoint of `writer` with the checkpointer thread; returns that thread. It stops
/// when `writer` is dropped (the hook holding its wake-up channel goes with it).
pub(crate) fn start(
    writer: &mut Connection,
    path: &Path,
    config: &SqliteConfig,
) -> Result<JoinHandle<()>> {
    let conn = connect(path, config.busy_timeout, config.durability)?;
    let (wake, woken) = mpsc::sync_channel::<()>(1);
    // Wake the checkpointer once per CHECKPOINT_PAGES new frames, not after every commit past the first
    // threshold: under a steady stream of commits a PASSIVE checkpoint never quite catches up with the writer,
    // so waking it on every commit kept it copying (and fsyncing the database file) nonstop — a third of the
    // CPU on two cores in the 16-task bench — for the same pages.
    let mut next_wake = CHECKPOINT_PAGES;
    let mut last_pages = 0;
    writer
        .wal_hook(Some(move |wal: &mut rusqlite::hooks::Wal, pages: c_int| {
            if pages < last_pages {
                // The WAL restarted from its beginning after a complete checkpoint.
                next_wake = CHECKPOINT_PAGES;
            }
            last_pages = pages;
            if pages >= INLINE_CHECKPOINT_PAGES {
                if let Err(e) = wal.checkpoint_v2(CheckpointMode::PASSIVE) {
                    tracing::warn!(error = %e, pages, "herald-sqlite inline checkpoint failed");
                }
            } else if pages >= next_wake {
                next_wake = pages + CHECKPOINT_PAGES;
                // Full channel: a wake-up is already pending, which is all we need.
                let _ = wake.try_send(());
            }
            // Never report an error from here: SQLite would make the COMMIT that already happened fail.
            Ok(())
        }))
        .map_err(backend)?;
    std::thread::Builder::new()
        .name("herald-sqlite-checkpointer".to_owned())
        .spawn(move || {
            while woken.recv().is_ok() {
                if let Err(e) = conn.wal_checkpoint_v2(Some("main"), CheckpointMode::PASSIVE) {
                    tracing::warn!(error = %e, "herald-sqlite checkpoint failed; the WAL keeps growing until one succeeds");
                }
            }
        })
        .map_err(|e| Error::backend(format!("cannot start the checkpointer thread: {e}")))
}
