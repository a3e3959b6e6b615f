//! The shared conformance suite (`herald-store-testkit`), run against the in-memory store.

herald_store_testkit::conformance_tests!(|| async { herald_memory::InMemoryStore::new() });
