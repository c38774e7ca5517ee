//! Time: the earliest deadline, and what each expiry does
//! ([rule 17](crate::contract#rule-17), [rule 18](crate::contract#rule-18)).
//!
//! Deadlines due at the same instant are handled in a fixed order: by time, then
//! by owner kind (flights, then requests, then cache entries), then by id (older
//! first). That is the order of `(Time, Timer)`, which [`Deadlines`] keeps and
//! the queue's implied deadline joins as if it were armed
//! (see [`Queue`](crate::queue::Queue)). So of a flight's phase deadline and a
//! member's attach deadline due together, the flight's fires first and the
//! member ends with the flight's phase, not `Attach`.
//!
//! [`Deadlines`]: crate::deadline::Deadlines

use super::Machine;
use crate::deadline::Timer;
use crate::flight::FlightPhase;
use crate::{Failure, FlightId, Outcome, Phase, RequestId, Time};

impl Machine {
    /// The earliest pending deadline: the driver sleeps until then and calls
    /// [`Machine::handle_timeout`]. `None` when nothing can expire.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Time> {
        let armed = self.deadlines.next();
        match (armed, self.queue.next_expiry(&self.flights)) {
            (Some(a), Some((q, _))) => Some(a.min(q)),
            (a, q) => a.or(q.map(|(at, _)| at)),
        }
    }

    /// The earliest deadline due at `now`, armed or implied by the queue, removed
    /// from the deadline set if it was armed there.
    fn pop_due(&mut self, now: Time) -> Option<Timer> {
        let queued = self
            .queue
            .next_expiry(&self.flights)
            .filter(|(at, _)| *at <= now)
            .map(|(at, fid)| (at, Timer::Flight(fid)));
        match (self.deadlines.peek_due(now), queued) {
            (Some(armed), Some(queued)) if queued < armed => Some(queued.1),
            (Some(_), _) => self.deadlines.pop_due(now),
            (None, queued) => queued.map(|(_, timer)| timer),
        }
    }

    /// Handles every deadline due at `now` ([rule 17](crate::contract#rule-17)),
    /// in the order the module docs give. Each costs O(log n)
    /// ([rule 18](crate::contract#rule-18)). Calling it again at the same time
    /// does nothing (idempotent).
    pub fn handle_timeout(&mut self, now: Time) {
        let now = self.advance(now);
        while let Some(timer) = self.pop_due(now) {
            match timer {
                Timer::Flight(flight) => self.flight_expired(now, flight),
                Timer::Request(request) => self.request_expired(now, request),
                Timer::Cache(seq) => self.cache.expire(seq),
            }
        }
        self.pump(now);
    }

    fn flight_expired(&mut self, now: Time, flight: FlightId) {
        let Some(f) = self.flights.get_mut(flight) else {
            return;
        };
        // Popped already. A stale entry (chunks moved the idle deadline since it
        // was armed) is re-armed at the flight's due time, not fired: the loop
        // reaches it there if that is due too (crate::deadline's module docs).
        let due = f.due();
        if due > f.deadline {
            self.deadlines
                .arm_new(&mut f.deadline, due, Timer::Flight(flight));
            return;
        }
        // Name the phase from when the deadline was due, not from `now`: a
        // driver that wakes late must still see an idle expiry as idle.
        // Cluster mode: claiming is queue time; following has a stream's deadlines.
        let (phase, abort) = match f.phase {
            FlightPhase::Queued | FlightPhase::Claiming => (Phase::Queue, false),
            FlightPhase::Preparing => (Phase::Preparation, true),
            FlightPhase::Prepared { .. } => (Phase::StreamSlot, false),
            FlightPhase::Streaming { ends_by, .. } | FlightPhase::Following { ends_by }
                if due >= ends_by =>
            {
                (Phase::Stream, true)
            }
            FlightPhase::Streaming { .. } | FlightPhase::Following { .. } => (Phase::Idle, true),
        };
        self.end_flight(now, flight, &Outcome::TimedOut(phase), abort);
    }

    fn request_expired(&mut self, now: Time, request: RequestId) {
        match self.records.deadline_fired(request) {
            None => {}
            Some(true) => self.end_member(now, request, Outcome::TimedOut(Phase::Attach)),
            Some(false) => self.records.remove(&mut self.deadlines, request),
        }
    }

    /// Re-arms stale flight entries at the front of the deadline set at their
    /// due time, until the front is not stale, so that [`Machine::poll_timeout`]
    /// is exact (see [`crate::deadline`]'s module docs). Every input that can
    /// change the set's front calls this last; each entry moves at most once.
    pub(super) fn settle_deadlines(&mut self) {
        while let Some((at, Timer::Flight(id))) = self.deadlines.first() {
            let Some(f) = self.flights.get_mut(id) else {
                return; // an orphan entry: `check_invariants` reports it
            };
            let due = f.due();
            if due <= at {
                return;
            }
            self.deadlines
                .move_to(&mut f.deadline, due, Timer::Flight(id));
        }
    }

    /// The earliest armed deadline is not stale (what makes
    /// [`Machine::poll_timeout`] exact), and no flight is due before its entry.
    pub(super) fn check_settled(&self) -> Result<(), String> {
        if let Some((at, Timer::Flight(id))) = self.deadlines.first() {
            if self.flights.get(id).is_some_and(|f| f.due() != at) {
                return Err(format!("the earliest deadline, {id}'s, is stale"));
            }
        }
        Ok(())
    }

    /// Stops admission and ends every live request with
    /// [`Failure::Shutdown`], aborting all running work. Ended records stay for
    /// their clients to read.
    pub fn shutdown(&mut self, now: Time) {
        let now = self.advance(now);
        self.shutting_down = true;
        let flights: Vec<FlightId> = self.flights.ids().collect();
        for flight in flights {
            self.end_flight(now, flight, &Outcome::Failed(Failure::Shutdown), true);
        }
        self.pump(now);
    }

    /// Whether [`Machine::shutdown`] was called.
    #[must_use]
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down
    }
}

