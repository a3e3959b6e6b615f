//! The roles' logs: one line per fact, written with one `write` call each and no buffering, so a SIGKILL
//! leaves at most one partial last line (the readers drop it) and never loses an acknowledged line.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use crate::{Result, context};

/// An append-only log file.
pub(crate) struct LineLog {
    file: File,
}

impl LineLog {
    /// Opens `path` for appending, first cutting a partial last line a killed writer left.
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let complete = read_lines(path)?.iter().map(|l| l.len() + 1).sum::<usize>();
        if path.exists() {
            let file = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(context("opening a log"))?;
            file.set_len(complete as u64)
                .map_err(context("cutting a partial log line"))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(context("opening a log"))?;
        Ok(LineLog { file })
    }

    /// Writes one line (one `write` call: the page cache keeps it whatever happens to this process).
    pub(crate) fn line(&mut self, line: &str) -> Result<()> {
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        self.file
            .write_all(&bytes)
            .map_err(context("writing a log line"))
    }
}

/// The complete lines of a log (a missing file is empty; a partial last line is dropped).
pub(crate) fn read_lines(path: &Path) -> Result<Vec<String>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    };
    let complete = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => return Ok(Vec::new()),
    };
    Ok(complete.lines().map(str::to_owned).collect())
}
