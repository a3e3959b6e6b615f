//! Cross-process wake-ups: a dedicated connection that `LISTEN`s on one channel and hands what arrives to a
//! [`Channel`]: the store's live feed ([`Listener`], which bumps the head when another process or store
//! handle commits) and the job queue's wake-ups (`jobs::wake`) both run this loop.
//!
//! Writers `NOTIFY` after their `COMMIT` returned (on a connection of their own, before acknowledging the
//! appends), so by the time a notification arrives its events are visible to every new snapshot. The payload
//! is the writer's instance id and the new end of the log; notifications of different writers may arrive in
//! any order, so the head only ever moves forward (`max`); the listener skips its own handle's notifications
//! (its writer already moved the head). If the connection breaks, the loop reconnects with a backoff and tells
//! its channel once, so followers re-read whatever they may have missed; followers also poll
//! (`FOLLOW_POLL_INTERVAL`) meanwhile.

use std::sync::Arc;

use futures::StreamExt;
use herald_core::Head;
use tokio::sync::{oneshot, watch};
use tokio_postgres::{AsyncMessage, Config};

/// What a listening loop does with its channel's traffic.
pub(crate) trait Channel: Send + Sync + 'static {
    /// `LISTEN` succeeded on a new connection.
    fn listening(&self);
    /// A notification arrived with this payload.
    fn notified(&self, payload: &str);
    /// The connection was lost or could not be opened: notifications may have been missed meanwhile.
    fn lost(&self);
}

/// Keeps a connection `LISTEN`ing on `channel` until `stop` fires (or its sender is dropped: the owner was
/// dropped), reconnecting with a backoff. `ready`, when given, gets the first connection attempt's outcome,
/// so an owner can return from its open once notifications reach it.
pub(crate) async fn listen(
    pg: Config,
    channel: String,
    handler: impl Channel,
    mut stop: oneshot::Receiver<()>,
    mut ready: Option<oneshot::Sender<Result<(), String>>>,
) {
    let reconnect = herald_core::Backoff::reconnect();
    let mut failures = 0u32;
    loop {
        tokio::select! {
            _ = &mut stop => return,
            outcome = listen_once(&pg, &channel, &handler, &mut ready) => {
                match outcome {
                    Ok(()) => failures = 0,
                    Err(e) => {
                        failures = failures.saturating_add(1);
                        if let Some(ready) = ready.take() {
                            let _ = ready.send(Err(e.clone()));
                        }
                        tracing::warn!(error = %e, channel, "herald-postgres listener lost its connection; reconnecting");
                    }
                }
            }
        }
        handler.lost();
        // Back off before reconnecting (a retry delay, not synchronisation).
        tokio::select! {
            _ = &mut stop => return,
            () = tokio::time::sleep(reconnect.delay(failures)) => {}
        }
    }
}

/// Connects, listens, and relays notifications until the connection ends.
async fn listen_once(
    pg: &Config,
    channel: &str,
    handler: &impl Channel,
    ready: &mut Option<oneshot::Sender<Result<(), String>>>,
) -> Result<(), String> {
    let (client, mut connection) = crate::schema::open_connection(pg)
        .await
        .map_err(|e| e.to_string())?;
    let (tx, mut messages) = futures::channel::mpsc::unbounded();
    let driver = futures::stream::poll_fn(move |cx| connection.poll_message(cx))
        .map(Ok)
        .forward(tx);
    let driver = tokio::spawn(driver);
    let result = async {
        client
            .batch_execute(&format!("LISTEN \"{channel}\""))
            .await
            .map_err(|e| e.to_string())?;
        handler.listening();
        if let Some(ready) = ready.take() {
            let _ = ready.send(Ok(()));
        }
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => handler.notified(n.payload()),
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

/// The store's live feed: moves the head when another process or store handle commits.
pub(crate) struct Listener {
    pub(crate) pg: Config,
    pub(crate) channel: String,
    pub(crate) instance: String,
    pub(crate) head: Arc<watch::Sender<Head>>,
}

impl Listener {
    /// Runs until `stop` fires (or its sender is dropped: the store was dropped).
    pub(crate) async fn run(self, stop: oneshot::Receiver<()>) {
        let feed = HeadFeed {
            instance: self.instance,
            head: self.head,
        };
        listen(self.pg, self.channel, feed, stop, None).await;
    }
}

struct HeadFeed {
    instance: String,
    head: Arc<watch::Sender<Head>>,
}

impl Channel for HeadFeed {
    fn listening(&self) {}

    fn notified(&self, payload: &str) {
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

    fn lost(&self) {
        // Something may have been committed while we were not listening: wake followers to re-read.
        self.head.send_modify(|h| h.commits += 1);
    }
}
