//! Finding a key's entry by hashing: the live flight of each key
//! ([rule 2](crate::contract#rule-2): at most one), and each key's cache entry.
//!
//! The key itself is stored once, in its flight or cache entry: this index maps a
//! 64-bit hash of the key to the entry's id and the caller confirms a hit by
//! comparing the entry's key. Two indexed keys whose hashes collide are rare; the
//! second one goes to a side map ordered by key, so a collision costs a second
//! B-tree lookup, never a wrong answer. Both maps are B-trees, so even keys chosen
//! to collide on purpose cost O(log n), and the hash can be a fixed one: nothing
//! here is random. It is foldhash with a fixed seed rather than SipHash: keys are
//! hashed on every submit, and foldhash costs a fraction of SipHash's rounds on
//! short keys while mixing well enough that collisions stay rare (and harmless,
//! as above).
//!
//! The index is derived from what it indexes (each flight is the live flight of
//! its key, each cache entry the entry of its key), so equality and hashing of
//! [`Flights`](crate::flights::Flights) and of the cache, and so of a
//! [`Machine`](crate::Machine), skip it.

use core::hash::{BuildHasher, Hash, Hasher};
use std::collections::BTreeMap;

use foldhash::fast::FixedState;

use crate::{FlightId, Key};

/// An index from keys to the ids of the entries that hold them.
#[derive(Clone, Debug)]
pub(crate) struct KeyIndex<V> {
    by_hash: BTreeMap<u64, V>,
    /// Keys whose hash slot was taken by another indexed key.
    collided: BTreeMap<Key, V>,
}

/// The live flight of each key.
pub(crate) type LiveKeys = KeyIndex<FlightId>;

impl<V> Default for KeyIndex<V> {
    fn default() -> Self {
        KeyIndex {
            by_hash: BTreeMap::new(),
            collided: BTreeMap::new(),
        }
    }
}

impl<V: Copy + Eq> KeyIndex<V> {
    /// foldhash with a fixed seed: well mixed, and the same in every run (not
    /// that outputs could depend on it: a collision only costs a second lookup).
    fn hash_of(key: &Key) -> u64 {
        const STATE: FixedState = FixedState::with_seed(0x6b65_795f_696e_6478);
        let mut h = STATE.build_hasher();
        h.write(key.as_bytes());
        h.finish()
    }

    /// The entry of `key`; `holds_key(id)` tells whether entry `id` holds `key`.
    pub(crate) fn get(&self, key: &Key, holds_key: impl FnOnce(V) -> bool) -> Option<V> {
        if let Some(&id) = self.by_hash.get(&Self::hash_of(key)) {
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
        let h = Self::hash_of(key);
        if let std::collections::btree_map::Entry::Vacant(slot) = self.by_hash.entry(h) {
            slot.insert(id);
        } else {
            self.collided.insert(key.clone(), id);
        }
    }

    /// Forgets `id` as the entry of `key`.
    pub(crate) fn remove(&mut self, key: &Key, id: V) {
        let h = Self::hash_of(key);
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
