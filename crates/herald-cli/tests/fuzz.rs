//! Fuzzing of the CLI's outside input through the real binary: NDJSON on `herald append --stdin` (valid event
//! lines mutated, random bytes, invalid UTF-8, blank lines, reused and broken ids) and argument vectors for
//! every command that ends by itself (valid arguments mutated, random tokens). Each run must end within
//! [`RUN_TIMEOUT`] with a documented exit code — 0, 2 (usage), 3, 4, 5 (invalid input), 6 — never 1 or a
//! signal (a panic); a refused run must leave the store as it was, and an accepted append must add exactly
//! the events it printed (or be an idempotent retry of stored ones).
//!
//! Driving the binary costs a process per case, so CI runs a few hundred (`HERALD_FUZZ_CLI_CASES`, default
//! 150 per test); the parsers underneath are fuzzed in-process with thousands of cases in herald-core's
//! `parsers_fuzz`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use herald::uuid::Uuid;
use herald::{EventStore, EventStoreExt, ReadQuery, RecordedEvent, StreamInfo};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use tokio::io::AsyncWriteExt;

/// Longest a run may take before it counts as a hang.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// Ids the inputs reuse, so runs hit duplicates and idempotent retries of earlier runs.
const POOL: [&str; 3] = [
    "0190c8a4-5c56-7d3e-8f00-000000000001",
    "0190c8a4-5c56-7d3e-8f00-000000000002",
    "0190c8a4-5c56-7d3e-8f00-000000000003",
];

fn cases() -> u32 {
    std::env::var("HERALD_FUZZ_CLI_CASES")
        .map(|v| v.parse().expect("HERALD_FUZZ_CLI_CASES is a number"))
        .unwrap_or(150)
}

/// A SQLite database in a temporary directory (also the runs' working directory, so a stray relative path in
/// a fuzzed argument lands there), with a store handle to look at it between runs.
struct Db {
    dir: tempfile::TempDir,
    url: String,
    store: Arc<dyn EventStore>,
}

/// Everything observable: the global log and the stream listing.
#[derive(Debug, PartialEq)]
struct Snapshot {
    all: Vec<RecordedEvent>,
    streams: Vec<StreamInfo>,
}

impl Db {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("herald.db").display());
        let store = herald::connect(&url).await.unwrap();
        Db { dir, url, store }
    }

    async fn snapshot(&self) -> Snapshot {
        Snapshot {
            all: self.store.read_to_vec(ReadQuery::all()).await.unwrap(),
            streams: self.store.streams("", None, 100_000).await.unwrap(),
        }
    }

    /// Runs `herald --database URL args…` with `stdin`, bounded by [`RUN_TIMEOUT`].
    async fn run(&self, args: &[String], stdin: &[u8]) -> Output {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .arg("--database")
            .arg(&self.url)
            .args(args)
            .current_dir(self.dir.path())
            .env_remove("HERALD_DATABASE_URL")
            .env_remove("HERALD_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        let stdin = stdin.to_vec();
        // A command that does not read stdin may exit before taking it all: a broken pipe here is fine.
        let feeder = tokio::spawn(async move {
            let _ = input.write_all(&stdin).await;
        });
        let output = tokio::time::timeout(RUN_TIMEOUT, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("herald {args:?} did not end within {RUN_TIMEOUT:?}"))
            .unwrap();
        let _ = feeder.await;
        output
    }
}

/// The checks every run passes: a documented exit code, one `herald: ` error line on stderr when refused,
/// and a refused run changes nothing.
fn check_run(
    what: &str,
    out: &Output,
    before: &Snapshot,
    after: &Snapshot,
) -> Result<(), TestCaseError> {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let code = out.status.code();
    prop_assert!(
        matches!(code, Some(0 | 2 | 3 | 4 | 5 | 6)),
        "{what}: exit {code:?} (1 is other, none is a signal); stderr: {stderr}"
    );
    if code != Some(0) {
        prop_assert!(
            stderr.starts_with("herald: "),
            "{what}: refused without a `herald: ` error line: {stderr:?}"
        );
        prop_assert_eq!(after, before, "{}: a refused run changed the store", what);
    }
    Ok(())
}

