//! The CLI contract, exercised through the real binary: output shapes, exit codes, one-line errors, and that
//! rejected input leaves the store untouched. Every case runs on a real SQLite file and, with the `postgres`
//! feature, on the local PostgreSQL (a fresh schema per test): the contract is the same on both.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

/// Generates one `#[test]` per contract case and backend.
macro_rules! cli_contract {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(#[test]
            fn $case() {
                super::$case(super::Db::sqlite());
            })*
        }

        #[cfg(feature = "postgres")]
        mod postgres {
            $(#[test]
            fn $case() {
                if let Some(db) = super::Db::postgres() {
                    super::$case(db);
                }
            })*
        }
    };
}

cli_contract!(
    append_prints_versions_positions_and_ids,
    read_prints_events_exactly_as_written,
    multi_line_json_is_read_back_on_one_line,
    stdin_append_is_one_atomic_append,
    wrong_expected_version_exits_3_and_names_everything,
    invalid_input_exits_5_and_stores_nothing,
    duplicates_exit_6_and_exact_retries_are_idempotent,
    links_read_with_origin_and_unknown_events_exit_4,
    read_options_select_and_order,
    version_streams_and_delete,
    database_url_comes_from_the_environment,
    tail_follows_appends_from_another_process_and_exits_0_on_sigterm,
);

/// A fresh, empty database and a way to run `herald` against it.
struct Db {
    url: String,
    _cleanup: Cleanup,
}

/// Removes the test database when the test ends (held only for its `Drop`).
#[allow(dead_code)]
enum Cleanup {
    Directory(tempfile::TempDir),
    #[cfg(feature = "postgres")]
    Schema(herald_store_testkit::postgres::TestSchema),
}

