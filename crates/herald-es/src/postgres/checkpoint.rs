//! [`PostgresCheckpointStore`]: checkpoints, the runners' leases and fencing tokens, and dynamic group
//! membership, in the store's schema; and the checkpoint and fencing statements the projection's
//! transactions share.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::Mutex;
use tokio_postgres::{Client, GenericClient, Transaction};

use super::{connect, from_sql, pg_error, to_sql};
use crate::checkpoint::CheckpointStore;
use crate::error::{EsError, Result};
use crate::group::{GroupState, GroupView, Heartbeat, Lease, MembershipStore};
use crate::lease::{self, Fence, LeaseGrant, LeaseRecord};

pub(super) async fn load_checkpoint(c: &impl GenericClient, name: &str) -> Result<Option<u64>> {
    let row = c
        .query_opt(
            "SELECT cursor FROM herald_es_checkpoints WHERE name = $1",
            &[&name],
        )
        .await
        .map_err(pg_error("loading a checkpoint"))?;
    Ok(row.map(|r| r.get::<_, i64>(0) as u64))
}

pub(super) async fn save_checkpoint(
    c: &impl GenericClient,
    name: &str,
    cursor: u64,
) -> std::result::Result<(), tokio_postgres::Error> {
    c.execute(
        "INSERT INTO herald_es_checkpoints (name, cursor) VALUES ($1, $2)
         ON CONFLICT (name) DO UPDATE SET cursor = excluded.cursor, updated_at = now()",
        &[&name, &(cursor as i64)],
    )
    .await
    .map(|_| ())
}

/// Refuses (with [`EsError::Fenced`]) a write whose fence no longer holds. Call it inside the write's
/// transaction: it takes a share lock on the fence's row, so a grant (which locks the row for update) waits
/// for the write's commit, and a write after a grant sees the new token.
pub(super) async fn check_fence(tx: &Transaction<'_>, fence: &Fence) -> Result<()> {
    let err = pg_error("checking a fencing token");
    match fence {
        Fence::Lease { name, token } => {
            let current = tx
                .query_opt(
                    "SELECT token FROM herald_es_leases WHERE name = $1 FOR SHARE",
                    &[name],
                )
                .await
                .map_err(&err)?
                .map(|r| from_sql(r.get(0)));
            lease::check_token(name, current, *token)
        }
        Fence::Generation { group, generation } => {
            let settled = tx
                .query_opt(
                    "SELECT settled FROM herald_es_group_fences WHERE name = $1 FOR SHARE",
                    &[group],
                )
                .await
                .map_err(&err)?
                .map_or(0, |r| from_sql(r.get(0)));
            lease::check_generation(group, settled, *generation)
        }
    }
}

/// Checkpoints in table `herald_es_checkpoints` of a PostgreSQL schema, with the runners' leases and fencing
/// tokens (`herald_es_leases`); also the [`MembershipStore`] of dynamic consumer groups (tables
/// `herald_es_groups`, `herald_es_group_members` and `herald_es_group_fences`; each heartbeat is one
/// transaction holding the group's row lock, so members on several machines agree on one generation).
pub struct PostgresCheckpointStore {
    pub(super) client: Arc<Mutex<Client>>,
}

impl std::fmt::Debug for PostgresCheckpointStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PostgresCheckpointStore")
    }
}

impl PostgresCheckpointStore {
    /// Connects and creates the table in `schema` (use the herald-postgres store's schema).
    pub async fn connect(connection: &str, schema: &str) -> Result<Self> {
        Ok(PostgresCheckpointStore {
            client: Arc::new(Mutex::new(connect(connection, schema).await?)),
        })
    }
}

#[async_trait]
impl CheckpointStore for PostgresCheckpointStore {
    async fn load(&self, name: &str) -> Result<Option<u64>> {
        load_checkpoint(&*self.client.lock().await, name).await
    }

    async fn save(&self, name: &str, cursor: u64) -> Result<()> {
        save_checkpoint(&*self.client.lock().await, name, cursor)
            .await
            .map_err(pg_error("saving a checkpoint"))
    }

    async fn save_fenced(&self, name: &str, cursor: u64, fence: &Fence) -> Result<()> {
        let err = pg_error("saving a checkpoint");
        let mut client = self.client.lock().await;
        let tx = client.transaction().await.map_err(&err)?;
        check_fence(&tx, fence).await?;
        save_checkpoint(&tx, name, cursor).await.map_err(&err)?;
        tx.commit().await.map_err(&err)
    }

