//! Pending deadlines, ordered by time.
//!
//! This replaces the Go original's janitor. Nothing is scanned: every entity that
//! can expire (a flight in any phase, a request waiting for its client, an ended
//! record waiting for pickup, a cache entry) has at most one entry here, and the
//! entity remembers when, so arming, disarming and popping the earliest are all
//! O(log n). The one exception is a queued flight: its deadline is implied by the
//! queue's order (see `Machine::next_queue_expiry`). The driver sleeps until the
//! earliest of both and no longer.

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

impl Timer {
    /// Two tag bits above a 62-bit id: 16-byte entries instead of 24, ordered
    /// exactly as the enum (by variant, then id). Ids are counters from zero and
    /// never reach 2^62.
    fn pack(self) -> u64 {
        const ID: u64 = (1 << 62) - 1;
        match self {
            Timer::Flight(id) => id.raw() & ID,
            Timer::Request(id) => (1 << 62) | (id.raw() & ID),
            Timer::Cache(seq) => (2 << 62) | (seq & ID),
        }
    }

    fn unpack(packed: u64) -> Self {
        let id = packed & ((1 << 62) - 1);
        match packed >> 62 {
            0 => Timer::Flight(FlightId::from_raw(id)),
            1 => Timer::Request(RequestId::from_raw(id)),
            _ => Timer::Cache(id),
        }
    }
}

/// The set of pending deadlines.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct Deadlines {
    pending: BTreeSet<(Time, u64)>,
}

impl Deadlines {
    /// Sets `timer` to fire at `at`, replacing the deadline recorded in `slot`.
    pub(crate) fn arm(&mut self, slot: &mut Option<Time>, at: Time, timer: Timer) {
        if *slot == Some(at) {
            return;
        }
        self.disarm(slot, timer);
        self.pending.insert((at, timer.pack()));
        *slot = Some(at);
    }

    /// Moves an owner's armed deadline from `*slot` to `at`.
    pub(crate) fn move_to(&mut self, slot: &mut Time, at: Time, timer: Timer) {
        if *slot == at {
            return;
        }
        self.pending.remove(&(*slot, timer.pack()));
        self.pending.insert((at, timer.pack()));
        *slot = at;
    }

    /// Arms a deadline for an owner whose `*slot` is not armed (a flight leaving
    /// the queue, whose queue deadline was implied).
    pub(crate) fn arm_new(&mut self, slot: &mut Time, at: Time, timer: Timer) {
        self.pending.insert((at, timer.pack()));
        *slot = at;
    }

    /// Removes `timer`'s deadline at `at` (nothing if it is not armed).
    pub(crate) fn remove(&mut self, at: Time, timer: Timer) {
        self.pending.remove(&(at, timer.pack()));
    }

    /// Removes the deadline recorded in `slot`, if any.
    pub(crate) fn disarm(&mut self, slot: &mut Option<Time>, timer: Timer) {
        if let Some(at) = slot.take() {
            self.pending.remove(&(at, timer.pack()));
        }
    }

    /// The earliest pending deadline.
    pub(crate) fn next(&self) -> Option<Time> {
        self.pending.first().map(|(at, _)| *at)
    }

    /// The earliest deadline if it is due at `now`, left in place.
    pub(crate) fn peek_due(&self, now: Time) -> Option<(Time, Timer)> {
        let (at, timer) = self.pending.first()?;
        (*at <= now).then(|| (*at, Timer::unpack(*timer)))
    }

    /// Removes and returns the earliest deadline if it is due at `now`. The caller
    /// must clear the owner's slot.
    pub(crate) fn pop_due(&mut self, now: Time) -> Option<Timer> {
        let (at, _) = self.pending.first()?;
        if *at > now {
            return None;
        }
        self.pending
            .pop_first()
            .map(|(_, timer)| Timer::unpack(timer))
    }

    pub(crate) fn len(&self) -> usize {
        self.pending.len()
    }

    pub(crate) fn contains(&self, at: Time, timer: Timer) -> bool {
        self.pending.contains(&(at, timer.pack()))
    }
}
