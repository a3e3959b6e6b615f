//! Publishing through the event store: append first, dispatch after the commit.

use std::sync::{Arc, Mutex};

use herald_core::{EventStore, EventStoreExt, ExpectedVersion, ReadQuery, StreamName};
use herald_memory::InMemoryStore;
use herald_notify::{Bus, Envelope, EventMeta, PublishError, StorePublisher};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OrderPlaced {
    order_id: u64,
}
herald_notify::domain_event!(OrderPlaced, "order.placed", 3);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PaymentRequested {
    order_id: u64,
}
herald_notify::domain_event!(PaymentRequested, "payment.requested");

fn setup() -> (Arc<dyn EventStore>, Bus, StorePublisher) {
    let store: Arc<dyn EventStore> = Arc::new(InMemoryStore::new());
    let bus = Bus::new();
    let publisher = StorePublisher::new(store.clone(), bus.clone());
    (store, bus, publisher)
}

fn stream(name: &str) -> StreamName {
    StreamName::new(name).unwrap()
}

#[tokio::test]
async fn publish_appends_then_dispatches_after_the_commit() {
    let (store, bus, publisher) = setup();
    // The handler runs synchronously inside dispatch; it records what the store already holds by then.
    let (tx, rx) = oneshot::channel::<(EventMeta, bool)>();
    let tx = Mutex::new(Some(tx));
    let store2 = store.clone();
    let _sub = bus.subscribe(move |e: &Envelope<OrderPlaced>| {
        let head = *store2.watch_head().borrow();
        let committed = head.position >= e.meta().stored.as_ref().unwrap().position.unwrap();
        if let Some(tx) = tx.lock().unwrap().take() {
            tx.send((e.meta().clone(), committed)).unwrap();
        }
    });
    let published = publisher
        .publish(
            &stream("order-1"),
            vec![OrderPlaced { order_id: 1 }],
            ExpectedVersion::NoStream,
        )
        .await
        .unwrap();
    assert!(published.is_fully_handled());
    assert_eq!(published.deliveries.len(), 1);
    let (meta, committed) = rx.await.unwrap();
    assert!(committed, "dispatched only after the commit");
    let stored = meta.stored.clone().unwrap();
    assert_eq!(
        (stored.stream.as_str(), stored.version, stored.position),
        ("order-1", 0, Some(published.append.first_position))
    );

    let recorded = store
        .read_to_vec(ReadQuery::stream(stream("order-1")))
        .await
        .unwrap();
    assert_eq!(recorded.len(), 1);
    let r = &recorded[0];
    assert_eq!(r.id, meta.id);
    assert_eq!(r.event_type, "order.placed");
    assert_eq!(
        r.data_as::<OrderPlaced>().unwrap(),
        OrderPlaced { order_id: 1 }
    );
    assert_eq!(r.correlation_id(), Some(meta.correlation_id));
    let md: serde_json::Value = serde_json::from_str(&r.metadata).unwrap();
    assert_eq!(md["schema_version"], 3);
}

#[tokio::test]
async fn a_failed_append_dispatches_nothing() {
    let (_store, bus, publisher) = setup();
    let calls = Arc::new(Mutex::new(0));
    let c = calls.clone();
    let _sub = bus.subscribe(move |_: &Envelope<OrderPlaced>| *c.lock().unwrap() += 1);
    publisher
        .publish(
            &stream("order-2"),
            vec![OrderPlaced { order_id: 2 }],
            ExpectedVersion::Any,
        )
        .await
        .unwrap();
    let err = publisher
        .publish(
            &stream("order-2"),
            vec![OrderPlaced { order_id: 3 }],
            ExpectedVersion::NoStream,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            PublishError::Store(herald_core::Error::WrongExpectedVersion { .. })
        ),
        "{err:?}"
    );
    assert_eq!(
        *calls.lock().unwrap(),
        1,
        "only the committed event was dispatched"
    );
}

