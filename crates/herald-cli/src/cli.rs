//! Argument parsing and the commands. Values whose rules belong to the store (ids, expected versions,
//! timestamps, JSON) are taken as text and checked by herald-core, so a bad one is "invalid input" (exit 5)
//! with the store's own message, not a usage error.

use std::borrow::Cow;
use std::io::{self, BufRead, Write};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use futures::StreamExt;
use herald::core::error::escape_controls;
use herald::uuid::Uuid;
use herald::{
    Error, EventStore, EventStoreExt, ExpectedVersion, NewEvent, ReadQuery, StreamName, timefmt,
};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::output::{event_line, json_line};

/// Herald: an event store and event-driven toolkit.
#[derive(Debug, Parser)]
#[command(name = "herald", version, about)]
pub(crate) struct Cli {
    /// Database URL: sqlite://PATH, memory://, or postgres://USER@HOST:PORT/DB[?schema=S].
    #[arg(long, global = true, env = "HERALD_DATABASE_URL", default_value = herald::DEFAULT_DATABASE_URL)]
    database: String,
    /// Log to stderr: -v info, -vv debug, -vvv trace (HERALD_LOG or RUST_LOG, as filter directives, take
    /// precedence). Without either, stderr holds only a failed command's one error line.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the database and its schema (every command does this on first use).
    Init,
    /// Append events to a stream, atomically. Prints {"stream","first_version","last_version",
    /// "first_position","last_position","ids"}.
    Append(AppendArgs),
    /// Link existing events into a stream. Prints {"stream","first_version","last_version"}.
    Link {
        /// The stream to link into.
        stream: String,
        /// Ids of the events to link, in order.
        #[arg(required = true)]
        ids: Vec<String>,
        /// any, no-stream, exists, or the stream's exact current version.
        #[arg(long, default_value = "any")]
        expected: String,
    },
    /// Read events as NDJSON, one event a line.
    Read(ReadArgs),
    /// Print one event by id (exit 4 if unknown).
    Event {
        /// The event id.
        id: String,
    },
    /// Print a stream's version: {"stream","version"} (null for an empty stream).
    Version {
        /// The stream.
        stream: String,
    },
    /// List streams as NDJSON {"stream","version"}, in name order.
    Streams {
        /// Only streams whose name starts with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// At most this many streams.
        #[arg(long)]
        limit: Option<u64>,
    },
    /// Delete a stream (its events stay in the global log).
    Delete {
        /// The stream.
        stream: String,
        /// any, no-stream, exists, or the stream's exact current version.
        #[arg(long, default_value = "any")]
        expected: String,
    },
    /// Like read, then follow new commits until SIGINT or SIGTERM (exit 0).
    Tail {
        #[command(flatten)]
        scope: ScopeArgs,
        /// Start here (inclusive): a version for a stream, a global position otherwise.
        #[arg(long)]
        from: Option<u64>,
        /// Only events of this type (repeatable).
        #[arg(long = "type")]
        types: Vec<String>,
    },
    /// Inspect and manage durable jobs: stats, list, dead, retry, retry-all, discard.
    Jobs(crate::jobs_cli::JobsArgs),
    /// Delivery routes: when a matching event commits, POST it to a URL or run a program (add, list, remove).
    Routes(crate::routes_cli::RoutesArgs),
    /// Run the deliveries of the routes (webhooks, programs) until SIGINT or SIGTERM.
    Worker(crate::worker_cli::WorkerArgs),
}

#[derive(Debug, Args)]
struct AppendArgs {
    /// The stream to append to.
    stream: String,
    /// any, no-stream, exists, or the stream's exact current version.
    #[arg(long, default_value = "any")]
    expected: String,
    /// The event type.
    #[arg(
        long = "type",
        required_unless_present = "stdin",
        conflicts_with = "stdin"
    )]
    event_type: Option<String>,
    /// Event data, JSON (default {}).
    #[arg(long, conflicts_with = "stdin")]
    data: Option<String>,
    /// Event metadata, a JSON object (default {}).
    #[arg(long, conflicts_with = "stdin")]
    metadata: Option<String>,
    /// Event id, a UUID (default: a new UUIDv7).
    #[arg(long, conflicts_with = "stdin")]
    id: Option<String>,
    /// Read NDJSON events from stdin, one {"type","data","metadata","id"} a line; the whole input is one
    /// atomic append.
    #[arg(long)]
    stdin: bool,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct ScopeArgs {
    /// The stream to read.
    stream: Option<String>,
    /// Read the global log.
    #[arg(long)]
    all: bool,
    /// Read a category (streams named CATEGORY-…).
    #[arg(long)]
    category: Option<String>,
}

