//! Behaviour of the instrumentation notifier.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, SystemTime};

use herald_notify::{
    Event, Notifier, Outcome, PanicPolicy, Pattern, SpanSubscriber, Started, tracing_bridge,
};

type Log = Arc<Mutex<Vec<String>>>;

fn log() -> Log {
    Arc::new(Mutex::new(Vec::new()))
}

fn recorder(log: &Log, tag: &'static str) -> impl Fn(&Event<'_>) + Send + Sync + 'static {
    let log = log.clone();
    move |e: &Event<'_>| log.lock().unwrap().push(format!("{tag}:{}", e.name()))
}

fn taken(log: &Log) -> Vec<String> {
    std::mem::take(&mut *log.lock().unwrap())
}

#[test]
fn subscriptions_receive_the_names_their_patterns_match() {
    let n = Notifier::new();
    let l = log();
    let _a = n.subscribe("sql.query", recorder(&l, "exact")).guard();
    let _b = n.subscribe("sql.*", recorder(&l, "glob")).guard();
    let _c = n.subscribe("**.created", recorder(&l, "deep")).guard();
    let _d = n
        .subscribe(Pattern::regex(r"^user\.").unwrap(), recorder(&l, "regex"))
        .guard();
    let _e = n.subscribe(Pattern::all(), recorder(&l, "all")).guard();

    let table: &[(&str, &[&str])] = &[
        ("sql.query", &["exact", "glob", "all"]),
        ("sql.query.slow", &["all"]),
        ("user.created", &["deep", "regex", "all"]),
        ("account.user.created", &["deep", "all"]),
        ("superuser.login", &["all"]),
        ("sql", &["all"]),
    ];
    for (name, expected) in table {
        n.notify(name, || ());
        let got = taken(&l);
        let want: Vec<String> = expected.iter().map(|t| format!("{t}:{name}")).collect();
        assert_eq!(got, want, "delivery for {name}");
    }
}

#[test]
fn instrument_returns_work_result_and_reports_timing_and_payload() {
    let n = Notifier::new();
    let seen = Arc::new(Mutex::new(None));
    let s = seen.clone();
    let _sub = n
        .subscribe("job.run", move |e| {
            *s.lock().unwrap() = Some((
                e.payload_as::<(u32, &'static str)>().copied(),
                e.duration(),
                e.started_at(),
                e.finished_at(),
                e.outcome().is_ok(),
            ));
        })
        .guard();
    let before = SystemTime::now();
    let out = n.instrument(
        "job.run",
        || (42u32, "payload"),
        || (0..100_000u64).fold(0u64, |a, b| a.wrapping_add(b * b)),
    );
    let after = SystemTime::now();
    assert_eq!(
        out,
        (0..100_000u64).fold(0u64, |a, b| a.wrapping_add(b * b))
    );
    let (payload, duration, started, finished, ok) = seen.lock().unwrap().take().unwrap();
    assert_eq!(payload, Some((42, "payload")));
    assert!(ok);
    assert!(duration > Duration::ZERO);
    assert!(finished >= started);
    let slack = Duration::from_millis(50);
    assert!(started + slack >= before, "{started:?} vs {before:?}");
    assert!(finished <= after + slack, "{finished:?} vs {after:?}");
}

/// The duration and the wall-clock times subscribers see come from raw counter readings scaled only when
/// asked for: they must still cover a work of known length. The work spins (no sleep) until the OS
/// monotonic clock says 20 ms have passed; the subscriber's duration must be at least that (less 2% for
/// the counter's calibration against the OS clock) and at most the time measured around the call.
#[test]
fn duration_covers_a_work_of_known_length() {
    let n = Notifier::new();
    let seen = Arc::new(Mutex::new(None));
    let s = seen.clone();
    let _sub = n
        .subscribe("work.spin", move |e| {
            *s.lock().unwrap() = Some((e.duration(), e.started_at(), e.finished_at()));
        })
        .guard();
    let min = Duration::from_millis(20);
    let outer = std::time::Instant::now();
    let inner = n.instrument(
        "work.spin",
        || (),
        || {
            let t = std::time::Instant::now();
            while t.elapsed() < min {
                std::hint::spin_loop();
            }
            t.elapsed()
        },
    );
    let outer = outer.elapsed();
    let (duration, started, finished) = seen.lock().unwrap().take().unwrap();
    assert!(inner >= min);
    assert!(duration >= inner * 98 / 100, "{duration:?} < {inner:?}");
    assert!(duration <= outer * 102 / 100, "{duration:?} > {outer:?}");
    assert_eq!(finished.duration_since(started).unwrap(), duration);
}

#[test]
fn payload_is_built_only_when_someone_listens() {
    let n = Notifier::new();
    let built = AtomicUsize::new(0);
    let payload = || {
        built.fetch_add(1, Ordering::SeqCst);
        "p"
    };
    n.instrument("a.b", payload, || ());
    assert_eq!(built.load(Ordering::SeqCst), 0, "no subscriber at all");

    let _other = n.subscribe("other.*", |_| {}).guard();
    n.instrument("a.b", payload, || ());
    n.notify("a.b", payload);
    assert_eq!(built.load(Ordering::SeqCst), 0, "no matching subscriber");
    assert!(!n.is_listening("a.b"));

    let _sub = n.subscribe("a.b", |_| {}).guard();
    let _sub2 = n.subscribe("a.*", |_| {}).guard();
    assert!(n.is_listening("a.b"));
    n.instrument("a.b", payload, || ());
    assert_eq!(
        built.load(Ordering::SeqCst),
        1,
        "built once for two subscribers"
    );
}

#[derive(Debug, PartialEq)]
struct DiskOnFire(Box<u64>);

impl std::fmt::Display for DiskOnFire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "disk {} on fire", self.0)
    }
}

