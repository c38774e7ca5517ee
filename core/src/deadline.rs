//! Pending deadlines, ordered by time.
//!
//! This replaces the Go original's janitor. Nothing is scanned: every entity that
//! can expire (a flight in any phase, a request waiting for its client, an ended
//! record waiting for pickup, a cache entry) has at most one entry here, and the
//! entity remembers when, so arming, disarming and popping the earliest are all
//! O(log n). The driver sleeps until [`Deadlines::next`] and no longer.

use std::collections::BTreeSet;

use crate::{FlightId, RequestId, Time};

/// What a deadline belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Timer {
    /// The flight's current phase deadline.
    Flight(FlightId),
    /// A request's attach deadline (live) or its retention (ended).
    Request(RequestId),
    /// A cache entry's expiry, by insertion sequence.
    Cache(u64),
}

/// The set of pending deadlines.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct Deadlines {
    pending: BTreeSet<(Time, Timer)>,
}

impl Deadlines {
    /// Sets `timer` to fire at `at`, replacing the deadline recorded in `slot`.
    pub(crate) fn arm(&mut self, slot: &mut Option<Time>, at: Time, timer: Timer) {
        if *slot == Some(at) {
            return;
        }
        self.disarm(slot, timer);
        self.pending.insert((at, timer));
        *slot = Some(at);
    }

    /// Removes the deadline recorded in `slot`, if any.
    pub(crate) fn disarm(&mut self, slot: &mut Option<Time>, timer: Timer) {
        if let Some(at) = slot.take() {
            self.pending.remove(&(at, timer));
        }
    }

    /// The earliest pending deadline.
    pub(crate) fn next(&self) -> Option<Time> {
        self.pending.first().map(|(at, _)| *at)
    }

    /// Removes and returns the earliest deadline if it is due at `now`. The caller
    /// must clear the owner's slot.
    pub(crate) fn pop_due(&mut self, now: Time) -> Option<Timer> {
        let (at, _) = self.pending.first()?;
        if *at > now {
            return None;
        }
        self.pending.pop_first().map(|(_, timer)| timer)
    }

    pub(crate) fn len(&self) -> usize {
        self.pending.len()
    }

    pub(crate) fn contains(&self, at: Time, timer: Timer) -> bool {
        self.pending.contains(&(at, timer))
    }
}
