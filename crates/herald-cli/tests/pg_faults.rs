//! The CLI against a PostgreSQL server that misbehaves, staged by a loopback proxy of the test's own (the
//! shared server is never restarted): a server that accepts and never answers makes every command exit 1
//! within `connect_timeout`, naming host and port; `herald tail` rides out a server restart (every connection
//! dropped, new ones turned away for a while) and prints every event once, in order.

#![cfg(feature = "postgres")]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use herald_store_testkit::postgres::{TestSchema, available, server_addr};
use herald_store_testkit::proxy::TcpProxy;
use serde_json::Value;

/// The longest any single wait may take before it counts as a hang.
const WAIT: Duration = Duration::from_secs(20);

fn herald(url: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.arg("--database").arg(url).args(args);
    cmd
}

/// Kills the child (SIGKILL) if it is still running when dropped: a hung `herald` must not outlive its test.
struct Reaper(u32);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.0.to_string()])
            .stderr(Stdio::null())
            .status();
    }
}

/// Runs `cmd` to its end, or panics after `within` (killing it).
fn output_within(mut cmd: Command, within: Duration) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _reaper = Reaper(child.id());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    rx.recv_timeout(within)
        .unwrap_or_else(|_| panic!("herald did not end within {within:?}"))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_on_a_server_that_never_answers_exits_1_naming_host_and_port() {
    let silent = TcpProxy::silent().await;
    let url = format!(
        "postgres://root@127.0.0.1:{}/test?connect_timeout=1",
        silent.port()
    );
    for args in [
        &["read", "--all"][..],
        &["tail", "--all"],
        &["append", "s-1", "--type", "T"],
        &["streams"],
    ] {
        let started = Instant::now();
        let out = output_within(herald(&url, args), WAIT);
        let took = started.elapsed();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(took < Duration::from_secs(4), "{args:?} took {took:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        // The message is the contract: one line naming the server that did not answer.
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            stderr.contains("host 127.0.0.1")
                && stderr.contains(&format!("port {}", silent.port())),
            "{args:?}: {stderr}"
        );
    }
}

/// Reads the tail's stdout on a thread of its own; lines arrive on the channel.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// The ids of the next `n` events the tail printed, each within [`WAIT`].
fn next_ids(lines: &mpsc::Receiver<String>, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let line = lines
                .recv_timeout(WAIT)
                .unwrap_or_else(|_| panic!("event {i} of {n} was not printed within {WAIT:?}"));
            let event: Value = serde_json::from_str(&line).unwrap();
            event["id"].as_str().unwrap().to_owned()
        })
        .collect()
}

/// Appends one event through a direct connection; returns its id.
fn append(url: &str, stream: &str) -> String {
    let out = output_within(herald(url, &["append", stream, "--type", "T"]), WAIT);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    result["ids"][0].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_every_event_once_across_a_server_restart() {
    if !available("tail_prints_every_event_once_across_a_server_restart").await {
        return;
    }
    let schema = TestSchema::new("herald_cli");
    let direct = schema.url();
    let proxy = TcpProxy::forward(server_addr()).await;
    let mut expected = vec![append(&direct, "before-1"), append(&direct, "before-2")];

    let mut tail = herald(&schema.url_via(proxy.port()), &["tail", "--all"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _reaper = Reaper(tail.id());
    let lines = lines_of(&mut tail);
    let mut seen = next_ids(&lines, 2);

    // The restart: the tail's connections drop and its reconnects are turned away while events are
    // appended through a direct connection.
    proxy.outage();
    proxy.wait_refused(4, WAIT).await;
    expected.push(append(&direct, "during-1"));
    expected.push(append(&direct, "during-2"));
    let refused = proxy.refused();
    proxy.wait_refused(refused + 2, WAIT).await;
    assert!(
        tail.try_wait().unwrap().is_none(),
        "tail exited during the outage"
    );
    proxy.restore();
    expected.push(append(&direct, "after-1"));
    seen.extend(next_ids(&lines, 3));
    assert_eq!(seen, expected, "each event exactly once, in order");
    // And nothing repeated after them: the next line is the next event.
    let last = append(&direct, "after-2");
    assert_eq!(next_ids(&lines, 1), [last]);

    let killed = Command::new("kill")
        .args(["-TERM", &tail.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(tail.wait_with_output());
    });
    let out = rx
        .recv_timeout(WAIT)
        .expect("tail ignored SIGTERM")
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
