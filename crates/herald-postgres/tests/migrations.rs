//! `apply_migrations`, the migrator other Herald components use for their tables beside the store: applies
//! pending scripts once, in order, and refuses names that are not plain identifiers before touching anything.

mod support;

use herald_postgres::apply_migrations;
use herald_postgres::tokio_postgres;

/// A client and its connection task. Await the task after dropping the client, so that everything the
/// client queued (the rollback of a refused migration) reaches the server before the schema guard drops the
/// schema from a blocking thread.
async fn connect() -> (tokio_postgres::Client, tokio::task::JoinHandle<()>) {
    let (client, connection) =
        tokio_postgres::connect(&support::database_url(), tokio_postgres::NoTls)
            .await
            .expect("connect");
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    (client, task)
}

#[tokio::test]
async fn applies_pending_scripts_once_in_order() {
    if !support::postgres_available("applies_pending_scripts_once_in_order").await {
        return;
    }
    let schema = support::TestSchema::new();
    let s = schema.name();
    let (mut client, connection) = connect().await;
    let first = ["CREATE TABLE {s}.widgets (id int PRIMARY KEY)"];
    apply_migrations(&mut client, s, "test-widgets", &first)
        .await
        .unwrap();
    // Again with one more script: only the new one runs (the first would fail if run twice).
    let both = [first[0], "INSERT INTO {s}.widgets (id) VALUES (1)"];
    apply_migrations(&mut client, s, "test-widgets", &both)
        .await
        .unwrap();
    apply_migrations(&mut client, s, "test-widgets", &both)
        .await
        .unwrap();
    let rows: i64 = client
        .query_one(&format!("SELECT count(*) FROM {s}.widgets"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 1);
    let versions: Vec<i32> = client
        .query(
            &format!("SELECT version FROM {s}.test_widgets_migrations ORDER BY version"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, [1, 2]);
    // A build that knows fewer scripts than the schema has run is refused.
    let err = apply_migrations(&mut client, s, "test-widgets", &first)
        .await
        .unwrap_err();
    assert!(
        matches!(err, herald_core::Error::Backend { .. }),
        "a schema newer than the build is a backend refusal: {err:?}"
    );
    assert!(err.to_string().contains("newer than this build"), "{err}");
    drop(client);
    connection.await.unwrap();
}

#[tokio::test]
async fn bad_names_are_refused_before_anything_is_created() {
    if !support::postgres_available("bad_names_are_refused_before_anything_is_created").await {
        return;
    }
    let (mut client, connection) = connect().await;
    let schema = support::TestSchema::new();
    for (schema_name, component, needle) in [
        ("x; DROP TABLE y", "jobs", "schema name"),
        ("Upper", "jobs", "schema name"),
        (schema.name(), "", "component"),
        (schema.name(), "jobs; --", "component"),
        (schema.name(), "Jobs", "component"),
    ] {
        let err = apply_migrations(&mut client, schema_name, component, &["SELECT 1"])
            .await
            .unwrap_err();
        assert!(
            matches!(err, herald_core::Error::InvalidInput(_)),
            "{schema_name}/{component}: {err}"
        );
        assert!(err.to_string().contains(needle), "{err}");
    }
    let created: i64 = client
        .query_one(
            "SELECT count(*) FROM information_schema.schemata WHERE schema_name = $1",
            &[&schema.name()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(created, 0, "nothing was created");
    drop(client);
    connection.await.unwrap();
}