#[tokio::test]
async fn append_stores_without_dispatching() {
    let (store, bus, publisher) = setup();
    let calls = Arc::new(Mutex::new(0));
    let c = calls.clone();
    let _sub = bus.subscribe(move |_: &Envelope<OrderPlaced>| *c.lock().unwrap() += 1);
    let result = publisher
        .append(
            &stream("order-3"),
            vec![OrderPlaced { order_id: 3 }, OrderPlaced { order_id: 4 }],
            ExpectedVersion::NoStream,
        )
        .await
        .unwrap();
    assert_eq!(result.last_version, 1);
    assert_eq!(*calls.lock().unwrap(), 0);
    assert_eq!(
        store.stream_version(&stream("order-3")).await.unwrap(),
        Some(1)
    );
}

#[tokio::test]
async fn handler_failures_never_uncommit() {
    let (store, bus, publisher) = setup();
    let _sub = bus.subscribe(|_: &Envelope<OrderPlaced>| Err::<(), _>("mailer down".to_owned()));
    let published = publisher
        .publish(
            &stream("order-4"),
            vec![OrderPlaced { order_id: 4 }],
            ExpectedVersion::Any,
        )
        .await
        .unwrap();
    assert!(!published.is_fully_handled());
    assert_eq!(published.failures.len(), 1);
    assert_eq!(
        store.stream_version(&stream("order-4")).await.unwrap(),
        Some(0)
    );
}

#[tokio::test]
async fn batches_of_several_types_dispatch_event_major_in_order() {
    let (_store, bus, publisher) = setup();
    let log = Arc::new(Mutex::new(Vec::new()));
    let (l1, l2, l3) = (log.clone(), log.clone(), log.clone());
    let _a = bus.subscribe(move |e: &Envelope<OrderPlaced>| {
        l1.lock().unwrap().push(format!("a:placed:{}", e.order_id))
    });
    let _b = bus.subscribe_all(move |e: &dyn herald_notify::ErasedEnvelope| {
        l2.lock().unwrap().push(format!("all:{}", e.event_type()));
    });
    let _c = bus.subscribe(move |e: &Envelope<PaymentRequested>| {
        l3.lock().unwrap().push(format!("c:payment:{}", e.order_id))
    });
    let published = publisher
        .batch()
        .event(OrderPlaced { order_id: 5 })
        .event(PaymentRequested { order_id: 5 })
        .publish(&stream("order-5"), ExpectedVersion::NoStream)
        .await
        .unwrap();
    assert_eq!(published.append.ids.len(), 2);
    assert_eq!(
        *log.lock().unwrap(),
        [
            "a:placed:5",
            "all:order.placed",
            "all:payment.requested",
            "c:payment:5"
        ]
    );
}

#[tokio::test]
async fn events_published_through_the_store_while_handling_carry_causation() {
    let (store, bus, publisher) = setup();
    let p = publisher.clone();
    let (tx, rx) = oneshot::channel::<()>();
    let tx = Mutex::new(Some(tx));
    // An async listener reacts to the order by requesting a payment, through the store.
    let _saga = bus.subscribe_async(8, move |e: Arc<Envelope<OrderPlaced>>| {
        let p = p.clone();
        let tx = tx.lock().unwrap().take();
        async move {
            p.publish(
                &StreamName::new(format!("payment-{}", e.order_id)).unwrap(),
                vec![PaymentRequested {
                    order_id: e.order_id,
                }],
                ExpectedVersion::NoStream,
            )
            .await
            .map(|_| ())?;
            if let Some(tx) = tx {
                tx.send(()).unwrap();
            }
            Ok::<(), PublishError>(())
        }
    });
    let placed = publisher
        .publish(
            &stream("order-6"),
            vec![OrderPlaced { order_id: 6 }],
            ExpectedVersion::NoStream,
        )
        .await
        .unwrap();
    rx.await.unwrap();
    let root = &placed.deliveries[0].meta;
    let payment = &store
        .read_to_vec(ReadQuery::stream(stream("payment-6")))
        .await
        .unwrap()[0];
    assert_eq!(payment.causation_id(), Some(root.id));
    assert_eq!(payment.correlation_id(), Some(root.correlation_id));
    assert_eq!(root.correlation_id, root.id);
}
