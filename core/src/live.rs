//! The live flight of each key ([rule 2](crate::contract#rule-2): at most one), found by hashing.
//!
//! The key itself is stored once, in its flight: this index maps a 64-bit hash
//! of the key to the flight id and confirms a hit by comparing the flight's key.
//! Two live keys whose hashes collide are rare; the second one goes to a side
//! map ordered by key, so a collision costs a second B-tree lookup, never a wrong
//! answer. Both maps are B-trees, so even keys chosen to collide on purpose
//! cost O(log n), and the hash can be a fixed one: nothing here is random. It is
//! foldhash with a fixed seed rather than SipHash: keys are hashed on every
//! submit, and foldhash costs a fraction of SipHash's rounds on short keys while
//! mixing well enough that collisions stay rare (and harmless, as above).
//!
//! The index is derived from the flights (each flight is the live flight of its
//! key), so equality and hashing of [`Flights`](crate::flights::Flights), and so of
//! a [`Machine`](crate::Machine), skip it.

use core::hash::{BuildHasher, Hash, Hasher};
use std::collections::BTreeMap;

use foldhash::fast::FixedState;

use crate::flight::Flight;
use crate::idmap::IdMap;
use crate::{FlightId, Key};

#[derive(Clone, Debug, Default)]
pub(crate) struct LiveKeys {
    by_hash: BTreeMap<u64, FlightId>,
    /// Live keys whose hash slot was taken by another live key.
    collided: BTreeMap<Key, FlightId>,
}

impl LiveKeys {
    /// foldhash with a fixed seed: well mixed, and the same in every run (not
    /// that outputs could depend on it: a collision only costs a second lookup).
    fn hash_of(key: &Key) -> u64 {
        const STATE: FixedState = FixedState::with_seed(0x6b65_795f_696e_6478);
        let mut h = STATE.build_hasher();
        h.write(key.as_bytes());
        h.finish()
    }

    /// The live flight of `key`.
    pub(crate) fn get(
        &self,
        key: &Key,
        flights: &IdMap<FlightId, Box<Flight>>,
    ) -> Option<FlightId> {
        if let Some(&flight) = self.by_hash.get(&Self::hash_of(key)) {
            if flights.get(&flight).is_some_and(|f| f.key == *key) {
                return Some(flight);
            }
        }
        if self.collided.is_empty() {
            return None;
        }
        self.collided.get(key).copied()
    }

    /// Records `flight` as the live flight of `key`, which has none.
    pub(crate) fn insert(&mut self, key: &Key, flight: FlightId) {
        let h = Self::hash_of(key);
        if let std::collections::btree_map::Entry::Vacant(slot) = self.by_hash.entry(h) {
            slot.insert(flight);
        } else {
            self.collided.insert(key.clone(), flight);
        }
    }

    /// Forgets `flight` as the live flight of `key`.
    pub(crate) fn remove(&mut self, key: &Key, flight: FlightId) {
        let h = Self::hash_of(key);
        if self.by_hash.get(&h) == Some(&flight) {
            self.by_hash.remove(&h);
        } else if self.collided.get(key) == Some(&flight) {
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
    pub(crate) fn insert_collided(&mut self, key: &Key, flight: FlightId) {
        self.collided.insert(key.clone(), flight);
    }
}

/// Derived from the flights: see the module docs.
impl PartialEq for LiveKeys {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for LiveKeys {}

/// Derived from the flights: see the module docs.
impl Hash for LiveKeys {
    fn hash<H: Hasher>(&self, _: &mut H) {}
}

#[cfg(test)]
mod tests {
    use super::LiveKeys;
    use crate::flight::Flight;
    use crate::idmap::IdMap;
    use crate::{FlightId, Key, Time};

    #[test]
    fn colliding_hashes_still_find_the_right_flight() {
        let mut live = LiveKeys::default();
        let mut flights = IdMap::default();
        let (a, b) = (FlightId::from_raw(0), FlightId::from_raw(1));
        let (ka, kb) = (Key::from("a"), Key::from("b"));
        flights.insert(a, Box::new(Flight::new(ka.clone(), Time::ZERO)));
        flights.insert(b, Box::new(Flight::new(kb.clone(), Time::ZERO)));
        live.insert(&ka, a);
        // Force a collision: put b's key in the side map as if its slot were taken.
        live.collided.insert(kb.clone(), b);
        assert_eq!(live.get(&ka, &flights), Some(a));
        assert_eq!(live.get(&kb, &flights), Some(b));
        assert_eq!(live.get(&Key::from("c"), &flights), None);
        assert_eq!(live.len(), 2);
        live.remove(&ka, a);
        assert_eq!(live.get(&ka, &flights), None);
        assert_eq!(live.get(&kb, &flights), Some(b));
        live.remove(&kb, b);
        assert!(live.is_empty());
    }
}
