//! Delivery routes ([`herald_core::delivery`]): kept in the queue's database, and every append writes one
//! job per (event, matching route) in its own transaction — including routes added through another handle,
//! as another process would.

use herald_core::delivery::{
    DeliveryJobArgs, DeliveryRoute, DeliveryTarget, SHELL_KIND, StreamPattern, WEBHOOK_KIND,
};
use herald_core::jobs::{JobInfo, ListFilter};
use herald_core::{Error, EventStore, ExpectedVersion, NewEvent, StreamName};

use super::support::*;
use super::{JobsBackend, JobsFixture};

fn webhook(name: &str, pattern: &str, event_type: Option<&str>) -> DeliveryRoute {
    let mut route = DeliveryRoute::new(
        name,
        StreamPattern::parse(pattern).expect("a valid pattern"),
        event_type.map(str::to_owned),
        DeliveryTarget::Webhook {
            url: "http://127.0.0.1:9/hook".to_owned(),
            secret: "whsec_c2VjcmV0LXNlY3JldA==".to_owned(),
            timeout_ms: 2_000,
        },
    );
    route.max_attempts = 4;
    route
}

fn shell(name: &str, pattern: &str) -> DeliveryRoute {
    DeliveryRoute::new(
        name,
        StreamPattern::parse(pattern).expect("a valid pattern"),
        None,
        DeliveryTarget::Shell {
            program: "/bin/cat".to_owned(),
            args: vec!["-".to_owned(), "$(touch x)".to_owned()],
            timeout_ms: 5_000,
        },
    )
}

async fn jobs_of(f: &JobsFixture, queue: &str) -> Vec<(JobInfo, DeliveryJobArgs)> {
    f.queue()
        .list(ListFilter {
            queue: Some(queue.to_owned()),
            limit: Some(10_000),
            ..ListFilter::default()
        })
        .await
        .expect("list")
        .into_iter()
        .map(|job| {
            let args = serde_json::from_str(&job.args).expect("delivery job arguments");
            (job, args)
        })
        .collect()
}

async fn append(store: &dyn EventStore, stream: &str, types: &[&str]) -> herald_core::AppendResult {
    let events = types
        .iter()
        .map(|t| NewEvent::new(*t).with_data(r#"{"n":1}"#))
        .collect();
    store
        .append(
            &StreamName::new(stream).expect("stream"),
            events,
            ExpectedVersion::Any,
        )
        .await
        .expect("append")
}

/// Added routes are listed by name with their targets (secret included), found by name, refused twice,
/// and removed once.
pub async fn routes_are_added_listed_and_removed(backend: JobsBackend) {
    let (f, _clock) = open(&backend).await;
    let routes = f.routes();
    assert!(routes.routes().await.expect("routes").is_empty());
    routes
        .add_route(webhook("paid", "order-*", Some("OrderPaid")))
        .await
        .expect("add");
    routes.add_route(shell("audit", "*")).await.expect("add");
    let listed = routes.routes().await.expect("routes");
    assert_eq!(
        listed,
        vec![
            shell("audit", "*"),
            webhook("paid", "order-*", Some("OrderPaid"))
        ]
    );
    assert_eq!(
        routes.route("paid").await.expect("route"),
        Some(webhook("paid", "order-*", Some("OrderPaid")))
    );
    assert_eq!(routes.route("nope").await.expect("route"), None);
    let again = routes.add_route(shell("paid", "x")).await;
    assert!(matches!(again, Err(Error::InvalidInput(_))), "{again:?}");
    assert_eq!(
        routes.route("paid").await.expect("route"),
        Some(webhook("paid", "order-*", Some("OrderPaid")))
    );
    assert!(routes.remove_route("paid").await.expect("remove"));
    assert!(!routes.remove_route("paid").await.expect("remove"));
    assert_eq!(
        routes.routes().await.expect("routes"),
        vec![shell("audit", "*")]
    );
}

/// A route breaking a rule is invalid input and nothing is stored.
pub async fn bad_routes_are_refused_and_store_nothing(backend: JobsBackend) {
    let (f, _clock) = open(&backend).await;
    let mut no_secret = webhook("a", "*", None);
    no_secret.target = DeliveryTarget::Webhook {
        url: "http://127.0.0.1:9/".to_owned(),
        secret: "plain".to_owned(),
        timeout_ms: 1_000,
    };
    let mut bad_name = shell("a b", "*");
    bad_name.name = "a b".to_owned();
    let mut no_attempts = shell("c", "*");
    no_attempts.max_attempts = 0;
    for route in [no_secret, bad_name, no_attempts] {
        let refused = f.routes().add_route(route).await;
        assert!(
            matches!(refused, Err(Error::InvalidInput(_))),
            "{refused:?}"
        );
    }
    assert!(f.routes().routes().await.expect("routes").is_empty());
}

/// Every append writes one job per (event, matching route): stream pattern and event type both match, the
/// job's type and queue are the target's kind, its attempts the route's, its arguments the event's final id
/// and position.
pub async fn appends_write_one_job_per_matching_event_and_route(backend: JobsBackend) {
    let (f, _clock) = open(&backend).await;
    f.routes()
        .add_route(webhook("paid", "order-*", Some("OrderPaid")))
        .await
        .expect("add");
    f.routes()
        .add_route(shell("one-user", "user-1"))
        .await
        .expect("add");
    let order = append(&**f.store(), "order-7", &["OrderPlaced", "OrderPaid"]).await;
    append(&**f.store(), "orders-7", &["OrderPaid"]).await;
    append(&**f.store(), "user-1", &["Renamed", "Renamed"]).await;
    append(&**f.store(), "user-10", &["Renamed"]).await;

    let webhooks = jobs_of(&f, WEBHOOK_KIND).await;
    assert_eq!(webhooks.len(), 1, "{webhooks:?}");
    let (job, args) = &webhooks[0];
    assert_eq!(job.kind, WEBHOOK_KIND);
    assert_eq!(job.max_attempts, 4);
    assert_eq!(
        args,
        &DeliveryJobArgs {
            route: "paid".to_owned(),
            event_id: order.ids[1],
            stream: "order-7".to_owned(),
            event_type: "OrderPaid".to_owned(),
            position: order.last_position,
        }
    );
    let shells = jobs_of(&f, SHELL_KIND).await;
    let streams: Vec<(&str, &str)> = shells
        .iter()
        .map(|(job, args)| (job.kind.as_str(), args.stream.as_str()))
        .collect();
    assert_eq!(streams, [(SHELL_KIND, "user-1"), (SHELL_KIND, "user-1")]);
    assert!(shells[0].1.position < shells[1].1.position);
}

/// A route added through another handle (another process) applies to the next append of this store, and
/// one removed there no longer does: no store caches the routes past a write transaction.
pub async fn a_route_added_elsewhere_applies_to_the_next_append(backend: JobsBackend) {
    let (f, _clock) = open(&backend).await;
    append(&**f.store(), "order-1", &["OrderPaid"]).await;
    assert!(jobs_of(&f, WEBHOOK_KIND).await.is_empty());
    let elsewhere = f.other_routes().await;
    elsewhere
        .add_route(webhook("paid", "order-*", None))
        .await
        .expect("add");
    let second = append(&**f.store(), "order-1", &["OrderPaid"]).await;
    let jobs = jobs_of(&f, WEBHOOK_KIND).await;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0].1.event_id, second.ids[0]);
    assert!(elsewhere.remove_route("paid").await.expect("remove"));
    append(&**f.store(), "order-1", &["OrderPaid"]).await;
    assert_eq!(jobs_of(&f, WEBHOOK_KIND).await.len(), 1);
}

