//! One database URL, one meaning: `sqlite://shop.db?durability=normal` is the file `shop.db` (relative to the
//! working directory) with that option, for every component that takes a URL — the event store through the
//! CLI and `herald::connect`, and the job store through `herald jobs`. A hand-rolled parser once opened a file
//! named `shop.db?durability=normal` instead.

use std::path::Path;
use std::process::Command;

const URL: &str = "sqlite://shop.db?durability=normal";

fn herald(dir: &Path, args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .current_dir(dir)
        .arg("--database")
        .arg(URL)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "herald {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The files in `dir`, sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn the_cli_opens_shop_db_for_events_and_jobs() {
    let dir = tempfile::tempdir().unwrap();
    herald(dir.path(), &["append", "order-1", "--type", "OrderPlaced"]);
    herald(dir.path(), &["jobs", "stats"]);
    let names = files(dir.path());
    assert!(names.contains(&"shop.db".to_owned()), "{names:?}");
    assert!(
        names.iter().all(|n| !n.contains('?')),
        "no file named after the query: {names:?}"
    );
}

#[test]
fn init_echoes_the_url_without_its_password() {
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["--database", "memory://", "init"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        r#"{"database":"memory://"}"#
    );
    // A password never reaches stdout or stderr, whether or not the server can be reached.
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args([
            "--database",
            "postgres://u:hunter2@127.0.0.1:1/db?connect_timeout=1",
            "init",
        ])
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!all.contains("hunter2"), "{all}");
}

#[tokio::test]
async fn connect_opens_the_file_the_url_names() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shop.db");
    let url = format!("sqlite://{}?durability=normal", file.display());
    let store = herald::connect(&url).await.unwrap();
    store
        .append(
            &herald::StreamName::new("order-1").unwrap(),
            vec![herald::NewEvent::new("OrderPlaced")],
            herald::ExpectedVersion::NoStream,
        )
        .await
        .unwrap();
    drop(store);
    assert_eq!(files(dir.path())[0], "shop.db");
    assert!(files(dir.path()).iter().all(|n| !n.contains('?')));
}

/// `herald::open` gives the job queue the file the URL names, and its options: `durability=normal` relaxes
/// the jobs' flushes as it does the events'.
#[tokio::test]
async fn open_gives_jobs_the_file_and_options_the_url_names() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shop.db");
    let url = format!("sqlite://{}?durability=normal", file.display());
    let herald = herald::open(&url).await.unwrap();
    assert_eq!(herald.job_queue.describe(), file.display().to_string());
    assert!(!herald.jobs.config().full_sync, "durability=normal");
    drop(herald);
    assert!(files(dir.path()).iter().all(|n| !n.contains('?')));
    // Without the option the jobs are flushed like the events.
    let full = herald::open(&format!("sqlite://{}", file.display()))
        .await
        .unwrap();
    assert!(full.jobs.config().full_sync);
}

/// A URL no backend of this build opens is invalid input, naming the scheme.
#[tokio::test]
async fn open_refuses_an_unknown_scheme() {
    match herald::open("mysql://root@127.0.0.1/test").await {
        Err(herald::Error::InvalidInput(message)) => {
            assert!(message.contains("mysql"), "{message}")
        }
        other => panic!("expected invalid input, got {:?}", other.map(|_| ())),
    }
}
