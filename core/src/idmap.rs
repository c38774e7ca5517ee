//! Records keyed by sequential ids, looked up by indexing instead of searching.
//!
//! Ids are handed out in order and never reused, so the records alive at any time
//! occupy a window of recent ids: [`IdMap`] keeps that window as a dense
//! `Vec` indexed by `id - base`, and a lookup is one subtraction and one
//! bounds-checked index. Records that outlive most of their neighbours would pin the window's
//! front and let it grow with every newer id; when fewer than a quarter of the
//! window's slots are occupied, the front half's survivors move to an ordered
//! side map, so memory stays within a small factor of the records alive.
//!
//! The window is a `Vec`, not a `VecDeque`: a lookup runs once per reader per
//! chunk in a fan-out, and a deque's index has to wrap around its ring. The
//! front's freed slots are not shifted out one by one; they are left empty
//! behind a `head` mark and drained in one go once they are half the vector,
//! so removing from the front stays amortised constant time.
//!
//! Iteration is in id order, and equality and hashing see only the `(id, record)`
//! pairs, never the layout: two maps holding the same records are equal however
//! they got there.

use core::hash::{Hash, Hasher};
use core::marker::PhantomData;
use std::collections::BTreeMap;

use crate::{FlightId, RequestId};

/// An id handed out in sequence.
pub(crate) trait SeqId: Copy {
    fn to_raw(self) -> u64;
    fn of_raw(raw: u64) -> Self;
}

impl SeqId for RequestId {
    fn to_raw(self) -> u64 {
        self.raw()
    }
    fn of_raw(raw: u64) -> Self {
        RequestId::from_raw(raw)
    }
}

impl SeqId for FlightId {
    fn to_raw(self) -> u64 {
        self.raw()
    }
    fn of_raw(raw: u64) -> Self {
        FlightId::from_raw(raw)
    }
}

impl SeqId for u64 {
    fn to_raw(self) -> u64 {
        self
    }
    fn of_raw(raw: u64) -> Self {
        raw
    }
}

/// Below this many slots the window is never compacted.
const MIN_COMPACT: usize = 64;

#[derive(Clone, Debug)]
pub(crate) struct IdMap<K, V> {
    /// The id of `dense[0]`.
    base: u64,
    /// Slots for ids `base..base + dense.len()`. The window proper starts at
    /// `head`: the slots before it are empty, waiting to be drained, and
    /// `dense[head]`, if there is one, is occupied.
    dense: Vec<Option<V>>,
    /// Where the window starts in `dense`.
    head: usize,
    /// Occupied slots in `dense`.
    in_dense: usize,
    /// Records with ids below `base`, moved out of a sparse window.
    old: BTreeMap<u64, V>,
    ids: PhantomData<K>,
}

impl<K, V> Default for IdMap<K, V> {
    fn default() -> Self {
        IdMap {
            base: 0,
            dense: Vec::new(),
            head: 0,
            in_dense: 0,
            old: BTreeMap::new(),
            ids: PhantomData,
        }
    }
}

impl<K: SeqId, V> IdMap<K, V> {
    pub(crate) fn len(&self) -> usize {
        self.in_dense + self.old.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn slot(&self, id: u64) -> Option<usize> {
        id.checked_sub(self.base)
            .and_then(|i| usize::try_from(i).ok())
    }

    pub(crate) fn get(&self, id: &K) -> Option<&V> {
        let id = id.to_raw();
        match self.slot(id) {
            Some(i) => self.dense.get(i)?.as_ref(),
            None => self.old.get(&id),
        }
    }

    pub(crate) fn get_mut(&mut self, id: &K) -> Option<&mut V> {
        let id = id.to_raw();
        match self.slot(id) {
            Some(i) => self.dense.get_mut(i)?.as_mut(),
            None => self.old.get_mut(&id),
        }
    }

    /// Inserts `value` under `id`. Ids are expected to arrive in increasing order
    /// (any order is correct; a new id far beyond the window pads it with empty
    /// slots, so callers insert each id once, when it is handed out).
    pub(crate) fn insert(&mut self, id: K, value: V) -> Option<V> {
        let id = id.to_raw();
        if self.dense.is_empty() && id >= self.base {
            self.base = id;
        }
        let Some(i) = self.slot(id) else {
            return self.old.insert(id, value);
        };
        if self.dense.len() <= i {
            self.dense.resize_with(i + 1, || None);
        }
        // An id behind the head (out of order) moves the window's start back.
        self.head = self.head.min(i);
        let previous = self.dense[i].replace(value);
        if previous.is_none() {
            self.in_dense += 1;
        }
        previous
    }

    pub(crate) fn remove(&mut self, id: &K) -> Option<V> {
        let id = id.to_raw();
        let Some(i) = self.slot(id) else {
            return self.old.remove(&id);
        };
        let value = self.dense.get_mut(i)?.take()?;
        self.in_dense -= 1;
        self.trim_front();
        let window = self.dense.len() - self.head;
        if window >= MIN_COMPACT && self.in_dense * 4 < window {
            self.compact();
        }
        Some(value)
    }

    /// Moves `head` past the empty slots at the window's front, and drains the
    /// slots behind it once they are half the vector (or all of it).
    fn trim_front(&mut self) {
        while matches!(self.dense.get(self.head), Some(None)) {
            self.head += 1;
        }
        if self.head == self.dense.len() || self.head * 2 >= self.dense.len() {
            self.dense.drain(..self.head);
            self.base += self.head as u64;
            self.head = 0;
        }
    }

    /// Moves the survivors of the window's front half to `old`.
    fn compact(&mut self) {
        let half = (self.dense.len() - self.head) / 2;
        let front = self.head..self.head + half;
        for (slot, id) in self.dense[front.clone()]
            .iter_mut()
            .zip(self.base + front.start as u64..)
        {
            if let Some(value) = slot.take() {
                self.old.insert(id, value);
                self.in_dense -= 1;
            }
        }
        // Drained at once: `old` holds only ids below `base`.
        self.dense.drain(..front.end);
        self.base += front.end as u64;
        self.head = 0;
        self.trim_front();
    }

    /// The records in id order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (K, &V)> + '_ {
        let base = self.base;
        self.old.iter().map(|(id, v)| (K::of_raw(*id), v)).chain(
            self.dense
                .iter()
                .zip(base..)
                .filter_map(|(slot, id)| slot.as_ref().map(|v| (K::of_raw(id), v))),
        )
    }

