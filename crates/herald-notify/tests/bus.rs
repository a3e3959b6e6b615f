//! Behaviour of the domain-event bus.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};

use futures::FutureExt;
use herald_notify::{
    Bus, DomainEvent, Envelope, ErasedEnvelope, ErrorPolicy, EventContext, EventMeta, HandlerError,
    Handlers, Listener, PanicPolicy, PublishError, PublishOptions,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct UserRegistered {
    user_id: u64,
}
herald_notify::domain_event!(UserRegistered, "user.registered", 2);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct WelcomeSent {
    user_id: u64,
}
herald_notify::domain_event!(WelcomeSent, "welcome.sent");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct AuditLogged {
    user_id: u64,
}
herald_notify::domain_event!(AuditLogged, "audit.logged");

type Log = Arc<Mutex<Vec<String>>>;

fn log() -> Log {
    Arc::new(Mutex::new(Vec::new()))
}

fn taken(log: &Log) -> Vec<String> {
    std::mem::take(&mut *log.lock().unwrap())
}

fn push(log: &Log, s: impl Into<String>) {
    log.lock().unwrap().push(s.into());
}

#[test]
fn typed_handlers_get_their_type_only_and_all_listeners_get_everything_in_subscription_order() {
    let bus = Bus::new();
    let l = log();
    let l1 = l.clone();
    let _a =
        bus.subscribe(move |e: &Envelope<UserRegistered>| push(&l1, format!("a:{}", e.user_id)));
    let l2 = l.clone();
    let _all = bus.subscribe_all(move |e: &dyn ErasedEnvelope| {
        push(
            &l2,
            format!("all:{}:{}", e.event_type(), e.to_json().unwrap()),
        );
    });
    let l3 = l.clone();
    let _b = bus.subscribe(move |e: &Envelope<WelcomeSent>| push(&l3, format!("b:{}", e.user_id)));
    let l4 = l.clone();
    let _c =
        bus.subscribe(move |e: &Envelope<UserRegistered>| push(&l4, format!("c:{}", e.user_id)));

    let d = bus.try_publish(UserRegistered { user_id: 1 }).unwrap();
    assert_eq!(d.handled, 3);
    assert_eq!(d.meta.event_type, "user.registered");
    assert_eq!(d.meta.schema_version, 2);
    bus.try_publish(WelcomeSent { user_id: 2 }).unwrap();
    assert_eq!(
        taken(&l),
        [
            "a:1",
            r#"all:user.registered:{"user_id":1}"#,
            "c:1",
            r#"all:welcome.sent:{"user_id":2}"#,
            "b:2"
        ]
    );
}

#[derive(Default)]
struct Mailer {
    log: Log,
}

impl Mailer {
    fn registered(&self, e: &Envelope<UserRegistered>) {
        push(&self.log, format!("mailer.registered:{}", e.user_id));
    }
    fn welcome(&self, e: &Envelope<WelcomeSent>) -> Result<(), std::io::Error> {
        push(&self.log, format!("mailer.welcome:{}", e.user_id));
        Ok(())
    }
}

impl Listener for Mailer {
    fn register(h: &mut Handlers<Self>) {
        h.on(Self::registered).on(Self::welcome);
    }
}

#[test]
fn listener_objects_handle_several_types_and_unsubscribe_as_one() {
    let bus = Bus::new();
    let mailer = Arc::new(Mailer::default());
    let sub = bus.subscribe_listener(mailer.clone());
    bus.try_publish(UserRegistered { user_id: 1 }).unwrap();
    bus.try_publish(WelcomeSent { user_id: 1 }).unwrap();
    bus.try_publish(AuditLogged { user_id: 1 }).unwrap();
    assert_eq!(
        taken(&mailer.log),
        ["mailer.registered:1", "mailer.welcome:1"]
    );
    assert!(bus.unsubscribe(&sub));
    bus.try_publish(UserRegistered { user_id: 2 }).unwrap();
    bus.try_publish(WelcomeSent { user_id: 2 }).unwrap();
    assert!(taken(&mailer.log).is_empty());
}

#[test]
fn local_listeners_only_hear_their_publisher() {
    let bus = Bus::new();
    let signup = bus.publisher();
    let admin = bus.publisher();
    let l = log();
    let l1 = l.clone();
    let _local = signup
        .subscribe(move |e: &Envelope<UserRegistered>| push(&l1, format!("local:{}", e.user_id)));
    let l2 = l.clone();
    let _global = bus
        .subscribe(move |e: &Envelope<UserRegistered>| push(&l2, format!("global:{}", e.user_id)));
    let mailer = Arc::new(Mailer::default());
    let _obj = admin.subscribe_listener(mailer.clone());

    signup.try_publish(UserRegistered { user_id: 1 }).unwrap();
    admin.try_publish(UserRegistered { user_id: 2 }).unwrap();
    bus.try_publish(UserRegistered { user_id: 3 }).unwrap();
    assert_eq!(taken(&l), ["local:1", "global:1", "global:2", "global:3"]);
    assert_eq!(taken(&mailer.log), ["mailer.registered:2"]);
}

#[test]
fn unsubscribe_by_handle_bus_and_guard() {
    let bus = Bus::new();
    let n = Arc::new(AtomicUsize::new(0));
    let (a, b, c) = (n.clone(), n.clone(), n.clone());
    let s1 = bus.subscribe(move |_: &Envelope<UserRegistered>| {
        a.fetch_add(1, Ordering::SeqCst);
    });
    let s2 = bus.subscribe(move |_: &Envelope<UserRegistered>| {
        b.fetch_add(10, Ordering::SeqCst);
    });
    let s3 = bus
        .subscribe(move |_: &Envelope<UserRegistered>| {
            c.fetch_add(100, Ordering::SeqCst);
        })
        .guard();
    bus.try_publish(UserRegistered { user_id: 1 }).unwrap();
    assert_eq!(n.swap(0, Ordering::SeqCst), 111);
    assert!(s1.unsubscribe());
    assert!(!s1.unsubscribe());
    assert!(bus.unsubscribe(&s2));
    bus.try_publish(UserRegistered { user_id: 1 }).unwrap();
    assert_eq!(n.swap(0, Ordering::SeqCst), 100);
    drop(s3);
    let d = bus.try_publish(UserRegistered { user_id: 1 }).unwrap();
    assert_eq!(d.handled, 0);
    assert_eq!(n.load(Ordering::SeqCst), 0);
}

fn failing_bus(policy: ErrorPolicy) -> (Bus, Log) {
    let bus = Bus::builder().error_policy(policy).build();
    let l = log();
    let l1 = l.clone();
    let _ = bus
        .subscribe(move |_: &Envelope<UserRegistered>| push(&l1, "first"))
        .guard()
        .into_inner();
    let l2 = l.clone();
    let _ = bus
        .subscribe(
            move |_: &Envelope<UserRegistered>| -> Result<(), std::io::Error> {
                push(&l2, "second");
                Err(std::io::Error::other("smtp down"))
            },
        )
        .guard()
        .into_inner();
    let l3 = l.clone();
    let _ = bus
        .subscribe(move |_: &Envelope<UserRegistered>| -> Result<(), String> {
            push(&l3, "third");
            Err("quota".to_owned())
        })
        .guard()
        .into_inner();
    (bus, l)
}

#[test]
fn run_all_collects_every_handler_error() {
    let (bus, l) = failing_bus(ErrorPolicy::RunAll);
    let err = bus.try_publish(UserRegistered { user_id: 1 }).unwrap_err();
    assert_eq!(taken(&l), ["first", "second", "third"]);
    let PublishError::Handlers {
        failures, delivery, ..
    } = &err
    else {
        panic!("{err:?}");
    };
    assert_eq!(delivery.handled, 3);
    let messages: Vec<String> = failures.iter().map(|f| f.error.to_string()).collect();
    assert_eq!(
        messages,
        ["handler failed: smtp down", "handler failed: quota"]
    );
    assert!(failures.iter().all(|f| &*f.listener == "user.registered"));
}

#[test]
fn stop_at_first_stops_at_the_first_error() {
    let (bus, l) = failing_bus(ErrorPolicy::StopAtFirst);
    let err = bus.try_publish(UserRegistered { user_id: 1 }).unwrap_err();
    assert_eq!(taken(&l), ["first", "second"]);
    assert_eq!(err.failures().len(), 1);
}

#[test]
fn panicking_sync_handler_is_isolated_and_reported_as_a_failure() {
    let reports = log();
    let r = reports.clone();
    let bus = Bus::builder()
        .panic_reporter(move |p| push(&r, format!("{}:{}", p.event, p.message)))
        .build();
    let l = log();
    let _bad = bus.subscribe(|_: &Envelope<UserRegistered>| -> () { panic!("handler bug") });
    let l1 = l.clone();
    let _good = bus.subscribe(move |_: &Envelope<UserRegistered>| push(&l1, "good"));
    let err = bus.try_publish(UserRegistered { user_id: 1 }).unwrap_err();
    assert_eq!(taken(&l), ["good"]);
    assert!(matches!(&err.failures()[0].error, HandlerError::Panicked(m) if m == "handler bug"));
    assert_eq!(taken(&reports), ["user.registered:handler bug"]);
    assert_eq!(bus.panics_caught(), 1);
}

#[test]
fn propagate_policy_unwinds_into_the_publisher() {
    let bus = Bus::builder().panic_policy(PanicPolicy::Propagate).build();
    let _bad = bus.subscribe(|_: &Envelope<UserRegistered>| -> () { panic!("handler bug") });
    let r = catch_unwind(AssertUnwindSafe(|| {
        bus.try_publish(UserRegistered { user_id: 1 })
    }));
    assert!(r.is_err());
    // The context set around the handler was restored during unwinding.
    assert_eq!(EventContext::current(), None);
}

#[test]
fn events_published_while_handling_get_causation_and_correlation() {
    let bus = Bus::new();
    let metas: Arc<Mutex<Vec<EventMeta>>> = Arc::new(Mutex::new(Vec::new()));
    let b1 = bus.clone();
    let _s1 = bus.subscribe(move |e: &Envelope<UserRegistered>| {
        b1.try_publish(WelcomeSent { user_id: e.user_id })
            .map(|_| ())
    });
    let b2 = bus.clone();
    let _s2 = bus.subscribe(move |e: &Envelope<WelcomeSent>| {
        b2.try_publish(AuditLogged { user_id: e.user_id })
            .map(|_| ())
    });
    let m = metas.clone();
    let _all =
        bus.subscribe_all(move |e: &dyn ErasedEnvelope| m.lock().unwrap().push(e.meta().clone()));

    let root = bus.try_publish(UserRegistered { user_id: 9 }).unwrap().meta;
    assert_eq!(root.correlation_id, root.id, "a root correlates to itself");
    assert_eq!(root.causation_id, None);
    let metas = metas.lock().unwrap().clone();
    // Depth-first: the audit event is published (and seen by `all`) inside the welcome handler.
    let by_type = |t: &str| metas.iter().find(|m| m.event_type == t).unwrap().clone();
    let welcome = by_type("welcome.sent");
    let audit = by_type("audit.logged");
    assert_eq!(welcome.causation_id, Some(root.id));
    assert_eq!(welcome.correlation_id, root.id);
    assert_eq!(audit.causation_id, Some(welcome.id));
    assert_eq!(audit.correlation_id, root.id);
    assert_eq!(
        EventContext::current(),
        None,
        "context restored after publish"
    );
}

#[test]
fn explicit_metadata_wins_over_the_context() {
    let bus = Bus::new();
    let seen = Arc::new(Mutex::new(None));
    let s = seen.clone();
    let _w =
        bus.subscribe(move |e: &Envelope<WelcomeSent>| *s.lock().unwrap() = Some(e.meta().clone()));
    let b = bus.clone();
    let (corr, cause, id) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let _r = bus.subscribe(move |_: &Envelope<UserRegistered>| {
        b.try_publish_with(
            WelcomeSent { user_id: 1 },
            PublishOptions::new()
                .id(id)
                .correlation_id(corr)
                .causation_id(cause),
        )
        .map(|_| ())
    });
    bus.try_publish(UserRegistered { user_id: 1 }).unwrap();
    let meta = seen.lock().unwrap().clone().unwrap();
    assert_eq!(
        (meta.id, meta.correlation_id, meta.causation_id),
        (id, corr, Some(cause))
    );

    // An application-set context (e.g. from a request header) is picked up too.
    let ctx = EventContext::new(Uuid::nil(), corr);
    let d = ctx.enter(|| bus.try_publish(WelcomeSent { user_id: 2 }).unwrap());
    assert_eq!(d.meta.correlation_id, corr);
    assert_eq!(d.meta.causation_id, Some(Uuid::nil()));
}

#[test]
fn scoped_listeners_on_concurrent_threads_do_not_see_each_other() {
    let bus = Bus::new();
    let barrier = Arc::new(Barrier::new(2));
    let threads: Vec<_> = [1u64, 2]
        .into_iter()
        .map(|tag| {
            let bus = bus.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let seen = Arc::new(Mutex::new(Vec::new()));
                let s = seen.clone();
                bus.scoped(
                    move |e: &Envelope<UserRegistered>| s.lock().unwrap().push(e.user_id),
                    || {
                        barrier.wait();
                        for _ in 0..100 {
                            bus.try_publish(UserRegistered { user_id: tag }).unwrap();
                        }
                        barrier.wait();
                    },
                );
                let seen = seen.lock().unwrap().clone();
                (tag, seen)
            })
        })
        .collect();
    for t in threads {
        let (tag, seen) = t.join().unwrap();
        assert_eq!(seen.len(), 100);
        assert!(seen.iter().all(|&id| id == tag));
    }
    assert_eq!(
        bus.try_publish(UserRegistered { user_id: 0 })
            .unwrap()
            .handled,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_listeners_on_concurrent_tasks_do_not_see_each_other() {
    let bus = Bus::new();
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let tasks: Vec<_> = [1u64, 2]
        .into_iter()
        .map(|tag| {
            let bus = bus.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                let seen = Arc::new(Mutex::new(Vec::new()));
                let s = seen.clone();
                let inner = bus.clone();
                bus.scoped_async(
                    move |e: &Envelope<UserRegistered>| s.lock().unwrap().push(e.user_id),
                    async move {
                        barrier.wait().await;
                        for _ in 0..200 {
                            inner
                                .publish(UserRegistered { user_id: tag })
                                .await
                                .unwrap();
                            tokio::task::yield_now().await;
                        }
                        barrier.wait().await;
                    },
                )
                .await;
                let seen = seen.lock().unwrap().clone();
                (tag, seen)
            })
        })
        .collect();
    for t in tasks {
        let (tag, seen) = t.await.unwrap();
        assert_eq!(seen.len(), 200);
        assert!(seen.iter().all(|&id| id == tag));
    }
}