#[cfg(test)]
mod tests {
    use core::time::Duration;

    use bytes::Bytes;

    use crate::{Action, Config, FlightId, Key, Machine, Outcome, Phase, Prepared};
    use crate::{RequestId, RequestState, Time};

    fn ms(n: u64) -> Time {
        Time::from_millis(n)
    }

    /// Three streaming flights `a` < `b` < `c` (one attached member each),
    /// started at 1 ms with a 10 ms idle timeout, so all entries are armed at
    /// 11 ms, in id order.
    fn three_streams() -> (Machine, [(FlightId, RequestId); 3]) {
        let config = Config {
            max_concurrent_streams: 3,
            idle_timeout: Duration::from_millis(10),
            ..Config::default()
        };
        let mut m = Machine::new(config).unwrap();
        let t = ms(1);
        let mut pairs = Vec::new();
        for key in ["a", "b", "c"] {
            let r = m.submit(t, Key::from(key)).unwrap().request;
            m.attach(t, r).unwrap();
            let f = m.status(r).unwrap().flight.unwrap();
            m.handle_prepared(t, f, Ok(Prepared::CACHEABLE)).unwrap();
            pairs.push((f, r));
        }
        while m.poll_action().is_some() {}
        assert_eq!(m.poll_timeout(), Some(ms(11)));
        (m, [pairs[0], pairs[1], pairs[2]])
    }

    fn chunk(m: &mut Machine, at: u64, f: FlightId) {
        m.handle_chunk(ms(at), f, Bytes::from_static(b"x")).unwrap();
        m.check_invariants().unwrap();
    }

    fn ended(m: &mut Machine) -> Vec<FlightId> {
        std::iter::from_fn(|| m.poll_action())
            .filter_map(|a| match a {
                Action::FlightEnded { flight } => Some(flight),
                _ => None,
            })
            .collect()
    }

    fn idled_out(m: &Machine, r: RequestId) -> bool {
        m.status(r).unwrap().state == RequestState::Done(Outcome::TimedOut(Phase::Idle))
    }

    /// A chunk moves the idle deadline without moving its entry; the stale entry
    /// is re-armed when it comes due, never fired, and `poll_timeout` always
    /// names the true earliest deadline.
    #[test]
    fn a_chunk_moves_the_idle_deadline_and_only_the_true_one_fires() {
        let (mut m, [(a, ra), (b, rb), (c, rc)]) = three_streams();
        chunk(&mut m, 5, b);
        chunk(&mut m, 5, c);
        assert_eq!(m.flights.get(b).unwrap().deadline, ms(11), "entry stays");
        assert_eq!(m.poll_timeout(), Some(ms(11)), "a's, not stale");
        m.handle_timeout(ms(11));
        assert_eq!(ended(&mut m), [a], "only a idled out");
        assert!(idled_out(&m, ra) && !idled_out(&m, rb));
        assert_eq!(
            m.flights.get(b).unwrap().deadline,
            ms(15),
            "re-armed when due"
        );
        assert_eq!(m.poll_timeout(), Some(ms(15)));
        // A chunk to the flight whose entry is the earliest re-arms it at once,
        // and the next stale one behind it too.
        chunk(&mut m, 12, b);
        assert_eq!(m.flights.get(c).unwrap().deadline, ms(15));
        assert_eq!(m.poll_timeout(), Some(ms(15)), "c's, due at 15");
        chunk(&mut m, 13, c);
        assert_eq!(m.poll_timeout(), Some(ms(22)), "b's, re-armed at 22");
        m.handle_timeout(ms(21));
        assert!(ended(&mut m).is_empty());
        m.handle_timeout(ms(22));
        assert_eq!(ended(&mut m), [b]);
        m.handle_timeout(ms(23));
        assert_eq!(ended(&mut m), [c]);
        assert!(idled_out(&m, rb) && idled_out(&m, rc));
        m.check_invariants().unwrap();
    }

    /// A driver that wakes late handles the flights in the order of their due
    /// times, not of their entries: `b` and `c` sit at 11 ms in id order but are
    /// due at 15 and 13 ms, so `c` ends before `b`, as if each chunk had moved
    /// its entry.
    #[test]
    fn a_late_wake_ends_flights_in_due_order() {
        let (mut m, [(a, _), (b, rb), (c, rc)]) = three_streams();
        chunk(&mut m, 3, c);
        chunk(&mut m, 5, b);
        m.handle_timeout(ms(100));
        assert_eq!(ended(&mut m), [a, c, b]);
        assert!(idled_out(&m, rb) && idled_out(&m, rc));
        m.check_invariants().unwrap();
    }

    /// The invariant check catches a stale earliest entry (what would make
    /// `poll_timeout` early), and settling repairs it.
    #[test]
    fn check_fires_on_a_stale_earliest_deadline() {
        let (mut m, [(a, _), (b, _), _]) = three_streams();
        m.flights.get_mut(a).unwrap().tail_mut().idle_until = ms(15);
        let err = m.check_invariants().unwrap_err();
        assert!(err.0.contains("stale"), "{err}");
        m.settle_deadlines();
        m.check_invariants().unwrap();
        assert_eq!(m.deadlines.first().map(|(at, _)| at), Some(ms(11)));
        assert_eq!(
            m.flights.get(b).unwrap().deadline,
            ms(11),
            "b's is the front now"
        );
    }
}