/// Concurrent appends to different streams (committed together where the store batches them) each get the
/// jobs of their own events: stream, id, type and position of each event, one job per event and route.
pub async fn concurrent_appends_each_get_their_own_delivery_jobs(backend: JobsBackend) {
    let (f, _clock) = open(&backend).await;
    f.routes()
        .add_route(webhook("orders", "order-*", None))
        .await
        .expect("add");
    let store = f.store();
    let appended = futures::future::join_all((0..16).map(|i| {
        let stream = format!("order-{i}");
        async move {
            let types: &[&str] = if i % 2 == 0 {
                &["OrderPlaced", "OrderPaid"]
            } else {
                &["OrderPlaced"]
            };
            (
                stream.clone(),
                types,
                append(&**store, &stream, types).await,
            )
        }
    }))
    .await;
    let mut expected: Vec<DeliveryJobArgs> = appended
        .iter()
        .flat_map(|(stream, types, result)| {
            types.iter().enumerate().map(|(i, t)| DeliveryJobArgs {
                route: "orders".to_owned(),
                event_id: result.ids[i],
                stream: stream.clone(),
                event_type: (*t).to_owned(),
                position: result.first_position + i as u64,
            })
        })
        .collect();
    expected.sort_by_key(|args| args.position);
    let mut jobs: Vec<DeliveryJobArgs> = jobs_of(&f, WEBHOOK_KIND)
        .await
        .into_iter()
        .map(|(_, args)| args)
        .collect();
    jobs.sort_by_key(|args| args.position);
    assert_eq!(jobs, expected);
}

/// A refused append (wrong expected version, duplicate id) writes no delivery job.
pub async fn refused_appends_write_no_delivery_job(backend: JobsBackend) {
    let (f, _clock) = open(&backend).await;
    f.routes()
        .add_route(webhook("all", "*", None))
        .await
        .expect("add");
    let first = append(&**f.store(), "order-1", &["OrderPaid"]).await;
    let stream = StreamName::new("order-1").expect("stream");
    let conflict = f
        .store()
        .append(
            &stream,
            vec![NewEvent::new("OrderPaid")],
            ExpectedVersion::NoStream,
        )
        .await;
    assert!(
        matches!(conflict, Err(Error::WrongExpectedVersion { .. })),
        "{conflict:?}"
    );
    let duplicate = f
        .store()
        .append(
            &StreamName::new("order-2").expect("stream"),
            vec![NewEvent::new("OrderPaid").with_id(first.ids[0])],
            ExpectedVersion::Any,
        )
        .await;
    assert!(
        matches!(duplicate, Err(Error::DuplicateEvent { .. })),
        "{duplicate:?}"
    );
    let jobs = jobs_of(&f, WEBHOOK_KIND).await;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0].1.event_id, first.ids[0]);
}