#[test]
fn errors_are_visible_to_subscribers_and_returned_untouched() {
    let n = Notifier::new();
    let seen = log();
    let s = seen.clone();
    let _sub = n
        .subscribe("io.*", move |e| {
            let text = match e.outcome() {
                Outcome::Error(err) => {
                    format!("error:{err}:{}", err.downcast_ref::<DiskOnFire>().is_some())
                }
                Outcome::Ok => "ok".to_owned(),
                Outcome::Panicked => "panicked".to_owned(),
                _ => "other".to_owned(),
            };
            s.lock().unwrap().push(text);
        })
        .guard();
    let boxed = Box::new(7u64);
    let addr = std::ptr::from_ref::<u64>(&boxed) as usize;
    let r: Result<(), DiskOnFire> = n.try_instrument("io.write", || (), || Err(DiskOnFire(boxed)));
    let err = r.unwrap_err();
    assert_eq!(
        std::ptr::from_ref::<u64>(&err.0) as usize,
        addr,
        "same allocation: untouched"
    );
    let ok: Result<u8, DiskOnFire> = n.try_instrument("io.read", || (), || Ok(1));
    assert_eq!(ok, Ok(1));
    assert_eq!(taken(&seen), ["error:disk 7 on fire:true", "ok"]);
}

#[test]
fn a_panicking_work_is_reported_then_continues_to_unwind() {
    let n = Notifier::new();
    let seen = log();
    let s = seen.clone();
    let _sub = n
        .subscribe("w", move |e| {
            s.lock()
                .unwrap()
                .push(format!("{:?}", matches!(e.outcome(), Outcome::Panicked)));
        })
        .guard();
    let r = catch_unwind(AssertUnwindSafe(|| {
        n.instrument("w", || (), || panic!("work failed"));
    }));
    assert!(r.is_err());
    assert_eq!(taken(&seen), ["true"]);
}

#[test]
fn panicking_subscribers_are_isolated_by_default() {
    let reports = log();
    let r = reports.clone();
    let n = Notifier::builder()
        .panic_reporter(move |p| {
            r.lock().unwrap().push(format!("{}:{}", p.event, p.message));
        })
        .build();
    let l = log();
    let _a = n.subscribe("x", recorder(&l, "before")).guard();
    let _b = n.subscribe("x", |_| panic!("subscriber bug")).guard();
    let _c = n.subscribe("x", recorder(&l, "after")).guard();
    let out = n.instrument("x", || (), || 5);
    assert_eq!(out, 5);
    assert_eq!(taken(&l), ["before:x", "after:x"]);
    assert_eq!(taken(&reports), ["x:subscriber bug"]);
    assert_eq!(n.panics_caught(), 1);
}

