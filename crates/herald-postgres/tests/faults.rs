//! Network faults between Herald and PostgreSQL, staged by a loopback TCP proxy of the test's own (the
//! shared server is never restarted):
//!
//! - a server that accepts connections and never answers: opening fails within `connect_timeout` with
//!   [`Error::Unavailable`] naming the host and port, instead of waiting for ever;
//! - a server restart (every connection dropped, new ones turned away for a while, then accepted again): a
//!   follower reconnects with a backoff and resumes after the last event it yielded, with no gap and no
//!   duplicate; one configured to give up does so with [`Error::Unavailable`].

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use herald_core::{
    Backoff, Error, EventStore, EventStoreExt, ExpectedVersion, FollowOptions, NewEvent, ReadQuery,
    RecordedEvent, StreamName,
};
use herald_postgres::{PostgresJobQueue, PostgresStore};
use herald_store_testkit::postgres::server_addr;
use herald_store_testkit::proxy::TcpProxy;
use tokio::sync::mpsc;
use uuid::Uuid;

/// The longest any single wait of these tests may take before it counts as a hang.
const WAIT: Duration = Duration::from_secs(20);

/// Opens a store on a server that never answers; returns the error and how long it took.
async fn open_silent(query: &str) -> (Error, Duration, u16) {
    let silent = TcpProxy::silent().await;
    let url = format!("postgres://root@127.0.0.1:{}/test{query}", silent.port());
    let started = Instant::now();
    let err = tokio::time::timeout(WAIT, PostgresStore::open_url(&url))
        .await
        .expect("opening a store on a server that never answers hangs")
        .expect_err("a server that never answers cannot open a store");
    (err, started.elapsed(), silent.port())
}

#[tokio::test]
async fn a_server_that_never_answers_fails_the_open_within_connect_timeout() {
    let (err, took, port) = open_silent("?connect_timeout=1").await;
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "took {took:?} with connect_timeout=1"
    );
    // The message is the contract here: it names the server that did not answer.
    let message = err.to_string();
    assert!(
        message.contains("host 127.0.0.1")
            && message.contains(&format!("port {port}"))
            && message.contains("connect_timeout"),
        "{message}"
    );
}

#[tokio::test]
async fn without_connect_timeout_the_open_still_ends_after_the_default() {
    let (err, took, _) = open_silent("").await;
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    let default = herald_postgres::DEFAULT_CONNECT_TIMEOUT;
    assert!(
        took >= default - Duration::from_millis(100) && took < default + Duration::from_secs(3),
        "took {took:?}, default {default:?}"
    );
}

#[tokio::test]
async fn a_job_queue_on_a_server_that_never_answers_fails_within_connect_timeout() {
    let silent = TcpProxy::silent().await;
    let url = format!(
        "postgres://root@127.0.0.1:{}/test?connect_timeout=1",
        silent.port()
    );
    let started = Instant::now();
    let opened = tokio::time::timeout(WAIT, PostgresJobQueue::open_url(&url))
        .await
        .expect("opening a job queue on a server that never answers hangs");
    assert!(opened.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

fn stream(name: &str) -> StreamName {
    StreamName::new(name).unwrap()
}

/// Appends `n` events to `name` through `store` (a direct connection); returns their ids.
async fn append(store: &PostgresStore, name: &str, n: usize) -> Vec<Uuid> {
    let events: Vec<NewEvent> = (0..n).map(|_| NewEvent::new("Happened")).collect();
    let ids = events.iter().map(|e| e.id).collect();
    store
        .append(&stream(name), events, ExpectedVersion::Any)
        .await
        .unwrap();
    ids
}

/// Follows `query` on `store` in a task of its own (so it keeps running, and meets the outage, while the test
/// does other things); the events arrive on the returned channel.
fn spawn_follower(
    store: Arc<PostgresStore>,
    query: ReadQuery,
) -> mpsc::UnboundedReceiver<herald_core::Result<RecordedEvent>> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut follow = store.follow(query);
        while let Some(event) = follow.next().await {
            if tx.send(event).is_err() {
                return;
            }
        }
    });
    rx
}

