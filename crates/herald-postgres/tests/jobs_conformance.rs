//! The job queue conformance suite (`herald-store-testkit`), run against the PostgreSQL queue sharing a
//! PostgreSQL store, one fresh schema per case (dropped when the case ends). Further handles are queues opened
//! on the same schema with their own pools, as other processes would open them.

mod support;

use std::sync::Arc;

use herald_core::{JobRouter, JobsConfig};
use herald_store_testkit::jobs::JobsFixture;

async fn fresh(config: JobsConfig, router: Option<Arc<dyn JobRouter>>) -> JobsFixture {
    let (store, schema) = support::fresh_store(|c| match router {
        Some(router) => c.with_job_router(router),
        None => c,
    })
    .await;
    let queue = store.job_queue(config.clone()).await.unwrap();
    let url = format!("{}?schema={}", support::database_url(), schema.name());
    JobsFixture::new(store, queue)
        .with_other_handles(move || {
            let (url, config) = (url.clone(), config.clone());
            async move {
                herald_postgres::PostgresJobQueue::open(&url, config)
                    .await
                    .unwrap()
            }
        })
        .with_guard(schema)
}

herald_store_testkit::job_queue_conformance!(fresh);
