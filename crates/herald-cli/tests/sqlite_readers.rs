//! Reading commands on a SQLite file never need the writer's lock nor write access: `read`, `tail`, `streams`
//! and `jobs stats` work while another connection holds a write transaction, and on a file this process may
//! not write (owned by another user, mode 0444, in a directory it cannot write), where writes fail cleanly
//! and the file is left byte for byte. Tests running as root, whom permissions do not stop, run `herald` as
//! user `nobody` (`setpriv`) for the read-only case, so the file really is read-only to it.

#![cfg(feature = "sqlite")]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The longest any single wait may take before it counts as a hang.
const WAIT: Duration = Duration::from_secs(20);

/// `herald --database URL ARGS`, as user `nobody` when `as_nobody`.
fn herald(url: &str, args: &[&str], as_nobody: bool) -> Command {
    let mut cmd = if as_nobody {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_herald"));
        cmd
    } else {
        Command::new(env!("CARGO_BIN_EXE_herald"))
    };
    cmd.arg("--database").arg(url).args(args);
    cmd
}

/// Runs to the end, or panics after [`WAIT`] (killing it).
fn output(mut cmd: Command) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(WAIT) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("herald did not end within {WAIT:?}");
        }
    }
}

fn ok_lines(cmd: Command) -> Vec<String> {
    let out = output(cmd);
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// `tail --all` prints `n` events within [`WAIT`], then ends with status 0 on SIGTERM.
fn tail_prints(url: &str, n: usize, as_nobody: bool) {
    let mut tail = herald(url, &["tail", "--all"], as_nobody)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = tail.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    for i in 0..n {
        if rx.recv_timeout(WAIT).is_err() {
            let _ = tail.kill();
            let out = tail.wait_with_output().unwrap();
            panic!(
                "tail printed {i} of {n} events: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    // The pid is the one `herald` process (setpriv execs it).
    let killed = Command::new("kill")
        .args(["-TERM", &tail.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let (done_tx, done) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(tail.wait_with_output());
    });
    let out = done
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

/// A store file with three events in two streams, written and closed by `herald`, with every table this
/// build's open creates (a build with the facade's `es` feature, as in a workspace test run, keeps checkpoint
/// tables beside the store: `jobs stats` opens them once). Creating tables needs the write lock; reading a file
/// that has them must not.
fn store_file(dir: &Path) -> (std::path::PathBuf, String) {
    let path = dir.join("herald.db");
    let url = format!("sqlite://{}", path.display());
    for stream in ["a-1", "a-1", "b-1"] {
        ok_lines(herald(&url, &["append", stream, "--type", "T"], false));
    }
    ok_lines(herald(&url, &["jobs", "stats"], false));
    (path, url)
}

#[test]
fn read_tail_streams_and_jobs_stats_work_while_a_write_transaction_is_held() {
    let dir = tempfile::tempdir().unwrap();
    let (path, url) = store_file(dir.path());
    let holder = rusqlite::Connection::open(&path).unwrap();
    holder
        .execute_batch("BEGIN IMMEDIATE; CREATE TABLE scratch (x); INSERT INTO scratch VALUES (1);")
        .unwrap();
    // Held for longer than the commands' lock wait (5 s): each must not wait for it at all.
    let started = std::time::Instant::now();
    assert_eq!(ok_lines(herald(&url, &["read", "--all"], false)).len(), 3);
    assert_eq!(ok_lines(herald(&url, &["streams"], false)).len(), 2);
    assert_eq!(ok_lines(herald(&url, &["jobs", "stats"], false)).len(), 1);
    tail_prints(&url, 3, false);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the readers waited for the lock: {:?}",
        started.elapsed()
    );
    holder.execute_batch("ROLLBACK").unwrap();
}

#[test]
fn a_file_this_process_cannot_write_is_readable() {
    let dir = tempfile::tempdir().unwrap();
    let (path, url) = store_file(dir.path());
    // No -wal or -shm left beside it after the clean close, and the directory is read-only as well: the
    // hardest case (the WAL index cannot be created).
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
    let as_nobody = is_root();
    let dir_mode = if as_nobody { 0o755 } else { 0o555 };
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(dir_mode)).unwrap();
    let before = std::fs::read(&path).unwrap();

    assert_eq!(
        ok_lines(herald(&url, &["read", "--all"], as_nobody)).len(),
        3
    );
    assert_eq!(ok_lines(herald(&url, &["streams"], as_nobody)).len(), 2);
    assert_eq!(
        ok_lines(herald(&url, &["jobs", "stats"], as_nobody)).len(),
        1
    );
    tail_prints(&url, 3, as_nobody);
    // A write fails cleanly (exit 1, one line), and nothing changed.
    let out = output(herald(&url, &["append", "a-1", "--type", "T"], as_nobody));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
    assert!(std::fs::read(&path).unwrap() == before, "the file changed");

    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}
