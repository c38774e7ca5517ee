//! The reference model's cluster mode (contract rules 25-29), as naively as
//! the rest: a flight's phase says claiming or following, a flag says owner,
//! and the queue deadline fixed at creation is stored on the flight.

use flightdeck_core::{Action, Failure, FlightId, Outcome, Role, StaleFlight, Time};

use super::{Model, Phase2};

impl Model {
    /// Contract rule 25: `flight` (new, or a follower that lost its owner) claims its
    /// key. Core's choice: the claim runs under the flight's queue deadline,
    /// fixed when it was created.
    pub(super) fn start_claim(&mut self, flight: FlightId) {
        let Some(f) = self.flight_mut(flight) else {
            return;
        };
        f.phase = Phase2::Claiming;
        f.deadline = f.queue_by;
        let key = f.key.clone();
        self.totals.claims += 1;
        self.actions.push(Action::Claim { flight, key });
    }

    /// The coordinator answered a claim (rules 25-27, 29).
    ///
    /// # Errors
    /// [`StaleFlight`] unless the flight is claiming.
    pub fn handle_claimed(
        &mut self,
        now: Time,
        flight: FlightId,
        role: Role,
    ) -> Result<(), StaleFlight> {
        if !self.in_phase(flight, |p| *p == Phase2::Claiming) {
            return Err(StaleFlight);
        }
        let now = self.advance(now);
        let stream_timeout = self.config.stream_timeout;
        let idle = self.config.idle_timeout;
        let limit = self.config.max_response_bytes;
        match role {
            Role::Owner => {
                if let Some(f) = self.flight_mut(flight) {
                    f.owner = true;
                    f.phase = Phase2::Queued;
                    f.deadline = f.queue_by;
                }
            }
            Role::Follower => {
                self.totals.followed += 1;
                if let Some(f) = self.flight_mut(flight) {
                    let ends_by = now + stream_timeout;
                    f.phase = Phase2::Following { ends_by };
                    f.deadline = ends_by.min(now + idle);
                }
            }
            Role::Cached(chunks) => {
                self.totals.remote_cache_hits += 1;
                let mut outcome = Outcome::Completed;
                if let Some(f) = self.flight_mut(flight) {
                    let mut total = 0u64;
                    for c in chunks {
                        total = total.saturating_add(c.len() as u64);
                        if total > limit {
                            outcome = Outcome::Failed(Failure::ResponseTooLarge { limit });
                            break;
                        }
                        f.log.push(c);
                    }
                }
                self.end_flight(now, flight, &outcome, false);
            }
            Role::Unavailable(reason) => {
                let outcome = Outcome::Failed(Failure::Cluster(reason));
                self.end_flight(now, flight, &outcome, false);
            }
            _ => return Err(StaleFlight),
        }
        self.settle(now);
        Ok(())
    }

    /// A follower's owner ended (contract rule 27): a result ends the members with it;
    /// anything else (cancelled, timed out, shut down) is an owner lost.
    ///
    /// # Errors
    /// [`StaleFlight`] unless the flight is following.
    #[expect(
        clippy::needless_pass_by_value,
        reason = "the core's signature: owned, like the input it comes from"
    )]
    pub fn handle_remote_end(
        &mut self,
        now: Time,
        flight: FlightId,
        outcome: Outcome,
    ) -> Result<(), StaleFlight> {
        if !self.in_phase(flight, |p| matches!(p, Phase2::Following { .. })) {
            return Err(StaleFlight);
        }
        let no_answer = matches!(
            outcome,
            Outcome::Cancelled | Outcome::TimedOut(_) | Outcome::Failed(Failure::Shutdown)
        );
        if no_answer {
            return self.handle_owner_lost(now, flight);
        }
        let now = self.advance(now);
        self.end_flight(now, flight, &outcome, false);
        self.settle(now);
        Ok(())
    }

    /// Contract rule 28: nothing read and a queue place free, re-claim; else fail.
    ///
    /// # Errors
    /// [`StaleFlight`] unless the flight is following.
    pub fn handle_owner_lost(&mut self, now: Time, flight: FlightId) -> Result<(), StaleFlight> {
        let Some(f) = self.flights.iter().find(|f| f.id == flight) else {
            return Err(StaleFlight);
        };
        if !matches!(f.phase, Phase2::Following { .. }) {
            return Err(StaleFlight);
        }
        let unread = f.log.is_empty();
        let now = self.advance(now);
        let waiting = self.count_phase(|p| matches!(p, Phase2::Queued | Phase2::Claiming));
        if unread && waiting < self.config.queue_capacity {
            self.start_claim(flight);
        } else {
            self.end_flight(now, flight, &Outcome::Failed(Failure::OwnerLost), false);
        }
        self.settle(now);
        Ok(())
    }

    /// Contract rule 26: a fenced owner fails its members, aborts its work, releases
    /// nothing.
    ///
    /// # Errors
    /// [`StaleFlight`] unless the flight is a live owner.
    pub fn handle_fenced(
        &mut self,
        now: Time,
        flight: FlightId,
        reason: String,
    ) -> Result<(), StaleFlight> {
        let Some(f) = self.flight_mut(flight).filter(|f| f.owner) else {
            return Err(StaleFlight);
        };
        f.owner = false;
        let now = self.advance(now);
        self.end_flight(
            now,
            flight,
            &Outcome::Failed(Failure::Cluster(reason)),
            true,
        );
        self.settle(now);
        Ok(())
    }
}