    /// The ids in order.
    pub(crate) fn keys(&self) -> impl Iterator<Item = K> + '_ {
        self.iter().map(|(id, _)| id)
    }

    /// The records in id order.
    pub(crate) fn values(&self) -> impl Iterator<Item = &V> + '_ {
        self.iter().map(|(_, v)| v)
    }
}

impl<K: SeqId, V: PartialEq> PartialEq for IdMap<K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len()
            && self
                .iter()
                .zip(other.iter())
                .all(|((a, x), (b, y))| a.to_raw() == b.to_raw() && x == y)
    }
}

impl<K: SeqId, V: Eq> Eq for IdMap<K, V> {}

impl<K: SeqId, V: Hash> Hash for IdMap<K, V> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_usize(self.len());
        for (id, v) in self.iter() {
            state.write_u64(id.to_raw());
            v.hash(state);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::IdMap;

    /// Random inserts (in id order, as ids are handed out) and removals (any
    /// order) against a `BTreeMap`: same lookups, same iteration, equal maps.
    #[test]
    fn behaves_like_an_ordered_map() {
        use std::collections::BTreeMap;
        let mut rng = 0x9E37_79B9_7F4A_7C15_u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut m: IdMap<u64, u64> = IdMap::default();
        let mut reference = BTreeMap::new();
        let mut next_id = 0u64;
        for step in 0..200_000u64 {
            let roll = next() % 100;
            if roll < 45 || reference.is_empty() {
                assert_eq!(m.insert(next_id, step), None);
                reference.insert(next_id, step);
                next_id += 1;
            } else {
                // Mostly recent ids, sometimes old ones: long-lived survivors
                // pin the window's front and force compactions.
                let span = if roll < 95 { 50 } else { next_id };
                let id = next_id - 1 - next() % span.min(next_id);
                assert_eq!(m.remove(&id), reference.remove(&id));
            }
            if step % 997 == 0 {
                let probe = next() % (next_id + 10);
                assert_eq!(m.get(&probe), reference.get(&probe));
                assert_eq!(m.len(), reference.len());
                let window = m.dense.len() - m.head;
                assert!(window <= 4 * m.in_dense + super::MIN_COMPACT + 1);
                assert!(m.dense.len() <= 2 * window + 1, "drained behind the head");
            }
        }
        assert!(m
            .iter()
            .map(|(k, v)| (k, *v))
            .eq(reference.iter().map(|(k, v)| (*k, *v))));
        let mut fresh: IdMap<u64, u64> = IdMap::default();
        for (k, v) in &reference {
            fresh.insert(*k, *v);
        }
        assert_eq!(m, fresh);
    }

    #[test]
    fn lookups_order_and_compaction() {
        let mut m: IdMap<u64, u64> = IdMap::default();
        for id in 0..1000u64 {
            assert_eq!(m.insert(id, id * 10), None);
        }
        // Keep every tenth record alive: the window gets sparse and compacts.
        for id in 0..1000u64 {
            if id % 10 != 0 {
                assert_eq!(m.remove(&id), Some(id * 10));
            }
        }
        assert_eq!(m.len(), 100);
        assert!(m.dense.len() < 400, "window compacted: {}", m.dense.len());
        assert!(m.dense[m.head..].first().is_some_and(Option::is_some));
        for id in 0..1000u64 {
            assert_eq!(m.get(&id).copied(), (id % 10 == 0).then_some(id * 10));
        }
        let ids: Vec<u64> = m.keys().collect();
        assert_eq!(ids, (0..100).map(|i| i * 10).collect::<Vec<_>>());
        // Same records, different history: equal.
        let mut fresh: IdMap<u64, u64> = IdMap::default();
        for id in (0..1000u64).step_by(10) {
            fresh.insert(id, id * 10);
        }
        crate::testing::assert_same(&m, &fresh, "same records, different layout");
        // One value, or one id, apart: unequal and hashed apart.
        let mut other = fresh.clone();
        *other.get_mut(&990).unwrap() += 1;
        crate::testing::assert_differs(&m, &other, "a value");
        let mut other = fresh.clone();
        other.remove(&990);
        other.insert(991, 9900);
        crate::testing::assert_differs(&m, &other, "an id");
        for id in (0..1000u64).step_by(10) {
            assert_eq!(m.remove(&id), Some(id * 10));
        }
        assert!(m.is_empty());
        assert_eq!(m.get(&0), None);
        m.insert(5000, 1);
        assert_eq!(m.get(&5000), Some(&1));
        assert_eq!(m.dense.len(), 1);
    }
}
