//! One dynamic group member's run: a heartbeat task that renews its lease and reports the view, and the
//! member loop that waits for a settled generation, takes over from the previous one (see
//! `generation`) and handles its share of the streams until the generation changes.

use herald_core::{Clock, EventStoreExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::generation::{handover, member_key};
use super::{Assignment, DynamicGroup, GroupView, Heartbeat};
use crate::error::{EsError, Result};
use crate::lease::Fence;
use crate::subscription::{EventHandler, Feed, GroupMember, Subscription, SubscriptionStats};
#[derive(Debug, Clone)]
pub(super) enum Beat {
    Pending,
    /// `lease_until`: µs on the group clock.
    Ok {
        view: GroupView,
        lease_until: i64,
    },
    Failed(String),
}

/// Aborts the heartbeat task when the run is dropped (its task aborted, or a panic): the member then simply
/// stops renewing and is dropped when its lease ends, like a crashed process.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(super) async fn heartbeat_loop(
    group: DynamicGroup,
    name: String,
    mut acknowledged: watch::Receiver<u64>,
    out: watch::Sender<Beat>,
    stop: CancellationToken,
) {
    let lease = group.lease_micros();
    let every = group.heartbeat_interval();
    // When this member first saw a generation newer than the one it acknowledged, on the group clock.
    let mut behind_since: Option<i64> = None;
    let mut last_acked = 0;
    loop {
        let now = group.clock.now_micros();
        let acked = *acknowledged.borrow_and_update();
        if acked != last_acked {
            // It acknowledged since: whatever it was behind on, it has caught up with.
            behind_since = None;
            last_acked = acked;
        }
        if behind_since.is_some_and(|since| now.saturating_sub(since) >= lease) {
            // Not acknowledging for a whole lease means the member is stuck (a handler call or a checkpoint
            // save that does not return): stop renewing, so the group drops this member when its lease ends
            // instead of waiting for it forever. Renewal resumes with its next acknowledgement.
            tracing::warn!(group = %name, member = %group.member, "group member has not acknowledged a new generation for a lease; letting its lease end");
            tokio::select! {
                biased;
                () = stop.cancelled() => return,
                changed = acknowledged.changed() => if changed.is_err() { return },
            }
            continue;
        }
        let beat = Heartbeat {
            member: group.member.clone(),
            now,
            expires_at: now.saturating_add(lease),
            acknowledged: acked,
        };
        match group.store.heartbeat(&name, &beat).await {
            Ok(view) => {
                if view.generation <= acked {
                    behind_since = None;
                } else if behind_since.is_none() {
                    behind_since = Some(now);
                }
                out.send_replace(Beat::Ok {
                    view,
                    lease_until: beat.expires_at,
                });
            }
            Err(e) => {
                out.send_replace(Beat::Failed(e.to_string()));
                return;
            }
        }
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            // An acknowledgement is sent at once: the rest of the group is waiting for it.
            changed = acknowledged.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// Why a member stopped handling in a generation.
enum Stop {
    /// The generation changed or this member's lease ran out: back to waiting for a settled generation.
    Rebalance,
    /// Cancelled by the caller.
    Cancelled,
}

/// [`Subscription::run`] for a dynamic group member.
pub(crate) async fn run<H: EventHandler + ?Sized>(
    sub: &Subscription,
    group: &DynamicGroup,
    handler: &H,
    cancel: &CancellationToken,
) -> Result<SubscriptionStats> {
    let (ack_tx, ack_rx) = watch::channel(0u64);
    let (beat_tx, beat_rx) = watch::channel(Beat::Pending);
    let stop = CancellationToken::new();
    let mut beats = AbortOnDrop(tokio::spawn(heartbeat_loop(
        group.clone(),
        sub.name().to_owned(),
        ack_rx,
        beat_tx,
        stop.clone(),
    )));
    let mut stats = SubscriptionStats::default();
    let result = member_loop(sub, group, handler, cancel, &ack_tx, beat_rx, &mut stats).await;
    // Stop heartbeats (letting one in flight finish) before leaving, so none re-registers this member after.
    stop.cancel();
    let _ = (&mut beats.0).await;
    let left = group.store.leave(sub.name(), &group.member).await;
    sub.assignment_sender().send_replace(Assignment::Idle);
    tracing::debug!(subscription = %sub.name(), member = %group.member, ?stats, "group member stopped");
    let stats = result?;
    left?;
    Ok(stats)
}

pub(super) fn current(beat: &watch::Receiver<Beat>, generation: u64, clock: &dyn Clock) -> bool {
    match &*beat.borrow() {
        Beat::Ok { view, lease_until } => {
            view.generation == generation && clock.now_micros() < *lease_until
        }
        Beat::Pending | Beat::Failed(_) => false,
    }
}

async fn member_loop<H: EventHandler + ?Sized>(
    sub: &Subscription,
    group: &DynamicGroup,
    handler: &H,
    cancel: &CancellationToken,
    ack: &watch::Sender<u64>,
    mut beat: watch::Receiver<Beat>,
    stats: &mut SubscriptionStats,
) -> Result<SubscriptionStats> {
    let name = sub.name();
    let checkpoints = sub.checkpoint_store();
    let clock = &*group.clock;
    // The generation in which the store fenced this member: a later one settled without it, so the view
    // showing this generation as settled is stale; it waits for a newer one.
    let mut fenced_in: Option<u64> = None;
    loop {
        // Wait, handling nothing, for a settled generation this member is part of.
        let (generation, member) = loop {
            let state = beat.borrow_and_update().clone();
            match state {
                Beat::Failed(message) => {
                    return Err(EsError::Storage {
                        what: "group heartbeat",
                        message,
                    });
                }
                Beat::Pending => {}
                Beat::Ok { view, lease_until } => {
                    if view.generation > *ack.borrow() {
                        // Nothing is being handled here: acknowledge at once.
                        ack.send_replace(view.generation);
                        sub.assignment_sender()
                            .send_replace(Assignment::Rebalancing {
                                generation: view.generation,
                            });
                    } else if view.settled
                        && view.generation == *ack.borrow()
                        && fenced_in != Some(view.generation)
                        && clock.now_micros() < lease_until
                        && let Some(index) = view.members.iter().position(|m| *m == group.member)
                    {
                        let member = GroupMember::new(
                            u32::try_from(index).unwrap_or(u32::MAX),
                            u32::try_from(view.members.len()).unwrap_or(u32::MAX),
                        )?;
                        break (view.generation, member);
                    }
                }
            }
            tokio::select! {
                biased;
                () = cancel.cancelled() => return Ok(*stats),
                changed = beat.changed() => if changed.is_err() {
                    return Err(EsError::Storage { what: "group heartbeat", message: "the heartbeat task ended".into() });
                },
            }
        };

        let handover = match handover(&*checkpoints, name, generation, member.count()).await {
            Ok(handover) => handover,
            Err(e) if e.is_fenced() => {
                tracing::warn!(subscription = %name, member = %group.member, generation, "a later generation settled before this member started; rejoining");
                fenced_in = Some(generation);
                continue;
            }
            Err(e) => return Err(e),
        };
        // A member paused past its lease (dropped from the group, a later generation settled without it)
        // must not move its checkpoint when it resumes: the later generation's members may have started
        // from it.
        let fence = Fence::Generation {
            group: name.to_owned(),
            generation,
        };
        let key = member_key(name, generation, member);
        // A member that stopped and resumes in the same generation (its lease lapsed and was renewed before
        // anyone noticed) continues from its own checkpoint.
        let start = checkpoints
            .load(&key)
            .await?
            .unwrap_or(0)
            .max(handover.start);
        sub.progress_sender()
            .send_replace((start > 0).then_some(start));
        sub.assignment_sender()
            .send_replace(Assignment::Active { generation, member });
        tracing::info!(subscription = %name, member = %group.member, generation, index = member.index(), count = member.count(), start, "group member handling");
        let mut query = sub.query().clone();
        query.from = Some(start + 1);
        let batch_size = query.batch_size;
        let mut feed = Feed::new(sub.event_store().follow(query));
        let stop = 'generation: loop {
            let batch = tokio::select! {
                biased;
                batch = feed.next_batch(batch_size, cancel) => batch?,
                changed = beat.changed() => {
                    if changed.is_err() || !current(&beat, generation, clock) {
                        break 'generation Stop::Rebalance;
                    }
                    continue 'generation;
                }
            };
            let Some(batch) = batch else {
                break Stop::Cancelled;
            };
            let mut done = None;
            let mut failure = None;
            let mut stop = None;
            for event in &batch {
                // Before every event: a new generation or a lapsed lease means another member may own this
                // stream now or soon.
                if !current(&beat, generation, clock) {
                    stop = Some(Stop::Rebalance);
                    break;
                }
                if member.owns(&event.stream) && !handover.already_handled(event) {
                    if let Err(e) = handler.handle(event).await {
                        failure = Some(EsError::Handler {
                            handler: key.clone(),
                            event_id: event.id,
                            message: e.to_string(),
                        });
                        break;
                    }
                    stats.handled += 1;
                } else {
                    stats.skipped += 1;
                }
                done = Some(event.position);
                if cancel.is_cancelled() {
                    stop = Some(Stop::Cancelled);
                    break;
                }
            }
            if let Some(cursor) = done {
                match checkpoints.save_fenced(&key, cursor, &fence).await {
                    Ok(()) => {
                        stats.cursor = Some(cursor);
                        sub.progress_sender().send_replace(Some(cursor));
                    }
                    Err(e) if e.is_fenced() => {
                        tracing::warn!(subscription = %name, member = %group.member, generation, "checkpoint refused: a later generation settled without this member; rejoining");
                        fenced_in = Some(generation);
                        break Stop::Rebalance;
                    }
                    Err(e) => return Err(e),
                }
            }
            if let Some(e) = failure {
                return Err(e);
            }
            if let Some(stop) = stop {
                break stop;
            }
        };
        match stop {
            Stop::Cancelled => return Ok(*stats),
            Stop::Rebalance => {
                tracing::info!(subscription = %name, member = %group.member, generation, "group member stopped for a rebalance");
            }
        }
    }
}