// ----- NDJSON on `append --stdin` -----

/// One input line, before mutation.
fn line() -> impl Strategy<Value = String> {
    let id = prop_oneof![
        12 => Just(None),
        6 => proptest::sample::select(&POOL[..]).prop_map(|id| Some(format!("\"{id}\""))),
        1 => Just(Some(format!("\"{}\"", Uuid::nil()))),
        1 => Just(Some("\"not-a-uuid\"".to_owned())),
        1 => Just(Some("42".to_owned())),
    ];
    let data = prop_oneof![
        4 => Just(r#"{"sku":"A-1","qty":2}"#.to_owned()),
        1 => Just(r#" [1, 2.50, "x\u0000", {"k": null}] "#.to_owned()),
        1 => Just("123456789012345678901234567890".to_owned()),
        1 => Just(format!("{}{}", "[".repeat(200), "]".repeat(200))),
        1 => Just("\"é✓\"".to_owned()),
    ];
    let metadata = prop_oneof![
        8 => Just("{}".to_owned()),
        8 => Just(r#"{"correlation_id":"x","a":[1]}"#.to_owned()),
        1 => Just("[1]".to_owned()),
        1 => Just("null".to_owned()),
    ];
    let ty = prop_oneof![
        24 => Just("\"OrderPlaced\"".to_owned()),
        1 => Just("\"\"".to_owned()),
        1 => Just("\"a\\u0000b\"".to_owned()),
        1 => Just(format!("\"{}\"", "T".repeat(300))),
        1 => Just("7".to_owned()),
    ];
    (
        ty,
        proptest::option::of(data),
        proptest::option::of(metadata),
        id,
        proptest::bool::weighted(0.05),
    )
        .prop_map(|(ty, data, metadata, id, extra)| {
            let mut fields = vec![format!("\"type\":{ty}")];
            fields.extend(data.map(|d| format!("\"data\":{d}")));
            fields.extend(metadata.map(|m| format!("\"metadata\":{m}")));
            fields.extend(id.map(|i| format!("\"id\":{i}")));
            if extra {
                fields.push("\"unknown\":1".to_owned());
            }
            format!("{{{}}}", fields.join(","))
        })
}

/// Byte-level damage to a line: random bytes, invalid UTF-8, a cut multi-byte character, control bytes.
#[derive(Debug, Clone)]
enum Damage {
    Insert(usize, Vec<u8>),
    Cut(usize),
    Flip(usize, u8),
}

fn damage() -> impl Strategy<Value = Damage> {
    let bytes = prop_oneof![
        proptest::collection::vec(any::<u8>(), 1..4),
        Just(vec![0xff]),
        Just(vec![0xc3]),
        Just(vec![0xe2, 0x9c]),
        Just(vec![0xed, 0xa0, 0x80]),
        Just(b"\r".to_vec()),
        Just(b"\0".to_vec()),
        Just(b"\x1b[31m".to_vec()),
        Just(b"\"".to_vec()),
        Just(b"}".to_vec()),
    ];
    prop_oneof![
        3 => (any::<usize>(), bytes).prop_map(|(at, b)| Damage::Insert(at, b)),
        1 => any::<usize>().prop_map(Damage::Cut),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Damage::Flip(at, b)),
    ]
}

fn damaged(line: String, damage: &[Damage]) -> Vec<u8> {
    let mut bytes = line.into_bytes();
    for d in damage {
        let at = |i: &usize, len: usize| i % (len + 1);
        match d {
            Damage::Insert(i, b) => {
                let i = at(i, bytes.len());
                bytes.splice(i..i, b.iter().copied());
            }
            Damage::Cut(i) => bytes.truncate(at(i, bytes.len())),
            Damage::Flip(i, b) if !bytes.is_empty() => {
                let i = i % bytes.len();
                bytes[i] = *b;
            }
            Damage::Flip(..) => {}
        }
    }
    bytes
}

/// Whole inputs: lines (mostly valid, some damaged, some blank), joined by `\n` or `\r\n`.
fn ndjson() -> impl Strategy<Value = Vec<u8>> {
    let one = prop_oneof![
        24 => line().prop_map(String::into_bytes),
        3 => (line(), proptest::collection::vec(damage(), 1..3)).prop_map(|(l, d)| damaged(l, &d)),
        1 => Just(b"   ".to_vec()),
        1 => proptest::collection::vec(any::<u8>(), 0..40),
    ];
    (
        proptest::collection::vec(one, 0..4),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(lines, crlf, trailing)| {
            let sep: &[u8] = if crlf { b"\r\n" } else { b"\n" };
            let mut input = lines.join(sep);
            if trailing {
                input.extend_from_slice(sep);
            }
            input
        })
}

#[test]
fn append_stdin_takes_any_bytes() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let db = runtime.block_on(Db::new());
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    let args = ["append", "fuzz-1", "--stdin"].map(str::to_owned);
    let codes = RefCell::new(BTreeMap::<Option<i32>, u64>::new());
    runner
        .run(&ndjson(), |input| {
            runtime.block_on(async {
                let before = db.snapshot().await;
                let out = db.run(&args, &input).await;
                let after = db.snapshot().await;
                let what = format!("append --stdin of {:?}", String::from_utf8_lossy(&input));
                *codes.borrow_mut().entry(out.status.code()).or_default() += 1;
                check_run(&what, &out, &before, &after)?;
                if out.status.success() {
                    // Exactly the printed ids were added at the end of the log, or (an idempotent retry) they
                    // were all stored already and nothing was added.
                    let printed: serde_json::Value =
                        serde_json::from_slice(&out.stdout).map_err(|e| {
                            TestCaseError::fail(format!("{what}: stdout is not JSON: {e}"))
                        })?;
                    let ids: Vec<Uuid> = printed["ids"]
                        .as_array()
                        .map(|a| a.iter().filter_map(|v| v.as_str()?.parse().ok()).collect())
                        .unwrap_or_default();
                    prop_assert!(!ids.is_empty(), "{}: no ids printed", what);
                    let added: Vec<Uuid> =
                        after.all[before.all.len()..].iter().map(|e| e.id).collect();
                    let retried = added.is_empty()
                        && ids.iter().all(|id| before.all.iter().any(|e| e.id == *id));
                    prop_assert!(
                        added == ids || retried,
                        "{}: printed {:?}, added {:?}",
                        what,
                        ids,
                        added
                    );
                }
                Ok(())
            })
        })
        .unwrap();
    eprintln!("runs by exit code: {:?}", codes.into_inner());
}

// ----- arguments -----

/// Valid argument vectors of every command that ends by itself (`tail` follows until a signal).
const COMMANDS: &[&[&str]] = &[
    &["init"],
    &[
        "append",
        "order-1",
        "--type",
        "OrderPlaced",
        "--data",
        r#"{"n":1}"#,
        "--expected",
        "any",
    ],
    &[
        "append",
        "order-1",
        "--type",
        "T",
        "--metadata",
        "{}",
        "--id",
        POOL[0],
    ],
    &["link", "copy-1", POOL[0], "--expected", "no-stream"],
    &[
        "read",
        "order-1",
        "--backward",
        "--from",
        "3",
        "--limit",
        "2",
        "--type",
        "T",
    ],
    &[
        "read",
        "--all",
        "--after",
        "2026-01-31T12:00:00Z",
        "--before",
        "2027-01-01T00:00:00+01:00",
    ],
    &["read", "--category", "order", "--limit", "10"],
    &["event", POOL[1]],
    &["version", "order-1"],
    &["streams", "--prefix", "ord", "--limit", "5"],
    &["delete", "order-1", "--expected", "0"],
    &["jobs", "stats"],
    &["jobs", "list", "--limit", "3"],
];

/// Values that break argument parsing and the rules behind it.
const TOKENS: &[&str] = &[
    "",
    "-",
    "--",
    "--from",
    "--limit",
    "--expected",
    "--type",
    "--data",
    "--id",
    "--all",
    "--category",
    "--backward",
    "--after",
    "0",
    "-1",
    "18446744073709551616",
    "9223372036854775808",
    "no-stream",
    "exists",
    "$all",
    "a-b",
    "a\nb",
    "\u{1b}[31m",
    "\u{7f}",
    "{",
    "null",
    "[1]",
    "é",
    "00000000-0000-0000-0000-000000000000",
    "0000-01-01T00:00:00+23:59",
    "9999-12-31T23:59:59-23:59",
    "not-a-uuid",
];

#[derive(Debug, Clone)]
enum ArgChange {
    Insert(usize, String),
    Remove(usize),
    Replace(usize, String),
    Mangle(usize, usize, char),
}

fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(TOKENS).prop_map(str::to_owned),
        1 => "\\PC{0,12}",
        1 => proptest::collection::vec(any::<char>(), 0..6).prop_map(|c| c.into_iter().collect()),
    ]
}

