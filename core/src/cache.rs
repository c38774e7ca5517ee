//! The result cache: completed logs by key, bounded in entries and in age.
//!
//! A completed flight's log is shared, not copied: the cache, the members' records
//! and any reader all hold the same `Arc`. Eviction is oldest-inserted first, and
//! expiry is a deadline like any other, so nothing here is ever scanned.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::deadline::{Deadlines, Timer};
use crate::request::Ending;
use crate::{Key, Time};

/// A completed response, shared between the cache and the records that read it.
pub(crate) type Log = Arc<Vec<Bytes>>;

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

    /// Stores `ending` (a completed one) under `key` until `expires`, evicting the oldest entry when
    /// `capacity` is reached. A capacity of zero stores nothing.
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