#[tokio::test]
async fn async_listener_receives_in_order_with_context() {
    let bus = Bus::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _sub = bus.subscribe_async(4, move |e: Arc<Envelope<UserRegistered>>| {
        let tx = tx.clone();
        async move {
            // The handled event is the current context inside the async handler.
            let ctx = EventContext::current().unwrap();
            tx.send((e.user_id, ctx.event_id == e.id())).unwrap();
        }
    });
    for i in 0..20 {
        let d = bus.publish(UserRegistered { user_id: i }).await.unwrap();
        assert_eq!(d.queued, 1);
    }
    for i in 0..20 {
        assert_eq!(rx.recv().await.unwrap(), (i, true));
    }
}

/// With capacity 1: event 1 is being handled (the handler is held at a gate), event 2 fills the queue,
/// so publishing event 3 must wait — proven by polling the publish future, not by sleeping — and
/// `try_publish` must refuse without delivering to anyone. Opening the gate lets everything through,
/// in order, with nothing dropped.
#[tokio::test]
async fn full_queue_makes_the_publisher_wait_and_never_drops() {
    let bus = Bus::new();
    let (started_tx, mut started_rx) = mpsc::unbounded_channel::<u64>();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let handled = Arc::new(Mutex::new(Vec::new()));
    let (g, h) = (gate.clone(), handled.clone());
    let _slow = bus.subscribe_async(1, move |e: Arc<Envelope<UserRegistered>>| {
        let (started_tx, g, h) = (started_tx.clone(), g.clone(), h.clone());
        async move {
            started_tx.send(e.user_id).unwrap();
            g.acquire().await.unwrap().forget();
            h.lock().unwrap().push(e.user_id);
        }
    });
    let sync_calls = Arc::new(AtomicUsize::new(0));
    let sc = sync_calls.clone();
    let _sync = bus.subscribe(move |_: &Envelope<UserRegistered>| {
        sc.fetch_add(1, Ordering::SeqCst);
    });

    bus.publish(UserRegistered { user_id: 1 }).await.unwrap();
    assert_eq!(started_rx.recv().await, Some(1), "listener holds event 1");
    bus.publish(UserRegistered { user_id: 2 }).await.unwrap(); // fills the queue
    assert_eq!(sync_calls.load(Ordering::SeqCst), 2);

    let mut third = pin!(bus.publish(UserRegistered { user_id: 3 }));
    assert!(
        (&mut third).now_or_never().is_none(),
        "publish must wait while the queue is full"
    );
    // Polling again changes nothing while the gate is shut.
    assert!((&mut third).now_or_never().is_none());

    let err = bus.try_publish(UserRegistered { user_id: 4 }).unwrap_err();
    assert!(matches!(err, PublishError::Full { .. }), "{err:?}");
    // Event 3 waits at the async listener, which was subscribed first, so the sync handler (subscribed
    // after it) has not had it yet; event 4 reached nobody.
    assert_eq!(sync_calls.load(Ordering::SeqCst), 2);

    gate.add_permits(3);
    let d = third.await.unwrap();
    assert_eq!((d.queued, d.handled), (1, 1));
    assert_eq!(sync_calls.load(Ordering::SeqCst), 3);
    bus.shutdown().await;
    assert_eq!(*handled.lock().unwrap(), [1, 2, 3]);
}

