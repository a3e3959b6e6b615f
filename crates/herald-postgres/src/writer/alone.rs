//! One round trip when the writer is alone.
//!
//! A writer whose last commit is still the end of the log (the common case of one application process)
//! skips the look-up round trip: it remembers the end of the log, its clock and the state of the streams it
//! has seen, and decides the batch from that (a stream it never saw is assumed to be in the state an append's
//! `NoStream` or `Exact(v)` names). It sends `BEGIN`, the lock, a guard statement, the writes and `COMMIT` at
//! once. The guard runs under the lock and fails the transaction (so the writes fail and `COMMIT` rolls back)
//! unless the log still ends where the writer left it and every stream of the batch is as it believes; the
//! batch then takes the two round trips, and the next look-up tells whether the writer is alone again. A
//! batch with links or deletes, with an `Any`/`StreamExists` append to a stream the writer does not know, or
//! in which the writer's own decision refuses a request always takes the two round trips.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use herald_core::{ExpectedVersion, Result};

use super::plan::{Known, Plan, StreamState, Tail};
use super::statements::{Connection, prepare_hook_statements};
use super::write::{Step, Written};
use super::{Attempt, Outcome, Request, WriteRequest, Writer, failed_step};

/// What a writer's last commit left in the database: enough to decide the next batch without looking
/// anything up, when nobody else writes (the guard statement checks that under the lock).
pub(crate) struct Remembered {
    pub(super) last_position: u64,
    /// `recorded_at` of the last event.
    pub(super) last_recorded: i64,
    pub(super) streams: HashMap<String, StreamState>,
    /// The last look-up found the log where this writer had left it: it is probably the only writer.
    pub(super) alone: bool,
}

/// Most stream states a writer remembers; beyond it, it starts over (the next batches look their streams up).
const MAX_REMEMBERED_STREAMS: usize = 65_536;

impl Remembered {
    /// Takes in a committed batch: the end of the log, its clock and the states of the batch's streams.
    pub(super) fn update(
        remembered: &mut Option<Remembered>,
        last_position: u64,
        last_recorded: i64,
        streams: HashMap<String, StreamState>,
        alone: bool,
    ) {
        let memory = remembered.get_or_insert_with(|| Remembered {
            last_position,
            last_recorded,
            streams: HashMap::new(),
            alone,
        });
        // Another writer may have changed any stream: keep only what this batch saw.
        if !alone || memory.streams.len() + streams.len() > MAX_REMEMBERED_STREAMS {
            memory.streams.clear();
        }
        memory.streams.extend(streams);
        memory.last_position = last_position;
        memory.last_recorded = last_recorded;
        memory.alone = alone;
    }
}

impl Writer {
    /// The one-round-trip path: when this writer was alone at its last commit and the batch holds only
    /// appends whose streams it remembers (or whose expectation names the state: `NoStream`, `Exact`), it
    /// decides from what it remembers and sends lock, guard, writes and `COMMIT` at once. The guard fails the
    /// transaction if anything it assumed is not so; then `None`, and the caller takes the two round trips.
    pub(super) async fn attempt_alone(
        &mut self,
        conn: &Connection,
        batch: &mut [Request],
        settled: &mut Vec<Option<Outcome>>,
    ) -> Result<Option<Attempt>> {
        let Some(memory) = self.remembered.as_ref().filter(|m| m.alone) else {
            return Ok(None);
        };
        // Fewer requests than last time: the others are probably on their way. The look-up round trip lets
        // them join this commit; without it, concurrent writers split into alternating small batches
        // (measured, 16 tasks: 24 400 → 19 000 appends/s).
        if batch.len() < self.last_batch {
            return Ok(None);
        }
        settled.resize_with(batch.len(), || None);
        let mut known = Known::default();
        for request in batch.iter() {
            let WriteRequest::Append {
                stream, expected, ..
            } = request
            else {
                return Ok(None);
            };
            if known.streams.contains_key(stream) {
                continue;
            }
            let state = match (memory.streams.get(stream), expected) {
                (Some(state), _) => state.clone(),
                // An append that names the state it expects is usually right; the guard checks it.
                (None, ExpectedVersion::NoStream) => StreamState::default(),
                (None, ExpectedVersion::Exact(v)) => StreamState {
                    version: Some(*v),
                    deleted_through: 0,
                },
                (None, _) => return Ok(None),
            };
            known.streams.insert(stream.clone(), state);
        }
        let tail = Tail {
            next_position: memory.last_position + 1,
            recorded_at: memory.last_recorded,
        };
        let plan = Plan::decide(batch, settled, &known, &tail, &self.hooks);
        // A refusal may come from a stale memory (and needs the ids looked up): take the two round trips.
        let all_accepted = plan
            .outcomes
            .iter()
            .all(|o| o.as_ref().is_none_or(Outcome::succeeded));
        if !all_accepted || plan.writes_nothing() {
            return Ok(None);
        }
        let Ok(hook_statements) = prepare_hook_statements(conn, &plan.hooks).await else {
            // Outside a transaction: nothing to undo. The two-round-trip path finds which append it was.
            return Ok(None);
        };
        let guard = Guard {
            last_position: memory.last_position,
            last_recorded: memory.last_recorded,
            streams: &known.streams,
        };
        match plan.write(conn, &hook_statements, Some(&guard)).await? {
            Written::Committed { clock } => {
                self.counters.one_round_trip.fetch_add(1, Ordering::Relaxed);
                Remembered::update(
                    &mut self.remembered,
                    plan.last_position,
                    clock.unwrap_or(tail.recorded_at),
                    plan.streams,
                    true,
                );
                Ok(Some(Attempt::Committed {
                    last_position: plan.last_position,
                    outcomes: plan.outcomes,
                }))
            }
            Written::Failed(Step::Guard, _) => {
                // Someone else wrote: look everything up this time.
                if let Some(m) = self.remembered.as_mut() {
                    m.alone = false;
                }
                Ok(None)
            }
            Written::Failed(step, e) => failed_step(step, e, batch, settled, false).map(Some),
        }
    }
}

/// What the one-round-trip path assumed, for the guard statement to check.
pub(super) struct Guard<'a> {
    pub(super) last_position: u64,
    pub(super) last_recorded: i64,
    /// The batch's streams as they were before it.
    pub(super) streams: &'a HashMap<String, StreamState>,
}
