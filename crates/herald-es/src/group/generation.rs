//! Checkpoint keys of consumer groups and the handover between generations: where a new generation's
//! members start, which events an earlier generation's owners already handled, and which records can be
//! forgotten (the protocol is in the [subscription module docs](crate::subscription#dynamic-membership)).

use std::collections::BTreeMap;

use herald_core::RecordedEvent;

use crate::checkpoint::CheckpointStore;
use crate::error::Result;
use crate::lease::Fence;
use crate::subscription::{GroupMember, stable_hash};
/// A checkpoint key of a subscription's group, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GroupKey {
    /// `name#{index}of{count}`: a static member.
    Static { count: u32 },
    /// `name#{index}of{count}@{generation}`: a dynamic member's checkpoint in one generation.
    Member {
        generation: u64,
        index: u32,
        count: u32,
    },
    /// `name#start@{generation}of{count}`: where every member of a generation started.
    Start { generation: u64, count: u32 },
}

impl GroupKey {
    /// Parses what follows `name#`; `None` for anything else (it is ignored).
    pub(crate) fn parse(rest: &str) -> Option<GroupKey> {
        fn index_of(s: &str) -> Option<(u32, u32)> {
            let (index, count) = s.split_once("of")?;
            let (index, count) = (index.parse().ok()?, count.parse().ok()?);
            (index < count).then_some((index, count))
        }
        if let Some(start) = rest.strip_prefix("start@") {
            let (generation, count) = start.split_once("of")?;
            return Some(GroupKey::Start {
                generation: generation.parse().ok()?,
                count: count.parse().ok()?,
            });
        }
        if let Some((member, generation)) = rest.split_once('@') {
            let (index, count) = index_of(member)?;
            return Some(GroupKey::Member {
                generation: generation.parse().ok()?,
                index,
                count,
            });
        }
        index_of(rest).map(|(_, count)| GroupKey::Static { count })
    }
}

pub(crate) fn member_key(name: &str, generation: u64, member: GroupMember) -> String {
    format!("{name}#{}of{}@{generation}", member.index(), member.count())
}

fn start_key(name: &str, generation: u64, count: u32) -> String {
    format!("{name}#start@{generation}of{count}")
}

/// The static-group safe point over listed checkpoints (see the module docs of `subscription`): for each
/// static generation (`count`) other than `except` whose members all have checkpoints, the lowest cursor;
/// the highest of those.
pub(crate) fn static_safe_point(
    listed: &[(GroupKey, u64)],
    except_count: Option<u32>,
) -> Option<u64> {
    let mut generations: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for (key, cursor) in listed {
        if let GroupKey::Static { count } = key
            && Some(*count) != except_count
        {
            generations.entry(*count).or_default().push(*cursor);
        }
    }
    generations
        .iter()
        .filter(|(count, cursors)| cursors.len() == **count as usize)
        .filter_map(|(_, cursors)| cursors.iter().min().copied())
        .max()
}

/// How a member starts in a generation: after `start`, skipping the events an earlier generation's owner of
/// their stream had already finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Handover {
    /// Every event at or below this position was handled before the generation started (0: none).
    pub(super) start: u64,
    /// For each earlier generation whose record is still useful, its members' final cursors by index (the
    /// vector's length is that generation's count). Each member's final cursor means: every event of the
    /// streams it owned then, at or below it, was handled. A member that stopped before checkpointing in a
    /// generation finished at that generation's start, which says less than what the generation before knew,
    /// so several generations are consulted, not only the last.
    pub(super) earlier: Vec<Vec<u64>>,
}

impl Handover {
    pub(super) fn already_handled(&self, event: &RecordedEvent) -> bool {
        let hash = stable_hash(&event.stream);
        self.earlier.iter().any(|finals| {
            !finals.is_empty()
                && finals
                    .get((hash % finals.len() as u64) as usize)
                    .is_some_and(|cursor| event.position <= *cursor)
        })
    }
}

