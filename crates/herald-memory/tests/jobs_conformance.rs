//! The job queue conformance suite (`herald-store-testkit`), run against the in-memory queue sharing an
//! in-memory store.

use std::sync::Arc;

use herald_core::{JobRouter, JobsConfig};
use herald_memory::InMemoryStore;
use herald_store_testkit::jobs::JobsFixture;

async fn fresh(config: JobsConfig, router: Option<Arc<dyn JobRouter>>) -> JobsFixture {
    let store = match router {
        Some(router) => InMemoryStore::with_job_router(router),
        None => InMemoryStore::new(),
    };
    let queue = store.job_queue(config.clone());
    let shared = store.clone();
    // Further handles share the jobs, as processes on one database would.
    JobsFixture::new(store, queue).with_other_handles(move || {
        let queue = shared.job_queue(config.clone());
        async move { queue }
    })
}

herald_store_testkit::job_queue_conformance!(fresh);
