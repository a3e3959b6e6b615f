//! A throwaway PostgreSQL schema per test, and the rule for an unreachable server: every Herald crate that
//! tests against the local PostgreSQL uses these, so the rule is the same everywhere.
//!
//! - The server is `HERALD_TEST_POSTGRES_URL`, or the local server's `test` database.
//! - Each test works in a schema of its own ([`TestSchema`]), so tests run in parallel; the schema is
//!   dropped, with everything in it, when the guard is dropped.
//! - An unreachable server fails the test when `CI` is set, and skips it with a printed reason otherwise
//!   ([`available`], [`available_blocking`]).

/// The database the tests use: `HERALD_TEST_POSTGRES_URL`, or the local server's `test` database.
pub fn server_url() -> String {
    std::env::var("HERALD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".to_owned())
}

/// The test server's TCP address (host and port of [`server_url`]): what a [`crate::proxy::TcpProxy`]
/// relays to.
pub fn server_addr() -> std::net::SocketAddr {
    use std::net::ToSocketAddrs;
    let config: tokio_postgres::Config = server_url().parse().expect("the test server's URL");
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        _ => "127.0.0.1".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    (host.as_str(), port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .expect("the test server's address resolves")
}

/// A uniquely named schema for one test, dropped with everything in it when this guard is dropped. Herald's
/// stores create it on open; [`TestSchema::create`] creates it up front for code that does not.
#[derive(Debug)]
pub struct TestSchema {
    name: String,
}

impl TestSchema {
    /// A fresh name: `prefix` (lowercase ASCII letters, digits and `_`) followed by a UUIDv7.
    pub fn new(prefix: &str) -> Self {
        TestSchema {
            name: format!("{prefix}_{}", uuid::Uuid::now_v7().simple()),
        }
    }

    /// The schema name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The server URL with `schema=NAME` added: what Herald's URL-taking entry points (`herald::connect`,
    /// the CLI's `--database`) accept.
    pub fn url(&self) -> String {
        let server = server_url();
        let separator = if server.contains('?') { '&' } else { '?' };
        format!("{server}{separator}schema={}", self.name)
    }

    /// [`url`](Self::url) with the server's host and port replaced by `127.0.0.1:port`: the same database
    /// reached through a [`crate::proxy::TcpProxy`] listening there.
    pub fn url_via(&self, port: u16) -> String {
        let config: tokio_postgres::Config = server_url().parse().expect("the test server's URL");
        let user = config.get_user().unwrap_or("postgres");
        let database = config.get_dbname().unwrap_or(user);
        format!(
            "postgres://{user}@127.0.0.1:{port}/{database}?schema={}",
            self.name
        )
    }

    /// Creates the schema now.
    pub async fn create(&self) -> Result<(), String> {
        execute(&format!("CREATE SCHEMA IF NOT EXISTS {}", self.name)).await
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        // Drop may run inside a Tokio runtime, which cannot block on another one: use a plain thread.
        let sql = format!(
            "SET lock_timeout = '10s'; DROP SCHEMA IF EXISTS {} CASCADE",
            self.name
        );
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?
                .block_on(execute(&sql))
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => {
                eprintln!("note: could not drop test schema {}: {reason}", self.name)
            }
            Err(_) => eprintln!("note: could not drop test schema {}", self.name),
        }
    }
}

/// Whether the test server answers. When it does not: panics if `CI` is set, else prints why `test` skips.
pub async fn available(test: &str) -> bool {
    decide(test, execute("SELECT 1").await)
}

/// [`available`] for synchronous tests (must not be called from inside a Tokio runtime).
pub fn available_blocking(test: &str) -> bool {
    let answered = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|runtime| runtime.block_on(execute("SELECT 1")));
    decide(test, answered)
}

fn decide(test: &str, answered: Result<(), String>) -> bool {
    match answered {
        Ok(()) => true,
        Err(reason) if std::env::var_os("CI").is_some() => panic!(
            "{test}: PostgreSQL at {} is unreachable ({reason}); CI requires it (scripts/services.sh starts it)",
            server_url()
        ),
        Err(reason) => {
            eprintln!(
                "SKIPPED {test}: PostgreSQL at {} is unreachable ({reason}); set CI=1 to make this fail",
                server_url()
            );
            false
        }
    }
}

/// Runs `sql` (one or more statements) on the test server, on a connection of its own: for tests that set up
/// what Herald would not (a failing trigger, a role without privileges).
pub async fn execute(sql: &str) -> Result<(), String> {
    let (client, connection) = tokio_postgres::connect(&server_url(), tokio_postgres::NoTls)
        .await
        .map_err(|e| e.to_string())?;
    let connection = tokio::spawn(connection);
    let result = client.batch_execute(sql).await.map_err(|e| e.to_string());
    drop(client);
    let _ = connection.await;
    result
}
