//! Finding a key's entry by hashing: the live flight of each key
//! ([rule 2](crate::contract#rule-2): at most one), and each key's cache entry.
//!
//! The key itself is stored once, in its flight or cache entry: this index maps a
//! 64-bit hash of the key to the entry's id and the caller confirms a hit by
//! comparing the entry's key. Two indexed keys whose hashes collide are rare; the
//! second one goes to a side map ordered by key, so a collision costs a second
//! lookup, never a wrong answer, and even keys chosen to collide on purpose cost
//! O(log n) there.
//!
//! The hash is foldhash, not SipHash: keys are hashed on every submit, and
//! foldhash costs a fraction of SipHash's rounds on short keys while mixing well
//! enough that collisions stay rare (and harmless, as above). The main map is a
//! hash map from that hash, not a B-tree: one probe instead of a walk. It is
//! looked up and never iterated, so nothing read from it depends on its layout,
//! and so the hash's seed can be random, drawn per index: nobody can choose keys
//! in advance that collide or crowd one bucket (against a fixed, public seed
//! that would be easy). Every output is the same in every run; only where an
//! entry sits in memory differs, and equality, hashing and `Debug` do not show it.
//!
//! The index is derived from what it indexes (each flight is the live flight of
//! its key, each cache entry the entry of its key), so equality and hashing of
//! [`Flights`](crate::flights::Flights) and of the cache, and so of a
//! [`Machine`](crate::Machine), skip it.

use core::fmt;
use core::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::collections::BTreeMap;
#[allow(clippy::disallowed_types)] // lookups only: see `ByHash`
use std::collections::HashMap;

use foldhash::fast::RandomState;

use crate::{FlightId, Key};

/// An index from keys to the ids of the entries that hold them.
#[derive(Clone)]
pub(crate) struct KeyIndex<V> {
    /// A hash map, not a B-tree, keyed by the key's hash (see the module docs):
    /// only ever looked up, never iterated, so its order cannot reach an output.
    by_hash: ByHash<V>,
    /// The key hash's seed, random per index (see the module docs).
    seed: RandomState,
    /// Keys whose hash slot was taken by another indexed key.
    collided: BTreeMap<Key, V>,
}

/// The one hash map of the core. Allowed because it is only ever looked up,
/// never iterated (see the module docs).
#[allow(clippy::disallowed_types)]
type ByHash<V> = HashMap<u64, V, BuildHasherDefault<Spread>>;

/// The hasher of `by_hash`, whose keys are seeded hashes already: it passes
/// them on instead of hashing them again.
#[derive(Default)]
struct Spread(u64);

impl Hasher for Spread {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The live flight of each key.
pub(crate) type LiveKeys = KeyIndex<FlightId>;

/// Only the size: which key sits where depends on the seed, and the entries
/// are in what the index indexes anyway.
impl<V> fmt::Debug for KeyIndex<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyIndex")
            .field("len", &(self.by_hash.len() + self.collided.len()))
            .finish_non_exhaustive()
    }
}

impl<V> Default for KeyIndex<V> {
    fn default() -> Self {
        KeyIndex {
            by_hash: ByHash::default(),
            collided: BTreeMap::new(),
            seed: RandomState::default(),
        }
    }
}

impl<V: Copy + Eq> KeyIndex<V> {
    /// foldhash with this index's seed (outputs cannot depend on it: a
    /// collision only costs a second lookup).
    fn hash_of(&self, key: &Key) -> u64 {
        let mut h = self.seed.build_hasher();
        h.write(key.as_bytes());
        h.finish()
    }

    /// The entry of `key`; `holds_key(id)` tells whether entry `id` holds `key`.
    pub(crate) fn get(&self, key: &Key, holds_key: impl FnOnce(V) -> bool) -> Option<V> {
        if let Some(&id) = self.by_hash.get(&self.hash_of(key)) {
            if holds_key(id) {
                return Some(id);
            }
        }
        if self.collided.is_empty() {
            return None;
        }
        self.collided.get(key).copied()
    }

    /// Records `id` as the entry of `key`, which has none.
    pub(crate) fn insert(&mut self, key: &Key, id: V) {
        let h = self.hash_of(key);
        if let std::collections::hash_map::Entry::Vacant(slot) = self.by_hash.entry(h) {
            slot.insert(id);
        } else {
            self.collided.insert(key.clone(), id);
        }
    }

    /// Forgets `id` as the entry of `key`.
    pub(crate) fn remove(&mut self, key: &Key, id: V) {
        let h = self.hash_of(key);
        if self.by_hash.get(&h) == Some(&id) {
            self.by_hash.remove(&h);
        } else if self.collided.get(key) == Some(&id) {
            self.collided.remove(key);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.by_hash.len() + self.collided.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Files `key` in the side map as if its hash slot were taken (tests only).
    #[cfg(test)]
    pub(crate) fn insert_collided(&mut self, key: &Key, id: V) {
        self.collided.insert(key.clone(), id);
    }
}

/// Derived from what it indexes: see the module docs.
impl<V> PartialEq for KeyIndex<V> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl<V> Eq for KeyIndex<V> {}

/// Derived from what it indexes: see the module docs.
impl<V> Hash for KeyIndex<V> {
    fn hash<H: Hasher>(&self, _: &mut H) {}
}

#[cfg(test)]
mod tests {
    use super::LiveKeys;
    use crate::{FlightId, Key};

    #[test]
    fn colliding_hashes_still_find_the_right_entry() {
        let mut live = LiveKeys::default();
        let (a, b) = (FlightId::from_raw(0), FlightId::from_raw(1));
        let (ka, kb) = (Key::from("a"), Key::from("b"));
        let holds = |key: &Key| {
            let key = key.clone();
            move |id: FlightId| {
                (id == a && key == Key::from("a")) || (id == b && key == Key::from("b"))
            }
        };
        live.insert(&ka, a);
        // Force a collision: put b's key in the side map as if its slot were taken.
        live.insert_collided(&kb, b);
        assert_eq!(live.get(&ka, holds(&ka)), Some(a));
        assert_eq!(live.get(&kb, holds(&kb)), Some(b));
        let kc = Key::from("c");
        assert_eq!(live.get(&kc, holds(&kc)), None);
        assert_eq!(live.len(), 2);
        live.remove(&ka, a);
        assert_eq!(live.get(&ka, holds(&ka)), None);
        assert_eq!(live.get(&kb, holds(&kb)), Some(b));
        live.remove(&kb, b);
        assert!(live.is_empty());
    }
}
