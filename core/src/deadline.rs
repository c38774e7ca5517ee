//! Pending deadlines, ordered by time.
//!
//! This replaces the Go original's janitor. Nothing is scanned: every entity that
//! can expire (a flight in any phase, a request waiting for its client, an ended
//! record waiting for pickup, a cache entry) has at most one entry here, and the
//! entity remembers when, so arming, disarming and popping the earliest are all
//! O(log n). The one exception is a queued flight: its deadline is implied by the
//! queue's order (see [`Queue`](crate::queue::Queue)). The driver sleeps until the
//! earliest of both and no longer.
//!
//! # The lazy idle deadline
//!
//! A streaming flight's deadline is `min(ends_by, last chunk + idle_timeout)`, so
//! every chunk moves it later. Moving an entry is a B-tree removal and insertion
//! (about 690 instructions, most of a chunk's cost), so a chunk does not move it:
//! it records the new idle deadline in the flight ([`Flight::due`]) and leaves
//! the entry where it is, *earlier* than the flight is due. Such an entry is
//! **stale**. Two rules keep this invisible through the public API:
//!
//! - **A stale entry is never the earliest after an input.** Every input ends by
//!   re-arming stale entries at the front of the set at their due time until the
//!   front is not stale (`Machine::settle_deadlines`). All other entries sit at
//!   or after the front and are due at or after their entry, so the front's time
//!   is the earliest due time: [`Machine::poll_timeout`] is exact, as before.
//!   Only entries that reach the front are ever moved, once each.
//! - **A stale entry popped by `handle_timeout` is re-armed, not fired**, at its
//!   due time, and the loop goes on. Since it can only move later, each flight
//!   fires at its due time, in the `(time, timer)` order of the module docs of
//!   `machine/time.rs`, exactly as if every chunk had moved it.
//!
//! Equality and hashing of the set ignore flight entries (they are derived from
//! the flights, which compare [`Flight::due`]): two machines that differ only in
//! where a stale entry sits behave identically, and the explorer counts them as
//! one state, as it did when every chunk moved the entry.
//!
//! [`Flight::due`]: crate::flight::Flight::due
//! [`Machine::poll_timeout`]: crate::Machine::poll_timeout

use core::hash::{Hash, Hasher};
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
#[derive(Clone, Debug, Default)]
pub(crate) struct Deadlines {
    pending: BTreeSet<(Time, u64)>,
}

/// The tag of a packed [`Timer::Flight`] (see [`Timer::pack`]).
const FLIGHT_TAG: u64 = 0;

impl Deadlines {
    /// The entries equality and hashing see: all but the flights' (see the
    /// module docs).
    fn compared(&self) -> impl Iterator<Item = &(Time, u64)> + '_ {
        self.pending.iter().filter(|(_, t)| t >> 62 != FLIGHT_TAG)
    }
}

impl PartialEq for Deadlines {
    fn eq(&self, other: &Self) -> bool {
        self.pending.len() == other.pending.len() && self.compared().eq(other.compared())
    }
}

impl Eq for Deadlines {}

