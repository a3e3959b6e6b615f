//! Claiming jobs: the housekeeping every claim starts with (expired leases back to the queue or to the dead
//! set, due scheduled jobs made available, the dead set trimmed) and the lease itself, either one pipelined
//! round trip (no limited types) or a transaction that serialises counting and leasing of limited types
//! across processes with advisory locks.

use deadpool_postgres::Object;
use herald_core::Result;
use herald_core::clock::micros;
use herald_core::jobs::{Claimed, JobsConfig};
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::PostgresJobQueue;
use crate::schema::backend;

impl PostgresJobQueue {
    /// Leases up to `limit` runnable jobs of `queue` to `owner` (see
    /// [`JobQueue::claim`](herald_core::jobs::JobQueue::claim)).
    pub(super) async fn lease_jobs(
        &self,
        queue: &str,
        owner: Uuid,
        limit: usize,
        limits: &[(String, u32)],
    ) -> Result<Vec<Claimed>> {
        let config = &self.config;
        let now = config.clock.now_micros();
        let lease_end = now + micros(config.lease);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut client = self.progress_client().await?;
        let rows = if limits.is_empty() {
            // Housekeeping and the claim pipelined: one round trip (statements run in order, so the claim
            // sees what the housekeeping made available).
            // Prepared (cached) before sending, so the statements go out in this order.
            let (claim, ..) = futures::try_join!(
                client.prepare_cached(&self.sql.claim),
                client.prepare_cached(&self.sql.expire_dead),
                client.prepare_cached(&self.sql.expire),
                client.prepare_cached(&self.sql.promote),
            )
            .map_err(backend)?;
            let params: [&(dyn ToSql + Sync); 4] = [&queue, &limit, &lease_end, &owner];
            let (_, rows) = futures::try_join!(self.maintain(&client, config, now), async {
                client.query(&claim, &params).await.map_err(backend)
            },)?;
            rows
        } else {
            self.maintain(&client, config, now).await?;
            let (candidates, count, take) = (
                client.prepare_cached(&self.sql.candidates).await,
                client.prepare_cached(&self.sql.count_running).await,
                client.prepare_cached(&self.sql.take).await,
            );
            let (candidates, count, take) = (
                candidates.map_err(backend)?,
                count.map_err(backend)?,
                take.map_err(backend)?,
            );
            let tx = client.transaction().await.map_err(backend)?;
            let mut kinds: Vec<&str> = limits.iter().map(|(k, _)| k.as_str()).collect();
            kinds.sort_unstable();
            kinds.dedup();
            // Serialise counting and leasing of limited types across processes (see the module docs).
            for kind in &kinds {
                tx.execute(
                    "SELECT pg_advisory_xact_lock($1)",
                    &[&lock_key(&format!(
                        "herald-jobs-limit:{}:{kind}",
                        self.schema
                    ))],
                )
                .await
                .map_err(backend)?;
            }
            let running: Vec<(String, i64)> = tx
                .query(&count, &[&kinds])
                .await
                .map_err(backend)?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            let mut remaining: Vec<(String, i64)> = limits
                .iter()
                .map(|(kind, max)| {
                    let now_running = running
                        .iter()
                        .find(|(k, _)| k == kind)
                        .map_or(0, |(_, n)| *n);
                    (kind.clone(), i64::from(*max) - now_running)
                })
                .collect();
            let full: Vec<&str> = remaining
                .iter()
                .filter(|(_, r)| *r <= 0)
                .map(|(k, _)| k.as_str())
                .collect();
            let picked: Vec<(i64, String)> = tx
                .query(&candidates, &[&queue, &limit, &full])
                .await
                .map_err(backend)?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            let mut ids = Vec::with_capacity(picked.len());
            for (id, kind) in picked {
                if let Some((_, left)) = remaining.iter_mut().find(|(k, _)| *k == kind) {
                    if *left <= 0 {
                        continue;
                    }
                    *left -= 1;
                }
                ids.push(id);
            }
            let rows = if ids.is_empty() {
                Vec::new()
            } else {
                tx.query(&take, &[&ids, &lease_end, &owner])
                    .await
                    .map_err(backend)?
            };
            tx.commit().await.map_err(backend)?;
            rows
        };
        let mut claimed: Vec<(i32, Claimed)> = rows
            .iter()
            .map(|r| {
                (
                    r.get::<_, i32>(8),
                    Claimed {
                        row: r.get(0),
                        id: r.get(1),
                        queue: r.get(2),
                        kind: r.get(3),
                        args: r.get(4),
                        metadata: r.get(5),
                        attempt: r.get::<_, i32>(6) as u32,
                        max_attempts: r.get::<_, i32>(7) as u32,
                        ordered: r.get(9),
                        record_start_first: r.get(10),
                    },
                )
            })
            .collect();
        // RETURNING has no order: start them by priority, then enqueue order.
        claimed.sort_by(|(pa, a), (pb, b)| pb.cmp(pa).then(a.row.cmp(&b.row)));
        Ok(claimed.into_iter().map(|(_, c)| c).collect())
    }

    /// Expired leases back to the queue (or to the dead set with no attempt left), due scheduled jobs
    /// available: three statements pipelined (one round trip), each skipping rows others hold.
    async fn maintain(&self, client: &Object, config: &JobsConfig, now: i64) -> Result<()> {
        let (expire_dead, expire, promote) = futures::try_join!(
            client.prepare_cached(&self.sql.expire_dead),
            client.prepare_cached(&self.sql.expire),
            client.prepare_cached(&self.sql.promote),
        )
        .map_err(backend)?;
        let at: [&(dyn ToSql + Sync); 1] = [&now];
        let (died, _, _) = futures::try_join!(
            client.execute(&expire_dead, &at),
            client.execute(&expire, &at),
            client.execute(&promote, &at),
        )
        .map_err(backend)?;
        if died > 0 {
            self.trim_dead(client, config, now).await?;
        }
        Ok(())
    }

    /// Trims the dead set to [`JobsConfig::dead_max_age`] and [`JobsConfig::dead_max_jobs`] (two statements,
    /// pipelined), after jobs died.
    pub(super) async fn trim_dead(
        &self,
        client: &Object,
        config: &JobsConfig,
        now: i64,
    ) -> Result<()> {
        let oldest = now - micros(config.dead_max_age);
        let keep = i64::try_from(config.dead_max_jobs).unwrap_or(i64::MAX);
        let (oldest, keep): ([&(dyn ToSql + Sync); 1], [&(dyn ToSql + Sync); 1]) =
            ([&oldest], [&keep]);
        futures::try_join!(
            client.execute(self.sql.trim_age.as_str(), &oldest),
            client.execute(self.sql.trim_count.as_str(), &keep),
        )
        .map_err(backend)?;
        Ok(())
    }
}

/// A stable 64-bit advisory-lock key for `what` (FNV-1a).
fn lock_key(what: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in what.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash as i64
}
