//! What the CLI prints when things go wrong, through the real binary: stderr is exactly one line per error,
//! with control characters from the input shown as escapes and no log line before it unless logs were asked
//! for; PostgreSQL failures say what the server said; a damaged row names its event; a closed stdout ends a
//! command quietly; bytes that are not UTF-8 on `append --stdin` are invalid input on a named line.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use herald_store_testkit::postgres::{TestSchema, available_blocking, execute, server_url};

const HERALD: &str = env!("CARGO_BIN_EXE_herald");

/// A SQLite database in a temporary directory (removed with it).
struct Sqlite {
    dir: tempfile::TempDir,
}

impl Sqlite {
    fn new() -> Self {
        Sqlite {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("herald.db")
    }

    fn url(&self) -> String {
        format!("sqlite://{}", self.path().display())
    }
}

fn herald(url: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(HERALD);
    // Logs are off unless asked for: the tests that want them set these themselves.
    cmd.env_remove("RUST_LOG").env_remove("HERALD_LOG");
    cmd.arg("--database").arg(url).args(args);
    cmd
}

fn run(url: &str, args: &[&str]) -> Output {
    herald(url, args).output().unwrap()
}

fn run_stdin(url: &str, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = herald(url, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn ok(url: &str, args: &[&str]) -> Output {
    let out = run(url, args);
    assert!(
        out.status.success(),
        "herald {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Asserts the exit code and that stderr is exactly one line (`herald: …\n`) with no ESC byte and no other
/// control character; returns that line.
fn one_error_line(out: &Output, code: i32) -> String {
    let stderr = String::from_utf8(out.stderr.clone()).expect("stderr is UTF-8");
    assert_eq!(out.status.code(), Some(code), "stderr: {stderr:?}");
    assert!(stderr.starts_with("herald: "), "{stderr:?}");
    let line = stderr
        .strip_suffix('\n')
        .unwrap_or_else(|| panic!("one line ending in a line break: {stderr:?}"));
    assert!(
        !line.chars().any(char::is_control),
        "a control character on stderr: {stderr:?}"
    );
    line.to_owned()
}

/// Waits for `child` to exit, at most `limit`; kills it and fails the test past that.
fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("herald did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stderr_of(child: &mut Child) -> String {
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    stderr
}

#[test]
fn input_in_error_messages_is_escaped_to_one_line() {
    let db = Sqlite::new();
    ok(&db.url(), &["append", "s", "--type", "T"]);
    let evil = "x\ny\u{1b}[31mred\u{7}\r\u{9b}";
    let cases: &[(&[&str], i32)] = &[
        (&["append", evil, "--type", "T"], 5),
        (&["append", "s", "--type", "T", "--expected", evil], 5),
        (&["append", "s", "--type", "T", "--id", evil], 5),
        (&["event", evil], 5),
        (&["link", "t", evil], 5),
        (&["delete", "s", "--expected", evil], 5),
        (&["read", "--category", evil], 5),
        (&["read", "--all", "--after", evil], 5),
        (&["jobs", "retry", evil], 5),
        (&["jobs", "list", "--state", evil], 5),
        (&["read", "--all", "--limit", evil], 2),
        (&[evil], 2),
    ];
    for (args, code) in cases {
        let line = one_error_line(&run(&db.url(), args), *code);
        assert!(
            line.contains("\\u{1b}[31m"),
            "herald {args:?}: the escape sequence is shown as text: {line}"
        );
        assert!(
            line.contains("\\n") || line.contains("x\\ny"),
            "herald {args:?}: the line break is shown as text: {line}"
        );
    }
    // A database URL is input too.
    let line = one_error_line(&run(&format!("mysql://{evil}"), &["streams"]), 5);
    assert!(line.contains("\\u{1b}[31m"), "{line}");
    assert_eq!(
        String::from_utf8(run(&db.url(), &["read", "--all"]).stdout)
            .unwrap()
            .lines()
            .count(),
        1,
        "nothing was written"
    );
}

#[test]
fn stdin_that_is_not_utf8_is_invalid_input_on_a_named_line() {
    let db = Sqlite::new();
    let cases: &[(&[u8], &str)] = &[
        (b"{\"type\":\"A\"}\n{\"type\":\"B\xff\"}\n", "line 2"),
        (b"\xc3", "line 1"),
        (
            b"{\"type\":\"A\"}\r\n{\"type\":\"A\"}\r\n\xe2\x82\n",
            "line 3",
        ),
        (b"\x80\x81\x82", "line 1"),
    ];
    for (input, line) in cases {
        let out = run_stdin(&db.url(), &["append", "s", "--stdin"], input);
        let message = one_error_line(&out, 5);
        assert!(message.contains(line), "{message} should name {line}");
        assert!(message.contains("UTF-8"), "{message}");
    }
    // Nothing of any of them was stored; CRLF input that is valid still works.
    let out = run_stdin(
        &db.url(),
        &["append", "s", "--stdin", "--expected", "no-stream"],
        b"{\"type\":\"A\"}\r\n{\"type\":\"\xc3\xa9\"}\r\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Spawns `herald tail` and reads its first line; returns the child (stdout closed by this side).
fn tail_then_close(url: &str, args: &[&str]) -> Child {
    let mut child = herald(url, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    assert!(first.contains("\"type\""), "{first}");
    drop(reader);
    child
}

#[test]
fn idle_tail_exits_0_quietly_when_its_reader_closes() {
    let db = Sqlite::new();
    ok(&db.url(), &["append", "s-1", "--type", "T"]);
    // `herald tail --all | head -n 1`: after the one line, no event arrives; the tail must still end.
    let mut tail = tail_then_close(&db.url(), &["tail", "--all"]);
    let status = wait_exit(&mut tail, Duration::from_secs(20));
    assert_eq!(status.code(), Some(0));
    assert_eq!(stderr_of(&mut tail), "");
}

#[test]
fn tail_and_read_exit_0_quietly_when_their_reader_closes_while_writing() {
    let db = Sqlite::new();
    // More history than a pipe holds, so the command is still writing when the reader goes.
    let line = format!(
        "{{\"type\":\"T\",\"data\":{{\"pad\":\"{}\"}}}}\n",
        "x".repeat(1000)
    );
    let out = run_stdin(
        &db.url(),
        &["append", "s-1", "--stdin"],
        line.repeat(500).as_bytes(),
    );
    assert!(out.status.success());
    for args in [&["tail", "--all"][..], &["read", "--all"], &["read", "s-1"]] {
        let mut child = tail_then_close(&db.url(), args);
        let status = wait_exit(&mut child, Duration::from_secs(20));
        assert_eq!(status.code(), Some(0), "herald {args:?}");
        assert_eq!(stderr_of(&mut child), "", "herald {args:?}");
    }
}

#[test]
fn a_tail_whose_reader_closed_ends_at_the_next_event_at_the_latest() {
    let db = Sqlite::new();
    ok(&db.url(), &["append", "s-1", "--type", "T"]);
    let mut tail = tail_then_close(&db.url(), &["tail", "--all"]);
    ok(&db.url(), &["append", "s-1", "--type", "T"]);
    let status = wait_exit(&mut tail, Duration::from_secs(20));
    assert_eq!(status.code(), Some(0));
    assert_eq!(stderr_of(&mut tail), "");
}

#[test]
fn a_corrupt_row_names_its_event() {
    let db = Sqlite::new();
    ok(&db.url(), &["append", "order-1", "--type", "Placed"]);
    ok(&db.url(), &["append", "order-1", "--type", "Paid"]);
    ok(&db.url(), &["append", "order-2", "--type", "Placed"]);
    let conn = rusqlite::Connection::open(db.path()).unwrap();
    conn.execute(
        "UPDATE events SET data = '{not json' WHERE position = 2",
        [],
    )
    .unwrap();
    conn.execute("UPDATE events SET id = x'0102' WHERE position = 3", [])
        .unwrap();
    drop(conn);

    let line = one_error_line(&run(&db.url(), &["read", "order-1"]), 1);
    for needle in ["position 2", "stream `order-1`", "version 1", "not JSON"] {
        assert!(line.contains(needle), "{line} should mention {needle}");
    }
    let line = one_error_line(&run(&db.url(), &["read", "order-2"]), 1);
    for needle in ["position 3", "stream `order-2`", "version 0"] {
        assert!(line.contains(needle), "{line} should mention {needle}");
    }
    let line = one_error_line(&run(&db.url(), &["read", "--all", "--from", "3"]), 1);
    assert!(line.contains("position 3"), "{line}");
}

/// A PostgreSQL schema for one test, or `None` when the server is unreachable outside CI.
fn postgres() -> Option<TestSchema> {
    available_blocking("herald CLI errors on PostgreSQL").then(|| TestSchema::new("herald_cli_err"))
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Makes every insert into the schema's events fail, as a full disk would, with a reason the message must
/// carry.
fn break_writes(schema: &TestSchema) {
    let s = schema.name();
    block_on(execute(&format!(
        "CREATE FUNCTION {s}.refuse() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'simulated full disk'; END $$ \
         LANGUAGE plpgsql; CREATE TRIGGER refuse BEFORE INSERT ON {s}.events FOR EACH ROW EXECUTE FUNCTION {s}.refuse();"
    )))
    .unwrap();
}

#[test]
fn a_failed_write_prints_only_its_error_line_with_the_servers_reason() {
    let Some(schema) = postgres() else { return };
    ok(&schema.url(), &["append", "s", "--type", "T"]);
    break_writes(&schema);
    let line = one_error_line(&run(&schema.url(), &["append", "s", "--type", "T"]), 1);
    assert!(line.contains("simulated full disk"), "{line}");
    assert!(line.contains("P0001"), "{line}");
    assert!(!line.contains("backend error: backend error"), "{line}");

    // Logs only when asked for, and without colour on a pipe.
    for (var, value) in [("", ""), ("RUST_LOG", "error"), ("HERALD_LOG", "debug")] {
        let mut cmd = herald(&schema.url(), &["append", "s", "--type", "T"]);
        if !var.is_empty() {
            cmd.env(var, value);
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert!(
            !stderr.contains('\u{1b}'),
            "no colour on a pipe: {stderr:?}"
        );
        let lines: Vec<&str> = stderr.lines().collect();
        if var.is_empty() {
            assert_eq!(lines.len(), 1, "{stderr}");
        } else {
            assert!(lines.len() > 1, "{var}={value} shows logs: {stderr}");
            // Background tasks may log after the error line (a writer stopping at exit): the error is the one
            // line that is not a log record.
            let errors: Vec<&&str> = lines.iter().filter(|l| l.starts_with("herald: ")).collect();
            assert_eq!(errors.len(), 1, "{stderr}");
            assert!(errors[0].contains("simulated full disk"), "{stderr}");
        }
    }
    let out = run(&schema.url(), &["-v", "append", "s", "--type", "T"]);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.lines().count() > 1, "-v shows logs: {stderr}");
    assert!(!stderr.contains('\u{1b}'), "{stderr:?}");
}

#[test]
fn postgres_errors_say_what_the_server_said() {
    if !available_blocking("herald CLI errors on PostgreSQL") {
        return;
    }
    let server = server_url();
    let (base, _) = server.rsplit_once('/').unwrap();
    let line = one_error_line(&run(&format!("{base}/herald_no_such_db"), &["streams"]), 1);
    assert!(
        line.contains("\"herald_no_such_db\" does not exist") && line.contains("3D000"),
        "{line}"
    );
    assert!(!line.contains("db error"), "{line}");

    // A closed port: the message names host and port and why.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let line = one_error_line(
        &run(
            &format!("postgres://root@127.0.0.1:{port}/test"),
            &["streams"],
        ),
        1,
    );
    assert!(line.contains(&format!("port {port}")), "{line}");
    assert!(line.to_lowercase().contains("refused"), "{line}");

    // A role without the privileges: PostgreSQL's "permission denied", with its code.
    let schema = TestSchema::new("herald_cli_perm");
    ok(&schema.url(), &["append", "s", "--type", "T"]);
    let role = format!("herald_noperm_{}", std::process::id());
    block_on(execute(&format!(
        "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN"
    )))
    .unwrap();
    let url = schema.url().replacen("root@", &format!("{role}@"), 1);
    let out = run(&url, &["read", "--all"]);
    let _ = block_on(execute(&format!("DROP OWNED BY {role}; DROP ROLE {role}")));
    let line = one_error_line(&out, 1);
    assert!(
        line.contains("permission denied") && line.contains("42501"),
        "{line}"
    );
    assert!(!line.contains("backend error: backend error"), "{line}");
}

#[test]
fn an_empty_existing_file_is_refused_not_made_a_store() {
    let db = Sqlite::new();
    std::fs::File::create(db.path()).unwrap();
    for args in [
        &["streams"][..],
        &["init"],
        &["append", "s", "--type", "T"],
        &["jobs", "stats"],
    ] {
        let line = one_error_line(&run(&db.url(), args), 5);
        assert!(line.contains("empty file"), "herald {args:?}: {line}");
    }
    assert_eq!(std::fs::metadata(db.path()).unwrap().len(), 0);
}

#[test]
fn a_dead_jobs_error_text_is_escaped_in_the_listing() {
    use herald::jobs::{JobResult, JobsConfig, NewJob, WorkerPool};
    let db = Sqlite::new();
    block_on(async {
        let options = herald::OpenOptions {
            jobs: JobsConfig::default().full_sync(false),
        };
        let jobs = herald::open_with(&db.url(), options).await.unwrap().jobs;
        jobs.enqueue(NewJob::raw("hook", "{}").max_attempts(1))
            .await
            .unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let pool = WorkerPool::builder(jobs.clone())
            .queue("default", 1)
            .handle_raw("hook", |_, _| async {
                JobResult::fail("bad\ngateway \u{1b}[31mred")
            })
            .start(stop.clone());
        tokio::time::timeout(Duration::from_secs(30), async {
            while jobs.dead(10).await.unwrap().is_empty() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the job dies within 30 s");
        stop.cancel();
        pool.join().await;
    });
    let out = ok(&db.url(), &["jobs", "dead"]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let line = stdout.strip_suffix('\n').unwrap();
    assert!(!line.chars().any(char::is_control), "{stdout:?}");
    assert!(line.contains("bad\\ngateway \\u{1b}[31mred"), "{line}");
}

#[test]
fn a_corrupt_row_names_its_event_on_postgres() {
    let Some(schema) = postgres() else { return };
    ok(&schema.url(), &["append", "order-1", "--type", "Placed"]);
    ok(&schema.url(), &["append", "order-1", "--type", "Paid"]);
    // PostgreSQL's types keep ids and text sound; a timestamp out of range is what a hand edit can break.
    block_on(execute(&format!(
        "UPDATE {}.events SET recorded_at = 9223372036854775807 WHERE position = 2",
        schema.name()
    )))
    .unwrap();
    let line = one_error_line(&run(&schema.url(), &["read", "order-1"]), 1);
    for needle in [
        "position 2",
        "stream `order-1`",
        "version 1",
        "out of range",
    ] {
        assert!(line.contains(needle), "{line} should mention {needle}");
    }
}

#[test]
fn a_log_record_is_one_line_whatever_its_fields_hold() {
    let dir = tempfile::tempdir().unwrap();
    // The store logs its path when it opens: a path with an escape sequence and a bell in it (URL parsing
    // drops tabs and line breaks, as the URL standard says).
    let odd = dir.path().join("a\u{7}b\u{1b}[31mc");
    std::fs::create_dir(&odd).unwrap();
    let url = format!("sqlite://{}", odd.join("h.db").display());
    let out = herald(&url, &["streams"])
        .env("HERALD_LOG", "debug")
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("b\\x1b[31mc") || stderr.contains("b\\u{1b}[31mc"),
        "{stderr}"
    );
    for line in stderr.lines() {
        assert!(!line.chars().any(char::is_control), "{line:?}");
        // Every line is a record of its own: it starts with the record's timestamp.
        assert!(
            line.starts_with("20"),
            "a record split over lines: {stderr}"
        );
    }
}
