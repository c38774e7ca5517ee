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
//! # Lines
//!
//! Most deadlines are armed as "now plus a fixed duration": a request's attach
//! deadline, its retention, a cache entry's expiry. Since time never runs
//! backwards, those arrive in order, and a B-tree insertion and removal each
//! (most requests are attached at once, so the attach deadline is disarmed right
//! after it is armed) is most of what a submit costs. So request and cache
//! entries go to a few **lines** instead: queues in `(time, timer)` order that
//! only ever append. An entry goes to the line whose last entry is the latest
//! one before it (with one duration per kind of deadline, each kind keeps to its
//! own line), or to a new line, or, when [`MAX_LINES`] are in use and none can
//! take it, to the B-tree as before. Removing an entry leaves a tombstone, unless
//! it is at either end of its line (the common case: a just-armed attach
//! deadline), and a line with many tombstones is compacted. Flight entries stay
//! in the B-tree: they move with every phase.
//!
//! The earliest entry is the least of the B-tree's first and each line's
//! first, so popping follows exactly the `(time, timer)` order of one set,
//! and where an entry sits is invisible: equality and hashing see the entries,
//! not the layout.
//!
//! Equality and hashing of the set ignore flight entries (they are derived from
//! the flights, which compare [`Flight::due`]): two machines that differ only in
//! where a stale entry sits behave identically, and the explorer counts them as
//! one state, as it did when every chunk moved the entry.
//!
//! [`Flight::due`]: crate::flight::Flight::due
//! [`Machine::poll_timeout`]: crate::Machine::poll_timeout

use core::hash::{Hash, Hasher};
use std::collections::{BTreeSet, VecDeque};

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

/// An entry of a [`Line`]: a deadline, or the tombstone of a removed one.
#[derive(Clone, Copy, Debug)]
struct Slot {
    at: Time,
    packed: u64,
    live: bool,
}

impl Slot {
    fn entry(self) -> (Time, u64) {
        (self.at, self.packed)
    }
}

/// Deadlines armed in increasing `(time, timer)` order, kept in that order by
/// appending: see "Lines" in the module docs.
#[derive(Clone, Debug, Default)]
struct Line {
    /// Strictly increasing by `(at, packed)`, tombstones included; the first and
    /// the last slot are live.
    slots: VecDeque<Slot>,
    /// Tombstones among `slots`.
    dead: usize,
}

/// At most this many lines; an entry no line can take goes to the B-tree.
const MAX_LINES: usize = 4;

/// A line with more tombstones than this, and more than live entries, is
/// compacted, so tombstones never cost more memory than the entries themselves.
const MAX_DEAD: usize = 32;

impl Line {
    fn front(&self) -> Option<(Time, u64)> {
        self.slots.front().map(|s| s.entry())
    }

    fn back(&self) -> Option<(Time, u64)> {
        self.slots.back().map(|s| s.entry())
    }

    /// Drops tombstones at both ends, so that both ends are live.
    fn trim(&mut self) {
        while self.slots.back().is_some_and(|s| !s.live) {
            self.slots.pop_back();
            self.dead -= 1;
        }
        while self.slots.front().is_some_and(|s| !s.live) {
            self.slots.pop_front();
            self.dead -= 1;
        }
    }

    /// The position of the live `entry`.
    fn find(&self, entry: (Time, u64)) -> Option<usize> {
        let (first, last) = (self.front()?, self.back()?);
        if entry < first || entry > last {
            return None;
        }
        let at = self
            .slots
            .binary_search_by(|s| s.entry().cmp(&entry))
            .ok()?;
        self.slots[at].live.then_some(at)
    }

    /// Removes the live `entry`; whether it was here.
    fn remove(&mut self, entry: (Time, u64)) -> bool {
        let Some(at) = self.find(entry) else {
            return false;
        };
        self.slots[at].live = false;
        self.dead += 1;
        self.trim();
        if self.dead > MAX_DEAD && self.dead > self.slots.len() - self.dead {
            self.slots.retain(|s| s.live);
            self.dead = 0;
        }
        true
    }

