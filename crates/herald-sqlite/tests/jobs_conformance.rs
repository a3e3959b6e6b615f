//! The job queue conformance suite (`herald-store-testkit`), run against the SQLite queue sharing an SQLite
//! store, one file per case. Further handles are queues opened on the same file with their own writer
//! thread, as other processes would open them.

use std::sync::Arc;

use herald_core::{JobRouter, JobsConfig};
use herald_sqlite::{Durability, SqliteConfig, SqliteJobQueue, SqliteStore};
use herald_store_testkit::jobs::JobsFixture;

async fn fresh(config: JobsConfig, router: Option<Arc<dyn JobRouter>>) -> JobsFixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.db");
    let mut store_config = SqliteConfig::default().durability(Durability::Normal);
    if let Some(router) = router {
        store_config = store_config.with_job_router(router);
    }
    let store = SqliteStore::open(&path, store_config).await.unwrap();
    let queue = store.job_queue(config.clone()).await.unwrap();
    JobsFixture::new(store, queue)
        .with_other_handles(move || {
            let (path, config) = (path.clone(), config.clone());
            async move { SqliteJobQueue::open(&path, config).await.unwrap() }
        })
        .with_guard(dir)
}

herald_store_testkit::job_queue_conformance!(fresh);
