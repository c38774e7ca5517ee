//! Inputs from the cluster's coordinator (cluster mode, [`crate::cluster`]): a
//! claim answered, a follower's owner ending or lost, an owner fenced. Rules
//! [25](crate::contract#rule-25)-[29](crate::contract#rule-29).
//!
//! Each is one step, like every input: the flight changes phase, or ends with
//! everything it held released, and the scheduler runs. Each names the phase it
//! reports on; a flight no longer in that phase (it ended, or it is in another
//! one) makes the input stale: `Err(StaleFlight)` and nothing changes
//! ([rule 16](crate::contract#rule-16)).

use super::Machine;
use crate::deadline::Timer;
use crate::flight::FlightPhase;
use crate::{Action, Failure, FlightId, Outcome, Role, StaleFlight, Time};

impl Machine {
    /// A new (or re-claiming) flight claims its key: it is claiming until
    /// [`Machine::handle_claimed`], with its queue deadline armed (claiming is
    /// queue time, see [`crate::cluster`]), and the driver is told to ask. A
    /// new flight's deadline is its queue deadline already; a re-claiming
    /// follower's goes back to the one it had when it was claiming.
    pub(super) fn claim(&mut self, flight: FlightId) {
        let Some(f) = self.flights.get_mut(flight) else {
            return;
        };
        match self.remote.claim(flight) {
            // A re-claim: the follower's deadline goes back to its queue deadline.
            Some(queue_by) => {
                self.deadlines
                    .move_to(&mut f.deadline, queue_by, Timer::Flight(flight));
            }
            None => {
                let queue_by = f.deadline;
                self.deadlines
                    .arm_new(&mut f.deadline, queue_by, Timer::Flight(flight));
            }
        }
        f.phase = FlightPhase::Claiming;
        self.totals.claims += 1;
        let key = f.key.clone();
        self.actions.push_back(Action::Claim { flight, key });
    }

    /// The coordinator answered `flight`'s claim
    /// ([rule 25](crate::contract#rule-25)):
    /// - [`Role::Owner`]: the flight queues exactly as a local flight does (it
    ///   keeps its queue deadline); from now on its accepted chunks are also
    ///   emitted as [`Action::Publish`] and its end as [`Action::Release`]
    ///   ([rule 26](crate::contract#rule-26));
    /// - [`Role::Follower`]: the flight takes no slot and follows the owner's
    ///   log: chunks arrive through [`Machine::handle_chunks`], the end through
    ///   [`Machine::handle_remote_end`], under a stream's total and idle
    ///   deadlines ([rule 27](crate::contract#rule-27));
    /// - [`Role::Cached`]: the flight completes at once with those chunks as its
    ///   log (past `max_response_bytes`, it fails as a local stream would);
    /// - [`Role::Unavailable`]: the flight fails with [`Failure::Cluster`]
    ///   ([rule 29](crate::contract#rule-29)).
    ///
    /// # Errors
    /// [`StaleFlight`] if the flight is not claiming; nothing changes
    /// ([rule 16](crate::contract#rule-16)).
    pub fn handle_claimed(
        &mut self,
        now: Time,
        flight: FlightId,
        role: Role,
    ) -> Result<(), StaleFlight> {
        self.expect_phase(flight, |p| matches!(p, FlightPhase::Claiming))?;
        let now = self.advance(now);
        let stream_timeout = self.config.stream_timeout;
        let idle = self.config.idle_timeout;
        let limit = self.config.max_response_bytes;
        let Some(f) = self.flights.get_mut(flight) else {
            return Err(StaleFlight);
        };
        match role {
            Role::Owner => {
                self.remote.owned(flight);
                f.phase = FlightPhase::Queued;
                // The queue implies the same deadline (see `crate::queue`).
                self.deadlines.remove(f.deadline, Timer::Flight(flight));
                self.queue.push(flight);
            }
            Role::Follower => {
                self.remote.followed(flight, f.deadline);
                self.totals.followed += 1;
                let ends_by = now + stream_timeout;
                f.phase = FlightPhase::Following { ends_by };
                let until = ends_by.min(now + idle);
                self.deadlines
                    .move_to(&mut f.deadline, until, Timer::Flight(flight));
            }
            Role::Cached(chunks) => {
                self.totals.remote_cache_hits += 1;
                let (_, too_large) = f.tail_mut().append(chunks, limit);
                let outcome = if too_large {
                    Outcome::Failed(Failure::ResponseTooLarge { limit })
                } else {
                    Outcome::Completed
                };
                self.end_flight(now, flight, &outcome, false);
            }
            Role::Unavailable(reason) => {
                let outcome = Outcome::Failed(Failure::Cluster(reason));
                self.end_flight(now, flight, &outcome, false);
            }
        }
        self.pump(now);
        Ok(())
    }

