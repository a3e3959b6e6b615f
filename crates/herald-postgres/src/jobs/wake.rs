//! How idle workers learn that jobs may be runnable: the queue's listener ([`JobWakeups`], on the crate's
//! one `LISTEN` loop) signals [`JobQueue::wakeups`](herald_core::jobs::JobQueue::wakeups) on every
//! notification of the schema's job channel (`herald_jobs_{schema}`), and the [`notifier`] task sends the
//! coalesced `NOTIFY` that follows the queue's own enqueues and unblocking completions once they committed.

use std::sync::Arc;

use deadpool_postgres::Pool;
use tokio::sync::{Notify, oneshot};

use crate::listen::Channel;
use crate::schema::{backend, pool_error};

/// The job channel's traffic as wake-ups of this process's idle workers (of every queue: a notification
/// does not say which queue).
pub(super) struct JobWakeups(pub(super) Arc<Notify>);

impl Channel for JobWakeups {
    fn listening(&self) {
        // Jobs may have been enqueued before we listened.
        self.0.notify_waiters();
    }

    fn notified(&self, _payload: &str) {
        self.0.notify_waiters();
    }

    fn lost(&self) {
        self.0.notify_waiters();
    }
}

/// Sends one `NOTIFY` on the schema's job channel after enqueues or completions committed (however many asked
/// since the last one: `Notify` keeps a single permit), until `stop` fires or is dropped. A failed notify is
/// logged; idle workers then find the jobs at their next poll.
pub(super) async fn notifier(
    pool: Pool,
    sql: String,
    ready: Arc<Notify>,
    mut stop: oneshot::Receiver<()>,
) {
    loop {
        tokio::select! {
            _ = &mut stop => return,
            () = ready.notified() => {}
        }
        let sent = match pool.get().await {
            Ok(client) => client.execute(sql.as_str(), &[]).await.map_err(backend),
            Err(e) => Err(pool_error(e)),
        };
        if let Err(e) = sent {
            tracing::warn!(error = %e, "herald-postgres: NOTIFY of the job queue failed; workers will poll");
        }
    }
}
