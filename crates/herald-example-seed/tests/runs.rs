//! The example runs unchanged on every backend, the URL being the only difference: twice on one SQLite file and
//! twice on one PostgreSQL schema (the second run registers nobody new and sends no email again), once on
//! `memory://`. On SQLite a third run gets a `send_welcome` job delivered again (as after a worker died
//! between writing the email and completing its job) and does not send that email twice.

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;

/// Runs the example on `url`, with the outbox file named when given; returns its output.
fn run(url: &str, outbox: Option<&Path>) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_herald-example-seed"));
    command.arg(url);
    if let Some(outbox) = outbox {
        command.arg(outbox);
    }
    let out = command.output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{url}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The event ids of the outbox's emails; fails on an email sent twice for one event.
fn emails(outbox: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(outbox).unwrap();
    let ids: Vec<String> = text
        .lines()
        .map(|line| {
            let (_, key) = line
                .rsplit_once("(event ")
                .unwrap_or_else(|| panic!("no event id in outbox line `{line}`"));
            key.trim_end_matches(')').to_owned()
        })
        .collect();
    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "an email sent twice:\n{text}");
    ids
}

/// What every run shows, first or not.
fn assert_flow(out: &str) {
    for expected in [
        "client B refused: wrong expected version",
        "8 concurrent AddItem commands: all committed",
        "9 items, paid: true",
        "second delivery duplicate = true",
        "paying twice: rejected: order already paid",
        "ada@example.com      Ada Lovelace",
        "grace@example.com    Grace Hopper",
        "commands timed through the instrumentation API",
    ] {
        assert!(out.contains(expected), "missing `{expected}` in:\n{out}");
    }
}

/// A first run on an empty database: two users registered, a duplicate refused, an invalid email, two emails.
fn assert_first_run(out: &str, outbox: &Path) {
    for expected in [
        "RegisterUser ada@example.com: UserRegistered",
        "RegisterUser grace@example.com: UserRegistered",
        "rejected: this email is already registered",
        "invalid: `not-an-email` is not an email address",
        "[email] welcome email sent to ada@example.com",
        "[email] welcome email sent to grace@example.com",
    ] {
        assert!(out.contains(expected), "missing `{expected}` in:\n{out}");
    }
    assert_flow(out);
    assert_eq!(emails(outbox).len(), 2, "{out}");
}

/// A run on a database the example ran on before: nobody new, no email again, a new order.
fn assert_second_run(out: &str, outbox: &Path) {
    assert!(!out.contains("UserRegistered at"), "{out}");
    assert!(!out.contains("[email]"), "{out}");
    assert!(
        out.contains("RegisterUser ada@example.com: rejected: this email is already registered"),
        "{out}"
    );
    assert_flow(out);
    assert_eq!(emails(outbox).len(), 2, "no email sent twice");
}

#[test]
fn runs_twice_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("seed.db").display());
    // The outbox is derived from the SQLite path when not given.
    let outbox = dir.path().join("seed-outbox.log");
    let first = run(&url, None);
    assert!(first.contains(&outbox.display().to_string()), "{first}");
    assert_first_run(&first, &outbox);
    let second = run(&url, None);
    assert_second_run(&second, &outbox);

    redeliver_welcome(&url, "user-ada@example.com");
    let third = run(&url, None);
    assert!(
        third.contains("[mailer] ada@example.com: already in the outbox"),
        "{third}"
    );
    assert_second_run(&third, &outbox);
}

/// Enqueues the `send_welcome` job of the stream's first event again, as at-least-once delivery may.
fn redeliver_welcome(url: &str, stream: &str) {
    use herald::EventStoreExt;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let herald = herald::open(url).await.unwrap();
        let stream = herald::StreamName::new(stream).unwrap();
        let events = herald
            .store
            .read_to_vec(herald::ReadQuery::stream(stream.clone()))
            .await
            .unwrap();
        let event = events.first().unwrap();
        let args = herald::jobs::EventJobArgs {
            event_id: event.id,
            stream: event.stream.clone(),
            event_type: event.event_type.clone(),
            position: event.position,
        };
        let job = herald::NewJob::raw("send_welcome", serde_json::to_string(&args).unwrap())
            .queue("mailers");
        herald.jobs.enqueue(job).await.unwrap().unwrap();
    });
}

#[test]
fn runs_on_memory() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = dir.path().join("outbox.log");
    let out = run("memory://", Some(&outbox));
    assert_first_run(&out, &outbox);
    assert!(out.contains("memory://: the database is gone"), "{out}");
}

#[test]
fn runs_twice_on_postgres() {
    if !herald_store_testkit::postgres::available_blocking("runs_twice_on_postgres") {
        return;
    }
    let schema = herald_store_testkit::postgres::TestSchema::new("seed_example");
    let dir = tempfile::tempdir().unwrap();
    let outbox = dir.path().join("outbox.log");
    let first = run(&schema.url(), Some(&outbox));
    assert_first_run(&first, &outbox);
    let second = run(&schema.url(), Some(&outbox));
    assert_second_run(&second, &outbox);
}
