//! The admission queue: flights waiting for a preparation slot, first in first
//! out ([rule 3](crate::contract#rule-3)).
//!
//! The queue holds flight ids only, in id order. Flight ids grow with creation
//! and a local flight is queued when it is created, so arrival order is id
//! order, and a flight's position is the number of queued flights with a
//! smaller id. (In cluster mode an owner flight is queued when its claim is
//! answered, possibly after a younger one: it takes its id's place, as the
//! ordered set this queue replaced did; see [`Queue::push`].)
//!
//! A queued flight's deadline is not armed in [`Deadlines`](crate::deadline):
//! every flight is queued at creation with `now + queue_timeout`, time never runs
//! backwards and ids grow with creation, so along the queue the deadlines never
//! decrease and the head's is the earliest ([`Queue::next_expiry`]). That saves one
//! deadline entry per queued flight; handling order is unchanged, because the head
//! competes with the armed deadlines as `(time, Timer::Flight(id))`, exactly as if
//! it were armed.
//!
//! # Positions in O(log n)
//!
//! [`Machine::status`](crate::Machine::status) reports a queued request's
//! position, and `submit` callers ask for it at once, under the driver's lock,
//! so counting the flights ahead one by one (O(queue length)) made every status
//! of a long queue slow. The queue is instead an array of slots in arrival order
//! in which a flight that leaves is only marked gone, plus a Fenwick tree (a
//! binary indexed tree) counting the slots still queued: a flight's slot is
//! found by binary search (ids are sorted), and the flights ahead of it are a
//! prefix count. Push, pop, removal and position are all O(log n); gone slots
//! are dropped when they outnumber the queued ones, which costs O(1) amortised
//! per departure. Equality and hashing see the queued flights in order, not the
//! slots' layout.

use core::hash::{Hash, Hasher};

use crate::flight::FlightPhase;
use crate::flights::Flights;
use crate::{FlightId, Time};

/// Set on a slot whose flight has left the queue. Flight ids stay below 2^62
/// (see `deadline::Timer::pack`), so the bit is free.
const GONE: u64 = 1 << 63;

/// Below this many slots, gone ones are kept (compacting would not pay).
const COMPACT_FROM: usize = 64;

/// Flights waiting for a preparation slot, in arrival order.
#[derive(Clone, Debug, Default)]
pub(crate) struct Queue {
    /// Raw flight ids in arrival (= id) order; [`GONE`] marks one that left.
    slots: Vec<u64>,
    /// The first slot still queued (`slots.len()` when none is): every slot
    /// before it is gone.
    head: usize,
    /// How many slots are still queued.
    len: usize,
    /// Counts of queued slots, for prefix sums over `slots`.
    counts: Fenwick,
}

impl Queue {
    /// Queues a flight. A new local flight has the largest id so far and is
    /// appended in O(1) amortised.
    ///
    /// In cluster mode a flight is queued when its claim is answered, and claims
    /// may be answered out of creation order: a flight older than the newest
    /// slot is inserted at its id's place instead (O(slots): the slots shift
    /// and the counts are rebuilt), so the queue stays in id order, which is
    /// also deadline order ([rule 25](crate::contract#rule-25): claiming is
    /// queue time, with the deadline fixed at creation).
    pub(crate) fn push(&mut self, flight: FlightId) {
        let raw = flight.raw();
        if self.slots.last().is_none_or(|last| (last & !GONE) < raw) {
            self.slots.push(raw);
            self.counts.push(1);
        } else {
            self.slots.retain(|slot| slot & GONE == 0);
            let at = self.slots.partition_point(|slot| *slot < raw);
            self.slots.insert(at, raw);
            self.head = 0;
            self.counts.reset_to_ones(self.slots.len());
        }
        self.len += 1;
    }

    /// Takes the head of the queue.
    pub(crate) fn pop(&mut self) -> Option<FlightId> {
        if self.len == 0 {
            return None;
        }
        let raw = self.slots[self.head];
        self.leave(self.head);
        Some(FlightId::from_raw(raw))
    }