    /// A follower's owner ended its flight with `outcome`
    /// ([rule 27](crate::contract#rule-27)). Completed or failed, every member
    /// ends so, after the chunks already in the log (rules
    /// [8](crate::contract#rule-8), [20](crate::contract#rule-20)); the result
    /// is not cached here. An outcome that is no answer (the owner's own flight
    /// was cancelled, timed out, or failed [`Failure::Shutdown`] because its
    /// instance shut down) means nobody finishes this log: it is handled as
    /// [`Machine::handle_owner_lost`].
    ///
    /// # Errors
    /// [`StaleFlight`] if the flight is not following; nothing changes.
    #[expect(
        clippy::needless_pass_by_value,
        reason = "owned like the input it comes from (`Input::RemoteEnded`)"
    )]
    pub fn handle_remote_end(
        &mut self,
        now: Time,
        flight: FlightId,
        outcome: Outcome,
    ) -> Result<(), StaleFlight> {
        self.expect_phase(flight, |p| matches!(p, FlightPhase::Following { .. }))?;
        match outcome {
            // A shut-down owner gave no answer either: the next owner may.
            Outcome::Cancelled | Outcome::TimedOut(_) | Outcome::Failed(Failure::Shutdown) => {
                self.handle_owner_lost(now, flight)
            }
            Outcome::Completed | Outcome::Failed(_) => {
                let now = self.advance(now);
                self.end_flight(now, flight, &outcome, false);
                self.pump(now);
                Ok(())
            }
        }
    }

    /// A follower's owner is gone: its lease lapsed before its end
    /// ([rule 28](crate::contract#rule-28)). If the flight's log is still empty,
    /// nobody has read anything, so the flight claims its key again (a new
    /// [`Action::Claim`]; it may become the owner), back under its queue
    /// deadline, and its members never see the loss; if the queue and the
    /// claiming flights are at `queue_capacity`, or chunks were already
    /// received, every member ends [`Failure::OwnerLost`] after the chunks
    /// already in the log.
    ///
    /// # Errors
    /// [`StaleFlight`] if the flight is not following; nothing changes.
    pub fn handle_owner_lost(&mut self, now: Time, flight: FlightId) -> Result<(), StaleFlight> {
        self.expect_phase(flight, |p| matches!(p, FlightPhase::Following { .. }))?;
        let now = self.advance(now);
        let unread = self
            .flights
            .get(flight)
            .is_some_and(|f| f.tail().log.is_empty());
        let room = self.queue.len() + self.remote.claiming() < self.config.queue_capacity;
        if unread && room {
            self.claim(flight);
        } else {
            self.end_flight(now, flight, &Outcome::Failed(Failure::OwnerLost), false);
        }
        self.pump(now);
        Ok(())
    }

    /// An owner's publish, lease renewal or release was refused: its lease is
    /// lost and its writes are fenced ([rule 26](crate::contract#rule-26)). The
    /// flight ends [`Failure::Cluster`] with `reason` after the chunks already in
    /// its log, its running work is aborted and its slot handed on in this step
    /// ([rule 12](crate::contract#rule-12)); nothing is released (the lease is
    /// not this machine's any more).
    ///
    /// # Errors
    /// [`StaleFlight`] if the flight is not a live owner; nothing changes.
    pub fn handle_fenced(
        &mut self,
        now: Time,
        flight: FlightId,
        reason: String,
    ) -> Result<(), StaleFlight> {
        if !self.remote.is_owner(flight) {
            return Err(StaleFlight);
        }
        let now = self.advance(now);
        self.remote.disown(flight);
        let outcome = Outcome::Failed(Failure::Cluster(reason));
        self.end_flight(now, flight, &outcome, true);
        self.pump(now);
        Ok(())
    }
}
