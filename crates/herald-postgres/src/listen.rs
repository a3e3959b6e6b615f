//! The live feed across processes: a dedicated connection that `LISTEN`s on the store's channel and bumps the
//! head when another process (or another store handle) commits.
//!
//! Writers `NOTIFY` after their `COMMIT` returned (on a connection of their own, before acknowledging the
//! appends), so by the time a notification arrives its events are visible to every new snapshot. The payload
//! is the writer's instance id and the new end of the log; notifications of different writers may arrive in
//! any order, so the head only ever moves forward (`max`); the listener skips its own handle's notifications (its writer already moved
//! the head). If the connection breaks, the listener reconnects with a backoff and bumps the head once, so
//! followers re-read whatever they may have missed; followers also poll (`FOLLOW_POLL_INTERVAL`) meanwhile.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use herald_core::Head;
use tokio::sync::{oneshot, watch};
use tokio_postgres::{AsyncMessage, Config, NoTls};

pub(crate) struct Listener {
    pub(crate) pg: Config,
    pub(crate) channel: String,
    pub(crate) instance: String,
    pub(crate) head: Arc<watch::Sender<Head>>,
}

impl Listener {
    /// Runs until `stop` fires (or its sender is dropped: the store was dropped).
    pub(crate) async fn run(self, mut stop: oneshot::Receiver<()>) {
        let mut failures = 0u32;
        loop {
            tokio::select! {
                _ = &mut stop => return,
                outcome = self.listen_once() => {
                    match outcome {
                        Ok(()) => failures = 0,
                        Err(e) => {
                            failures = failures.saturating_add(1);
                            tracing::warn!(error = %e, "herald-postgres listener lost its connection; reconnecting");
                        }
                    }
                }
            }
            // Something may have been committed while we were not listening: wake followers to re-read.
            self.head.send_modify(|h| h.commits += 1);
            // Back off before reconnecting (a retry delay, not synchronisation).
            let backoff = Duration::from_millis(100 * u64::from(failures.clamp(1, 50)));
            tokio::select! {
                _ = &mut stop => return,
                () = tokio::time::sleep(backoff) => {}
            }
        }
    }

    /// Connects, listens, and relays notifications until the connection ends.
    async fn listen_once(&self) -> Result<(), String> {
        let (client, mut connection) = self.pg.connect(NoTls).await.map_err(|e| e.to_string())?;
        let (tx, mut messages) = futures::channel::mpsc::unbounded();
        let driver = futures::stream::poll_fn(move |cx| connection.poll_message(cx))
            .map(Ok)
            .forward(tx);
        let driver = tokio::spawn(driver);
        let result = async {
            client
                .batch_execute(&format!("LISTEN \"{}\"", self.channel))
                .await
                .map_err(|e| e.to_string())?;
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(n)) => self.on_notification(n.payload()),
                    Ok(_) => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
            Err("listener connection closed".to_owned())
        }
        .await;
        driver.abort();
        drop(client);
        result
    }

    fn on_notification(&self, payload: &str) {
        let Some((instance, position)) = payload.split_once(' ') else {
            return;
        };
        if instance == self.instance {
            return;
        }
        let position: u64 = position.parse().unwrap_or(0);
        self.head.send_modify(|h| {
            h.position = h.position.max(position);
            h.commits += 1;
        });
    }
}
