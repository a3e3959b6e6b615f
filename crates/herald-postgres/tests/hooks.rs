//! Append hooks and `append_with` extras (the outbox pattern): what they write commits with the append, a
//! failing hook fails its append only (nothing of it stored, batch neighbours unaffected, no hole in the
//! global order), and an idempotent retry runs no hook.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use herald_core::{
    AppendResult, Error, EventStore, EventStoreExt, ExpectedVersion, NewEvent, ReadQuery,
    StreamName,
};
use herald_postgres::{
    AppendHook, AppendedEvent, HookError, HookWrites, PostgresConfig, PostgresStore,
};
use uuid::Uuid;

/// Writes one `outbox` row per event with everything a job needs (id, type, position, version, stream,
/// data, metadata) in one multi-row statement. Refuses events of type `Refused` before writing anything;
/// events whose data is `{"fail":true}` make the server refuse the row (a CHECK constraint), after the
/// statement was sent.
#[derive(Default)]
struct Outbox {
    calls: AtomicUsize,
}

impl AppendHook for Outbox {
    fn on_append(
        &self,
        stream: &str,
        events: &[AppendedEvent<'_>],
        writes: &mut HookWrites,
    ) -> Result<(), HookError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if events.iter().any(|e| e.event_type == "Refused") {
            return Err("this hook refuses `Refused` events".into());
        }
        let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
        let types: Vec<String> = events.iter().map(|e| e.event_type.to_owned()).collect();
        let positions: Vec<i64> = events.iter().map(|e| e.position as i64).collect();
        let versions: Vec<i64> = events.iter().map(|e| e.version as i64).collect();
        let data: Vec<String> = events.iter().map(|e| e.data.to_owned()).collect();
        let metadata: Vec<String> = events.iter().map(|e| e.metadata.to_owned()).collect();
        writes.push(
            "INSERT INTO outbox (event_id, event_type, position, version, stream, data, metadata)
             SELECT t.id, t.event_type, t.position, t.version, $7::text, t.data, t.metadata
             FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::bigint[], $5::text[], $6::text[])
                  AS t(id, event_type, position, version, data, metadata)",
            vec![
                Box::new(ids),
                Box::new(types),
                Box::new(positions),
                Box::new(versions),
                Box::new(data),
                Box::new(metadata),
                Box::new(stream.to_owned()),
            ],
        )?;
        Ok(())
    }
}

const OUTBOX_TABLE: &str = "CREATE TABLE outbox (
    event_id   uuid   PRIMARY KEY,
    event_type text   NOT NULL,
    position   bigint NOT NULL,
    version    bigint NOT NULL,
    stream     text   NOT NULL,
    data       text   NOT NULL CHECK (data <> '{\"fail\":true}'),
    metadata   text   NOT NULL
)";

/// A client on the test's schema, for setup and checks beside the store.
async fn client(schema: &str) -> tokio_postgres::Client {
    let url = format!(
        "{}?options=-c%20search_path%3D{schema}",
        support::database_url()
    );
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
}

struct Setup {
    store: Arc<PostgresStore>,
    hook: Arc<Outbox>,
    db: tokio_postgres::Client,
    _schema: support::TestSchema,
}

async fn setup(with_hook: bool) -> Setup {
    let hook = Arc::new(Outbox::default());
    let registered = Arc::clone(&hook);
    let (store, schema) = support::fresh_store(|c: PostgresConfig| {
        if with_hook {
            c.with_append_hook(registered)
        } else {
            c
        }
    })
    .await;
    let db = client(schema.name()).await;
    db.batch_execute(OUTBOX_TABLE).await.expect("outbox table");
    Setup {
        store: Arc::new(store),
        hook,
        db,
        _schema: schema,
    }
}

fn stream(name: &str) -> StreamName {
    StreamName::new(name).unwrap()
}

