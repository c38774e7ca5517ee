//! The state machine: inputs in, actions out.
//!
//! [`Machine`] is the conductor. It owns one sub-state per concern, each in its
//! own module with its own invariants and `check`:
//!
//! | sub-state | owns |
//! |---|---|
//! | [`Flights`] | the live flights, their ids and the key index |
//! | [`Queue`] | the admission queue and its implied deadlines |
//! | [`Slots`] | preparation and stream slots, the ready line |
//! | [`Records`] | request records, their lifecycle and retention |
//! | [`reading`] | cursors and parked readers over the logs |
//! | [`Deadlines`] | every armed deadline, ordered by time |
//! | [`Cache`] | completed results by key |
//! | [`Remote`] | cluster mode: owners, followers, claiming flights |
//!
//! Each input is one method here that says which sub-states it touches and in what
//! order, and queues the resulting actions. No method blocks or reads a clock.
//! Each one that can free a slot ends by running the scheduler
//! ([`Machine::pump`]), so a freed slot is handed to the next waiter in the same
//! step that freed it (rules [5](crate::contract#rule-5),
//! [8](crate::contract#rule-8), [12](crate::contract#rule-12)): there is no
//! moment at which a slot is free while someone waits for it.
//!
//! The inputs are spread over files by their source: clients here (`submit`,
//! `attach`, `read`, `cancel`, `detach`), the user's work in `machine/work.rs`
//! (`handle_prepared`, `handle_chunk`, `handle_upstream_end`, and how a flight
//! ends), time in `machine/time.rs` (`poll_timeout`, `handle_timeout`,
//! `shutdown`), observation in `machine/observe.rs` (`status`, `stats`,
//! `check_invariants`), and the coordinator's answers in cluster mode in
//! `machine/cluster.rs` (`handle_claimed`, `handle_remote_end`,
//! `handle_owner_lost`, `handle_fenced`).

mod batch;
mod cluster;
#[cfg(test)]
mod cluster_tests;
mod observe;
#[cfg(test)]
mod tests;
mod time;
mod work;

pub use batch::Borrowed;

use std::collections::VecDeque;

use crate::cache::Cache;
use crate::deadline::Deadlines;
use crate::flight::FlightPhase;
use crate::flights::Flights;
use crate::queue::Queue;
use crate::records::Records;
use crate::remote::Remote;
use crate::request::Life;
use crate::slots::Slots;
use crate::{
    reading, Action, Config, ConfigError, FlightId, Input, Item, Key, Outcome, Readiness, Reply,
    RequestError, RequestId, Route, Submission, SubmitError, Time, Totals,
};

/// The flightdeck state machine. See the [crate docs](crate) for the driving loop.
///
/// It is `Clone`, `Eq` and `Hash` over its whole state (ordered maps only; the
/// key index, a hash map, is derived from the flights and the cache and not
/// compared), so a model checker can fork it and recognise states it has seen.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Machine {
    config: Config,
    now: Time,
    flights: Flights,
    queue: Queue,
    slots: Slots,
    records: Records,
    deadlines: Deadlines,
    cache: Cache,
    remote: Remote,
    actions: VecDeque<Action>,
    totals: Totals,
    shutting_down: bool,
}

/// An invariant of the machine did not hold. Only [`Machine::check_invariants`]
/// returns this; seeing one is a bug in flightdeck.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invariant violated: {0}")]
pub struct InvariantViolation(pub String);