#[tokio::test]
async fn async_listener_panics_and_errors_are_isolated() {
    let reports = log();
    let r = reports.clone();
    let bus = Bus::builder()
        .panic_reporter(move |p| push(&r, p.message.clone()))
        .build();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _sub = bus.subscribe_async(8, move |e: Arc<Envelope<UserRegistered>>| {
        let tx = tx.clone();
        async move {
            match e.user_id {
                1 => panic!("async bug"),
                2 => Err::<(), _>("async error".to_owned()),
                n => {
                    tx.send(n).unwrap();
                    Ok(())
                }
            }
        }
    });
    for i in 1..=3 {
        bus.publish(UserRegistered { user_id: i }).await.unwrap();
    }
    assert_eq!(rx.recv().await, Some(3), "listener survived");
    assert_eq!(bus.async_failures(), 2);
    assert_eq!(bus.panics_caught(), 1);
    assert_eq!(taken(&reports), ["async bug"]);
}

#[tokio::test]
async fn unsubscribed_async_listener_drains_its_queue_then_stops() {
    let bus = Bus::new();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let handled = Arc::new(Mutex::new(Vec::new()));
    let (done_tx, done_rx) = oneshot::channel::<()>();
    let done_tx = Arc::new(Mutex::new(Some(done_tx)));
    let (g, h) = (gate.clone(), handled.clone());
    let sub = bus.subscribe_async(8, move |e: Arc<Envelope<UserRegistered>>| {
        let (g, h, done_tx) = (g.clone(), h.clone(), done_tx.clone());
        async move {
            g.acquire().await.unwrap().forget();
            h.lock().unwrap().push(e.user_id);
            if e.user_id == 3 {
                done_tx.lock().unwrap().take().unwrap().send(()).unwrap();
            }
        }
    });
    for i in 1..=3 {
        bus.publish(UserRegistered { user_id: i }).await.unwrap();
    }
    assert!(sub.unsubscribe());
    let d = bus.publish(UserRegistered { user_id: 4 }).await.unwrap();
    assert_eq!(d.queued, 0, "not delivered after unsubscribe");
    gate.add_permits(10);
    done_rx.await.unwrap();
    bus.shutdown().await;
    assert_eq!(*handled.lock().unwrap(), [1, 2, 3]);
}

