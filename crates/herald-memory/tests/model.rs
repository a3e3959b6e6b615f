//! The model-based test (`herald-store-testkit`'s `model` module): random sequences of writes and reads on
//! the in-memory store, checked against the reference model. `HERALD_MODEL_CASES` runs more.

herald_store_testkit::model_tests!(|| async { herald_memory::InMemoryStore::new() });
