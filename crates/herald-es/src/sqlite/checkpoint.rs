//! [`SqliteCheckpointStore`]: subscription checkpoints and dynamic group membership in the event store's
//! file, one transaction per save or heartbeat, shared by every process that opens the file.

use std::path::Path;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use super::{Db, db_error};
use crate::checkpoint::CheckpointStore;
use crate::error::{EsError, Result};
use crate::group::{GroupState, GroupView, Heartbeat, Lease, MembershipStore};

/// Checkpoints in table `herald_es_checkpoints` of a Herald SQLite database; also the [`MembershipStore`] of
/// dynamic consumer groups (tables `herald_es_groups` and `herald_es_group_members`, one transaction per
/// heartbeat, shared by every process opening the file).
#[derive(Clone)]
pub struct SqliteCheckpointStore {
    db: Db,
}

impl std::fmt::Debug for SqliteCheckpointStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteCheckpointStore")
    }
}

impl SqliteCheckpointStore {
    /// Opens the store in the Herald database at `path` (which must exist).
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let db = tokio::task::spawn_blocking(move || Db::open(&path))
            .await
            .map_err(|e| EsError::storage("SQLite task", e))??;
        Ok(SqliteCheckpointStore { db })
    }
}

#[async_trait]
impl CheckpointStore for SqliteCheckpointStore {
    async fn load(&self, name: &str) -> Result<Option<u64>> {
        let name = name.to_owned();
        self.db.call(move |c| load_checkpoint(c, &name)).await
    }

    async fn save(&self, name: &str, cursor: u64) -> Result<()> {
        let name = name.to_owned();
        self.db
            .call(move |c| {
                save_checkpoint(c, &name, cursor).map_err(db_error("saving a checkpoint"))
            })
            .await
    }

    async fn delete(&self, name: &str) -> Result<()> {
        let name = name.to_owned();
        self.db
            .call(move |c| {
                c.execute("DELETE FROM herald_es_checkpoints WHERE name = ?1", [name])
                    .map_err(db_error("deleting a checkpoint"))?;
                Ok(())
            })
            .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let prefix = prefix.to_owned();
        self.db
            .call(move |c| {
                let err = db_error("listing checkpoints");
                let mut stmt = c
                    .prepare(
                        "SELECT name, cursor FROM herald_es_checkpoints WHERE substr(name, 1, length(?1)) = ?1 ORDER BY name",
                    )
                    .map_err(&err)?;
                let rows = stmt
                    .query_map([prefix], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)))
                    .map_err(&err)?;
                rows.collect::<rusqlite::Result<Vec<_>>>().map_err(&err)
            })
            .await
    }
}

pub(super) fn load_checkpoint(c: &Connection, name: &str) -> Result<Option<u64>> {
    c.query_row(
        "SELECT cursor FROM herald_es_checkpoints WHERE name = ?1",
        [name],
        |r| r.get::<_, i64>(0),
    )
    .optional()
    .map(|v| v.map(|v| v as u64))
    .map_err(db_error("loading a checkpoint"))
}

pub(super) fn save_checkpoint(c: &Connection, name: &str, cursor: u64) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO herald_es_checkpoints (name, cursor) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET cursor = excluded.cursor,
             updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
        params![name, cursor as i64],
    )?;
    Ok(())
}

pub(super) fn to_sql(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(super) fn from_sql(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn load_group(tx: &Transaction<'_>, group: &str) -> Result<GroupState> {
    let err = db_error("loading a consumer group");
    let row: Option<(i64, String)> = tx
        .query_row(
            "SELECT generation, members FROM herald_es_groups WHERE name = ?1",
            [group],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(&err)?;
    let mut state = GroupState::default();
    if let Some((generation, members)) = row {
        state.generation = from_sql(generation);
        state.members = serde_json::from_str(&members)
            .map_err(|e| EsError::storage("loading a consumer group", e))?;
    }
    let mut stmt = tx
        .prepare(
            "SELECT member, expires_at, acknowledged FROM herald_es_group_members WHERE group_name = ?1",
        )
        .map_err(&err)?;
    let rows = stmt
        .query_map([group], |r| {
            Ok((
                r.get::<_, String>(0)?,
                Lease {
                    expires_at: r.get(1)?,
                    acknowledged: from_sql(r.get(2)?),
                },
            ))
        })
        .map_err(&err)?;
    for row in rows {
        let (member, lease) = row.map_err(&err)?;
        state.leases.insert(member, lease);
    }
    Ok(state)
}

fn store_group(tx: &Transaction<'_>, group: &str, state: &GroupState) -> Result<()> {
    let err = db_error("saving a consumer group");
    let members = serde_json::to_string(&state.members)
        .map_err(|e| EsError::storage("saving a consumer group", e))?;
    tx.execute(
        "INSERT INTO herald_es_groups (name, generation, members) VALUES (?1, ?2, ?3)
         ON CONFLICT (name) DO UPDATE SET generation = excluded.generation, members = excluded.members",
        params![group, to_sql(state.generation), members],
    )
    .map_err(&err)?;
    tx.execute(
        "DELETE FROM herald_es_group_members WHERE group_name = ?1",
        [group],
    )
    .map_err(&err)?;
    for (member, lease) in &state.leases {
        tx.execute(
            "INSERT INTO herald_es_group_members (group_name, member, expires_at, acknowledged)
             VALUES (?1, ?2, ?3, ?4)",
            params![group, member, lease.expires_at, to_sql(lease.acknowledged)],
        )
        .map_err(&err)?;
    }
    Ok(())
}

/// Loads a group, applies `f` and stores it, in one immediate (write-locked) transaction.
fn update_group<R>(
    c: &mut Connection,
    group: &str,
    f: impl FnOnce(&mut GroupState) -> R,
) -> Result<R> {
    let err = db_error("updating a consumer group");
    let tx = c
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(&err)?;
    let mut state = load_group(&tx, group)?;
    let out = f(&mut state);
    store_group(&tx, group, &state)?;
    tx.commit().map_err(&err)?;
    Ok(out)
}

#[async_trait]
impl MembershipStore for SqliteCheckpointStore {
    async fn heartbeat(&self, group: &str, beat: &Heartbeat) -> Result<GroupView> {
        let (group, beat) = (group.to_owned(), beat.clone());
        self.db
            .call(move |c| {
                update_group(c, &group, |state| {
                    state.beat(&beat);
                    state.view()
                })
            })
            .await
    }

    async fn leave(&self, group: &str, member: &str) -> Result<()> {
        let (group, member) = (group.to_owned(), member.to_owned());
        self.db
            .call(move |c| update_group(c, &group, |state| state.leave(&member)))
            .await
    }
}
