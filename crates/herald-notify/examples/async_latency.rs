//! Publish → async handler latency through one async listener, p50/p90/p99.
//!
//! Run: `cargo run --release -p herald-notify --example async_latency -- [SAMPLES] [ROUNDS]`
//!
//! Each sample publishes one event and waits until the listener has handled it (ping-pong, so queueing
//! delay is not counted): the latency is from just before `publish` to the first line of the handler, read
//! on the same monotonic clock. A second figure runs bursts of 100 events without waiting (loaded).
//! Prints one JSON line per round and the median of the rounds.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use herald_notify::{Bus, Envelope};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Ping {
    sent_ns: u64,
}
herald_notify::domain_event!(Ping, "bench.ping");

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let samples: usize = args.next().map_or(20_000, |s| s.parse().expect("SAMPLES"));
    let rounds: usize = args.next().map_or(5, |s| s.parse().expect("ROUNDS"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let base = Instant::now();
    let now_ns = move || u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX);

    let mut results = Vec::new();
    for round in 0..rounds {
        let (idle, loaded) = rt.block_on(async {
            let bus = Bus::new();
            let lat = Arc::new(Mutex::new(Vec::with_capacity(samples)));
            let done = Arc::new(tokio::sync::Notify::new());
            let (l, d) = (lat.clone(), done.clone());
            let _sub = bus.subscribe_async(1024, move |e: Arc<Envelope<Ping>>| {
                let at = now_ns();
                l.lock().unwrap().push(at.saturating_sub(e.sent_ns));
                d.notify_one();
                std::future::ready(())
            });
            // Warm-up.
            for _ in 0..1000 {
                bus.publish(Ping { sent_ns: now_ns() }).await.unwrap();
                done.notified().await;
            }
            lat.lock().unwrap().clear();
            for _ in 0..samples {
                bus.publish(Ping { sent_ns: now_ns() }).await.unwrap();
                done.notified().await;
            }
            let mut idle = std::mem::take(&mut *lat.lock().unwrap());
            // Loaded: bursts of 100 published back to back, then wait for the last one.
            for burst in 1..=samples / 100 {
                for _ in 0..100 {
                    bus.publish(Ping { sent_ns: now_ns() }).await.unwrap();
                }
                // The handler pushes before it notifies, and `notify_one` keeps a permit when nobody
                // waits, so re-checking the count after each wake-up cannot miss the last event.
                while lat.lock().unwrap().len() < burst * 100 {
                    done.notified().await;
                }
            }
            let mut loaded = std::mem::take(&mut *lat.lock().unwrap());
            bus.shutdown().await;
            idle.sort_unstable();
            loaded.sort_unstable();
            (idle, loaded)
        });
        let line = serde_json::json!({
            "round": round,
            "idle_p50_ns": percentile(&idle, 0.5),
            "idle_p90_ns": percentile(&idle, 0.9),
            "idle_p99_ns": percentile(&idle, 0.99),
            "loaded_p50_ns": percentile(&loaded, 0.5),
            "loaded_p99_ns": percentile(&loaded, 0.99),
        });
        println!("{line}");
        results.push(line);
    }
    let median = |key: &str| {
        let mut v: Vec<u64> = results.iter().map(|r| r[key].as_u64().unwrap()).collect();
        v.sort_unstable();
        v[v.len() / 2]
    };
    println!(
        "MEDIAN of {rounds} rounds x {samples} samples: idle p50 {} ns, p90 {} ns, p99 {} ns; loaded (bursts of 100) p50 {} ns, p99 {} ns",
        median("idle_p50_ns"),
        median("idle_p90_ns"),
        median("idle_p99_ns"),
        median("loaded_p50_ns"),
        median("loaded_p99_ns"),
    );
}
