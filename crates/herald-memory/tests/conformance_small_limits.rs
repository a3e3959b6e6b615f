//! The conformance suite again, on a store built with small limits, declared to the suite: the size and
//! count checks must follow the configured limits (and the 1 MB payload case skips, loudly, because such a
//! store cannot hold it).

use herald_core::Limits;
use herald_memory::InMemoryStore;
use herald_store_testkit::{Capabilities, Fixture};

const LIMITS: Limits = Limits {
    max_event_bytes: 64 * 1024,
    max_events_per_append: 1_000,
};

async fn small_store() -> Fixture {
    Fixture::new(InMemoryStore::with_limits(LIMITS))
        .with_capabilities(Capabilities::default().with_limits(LIMITS))
}

herald_store_testkit::conformance_tests!(small_store);