fn argv() -> impl Strategy<Value = Vec<String>> {
    let change = prop_oneof![
        3 => (any::<usize>(), token()).prop_map(|(i, t)| ArgChange::Insert(i, t)),
        1 => any::<usize>().prop_map(ArgChange::Remove),
        3 => (any::<usize>(), token()).prop_map(|(i, t)| ArgChange::Replace(i, t)),
        2 => (any::<usize>(), any::<usize>(), any::<char>()).prop_map(|(i, at, c)| ArgChange::Mangle(i, at, c)),
    ];
    (
        proptest::sample::select(COMMANDS),
        proptest::collection::vec(change, 0..4),
    )
        .prop_map(|(command, changes)| {
            let mut args: Vec<String> = command.iter().map(|s| (*s).to_owned()).collect();
            // The first one or two words pick the command; keep them so no run becomes `tail`.
            let fixed = if command[0] == "jobs" { 2 } else { 1 };
            for change in changes {
                let movable = args.len() - fixed;
                match change {
                    ArgChange::Insert(i, t) => args.insert(fixed + i % (movable + 1), t),
                    ArgChange::Remove(i) if movable > 0 => {
                        args.remove(fixed + i % movable);
                    }
                    ArgChange::Replace(i, t) if movable > 0 => args[fixed + i % movable] = t,
                    ArgChange::Mangle(i, at, c) if movable > 0 => {
                        let arg = &mut args[fixed + i % movable];
                        let mut at = at % (arg.len() + 1);
                        while !arg.is_char_boundary(at) {
                            at -= 1;
                        }
                        arg.insert(at, c);
                    }
                    _ => {}
                }
            }
            // An argument cannot hold NUL (the OS refuses it before herald runs).
            args.into_iter().map(|a| a.replace('\0', "")).collect()
        })
}

#[test]
fn arguments_of_every_command() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let db = runtime.block_on(Db::new());
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    let codes = RefCell::new(BTreeMap::<Option<i32>, u64>::new());
    runner
        .run(&argv(), |args| {
            runtime.block_on(async {
                let before = db.snapshot().await;
                let out = db.run(&args, b"").await;
                *codes.borrow_mut().entry(out.status.code()).or_default() += 1;
                let after = db.snapshot().await;
                check_run(&format!("herald {args:?}"), &out, &before, &after)
            })
        })
        .unwrap();
    eprintln!("runs by exit code: {:?}", codes.into_inner());
}