impl Machine {
    /// Builds a machine with `config`.
    ///
    /// # Errors
    /// The config's first invalid field ([`Config::validate`]).
    pub fn new(config: Config) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Machine {
            config,
            now: Time::ZERO,
            flights: Flights::default(),
            queue: Queue::default(),
            slots: Slots::default(),
            records: Records::default(),
            deadlines: Deadlines::default(),
            cache: Cache::default(),
            remote: Remote::default(),
            actions: VecDeque::new(),
            totals: Totals::default(),
            shutting_down: false,
        })
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The latest time the machine has seen. Inputs stamped earlier than this are
    /// treated as happening at this time (time never runs backwards).
    #[must_use]
    pub fn now(&self) -> Time {
        self.now
    }

    fn advance(&mut self, now: Time) -> Time {
        self.now = self.now.max(now);
        self.now
    }

    // ----- inputs from clients -------------------------------------------------

    /// A client submits a request for `key` (rules
    /// [1](crate::contract#rule-1)-[3](crate::contract#rule-3)).
    ///
    /// Joins the key's live flight if there is one, is served from the cache if it
    /// holds the key, and otherwise creates a flight at the back of the queue (in
    /// cluster mode: a claiming flight, [rule 25](crate::contract#rule-25)).
    ///
    /// # Errors
    /// [`SubmitError`]; a refused submit changes nothing.
    pub fn submit(&mut self, now: Time, key: Key) -> Result<Submission, SubmitError> {
        if self.shutting_down {
            return Err(SubmitError::ShuttingDown);
        }
        if key.is_empty() {
            return Err(SubmitError::EmptyKey);
        }
        let joining = self.flights.live_flight(&key);
        let cached = match joining {
            Some(_) => None,
            None => self.cache.get(&key).cloned(),
        };
        // A claiming flight counts against the queue (it queues if it owns).
        let waiting = self.queue.len() + self.remote.claiming();
        if joining.is_none() && cached.is_none() && waiting >= self.config.queue_capacity {
            return Err(SubmitError::QueueFull {
                capacity: self.config.queue_capacity,
            });
        }
        let now = self.advance(now);
        let id = self.records.allocate();
        self.totals.submitted += 1;
        let route = match (joining, cached) {
            (Some(flight), _) => {
                self.totals.coalesced += 1;
                self.insert_member(now, id, flight);
                Route::Joined(flight)
            }
            (None, Some(ending)) => {
                self.totals.cache_hits += 1;
                self.totals.completed += 1;
                let until = now + self.config.finished_retention;
                self.records
                    .insert_ended(&mut self.deadlines, id, ending, until);
                Route::Cached
            }
            (None, None) => {
                self.totals.flights += 1;
                // A queued flight's deadline is implied by the queue, not armed:
                // see `Queue::next_expiry`.
                let flight = self.flights.create(key, now + self.config.queue_timeout);
                if self.config.cluster {
                    self.claim(flight); // contract rule 25
                } else {
                    self.queue.push(flight);
                }
                self.insert_member(now, id, flight);
                Route::NewFlight(flight)
            }
        };
        self.pump(now);
        Ok(Submission { request: id, route })
    }

    fn insert_member(&mut self, now: Time, id: RequestId, flight: FlightId) {
        if let Some(f) = self.flights.get_mut(flight) {
            f.members.insert(id);
        }
        let until = now + self.config.attach_timeout;
        self.records
            .insert_member(&mut self.deadlines, id, flight, until);
    }

    /// A client attaches to the request's result stream (at most one client per
    /// request). It will read from the first chunk
    /// ([rule 7](crate::contract#rule-7), late joiners included); a request that
    /// already ended yields its outcome ([rule 13](crate::contract#rule-13)).
    ///
    /// # Errors
    /// [`RequestError::NotFound`] or [`RequestError::AlreadyAttached`]; nothing changes.
    pub fn attach(&mut self, now: Time, request: RequestId) -> Result<(), RequestError> {
        match self.records.get(request) {
            None => return Err(RequestError::NotFound),
            Some(r) if r.reader.is_some() => return Err(RequestError::AlreadyAttached),
            Some(_) => {}
        }
        let now = self.advance(now);
        if let Some(fid) = self.records.attach(&mut self.deadlines, request) {
            if let Some(flight) = self.flights.get_mut(fid) {
                flight.attached += 1;
                if flight.attached == 1 {
                    if let FlightPhase::Prepared { seq, .. } = flight.phase {
                        self.slots.enlist(seq, fid);
                    }
                }
            }
        }
        self.pump(now);
        Ok(())
    }

    /// The attached client reads everything available from its cursor, appending
    /// it to `out`: chunks, then (once the request has ended) exactly one
    /// [`Item::End`] ([rule 19](crate::contract#rule-19)). Chunks are shared, not
    /// copied.
    ///
    /// A read of a live request leaves its reader **parked**: whether it returned
    /// chunks ([`Readiness::Ready`]) or found nothing ([`Readiness::Pending`]),
    /// the machine emits one [`Action::Wake`] for this request as soon as more is
    /// available (a chunk, or the end). So a driver reads again only after a
    /// `Wake`: a reader that keeps up costs one `read` per wake. A read that
    /// returns the terminal item (or [`Readiness::Closed`]) is never followed by
    /// a wake.
    ///
    /// The read that returns the terminal item starts the record's retention
    /// (`finished_retention`, or `cancelled_retention` after a cancel), counted
    /// from [`Machine::now`] since a read carries no time: a client that keeps its
    /// finished stream does not keep the record ([rule 21](crate::contract#rule-21)).
    /// Until the retention passes, reads answer [`Readiness::Closed`]; after it,
    /// [`RequestError::NotFound`]. A driver should take [`Machine::poll_timeout`]
    /// again after such a read: the new deadline may be the earliest.
    ///
    /// A read never queues an action.
    ///
    /// # Errors
    /// [`RequestError::NotFound`] or [`RequestError::NotAttached`]; nothing changes.
    pub fn read(
        &mut self,
        request: RequestId,
        out: &mut Vec<Item>,
    ) -> Result<Readiness, RequestError> {
        let req = self
            .records
            .get_mut(request)
            .ok_or(RequestError::NotFound)?;
        let clock = (&mut self.deadlines, &self.config, self.now);
        reading::read(clock, request, req, &mut self.flights, out)
    }

    /// Cancels the request (rules [9](crate::contract#rule-9)-[12](crate::contract#rule-12)).
    /// Idempotent: cancelling a cancelled request succeeds and changes nothing.
    /// An attached client reads the chunks it was already given, then
    /// [`Outcome::Cancelled`] as its last item ([rule 14](crate::contract#rule-14));
    /// an unattached request keeps its record for `cancelled_retention` so a
    /// client that attaches later reads the cancellation
    /// ([rule 13](crate::contract#rule-13)). If it was its flight's last member,
    /// the flight ends in this step: its work is aborted and its slot handed on
    /// (rules [10](crate::contract#rule-10), [12](crate::contract#rule-12)).
    ///
    /// # Errors
    /// [`RequestError::NotFound`], or [`RequestError::AlreadyFinished`] if it ended
    /// otherwise; nothing changes.
    pub fn cancel(&mut self, now: Time, request: RequestId) -> Result<(), RequestError> {
        match self.records.get(request).map(|r| &r.life) {
            None => return Err(RequestError::NotFound),
            Some(Life::Ended(ending)) if ending.outcome == Outcome::Cancelled => return Ok(()),
            Some(Life::Ended(ending)) => {
                return Err(RequestError::AlreadyFinished(ending.outcome.clone()))
            }
            Some(Life::Live(_)) => {}
        }
        let now = self.advance(now);
        self.end_member(now, request, Outcome::Cancelled);
        self.pump(now);
        Ok(())
    }

    /// The attached client dropped its stream ([rule 15](crate::contract#rule-15)).
    /// A live request is cancelled; either way the record is removed at once,
    /// since nobody is left to read it.
    ///
    /// # Errors
    /// [`RequestError::NotFound`] or [`RequestError::NotAttached`]; nothing changes.
    pub fn detach(&mut self, now: Time, request: RequestId) -> Result<(), RequestError> {
        match self.records.get(request) {
            None => return Err(RequestError::NotFound),
            Some(r) if r.reader.is_none() => return Err(RequestError::NotAttached),
            Some(_) => {}
        }
        let now = self.advance(now);
        if let Some(reader) = self
            .records
            .get_mut(request)
            .and_then(|r| r.reader.as_mut())
        {
            reader.parked = false; // nobody to wake any more
        }
        self.end_member(now, request, Outcome::Cancelled);
        self.records.remove(&mut self.deadlines, request);
        self.pump(now);
        Ok(())
    }

    // ----- outputs ------------------------------------------------------------

    /// The next action for the driver. Drain this after every input.
    #[must_use]
    #[inline]
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Applies one [`Input`]: the recorded-trace form of the typed methods.
    pub fn handle(&mut self, now: Time, input: Input) -> Reply {
        match input {
            Input::Submit { key } => Reply::Submit(self.submit(now, key)),
            Input::Attach { request } => Reply::Request(self.attach(now, request)),
            Input::Read { request } => {
                let mut items = Vec::new();
                let result = self.read(request, &mut items);
                Reply::Read(result, items)
            }
            Input::Cancel { request } => Reply::Request(self.cancel(now, request)),
            Input::Detach { request } => Reply::Request(self.detach(now, request)),
            Input::Prepared { flight, result } => {
                Reply::Flight(self.handle_prepared(now, flight, result))
            }
            Input::Chunk { flight, data } => Reply::Flight(self.handle_chunk(now, flight, data)),
            Input::UpstreamEnded { flight, result } => {
                Reply::Flight(self.handle_upstream_end(now, flight, result))
            }
            Input::Claimed { flight, role } => {
                Reply::Flight(self.handle_claimed(now, flight, role))
            }
            Input::RemoteEnded { flight, outcome } => {
                Reply::Flight(self.handle_remote_end(now, flight, outcome))
            }
            Input::OwnerLost { flight } => Reply::Flight(self.handle_owner_lost(now, flight)),
            Input::Fenced { flight, reason } => {
                Reply::Flight(self.handle_fenced(now, flight, reason))
            }
            Input::Timeout => {
                self.handle_timeout(now);
                Reply::Done
            }
            Input::Shutdown => {
                self.shutdown(now);
                Reply::Done
            }
        }
    }
}