#[test]
fn propagate_policy_lets_subscriber_panics_reach_the_caller() {
    let n = Notifier::builder()
        .panic_policy(PanicPolicy::Propagate)
        .build();
    let _b = n.subscribe("x", |_| panic!("subscriber bug")).guard();
    let r = catch_unwind(AssertUnwindSafe(|| n.notify("x", || ())));
    let msg = r.unwrap_err();
    assert_eq!(msg.downcast_ref::<&str>(), Some(&"subscriber bug"));
}

#[test]
fn unsubscribe_by_handle_by_notifier_and_by_guard() {
    let n = Notifier::new();
    let l = log();
    let a = n.subscribe("e", recorder(&l, "a"));
    let b = n.subscribe("e", recorder(&l, "b"));
    let c = n.subscribe("e", recorder(&l, "c")).guard();
    n.notify("e", || ());
    assert_eq!(taken(&l), ["a:e", "b:e", "c:e"]);

    assert!(a.unsubscribe());
    assert!(!a.unsubscribe(), "second unsubscribe is a no-op");
    n.notify("e", || ());
    assert_eq!(taken(&l), ["b:e", "c:e"]);

    assert!(n.unsubscribe(&b));
    drop(c);
    n.notify("e", || ());
    assert!(taken(&l).is_empty());
    assert_eq!(n.subscriber_count(), 0);

    // A new subscriber is picked up (the per-thread cache was invalidated).
    let _d = n.subscribe("e", recorder(&l, "d")).guard();
    n.notify("e", || ());
    assert_eq!(taken(&l), ["d:e"]);
}

#[test]
fn subscribers_on_other_notifiers_are_not_called() {
    let n1 = Notifier::new();
    let n2 = Notifier::new();
    let l = log();
    let _s = n1.subscribe("e", recorder(&l, "n1")).guard();
    n2.notify("e", || ());
    n1.notify("e", || ());
    assert_eq!(taken(&l), ["n1:e"]);
}

#[test]
fn handlers_may_instrument_and_subscribe_reentrantly() {
    let n = Notifier::new();
    let l = log();
    let inner = n.clone();
    let l2 = l.clone();
    let _outer = n
        .subscribe("outer", move |_| {
            inner.notify("inner", || ());
            // Subscribing from a handler must not deadlock.
            let sub = inner.subscribe("never", |_| {});
            sub.unsubscribe();
            l2.lock().unwrap().push("outer".into());
        })
        .guard();
    let _inner = n.subscribe("inner", recorder(&l, "i")).guard();
    n.notify("outer", || ());
    assert_eq!(taken(&l), ["i:inner", "outer"]);
}