#[derive(Debug, Args)]
struct ReadArgs {
    #[command(flatten)]
    scope: ScopeArgs,
    /// Newest first.
    #[arg(long)]
    backward: bool,
    /// Start here (inclusive): a version for a stream, a global position otherwise.
    #[arg(long)]
    from: Option<u64>,
    /// At most this many events.
    #[arg(long)]
    limit: Option<u64>,
    /// Only events of this type (repeatable).
    #[arg(long = "type")]
    types: Vec<String>,
    /// Only events recorded strictly after this RFC 3339 time.
    #[arg(long, conflicts_with = "at_or_after")]
    after: Option<String>,
    /// Only events recorded at or after this RFC 3339 time (inclusive: with --before, the half-open
    /// window [T, U)).
    #[arg(long)]
    at_or_after: Option<String>,
    /// Only events recorded strictly before this RFC 3339 time.
    #[arg(long)]
    before: Option<String>,
}

/// A command's failure, with the exit code scripts branch on.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    #[error(transparent)]
    Store(#[from] Error),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl CliError {
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            CliError::Store(Error::WrongExpectedVersion { .. }) => 3,
            CliError::Store(Error::EventNotFound { .. } | Error::JobNotFound { .. })
            | CliError::NotFound(_) => 4,
            CliError::Store(Error::InvalidInput(_)) => 5,
            CliError::Store(Error::DuplicateEvent { .. } | Error::DuplicateJob { .. }) => 6,
            _ => 1,
        }
    }
}

/// Prints a clap error: help and version as clap renders them (exit 0), anything else as one line (exit 2).
pub(crate) fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::{ContextValue, ErrorKind};
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        _ => {
            // Clap quotes the offending argument as given: escape it inside the message before taking the
            // message's first line, so an argument with a line break is shown whole, on that line. The styled
            // rendering keeps the argument's bytes intact (the plain one drops what looks like escape
            // sequences); clap's own styling is removed after.
            let mut rendered = e.render().ansi().to_string();
            for (_, value) in e.context() {
                let values = match value {
                    ContextValue::String(v) => std::slice::from_ref(v),
                    ContextValue::Strings(vs) => vs.as_slice(),
                    _ => &[],
                };
                for v in values {
                    if let Cow::Owned(escaped) = escape_controls(v) {
                        rendered = rendered.replace(v.as_str(), &escaped);
                    }
                }
            }
            let rendered = strip_styles(&rendered);
            let first = rendered.lines().next().unwrap_or("usage error");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            print_error(&format!("{first} (see herald --help)"));
            ExitCode::from(2)
        }
    }
}