fn event(event_type: &str, data: &str) -> NewEvent {
    NewEvent::new(event_type)
        .with_data(data)
        .with_metadata(r#"{"correlation_id":"c"}"#)
}

async fn outbox_rows(db: &tokio_postgres::Client) -> Vec<(Uuid, String, i64, i64, String)> {
    db.query(
        "SELECT event_id, event_type, position, version, stream FROM outbox ORDER BY position",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
    .collect()
}

/// Every stored event's position, in order: must be 1..=n without a hole.
async fn assert_gap_free(store: &PostgresStore) -> Vec<herald_core::RecordedEvent> {
    let all = store.read_to_vec(ReadQuery::all()).await.unwrap();
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e.position, i as u64 + 1, "hole in the global order");
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hook_rows_commit_with_the_append() {
    if !support::postgres_available("hook_rows_commit_with_the_append").await {
        return;
    }
    let s = setup(true).await;
    s.store
        .append(
            &stream("order-1"),
            vec![event("OrderPlaced", r#"{"n":1}"#)],
            ExpectedVersion::NoStream,
        )
        .await
        .unwrap();
    let second = s
        .store
        .append(
            &stream("order-1"),
            vec![
                event("OrderPaid", r#"{"n":2}"#),
                event("OrderShipped", r#"{"n":3}"#),
            ],
            ExpectedVersion::Exact(0),
        )
        .await
        .unwrap();
    assert_eq!((second.first_position, second.last_version), (2, 2));

    let rows =
        s.db.query(
            "SELECT o.event_id, o.event_type, o.position, o.version, o.stream, o.data, o.metadata
             FROM outbox o ORDER BY o.position",
            &[],
        )
        .await
        .unwrap();
    let stored = assert_gap_free(&s.store).await;
    assert_eq!(rows.len(), 3);
    for (row, e) in rows.iter().zip(&stored) {
        assert_eq!(row.get::<_, Uuid>(0), e.id);
        assert_eq!(row.get::<_, String>(1), e.event_type);
        assert_eq!(row.get::<_, i64>(2) as u64, e.position);
        assert_eq!(row.get::<_, i64>(3) as u64, e.version);
        assert_eq!(row.get::<_, String>(4), e.stream.as_str());
        assert_eq!(row.get::<_, String>(5), e.data);
        assert_eq!(row.get::<_, String>(6), e.metadata);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_hook_fails_its_append_only() {
    if !support::postgres_available("a_failing_hook_fails_its_append_only").await {
        return;
    }
    let s = setup(true).await;
    // 30 concurrent appends, sent before the writer can take them one by one, so batches hold several:
    // every third is refused by the hook in Rust, every third by the server (CHECK violation).
    let appends = (0..30).map(|i| {
        let store = Arc::clone(&s.store);
        async move {
            let (kind, data) = match i % 3 {
                0 => ("Good", r#"{"ok":true}"#),
                1 => ("Refused", r#"{"ok":false}"#),
                _ => ("Good", r#"{"fail":true}"#),
            };
            let result = store
                .append(
                    &stream(&format!("s-{i}")),
                    vec![event(kind, data), event("Good", r#"{"second":true}"#)],
                    ExpectedVersion::NoStream,
                )
                .await;
            (i, result)
        }
    });
    let results = futures::future::join_all(appends).await;
    let stats = s.store.write_stats();
    assert!(
        stats.transactions < stats.requests,
        "appends were never batched together: {stats:?}"
    );
    for (i, result) in &results {
        let name = stream(&format!("s-{i}"));
        if i % 3 == 0 {
            let r = result.as_ref().expect("a good append in the batch commits");
            assert_eq!(r.last_position, r.first_position + 1);
            assert_eq!(s.store.stream_version(&name).await.unwrap(), Some(1));
        } else {
            let err = result.as_ref().unwrap_err();
            assert!(matches!(err, Error::Backend { .. }), "{i}: {err:?}");
            assert!(err.to_string().contains(&format!("`s-{i}`")), "{err}");
            assert_eq!(
                s.store.stream_version(&name).await.unwrap(),
                None,
                "nothing of the failed append {i} is stored"
            );
        }
    }
    let stored = assert_gap_free(&s.store).await;
    assert_eq!(stored.len(), 20);
    let rows = outbox_rows(&s.db).await;
    assert_eq!(
        rows.len(),
        20,
        "one outbox row per committed event, none else"
    );
    for (row, e) in rows.iter().zip(&stored) {
        assert_eq!((row.0, row.2 as u64), (e.id, e.position));
    }
    // The store goes on: the head moved with the commits and a later append lands after them.
    let next = s
        .store
        .append(
            &stream("after"),
            vec![event("Good", "{}")],
            ExpectedVersion::Any,
        )
        .await
        .unwrap();
    assert_eq!(next.first_position, 21);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_retry_runs_no_hook() {
    if !support::postgres_available("an_idempotent_retry_runs_no_hook").await {
        return;
    }
    let s = setup(true).await;
    let events = vec![event("A", "{}"), event("B", "{}")];
    let first = s
        .store
        .append(&stream("r"), events.clone(), ExpectedVersion::NoStream)
        .await
        .unwrap();
    assert_eq!(s.hook.calls.load(Ordering::SeqCst), 1);
    let retry = s
        .store
        .append(&stream("r"), events, ExpectedVersion::NoStream)
        .await
        .unwrap();
    assert_eq!(retry, first);
    assert_eq!(
        s.hook.calls.load(Ordering::SeqCst),
        1,
        "no hook for a retry"
    );
    // Nor for a refused append.
    let conflict = s
        .store
        .append(
            &stream("r"),
            vec![event("C", "{}")],
            ExpectedVersion::NoStream,
        )
        .await
        .unwrap_err();
    assert!(matches!(conflict, Error::WrongExpectedVersion { .. }));
    assert_eq!(s.hook.calls.load(Ordering::SeqCst), 1);
    assert_eq!(outbox_rows(&s.db).await.len(), 2);
}

/// `append_with` on a store without hooks: the extra's rows commit with the append, its error (in Rust or
/// from the server, including a statement that does not parse) fails that append only, and it is not run
/// for a refused append.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_with_runs_the_extra_for_that_append_only() {
    if !support::postgres_available("append_with_runs_the_extra_for_that_append_only").await {
        return;
    }
    let s = setup(false).await;
    let insert = |data: &'static str| -> herald_postgres::AppendExtra {
        Box::new(move |result: &AppendResult, writes: &mut HookWrites| {
            writes.push(
                "INSERT INTO outbox (event_id, event_type, position, version, stream, data, metadata)
                 VALUES ($1, 'Extra', $2, $3, $4, $5, '{}')",
                vec![
                    Box::new(result.ids[0]),
                    Box::new(result.first_position as i64),
                    Box::new(result.first_version as i64),
                    Box::new(result.stream.clone()),
                    Box::new(data),
                ],
            )?;
            Ok(())
        })
    };
    let ok = s
        .store
        .append_with(
            &stream("w"),
            vec![event("A", "{}")],
            ExpectedVersion::NoStream,
            insert("{}"),
        )
        .await
        .unwrap();
    // A plain append (no savepoint) between hooked ones.
    s.store
        .append(
            &stream("plain"),
            vec![event("P", "{}")],
            ExpectedVersion::Any,
        )
        .await
        .unwrap();
    let server_refused = s
        .store
        .append_with(
            &stream("w"),
            vec![event("B", "{}")],
            ExpectedVersion::Exact(0),
            insert(r#"{"fail":true}"#),
        )
        .await
        .unwrap_err();
    assert!(matches!(server_refused, Error::Backend { .. }));
    let unparsable = s
        .store
        .append_with(
            &stream("w"),
            vec![event("B", "{}")],
            ExpectedVersion::Exact(0),
            Box::new(|_, writes: &mut HookWrites| {
                writes.push("INSERT INTO no_such_table VALUES (1)", vec![])?;
                Ok(())
            }),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(unparsable, herald_core::Error::Backend { .. }),
        "{unparsable:?}"
    );
    assert!(
        unparsable.to_string().contains("no_such_table"),
        "{unparsable}"
    );
    let rust_refused = s
        .store
        .append_with(
            &stream("w"),
            vec![event("B", "{}")],
            ExpectedVersion::Exact(0),
            Box::new(|_, _: &mut HookWrites| Err("not today".into())),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(rust_refused, herald_core::Error::Backend { .. }),
        "{rust_refused:?}"
    );
    assert!(rust_refused.to_string().contains("not today"));
    let ran = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&ran);
    let conflict = s
        .store
        .append_with(
            &stream("w"),
            vec![event("B", "{}")],
            ExpectedVersion::NoStream,
            Box::new(move |_, _: &mut HookWrites| {
                counted.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }),
        )
        .await
        .unwrap_err();
    assert!(matches!(conflict, Error::WrongExpectedVersion { .. }));
    assert_eq!(
        ran.load(Ordering::SeqCst),
        0,
        "no extra for a refused append"
    );

    assert_eq!(s.store.stream_version(&stream("w")).await.unwrap(), Some(0));
    assert_gap_free(&s.store).await;
    let rows = outbox_rows(&s.db).await;
    assert_eq!(
        rows,
        vec![(ok.ids[0], "Extra".to_owned(), 1, 0, "w".to_owned())]
    );
    // The statement cache survived the failures: the same extra works again.
    let again = s
        .store
        .append_with(
            &stream("w"),
            vec![event("B", "{}")],
            ExpectedVersion::Exact(0),
            insert("{}"),
        )
        .await
        .unwrap();
    assert_eq!(again.first_position, 3);
    assert_eq!(outbox_rows(&s.db).await.len(), 2);
}

/// Plain appends and `append_with` appends sent at once share batches: the plain ones are pipelined together,
/// the hooked ones run in their savepoints between them, and every one lands once, gap-free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooked_and_plain_appends_share_batches() {
    if !support::postgres_available("hooked_and_plain_appends_share_batches").await {
        return;
    }
    let s = setup(false).await;
    let appends = (0..40).map(|i| {
        let store = Arc::clone(&s.store);
        async move {
            let name = stream(&format!("m-{}", i % 7));
            if i % 3 == 0 {
                store
                    .append_with(
                        &name,
                        vec![event("Hooked", "{}")],
                        ExpectedVersion::Any,
                        Box::new(|result: &AppendResult, writes: &mut HookWrites| {
                            writes.push(
                                "INSERT INTO outbox
                                   (event_id, event_type, position, version, stream, data, metadata)
                                 VALUES ($1, 'Hooked', $2, $3, $4, '{}', '{}')",
                                vec![
                                    Box::new(result.ids[0]),
                                    Box::new(result.first_position as i64),
                                    Box::new(result.first_version as i64),
                                    Box::new(result.stream.clone()),
                                ],
                            )?;
                            Ok(())
                        }),
                    )
                    .await
            } else {
                store
                    .append(&name, vec![event("Plain", "{}")], ExpectedVersion::Any)
                    .await
            }
        }
    });
    let results = futures::future::join_all(appends).await;
    for r in &results {
        r.as_ref().unwrap();
    }
    let stats = s.store.write_stats();
    assert!(
        stats.transactions < stats.requests,
        "nothing was batched: {stats:?}"
    );
    let stored = assert_gap_free(&s.store).await;
    assert_eq!(stored.len(), 40);
    let rows = outbox_rows(&s.db).await;
    assert_eq!(rows.len(), 14, "one row per hooked append");
    for (id, kind, position, version, name) in rows {
        let e = &stored[position as usize - 1];
        assert_eq!((e.id, e.event_type.as_str()), (id, kind.as_str()));
        assert_eq!(
            (e.version, e.stream.as_str()),
            (version as u64, name.as_str())
        );
    }
}

/// Many `append_with` appends sent at once share batches; every fifth one's extra writes a row the server
/// refuses (CHECK violation). Each such statement rolls its batch back, and the batch runs again without that
/// append: the other appends get new positions and versions, and their extras are asked again for those. In
/// the end only the failing appends failed, the log and every stream are gap-free, and the outbox holds one
/// row per successful append with exactly the positions and versions its result reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_extras_in_a_shared_batch_fail_alone_and_the_rest_are_redecided() {
    if !support::postgres_available(
        "failing_extras_in_a_shared_batch_fail_alone_and_the_rest_are_redecided",
    )
    .await
    {
        return;
    }
    let s = setup(false).await;
    const APPENDS: usize = 30;
    const STREAMS: usize = 4;
    let fails = |i: usize| i % 5 == 4;
    // Every call of every extra: (append, first position it was given).
    let calls = Arc::new(std::sync::Mutex::new(Vec::<(usize, u64)>::new()));
    let appends = (0..APPENDS).map(|i| {
        let store = Arc::clone(&s.store);
        let calls = Arc::clone(&calls);
        async move {
            let name = stream(&format!("b-{}", i % STREAMS));
            // One or two events, so positions and versions move by different steps.
            let events: Vec<NewEvent> = (0..1 + i % 2)
                .map(|n| event("Batched", &format!(r#"{{"append":{i},"n":{n}}}"#)))
                .collect();
            let data = if fails(i) { r#"{"fail":true}"# } else { "{}" };
            let extra: herald_postgres::AppendExtra =
                Box::new(move |result: &AppendResult, writes: &mut HookWrites| {
                    calls.lock().unwrap().push((i, result.first_position));
                    writes.push(
                        "INSERT INTO outbox
                           (event_id, event_type, position, version, stream, data, metadata)
                         VALUES ($1, 'Extra', $2, $3, $4, $5, $6)",
                        vec![
                            Box::new(result.ids[0]),
                            Box::new(result.first_position as i64),
                            Box::new(result.first_version as i64),
                            Box::new(result.stream.clone()),
                            Box::new(data),
                            Box::new(format!(
                                r#"{{"last_position":{},"last_version":{}}}"#,
                                result.last_position, result.last_version
                            )),
                        ],
                    )?;
                    Ok(())
                });
            let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
            let result = store
                .append_with(&name, events, ExpectedVersion::Any, extra)
                .await;
            (i, ids, result)
        }
    });
    let results = futures::future::join_all(appends).await;
    let stats = s.store.write_stats();
    assert_eq!(stats.requests, APPENDS as u64);
    assert!(
        stats.transactions < stats.requests,
        "the appends were not batched together (attempts count as transactions): {stats:?}"
    );

    let mut succeeded: Vec<(usize, AppendResult)> = Vec::new();
    for (i, ids, result) in results {
        let name = format!("b-{}", i % STREAMS);
        if fails(i) {
            let err = result.expect_err("an append whose extra the server refuses fails");
            assert!(matches!(err, Error::Backend { .. }), "{i}: {err:?}");
            assert!(err.to_string().contains(&format!("`{name}`")), "{i}: {err}");
            for id in ids {
                assert_eq!(
                    s.store.event(id).await.unwrap(),
                    None,
                    "nothing of the failed append {i} is stored"
                );
            }
        } else {
            let r =
                result.unwrap_or_else(|e| panic!("append {i} shares a batch with failures: {e}"));
            assert_eq!((r.stream.as_str(), &r.ids), (name.as_str(), &ids));
            assert_eq!(r.last_position - r.first_position, ids.len() as u64 - 1);
            assert_eq!(r.last_version - r.first_version, ids.len() as u64 - 1);
            succeeded.push((i, r));
        }
    }
    assert_eq!(succeeded.len(), APPENDS - APPENDS / 5);

    // The global log is gap-free and holds exactly the successful appends, where their results say.
    let stored = assert_gap_free(&s.store).await;
    let expected_events: usize = succeeded.iter().map(|(_, r)| r.ids.len()).sum();
    assert_eq!(stored.len(), expected_events);
    for (i, r) in &succeeded {
        for (k, id) in r.ids.iter().enumerate() {
            let e = &stored[(r.first_position as usize - 1) + k];
            assert_eq!(
                (e.id, e.stream.as_str(), e.version),
                (*id, r.stream.as_str(), r.first_version + k as u64),
                "append {i}, event {k}"
            );
        }
    }
    // Every stream's versions are contiguous from 0, and its version is its last event's.
    for n in 0..STREAMS {
        let name = stream(&format!("b-{n}"));
        let events = s
            .store
            .read_to_vec(ReadQuery::stream(name.clone()))
            .await
            .unwrap();
        let versions: Vec<u64> = events.iter().map(|e| e.version).collect();
        assert_eq!(
            versions,
            (0..events.len() as u64).collect::<Vec<_>>(),
            "versions of {name}"
        );
        assert!(
            events.windows(2).all(|w| w[0].position < w[1].position),
            "{name} in position order"
        );
        assert_eq!(
            s.store.stream_version(&name).await.unwrap(),
            Some(events.len() as u64 - 1)
        );
    }

    // One outbox row per successful append, with the position and version its result reports.
    let rows =
        s.db.query(
            "SELECT event_id, position, version, stream, data, metadata FROM outbox ORDER BY position",
            &[],
        )
        .await
        .unwrap();
    let mut outbox: Vec<(Uuid, i64, i64, String, String, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
        .collect();
    let mut wanted: Vec<(Uuid, i64, i64, String, String, String)> = succeeded
        .iter()
        .map(|(_, r)| {
            (
                r.ids[0],
                r.first_position as i64,
                r.first_version as i64,
                r.stream.clone(),
                "{}".to_owned(),
                format!(
                    r#"{{"last_position":{},"last_version":{}}}"#,
                    r.last_position, r.last_version
                ),
            )
        })
        .collect();
    outbox.sort_by_key(|row| row.1);
    wanted.sort_by_key(|row| row.1);
    assert_eq!(outbox, wanted);

    // The batches were decided again after the failures: some successful append's extra was asked more than
    // once, with positions that changed, and the row kept is the one for its final result (checked above).
    let calls = calls.lock().unwrap();
    let redecided = succeeded.iter().any(|(i, r)| {
        let given: Vec<u64> = calls.iter().filter(|c| c.0 == *i).map(|c| c.1).collect();
        given.len() > 1 && given.iter().any(|p| *p != r.first_position)
    });
    assert!(
        redecided,
        "no successful append was re-decided with new positions after a failure: {calls:?}"
    );
    for (i, r) in &succeeded {
        let last = calls.iter().rev().find(|c| c.0 == *i).map(|c| c.1);
        assert_eq!(
            last,
            Some(r.first_position),
            "append {i}'s extra, last call"
        );
    }
}
