//! The example runs, twice, on one database: the second run registers nobody new and sends no email again.

use std::process::Command;

fn run(db: &std::path::Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_herald-example-seed"))
        .arg(db)
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn seed_example_runs_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("seed.db");
    let first = run(&db);
    assert!(
        first.contains("RegisterUser ada@example.com: UserRegistered"),
        "{first}"
    );
    assert!(
        first.contains("rejected: this email is already registered"),
        "{first}"
    );
    assert!(
        first.contains("invalid: `not-an-email` is not an email address"),
        "{first}"
    );
    assert!(
        first.contains("client B refused: wrong expected version"),
        "{first}"
    );
    assert!(
        first.contains("8 concurrent AddItem commands: all committed"),
        "{first}"
    );
    assert!(first.contains("9 items, paid: true"), "{first}");
    assert!(
        first.contains("second delivery duplicate = true"),
        "{first}"
    );
    assert!(
        first.contains("grace@example.com    Grace Hopper"),
        "{first}"
    );
    let outbox = dir.path().join("seed-outbox.log");
    assert_eq!(std::fs::read_to_string(&outbox).unwrap().lines().count(), 2);

    let second = run(&db);
    assert!(!second.contains("UserRegistered at"), "{second}");
    assert!(!second.contains("[email]"), "{second}");
    assert_eq!(
        std::fs::read_to_string(&outbox).unwrap().lines().count(),
        2,
        "no email sent twice"
    );
    assert!(second.contains("9 items, paid: true"), "{second}");
}
