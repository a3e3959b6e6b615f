#![allow(dead_code, unreachable_pub, missing_docs)]

use std::future::Future;
use std::time::Duration;

use herald_jobs::{JobStore, JobsConfig, ManualClock};

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub jobs: JobStore,
    pub clock: ManualClock,
}

pub async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at_micros(1_700_000_000_000_000);
    let jobs = JobStore::open(
        dir.path().join("herald.db"),
        JobsConfig::default().clock(clock.clone()).full_sync(false),
    )
    .await
    .unwrap();
    Fixture { dir, jobs, clock }
}

/// Waits (polling, bounded) until `check` holds: waiting for a condition, never a fixed sleep.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
