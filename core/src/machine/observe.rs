//! Observation: request status, stats, emptiness, and the invariant check that
//! asks every sub-state to check itself.

use super::{InvariantViolation, Machine};
use crate::flight::FlightPhase;
use crate::request::Life;
use crate::{FlightId, Key, Outcome, RequestId, RequestState, RequestStatus, Stats};

impl Machine {
    /// A snapshot of one request; `None` if no record exists.
    #[must_use]
    pub fn status(&self, request: RequestId) -> Option<RequestStatus> {
        let req = self.records.get(request)?;
        let attached = req.reader.is_some();
        Some(match &req.life {
            Life::Live(fid) => {
                let flight = self.flights.get(*fid)?;
                let (state, queue_position) = match flight.phase {
                    FlightPhase::Queued => (RequestState::Queued, Some(self.queue.position(*fid))),
                    FlightPhase::Preparing => (RequestState::Preparing, None),
                    FlightPhase::Prepared { .. } => (RequestState::WaitingForStream, None),
                    FlightPhase::Streaming { .. } => (RequestState::Streaming, None),
                    FlightPhase::Claiming => (RequestState::Claiming, None),
                    FlightPhase::Following { .. } => (RequestState::Following, None),
                };
                RequestStatus {
                    state,
                    queue_position,
                    flight: Some(*fid),
                    attached,
                }
            }
            Life::Ended(ending) => {
                let state = match &ending.outcome {
                    Outcome::Cancelled => RequestState::Cancelled,
                    other => RequestState::Done(other.clone()),
                };
                RequestStatus {
                    state,
                    queue_position: None,
                    flight: None,
                    attached,
                }
            }
        })
    }

    /// Gauges and totals ([rule 24](crate::contract#rule-24)), in O(1).
    #[must_use]
    pub fn stats(&self) -> Stats {
        let (preparing, streaming) = (self.slots.preparing(), self.slots.streaming());
        let (claiming, following) = (self.remote.claiming(), self.remote.following());
        let elsewhere = self.queue.len() + preparing + streaming + claiming + following;
        Stats {
            requests: self.records.len(),
            live_requests: self.records.live(),
            queued: self.queue.len(),
            preparing,
            waiting_for_stream: self.flights.len() - elsewhere,
            streaming,
            claiming,
            following,
            preparation_slots_in_use: preparing,
            stream_slots_in_use: streaming,
            readers: self.records.readers(),
            cache_entries: self.cache.len(),
            deadlines: self.deadlines.len() + self.queue.len(),
            totals: self.totals,
        }
    }

    /// Whether the machine holds nothing at all: no request, flight, slot, reader,
    /// deadline, cache entry or pending action ([rule 21](crate::contract#rule-21)).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
            && self.flights.is_empty()
            && self.queue.is_empty()
            && self.slots.none_ready()
            && self.slots.preparing() == 0
            && self.slots.streaming() == 0
            && self.deadlines.len() == 0
            && self.cache.len() == 0
            && self.remote.is_empty()
            && self.actions.is_empty()
    }

    /// The flights currently live, with their keys, in id order. For harnesses
    /// and diagnostics.
    pub fn live_flights(&self) -> impl Iterator<Item = (FlightId, &Key)> + '_ {
        self.flights.iter().map(|(id, f)| (id, &f.key))
    }

    /// The ids of all request records held, in id order. For harnesses and
    /// diagnostics.
    pub fn request_ids(&self) -> impl Iterator<Item = RequestId> + '_ {
        self.records.ids()
    }

    /// Checks every invariant of the [contract](crate::contract#invariants)
    /// against the whole state, in O(n): each sub-state checks its own, then the
    /// deadline set is checked against its owners. For tests and harnesses; a
    /// driver never needs it.
    ///
    /// # Errors
    /// The first [`InvariantViolation`] found.
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        let c = &self.config;
        let limits = (c.max_concurrent_requests, c.max_concurrent_streams);
        self.flights
            .check(&self.deadlines, c.max_response_bytes)
            .and_then(|()| self.queue.check(&self.flights, c.queue_capacity))
            .and_then(|()| self.slots.check(&self.flights, limits, self.queue.len()))
            .and_then(|()| self.records.check(&self.flights, &self.deadlines))
            .and_then(|()| self.cache.check(&self.deadlines))
            .and_then(|()| {
                let queued = self.queue.len();
                let capacity = c.queue_capacity;
                self.remote
                    .check(&self.flights, c.cluster, queued, capacity)
            })
            .and_then(|()| self.deadlines.check())
            .and_then(|()| self.check_deadline_owners())
            .map_err(InvariantViolation)
    }

    /// Every armed deadline has an owner that knows it: one per flight out of
    /// the queue, per record with a deadline, per cache entry.
    fn check_deadline_owners(&self) -> Result<(), String> {
        let owners = (self.flights.len() + self.records.armed() + self.cache.len())
            .checked_sub(self.queue.len());
        if owners == Some(self.deadlines.len()) {
            Ok(())
        } else {
            Err(format!(
                "{} deadlines for {owners:?} owners",
                self.deadlines.len()
            ))
        }
    }
}
