//! `herald routes …` and `herald worker` through the real binary: events appended by the CLI while no
//! worker runs get their delivery jobs in the append's transaction; a worker started later (a real process)
//! POSTs them to a loopback HTTP server (signed per Standard Webhooks, a CloudEvent body), retries after a
//! 500, and runs programs with the event on stdin and its ids in the environment, never on a command line.
//! On SQLite and PostgreSQL; `memory://` cannot be shared by a second process, so `worker` refuses it.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// Every wait on the worker or the server ends by then.
const PATIENCE: Duration = Duration::from_secs(30);
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn herald(db: &str, args: &[&str]) -> (i32, Vec<Value>, String) {
    herald_in(db, args, None)
}

fn herald_in(db: &str, args: &[&str], dir: Option<&Path>) -> (i32, Vec<Value>, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
    command.arg("--database").arg(db).args(args);
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    let out = command.output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    (
        out.status.code().unwrap(),
        lines,
        stdout + &String::from_utf8(out.stderr).unwrap(),
    )
}

/// A `herald worker` process, stopped by SIGTERM when the test is done with it (killed if dropped).
struct Worker {
    child: tokio::process::Child,
}

impl Worker {
    /// Starts the worker and waits for its "started" line.
    async fn start(db: &str, args: &[&str], dir: &Path) -> Worker {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .arg("--database")
            .arg(db)
            .arg("worker")
            .args(["--backoff-first", "0.2", "--backoff-max", "0.5"])
            .args(["--poll-interval", "0.2"])
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(PATIENCE, lines.next_line())
            .await
            .expect("the worker printed no line in time")
            .unwrap()
            .expect("the worker exited before starting");
        let started: Value = serde_json::from_str(&first).unwrap();
        assert_eq!(started["worker"], "started", "{first}");
        Worker { child }
    }

    /// SIGTERM, then the exit status (0 expected).
    async fn stop(mut self) -> i32 {
        let pid = self.child.id().unwrap().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let status = tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .expect("the worker did not stop in time after SIGTERM")
            .unwrap();
        status.code().unwrap_or(-1)
    }
}

/// One request the loopback server received.
#[derive(Debug)]
struct Hit {
    headers: HashMap<String, String>,
    body: String,
}

/// A minimal HTTP/1.1 server on loopback: answers each request with the next status of `statuses` (then
/// 200), one request per connection, and reports every request on the channel before answering.
async fn webhook_server(statuses: Vec<u16>) -> (String, mpsc::UnboundedReceiver<Hit>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut statuses = statuses.into_iter();
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            let hit = loop {
                let n = socket.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break None;
                }
                buf.extend_from_slice(&chunk[..n]);
                let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                    continue;
                };
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                let headers: HashMap<String, String> = head
                    .lines()
                    .skip(1)
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                    .collect();
                let length: usize = headers
                    .get("content-length")
                    .and_then(|l| l.parse().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + length {
                    let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + length]).to_string();
                    break Some(Hit { headers, body });
                }
            };
            let Some(hit) = hit else { continue };
            let status = statuses.next().unwrap_or(200);
            let _ = tx.send(hit);
            let answer = format!(
                "HTTP/1.1 {status} Status\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
            let _ = socket.write_all(answer.as_bytes()).await;
            let _ = socket.shutdown().await;
        }
    });
    (url, rx)
}

async fn next_hit(hits: &mut mpsc::UnboundedReceiver<Hit>) -> Hit {
    tokio::time::timeout(PATIENCE, hits.recv())
        .await
        .expect("no webhook request arrived in time")
        .expect("the server stopped")
}

/// Checks the Standard Webhooks signature of a request, as a receiver would.
fn assert_signed(hit: &Hit) {
    let id = &hit.headers["webhook-id"];
    let timestamp = &hit.headers["webhook-timestamp"];
    let key = base64::engine::general_purpose::STANDARD
        .decode(SECRET.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.{}", hit.body).as_bytes());
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    assert_eq!(hit.headers["webhook-signature"], expected, "{hit:?}");
    let sent: u64 = timestamp.parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        now.abs_diff(sent) < 300,
        "timestamp {sent} is not now ({now})"
    );
}

