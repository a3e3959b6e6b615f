//! Per-thread lookup caches (name → subscribers, event type → listeners).
//!
//! Each notifier or bus has a generation counter that every subscribe/unsubscribe bumps. A thread keeps,
//! per owner, a map from key to the computed subscriber list, tagged with the generation it was built at;
//! a lookup compares one atomic load with the tag and, when they differ, throws the map away. Hits take no
//! lock and touch no shared cache line except the generation counter, which is read-mostly. Values are
//! `Rc`s so a hit costs a non-atomic increment.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::rc::Rc;

use crate::fxhash::FxBuildHasher;

/// Owners per thread and keys per owner; past these the oldest owner is dropped, or the owner's map is
/// cleared, so memory stays bounded for programs with unbounded sets of names.
const MAX_OWNERS: usize = 8;
const MAX_KEYS: usize = 4096;

struct OwnerCache<K, V> {
    owner: u64,
    generation: u64,
    map: HashMap<K, Rc<V>, FxBuildHasher>,
    /// The last key looked up and its value: most call sites repeat one name in a loop.
    last: Option<(K, Rc<V>)>,
}

/// The per-thread cache for one kind of owner.
pub(crate) struct LocalCache<K, V> {
    owners: Vec<OwnerCache<K, V>>,
}

impl<K, V> LocalCache<K, V> {
    pub(crate) const fn new() -> Self {
        LocalCache { owners: Vec::new() }
    }
}

impl<K: Hash + Eq, V> LocalCache<K, V> {
    /// The entry for `owner`, moved to the front, cleared when its generation is stale.
    #[inline]
    fn owner(&mut self, owner: u64, generation: u64) -> &mut OwnerCache<K, V> {
        let idx = match self.owners.iter().position(|c| c.owner == owner) {
            Some(i) => i,
            None => {
                if self.owners.len() >= MAX_OWNERS {
                    self.owners.pop();
                }
                self.owners.push(OwnerCache {
                    owner,
                    generation,
                    map: HashMap::default(),
                    last: None,
                });
                self.owners.len() - 1
            }
        };
        if idx != 0 {
            self.owners.swap(0, idx);
        }
        let entry = &mut self.owners[0];
        if entry.generation != generation {
            entry.map.clear();
            entry.last = None;
            entry.generation = generation;
        }
        entry
    }

    /// Like [`get`](Self::get) for small `Copy` keys, with a one-entry memo in front of the map.
    #[inline]
    pub(crate) fn get_copy(
        &mut self,
        owner: u64,
        generation: u64,
        key: K,
        compute: impl FnOnce() -> V,
    ) -> Rc<V>
    where
        K: Copy,
    {
        let entry = self.owner(owner, generation);
        if let Some((k, v)) = &entry.last
            && *k == key
        {
            return v.clone();
        }
        let v = match entry.map.get(&key) {
            Some(v) => v.clone(),
            None => {
                let v = Rc::new(compute());
                if entry.map.len() >= MAX_KEYS {
                    entry.map.clear();
                }
                entry.map.insert(key, v.clone());
                v
            }
        };
        entry.last = Some((key, v.clone()));
        v
    }

    /// The cached value for `key`, or `compute()` cached under the current `generation`.
    ///
    /// `compute` must read the owner's state at a generation no older than `generation` (reading it
    /// under the owner's registry lock guarantees this); the cache may then hold a value newer than
    /// its tag, which only costs one extra recomputation.
    #[inline]
    pub(crate) fn get<Q>(
        &mut self,
        owner: u64,
        generation: u64,
        key: &Q,
        compute: impl FnOnce() -> V,
    ) -> Rc<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized + ToOwnedKey<K>,
    {
        let entry = self.owner(owner, generation);
        if let Some(v) = entry.map.get(key) {
            return v.clone();
        }
        let v = Rc::new(compute());
        if entry.map.len() >= MAX_KEYS {
            entry.map.clear();
        }
        entry.map.insert(key.to_owned_key(), v.clone());
        v
    }
}

/// Turns a borrowed lookup key into the owned map key.
pub(crate) trait ToOwnedKey<K> {
    fn to_owned_key(&self) -> K;
}

impl ToOwnedKey<Box<str>> for str {
    fn to_owned_key(&self) -> Box<str> {
        self.into()
    }
}
