//! The Ruby baselines' cases (`shared/bench/ruby/asn_bench.rb`, `wisper_bench.rb`), same shape, in Rust,
//! printing the same `RESULT {json}` lines so that `repeat.rb` can run and summarise both.
//!
//! Run: `cargo build --release -p herald-notify --example ratio_bench`, then e.g.
//! `ruby repeat.rb -n 5 -o /tmp/rust.jsonl -- target/release/examples/ratio_bench asn_exact 20000000`
//! (from `shared/bench/ruby`, with the binary's path adjusted).
//!
//! Cases: `asn_none`, `asn_exact`, `asn_regex`, `asn_ten` (global notifier, `instrument("user.created",
//! payload, || ())`, as Ruby's `instrument(name, payload)` without a block), `asn_exact_notify` (the no-work
//! form), `wisper_one`, `wisper_ten` (listener objects on a publisher), `wisper_global` (a global listener),
//! `wisper_one_coarse`, `wisper_ten_coarse` (as `wisper_one`/`wisper_ten` on a bus with
//! `Timestamps::Coarse`); `coarse_idle MILLIS`: the coarse clock's ticker thread's CPU time while idle;
//! `tsc_one`, `tsc_pair`: one or two raw counter reads (`quanta::Clock::raw`, what `instrument` reads at
//! the start and at the end of the work) per iteration and nothing else, the floor under `asn_exact`.
//! Besides the wall-clock rate (`value`, as Ruby reports), each line carries `cpu_rate`: operations per
//! second of on-CPU time of the benchmark thread (from `/proc/thread-self/schedstat`), which is what to
//! compare when the machine is shared and the process gets preempted.

use std::borrow::Cow;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use herald_notify::{Bus, Envelope, Event, Handlers, Listener, Pattern, Timestamps};
use serde::{Deserialize, Serialize};

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

#[derive(Debug, Clone, Serialize, Deserialize)]
struct UserCreated {
    user_id: u64,
    email: Cow<'static, str>,
}
herald_notify::domain_event!(UserCreated, "user_created");

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

/// On-CPU nanoseconds of the calling thread.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn measure(iters: u64, mut op: impl FnMut()) -> (f64, f64) {
    // Warm-up, as the Ruby scripts do.
    for _ in 0..20_000 {
        op();
    }
    let cpu0 = thread_cpu_ns();
    let t0 = Instant::now();
    for _ in 0..iters {
        op();
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = (thread_cpu_ns() - cpu0) as f64 / 1e9;
    (wall, cpu)
}

fn handler(e: &Event<'_>) {
    black_box(e.name());
}

fn main() {
    let mut args = std::env::args().skip(1);
    let case = args.next().expect("usage: ratio_bench CASE [ITERATIONS]");
    let iters: u64 = args
        .next()
        .map_or(10_000_000, |s| s.parse().expect("ITERATIONS"));
    let name: &'static str = black_box("user.created");
    let (wall, cpu, unit) = match case.as_str() {
        "asn_none" | "asn_exact" | "asn_regex" | "asn_ten" | "asn_exact_notify" => {
            let _subs: Vec<_> = match case.as_str() {
                "asn_exact" | "asn_exact_notify" => {
                    vec![herald_notify::subscribe("user.created", handler)]
                }
                "asn_regex" => vec![herald_notify::subscribe(
                    Pattern::regex(r"\Auser\.").unwrap(),
                    handler,
                )],
                "asn_ten" => (0..10)
                    .map(|_| herald_notify::subscribe("user.created", handler))
                    .collect(),
                _ => Vec::new(),
            };
            let (wall, cpu) = if case == "asn_exact_notify" {
                measure(iters, || herald_notify::notify(name, payload))
            } else {
                measure(iters, || herald_notify::instrument(name, payload, || ()))
            };
            (wall, cpu, "events/s")
        }
        "wisper_one" | "wisper_ten" | "wisper_global" | "wisper_one_coarse"
        | "wisper_ten_coarse" => {
            let bus = if case.ends_with("_coarse") {
                Bus::builder().timestamps(Timestamps::Coarse).build()
            } else {
                Bus::new()
            };
            let publisher = bus.publisher();
            let n = if case.starts_with("wisper_ten") {
                10
            } else {
                1
            };
            let counters: Vec<Arc<Counter>> = (0..n).map(|_| Arc::default()).collect();
            let _subs: Vec<_> = counters
                .iter()
                .map(|c| {
                    if case == "wisper_global" {
                        bus.subscribe_listener(c.clone())
                    } else {
                        publisher.subscribe_listener(c.clone())
                    }
                })
                .collect();
            let event = || UserCreated {
                user_id: black_box(42),
                email: Cow::Borrowed("user@example.com"),
            };
            let (wall, cpu) = measure(iters, || {
                black_box(publisher.try_publish(event()).is_ok());
            });
            for c in &counters {
                assert_eq!(
                    c.0.load(Ordering::Relaxed),
                    iters + 20_000,
                    "listener missed events"
                );
            }
            (wall, cpu, "broadcasts/s")
        }
        "tsc_one" | "tsc_pair" => {
            let clock = quanta::Clock::new();
            let (wall, cpu) = if case == "tsc_pair" {
                measure(iters, || {
                    black_box(clock.raw());
                    black_box(clock.raw());
                })
            } else {
                measure(iters, || {
                    black_box(clock.raw());
                })
            };
            (wall, cpu, "iterations/s")
        }
        "coarse_idle" => {
            // What the coarse clock's ticker costs when nothing is published: its on-CPU time over
            // ITERATIONS milliseconds of sleep, reported per second.
            let _bus = Bus::builder().timestamps(Timestamps::Coarse).build();
            std::thread::sleep(std::time::Duration::from_millis(iters));
            let ticker_ns = std::fs::read_dir("/proc/self/task")
                .into_iter()
                .flatten()
                .flatten()
                .find(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.trim() == "herald-coarse-c")
                })
                .and_then(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                .expect("ticker thread");
            let secs = iters as f64 / 1e3;
            println!(
                "RESULT {}",
                serde_json::json!({
                    "metric": "herald_coarse_idle",
                    "ticker_cpu_us_per_s": (ticker_ns as f64 / 1e3 / secs).round(),
                    "ticker_cpu_share": ticker_ns as f64 / 1e9 / secs,
                })
            );
            return;
        }
        other => panic!("unknown case {other}"),
    };
    let line = serde_json::json!({
        "metric": format!("herald_{case}"),
        "value": (iters as f64 / wall).round(),
        "unit": unit,
        "n": iters,
        "wall_s": (wall * 1e4).round() / 1e4,
        "cpu_s": (cpu * 1e4).round() / 1e4,
        "cpu_rate": (iters as f64 / cpu).round(),
        "ns_per_op_wall": (wall * 1e9 / iters as f64 * 100.0).round() / 100.0,
        "ns_per_op_cpu": (cpu * 1e9 / iters as f64 * 100.0).round() / 100.0,
    });
    println!("RESULT {line}");
}