/// The live jobs of a queue, through `herald jobs list`.
fn live_jobs(db: &str, queue: &str) -> Vec<Value> {
    let (code, jobs, out) = herald(db, &["jobs", "list", "--json", "--queue", queue]);
    assert_eq!(code, 0, "{out}");
    jobs
}

/// Waits (polling `herald jobs`, under [`PATIENCE`]) until `queue` has no live job.
async fn until_drained(db: &str, queue: &str) {
    let deadline = Instant::now() + PATIENCE;
    while !live_jobs(db, queue).is_empty() {
        assert!(Instant::now() < deadline, "queue {queue} did not drain");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn webhook_delivered_after_a_500(db: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (url, mut hits) = webhook_server(vec![500]).await;
    let (code, added, out) = herald(
        db,
        &[
            "routes",
            "add",
            "paid",
            "--stream",
            "order-*",
            "--type",
            "OrderPaid",
            "--webhook",
            &url,
            "--secret",
            SECRET,
            "--timeout",
            "5",
            "--max-attempts",
            "3",
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(added[0]["target"]["secret"], "***", "{out}");
    let (code, listed, _) = herald(db, &["routes", "list"]);
    assert_eq!(code, 0);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["name"], "paid");
    assert_eq!(listed[0]["stream"], "order-*");

    // Appended by the CLI while no worker runs: the jobs are written with the events.
    let (code, _, out) = herald(db, &["append", "order-1", "--type", "OrderPlaced"]);
    assert_eq!(code, 0, "{out}");
    let (code, paid, out) = herald(
        db,
        &[
            "append",
            "order-1",
            "--type",
            "OrderPaid",
            "--data",
            r#"{"amount":42}"#,
        ],
    );
    assert_eq!(code, 0, "{out}");
    let event_id = paid[0]["ids"][0].as_str().unwrap().to_owned();
    let (code, _, _) = herald(db, &["append", "user-1", "--type", "OrderPaid"]);
    assert_eq!(code, 0);
    let queued = live_jobs(db, "herald.webhook");
    assert_eq!(
        queued.len(),
        1,
        "one job: OrderPaid on an order stream; {queued:?}"
    );
    assert_eq!(queued[0]["attempt"], 0);

    let worker = Worker::start(db, &["--kinds", "webhook"], dir.path()).await;
    let first = next_hit(&mut hits).await;
    let second = next_hit(&mut hits).await;
    for hit in [&first, &second] {
        assert_signed(hit);
        assert_eq!(hit.headers["webhook-id"], event_id);
        assert_eq!(hit.headers["content-type"], "application/cloudevents+json");
        let event: Value = serde_json::from_str(&hit.body).unwrap();
        assert_eq!(event["specversion"], "1.0");
        assert_eq!(event["id"], event_id.as_str());
        assert_eq!(event["type"], "OrderPaid");
        assert_eq!(event["subject"], "order-1");
        assert_eq!(event["data"], serde_json::json!({"amount": 42}));
    }
    assert_eq!(first.body, second.body, "a retry sends the same event");
    until_drained(db, "herald.webhook").await;
    let (_, dead, _) = herald(db, &["jobs", "dead", "--json"]);
    assert!(dead.is_empty(), "{dead:?}");
    assert_eq!(worker.stop().await, 0);
    assert!(hits.try_recv().is_err(), "exactly one retry");
}

#[tokio::test]
async fn webhook_is_delivered_signed_and_retried_after_a_500_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("herald.db").display());
    webhook_delivered_after_a_500(&db).await;
}

#[tokio::test]
async fn webhook_is_delivered_signed_and_retried_after_a_500_on_postgres() {
    use herald_store_testkit::postgres::{TestSchema, available};
    if !available("herald worker on PostgreSQL").await {
        return;
    }
    let schema = TestSchema::new("wk_hook");
    webhook_delivered_after_a_500(&schema.url()).await;
}

async fn programs_get_the_event_on_stdin_never_on_a_command_line(db: &str) {
    let dir = tempfile::tempdir().unwrap();
    // A fixed script chosen when the route is added; the event reaches it only on stdin and in variables.
    let script = r#"cat > "$HERALD_EVENT_ID.json"; printf '%s\n%s\n%s\n%s\n' "$HERALD_STREAM" "$HERALD_EVENT_TYPE" "$HERALD_POSITION" "$1" > "$HERALD_EVENT_ID.env""#;
    let (code, _, out) = herald(
        db,
        &[
            "routes",
            "add",
            "audit",
            "--stream",
            "audit-*",
            "--exec",
            "/bin/sh",
            "--arg",
            "-c",
            "--arg",
            script,
            "--arg",
            "audit-script",
            "--arg",
            "fixed-argument",
        ],
    );
    assert_eq!(code, 0, "{out}");
    let (code, _, out) = herald(
        db,
        &[
            "routes",
            "add",
            "fails",
            "--stream",
            "fail-*",
            "--exec",
            "/bin/false",
            "--max-attempts",
            "1",
        ],
    );
    assert_eq!(code, 0, "{out}");
    let (code, _, out) = herald(
        db,
        &[
            "routes",
            "add",
            "hangs",
            "--stream",
            "hang-*",
            "--exec",
            "/bin/sleep",
            "--arg",
            "600",
            "--timeout",
            "0.5",
            "--max-attempts",
            "1",
        ],
    );
    assert_eq!(code, 0, "{out}");

    let hostile = r#"{"a":"$(touch pwned)","b":"; touch pwned2","c":"`touch pwned3`"}"#;
    let (code, appended, out) = herald_in(
        db,
        &[
            "append",
            "audit-$(touch pwned4)",
            "--type",
            "Did;touch pwned5",
            "--data",
            hostile,
        ],
        Some(dir.path()),
    );
    assert_eq!(code, 0, "{out}");
    let event_id = appended[0]["ids"][0].as_str().unwrap().to_owned();
    let position = appended[0]["first_position"].as_u64().unwrap();
    assert_eq!(herald(db, &["append", "fail-1", "--type", "X"]).0, 0);
    assert_eq!(herald(db, &["append", "hang-1", "--type", "X"]).0, 0);

    let started = Instant::now();
    let worker = Worker::start(db, &["--kinds", "shell"], dir.path()).await;
    until_drained(db, "herald.shell").await;
    assert_eq!(worker.stop().await, 0);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the hanging program was not killed in time"
    );

    let stdin: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join(format!("{event_id}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(stdin["id"], event_id.as_str());
    assert_eq!(
        stdin["data"],
        serde_json::from_str::<Value>(hostile).unwrap()
    );
    let env = std::fs::read_to_string(dir.path().join(format!("{event_id}.env"))).unwrap();
    assert_eq!(
        env.lines().collect::<Vec<_>>(),
        [
            "audit-$(touch pwned4)",
            "Did;touch pwned5",
            &position.to_string(),
            "fixed-argument"
        ]
    );
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(!names.iter().any(|n| n.contains("pwned")), "{names:?}");

    let (_, dead, _) = herald(db, &["jobs", "dead", "--json"]);
    let mut errors: Vec<&str> = dead
        .iter()
        .map(|d| d["last_error"].as_str().unwrap_or(""))
        .collect();
    errors.sort();
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert!(
        errors
            .iter()
            .any(|e| e.contains("/bin/false") && e.contains("exit status: 1")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("/bin/sleep") && e.contains("killed")),
        "{errors:?}"
    );
}

#[tokio::test]
async fn programs_get_the_event_on_stdin_never_on_a_command_line_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("herald.db").display());
    programs_get_the_event_on_stdin_never_on_a_command_line(&db).await;
}