#[test]
fn scoped_subscription_sees_only_its_own_thread_during_the_block() {
    let n = Notifier::new();
    let barrier = Arc::new(Barrier::new(2));
    let threads: Vec<_> = ["t1", "t2"]
        .into_iter()
        .map(|tag| {
            let n = n.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let seen = Arc::new(Mutex::new(Vec::new()));
                let s = seen.clone();
                n.subscribed(
                    "shared.name",
                    move |e| s.lock().unwrap().push(*e.payload_as::<&str>().unwrap()),
                    || {
                        // Both scopes are active from here on.
                        barrier.wait();
                        for _ in 0..100 {
                            n.notify("shared.name", || tag);
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
        assert_eq!(seen.len(), 100, "{tag} saw {seen:?}");
        assert!(seen.iter().all(|s| *s == tag), "{tag} saw another's events");
    }
    assert_eq!(n.subscriber_count(), 0, "scoped subscriptions are removed");
}

#[test]
fn scoped_subscription_is_removed_even_when_the_block_panics() {
    let n = Notifier::new();
    let r = catch_unwind(AssertUnwindSafe(|| {
        n.subscribed("x", |_| {}, || panic!("block failed"));
    }));
    assert!(r.is_err());
    assert_eq!(n.subscriber_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_subscriptions_on_concurrent_tasks_do_not_see_each_other() {
    let n = Notifier::new();
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let tasks: Vec<_> = ["task-a", "task-b"]
        .into_iter()
        .map(|tag| {
            let n = n.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                let seen = Arc::new(Mutex::new(Vec::new()));
                let s = seen.clone();
                let inner = n.clone();
                n.subscribed_async(
                    "shared.name",
                    move |e| s.lock().unwrap().push(*e.payload_as::<&str>().unwrap()),
                    async move {
                        barrier.wait().await;
                        for _ in 0..200 {
                            inner.notify("shared.name", || tag);
                            // Give the scheduler chances to move us between worker threads.
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
        assert_eq!(seen.len(), 200, "{tag}");
        assert!(seen.iter().all(|s| *s == tag), "{tag} saw another's events");
    }
    assert_eq!(n.subscriber_count(), 0);
}

struct Spans(Log);

impl SpanSubscriber for Spans {
    fn start(&self, e: &Started<'_>) {
        self.0.lock().unwrap().push(format!("start:{}", e.name()));
    }
    fn finish(&self, e: &Event<'_>) {
        self.0.lock().unwrap().push(format!("finish:{}", e.name()));
    }
}

#[test]
fn span_subscribers_see_both_ends_properly_nested() {
    let n = Notifier::new();
    let l = log();
    let _s = n.subscribe_span("**", Spans(l.clone())).guard();
    n.instrument(
        "http.request",
        || (),
        || n.instrument("sql.query", || (), || ()),
    );
    n.notify("cache.hit", || ());
    assert_eq!(
        taken(&l),
        [
            "start:http.request",
            "start:sql.query",
            "finish:sql.query",
            "finish:http.request",
            "start:cache.hit",
            "finish:cache.hit"
        ]
    );
}

#[test]
fn span_subscriber_unsubscribed_during_the_work_still_gets_its_finish() {
    let n = Notifier::new();
    let l = log();
    let sub = n.subscribe_span("x", Spans(l.clone()));
    n.instrument(
        "x",
        || (),
        || {
            sub.unsubscribe();
        },
    );
    assert_eq!(taken(&l), ["start:x", "finish:x"]);
}

#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn tracing_bridge_emits_spans_and_events() {
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let n = Notifier::new();
    let _bridge = tracing_bridge::install(&n, "sql.*").guard();
    tracing::subscriber::with_default(subscriber, || {
        n.instrument("sql.query", || "SELECT 1", || ());
        let _: Result<(), String> = n.try_instrument("sql.exec", || (), || Err("boom".into()));
    });
    let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    assert!(out.contains("herald.instrument"), "{out}");
    assert!(out.contains("event=\"sql.query\""), "{out}");
    assert!(out.contains("SELECT 1"), "{out}");
    assert!(out.contains("outcome=\"ok\""), "{out}");
    assert!(out.contains("error=boom"), "{out}");
}

#[test]
fn global_notifier_and_free_functions() {
    let l = log();
    let _sub = herald_notify::subscribe("test.global.unique", recorder(&l, "g")).guard();
    let v = herald_notify::instrument("test.global.unique", || 1u8, || 3);
    assert_eq!(v, 3);
    herald_notify::notify("test.global.unique", || ());
    let r: Result<(), &str> =
        herald_notify::try_instrument("test.global.unique", || (), || Err("e"));
    assert!(r.is_err());
    assert_eq!(taken(&l), ["g:test.global.unique"; 3]);
    let l2 = log();
    herald_notify::subscribed("test.global.scoped", recorder(&l2, "s"), || {
        herald_notify::notify("test.global.scoped", || ());
    });
    assert_eq!(taken(&l2), ["s:test.global.scoped"]);
}

#[test]
fn a_handler_unsubscribed_during_a_delivery_is_skipped_from_then_on() {
    let n = Notifier::new();
    let l = log();
    let victim: Arc<Mutex<Option<herald_notify::SubscriberHandle>>> = Arc::new(Mutex::new(None));
    let v = victim.clone();
    let _first = n
        .subscribe("e", move |_| {
            if let Some(sub) = v.lock().unwrap().take() {
                sub.unsubscribe();
            }
        })
        .guard();
    *victim.lock().unwrap() = Some(n.subscribe("e", recorder(&l, "victim")));
    n.notify("e", || ());
    assert!(taken(&l).is_empty(), "skipped within the same delivery");
    n.notify("e", || ());
    assert!(taken(&l).is_empty());
}
