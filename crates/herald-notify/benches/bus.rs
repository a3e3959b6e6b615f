//! Domain-event bus cost: typed publish to 0, 1 and 10 sync listeners (precise and coarse timestamps), and
//! async listener throughput.
//!
//! Run: `cargo bench -p herald-notify --bench bus -- --warm-up-time 1 --measurement-time 3`

use std::borrow::Cow;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use herald_notify::{Bus, Envelope, Handlers, Listener, Timestamps};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct UserCreated {
    user_id: u64,
    email: Cow<'static, str>,
}
herald_notify::domain_event!(UserCreated, "user.created");

fn event() -> UserCreated {
    UserCreated {
        user_id: black_box(42),
        email: Cow::Borrowed("user@example.com"),
    }
}

#[derive(Default)]
struct Counter(AtomicU64);

impl Counter {
    fn user_created(&self, e: &Envelope<UserCreated>) {
        black_box(e.user_id);
        // A plain increment like the Ruby listener's `@count += 1` (one publishing thread).
        self.0
            .store(self.0.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }
}

impl Listener for Counter {
    fn register(h: &mut Handlers<Self>) {
        h.on(Self::user_created);
    }
}

fn bench_sync(c: &mut Criterion) {
    let mut g = c.benchmark_group("bus_sync");
    g.throughput(Throughput::Elements(1));

    let bus = Bus::new();
    g.bench_function("publish_0_listeners", |b| {
        b.iter(|| bus.try_publish(event()).is_ok())
    });

    // Wisper's `one`/`ten` cases subscribe listener objects on the publisher instance: local listeners.
    // `_coarse`: the same on a bus with `Timestamps::Coarse`.
    for (n, timestamps, suffix) in [
        (1usize, Timestamps::Precise, ""),
        (10, Timestamps::Precise, ""),
        (1, Timestamps::Coarse, "_coarse"),
        (10, Timestamps::Coarse, "_coarse"),
    ] {
        let bus = Bus::builder().timestamps(timestamps).build();
        let publisher = bus.publisher();
        let counters: Vec<Arc<Counter>> = (0..n).map(|_| Arc::new(Counter::default())).collect();
        let _subs: Vec<_> = counters
            .iter()
            .map(|c| publisher.subscribe_listener(c.clone()))
            .collect();
        g.bench_function(format!("publish_{n}_local_listeners{suffix}"), |b| {
            b.iter(|| publisher.try_publish(event()).is_ok())
        });
    }

    let bus = Bus::new();
    let counter = Arc::new(Counter::default());
    let c2 = counter.clone();
    let _s = bus.subscribe(move |e: &Envelope<UserCreated>| c2.user_created(e));
    g.bench_function("publish_1_global_closure", |b| {
        b.iter(|| bus.try_publish(event()).is_ok())
    });
    g.finish();
}

/// Events/s through one async listener: publish `iters` events (awaiting room), then wait until the
/// listener has handled them all.
fn bench_async(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let mut g = c.benchmark_group("bus_async");
    g.throughput(Throughput::Elements(1));
    for capacity in [64usize, 1024] {
        g.bench_function(format!("throughput_1_listener_cap{capacity}"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let bus = Bus::new();
                    let handled = Arc::new(AtomicU64::new(0));
                    let done = Arc::new(tokio::sync::Notify::new());
                    let (h, d) = (handled.clone(), done.clone());
                    let _sub =
                        bus.subscribe_async(capacity, move |e: Arc<Envelope<UserCreated>>| {
                            black_box(e.user_id);
                            if h.fetch_add(1, Ordering::Relaxed) + 1 == iters {
                                d.notify_one();
                            }
                            std::future::ready(())
                        });
                    let start = Instant::now();
                    for _ in 0..iters {
                        bus.publish(event()).await.unwrap();
                    }
                    done.notified().await;
                    let elapsed = start.elapsed();
                    bus.shutdown().await;
                    elapsed.max(Duration::from_nanos(1))
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_sync, bench_async);
criterion_main!(benches);
