//! The result cache: completed logs by key, bounded in entries and in age.
//!
//! A completed flight's log is shared, not copied: the cache, the members' records
//! and any reader all hold the same `Arc`. Eviction is oldest-inserted first, and
//! expiry is a deadline like any other, so nothing here is ever scanned.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::deadline::{Deadlines, Timer};
use crate::ending::Ending;
use crate::{Key, Time};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Entry {
    /// The completed ending members of a cache hit share.
    ending: Arc<Ending>,
    seq: u64,
    expires: Option<Time>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct Cache {
    entries: BTreeMap<Key, Entry>,
    by_age: BTreeMap<u64, Key>,
    next_seq: u64,
}

impl Cache {
    pub(crate) fn get(&self, key: &Key) -> Option<&Arc<Ending>> {
        self.entries.get(key).map(|e| &e.ending)
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
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
        self.remove(deadlines, &key);
        while self.entries.len() >= capacity {
            let Some((_, oldest)) = self.by_age.first_key_value() else {
                break;
            };
            let oldest = oldest.clone();
            self.remove(deadlines, &oldest);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut entry = Entry {
            ending,
            seq,
            expires: None,
        };
        deadlines.arm(&mut entry.expires, expires, Timer::Cache(seq));
        self.by_age.insert(seq, key.clone());
        self.entries.insert(key, entry);
    }

    fn remove(&mut self, deadlines: &mut Deadlines, key: &Key) {
        if let Some(mut entry) = self.entries.remove(key) {
            deadlines.disarm(&mut entry.expires, Timer::Cache(entry.seq));
            self.by_age.remove(&entry.seq);
        }
    }

    /// The deadline of the entry inserted as `seq` fired (its slot is already popped).
    pub(crate) fn expire(&mut self, seq: u64) {
        if let Some(key) = self.by_age.remove(&seq) {
            self.entries.remove(&key);
        }
    }

    /// Checks that every entry is indexed once and has its deadline armed.
    pub(crate) fn check(&self, deadlines: &Deadlines) -> Result<(), String> {
        if self.entries.len() != self.by_age.len() {
            return Err("cache index out of step with entries".into());
        }
        for (key, entry) in &self.entries {
            if self.by_age.get(&entry.seq) != Some(key) {
                return Err(format!("cache entry {key} not indexed"));
            }
            match entry.expires {
                Some(at) if deadlines.contains(at, Timer::Cache(entry.seq)) => {}
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
        let key = c.by_age.remove(&0).unwrap();
        c.by_age.insert(7, key);
        assert!(c.check(&deadlines).unwrap_err().contains("not indexed"));
        let mut d = deadlines.clone();
        d.remove(Time::from_millis(2), Timer::Cache(1));
        assert!(cache.check(&d).unwrap_err().contains("no expiry deadline"));
        let mut c = cache.clone();
        c.entries.get_mut(&Key::from("a")).unwrap().expires = None;
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
            ("entries", |c| {
                c.entries.remove(&Key::from("a"));
            }),
            ("by_age", |c| {
                c.by_age.remove(&0);
            }),
            ("next_seq", |c| c.next_seq += 1),
            ("entry ending", |c| {
                let e = c.entries.get_mut(&Key::from("a")).unwrap();
                Arc::make_mut(&mut e.ending).outcome = Outcome::Cancelled;
            }),
            ("entry seq", |c| {
                c.entries.get_mut(&Key::from("a")).unwrap().seq = 9;
            }),
            ("entry expires", |c| {
                c.entries.get_mut(&Key::from("a")).unwrap().expires = None;
            }),
        ];
        for (field, change) in variants {
            let mut other = base.clone();
            change(&mut other);
            assert_differs(&base, &other, field);
        }
    }
}
