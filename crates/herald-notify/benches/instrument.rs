//! Instrumentation cost: `instrument` with 0, 1 exact, 1 regex and 10 subscribers, plus the clocks.
//!
//! Run: `cargo bench -p herald-notify --bench instrument -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::time::{Instant, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use herald_notify::{Notifier, Pattern};

#[derive(Debug)]
#[expect(dead_code, reason = "read only through Debug, like a real payload")]
struct Payload {
    user_id: u64,
    email: &'static str,
}

fn payload() -> Payload {
    Payload {
        user_id: black_box(42),
        email: "user@example.com",
    }
}

fn handler(e: &herald_notify::Event<'_>) {
    black_box(e.name());
}

fn bench_instrument(c: &mut Criterion) {
    let mut g = c.benchmark_group("instrument");
    let name: &'static str = black_box("user.created");

    let n = Notifier::new();
    g.bench_function("0_subscribers", |b| {
        b.iter(|| n.instrument(name, payload, || black_box(1)))
    });
    g.bench_function("0_subscribers_global", |b| {
        b.iter(|| herald_notify::instrument(name, payload, || black_box(1)))
    });

    let n = Notifier::new();
    let _other = n.subscribe("sql.query", handler);
    g.bench_function("0_matching_1_other", |b| {
        b.iter(|| n.instrument(name, payload, || black_box(1)))
    });

    let n = Notifier::new();
    let _s = n.subscribe("user.created", handler);
    g.bench_function("1_exact", |b| {
        b.iter(|| n.instrument(name, payload, || black_box(1)))
    });
    g.bench_function("1_exact_notify", |b| b.iter(|| n.notify(name, payload)));
    let dyn_name = String::from("user.created");
    g.bench_function("1_exact_dyn_name", |b| {
        b.iter(|| n.instrument_dyn(black_box(&dyn_name), payload, || black_box(1)))
    });

    let n = Notifier::new();
    let _s = n.subscribe("user.*", handler);
    g.bench_function("1_glob", |b| {
        b.iter(|| n.instrument(name, payload, || black_box(1)))
    });

    let n = Notifier::new();
    let _s = n.subscribe(Pattern::regex(r"\Auser\.").unwrap(), handler);
    g.bench_function("1_regex", |b| {
        b.iter(|| n.instrument(name, payload, || black_box(1)))
    });

    let n = Notifier::new();
    let _subs: Vec<_> = (0..10)
        .map(|_| n.subscribe("user.created", handler))
        .collect();
    g.bench_function("10_exact", |b| {
        b.iter(|| n.instrument(name, payload, || black_box(1)))
    });
    g.finish();
}

fn bench_clocks(c: &mut Criterion) {
    let mut g = c.benchmark_group("clock");
    g.bench_function("std_Instant_now", |b| b.iter(Instant::now));
    g.bench_function("std_SystemTime_now", |b| b.iter(SystemTime::now));
    let clock = quanta::Clock::new();
    g.bench_function("quanta_Clock_now", |b| b.iter(|| clock.now()));
    g.bench_function("quanta_Clock_raw", |b| b.iter(|| clock.raw()));
    g.finish();
}

criterion_group!(benches, bench_instrument, bench_clocks);
criterion_main!(benches);
