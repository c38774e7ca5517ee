//! The admission queue: flights waiting for a preparation slot, first in first
//! out ([rule 3](crate::contract#rule-3)).
//!
//! The queue holds flight ids only. Flight ids grow with creation, so the set's
//! order is arrival order, and a position is a count of smaller ids.
//!
//! A queued flight's deadline is not armed in [`Deadlines`](crate::deadline):
//! every flight is queued at creation with `now + queue_timeout`, time never runs
//! backwards and ids grow with creation, so along the queue the deadlines never
//! decrease and the head's is the earliest ([`Queue::next_expiry`]). That saves one
//! deadline entry per queued flight; handling order is unchanged, because the head
//! competes with the armed deadlines as `(time, Timer::Flight(id))`, exactly as if
//! it were armed.

use std::collections::BTreeSet;

use crate::flight::FlightPhase;
use crate::flights::Flights;
use crate::{FlightId, Time};

/// Flights waiting for a preparation slot, in arrival order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct Queue {
    waiting: BTreeSet<FlightId>,
}

impl Queue {
    /// Appends a new flight (its id is the largest so far).
    pub(crate) fn push(&mut self, flight: FlightId) {
        self.waiting.insert(flight);
    }

    /// Takes the head of the queue.
    pub(crate) fn pop(&mut self) -> Option<FlightId> {
        self.waiting.pop_first()
    }

    /// Takes `flight` out of the queue wherever it is.
    pub(crate) fn remove(&mut self, flight: FlightId) {
        self.waiting.remove(&flight);
    }

    pub(crate) fn len(&self) -> usize {
        self.waiting.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// How many flights are ahead of `flight`.
    pub(crate) fn position(&self, flight: FlightId) -> usize {
        self.waiting.range(..flight).count()
    }

    /// The queue deadline of the head: the earliest of all queued flights (see
    /// the module docs).
    pub(crate) fn next_expiry(&self, flights: &Flights) -> Option<(Time, FlightId)> {
        let id = *self.waiting.first()?;
        let at = flights.get(id)?.deadline;
        Some((at, id))
    }

    /// The queue's invariants: it holds exactly the flights in the queued phase,
    /// at most `capacity` of them, and their deadlines never decrease from the
    /// head (what [`Queue::next_expiry`] relies on).
    pub(crate) fn check(&self, flights: &Flights, capacity: usize) -> Result<(), String> {
        let mut queued = 0;
        for (id, f) in flights.iter() {
            if f.phase == FlightPhase::Queued {
                queued += 1;
                if !self.waiting.contains(&id) {
                    return Err(format!("{id} queued but not in the queue"));
                }
            }
        }
        if queued != self.waiting.len() {
            return Err("queue holds flights not queued".into());
        }
        if self.waiting.len() > capacity {
            return Err("queue over capacity".into());
        }
        let mut last = None;
        for &id in &self.waiting {
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
    }
}
