//! `JobStore::open_url` refuses what it cannot open with a typed error naming the problem, before creating
//! anything.

use herald_jobs::{JobError, JobStore, JobsConfig};

#[tokio::test]
async fn bad_urls_are_invalid_input_and_create_nothing() {
    let server = herald_store_testkit::postgres::server_url();
    let separator = if server.contains('?') { '&' } else { '?' };
    let cases = [
        ("mysql://root@localhost/test".to_owned(), "mysql://"),
        ("sqlite://".to_owned(), "without a path"),
        (format!("{server}{separator}schema=Bad-Name"), "Bad-Name"),
        (format!("{server}{separator}schema=pg_jobs"), "pg_jobs"),
    ];
    for (url, needle) in cases {
        match JobStore::open_url(&url, JobsConfig::default()).await {
            Err(JobError::InvalidInput(message)) => {
                assert!(message.contains(needle), "{url}: {message}")
            }
            Err(other) => panic!("{url}: expected invalid input, got {other}"),
            Ok(_) => panic!("{url}: opened"),
        }
    }
}