#[tokio::test]
async fn programs_get_the_event_on_stdin_never_on_a_command_line_on_postgres() {
    use herald_store_testkit::postgres::{TestSchema, available};
    if !available("herald worker on PostgreSQL").await {
        return;
    }
    let schema = TestSchema::new("wk_shell");
    programs_get_the_event_on_stdin_never_on_a_command_line(&schema.url()).await;
}

/// A worker runs only the kinds it was given, from their own queues: another kind's delivery and a job of
/// a type it has no handler for stay queued, with no attempt spent.
#[tokio::test]
async fn a_worker_leaves_other_kinds_queued_without_spending_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("herald.db").display());
    let (url, mut hits) = webhook_server(vec![]).await;
    assert_eq!(
        herald(
            &db,
            &[
                "routes",
                "add",
                "hook",
                "--webhook",
                &url,
                "--secret",
                SECRET
            ]
        )
        .0,
        0
    );
    assert_eq!(
        herald(&db, &["routes", "add", "prog", "--exec", "/bin/true"]).0,
        0
    );
    let jobs = herald::open(&db).await.unwrap().jobs;
    // The delivery queues hold only their own kind: a worker claiming them meets no other.
    let foreign =
        herald::jobs::NewJob::raw("rust.only", "{}").queue(herald::core::delivery::SHELL_KIND);
    let refused = jobs.enqueue(foreign).await;
    assert!(
        matches!(refused, Err(herald::Error::InvalidInput(_))),
        "{refused:?}"
    );
    jobs.enqueue(herald::jobs::NewJob::raw("rust.only", "{}"))
        .await
        .unwrap();
    assert_eq!(herald(&db, &["append", "s-1", "--type", "E"]).0, 0);

    let worker = Worker::start(&db, &["--kinds", "webhook"], dir.path()).await;
    next_hit(&mut hits).await;
    until_drained(&db, "herald.webhook").await;
    assert_eq!(worker.stop().await, 0);
    let mut waiting = live_jobs(&db, "herald.shell");
    waiting.extend(live_jobs(&db, "default"));
    assert_eq!(waiting.len(), 2, "{waiting:?}");
    for job in &waiting {
        assert_eq!(job["attempt"], 0, "{job}");
        assert_eq!(job["state"], "available", "{job}");
    }
}

