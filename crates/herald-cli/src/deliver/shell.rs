//! Program delivery: run the route's program with its fixed arguments (no shell: nothing is parsed or
//! expanded, and no event data reaches the command line), the CloudEvent on stdin, and the ids in the
//! environment: `HERALD_EVENT_ID`, `HERALD_STREAM`, `HERALD_EVENT_TYPE`, `HERALD_POSITION`,
//! `HERALD_VERSION`, `HERALD_ROUTE`, `HERALD_JOB_ID`, `HERALD_ATTEMPT`. Exit status 0 is success; any other
//! status, death by a signal or the route's timeout (the program is then killed) is a failure, retried with
//! the worker's backoff. The first [`KEPT_OUTPUT`] bytes of its stderr go into the failure's message; its
//! stdout is discarded.

use std::process::Stdio;
use std::time::Duration;

use herald::RecordedEvent;
use herald::jobs::{JobContext, JobResult};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

/// Bytes of a failing program's stderr kept for its error message.
const KEPT_OUTPUT: usize = 2048;

/// One run's inputs.
pub(crate) struct Run<'a> {
    pub(crate) program: &'a str,
    pub(crate) args: &'a [String],
    pub(crate) timeout_ms: u64,
    pub(crate) route: &'a str,
    pub(crate) event: &'a RecordedEvent,
    pub(crate) body: &'a str,
}

/// Reads a pipe to its end (so the program never blocks on a full pipe), keeping the first bytes.
async fn drain(pipe: Option<impl AsyncRead + Unpin>) -> Vec<u8> {
    let mut kept = Vec::new();
    let Some(mut pipe) = pipe else { return kept };
    let mut buf = [0u8; 4096];
    while let Ok(n) = pipe.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let room = KEPT_OUTPUT.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
    kept
}

/// Runs the program for one event.
pub(crate) async fn run(run: Run<'_>, ctx: &JobContext) -> JobResult {
    let event = run.event;
    let mut child = match Command::new(run.program)
        .args(run.args)
        .env("HERALD_EVENT_ID", event.id.to_string())
        .env("HERALD_STREAM", &event.stream)
        .env("HERALD_EVENT_TYPE", &event.event_type)
        .env("HERALD_POSITION", event.position.to_string())
        .env("HERALD_VERSION", event.version.to_string())
        .env("HERALD_ROUTE", run.route)
        .env("HERALD_JOB_ID", ctx.id.to_string())
        .env("HERALD_ATTEMPT", ctx.attempt.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            return JobResult::fail(format!(
                "cannot start `{}` for event {}: {e}",
                run.program.escape_debug(),
                event.id
            ));
        }
    };
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let body = run.body.as_bytes().to_vec();
    let feed = async move {
        if let Some(mut stdin) = stdin {
            // A program that exits without reading its input closes the pipe: not a failure by itself.
            let _ = stdin.write_all(&body).await;
            let _ = stdin.shutdown().await;
        }
    };
    let limit = Duration::from_millis(run.timeout_ms);
    // In a block: the run's future borrows the child, which the kill below needs back.
    let outcome = {
        let finished = async {
            let ((), _, errors, status) =
                tokio::join!(feed, drain(stdout), drain(stderr), child.wait());
            (errors, status)
        };
        tokio::select! {
            done = tokio::time::timeout(limit, finished) => Some(done),
            () = ctx.shutdown.cancelled() => None,
        }
    };
    let Some(outcome) = outcome else {
        let _ = child.kill().await;
        return JobResult::retry("the worker is shutting down");
    };
    match outcome {
        Err(_) => {
            let _ = child.kill().await;
            JobResult::fail(format!(
                "`{}` ran longer than {} ms for event {} and was killed",
                run.program.escape_debug(),
                run.timeout_ms,
                event.id
            ))
        }
        Ok((_, Err(e))) => JobResult::fail(format!(
            "waiting for `{}` failed: {e}",
            run.program.escape_debug()
        )),
        Ok((_, Ok(status))) if status.success() => JobResult::Success,
        Ok((errors, Ok(status))) => {
            let errors = String::from_utf8_lossy(&errors);
            let errors = errors.trim();
            JobResult::fail(format!(
                "`{}` {status} for event {}{}{}",
                run.program.escape_debug(),
                event.id,
                if errors.is_empty() { "" } else { ": " },
                errors.escape_debug()
            ))
        }
    }
}