    async fn acquire_lease(
        &self,
        name: &str,
        owner: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<LeaseGrant> {
        let err = pg_error("acquiring a lease");
        let mut client = self.client.lock().await;
        let tx = client.transaction().await.map_err(&err)?;
        // The row exists before it is locked, so two first grants serialise on it too.
        tx.execute(
            "INSERT INTO herald_es_leases (name, owner, token, expires_at) VALUES ($1, '', 0, $2)
             ON CONFLICT (name) DO NOTHING",
            &[&name, &i64::MIN],
        )
        .await
        .map_err(&err)?;
        let row = tx
            .query_one(
                "SELECT owner, token, expires_at FROM herald_es_leases WHERE name = $1 FOR UPDATE",
                &[&name],
            )
            .await
            .map_err(&err)?;
        let current = LeaseRecord {
            owner: row.get(0),
            token: from_sql(row.get(1)),
            expires_at: row.get(2),
        };
        let record = match lease::grant(Some(&current), owner, now, expires_at) {
            Ok(record) => record,
            Err(held) => return Ok(held),
        };
        tx.execute(
            "UPDATE herald_es_leases SET owner = $2, token = $3, expires_at = $4 WHERE name = $1",
            &[
                &name,
                &record.owner,
                &to_sql(record.token),
                &record.expires_at,
            ],
        )
        .await
        .map_err(&err)?;
        tx.commit().await.map_err(&err)?;
        Ok(LeaseGrant::Granted {
            token: record.token,
        })
    }

    async fn renew_lease(&self, name: &str, token: u64, expires_at: i64) -> Result<()> {
        let renewed = self
            .client
            .lock()
            .await
            .execute(
                "UPDATE herald_es_leases SET expires_at = $3 WHERE name = $1 AND token = $2",
                &[&name, &to_sql(token), &expires_at],
            )
            .await
            .map_err(pg_error("renewing a lease"))?;
        if renewed == 0 {
            return Err(EsError::Fenced {
                name: name.to_owned(),
                token,
            });
        }
        Ok(())
    }

    async fn release_lease(&self, name: &str, token: u64) -> Result<()> {
        self.client
            .lock()
            .await
            .execute(
                "UPDATE herald_es_leases SET expires_at = $3 WHERE name = $1 AND token = $2",
                &[&name, &to_sql(token), &i64::MIN],
            )
            .await
            .map_err(pg_error("releasing a lease"))?;
        Ok(())
    }

    async fn delete(&self, name: &str) -> Result<()> {
        self.client
            .lock()
            .await
            .execute(
                "DELETE FROM herald_es_checkpoints WHERE name = $1",
                &[&name],
            )
            .await
            .map_err(pg_error("deleting a checkpoint"))?;
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let rows = self
            .client
            .lock()
            .await
            .query(
                "SELECT name, cursor FROM herald_es_checkpoints
                 WHERE left(name, length($1)) = $1 ORDER BY name",
                &[&prefix],
            )
            .await
            .map_err(pg_error("listing checkpoints"))?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as u64))
            .collect())
    }
}

impl PostgresCheckpointStore {
    /// Loads a group under its row lock, applies `f` and stores it, in one transaction.
    async fn update_group<R>(
        &self,
        group: &str,
        f: impl FnOnce(&mut GroupState) -> R,
    ) -> Result<R> {
        let err = pg_error("updating a consumer group");
        let mut client = self.client.lock().await;
        let tx = client.transaction().await.map_err(&err)?;
        // The row exists before it is locked, so two first heartbeats serialise on it too.
        tx.execute(
            "INSERT INTO herald_es_groups (name, generation, members) VALUES ($1, 0, '{}')
             ON CONFLICT (name) DO NOTHING",
            &[&group],
        )
        .await
        .map_err(&err)?;
        let row = tx
            .query_one(
                "SELECT generation, members FROM herald_es_groups WHERE name = $1 FOR UPDATE",
                &[&group],
            )
            .await
            .map_err(&err)?;
        let mut state = GroupState {
            generation: from_sql(row.get(0)),
            members: row.get(1),
            ..GroupState::default()
        };
        state.settled = tx
            .query_opt(
                "SELECT settled FROM herald_es_group_fences WHERE name = $1",
                &[&group],
            )
            .await
            .map_err(&err)?
            .map_or(0, |r| from_sql(r.get(0)));
        for row in tx
            .query(
                "SELECT member, expires_at, acknowledged FROM herald_es_group_members WHERE group_name = $1",
                &[&group],
            )
            .await
            .map_err(&err)?
        {
            state.leases.insert(
                row.get(0),
                Lease {
                    expires_at: row.get(1),
                    acknowledged: from_sql(row.get(2)),
                },
            );
        }
        let out = f(&mut state);
        tx.execute(
            "UPDATE herald_es_groups SET generation = $2, members = $3 WHERE name = $1",
            &[&group, &to_sql(state.generation), &state.members],
        )
        .await
        .map_err(&err)?;
        tx.execute(
            "INSERT INTO herald_es_group_fences (name, settled) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET settled = excluded.settled",
            &[&group, &to_sql(state.settled)],
        )
        .await
        .map_err(&err)?;
        tx.execute(
            "DELETE FROM herald_es_group_members WHERE group_name = $1",
            &[&group],
        )
        .await
        .map_err(&err)?;
        for (member, lease) in &state.leases {
            tx.execute(
                "INSERT INTO herald_es_group_members (group_name, member, expires_at, acknowledged)
                 VALUES ($1, $2, $3, $4)",
                &[
                    &group,
                    member,
                    &lease.expires_at,
                    &to_sql(lease.acknowledged),
                ],
            )
            .await
            .map_err(&err)?;
        }
        tx.commit().await.map_err(&err)?;
        Ok(out)
    }
}

#[async_trait]
impl MembershipStore for PostgresCheckpointStore {
    async fn heartbeat(&self, group: &str, beat: &Heartbeat) -> Result<GroupView> {
        self.update_group(group, |state| {
            state.beat(beat);
            state.view()
        })
        .await
    }

    async fn leave(&self, group: &str, member: &str) -> Result<()> {
        self.update_group(group, |state| state.leave(member)).await
    }
}
