//! Round trip 2: a decided batch's net writes (deletes, stream versions, all events in one `unnest` insert,
//! links), its hook statements and `COMMIT`, sent as one pipeline; on the one-round-trip path `BEGIN`, the
//! lock and the guard go first in the same pipeline. A failed statement aborts the transaction, so the
//! first failure is the cause; which step it was tells the loop what it means (a stale memory, a stored id,
//! a hook's statement, or a failure of the batch).

use std::collections::HashMap;

use herald_core::{Clock, Error, Result, SystemClock};
use tokio_postgres::Statement;
use tokio_postgres::types::ToSql;

use super::alone::Guard;
use super::plan::Plan;
use super::statements::Connection;
use crate::schema::backend;

/// How the write round trip ended.
pub(super) enum Written {
    /// Committed; with a guard, the clock its events got.
    Committed { clock: Option<i64> },
    /// This statement failed first (the others failed because the transaction was aborted by then).
    Failed(Step, tokio_postgres::Error),
}

/// Which part of the write pipeline a statement is (to know what a failure means).
#[derive(Clone, Copy)]
pub(super) enum Step {
    /// The one-round-trip path's check: the writer's memory was stale.
    Guard,
    Store,
    Events,
    /// A statement of the hooks of the batch's request at this index.
    Hook(usize),
}

impl Plan<'_> {
    /// Round trip 2: the net writes, the hook statements and `COMMIT`, pipelined. `Some` names the first
    /// statement that failed (the `COMMIT` then rolled everything back); `Err` is any other failure.
    pub(super) async fn write(
        &self,
        conn: &Connection,
        hook_statements: &HashMap<String, Statement>,
        guard: Option<&Guard<'_>>,
    ) -> Result<Written> {
        let st = &conn.statements;
        let deleted: (Vec<&str>, Vec<i64>) = self.deleted.iter().map(|(s, p)| (*s, *p)).unzip();
        let upserts: (Vec<&str>, Vec<i64>) = self
            .versions
            .iter()
            .filter_map(|(s, v)| v.map(|v| (*s, v as i64)))
            .unzip();
        let removed: Vec<&str> = self
            .versions
            .iter()
            .filter(|(_, v)| v.is_none())
            .map(|(s, _)| *s)
            .collect();
        let links = (
            self.links.iter().map(|l| l.0).collect::<Vec<_>>(),
            self.links.iter().map(|l| l.1).collect::<Vec<_>>(),
            self.links.iter().map(|l| l.2).collect::<Vec<_>>(),
        );
        let e = &self.events;
        let enqueued_at = SystemClock.now_micros();
        let mut steps: Vec<(Step, &Statement, Vec<&(dyn ToSql + Sync)>)> = Vec::new();
        if !deleted.0.is_empty() {
            // First: the deleted streams' old links go; links made after the delete are inserted below.
            steps.push((Step::Store, &st.delete_links, vec![&deleted.0]));
            steps.push((
                Step::Store,
                &st.upsert_deleted,
                vec![&deleted.0, &deleted.1],
            ));
        }
        if !removed.is_empty() {
            steps.push((Step::Store, &st.delete_streams, vec![&removed]));
        }
        if !upserts.0.is_empty() {
            steps.push((
                Step::Store,
                &st.upsert_streams,
                vec![&upserts.0, &upserts.1],
            ));
        }
        if !e.ids.is_empty() {
            steps.push((
                Step::Events,
                &st.insert_events,
                vec![
                    &e.positions,
                    &e.ids,
                    &e.streams,
                    &e.versions,
                    &e.categories,
                    &e.types,
                    &e.data,
                    &e.metadata,
                    &e.recorded_at,
                ],
            ));
            // One delivery statement for all the batch's events, not one per append: it runs while the batch
            // holds the head-row lock every writer waits on (see `jobs/routes.rs`).
            steps.push((
                Step::Store,
                &st.deliver,
                vec![&e.streams, &e.ids, &e.types, &e.positions, &enqueued_at],
            ));
        }
        if !links.0.is_empty() {
            steps.push((
                Step::Store,
                &st.insert_links,
                vec![&links.0, &links.1, &links.2],
            ));
        }
        for (owner, writes) in &self.hooks {
            for statement in &writes.statements {
                let Some(prepared) = hook_statements.get(statement.sql.as_ref()) else {
                    return Err(Error::backend(
                        "internal: a hook statement was not prepared",
                    ));
                };
                let params = statement
                    .params
                    .iter()
                    .map(|p| p.as_ref() as &(dyn ToSql + Sync))
                    .collect();
                steps.push((Step::Hook(*owner), prepared, params));
            }
        }
        // The one-round-trip path opens the transaction here: lock and guard go first in the same pipeline.
        let guard_params = guard.map(|g| {
            let mut names = Vec::with_capacity(g.streams.len());
            let mut versions = Vec::with_capacity(g.streams.len());
            let mut throughs = Vec::with_capacity(g.streams.len());
            for (name, state) in g.streams {
                names.push(name.as_str());
                versions.push(state.version.map(|v| v as i64));
                throughs.push(state.deleted_through);
            }
            (
                g.last_recorded,
                g.last_position as i64,
                names,
                versions,
                throughs,
            )
        });
        let prelude = async {
            let Some((recorded, position, names, versions, throughs)) = &guard_params else {
                return Ok(None);
            };
            let params: [&(dyn ToSql + Sync); 5] = [recorded, position, names, versions, throughs];
            let (begun, locked, checked) = tokio::join!(
                conn.client.batch_execute("BEGIN"),
                conn.client.query_one(&st.lock_head, &[]),
                conn.client.query_one(&st.guard, &params),
            );
            begun.map_err(|e| (Step::Store, e))?;
            locked.map_err(|e| (Step::Store, e))?;
            let clock: i64 = checked.map_err(|e| (Step::Guard, e))?.get(0);
            Ok(Some(clock))
        };
        let (clock, results, committed) = tokio::join!(
            prelude,
            futures::future::join_all(
                steps
                    .iter()
                    .map(|(_, statement, params)| conn.client.execute(*statement, params))
            ),
            conn.client.batch_execute("COMMIT"),
        );
        // The first failure is the cause; the statements after it failed only because the transaction was
        // aborted by then.
        let clock = match clock {
            Ok(clock) => clock,
            Err((step, e)) => return Ok(Written::Failed(step, e)),
        };
        for ((step, _, _), result) in steps.iter().zip(results) {
            if let Err(e) = result {
                return Ok(Written::Failed(*step, e));
            }
        }
        committed.map_err(backend)?;
        Ok(Written::Committed { clock })
    }
}