impl Db {
    /// A SQLite file in a temporary directory.
    fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Db {
            url: format!("sqlite://{}", dir.path().join("herald.db").display()),
            _cleanup: Cleanup::Directory(dir),
        }
    }

    /// A schema of its own on the test PostgreSQL; `None` (with the reason printed) when the server cannot
    /// be reached outside CI. In CI an unreachable server fails the test.
    #[cfg(feature = "postgres")]
    fn postgres() -> Option<Self> {
        use herald_store_testkit::postgres::{TestSchema, available_blocking};
        if !available_blocking("herald CLI on PostgreSQL") {
            return None;
        }
        let schema = TestSchema::new("herald_cli");
        Some(Db {
            url: schema.url(),
            _cleanup: Cleanup::Schema(schema),
        })
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
        cmd.arg("--database").arg(&self.url).args(args);
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    fn run_stdin(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = self
            .cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// Runs and expects exit 0; returns stdout lines parsed as JSON.
    fn ok(&self, args: &[&str]) -> Vec<Value> {
        let out = self.run(args);
        assert_success(&out, args);
        json_lines(&out)
    }

    fn read_raw(&self, args: &[&str]) -> Vec<String> {
        let out = self.run(args);
        assert_success(&out, args);
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

fn assert_success(out: &Output, args: &[&str]) {
    assert!(
        out.status.success(),
        "herald {args:?} failed with {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect()
}

/// Asserts the exit code and that stderr is one line containing every needle.
fn assert_fails(out: &Output, code: i32, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "{stderr:?} should mention {needle:?}"
        );
    }
    assert!(out.stdout.is_empty(), "nothing on stdout when failing");
}

fn append_prints_versions_positions_and_ids(db: Db) {
    let id = "0190c8a4-5c56-7d3e-8f00-000000000001";
    let first = db.ok(&["append", "order-1", "--type", "OrderPlaced", "--id", id]);
    assert_eq!(
        first[0],
        serde_json::json!({"stream":"order-1","first_version":0,"last_version":0,
            "first_position":1,"last_position":1,"ids":[id]})
    );
    let second = db.ok(&[
        "append",
        "order-2",
        "--type",
        "OrderPlaced",
        "--expected",
        "no-stream",
    ]);
    assert_eq!(second[0]["first_position"], 2);
    assert_eq!(second[0]["first_version"], 0);
    let third = db.ok(&["append", "order-1", "--type", "Paid", "--expected", "0"]);
    assert_eq!(third[0]["first_version"], 1);
    assert_eq!(third[0]["first_position"], 3);
}

fn read_prints_events_exactly_as_written(db: Db) {
    let data = r#"{"b":1,"a":123456789012345678901234567890,"z":"\u0000","u":"héllo ✓ 🎉"}"#;
    let metadata = r#"{"correlation_id":"0190c8a4-5c56-7d3e-8f00-0000000000aa","k":[1,2]}"#;
    db.ok(&[
        "append",
        "s-1",
        "--type",
        "T",
        "--data",
        data,
        "--metadata",
        metadata,
    ]);
    let lines = db.read_raw(&["read", "s-1"]);
    assert_eq!(lines.len(), 1);
    assert!(
        lines[0].contains(&format!(r#""data":{data}"#)),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains(&format!(r#""metadata":{metadata}"#)));
    let event: Value = serde_json::from_str(&lines[0]).unwrap();
    let keys: Vec<&str> = event
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for key in [
        "id",
        "type",
        "stream",
        "version",
        "position",
        "data",
        "metadata",
        "recorded_at",
    ] {
        assert!(keys.contains(&key), "missing {key}");
    }
    assert!(!keys.contains(&"origin_stream"));
    let recorded_at = event["recorded_at"].as_str().unwrap();
    assert_eq!(
        recorded_at.len(),
        "2026-11-26T17:37:18.123456Z".len(),
        "{recorded_at}"
    );
    assert!(recorded_at.ends_with('Z'));
}

fn multi_line_json_is_read_back_on_one_line(db: Db) {
    db.ok(&["append", "s", "--type", "T", "--data", "{\n  \"a\": 1\n}"]);
    let lines = db.read_raw(&["read", "s"]);
    assert_eq!(lines.len(), 1);
    let event: Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(event["data"]["a"], 1);
}

fn stdin_append_is_one_atomic_append(db: Db) {
    let input = concat!(
        r#"{"type":"A","data":{"n":1}}"#,
        "\n\n",
        r#"{"type":"B","metadata":{"m":true},"id":"0190c8a4-5c56-7d3e-8f00-000000000002"}"#,
        "\n"
    );
    let out = db.run_stdin(
        &["append", "s", "--stdin", "--expected", "no-stream"],
        input,
    );
    assert_success(&out, &["append --stdin"]);
    let result = &json_lines(&out)[0];
    assert_eq!(result["first_version"], 0);
    assert_eq!(result["last_version"], 1);
    assert_eq!(result["ids"][1], "0190c8a4-5c56-7d3e-8f00-000000000002");
    let events = db.ok(&["read", "s"]);
    assert_eq!(events[0]["data"], serde_json::json!({"n":1}));
    assert_eq!(events[1]["metadata"], serde_json::json!({"m":true}));

    // A bad third line rejects the whole input: nothing of it is stored.
    let bad = concat!(
        r#"{"type":"C"}"#,
        "\n",
        r#"{"type":"D"}"#,
        "\n",
        "{not json}\n"
    );
    let out = db.run_stdin(&["append", "s", "--stdin"], bad);
    assert_fails(&out, 5, &["line 3"]);
    assert_eq!(db.ok(&["read", "s"]).len(), 2);

    let out = db.run_stdin(&["append", "s", "--stdin"], r#"{"type":"C","extra":1}"#);
    assert_fails(&out, 5, &["line 1", "extra"]);
    let out = db.run_stdin(&["append", "s", "--stdin"], "");
    assert_fails(&out, 5, &["no events"]);
    assert_eq!(db.ok(&["read", "s"]).len(), 2);
}

fn wrong_expected_version_exits_3_and_names_everything(db: Db) {
    db.ok(&["append", "acct-9", "--type", "Opened"]);
    let out = db.run(&["append", "acct-9", "--type", "X", "--expected", "5"]);
    assert_fails(&out, 3, &["acct-9", "expected 5", "actual 0"]);
    let out = db.run(&["append", "acct-9", "--type", "X", "--expected", "no-stream"]);
    assert_fails(&out, 3, &["acct-9", "no-stream"]);
    let out = db.run(&["append", "fresh", "--type", "X", "--expected", "exists"]);
    assert_fails(&out, 3, &["fresh", "no stream"]);
    assert_eq!(db.ok(&["read", "--all"]).len(), 1);
}

fn invalid_input_exits_5_and_stores_nothing(db: Db) {
    db.ok(&["append", "s", "--type", "T"]);
    let cases: &[(&[&str], &str)] = &[
        (
            &["append", "s", "--type", "T", "--data", "{nope"],
            "data is not valid JSON",
        ),
        (
            &["append", "s", "--type", "T", "--metadata", "[1]"],
            "metadata must be a JSON object",
        ),
        (
            &["append", "s", "--type", "T", "--id", "not-a-uuid"],
            "not a UUID",
        ),
        (
            &[
                "append",
                "s",
                "--type",
                "T",
                "--id",
                "00000000-0000-0000-0000-000000000000",
            ],
            "nil UUID",
        ),
        (&["append", "$system", "--type", "T"], "reserved"),
        (&["append", "s", "--type", ""], "event type is empty"),
        (
            &["append", "s", "--type", "T", "--expected", "soon"],
            "soon",
        ),
        (&["read", "s", "--after", "yesterday"], "RFC 3339"),
        (&["read", "--category", "a-b"], "a-b"),
        (&["read", "--all", "--limit", "0"], "limit"),
        (&["event", "nope"], "not a UUID"),
        (&["link", "t", "nope"], "not a UUID"),
    ];
    for (args, needle) in cases {
        let out = db.run(args);
        assert_fails(&out, 5, &[needle]);
    }
    assert_eq!(db.ok(&["read", "--all"]).len(), 1);
}

fn duplicates_exit_6_and_exact_retries_are_idempotent(db: Db) {
    let id = "0190c8a4-5c56-7d3e-8f00-000000000003";
    let first = db.ok(&["append", "s", "--type", "T", "--id", id]);
    db.ok(&["append", "s", "--type", "T"]);
    // The same append again: same result, nothing written.
    let retry = db.ok(&["append", "s", "--type", "T", "--id", id]);
    assert_eq!(retry, first);
    assert_eq!(db.ok(&["read", "--all"]).len(), 2);
    let out = db.run(&["append", "other", "--type", "T", "--id", id]);
    assert_fails(&out, 6, &[id, "other"]);
    // Linking twice into one stream is a duplicate.
    db.ok(&["link", "l", id]);
    let out = db.run(&["link", "l", id]);
    assert_fails(&out, 6, &[id]);
}

fn links_read_with_origin_and_unknown_events_exit_4(db: Db) {
    let a = db.ok(&["append", "order-1", "--type", "Placed"])[0]["ids"][0]
        .as_str()
        .unwrap()
        .to_owned();
    let b = db.ok(&["append", "order-2", "--type", "Placed"])[0]["ids"][0]
        .as_str()
        .unwrap()
        .to_owned();
    let linked = db.ok(&["link", "placed", &a, &b, "--expected", "no-stream"]);
    assert_eq!(
        linked[0],
        serde_json::json!({"stream":"placed","first_version":0,"last_version":1})
    );
    let events = db.ok(&["read", "placed"]);
    assert_eq!(events.len(), 2);
    assert_eq!(events[1]["stream"], "placed");
    assert_eq!(events[1]["version"], 1);
    assert_eq!(events[1]["position"], 2);
    assert_eq!(events[1]["origin_stream"], "order-2");
    assert_eq!(events[1]["origin_version"], 0);
    // The global log holds each event once.
    assert_eq!(db.ok(&["read", "--all"]).len(), 2);

    let event = db.ok(&["event", &b]);
    assert_eq!(event[0]["stream"], "order-2");
    let unknown = "0190c8a4-5c56-7d3e-8f00-00000000ffff";
    assert_fails(&db.run(&["event", unknown]), 4, &[unknown]);
    assert_fails(&db.run(&["link", "placed", unknown]), 4, &[unknown]);
}

fn read_options_select_and_order(db: Db) {
    for (stream, t) in [
        ("order-1", "A"),
        ("order-2", "B"),
        ("user-1", "A"),
        ("order-1", "B"),
    ] {
        db.ok(&["append", stream, "--type", t]);
    }
    let positions = |args: &[&str]| -> Vec<u64> {
        db.ok(args)
            .iter()
            .map(|e| e["position"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(positions(&["read", "--all"]), [1, 2, 3, 4]);
    assert_eq!(positions(&["read", "--all", "--backward"]), [4, 3, 2, 1]);
    assert_eq!(
        positions(&["read", "--all", "--from", "2", "--limit", "2"]),
        [2, 3]
    );
    assert_eq!(
        positions(&["read", "--all", "--backward", "--from", "3"]),
        [3, 2, 1]
    );
    assert_eq!(positions(&["read", "--category", "order"]), [1, 2, 4]);
    assert_eq!(positions(&["read", "--all", "--type", "A"]), [1, 3]);
    assert_eq!(
        positions(&["read", "--all", "--type", "A", "--type", "B"]),
        [1, 2, 3, 4]
    );
    assert_eq!(positions(&["read", "order-1", "--from", "1"]), [4]);
    assert!(positions(&["read", "nothing-here"]).is_empty());

    let all = db.ok(&["read", "--all"]);
    let third_at = all[2]["recorded_at"].as_str().unwrap();
    // Each append ran in its own process, milliseconds apart, so the bound is exactly the third event's time:
    // --after and --before are exclusive, --at-or-after inclusive.
    assert_eq!(positions(&["read", "--all", "--after", third_at]), [4]);
    assert_eq!(
        positions(&["read", "--all", "--at-or-after", third_at]),
        [3, 4]
    );
    assert_eq!(positions(&["read", "--all", "--before", third_at]), [1, 2]);
    assert_fails(
        &db.run(&[
            "read",
            "--all",
            "--after",
            third_at,
            "--at-or-after",
            third_at,
        ]),
        2,
        &["--at-or-after"],
    );
    assert_eq!(
        positions(&[
            "read",
            "--category",
            "order",
            "--at-or-after",
            third_at,
            "--backward"
        ]),
        [4]
    );

    // Usage errors exit 2 with one line.
    assert_fails(&db.run(&["read"]), 2, &[]);
    assert_fails(&db.run(&["read", "s", "--all"]), 2, &[]);
    assert_fails(&db.run(&["frobnicate"]), 2, &["frobnicate"]);
}

fn version_streams_and_delete(db: Db) {
    assert_eq!(
        db.ok(&["version", "ghost"])[0],
        serde_json::json!({"stream":"ghost","version":null})
    );
    for s in ["user-1", "user-2", "order-1", "user-2"] {
        db.ok(&["append", s, "--type", "T"]);
    }
    assert_eq!(
        db.ok(&["version", "user-2"])[0],
        serde_json::json!({"stream":"user-2","version":1})
    );
    let names = |args: &[&str]| -> Vec<String> {
        db.ok(args)
            .iter()
            .map(|s| s["stream"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(names(&["streams"]), ["order-1", "user-1", "user-2"]);
    assert_eq!(
        names(&["streams", "--prefix", "user"]),
        ["user-1", "user-2"]
    );
    assert_eq!(names(&["streams", "--limit", "1"]), ["order-1"]);

    assert_fails(
        &db.run(&["delete", "user-2", "--expected", "0"]),
        3,
        &["user-2"],
    );
    db.ok(&["delete", "user-2", "--expected", "1"]);
    assert_eq!(names(&["streams", "--prefix", "user"]), ["user-1"]);
    assert!(db.ok(&["read", "user-2"]).is_empty());
    assert_eq!(db.ok(&["version", "user-2"])[0]["version"], Value::Null);
    // The global log keeps the events.
    assert_eq!(db.ok(&["read", "--all"]).len(), 4);
    let again = db.ok(&["append", "user-2", "--type", "T", "--expected", "no-stream"]);
    assert_eq!(again[0]["first_version"], 0);
}

fn database_url_comes_from_the_environment(db: Db) {
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .env("HERALD_DATABASE_URL", &db.url)
        .args(["append", "env-1", "--type", "T"])
        .output()
        .unwrap();
    assert_success(&out, &["env append"]);
    assert_eq!(db.ok(&["read", "env-1"]).len(), 1);
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["--database", "mysql://x", "streams"])
        .output()
        .unwrap();
    assert_fails(&out, 5, &["mysql"]);
}

fn tail_follows_appends_from_another_process_and_exits_0_on_sigterm(db: Db) {
    db.ok(&["append", "feed-1", "--type", "Old"]);
    let mut tail = db
        .cmd(&["tail", "--category", "feed"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(tail.stdout.take().unwrap()).lines();
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["type"], "Old");
    // Appended by another process: the tail must pick it up (it blocks on the next line until it does).
    db.ok(&["append", "other-1", "--type", "NotInCategory"]);
    db.ok(&["append", "feed-2", "--type", "New"]);
    let second: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(second["type"], "New");
    assert_eq!(second["position"], 3);
    let killed = Command::new("kill")
        .args(["-TERM", &tail.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tail.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}