    /// Removes and returns the first entry (live, by the invariant).
    fn pop_front(&mut self) -> Option<(Time, u64)> {
        let first = self.slots.pop_front()?.entry();
        self.trim();
        Some(first)
    }

    fn live(&self) -> impl Iterator<Item = (Time, u64)> + '_ {
        self.slots.iter().filter(|s| s.live).map(|s| s.entry())
    }
}

/// The set of pending deadlines.
#[derive(Clone, Debug, Default)]
pub(crate) struct Deadlines {
    /// Flight entries, and any entry no line could take.
    pending: BTreeSet<(Time, u64)>,
    /// Request and cache entries, appended in order (see the module docs).
    lines: Vec<Line>,
    /// Live entries in `lines`.
    in_lines: usize,
}

/// The tag of a packed [`Timer::Flight`] (see [`Timer::pack`]).
const FLIGHT_TAG: u64 = 0;

/// Where the earliest entry sits.
#[derive(Clone, Copy)]
enum Source {
    Tree,
    Line(usize),
}

impl Deadlines {
    /// The entries equality and hashing see, in order: all but the flights'
    /// (see the module docs), wherever they sit.
    fn compared(&self) -> Vec<(Time, u64)> {
        let mut all: Vec<(Time, u64)> = self
            .pending
            .iter()
            .copied()
            .filter(|(_, t)| t >> 62 != FLIGHT_TAG)
            .collect();
        if self.in_lines > 0 {
            all.extend(self.lines.iter().flat_map(Line::live));
            all.sort_unstable();
        }
        all
    }

    /// Adds an entry: a flight's to the B-tree (flights move), any other to the
    /// line whose last entry is the latest one before it, else to a new line,
    /// else to the B-tree.
    fn insert(&mut self, entry: (Time, u64)) {
        if entry.1 >> 62 != FLIGHT_TAG {
            let mut best: Option<(usize, (Time, u64))> = None;
            let mut empty = None;
            for (i, line) in self.lines.iter().enumerate() {
                match line.back() {
                    Some(back) if back < entry && best.is_none_or(|(_, b)| back > b) => {
                        best = Some((i, back));
                    }
                    None => empty = Some(i),
                    Some(_) => {}
                }
            }
            let line = match (best, empty) {
                (Some((i, _)), _) | (None, Some(i)) => Some(i),
                (None, None) if self.lines.len() < MAX_LINES => {
                    self.lines.push(Line::default());
                    Some(self.lines.len() - 1)
                }
                (None, None) => None,
            };
            if let Some(i) = line {
                self.lines[i].slots.push_back(Slot {
                    at: entry.0,
                    packed: entry.1,
                    live: true,
                });
                self.in_lines += 1;
                return;
            }
        }
        self.pending.insert(entry);
    }

    /// Removes an entry wherever it sits (nothing if it is not armed).
    fn delete(&mut self, entry: (Time, u64)) {
        if entry.1 >> 62 != FLIGHT_TAG && self.in_lines > 0 {
            // The common case first: the entry was the last one armed on its
            // line (an attach deadline disarmed by the attach right after the
            // submit). Lines overlap in time, so searching one that does not
            // hold the entry would cost a binary search for nothing.
            for line in &mut self.lines {
                if line.back() == Some(entry) {
                    line.slots.pop_back();
                    line.trim();
                    self.in_lines -= 1;
                    return;
                }
            }
            for line in &mut self.lines {
                if line.remove(entry) {
                    self.in_lines -= 1;
                    return;
                }
            }
        }
        self.pending.remove(&entry);
    }

    /// The earliest entry and where it sits.
    fn earliest(&self) -> Option<((Time, u64), Source)> {
        let mut best = self.pending.first().map(|e| (*e, Source::Tree));
        if self.in_lines > 0 {
            for (i, line) in self.lines.iter().enumerate() {
                if let Some(front) = line.front() {
                    if best.is_none_or(|(b, _)| front < b) {
                        best = Some((front, Source::Line(i)));
                    }
                }
            }
        }
        best
    }
}

impl PartialEq for Deadlines {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.compared() == other.compared()
    }
}

impl Eq for Deadlines {}