    /// Takes `flight` out of the queue wherever it is.
    pub(crate) fn remove(&mut self, flight: FlightId) {
        if let Ok(index) = self.find(flight) {
            if self.slots[index] & GONE == 0 {
                self.leave(index);
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many queued flights are ahead of `flight` (have a smaller id), in
    /// O(log n).
    pub(crate) fn position(&self, flight: FlightId) -> usize {
        let index = self.find(flight).unwrap_or_else(|index| index);
        self.counts.prefix(index)
    }

    /// The queued flights, head first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = FlightId> + '_ {
        self.slots[self.head..]
            .iter()
            .filter(|raw| *raw & GONE == 0)
            .map(|raw| FlightId::from_raw(*raw))
    }

    /// The queue deadline of the head: the earliest of all queued flights (see
    /// the module docs).
    pub(crate) fn next_expiry(&self, flights: &Flights) -> Option<(Time, FlightId)> {
        if self.len == 0 {
            return None;
        }
        let id = FlightId::from_raw(self.slots[self.head]);
        let at = flights.get(id)?.deadline;
        Some((at, id))
    }

    /// The slot of `flight` among those from the head on (`Err`: where it would
    /// be), by binary search over the ids, gone or not.
    fn find(&self, flight: FlightId) -> Result<usize, usize> {
        let from = self.head;
        self.slots[from..]
            .binary_search_by_key(&flight.raw(), |raw| raw & !GONE)
            .map(|i| i + from)
            .map_err(|i| i + from)
    }

    /// The flight in slot `index` (queued) leaves.
    fn leave(&mut self, index: usize) {
        self.slots[index] |= GONE;
        self.counts.decrement(index);
        self.len -= 1;
        if self.len == 0 {
            self.slots.clear();
            self.counts.clear();
            self.head = 0;
            return;
        }
        while self.slots[self.head] & GONE != 0 {
            self.head += 1; // stops at a queued slot: len > 0
        }
        if self.slots.len() >= COMPACT_FROM && self.slots.len() > 2 * self.len {
            self.compact();
        }
    }

    /// Drops the gone slots and rebuilds the counts: O(slots), paid for by the
    /// departures that made more than half of them gone.
    fn compact(&mut self) {
        self.slots.retain(|raw| raw & GONE == 0);
        self.head = 0;
        if self.slots.capacity() > 4 * self.slots.len() {
            self.slots.shrink_to(2 * self.slots.len());
        }
        self.counts.reset_to_ones(self.slots.len());
    }

    /// The queue's invariants: it holds exactly the flights in the queued phase,
    /// at most `capacity` of them, in id order, and their deadlines never
    /// decrease from the head (what [`Queue::next_expiry`] relies on); its slots
    /// and counts agree.
    pub(crate) fn check(&self, flights: &Flights, capacity: usize) -> Result<(), String> {
        self.check_layout()?;
        let mut queued = 0;
        for (id, f) in flights.iter() {
            if f.phase == FlightPhase::Queued {
                queued += 1;
                if self.find(id).map(|i| self.slots[i] & GONE) != Ok(0) {
                    return Err(format!("{id} queued but not in the queue"));
                }
            }
        }
        if queued != self.len {
            return Err("queue holds flights not queued".into());
        }
        if self.len > capacity {
            return Err("queue over capacity".into());
        }
        let mut last = None;
        for id in self.iter() {
            let at = flights.get(id).map(|f| f.deadline);
            if at < last {
                return Err(format!(
                    "queue deadlines out of order at {id}: the head's is not the earliest"
                ));
            }
            last = at;
        }
        Ok(())
    }

    /// The slots are in strictly increasing id order, the head is the first
    /// queued slot, and the counts are the queued slots' prefix sums.
    fn check_layout(&self) -> Result<(), String> {
        let ids = self.slots.iter().map(|raw| raw & !GONE);
        if ids.clone().zip(ids.skip(1)).any(|(a, b)| a >= b) {
            return Err("queue slots out of id order".into());
        }
        let first = self.slots.iter().position(|raw| raw & GONE == 0);
        if first.unwrap_or(self.slots.len()) != self.head && self.len > 0 {
            return Err("queue head is not the first queued slot".into());
        }
        let mut queued = 0;
        for (i, raw) in self.slots.iter().enumerate() {
            if self.counts.prefix(i) != queued {
                return Err(format!("queue counts wrong before slot {i}"));
            }
            queued += usize::from(raw & GONE == 0);
        }
        if self.counts.len() != self.slots.len() || self.counts.prefix(self.slots.len()) != queued {
            return Err("queue counts wrong at the end".into());
        }
        if queued != self.len {
            return Err(format!("queue length {} != {queued}", self.len));
        }
        Ok(())
    }
}

// Equality and hashing see the queued flights in order, not the gone slots.
impl PartialEq for Queue {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl Eq for Queue {}

impl Hash for Queue {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.len.hash(state);
        for id in self.iter() {
            id.hash(state);
        }
    }
}

/// A Fenwick tree of counts: `tree[i - 1]` holds the sum of the values at
/// indices `(i - lowbit(i), i]` (one-based), so a prefix sum or a change of one
/// value touches O(log n) nodes. Counts are `u32`: a queue of 2^32 flights
/// would need 32 GiB of slots first.
#[derive(Clone, Debug, Default)]
struct Fenwick {
    tree: Vec<u32>,
}

impl Fenwick {
    fn len(&self) -> usize {
        self.tree.len()
    }

    /// The sum of the first `n` values.
    fn prefix(&self, n: usize) -> usize {
        let mut sum = 0;
        let mut i = n.min(self.tree.len());
        while i > 0 {
            sum += self.tree[i - 1] as usize;
            i &= i - 1;
        }
        sum
    }

    /// Appends a value: the new node also covers the nodes below it.
    fn push(&mut self, value: u32) {
        let i = self.tree.len() + 1;
        let stop = i - (i & i.wrapping_neg());
        let mut sum = value;
        let mut j = i - 1;
        while j > stop {
            sum += self.tree[j - 1];
            j &= j - 1;
        }
        self.tree.push(sum);
    }

    /// Lowers the value at zero-based `index` by one.
    fn decrement(&mut self, index: usize) {
        let mut i = index + 1;
        while i <= self.tree.len() {
            self.tree[i - 1] -= 1;
            i += i & i.wrapping_neg();
        }
    }

    fn clear(&mut self) {
        self.tree.clear();
    }

    /// `n` values of one, built in O(n).
    fn reset_to_ones(&mut self, n: usize) {
        self.tree.clear();
        self.tree.resize(n, 1);
        for i in 1..=n {
            let parent = i + (i & i.wrapping_neg());
            if parent <= n {
                self.tree[parent - 1] += self.tree[i - 1];
            }
        }
        if self.tree.capacity() > 4 * n {
            self.tree.shrink_to(2 * n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Queue;
    use crate::flight::FlightPhase;
    use crate::flights::Flights;
    use crate::{FlightId, Key, RequestId, Time};

    /// Three queued flights with deadlines 10, 20, 30 ms.
    fn world() -> (Flights, Queue) {
        let mut flights = Flights::default();
        let mut queue = Queue::default();
        for n in 0..3u64 {
            let id = flights.create(
                Key::from(format!("k{n}").as_str()),
                Time::from_millis(10 * (n + 1)),
            );
            flights
                .get_mut(id)
                .unwrap()
                .members
                .insert(RequestId::from_raw(n));
            queue.push(id);
        }
        (flights, queue)
    }

    #[test]
    fn an_older_flight_queued_late_takes_its_id_place() {
        // Cluster mode: claims answered out of creation order.
        let f = |n| FlightId::from_raw(n);
        let mut queue = Queue::default();
        for n in [3, 7, 9] {
            queue.push(f(n));
        }
        queue.remove(f(3)); // a gone slot before the insertion point
        queue.push(f(5));
        queue.push(f(1));
        assert_eq!(queue.iter().collect::<Vec<_>>(), [1, 5, 7, 9].map(f));
        assert_eq!([1, 5, 7, 9].map(|n| queue.position(f(n))), [0, 1, 2, 3]);
        assert_eq!(queue.len(), 4);
        queue
            .check_layout()
            .expect("slots in id order, counts agree");
        assert_eq!(queue.pop(), Some(f(1)));
        queue.push(f(11));
        assert_eq!(queue.iter().collect::<Vec<_>>(), [5, 7, 9, 11].map(f));
    }

    #[test]
    fn positions_head_and_removal() {
        let (flights, mut queue) = world();
        let f = |n| FlightId::from_raw(n);
        assert_eq!(queue.len(), 3);
        assert_eq!([0, 1, 2].map(|n| queue.position(f(n))), [0, 1, 2]);
        assert_eq!(
            queue.next_expiry(&flights),
            Some((Time::from_millis(10), f(0)))
        );
        queue.remove(f(1));
        assert_eq!(queue.position(f(2)), 1, "the flight behind moves up");
        assert_eq!(queue.pop(), Some(f(0)));
        assert_eq!(
            queue.next_expiry(&flights),
            Some((Time::from_millis(30), f(2)))
        );
        assert_eq!(queue.pop(), Some(f(2)));
        assert!(queue.is_empty() && queue.pop().is_none());
        assert_eq!(queue.next_expiry(&flights), None);
    }

    /// Positions, pops and removals agree with a naive queue (a sorted list
    /// counted one by one) over a long random run that compacts many times,
    /// and the invariants hold throughout.
    #[test]
    fn positions_agree_with_a_naive_count() {
        let mut queue = Queue::default();
        let mut naive: Vec<u64> = Vec::new();
        let mut rng = 0x9E37_79B9_7F4A_7C15_u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut next_id = 0;
        let mut compactions = 0;
        for step in 0..20_000 {
            let roll = next() % 100;
            let slots_before = queue.slots.len();
            if roll < 45 || naive.is_empty() {
                queue.push(FlightId::from_raw(next_id));
                naive.push(next_id);
                next_id += 1;
            } else if roll < 70 {
                assert_eq!(queue.pop().map(FlightId::raw), Some(naive.remove(0)));
            } else {
                // Remove a queued flight, or one that is not queued (nothing).
                let id = next() % (next_id + 1);
                queue.remove(FlightId::from_raw(id));
                naive.retain(|n| *n != id);
            }
            compactions += usize::from(queue.slots.len() < slots_before.saturating_sub(1));
            assert_eq!(queue.len(), naive.len());
            for probe in [0, next() % (next_id + 1), next_id] {
                let ahead = naive.iter().filter(|n| **n < probe).count();
                assert_eq!(queue.position(FlightId::from_raw(probe)), ahead, "{step}");
            }
            if step % 97 == 0 {
                assert_eq!(queue.check_layout(), Ok(()));
                assert!(queue.iter().map(FlightId::raw).eq(naive.iter().copied()));
            }
        }
        assert!(compactions > 10, "the run compacts: {compactions}");
        while let Some(id) = queue.pop() {
            assert_eq!(id.raw(), naive.remove(0));
        }
        assert!(queue.slots.is_empty() && queue.counts.len() == 0);
    }

    /// Two queues holding the same flights are equal and hash alike however
    /// many gone slots either keeps.
    #[test]
    fn equality_sees_the_queued_flights_not_the_slots() {
        use crate::testing::{assert_differs, assert_same};
        let f = FlightId::from_raw;
        let mut a = Queue::default();
        let mut b = Queue::default();
        for n in 0..10 {
            a.push(f(n));
        }
        for n in 0..9 {
            a.remove(f(n));
        }
        a.push(f(10));
        b.push(f(9));
        b.push(f(10));
        assert_ne!(a.slots.len(), b.slots.len());
        assert_same(&a, &b, "the slots' layout");
        b.push(f(11));
        assert_differs(&a, &b, "a queued flight");
    }

    #[test]
    fn check_fires_on_each_corruption() {
        let (flights, queue) = world();
        assert_eq!(queue.check(&flights, 3), Ok(()));
        let err = |q: &Queue, f: &Flights, cap| q.check(f, cap).unwrap_err();

        let mut q = queue.clone();
        q.remove(FlightId::from_raw(1));
        assert!(err(&q, &flights, 3).contains("queued but not in the queue"));

        let mut f = flights.clone();
        f.get_mut(FlightId::from_raw(2)).unwrap().phase = FlightPhase::Preparing;
        assert!(err(&queue, &f, 3).contains("queue holds flights not queued"));

        assert!(err(&queue, &flights, 2).contains("over capacity"));

        let mut f = flights.clone();
        f.get_mut(FlightId::from_raw(1)).unwrap().deadline = Time::from_millis(5);
        assert!(err(&queue, &f, 3).contains("out of order"));

        let mut q = queue.clone();
        q.slots.swap(0, 1);
        assert!(err(&q, &flights, 3).contains("slots out of id order"));
        let mut q = queue.clone();
        q.head = 1;
        assert!(err(&q, &flights, 3).contains("head is not the first"));
        let mut q = queue.clone();
        q.counts.decrement(2);
        assert!(err(&q, &flights, 3).contains("counts wrong"));
        let mut q = queue.clone();
        q.len = 2;
        assert!(err(&q, &flights, 3).contains("queue length 2 != 3"));
    }
}
