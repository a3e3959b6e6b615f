//! The shared conformance suite (`herald-store-testkit`), run against the local PostgreSQL, one fresh schema
//! per case (dropped when the case ends), so cases run in parallel.

mod support;

use herald_store_testkit::Fixture;

async fn fresh_store() -> Fixture {
    let (store, schema) = support::fresh_store(|c| c).await;
    Fixture::new(store).with_guard(schema)
}

herald_store_testkit::conformance_tests!(fresh_store);