impl Hash for Deadlines {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.len().hash(state);
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
        self.insert((at, timer.pack()));
        *slot = Some(at);
    }

    /// Moves an owner's armed deadline from `*slot` to `at`.
    pub(crate) fn move_to(&mut self, slot: &mut Time, at: Time, timer: Timer) {
        if *slot == at {
            return;
        }
        self.delete((*slot, timer.pack()));
        self.insert((at, timer.pack()));
        *slot = at;
    }

    /// Arms a deadline for an owner whose `*slot` is not armed (a flight leaving
    /// the queue, whose queue deadline was implied).
    pub(crate) fn arm_new(&mut self, slot: &mut Time, at: Time, timer: Timer) {
        self.insert((at, timer.pack()));
        *slot = at;
    }

    /// Removes `timer`'s deadline at `at` (nothing if it is not armed).
    pub(crate) fn remove(&mut self, at: Time, timer: Timer) {
        self.delete((at, timer.pack()));
    }

    /// Removes the deadline recorded in `slot`, if any.
    pub(crate) fn disarm(&mut self, slot: &mut Option<Time>, timer: Timer) {
        if let Some(at) = slot.take() {
            self.delete((at, timer.pack()));
        }
    }

    /// The earliest pending deadline.
    pub(crate) fn next(&self) -> Option<Time> {
        self.earliest().map(|((at, _), _)| at)
    }

    /// The earliest entry, due or not, left in place.
    pub(crate) fn first(&self) -> Option<(Time, Timer)> {
        self.earliest()
            .map(|((at, timer), _)| (at, Timer::unpack(timer)))
    }

    /// The earliest deadline if it is due at `now`, left in place.
    pub(crate) fn peek_due(&self, now: Time) -> Option<(Time, Timer)> {
        self.first().filter(|(at, _)| *at <= now)
    }

    /// Removes and returns the earliest deadline if it is due at `now`. The caller
    /// must clear the owner's slot.
    pub(crate) fn pop_due(&mut self, now: Time) -> Option<Timer> {
        let ((at, _), source) = self.earliest()?;
        if at > now {
            return None;
        }
        let popped = match source {
            Source::Tree => self.pending.pop_first(),
            Source::Line(i) => {
                self.in_lines -= 1;
                self.lines[i].pop_front()
            }
        };
        popped.map(|(_, timer)| Timer::unpack(timer))
    }

    pub(crate) fn len(&self) -> usize {
        self.pending.len() + self.in_lines
    }

    pub(crate) fn contains(&self, at: Time, timer: Timer) -> bool {
        let entry = (at, timer.pack());
        self.pending.contains(&entry) || self.lines.iter().any(|l| l.find(entry).is_some())
    }

    /// The set's own invariant: every owner has at most one deadline (an owner
    /// records one time; a second entry would fire for a time it forgot). And
    /// the lines' layout: each in order with live ends, its counts right.
    pub(crate) fn check(&self) -> Result<(), String> {
        let mut in_lines = 0;
        for (i, line) in self.lines.iter().enumerate() {
            let ordered = line
                .slots
                .iter()
                .zip(line.slots.iter().skip(1))
                .all(|(a, b)| a.entry() < b.entry());
            let live_ends = [line.slots.front(), line.slots.back()]
                .into_iter()
                .all(|s| s.is_none_or(|s| s.live));
            let live = line.live().count();
            if !ordered || !live_ends || line.slots.len() - live != line.dead {
                return Err(format!("deadline line {i} out of order or miscounted"));
            }
            in_lines += live;
        }
        if in_lines != self.in_lines {
            return Err(format!(
                "deadline lines hold {in_lines}, counted {}",
                self.in_lines
            ));
        }
        let mut owners = BTreeSet::new();
        let lines = self.lines.iter().flat_map(Line::live);
        for (at, packed) in self.pending.iter().copied().chain(lines) {
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

    /// Request and cache entries go to lines, in whatever order they come; a
    /// mix of lines, tombstones and the B-tree pops in exactly the order one
    /// ordered set would, and equality does not see where an entry sits.
    #[test]
    fn lines_pop_in_the_order_of_one_ordered_set() {
        use std::collections::BTreeSet;

        use crate::testing::assert_same;
        let mut d = Deadlines::default();
        let mut model = BTreeSet::new();
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |below: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % below
        };
        let mut armed: Vec<(Time, Timer)> = Vec::new();
        let mut now = 0;
        for id in 0..3000 {
            now += next(3);
            // Five durations: more kinds than lines, so some entries reach the
            // B-tree; and some arms out of order.
            let at =
                Time::from_millis(now + [30, 60, 600, 45, 90][usize::try_from(next(5)).unwrap()]);
            let timer = match next(4) {
                0 => Timer::Cache(id),
                1 => Timer::Flight(FlightId::from_raw(id)),
                _ => Timer::Request(RequestId::from_raw(id)),
            };
            d.arm(&mut None, at, timer);
            model.insert((at, timer));
            armed.push((at, timer));
            // Disarm a recent one (often the last: the attach case) or any.
            if next(3) == 0 {
                let i = if next(2) == 0 {
                    armed.len() - 1
                } else {
                    usize::try_from(next(armed.len() as u64)).unwrap()
                };
                let (at, timer) = armed.swap_remove(i);
                d.remove(at, timer);
                model.remove(&(at, timer));
            }
            if next(50) == 0 {
                let due = Time::from_millis(now + next(40));
                while let Some(timer) = d.pop_due(due) {
                    let first = model.pop_first().unwrap();
                    assert!(first.0 <= due);
                    assert_eq!(first.1, timer);
                    armed.retain(|&e| e != first);
                }
                assert!(model.first().is_none_or(|(at, _)| *at > due));
            }
            assert_eq!(d.len(), model.len());
            assert_eq!(d.first(), model.first().copied());
        }
        assert_eq!(d.check(), Ok(()));
        assert!(d.lines.len() == super::MAX_LINES && !d.pending.is_empty());
        for &(at, timer) in &model {
            assert!(d.contains(at, timer));
        }
        // The same entries, all in the B-tree: equal, and hashed alike.
        let tree = Deadlines {
            pending: model.iter().map(|&(at, t)| (at, t.pack())).collect(),
            ..Deadlines::default()
        };
        assert_same(&d, &tree, "where an entry sits");
        while let Some(timer) = d.pop_due(Time::MAX) {
            assert_eq!(Some(timer), model.pop_first().map(|(_, t)| t));
        }
        assert!(model.is_empty() && d.len() == 0 && d.in_lines == 0);
    }

    /// Tombstones in the middle of a line are compacted away once they
    /// outnumber the live entries.
    #[test]
    fn a_line_full_of_tombstones_is_compacted() {
        let mut d = Deadlines::default();
        let timer = |n| Timer::Request(RequestId::from_raw(n));
        for n in 0..200 {
            d.arm(&mut None, Time::from_millis(n), timer(n));
        }
        assert_eq!((d.lines.len(), d.pending.len()), (1, 0));
        for n in 1..150 {
            d.remove(Time::from_millis(n), timer(n));
        }
        assert_eq!(d.len(), 51);
        // Compacted when the 101st tombstone outnumbered the 99 live entries;
        // the 48 since do not outnumber the 51 left.
        assert_eq!((d.lines[0].slots.len(), d.lines[0].dead), (99, 48));
        assert_eq!(d.check(), Ok(()));
        assert_eq!(d.pop_due(Time::MAX), Some(timer(0)));
        assert_eq!(d.pop_due(Time::MAX), Some(timer(150)));
    }

    #[test]
    fn check_fires_on_a_line_out_of_order() {
        let mut d = Deadlines::default();
        let timer = Timer::Request(RequestId::from_raw(1));
        d.arm(&mut None, Time::from_millis(2), timer);
        d.arm(&mut None, Time::from_millis(3), Timer::Cache(1));
        d.lines[0].slots.swap(0, 1);
        assert!(d.check().unwrap_err().contains("out of order"));
        let mut d = Deadlines::default();
        d.arm(&mut None, Time::from_millis(2), timer);
        d.in_lines = 2;
        assert!(d.check().unwrap_err().contains("counted"));
    }
}
