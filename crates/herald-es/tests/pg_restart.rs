//! A subscription and a projection over PostgreSQL ride out a server restart: a loopback proxy of the test's
//! own (the shared server is never restarted) drops every connection and turns new ones away for a while,
//! then relays again. Both keep running, and handle every event exactly once, in order: those appended
//! before, during (through a direct connection) and after the outage.
//!
//! Skipped (printed) when PostgreSQL is unreachable, unless `CI` is set.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use herald_core::{EventStore, ExpectedVersion, NewEvent, RecordedEvent, StreamName};
use herald_es::{
    BoxError, CancellationToken, InMemoryCheckpointStore, Projector, ReadModel, Subscription,
    handler_fn,
};
use herald_postgres::{PostgresConfig, PostgresStore};
use herald_store_testkit::postgres::{TestSchema, available, server_addr, server_url};
use herald_store_testkit::proxy::TcpProxy;
use tokio::sync::mpsc;
use uuid::Uuid;

/// The longest any single wait may take before it counts as a hang.
const WAIT: Duration = Duration::from_secs(20);

/// A read model that reports every event it applies.
struct Seen(mpsc::UnboundedSender<Uuid>);

#[async_trait]
impl ReadModel for Seen {
    async fn apply(&self, event: &RecordedEvent) -> Result<(), BoxError> {
        self.0.send(event.id).map_err(|e| e.to_string().into())
    }
    async fn reset(&self) -> Result<(), BoxError> {
        Ok(())
    }
}

async fn append(store: &PostgresStore, stream: &str, n: usize) -> Vec<Uuid> {
    let events: Vec<NewEvent> = (0..n).map(|_| NewEvent::new("Happened")).collect();
    let ids = events.iter().map(|e| e.id).collect();
    store
        .append(
            &StreamName::new(stream).unwrap(),
            events,
            ExpectedVersion::Any,
        )
        .await
        .unwrap();
    ids
}

async fn next_ids(rx: &mut mpsc::UnboundedReceiver<Uuid>, n: usize, who: &str) -> Vec<Uuid> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let id = tokio::time::timeout(WAIT, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("{who}: event {i} of {n} not handled within {WAIT:?}"))
            .unwrap_or_else(|| panic!("{who} stopped"));
        out.push(id);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_and_a_projection_ride_out_a_server_restart() {
    if !available("a_subscription_and_a_projection_ride_out_a_server_restart").await {
        return;
    }
    let schema = TestSchema::new("herald_es_pg");
    let direct = PostgresStore::open(
        &server_url(),
        PostgresConfig::default().schema(schema.name()),
    )
    .await
    .unwrap();
    let proxy = TcpProxy::forward(server_addr()).await;
    let proxied: Arc<dyn EventStore> = Arc::new(
        PostgresStore::open_url(&schema.url_via(proxy.port()))
            .await
            .unwrap(),
    );
    let checkpoints = Arc::new(InMemoryCheckpointStore::new());
    let cancel = CancellationToken::new();

    let (sub_tx, mut handled) = mpsc::unbounded_channel();
    let subscription = Subscription::all("audit", proxied.clone(), checkpoints.clone()).unwrap();
    let subscription_run = tokio::spawn({
        let cancel = cancel.clone();
        async move {
            let handler = handler_fn(move |event: RecordedEvent| {
                let tx = sub_tx.clone();
                async move { tx.send(event.id).map_err(|e| BoxError::from(e.to_string())) }
            });
            subscription.run(&handler, &cancel).await
        }
    });
    let (model_tx, mut applied) = mpsc::unbounded_channel();
    let projector = Projector::new(
        Subscription::all("totals", proxied.clone(), checkpoints.clone()).unwrap(),
        Arc::new(Seen(model_tx)),
    );
    let projector_run = tokio::spawn({
        let cancel = cancel.clone();
        async move { projector.run(&cancel).await }
    });

    let mut expected = append(&direct, "before", 3).await;
    let mut by_subscription = next_ids(&mut handled, 3, "the subscription").await;
    let mut by_projection = next_ids(&mut applied, 3, "the projection").await;

    proxy.outage();
    proxy.wait_refused(4, WAIT).await;
    expected.extend(append(&direct, "during", 3).await);
    let refused = proxy.refused();
    proxy.wait_refused(refused + 2, WAIT).await;
    assert!(!subscription_run.is_finished(), "the subscription stopped");
    assert!(!projector_run.is_finished(), "the projection stopped");
    proxy.restore();
    expected.extend(append(&direct, "after", 3).await);

    by_subscription.extend(next_ids(&mut handled, 6, "the subscription").await);
    by_projection.extend(next_ids(&mut applied, 6, "the projection").await);
    assert_eq!(
        by_subscription, expected,
        "subscription: each event once, in order"
    );
    assert_eq!(
        by_projection, expected,
        "projection: each event once, in order"
    );

    cancel.cancel();
    let subscription_stats = tokio::time::timeout(WAIT, subscription_run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let projector_stats = tokio::time::timeout(WAIT, projector_run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // Nothing handled twice or beyond what was appended.
    assert_eq!(subscription_stats.handled, 9);
    assert_eq!(projector_stats.handled, 9);
    assert_eq!(subscription_stats.cursor, Some(9));
}