#[test]
fn routes_refuse_bad_input_and_worker_refuses_memory() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("herald.db").display());
    let cases: &[&[&str]] = &[
        &["routes", "add", "a b", "--exec", "/bin/true"],
        &[
            "routes",
            "add",
            "a",
            "--stream",
            "a*b",
            "--exec",
            "/bin/true",
        ],
        &["routes", "add", "a", "--webhook", "ftp://x/"],
        &[
            "routes",
            "add",
            "a",
            "--webhook",
            "http://x/",
            "--secret",
            "nope",
        ],
        &[
            "routes",
            "add",
            "a",
            "--webhook",
            "http://x/",
            "--secret",
            "whsec_!!",
        ],
        &[
            "routes",
            "add",
            "a",
            "--exec",
            "/bin/true",
            "--timeout",
            "0",
        ],
        &[
            "routes",
            "add",
            "a",
            "--exec",
            "/bin/true",
            "--max-attempts",
            "0",
        ],
        &["routes", "remove", "a\nb"],
    ];
    for args in cases {
        let (code, _, out) = herald(&db, args);
        assert_eq!(code, 5, "{args:?}: {out}");
        assert_eq!(out.lines().count(), 1, "{args:?}: {out}");
    }
    let (code, _, _) = herald(&db, &["routes", "add", "a", "--exec", "/bin/true"]);
    assert_eq!(code, 0);
    assert_eq!(
        herald(&db, &["routes", "add", "a", "--exec", "/bin/true"]).0,
        5
    );
    assert_eq!(herald(&db, &["routes", "remove", "a"]).0, 0);
    assert_eq!(herald(&db, &["routes", "remove", "a"]).0, 4);
    let (code, _, out) = herald("memory://", &["worker"]);
    assert_eq!(code, 5, "{out}");
}
