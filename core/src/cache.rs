//! The result cache: completed logs by key, bounded in entries and in age.
//!
//! A completed flight's log is shared, not copied: the cache, the members' records
//! and any reader all hold the same `Arc`. Eviction is oldest-inserted first, and
//! expiry is a deadline like any other, so nothing here is ever scanned.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::deadline::{Deadlines, Timer};
use crate::ending::Ending;
use crate::live::KeyIndex;
use crate::{Key, Time};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Entry {
    key: Key,
    /// The completed ending members of a cache hit share.
    ending: Arc<Ending>,
    expires: Option<Time>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct Cache {
    /// The entries by insertion sequence, oldest first: the eviction order, and
    /// what equality and hashing see.
    by_age: BTreeMap<u64, Entry>,
    /// Each key's entry (its sequence), found by hashing the key: a lookup is one
    /// hash and two integer-keyed searches, never a walk comparing keys. Derived
    /// from `by_age`, so equality and hashing skip it (see [`KeyIndex`]).
    index: KeyIndex<u64>,
    next_seq: u64,
}

impl Cache {
    /// The sequence of `key`'s entry, if any.
    fn seq_of(&self, key: &Key) -> Option<u64> {
        let by_age = &self.by_age;
        self.index
            .get(key, |seq| by_age.get(&seq).is_some_and(|e| e.key == *key))
    }

    pub(crate) fn get(&self, key: &Key) -> Option<&Arc<Ending>> {
        let seq = self.seq_of(key)?;
        self.by_age.get(&seq).map(|e| &e.ending)
    }

    pub(crate) fn len(&self) -> usize {
        self.by_age.len()
    }

    /// Stores `ending` (a completed one) under `key` until `expires`, evicting the oldest
    /// entry when `capacity` is reached. A capacity of zero stores nothing.
    pub(crate) fn insert(
        &mut self,
        deadlines: &mut Deadlines,
        capacity: usize,
        key: Key,
        ending: Arc<Ending>,
        expires: Time,
    ) {
        if capacity == 0 {
            return;
        }
        if let Some(seq) = self.seq_of(&key) {
            self.remove(deadlines, seq);
        }
        while self.by_age.len() >= capacity {
            let Some((&oldest, _)) = self.by_age.first_key_value() else {
                break;
            };
            self.remove(deadlines, oldest);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut entry = Entry {
            key,
            ending,
            expires: None,
        };
        deadlines.arm(&mut entry.expires, expires, Timer::Cache(seq));
        self.index.insert(&entry.key, seq);
        self.by_age.insert(seq, entry);
    }

    fn remove(&mut self, deadlines: &mut Deadlines, seq: u64) {
        if let Some(mut entry) = self.by_age.remove(&seq) {
            deadlines.disarm(&mut entry.expires, Timer::Cache(seq));
            self.index.remove(&entry.key, seq);
        }
    }

    /// The deadline of the entry inserted as `seq` fired (its slot is already popped).
    pub(crate) fn expire(&mut self, seq: u64) {
        if let Some(entry) = self.by_age.remove(&seq) {
            self.index.remove(&entry.key, seq);
        }
    }

    /// Checks that every entry is indexed once and has its deadline armed.
    pub(crate) fn check(&self, deadlines: &Deadlines) -> Result<(), String> {
        if self.index.len() != self.by_age.len() {
            return Err("cache index out of step with entries".into());
        }
        for (&seq, entry) in &self.by_age {
            let key = &entry.key;
            if self.seq_of(key) != Some(seq) {
                return Err(format!("cache entry {key} not indexed"));
            }
            match entry.expires {
                Some(at) if deadlines.contains(at, Timer::Cache(seq)) => {}
                _ => return Err(format!("cache entry {key} has no expiry deadline")),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::Cache;
    use crate::deadline::{Deadlines, Timer};
    use crate::ending::Ending;
    use crate::{Key, Outcome, Time};

    fn ending() -> Arc<Ending> {
        Arc::new(Ending {
            outcome: Outcome::Completed,
            log: Some(Arc::new(Vec::new())),
        })
    }

    fn filled() -> (Cache, Deadlines) {
        let mut cache = Cache::default();
        let mut deadlines = Deadlines::default();
        for (n, key) in ["a", "b"].into_iter().enumerate() {
            let at = Time::from_millis(n as u64 + 1);
            cache.insert(&mut deadlines, 2, Key::from(key), ending(), at);
        }
        (cache, deadlines)
    }

    #[test]
    fn oldest_is_evicted_and_expiry_removes_by_sequence() {
        let (mut cache, mut deadlines) = filled();
        assert_eq!(cache.check(&deadlines), Ok(()));
        cache.insert(
            &mut deadlines,
            2,
            Key::from("c"),
            ending(),
            Time::from_millis(3),
        );
        assert!(cache.get(&Key::from("a")).is_none(), "the oldest went");
        assert!(cache.get(&Key::from("b")).is_some() && cache.len() == 2);
        assert_eq!(deadlines.len(), 2, "the evicted entry's deadline went too");
        // Re-inserting a key replaces it (and its deadline), at the young end.
        cache.insert(
            &mut deadlines,
            2,
            Key::from("b"),
            ending(),
            Time::from_millis(9),
        );
        assert_eq!(deadlines.len(), 2);
        assert_eq!(
            deadlines.pop_due(Time::from_millis(3)),
            Some(Timer::Cache(2))
        );
        cache.expire(2);
        assert!(cache.get(&Key::from("c")).is_none() && cache.len() == 1);
        cache.expire(2); // a second expiry of the same sequence does nothing
        assert_eq!(cache.len(), 1);
        cache.insert(&mut deadlines, 0, Key::from("z"), ending(), Time::ZERO);
        assert!(
            cache.get(&Key::from("z")).is_none(),
            "capacity zero stores nothing"
        );
        assert_eq!(cache.check(&deadlines), Ok(()));
    }

    #[test]
    fn check_fires_on_each_corruption() {
        let (cache, deadlines) = filled();
        let mut c = cache.clone();
        c.by_age.remove(&0);
        assert!(c.check(&deadlines).unwrap_err().contains("out of step"));
        let mut c = cache.clone();
        let entry = c.by_age.remove(&0).unwrap();
        c.by_age.insert(7, entry);
        assert!(c.check(&deadlines).unwrap_err().contains("not indexed"));
        let mut d = deadlines.clone();
        d.remove(Time::from_millis(2), Timer::Cache(1));
        assert!(cache.check(&d).unwrap_err().contains("no expiry deadline"));
        let mut c = cache.clone();
        c.by_age.get_mut(&0).unwrap().expires = None;
        assert!(c
            .check(&deadlines)
            .unwrap_err()
            .contains("no expiry deadline"));
    }

    #[test]
    fn every_field_counts_for_equality_and_hashing() {
        use crate::testing::assert_differs;
        let (base, _) = filled();
        let variants: Vec<crate::testing::Change<Cache>> = vec![
            ("by_age", |c| {
                c.by_age.remove(&0);
            }),
            ("next_seq", |c| c.next_seq += 1),
            ("entry key", |c| {
                c.by_age.get_mut(&0).unwrap().key = Key::from("z");
            }),
            ("entry ending", |c| {
                let e = c.by_age.get_mut(&0).unwrap();
                Arc::make_mut(&mut e.ending).outcome = Outcome::Cancelled;
            }),
            ("entry seq", |c| {
                let e = c.by_age.remove(&0).unwrap();
                c.by_age.insert(9, e);
            }),
            ("entry expires", |c| {
                c.by_age.get_mut(&0).unwrap().expires = None;
            }),
        ];
        for (field, change) in variants {
            let mut other = base.clone();
            change(&mut other);
            assert_differs(&base, &other, field);
        }
    }
}