/// Computes (or reads) where `generation` starts, records it, and forgets generations nobody needs again.
pub(super) async fn handover(
    checkpoints: &dyn CheckpointStore,
    name: &str,
    generation: u64,
    count: u32,
) -> Result<Handover> {
    let prefix = format!("{name}#");
    // One list: a consistent snapshot on every backend. Clean-up only removes generations whose record adds
    // nothing above the start it wrote first, so a concurrent member reading after it decides the same.
    let listed: Vec<(GroupKey, u64)> = checkpoints
        .list(&prefix)
        .await?
        .into_iter()
        .filter_map(|(k, c)| GroupKey::parse(&k[prefix.len()..]).map(|key| (key, c)))
        .collect();
    let mut starts: BTreeMap<u64, (u32, u64)> = BTreeMap::new();
    let mut cursors: BTreeMap<(u64, u32), (u32, u64)> = BTreeMap::new();
    for (key, cursor) in &listed {
        match *key {
            GroupKey::Start { generation, count } => {
                starts.insert(generation, (count, *cursor));
            }
            GroupKey::Member {
                generation,
                index,
                count,
            } => {
                cursors.insert((generation, index), (count, *cursor));
            }
            GroupKey::Static { .. } => {}
        }
    }
    // Every earlier generation that started (its start is written before anyone handles in it), with its
    // members' final cursors; a member that never checkpointed in it finished at its start.
    let earlier: Vec<(u64, u64, Vec<u64>)> = starts
        .range(..generation)
        .map(|(&g, &(n, start))| {
            let finals = (0..n)
                .map(|index| match cursors.get(&(g, index)) {
                    Some(&(c, cursor)) if c == n => cursor.max(start),
                    _ => start,
                })
                .collect();
            (g, start, finals)
        })
        .collect();
    let start = match starts.get(&generation) {
        Some(&(_, start)) => start,
        None => {
            // The last generation that started: everyone who handled anything since did so in it, so every
            // event at or below its lowest final cursor is done.
            let start = match earlier.last() {
                Some((_, start, finals)) => finals.iter().copied().min().unwrap_or(*start),
                None => static_safe_point(&listed, None).unwrap_or(0),
            };
            // Every member computing this from a snapshot gets a value at or below the truth (checkpoints only
            // grow once their generation stopped), so a race between two writers stores a safe value either
            // way.
            // Fenced by the generation: a member paused here past its lease must not record a start after a
            // later generation settled.
            let fence = Fence::Generation {
                group: name.to_owned(),
                generation,
            };
            checkpoints
                .save_fenced(&start_key(name, generation, count), start, &fence)
                .await?;
            tracing::info!(group = %name, generation, start, "group generation starts");
            // Generations whose every final cursor is at or below the new start add nothing any more.
            for (g, _, finals) in &earlier {
                if finals.iter().all(|c| *c <= start) {
                    let n = u32::try_from(finals.len()).unwrap_or(u32::MAX);
                    for index in 0..n {
                        if cursors.contains_key(&(*g, index))
                            && let Ok(member) = GroupMember::new(index, n)
                        {
                            checkpoints.delete(&member_key(name, *g, member)).await?;
                        }
                    }
                    checkpoints.delete(&start_key(name, *g, n)).await?;
                }
            }
            start
        }
    };
    Ok(Handover {
        start,
        earlier: earlier
            .into_iter()
            .map(|(_, _, finals)| finals)
            .filter(|finals| finals.iter().any(|c| *c > start))
            .collect(),
    })
}

/// Deletes every checkpoint of a dynamic group (member checkpoints and generation starts).
pub(crate) async fn reset(checkpoints: &dyn CheckpointStore, name: &str) -> Result<()> {
    let prefix = format!("{name}#");
    for (key, _) in checkpoints.list(&prefix).await? {
        if matches!(
            GroupKey::parse(&key[prefix.len()..]),
            Some(GroupKey::Member { .. } | GroupKey::Start { .. })
        ) {
            checkpoints.delete(&key).await?;
        }
    }
    Ok(())
}
