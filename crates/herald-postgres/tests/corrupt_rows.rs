//! A damaged row (edited by hand or by another tool) is an error naming the event, never a read that runs
//! for ever. The SQLite store's stored-row fuzz found it (`herald-sqlite`'s `corrupt_rows`); the decoding is
//! the same here.

mod support;

use std::time::Duration;

use herald_core::{
    Error, EventStore, EventStoreExt, ExpectedVersion, NewEvent, ReadQuery, StreamName,
};

/// A stored position of `i64::MIN` read back as 2^63 sent a backward global read in pages of 1 round in
/// circles (each next page started at the largest position again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_negative_stored_position_is_an_error_not_an_endless_read() {
    let (store, schema) = support::fresh_store(|c| c).await;
    let events = vec![NewEvent::new("A"), NewEvent::new("B"), NewEvent::new("C")];
    let damaged = events[0].id;
    store
        .append(
            &StreamName::new("s-1").unwrap(),
            events,
            ExpectedVersion::Any,
        )
        .await
        .unwrap();
    let (client, connection) =
        tokio_postgres::connect(&support::database_url(), tokio_postgres::NoTls)
            .await
            .unwrap();
    let connection = tokio::spawn(connection);
    client
        .execute(
            &format!(
                "UPDATE {}.events SET position = $1 WHERE position = 1",
                schema.name()
            ),
            &[&i64::MIN],
        )
        .await
        .unwrap();
    drop(client);
    let _ = connection.await;
    let query = ReadQuery::all().backward().batch_size(1);
    let read = tokio::time::timeout(Duration::from_secs(20), store.read_to_vec(query))
        .await
        .expect("the backward read in pages of 1 ends");
    match read {
        Err(e @ Error::Backend { .. }) => {
            assert!(
                e.to_string().contains(&damaged.to_string()),
                "{e} names the event"
            );
        }
        other => panic!("expected a backend error for the corrupt row, got {other:?}"),
    }
}

/// A last stored `recorded_at` past the largest timestamp (a damaged row) became the commit time of every
/// later append ("never before the previous commit"), so the store went on writing events it could not read
/// back. The append is refused instead, as a backend error naming the damaged event, and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_out_of_range_last_commit_time_refuses_appends_instead_of_writing_unreadable_events() {
    let (store, schema) = support::fresh_store(|c| c).await;
    store
        .append(
            &StreamName::new("s-1").unwrap(),
            vec![NewEvent::new("A")],
            ExpectedVersion::Any,
        )
        .await
        .unwrap();
    let (client, connection) =
        tokio_postgres::connect(&support::database_url(), tokio_postgres::NoTls)
            .await
            .unwrap();
    let connection = tokio::spawn(connection);
    client
        .execute(
            &format!(
                "UPDATE {}.events SET recorded_at = $1 WHERE position = 1",
                schema.name()
            ),
            &[&i64::MAX],
        )
        .await
        .unwrap();
    drop(client);
    let _ = connection.await;
    let fresh = StreamName::new("fresh-1").unwrap();
    let appended = tokio::time::timeout(
        Duration::from_secs(20),
        store.append(&fresh, vec![NewEvent::new("B")], ExpectedVersion::NoStream),
    )
    .await
    .expect("the append answers");
    match appended {
        Err(e @ Error::Backend { .. }) => {
            assert!(
                e.to_string().contains("position 1"),
                "{e} names the damaged event"
            );
        }
        other => panic!("expected the append refused as a backend error, got {other:?}"),
    }
    assert_eq!(
        store.stream_version(&fresh).await.unwrap(),
        None,
        "nothing was written"
    );
}
