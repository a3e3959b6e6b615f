//! Logs of the `herald` binary. Stderr belongs to the one error line a failed command prints, so logs are off
//! unless asked for (`-v`, `HERALD_LOG` or `RUST_LOG`); when on, they are coloured only when stderr is a
//! terminal, and each log record stays one line with control characters in it shown as escapes (the same
//! [`escape_controls`] as error messages), so logged input cannot split a line or drive a terminal.

use std::io::{self, IsTerminal, Write};

use herald::core::error::escape_controls;
use tracing_subscriber::EnvFilter;

/// Installs the log subscriber when logs are asked for: `HERALD_LOG`, else `RUST_LOG` (filter directives such
/// as `debug` or `herald_postgres=trace`), else `-v` (info), `-vv` (debug), `-vvv` (trace).
pub(crate) fn init(verbose: u8) {
    let directives = std::env::var("HERALD_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok()
        .filter(|d| !d.trim().is_empty());
    let filter = match (directives, verbose) {
        (Some(directives), _) => EnvFilter::new(directives),
        (None, 0) => return,
        (None, 1) => EnvFilter::new("info"),
        (None, 2) => EnvFilter::new("debug"),
        (None, _) => EnvFilter::new("trace"),
    };
    let ansi = io::stderr().is_terminal();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(move || OneLineStderr { ansi })
        .init();
}

/// Writes each log record (the formatter hands over one whole record per write) to stderr with its control
/// characters escaped, except the record's final line break and, when colours are on, the formatter's own
/// escape sequences (field values are sanitised of those by the formatter itself).
struct OneLineStderr {
    ansi: bool,
}

impl Write for OneLineStderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let (body, end) = match text.strip_suffix('\n') {
            Some(body) => (body, "\n"),
            None => (&*text, ""),
        };
        let escaped = if self.ansi {
            body.split('\u{1b}')
                .map(escape_controls)
                .collect::<Vec<_>>()
                .join("\u{1b}")
        } else {
            escape_controls(body).into_owned()
        };
        let mut stderr = io::stderr().lock();
        stderr.write_all(escaped.as_bytes())?;
        stderr.write_all(end.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}