/// The next `n` events a follower sent, each within [`WAIT`].
async fn next_events(
    events: &mut mpsc::UnboundedReceiver<herald_core::Result<RecordedEvent>>,
    n: usize,
) -> Vec<RecordedEvent> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let event = tokio::time::timeout(WAIT, events.recv())
            .await
            .unwrap_or_else(|_| panic!("event {i} of {n} did not arrive within {WAIT:?}"))
            .expect("the follow ended")
            .unwrap_or_else(|e| panic!("the follow failed on event {i} of {n}: {e}"));
        out.push(event);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_resumes_exactly_after_a_server_restart() {
    if !support::postgres_available("a_follower_resumes_exactly_after_a_server_restart").await {
        return;
    }
    let schema = support::TestSchema::new();
    let direct = PostgresStore::open(&support::database_url(), schema.config())
        .await
        .unwrap();
    let proxy = TcpProxy::forward(server_addr()).await;
    let proxied = PostgresStore::open_url(&schema.url_via(proxy.port()))
        .await
        .unwrap();
    let mut follow = spawn_follower(Arc::new(proxied), ReadQuery::all());

    let mut expected = append(&direct, "before", 3).await;
    let seen = next_events(&mut follow, 3).await;

    // The restart: every connection through the proxy drops, new ones are turned away. The follower polls
    // every 100 ms and its store's listener reconnects on the same backoff: wait until several attempts
    // were turned away before, and again after, appending (through a direct connection) meanwhile.
    proxy.outage();
    proxy.wait_refused(4, WAIT).await;
    expected.extend(append(&direct, "during", 3).await);
    let refused = proxy.refused();
    proxy.wait_refused(refused + 2, WAIT).await;
    proxy.restore();
    expected.extend(append(&direct, "after", 3).await);

    let mut seen_ids: Vec<Uuid> = seen.iter().map(|e| e.id).collect();
    let rest = next_events(&mut follow, 6).await;
    seen_ids.extend(rest.iter().map(|e| e.id));
    assert_eq!(seen_ids, expected, "each event exactly once, in order");
    // Nothing more than those: the next event is the one appended next, not a repeat.
    let last = append(&direct, "last", 1).await;
    let next = next_events(&mut follow, 1).await;
    assert_eq!(next[0].id, last[0], "a repeated event after the restart");
    let positions: Vec<u64> = seen
        .iter()
        .chain(&rest)
        .chain(&next)
        .map(|e| e.position)
        .collect();
    assert_eq!(
        positions,
        (1..=10).collect::<Vec<u64>>(),
        "gap-free global order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_told_to_give_up_ends_with_unavailable() {
    if !support::postgres_available("a_follower_told_to_give_up_ends_with_unavailable").await {
        return;
    }
    let schema = support::TestSchema::new();
    let proxy = TcpProxy::forward(server_addr()).await;
    let proxied = PostgresStore::open_url(&schema.url_via(proxy.port()))
        .await
        .unwrap();
    proxy.outage();
    let options = FollowOptions::default()
        .reconnect(Backoff::constant(Duration::from_millis(20)))
        .give_up_after(3);
    let mut follow = proxied.follow_with(ReadQuery::all(), options);
    let first = tokio::time::timeout(WAIT, follow.next())
        .await
        .expect("a follower told to give up keeps trying")
        .expect("the follow ended without saying why");
    let err = first.expect_err("no server, yet an event");
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    let after = tokio::time::timeout(WAIT, follow.next()).await.unwrap();
    assert!(after.is_none(), "the follow goes on after giving up");
    // It tried 1 + 3 times before giving up (each attempt opens a read connection the proxy turns away).
    assert!(proxy.refused() >= 4, "refused {}", proxy.refused());
}

/// The server stops answering after the start-up (alive, connections open, nothing comes back): a read fails
/// with `Unavailable` within `read_timeout` instead of waiting for ever, and a follower retries on fresh
/// connections and, once the server answers again, resumes exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_server_fails_a_read_within_read_timeout_and_a_follower_resumes() {
    if !support::postgres_available(
        "a_stalled_server_fails_a_read_within_read_timeout_and_a_follower_resumes",
    )
    .await
    {
        return;
    }
    let schema = support::TestSchema::new();
    let direct = PostgresStore::open(&support::database_url(), schema.config())
        .await
        .unwrap();
    let proxy = TcpProxy::forward(server_addr()).await;
    let url = format!(
        "{}&read_timeout=1&connect_timeout=1",
        schema.url_via(proxy.port())
    );
    let proxied = Arc::new(PostgresStore::open_url(&url).await.unwrap());
    let mut follow = spawn_follower(Arc::clone(&proxied), ReadQuery::all());
    let mut expected = append(&direct, "before", 2).await;
    let mut seen: Vec<Uuid> = next_events(&mut follow, 2)
        .await
        .iter()
        .map(|e| e.id)
        .collect();

    proxy.stall();
    let started = Instant::now();
    let err = tokio::time::timeout(WAIT, proxied.read_to_vec(ReadQuery::all()))
        .await
        .expect("a read from a stalled server hangs")
        .expect_err("a stalled server answered");
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    expected.extend(append(&direct, "during", 2).await);
    proxy.restore();
    expected.extend(append(&direct, "after", 1).await);
    seen.extend(next_events(&mut follow, 3).await.iter().map(|e| e.id));
    assert_eq!(seen, expected, "each event exactly once, in order");
    let last = append(&direct, "last", 1).await;
    assert_eq!(next_events(&mut follow, 1).await[0].id, last[0]);
}

/// Appends while the server is away fail as `Unavailable` (transient, so a caller knows to retry), and the
/// writer reconnects by itself once the server is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_during_an_outage_are_unavailable_and_the_writer_recovers() {
    if !support::postgres_available(
        "appends_during_an_outage_are_unavailable_and_the_writer_recovers",
    )
    .await
    {
        return;
    }
    let schema = support::TestSchema::new();
    let proxy = TcpProxy::forward(server_addr()).await;
    let proxied = PostgresStore::open_url(&schema.url_via(proxy.port()))
        .await
        .unwrap();
    append(&proxied, "before", 1).await;
    proxy.outage();
    for _ in 0..3 {
        let err = tokio::time::timeout(
            WAIT,
            proxied.append(
                &stream("during"),
                vec![NewEvent::new("Lost")],
                ExpectedVersion::Any,
            ),
        )
        .await
        .expect("an append hangs during the outage")
        .expect_err("an append succeeded with no server");
        assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    }
    proxy.restore();
    let appended = tokio::time::timeout(WAIT, async {
        loop {
            match proxied
                .append(
                    &stream("after"),
                    vec![NewEvent::new("Back")],
                    ExpectedVersion::Any,
                )
                .await
            {
                Ok(result) => return result,
                Err(e) => assert!(e.is_transient(), "{e:?}"),
            }
        }
    })
    .await
    .expect("the writer does not recover");
    assert_eq!(
        appended.first_position, 2,
        "nothing of the failed appends stored"
    );
}
