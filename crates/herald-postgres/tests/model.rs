//! The model-based test (`herald-store-testkit`'s `model` module): random sequences of writes and reads on
//! the local PostgreSQL (a fresh schema per sequence, dropped afterwards), checked against the reference
//! model. `HERALD_MODEL_CASES` runs more.

mod support;

use herald_store_testkit::Fixture;

async fn fresh_store() -> Fixture {
    let (store, schema) = support::fresh_store(|c| c).await;
    Fixture::new(store).with_guard(schema)
}

herald_store_testkit::model_tests!(fresh_store);