/// `text` without its SGR sequences (`ESC [ … m`, clap's colours and emphasis).
fn strip_styles(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Prints `herald: MESSAGE` as the one line on stderr, with control characters escaped (the message may
/// quote input). A closed stderr is ignored: there is nowhere left to report to.
pub(crate) fn print_error(message: &str) {
    let line = format!("herald: {}\n", escape_controls(message));
    let _ = io::stderr().lock().write_all(line.as_bytes());
}

type CliResult<T = ()> = Result<T, CliError>;

pub(crate) async fn run(cli: Cli) -> CliResult {
    if let Command::Jobs(args) = cli.command {
        let mut out = Output::new();
        for line in crate::jobs_cli::run(&cli.database, args).await? {
            out.line(&line)?;
        }
        return out.flush();
    }
    if let Command::Routes(args) = cli.command {
        let mut out = Output::new();
        for line in crate::routes_cli::run(&cli.database, args).await? {
            out.line(&line)?;
        }
        return out.flush();
    }
    if let Command::Worker(args) = cli.command {
        return crate::worker_cli::run(&cli.database, args).await;
    }
    let store = herald::connect(&cli.database).await?;
    let mut out = Output::new();
    match cli.command {
        Command::Init => {
            // Echoed through DatabaseUrl's Display: the password, if any, is shown as `***`.
            let shown = herald::core::DatabaseUrl::parse(&cli.database)?.to_string();
            out.line(&json_line(&serde_json::json!({ "database": shown })))?
        }
        Command::Append(args) => append(&*store, args, &mut out).await?,
        Command::Link {
            stream,
            ids,
            expected,
        } => {
            let stream = StreamName::new(stream)?;
            let ids = ids
                .iter()
                .map(|id| parse_id(id))
                .collect::<Result<Vec<_>, _>>()?;
            let result = store.link(&stream, &ids, expected.parse()?).await?;
            out.line(&json_line(&result))?;
        }
        Command::Read(args) => read(&*store, args, &mut out).await?,
        Command::Event { id } => {
            let id = parse_id(&id)?;
            let event = store
                .event(id)
                .await?
                .ok_or_else(|| CliError::NotFound(format!("event {id} not found")))?;
            out.line(&printable(&event)?)?;
        }
        Command::Version { stream } => {
            let stream = StreamName::new(stream)?;
            let version = store.stream_version(&stream).await?;
            out.line(&json_line(
                &serde_json::json!({"stream": stream.as_str(), "version": version}),
            ))?;
        }
        Command::Streams { prefix, limit } => streams(&*store, &prefix, limit, &mut out).await?,
        Command::Delete { stream, expected } => {
            let stream = StreamName::new(stream)?;
            store.delete_stream(&stream, expected.parse()?).await?;
            out.line(&json_line(
                &serde_json::json!({"stream": stream.as_str(), "deleted": true}),
            ))?;
        }
        Command::Tail { scope, from, types } => {
            let mut query = scope_query(scope)?.types(types);
            query.from = from;
            tail(store, query, &mut out).await?;
        }
        Command::Jobs(_) | Command::Routes(_) | Command::Worker(_) => {
            unreachable!("handled before connecting")
        }
    }
    out.flush()
}

/// The event's output line; stored data or metadata that is not JSON (a damaged or hand-edited database) is
/// an error naming the event.
fn printable(event: &herald::RecordedEvent) -> Result<String, Error> {
    event_line(event).map_err(|e| {
        Error::corrupt_event(
            event.position,
            Some(event.origin.as_ref().map_or(&event.stream, |o| &o.stream)),
            Some(event.origin.as_ref().map_or(event.version, |o| o.version)),
            format!("event {}: data or metadata is not JSON: {e}", event.id),
        )
    })
}

fn parse_id(text: &str) -> Result<Uuid, Error> {
    let id = Uuid::parse_str(text)
        .map_err(|e| Error::invalid(format!("`{text}` is not a UUID: {e}")))?;
    if id.is_nil() {
        return Err(Error::invalid("the nil UUID is not a valid event id"));
    }
    Ok(id)
}

/// One NDJSON input line of `herald append --stdin`. Data and metadata stay raw so their bytes are kept.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InputEvent {
    #[serde(rename = "type")]
    event_type: String,
    data: Option<Box<RawValue>>,
    metadata: Option<Box<RawValue>>,
    id: Option<String>,
}

async fn append(store: &dyn EventStore, args: AppendArgs, out: &mut Output) -> CliResult {
    let stream = StreamName::new(args.stream)?;
    let expected: ExpectedVersion = args.expected.parse()?;
    let events = if args.stdin {
        read_stdin_events()?
    } else {
        let event_type = args.event_type.unwrap_or_default();
        let mut event = NewEvent::new(event_type);
        if let Some(data) = args.data {
            event = event.with_data(data);
        }
        if let Some(metadata) = args.metadata {
            event = event.with_metadata(metadata);
        }
        if let Some(id) = args.id {
            event = event.with_id(parse_id(&id)?);
        }
        vec![event]
    };
    let result = store.append(&stream, events, expected).await?;
    out.line(&json_line(&result))
}

fn read_stdin_events() -> CliResult<Vec<NewEvent>> {
    let mut events = Vec::new();
    // Lines are split as bytes and decoded one by one, so text that is not UTF-8 is invalid input on a line
    // named in the message (a read error of stdin itself stays an I/O error).
    for (index, line) in io::stdin().lock().split(b'\n').enumerate() {
        let mut line = line?;
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        let line = String::from_utf8(line).map_err(|e| {
            Error::invalid(format!(
                "stdin line {} is not valid UTF-8: {}",
                index + 1,
                e.utf8_error()
            ))
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let input: InputEvent = serde_json::from_str(&line).map_err(|e| {
            Error::invalid(format!(
                "stdin line {}: not a {{\"type\",\"data\",\"metadata\",\"id\"}} JSON object: {e}",
                index + 1
            ))
        })?;
        let mut event = NewEvent::new(input.event_type);
        if let Some(data) = input.data {
            event = event.with_data(data.get());
        }
        if let Some(metadata) = input.metadata {
            event = event.with_metadata(metadata.get());
        }
        if let Some(id) = input.id {
            let id = parse_id(&id)
                .map_err(|e| Error::invalid(format!("stdin line {}: {e}", index + 1)))?;
            event = event.with_id(id);
        }
        events.push(event);
    }
    Ok(events)
}

fn scope_query(scope: ScopeArgs) -> Result<ReadQuery, Error> {
    Ok(match (scope.stream, scope.all, scope.category) {
        (Some(stream), _, _) => ReadQuery::stream(StreamName::new(stream)?),
        (None, _, Some(category)) => ReadQuery::category(category),
        _ => ReadQuery::all(),
    })
}

async fn read(store: &dyn EventStore, args: ReadArgs, out: &mut Output) -> CliResult {
    let mut query = scope_query(args.scope)?.types(args.types);
    if args.backward {
        query = query.backward();
    }
    query.from = args.from;
    query.limit = args.limit;
    if let Some(after) = args.after {
        query = query.recorded_after(timefmt::parse_rfc3339(&after)?);
    }
    if let Some(at_or_after) = args.at_or_after {
        query = query.recorded_at_or_after(timefmt::parse_rfc3339(&at_or_after)?);
    }
    if let Some(before) = args.before {
        query = query.recorded_before(timefmt::parse_rfc3339(&before)?);
    }
    let mut events = store.read(query);
    while let Some(event) = events.next().await {
        out.line(&printable(&event?)?)?;
    }
    Ok(())
}

async fn streams(
    store: &dyn EventStore,
    prefix: &str,
    limit: Option<u64>,
    out: &mut Output,
) -> CliResult {
    const PAGE: u64 = 1_000;
    if limit == Some(0) {
        return Err(Error::invalid("--limit must be at least 1").into());
    }
    let mut remaining = limit.unwrap_or(u64::MAX);
    let mut after: Option<String> = None;
    while remaining > 0 {
        let page_size = remaining.min(PAGE);
        let page = store
            .streams(prefix, after.as_deref(), page_size as usize)
            .await?;
        for info in &page {
            out.line(&json_line(info))?;
        }
        remaining -= page.len() as u64;
        match page.last() {
            Some(last) if page.len() as u64 == page_size => after = Some(last.stream.clone()),
            _ => break,
        }
    }
    Ok(())
}

async fn tail(store: Arc<dyn EventStore>, query: ReadQuery, out: &mut Output) -> CliResult {
    let mut events = store.follow(query);
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    // A reader that went away ends the tail (exit 0, like any Unix filter): noticed while idle when stdout is
    // a pipe, else at the next write.
    let reader_gone = stdout_reader_gone();
    tokio::pin!(reader_gone);
    loop {
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            () = &mut reader_gone => return Ok(()),
            next = events.next() => match next {
                Some(event) => {
                    out.line(&printable(&event?)?)?;
                    out.flush()?;
                    if out.closed {
                        return Ok(());
                    }
                }
                None => return Ok(()),
            },
        }
    }
}

/// Resolves when stdout is a pipe (or socket, or terminal) whose other end has gone, which `poll` reports as
/// an error or hang-up on stdout; never resolves where nothing can report that (stdout a regular file).
/// The wait runs on a plain thread, detached: a thread of the runtime's blocking pool would keep the runtime
/// from shutting down.
async fn stdout_reader_gone() {
    let (gone, reported) = tokio::sync::oneshot::channel();
    let watcher = std::thread::Builder::new()
        .name("herald-stdout-watch".to_owned())
        .spawn(move || {
            if wait_for_stdout_hangup() {
                let _ = gone.send(());
            }
        });
    if watcher.is_ok() && reported.await.is_ok() {
        return;
    }
    std::future::pending().await
}

/// Blocks until stdout's other end has gone (true), or until that cannot be watched (false).
fn wait_for_stdout_hangup() -> bool {
    use rustix::event::{PollFd, PollFlags, poll};
    use std::os::fd::AsFd;
    let stdout = io::stdout();
    loop {
        // No events asked for: only the conditions always reported (error, hang-up, invalid fd) wake it.
        let mut fds = [PollFd::from_borrowed_fd(stdout.as_fd(), PollFlags::empty())];
        match poll(&mut fds, None) {
            Ok(_) => {
                let revents = fds[0].revents();
                if revents.intersects(PollFlags::ERR | PollFlags::HUP) {
                    return true;
                }
                if revents.contains(PollFlags::NVAL) {
                    return false;
                }
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => return false,
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Buffered stdout that treats a closed pipe (`herald read --all | head`) as a normal end.
struct Output {
    stdout: io::BufWriter<io::Stdout>,
    closed: bool,
}

impl Output {
    fn new() -> Self {
        Output {
            stdout: io::BufWriter::with_capacity(64 * 1024, io::stdout()),
            closed: false,
        }
    }

    fn line(&mut self, line: &str) -> CliResult {
        if self.closed {
            return Ok(());
        }
        let written = self
            .stdout
            .write_all(line.as_bytes())
            .and_then(|()| self.stdout.write_all(b"\n"));
        self.check(written)
    }

    fn flush(&mut self) -> CliResult {
        if self.closed {
            return Ok(());
        }
        let flushed = self.stdout.flush();
        self.check(flushed)
    }

    fn check(&mut self, result: io::Result<()>) -> CliResult {
        match result {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(())
            }
            other => Ok(other?),
        }
    }
}