#[tokio::test]
async fn shutdown_drains_and_closes() {
    let bus = Bus::new();
    let handled = Arc::new(AtomicUsize::new(0));
    let h = handled.clone();
    let _sub = bus.subscribe_all_async(16, move |e: Arc<dyn ErasedEnvelope>| {
        assert_eq!(e.event_type(), UserRegistered::EVENT_TYPE);
        h.fetch_add(1, Ordering::SeqCst);
        async {}
    });
    for i in 0..10 {
        bus.publish(UserRegistered { user_id: i }).await.unwrap();
    }
    bus.shutdown().await;
    assert_eq!(handled.load(Ordering::SeqCst), 10);
    assert!(matches!(
        bus.publish(UserRegistered { user_id: 0 }).await,
        Err(PublishError::Closed)
    ));
    assert!(matches!(
        bus.try_publish(UserRegistered { user_id: 0 }),
        Err(PublishError::Closed)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_listener_publishing_a_follow_up_propagates_correlation() {
    let bus = Bus::new();
    let b = bus.clone();
    let _relay = bus.subscribe_async(4, move |e: Arc<Envelope<UserRegistered>>| {
        let b = b.clone();
        async move {
            tokio::task::yield_now().await;
            b.publish(WelcomeSent { user_id: e.user_id })
                .await
                .map(|_| ())
        }
    });
    let (tx, rx) = oneshot::channel();
    let tx = Mutex::new(Some(tx));
    let _w = bus.subscribe(move |e: &Envelope<WelcomeSent>| {
        if let Some(tx) = tx.lock().unwrap().take() {
            tx.send(e.meta().clone()).unwrap();
        }
    });
    let root = bus
        .publish(UserRegistered { user_id: 5 })
        .await
        .unwrap()
        .meta;
    let welcome = rx.await.unwrap();
    assert_eq!(welcome.causation_id, Some(root.id));
    assert_eq!(welcome.correlation_id, root.id);
}

#[test]
fn publish_future_is_send() {
    fn assert_send<T: Send>(_: T) {}
    let bus = Bus::new();
    assert_send(bus.publish(UserRegistered { user_id: 1 }));
    assert_send(bus.publisher().publish(UserRegistered { user_id: 1 }));
}

#[tokio::test]
async fn an_application_cancellation_token_drains_and_stops_async_listeners() {
    let token = tokio_util::sync::CancellationToken::new();
    let bus = Bus::builder().cancellation_token(token.clone()).build();
    let handled = Arc::new(AtomicUsize::new(0));
    let h = handled.clone();
    let _sub = bus.subscribe_async(16, move |_: Arc<Envelope<UserRegistered>>| {
        h.fetch_add(1, Ordering::SeqCst);
        async {}
    });
    for i in 0..5 {
        bus.publish(UserRegistered { user_id: i }).await.unwrap();
    }
    token.cancel();
    bus.shutdown().await; // waits for the drained listener task
    assert_eq!(handled.load(Ordering::SeqCst), 5);
}

#[tokio::test]
#[should_panic(expected = "capacity must be at least 1")]
async fn zero_capacity_async_listener_is_refused() {
    let bus = Bus::new();
    let _ = bus.subscribe_async(0, |_: Arc<Envelope<UserRegistered>>| async {});
}

#[test]
fn coarse_timestamps_keep_ids_causation_and_time_close_to_the_os_clock() {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    let bus = Bus::builder()
        .timestamps(herald_notify::Timestamps::Coarse)
        .build();
    let seen: Arc<Mutex<Vec<EventMeta>>> = Arc::default();
    let s = seen.clone();
    let inner = bus.clone();
    let _a = bus.subscribe(move |e: &Envelope<UserRegistered>| {
        inner
            .try_publish(WelcomeSent { user_id: e.user_id })
            .map(|_| ())
    });
    let _b = bus.subscribe(move |e: &Envelope<WelcomeSent>| {
        s.lock().unwrap().push(e.meta().clone());
    });
    let mut last = UNIX_EPOCH;
    let mut ids = std::collections::HashSet::new();
    for i in 0..200 {
        let before = SystemTime::now();
        let delivery = bus.try_publish(UserRegistered { user_id: i }).unwrap();
        let meta = delivery.meta;
        // Never decreasing, and within one tick plus a loaded machine's scheduling delay of the OS clock.
        assert!(meta.occurred_at >= last);
        last = meta.occurred_at;
        let gap = before
            .duration_since(meta.occurred_at)
            .unwrap_or_else(|e| e.duration());
        assert!(gap < Duration::from_millis(200), "{gap:?}");
        // The id's millisecond is the timestamp's.
        let (secs, nanos) = meta.id.get_timestamp().unwrap().to_unix();
        let id_ms = secs * 1000 + u64::from(nanos / 1_000_000);
        let at_ms = u64::try_from(
            meta.occurred_at
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis(),
        )
        .unwrap();
        assert_eq!(id_ms, at_ms);
        assert!(ids.insert(meta.id));
        let welcome = seen.lock().unwrap().pop().unwrap();
        assert_eq!(welcome.causation_id, Some(meta.id));
        assert_eq!(welcome.correlation_id, meta.id);
        assert!(ids.insert(welcome.id));
        if i % 50 == 0 {
            std::thread::sleep(Duration::from_millis(3));
        }
    }
}

#[test]
fn the_context_is_restored_after_each_nested_publish() {
    let bus = Bus::new();
    let seen: Arc<Mutex<Vec<EventMeta>>> = Arc::default();
    let inner = bus.clone();
    let _a = bus.subscribe(move |e: &Envelope<UserRegistered>| {
        // Two follow-ups: the second must still be caused by this event, not by the first follow-up.
        inner.try_publish(WelcomeSent { user_id: e.user_id })?;
        inner
            .try_publish(AuditLogged { user_id: e.user_id })
            .map(|_| ())
    });
    let s = seen.clone();
    let inner = bus.clone();
    let _b = bus.subscribe(move |e: &Envelope<WelcomeSent>| {
        s.lock().unwrap().push(e.meta().clone());
        inner.try_publish(AuditLogged { user_id: 0 }).map(|_| ())
    });
    let s = seen.clone();
    let _c = bus.subscribe(move |e: &Envelope<AuditLogged>| {
        s.lock().unwrap().push(e.meta().clone());
    });

    let outer = EventContext::new(Uuid::from_u128(1), Uuid::from_u128(2));
    let root = outer.enter(|| {
        let root = bus.try_publish(UserRegistered { user_id: 7 }).unwrap().meta;
        assert_eq!(EventContext::current(), Some(outer));
        root
    });
    assert_eq!(EventContext::current(), None);
    assert_eq!(root.causation_id, Some(outer.event_id));
    assert_eq!(root.correlation_id, outer.correlation_id);

    let seen = seen.lock().unwrap();
    let [welcome, audit_of_welcome, audit_of_root] = &seen[..] else {
        panic!("{seen:?}");
    };
    assert_eq!(welcome.causation_id, Some(root.id));
    assert_eq!(audit_of_welcome.causation_id, Some(welcome.id));
    assert_eq!(audit_of_root.causation_id, Some(root.id));
    assert!(
        seen.iter()
            .all(|m| m.correlation_id == outer.correlation_id)
    );
}

/// Handlers: ok, panic, error, (another publisher's local listener), panic, ok.
fn mixed_bus(policy: ErrorPolicy) -> (Bus, Log, Vec<herald_notify::SubscriberHandle>) {
    let bus = Bus::builder()
        .error_policy(policy)
        .panic_reporter(|_| {})
        .build();
    let l = log();
    let mut subs = Vec::new();
    let l1 = l.clone();
    subs.push(bus.subscribe(move |_: &Envelope<UserRegistered>| push(&l1, "a")));
    let l2 = l.clone();
    subs.push(bus.subscribe(move |_: &Envelope<UserRegistered>| -> () {
        push(&l2, "b");
        panic!("b broke")
    }));
    let l3 = l.clone();
    subs.push(
        bus.subscribe(move |_: &Envelope<UserRegistered>| -> Result<(), String> {
            push(&l3, "c");
            Err("c failed".to_owned())
        }),
    );
    let other = bus.publisher();
    let l4 = l.clone();
    subs.push(other.subscribe(move |_: &Envelope<UserRegistered>| push(&l4, "not mine")));
    let l5 = l.clone();
    subs.push(bus.subscribe(move |_: &Envelope<UserRegistered>| -> () {
        push(&l5, "e");
        panic!("e broke")
    }));
    let l6 = l.clone();
    subs.push(bus.subscribe(move |_: &Envelope<UserRegistered>| push(&l6, "f")));
    (bus, l, subs)
}

#[test]
fn panics_and_errors_among_many_handlers_are_isolated_in_order() {
    let (bus, l, _subs) = mixed_bus(ErrorPolicy::RunAll);
    for _ in 0..3 {
        let err = bus.try_publish(UserRegistered { user_id: 1 }).unwrap_err();
        assert_eq!(taken(&l), ["a", "b", "c", "e", "f"]);
        let PublishError::Handlers {
            failures, delivery, ..
        } = &err
        else {
            panic!("{err:?}");
        };
        assert_eq!(delivery.handled, 5);
        let messages: Vec<String> = failures.iter().map(|f| f.error.to_string()).collect();
        assert_eq!(messages.len(), 3, "{messages:?}");
        assert!(matches!(&failures[0].error, HandlerError::Panicked(m) if m == "b broke"));
        assert!(
            matches!(&failures[1].error, HandlerError::Failed(e) if e.to_string() == "c failed")
        );
        assert!(matches!(&failures[2].error, HandlerError::Panicked(m) if m == "e broke"));
        // The context is left as it was.
        assert_eq!(EventContext::current(), None);
    }
    assert_eq!(bus.panics_caught(), 6);

    let (bus, l, _subs) = mixed_bus(ErrorPolicy::StopAtFirst);
    let err = bus.try_publish(UserRegistered { user_id: 1 }).unwrap_err();
    assert_eq!(taken(&l), ["a", "b"]);
    assert_eq!(err.failures().len(), 1);
    assert_eq!(bus.panics_caught(), 1);
}
