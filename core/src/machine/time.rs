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
        let Some(f) = self.flights.get(flight) else {
            return;
        };
        // Popped already. Name the phase from when the deadline was due, not from
        // `now`: a driver that wakes late must still see an idle expiry as idle.
        let due = f.deadline;
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