impl Hash for Deadlines {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.pending.len().hash(state);
        for entry in self.compared() {
            entry.hash(state);
        }
    }
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

    /// The earliest entry, due or not, left in place.
    pub(crate) fn first(&self) -> Option<(Time, Timer)> {
        self.pending
            .first()
            .map(|(at, timer)| (*at, Timer::unpack(*timer)))
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

    /// The set's own invariant: every owner has at most one deadline (an owner
    /// records one time; a second entry would fire for a time it forgot).
    pub(crate) fn check(&self) -> Result<(), String> {
        let mut owners = BTreeSet::new();
        for &(at, packed) in &self.pending {
            if !owners.insert(packed) {
                let timer = Timer::unpack(packed);
                return Err(format!("{timer:?} has a second deadline at {at:?}"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{Deadlines, Timer};
    use crate::{FlightId, RequestId, Time};

    const MAX_ID: u64 = (1 << 62) - 1;

    fn every_kind(id: u64) -> [Timer; 3] {
        [
            Timer::Flight(FlightId::from_raw(id)),
            Timer::Request(RequestId::from_raw(id)),
            Timer::Cache(id),
        ]
    }

    #[test]
    fn packing_round_trips_at_the_boundaries() {
        for id in [0, 1, 2, 1 << 31, (1 << 32) + 7, MAX_ID - 1, MAX_ID] {
            for timer in every_kind(id) {
                assert_eq!(Timer::unpack(timer.pack()), timer, "{timer:?}");
            }
        }
    }

    #[test]
    fn the_kind_lives_in_the_top_two_bits_and_the_id_below() {
        for id in [0, 5, MAX_ID] {
            let [f, r, c] = every_kind(id).map(Timer::pack);
            assert_eq!((f >> 62, r >> 62, c >> 62), (0, 1, 2));
            assert_eq!(f & MAX_ID, id);
            assert_eq!(r & MAX_ID, id);
            assert_eq!(c & MAX_ID, id);
        }
        // The highest id does not spill into the tag.
        assert_eq!(Timer::Flight(FlightId::from_raw(MAX_ID)).pack(), MAX_ID);
        // Any tag above 1 reads as a cache entry (only 2 is ever written).
        assert_eq!(Timer::unpack(3 << 62 | 9), Timer::Cache(9));
    }

    #[test]
    fn packed_order_is_the_enum_order() {
        let mut timers: Vec<Timer> = [0, 1, MAX_ID].into_iter().flat_map(every_kind).collect();
        timers.sort();
        let mut packed: Vec<u64> = timers.iter().map(|t| t.pack()).collect();
        let sorted = {
            let mut p = packed.clone();
            p.sort_unstable();
            p
        };
        assert_eq!(packed, sorted, "packing must keep (kind, id) order");
        packed.dedup();
        assert_eq!(packed.len(), timers.len(), "distinct timers pack apart");
        // The boundaries between kinds: the largest flight id sorts before the
        // smallest request id, and so on.
        assert!(
            Timer::Flight(FlightId::from_raw(MAX_ID)).pack()
                < Timer::Request(RequestId::from_raw(0)).pack()
        );
        assert!(Timer::Request(RequestId::from_raw(MAX_ID)).pack() < Timer::Cache(0).pack());
    }

    /// The documented order for deadlines due at the same instant: flights, then
    /// requests, then cache entries, each by id.
    #[test]
    fn deadlines_due_together_pop_flights_then_requests_then_cache_by_id() {
        let mut d = Deadlines::default();
        let at = Time::from_millis(5);
        let order = [
            Timer::Flight(FlightId::from_raw(1)),
            Timer::Flight(FlightId::from_raw(2)),
            Timer::Request(RequestId::from_raw(0)),
            Timer::Request(RequestId::from_raw(3)),
            Timer::Cache(0),
        ];
        for timer in order.iter().rev() {
            d.arm(&mut None, at, *timer);
        }
        // An earlier deadline of any kind comes first.
        d.arm(&mut None, Time::from_millis(4), Timer::Cache(7));
        assert_eq!(d.next(), Some(Time::from_millis(4)));
        assert_eq!(d.pop_due(Time::from_millis(3)), None, "nothing due yet");
        assert_eq!(d.pop_due(at), Some(Timer::Cache(7)));
        for timer in order {
            assert_eq!(d.peek_due(at), Some((at, timer)));
            assert_eq!(d.pop_due(at), Some(timer));
        }
        assert_eq!(d.pop_due(Time::MAX), None);
        assert_eq!(d.len(), 0);
    }

    #[test]
    fn an_owner_slot_tracks_its_one_deadline() {
        let mut d = Deadlines::default();
        let timer = Timer::Request(RequestId::from_raw(4));
        let mut slot = None;
        d.arm(&mut slot, Time::from_millis(1), timer);
        d.arm(&mut slot, Time::from_millis(2), timer); // re-arm replaces
        assert_eq!(slot, Some(Time::from_millis(2)));
        assert_eq!(d.len(), 1);
        assert!(d.contains(Time::from_millis(2), timer));
        assert!(!d.contains(Time::from_millis(1), timer));
        assert!(!d.contains(Time::from_millis(2), Timer::Cache(4)));
        d.disarm(&mut slot, timer);
        assert_eq!((slot, d.len()), (None, 0));

        let flight = Timer::Flight(FlightId::from_raw(0));
        let mut at = Time::ZERO;
        d.arm_new(&mut at, Time::from_millis(3), flight);
        d.move_to(&mut at, Time::from_millis(6), flight);
        assert_eq!(at, Time::from_millis(6));
        assert!(d.contains(at, flight) && d.len() == 1);
        d.remove(at, flight);
        assert_eq!(d.len(), 0);
        assert!(d.check().is_ok());
    }

    /// Equality and hashing see every request and cache entry and how many
    /// entries there are, but not where a flight's entry sits (see the module
    /// docs: the flight compares its due time itself).
    #[test]
    fn equality_ignores_where_flight_entries_sit() {
        use crate::testing::{assert_differs, assert_same};
        let flight = Timer::Flight(FlightId::from_raw(1));
        let mut base = Deadlines::default();
        base.arm(
            &mut None,
            Time::from_millis(4),
            Timer::Request(RequestId::from_raw(2)),
        );
        base.arm(&mut None, Time::from_millis(6), Timer::Cache(3));
        let mut at = Time::ZERO;
        base.arm_new(&mut at, Time::from_millis(5), flight);
        let mut moved = base.clone();
        moved.move_to(&mut at, Time::from_millis(9), flight);
        assert_same(&base, &moved, "a flight entry's time");
        let mut other = base.clone();
        other.arm(
            &mut None,
            Time::from_millis(7),
            Timer::Request(RequestId::from_raw(2)),
        );
        assert_differs(&base, &other, "a request entry");
        let mut other = base.clone();
        other.arm(
            &mut Some(Time::from_millis(6)),
            Time::from_millis(8),
            Timer::Cache(3),
        );
        assert_differs(&base, &other, "a cache entry's time");
        let mut other = base.clone();
        other.remove(Time::from_millis(5), flight);
        assert_differs(&base, &other, "a flight entry's presence");
        assert_eq!(
            base.first(),
            Some((Time::from_millis(4), Timer::Request(RequestId::from_raw(2))))
        );
    }

    #[test]
    fn check_fires_on_an_owner_with_two_deadlines() {
        let mut d = Deadlines::default();
        let timer = Timer::Flight(FlightId::from_raw(2));
        d.arm(&mut None, Time::from_millis(1), timer);
        assert!(d.check().is_ok());
        // Corrupt: a second entry for the same owner (a forgotten disarm).
        d.arm(&mut None, Time::from_millis(2), timer);
        assert!(d.check().unwrap_err().contains("second deadline"));
    }
}
