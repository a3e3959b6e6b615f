//! [`SqliteCheckpointStore`]: subscription checkpoints and dynamic group membership in the event store's
//! file, one transaction per save or heartbeat, shared by every process that opens the file.

use std::path::Path;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use super::{Db, db_error};
use crate::checkpoint::CheckpointStore;
use crate::error::{EsError, Result};
use crate::group::{GroupState, GroupView, Heartbeat, Lease, MembershipStore};
use crate::lease::{self, Fence, LeaseGrant, LeaseRecord};

/// Checkpoints in table `herald_es_checkpoints` of a Herald SQLite database, with the runners' leases and
/// fencing tokens (`herald_es_leases`); also the [`MembershipStore`] of dynamic consumer groups (tables
/// `herald_es_groups`, `herald_es_group_members` and `herald_es_group_fences`, one transaction per heartbeat,
/// shared by every process opening the file).
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

    /// On a connection already open (a projection's: its lease operations share it).
    pub(super) fn on(db: Db) -> Self {
        SqliteCheckpointStore { db }
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

    async fn save_fenced(&self, name: &str, cursor: u64, fence: &Fence) -> Result<()> {
        let (name, fence) = (name.to_owned(), fence.clone());
        self.db
            .call(move |c| {
                let err = db_error("saving a checkpoint");
                // Immediate: the database's write lock is taken before the check, so no grant can slip
                // between the check and the write.
                let tx = c
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(&err)?;
                check_fence(&tx, &fence)?;
                save_checkpoint(&tx, &name, cursor).map_err(&err)?;
                tx.commit().map_err(&err)
            })
            .await
    }

    async fn acquire_lease(
        &self,
        name: &str,
        owner: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<LeaseGrant> {
        let (name, owner) = (name.to_owned(), owner.to_owned());
        self.db
            .call(move |c| {
                let err = db_error("acquiring a lease");
                let tx = c
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(&err)?;
                let current = tx
                    .query_row(
                        "SELECT owner, token, expires_at FROM herald_es_leases WHERE name = ?1",
                        [&name],
                        |r| {
                            Ok(LeaseRecord {
                                owner: r.get(0)?,
                                token: from_sql(r.get(1)?),
                                expires_at: r.get(2)?,
                            })
                        },
                    )
                    .optional()
                    .map_err(&err)?;
                let record = match lease::grant(current.as_ref(), &owner, now, expires_at) {
                    Ok(record) => record,
                    Err(held) => return Ok(held),
                };
                tx.execute(
                    "INSERT INTO herald_es_leases (name, owner, token, expires_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, token = excluded.token,
                         expires_at = excluded.expires_at",
                    params![name, record.owner, to_sql(record.token), record.expires_at],
                )
                .map_err(&err)?;
                tx.commit().map_err(&err)?;
                Ok(LeaseGrant::Granted {
                    token: record.token,
                })
            })
            .await
    }

    async fn renew_lease(&self, name: &str, token: u64, expires_at: i64) -> Result<()> {
        let name = name.to_owned();
        self.db
            .call(move |c| {
                let renewed = c
                    .execute(
                        "UPDATE herald_es_leases SET expires_at = ?3 WHERE name = ?1 AND token = ?2",
                        params![name, to_sql(token), expires_at],
                    )
                    .map_err(db_error("renewing a lease"))?;
                if renewed == 0 {
                    return Err(EsError::Fenced { name, token });
                }
                Ok(())
            })
            .await
    }

    async fn release_lease(&self, name: &str, token: u64) -> Result<()> {
        let name = name.to_owned();
        self.db
            .call(move |c| {
                c.execute(
                    "UPDATE herald_es_leases SET expires_at = ?3 WHERE name = ?1 AND token = ?2",
                    params![name, to_sql(token), i64::MIN],
                )
                .map_err(db_error("releasing a lease"))?;
                Ok(())
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

/// Refuses (with [`EsError::Fenced`]) a write whose fence no longer holds. Call it inside the write's
/// immediate transaction.
pub(super) fn check_fence(c: &Connection, fence: &Fence) -> Result<()> {
    let err = db_error("checking a fencing token");
    match fence {
        Fence::Lease { name, token } => {
            let current: Option<i64> = c
                .query_row(
                    "SELECT token FROM herald_es_leases WHERE name = ?1",
                    [name],
                    |r| r.get(0),
                )
                .optional()
                .map_err(&err)?;
            lease::check_token(name, current.map(from_sql), *token)
        }
        Fence::Generation { group, generation } => {
            let settled: Option<i64> = c
                .query_row(
                    "SELECT settled FROM herald_es_group_fences WHERE name = ?1",
                    [group],
                    |r| r.get(0),
                )
                .optional()
                .map_err(&err)?;
            lease::check_generation(group, settled.map_or(0, from_sql), *generation)
        }
    }
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
    state.settled = tx
        .query_row(
            "SELECT settled FROM herald_es_group_fences WHERE name = ?1",
            [group],
            |r| r.get::<_, i64>(0),
        )
        .optional()
        .map_err(&err)?
        .map_or(0, from_sql);
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
        "INSERT INTO herald_es_group_fences (name, settled) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET settled = excluded.settled",
        params![group, to_sql(state.settled)],
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
