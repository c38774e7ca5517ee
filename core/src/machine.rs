//! The state machine: inputs in, actions out.
//!
//! Every public method takes the time of the input, changes the state, and queues
//! actions; it never blocks and never reads a clock. Each one ends by running the
//! scheduler ([`Machine::pump`]), so a freed slot is handed to the next waiter in the
//! same step that freed it (rules 5, 8, 12): there is no moment at which a slot is
//! free while someone waits for it.
//!
//! The methods are documented in the order a driver uses them: inputs from clients
//! (`submit`, `attach`, `read`, `cancel`, `detach`), inputs from the user's work
//! (`handle_prepared`, `handle_chunk`, `handle_upstream_end`), time
//! (`poll_timeout`, `handle_timeout`), then outputs (`poll_action`) and
//! observation (`status`, `stats`).

mod batch;

pub use batch::Borrowed;

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;

use crate::cache::{Cache, Log};
use crate::deadline::{Deadlines, Timer};
use crate::flight::{Flight, FlightPhase};
use crate::idmap::IdMap;
use crate::live::LiveKeys;
use crate::request::{Ending, Life, Reader, Request};
use crate::{
    Action, Config, ConfigError, Failure, FlightId, Input, Item, Key, Outcome, Phase, Prepared,
    Readiness, Reply, RequestError, RequestId, RequestState, RequestStatus, Route, StaleFlight,
    Stats, Submission, SubmitError, Time, Totals, Work,
};

/// The flightdeck state machine. See the [crate docs](crate) for the driving loop.
///
/// It is `Clone`, `Eq` and `Hash` over its whole state (ordered maps only), so a
/// model checker can fork it and recognise states it has seen.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Machine {
    config: Config,
    now: Time,
    next_request: u64,
    next_flight: u64,
    next_ready_seq: u64,
    requests: IdMap<RequestId, Request>,
    /// Boxed: a flight is large and most are looked up rarely, so the dense
    /// window stays small (8 bytes per id).
    flights: IdMap<FlightId, Box<Flight>>,
    /// The live flight of each key (rule 2: at most one).
    live: LiveKeys,
    /// The admission queue, FIFO: flight ids grow with creation order.
    queue: BTreeSet<FlightId>,
    /// Prepared flights with a client attached, FIFO by preparation order (rule 6).
    ready: BTreeSet<(u64, FlightId)>,
    preparing: usize,
    streaming: usize,
    readers: usize,
    live_requests: usize,
    deadlines: Deadlines,
    cache: Cache,
    actions: VecDeque<Action>,
    totals: Totals,
    shutting_down: bool,
}

/// An invariant of the machine did not hold. Only [`Machine::check_invariants`]
/// returns this; seeing one is a bug in flightdeck.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invariant violated: {0}")]
pub struct InvariantViolation(pub String);

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(InvariantViolation(format!($($fmt)+)));
        }
    };
}

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
            next_request: 0,
            next_flight: 0,
            next_ready_seq: 0,
            requests: IdMap::default(),
            flights: IdMap::default(),
            live: LiveKeys::default(),
            queue: BTreeSet::new(),
            ready: BTreeSet::new(),
            preparing: 0,
            streaming: 0,
            readers: 0,
            live_requests: 0,
            deadlines: Deadlines::default(),
            cache: Cache::default(),
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

    /// A client submits a request for `key` (rules 1-3).
    ///
    /// Joins the key's live flight if there is one, is served from the cache if it
    /// holds the key, and otherwise creates a flight at the back of the queue.
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
        let joining = self.live.get(&key, &self.flights);
        let cached = match joining {
            Some(_) => None,
            None => self.cache.get(&key).cloned(),
        };
        if joining.is_none() && cached.is_none() && self.queue.len() >= self.config.queue_capacity {
            return Err(SubmitError::QueueFull {
                capacity: self.config.queue_capacity,
            });
        }
        let now = self.advance(now);
        let id = RequestId::from_raw(self.next_request);
        self.next_request += 1;
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
                let mut request = Request {
                    life: Life::Ended(ending),
                    reader: None,
                    deadline: None,
                };
                let until = now + self.config.finished_retention;
                self.deadlines
                    .arm(&mut request.deadline, until, Timer::Request(id));
                self.requests.insert(id, request);
                Route::Cached
            }
            (None, None) => {
                let flight = FlightId::from_raw(self.next_flight);
                self.next_flight += 1;
                self.totals.flights += 1;
                // A queued flight's deadline is implied by the queue, not armed:
                // see `next_queue_expiry`.
                let f = Flight::new(key, now + self.config.queue_timeout);
                self.live.insert(&f.key, flight);
                self.flights.insert(flight, Box::new(f));
                self.queue.insert(flight);
                self.insert_member(now, id, flight);
                Route::NewFlight(flight)
            }
        };
        self.pump(now);
        Ok(Submission { request: id, route })
    }

    fn insert_member(&mut self, now: Time, id: RequestId, flight: FlightId) {
        if let Some(f) = self.flights.get_mut(&flight) {
            f.members.insert(id);
        }
        let mut request = Request {
            life: Life::Live(flight),
            reader: None,
            deadline: None,
        };
        let until = now + self.config.attach_timeout;
        self.deadlines
            .arm(&mut request.deadline, until, Timer::Request(id));
        self.requests.insert(id, request);
        self.live_requests += 1;
    }

    /// A client attaches to the request's result stream (at most one client per
    /// request). It will read from the first chunk (rule 7, late joiners included);
    /// a request that already ended yields its outcome (rule 13).
    ///
    /// # Errors
    /// [`RequestError::NotFound`] or [`RequestError::AlreadyAttached`]; nothing changes.
    pub fn attach(&mut self, now: Time, request: RequestId) -> Result<(), RequestError> {
        match self.requests.get(&request) {
            None => return Err(RequestError::NotFound),
            Some(r) if r.reader.is_some() => return Err(RequestError::AlreadyAttached),
            Some(_) => {}
        }
        let now = self.advance(now);
        let Some(req) = self.requests.get_mut(&request) else {
            return Err(RequestError::NotFound);
        };
        self.deadlines
            .disarm(&mut req.deadline, Timer::Request(request));
        req.reader = Some(Reader {
            cursor: 0,
            parked: false,
            finished: false,
        });
        self.readers += 1;
        if let Life::Live(fid) = req.life {
            if let Some(flight) = self.flights.get_mut(&fid) {
                flight.attached += 1;
                if flight.attached == 1 {
                    if let FlightPhase::Prepared { seq, .. } = flight.phase {
                        self.ready.insert((seq, fid));
                    }
                }
            }
        }
        self.pump(now);
        Ok(())
    }

    /// The attached client reads everything available from its cursor, appending
    /// it to `out`: chunks, then (once the request has ended) exactly one
    /// [`Item::End`] (rule 19). Chunks are shared, not copied.
    ///
    /// A read of a live request leaves its reader **parked**: whether it returned
    /// chunks ([`Readiness::Ready`]) or found nothing ([`Readiness::Pending`]),
    /// the machine emits one [`Action::Wake`] for this request as soon as more is
    /// available (a chunk, or the end). So a driver reads again only after a
    /// `Wake`: a reader that keeps up costs one `read` per wake. A read that
    /// returns the terminal item (or [`Readiness::Closed`]) is never followed by
    /// a wake.
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
            .requests
            .get_mut(&request)
            .ok_or(RequestError::NotFound)?;
        let reader = req.reader.as_mut().ok_or(RequestError::NotAttached)?;
        match &req.life {
            Life::Live(fid) => {
                let Some(flight) = self.flights.get_mut(fid) else {
                    return Ok(Readiness::Pending);
                };
                // Either way the reader has everything so far: park it, so the
                // next chunk (or the end) wakes it without a second read.
                if !reader.parked {
                    reader.parked = true;
                    flight.tail_mut().parked.push(request);
                }
                let log = &flight.tail().log;
                let len = log.len();
                let from = reader.cursor.min(len);
                if from < len {
                    if from + 1 == len {
                        // The usual case for a reader that keeps up: one new chunk.
                        out.push(Item::Chunk(log[from].clone()));
                    } else {
                        out.extend(log[from..].iter().cloned().map(Item::Chunk));
                    }
                    reader.cursor = len;
                    Ok(Readiness::Ready)
                } else {
                    Ok(Readiness::Pending)
                }
            }
            Life::Ended(ending) => {
                if reader.finished {
                    return Ok(Readiness::Closed);
                }
                if let Some(log) = &ending.log {
                    let from = reader.cursor.min(log.len());
                    out.extend(log[from..].iter().cloned().map(Item::Chunk));
                    reader.cursor = log.len();
                }
                out.push(Item::End(ending.outcome.clone()));
                reader.finished = true;
                reader.parked = false;
                Ok(Readiness::Ready)
            }
        }
    }

    /// Cancels the request (rules 9-12). Idempotent: cancelling a cancelled request
    /// succeeds and changes nothing. An attached client reads the chunks it was
    /// already given, then [`Outcome::Cancelled`] as its last item (rule 14); an
    /// unattached request keeps its record for `cancelled_retention` so a client
    /// that attaches later reads the cancellation (rule 13). If it was its flight's
    /// last member, the flight ends in this step: its work is aborted and its slot
    /// handed on (rules 10, 12).
    ///
    /// # Errors
    /// [`RequestError::NotFound`], or [`RequestError::AlreadyFinished`] if it ended
    /// otherwise; nothing changes.
    pub fn cancel(&mut self, now: Time, request: RequestId) -> Result<(), RequestError> {
        match self.requests.get(&request).map(|r| &r.life) {
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

    /// The attached client dropped its stream (rule 15). A live request is
    /// cancelled; either way the record is removed at once, since nobody is left to
    /// read it.
    ///
    /// # Errors
    /// [`RequestError::NotFound`] or [`RequestError::NotAttached`]; nothing changes.
    pub fn detach(&mut self, now: Time, request: RequestId) -> Result<(), RequestError> {
        match self.requests.get(&request) {
            None => return Err(RequestError::NotFound),
            Some(r) if r.reader.is_none() => return Err(RequestError::NotAttached),
            Some(_) => {}
        }
        let now = self.advance(now);
        if let Some(reader) = self
            .requests
            .get_mut(&request)
            .and_then(|r| r.reader.as_mut())
        {
            reader.parked = false; // nobody to wake any more
        }
        self.end_member(now, request, Outcome::Cancelled);
        if let Some(mut req) = self.requests.remove(&request) {
            self.deadlines
                .disarm(&mut req.deadline, Timer::Request(request));
            self.readers -= 1;
        }
        self.pump(now);
        Ok(())
    }

    // ----- inputs from the user's work ----------------------------------------

    /// The preparation of `flight` finished. On success the flight waits for a
    /// stream slot (and for a client, rule 6) and its preparation slot is released
    /// in this step (rule 5); on failure every member ends failed (rule 20).
    ///
    /// # Errors
    /// [`StaleFlight`] if the flight is not preparing (it was aborted or ended):
    /// the input is ignored (rule 16).
    pub fn handle_prepared(
        &mut self,
        now: Time,
        flight: FlightId,
        result: Result<Prepared, Failure>,
    ) -> Result<(), StaleFlight> {
        self.expect_phase(flight, |p| matches!(p, FlightPhase::Preparing))?;
        let now = self.advance(now);
        match result {
            Ok(prepared) => {
                let seq = self.next_ready_seq;
                self.next_ready_seq += 1;
                let until = now + self.config.stream_slot_timeout;
                if let Some(f) = self.flights.get_mut(&flight) {
                    f.phase = FlightPhase::Prepared {
                        cacheable: prepared.cacheable,
                        seq,
                    };
                    self.deadlines
                        .move_to(&mut f.deadline, until, Timer::Flight(flight));
                    if f.attached > 0 {
                        self.ready.insert((seq, flight));
                    }
                    self.preparing -= 1;
                }
            }
            Err(failure) => self.end_flight(now, flight, &Outcome::Failed(failure), false),
        }
        self.pump(now);
        Ok(())
    }

    /// The upstream of `flight` produced a chunk. It is appended to the flight's log
    /// once; every reader reads it from there (rule 7). A chunk that takes the
    /// response past `max_response_bytes` fails the flight instead (rule 22).
    ///
    /// # Errors
    /// [`StaleFlight`] if the flight is not streaming; the chunk is ignored (rule 16).
    pub fn handle_chunk(
        &mut self,
        now: Time,
        flight: FlightId,
        data: Bytes,
    ) -> Result<(), StaleFlight> {
        self.expect_phase(flight, |p| matches!(p, FlightPhase::Streaming { .. }))?;
        let now = self.advance(now);
        let limit = self.config.max_response_bytes;
        let idle = self.config.idle_timeout;
        let Some(f) = self.flights.get_mut(&flight) else {
            return Err(StaleFlight);
        };
        let size = data.len() as u64;
        if f.tail().bytes.saturating_add(size) > limit {
            let failure = Failure::ResponseTooLarge { limit };
            self.end_flight(now, flight, &Outcome::Failed(failure), true);
            self.pump(now);
            return Ok(());
        }
        if let FlightPhase::Streaming { ends_by, .. } = f.phase {
            self.deadlines.move_to(
                &mut f.deadline,
                ends_by.min(now + idle),
                Timer::Flight(flight),
            );
        }
        let tail = f.tail_mut();
        tail.bytes += size;
        tail.log.push(data);
        for id in tail.parked.drain(..) {
            let Some(req) = self.requests.get_mut(&id) else {
                continue;
            };
            if !matches!(req.life, Life::Live(f) if f == flight) {
                continue;
            }
            if let Some(reader) = req.reader.as_mut().filter(|r| r.parked) {
                reader.parked = false;
                self.actions.push_back(Action::Wake { request: id });
            }
        }
        Ok(())
    }

    /// The upstream of `flight` ended. On success every member ends completed and
    /// the result is cached unless the preparation marked it uncacheable (rule 8);
    /// on failure every member ends failed after the chunks already in the log and
    /// nothing is cached (rule 20). The stream slot goes to the next waiter in this
    /// step.
    ///
    /// # Errors
    /// [`StaleFlight`] if the flight is not streaming; the input is ignored (rule 16).
    pub fn handle_upstream_end(
        &mut self,
        now: Time,
        flight: FlightId,
        result: Result<(), Failure>,
    ) -> Result<(), StaleFlight> {
        self.expect_phase(flight, |p| matches!(p, FlightPhase::Streaming { .. }))?;
        let now = self.advance(now);
        let outcome = match result {
            Ok(()) => Outcome::Completed,
            Err(failure) => Outcome::Failed(failure),
        };
        self.end_flight(now, flight, &outcome, false);
        self.pump(now);
        Ok(())
    }

    fn expect_phase(
        &self,
        flight: FlightId,
        phase: impl Fn(&FlightPhase) -> bool,
    ) -> Result<(), StaleFlight> {
        match self.flights.get(&flight) {
            Some(f) if phase(&f.phase) => Ok(()),
            _ => Err(StaleFlight),
        }
    }

    // ----- time ---------------------------------------------------------------

    /// The earliest pending deadline: the driver sleeps until then and calls
    /// [`Machine::handle_timeout`]. `None` when nothing can expire.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Time> {
        let armed = self.deadlines.next();
        match (armed, self.next_queue_expiry()) {
            (Some(a), Some((q, _))) => Some(a.min(q)),
            (a, q) => a.or(q.map(|(at, _)| at)),
        }
    }

    /// The queue deadline of the flight at the head of the queue.
    ///
    /// Queue deadlines are not armed in [`Deadlines`]: every flight is queued at
    /// creation with `now + queue_timeout`, time never runs backwards and flight
    /// ids grow with creation, so along the queue (in id order) the deadlines
    /// never decrease and the head's is the earliest. That saves one deadline
    /// entry per queued flight; handling order is unchanged (the head competes
    /// with the armed deadlines as `(time, Timer::Flight(id))`, as if armed).
    fn next_queue_expiry(&self) -> Option<(Time, FlightId)> {
        let fid = *self.queue.first()?;
        let at = self.flights.get(&fid)?.deadline;
        Some((at, fid))
    }

    /// The earliest deadline due at `now`, armed or implied by the queue, removed
    /// from [`Deadlines`] if it was armed there.
    fn pop_due(&mut self, now: Time) -> Option<Timer> {
        let queued = self
            .next_queue_expiry()
            .filter(|(at, _)| *at <= now)
            .map(|(at, fid)| (at, Timer::Flight(fid)));
        match (self.deadlines.peek_due(now), queued) {
            (Some(armed), Some(queued)) if queued < armed => Some(queued.1),
            (Some(_), _) => self.deadlines.pop_due(now),
            (None, queued) => queued.map(|(_, timer)| timer),
        }
    }

    /// Handles every deadline due at `now` (rule 17). Each costs O(log n) (rule 18).
    /// Calling it again at the same time does nothing (idempotent).
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
        let Some(f) = self.flights.get_mut(&flight) else {
            return;
        };
        // Popped already. Name the phase from when the deadline was due, not from
        // `now`: a driver that wakes late must still see an idle expiry as idle.
        let due = f.deadline;
        let (phase, abort) = match f.phase {
            FlightPhase::Queued => (Phase::Queue, false),
            FlightPhase::Preparing => (Phase::Preparation, true),
            FlightPhase::Prepared { .. } => (Phase::StreamSlot, false),
            FlightPhase::Streaming { ends_by, .. } if due >= ends_by => (Phase::Stream, true),
            FlightPhase::Streaming { .. } => (Phase::Idle, true),
        };
        self.end_flight(now, flight, &Outcome::TimedOut(phase), abort);
    }

    fn request_expired(&mut self, now: Time, request: RequestId) {
        let Some(req) = self.requests.get_mut(&request) else {
            return;
        };
        req.deadline = None; // popped already
        match req.life {
            Life::Live(_) => self.end_member(now, request, Outcome::TimedOut(Phase::Attach)),
            Life::Ended(_) => {
                self.requests.remove(&request);
            }
        }
    }

    /// Stops admission and ends every live request with
    /// [`Failure::Shutdown`], aborting all running work. Ended records stay for
    /// their clients to read.
    pub fn shutdown(&mut self, now: Time) {
        let now = self.advance(now);
        self.shutting_down = true;
        let flights: Vec<FlightId> = self.flights.keys().collect();
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

    // ----- outputs ------------------------------------------------------------

    /// The next action for the driver. Drain this after every input.
    #[must_use]
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

    // ----- observation --------------------------------------------------------

    /// A snapshot of one request; `None` if no record exists.
    #[must_use]
    pub fn status(&self, request: RequestId) -> Option<RequestStatus> {
        let req = self.requests.get(&request)?;
        let attached = req.reader.is_some();
        Some(match &req.life {
            Life::Live(fid) => {
                let flight = self.flights.get(fid)?;
                let (state, queue_position) = match flight.phase {
                    FlightPhase::Queued => {
                        (RequestState::Queued, Some(self.queue.range(..*fid).count()))
                    }
                    FlightPhase::Preparing => (RequestState::Preparing, None),
                    FlightPhase::Prepared { .. } => (RequestState::WaitingForStream, None),
                    FlightPhase::Streaming { .. } => (RequestState::Streaming, None),
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

    /// Gauges and totals (rule 24), in O(1).
    #[must_use]
    pub fn stats(&self) -> Stats {
        Stats {
            requests: self.requests.len(),
            live_requests: self.live_requests,
            queued: self.queue.len(),
            preparing: self.preparing,
            waiting_for_stream: self.flights.len()
                - self.queue.len()
                - self.preparing
                - self.streaming,
            streaming: self.streaming,
            preparation_slots_in_use: self.preparing,
            stream_slots_in_use: self.streaming,
            readers: self.readers,
            cache_entries: self.cache.len(),
            deadlines: self.deadlines.len() + self.queue.len(),
            totals: self.totals,
        }
    }

    /// Whether the machine holds nothing at all: no request, flight, slot, reader,
    /// deadline, cache entry or pending action (rule 21).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.requests.is_empty()
            && self.flights.is_empty()
            && self.live.is_empty()
            && self.queue.is_empty()
            && self.ready.is_empty()
            && self.preparing == 0
            && self.streaming == 0
            && self.readers == 0
            && self.live_requests == 0
            && self.deadlines.len() == 0
            && self.cache.len() == 0
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
        self.requests.keys()
    }

    // ----- internals ----------------------------------------------------------

    /// Hands free slots to waiters: queued flights to preparation slots, then
    /// attached prepared flights to stream slots, both FIFO (rules 4-6).
    fn pump(&mut self, now: Time) {
        while self.preparing < self.config.max_concurrent_requests {
            let Some(fid) = self.queue.pop_first() else {
                break;
            };
            let Some(f) = self.flights.get_mut(&fid) else {
                continue;
            };
            f.phase = FlightPhase::Preparing;
            let until = now + self.config.preparation_timeout;
            // The queue deadline was implied, not armed.
            self.deadlines
                .arm_new(&mut f.deadline, until, Timer::Flight(fid));
            self.preparing += 1;
            self.totals.preparations_started += 1;
            self.actions.push_back(Action::StartPreparation {
                flight: fid,
                key: f.key.clone(),
            });
        }
        while self.streaming < self.config.max_concurrent_streams {
            let Some((_, fid)) = self.ready.pop_first() else {
                break;
            };
            let Some(f) = self.flights.get_mut(&fid) else {
                continue;
            };
            let FlightPhase::Prepared { cacheable, .. } = f.phase else {
                continue;
            };
            let ends_by = now + self.config.stream_timeout;
            f.phase = FlightPhase::Streaming { cacheable, ends_by };
            let until = ends_by.min(now + self.config.idle_timeout);
            self.deadlines
                .move_to(&mut f.deadline, until, Timer::Flight(fid));
            self.streaming += 1;
            self.totals.streams_started += 1;
            self.actions.push_back(Action::StartStream { flight: fid });
        }
    }

    /// One live member leaves its flight with `outcome` (cancel, detach, attach
    /// timeout). If it was the last member, the flight ends now (rules 10-12).
    fn end_member(&mut self, now: Time, request: RequestId, outcome: Outcome) {
        let Some(req) = self.requests.get(&request) else {
            return;
        };
        let Life::Live(fid) = req.life else { return };
        let attached = req.reader.is_some();
        self.finish(now, request, Arc::new(Ending { outcome, log: None }));
        let Some(f) = self.flights.get_mut(&fid) else {
            return;
        };
        f.members.remove(request);
        if attached {
            f.attached -= 1;
            if f.attached == 0 {
                if let FlightPhase::Prepared { seq, .. } = f.phase {
                    self.ready.remove(&(seq, fid));
                }
            }
        }
        if f.members.is_empty() {
            // Nobody waits for this work any more: abort it and free its slot now.
            self.end_flight(now, fid, &Outcome::Cancelled, true);
        }
    }

    /// Ends a flight: releases whatever it holds, aborts running work if `abort`,
    /// ends every member with `outcome`, caches a completed cacheable log, and
    /// emits [`Action::FlightEnded`]. The caller pumps afterwards.
    fn end_flight(&mut self, now: Time, flight: FlightId, outcome: &Outcome, abort: bool) {
        let Some(mut f) = self.flights.remove(&flight) else {
            return;
        };
        self.live.remove(&f.key, flight);
        if f.phase != FlightPhase::Queued {
            // (Already gone if it is the deadline that expired.)
            self.deadlines.remove(f.deadline, Timer::Flight(flight));
        }
        let mut cacheable = false;
        match f.phase {
            FlightPhase::Queued => {
                self.queue.remove(&flight);
            }
            FlightPhase::Preparing => {
                self.preparing -= 1;
                if abort {
                    self.actions.push_back(Action::Abort {
                        flight,
                        work: Work::Preparation,
                    });
                }
            }
            FlightPhase::Prepared { seq, .. } => {
                self.ready.remove(&(seq, flight));
            }
            FlightPhase::Streaming { cacheable: c, .. } => {
                self.streaming -= 1;
                cacheable = c;
                if abort {
                    self.actions.push_back(Action::Abort {
                        flight,
                        work: Work::Stream,
                    });
                }
            }
        }
        let log: Log = Arc::new(f.take_log());
        let ending = Arc::new(Ending {
            outcome: outcome.clone(),
            log: Some(log),
        });
        if *outcome == Outcome::Completed && cacheable {
            let until = now + self.config.cache_ttl;
            let capacity = self.config.cache_capacity;
            self.cache.insert(
                &mut self.deadlines,
                capacity,
                f.key.clone(),
                Arc::clone(&ending),
                until,
            );
        }
        for member in f.members.iter() {
            self.finish(now, member, Arc::clone(&ending));
        }
        self.actions.push_back(Action::FlightEnded { flight });
    }

    /// Marks a live request ended. An attached client is woken if it waits; an
    /// unattached record starts its retention so a late client can still read it.
    fn finish(&mut self, now: Time, request: RequestId, ending: Arc<Ending>) {
        let Some(req) = self.requests.get_mut(&request) else {
            return;
        };
        if !matches!(req.life, Life::Live(_)) {
            return;
        }
        match ending.outcome {
            Outcome::Completed => self.totals.completed += 1,
            Outcome::Cancelled => self.totals.cancelled += 1,
            Outcome::Failed(_) => self.totals.failed += 1,
            Outcome::TimedOut(_) => self.totals.timed_out += 1,
        }
        self.live_requests -= 1;
        self.deadlines
            .disarm(&mut req.deadline, Timer::Request(request));
        let retention = if ending.outcome == Outcome::Cancelled {
            self.config.cancelled_retention
        } else {
            self.config.finished_retention
        };
        req.life = Life::Ended(ending);
        match req.reader.as_mut() {
            Some(reader) => {
                if reader.parked {
                    reader.parked = false;
                    self.actions.push_back(Action::Wake { request });
                }
            }
            None => {
                self.deadlines
                    .arm(&mut req.deadline, now + retention, Timer::Request(request));
            }
        }
    }

    /// Checks every invariant of SPEC.md against the whole state, in O(n). For
    /// tests and harnesses; a driver never needs it.
    ///
    /// # Errors
    /// The first [`InvariantViolation`] found.
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        let c = &self.config;
        let mut preparing = 0;
        let mut streaming = 0;
        let mut queued = 0;
        let mut ready = 0;
        for (fid, f) in self.flights.iter() {
            let fid = &fid;
            ensure!(!f.members.is_empty(), "{fid} has no members but is live");
            ensure!(
                self.live.get(&f.key, &self.flights) == Some(*fid),
                "{fid} is not the live flight of its key"
            );
            match f.phase {
                FlightPhase::Queued => {
                    queued += 1;
                    ensure!(
                        self.queue.contains(fid),
                        "{fid} queued but not in the queue"
                    );
                }
                FlightPhase::Preparing => preparing += 1,
                FlightPhase::Prepared { seq, .. } => {
                    let listed = self.ready.contains(&(seq, *fid));
                    ensure!(listed == (f.attached > 0), "{fid} ready listing wrong");
                    ready += usize::from(listed);
                }
                FlightPhase::Streaming { .. } => streaming += 1,
            }
            let armed = self.deadlines.contains(f.deadline, Timer::Flight(*fid));
            if f.phase == FlightPhase::Queued {
                ensure!(!armed, "{fid} queued with an armed deadline");
            } else {
                ensure!(armed, "{fid} deadline not armed");
            }
            let mut attached = 0;
            for member in f.members.iter() {
                let req = self.requests.get(&member);
                ensure!(
                    req.is_some_and(|r| r.life == Life::Live(*fid)),
                    "{fid} lists {member} which does not point back"
                );
                attached += usize::from(req.is_some_and(|r| r.reader.is_some()));
            }
            ensure!(
                attached == f.attached,
                "{fid} attached count {} != {attached}",
                f.attached
            );
            let bytes: u64 = f.tail().log.iter().map(|b| b.len() as u64).sum();
            ensure!(
                bytes == f.tail().bytes && bytes <= c.max_response_bytes,
                "{fid} byte count"
            );
        }
        ensure!(
            preparing == self.preparing,
            "preparation slots {} != {preparing}",
            self.preparing
        );
        ensure!(
            streaming == self.streaming,
            "stream slots {} != {streaming}",
            self.streaming
        );
        ensure!(
            preparing <= c.max_concurrent_requests,
            "preparation limit exceeded"
        );
        ensure!(
            streaming <= c.max_concurrent_streams,
            "stream limit exceeded"
        );
        ensure!(queued == self.queue.len(), "queue holds flights not queued");
        ensure!(
            ready == self.ready.len(),
            "ready list holds flights not prepared"
        );
        ensure!(self.queue.len() <= c.queue_capacity, "queue over capacity");
        ensure!(
            self.live.len() == self.flights.len(),
            "a key maps to a flight that is gone"
        );
        ensure!(
            self.queue.is_empty() || self.preparing == c.max_concurrent_requests,
            "a flight is queued while a preparation slot is free"
        );
        ensure!(
            self.ready.is_empty() || self.streaming == c.max_concurrent_streams,
            "a flight waits for a stream slot while one is free"
        );

        let mut readers = 0;
        let mut live = 0;
        for (id, r) in self.requests.iter() {
            let id = &id;
            readers += usize::from(r.reader.is_some());
            match &r.life {
                Life::Live(fid) => {
                    live += 1;
                    let f = self.flights.get(fid);
                    ensure!(
                        f.is_some_and(|f| f.members.contains(*id)),
                        "{id} not in its {fid}"
                    );
                    if let (Some(reader), Some(f)) = (&r.reader, f) {
                        ensure!(
                            reader.cursor <= f.tail().log.len(),
                            "{id} cursor past the log"
                        );
                        ensure!(!reader.finished, "{id} finished while live");
                        ensure!(
                            !reader.parked || f.tail().parked.contains(id),
                            "{id} parked but its flight will not wake it"
                        );
                    }
                }
                Life::Ended(ending) => {
                    let log = &ending.log;
                    if let Some(reader) = &r.reader {
                        let len = log.as_ref().map_or(0, |l| l.len());
                        ensure!(
                            reader.cursor <= len || log.is_none(),
                            "{id} cursor past the log"
                        );
                        ensure!(!reader.parked, "{id} ended but its reader waits unwoken");
                    }
                }
            }
            // Nothing is held forever: a record without a client always has a
            // deadline (attach or retention); one with a client has none.
            match (r.reader.is_some(), r.deadline) {
                (true, None) => {}
                (true, Some(_)) => ensure!(false, "{id} attached but still has a deadline"),
                (false, None) => ensure!(false, "{id} unattached without a deadline"),
                (false, Some(at)) => ensure!(
                    self.deadlines.contains(at, Timer::Request(*id)),
                    "{id} deadline not armed"
                ),
            }
        }
        ensure!(
            readers == self.readers,
            "reader count {} != {readers}",
            self.readers
        );
        ensure!(
            live == self.live_requests,
            "live count {} != {live}",
            self.live_requests
        );
        self.cache
            .check(&self.deadlines)
            .map_err(InvariantViolation)?;
        let mut last = None;
        for fid in &self.queue {
            let at = self.flights.get(fid).map(|f| f.deadline);
            ensure!(
                at >= last,
                "queue deadlines out of order at {fid}: the head's is not the earliest"
            );
            last = at;
        }
        let armed = self.flights.len() - self.queue.len()
            + self
                .requests
                .values()
                .filter(|r| r.deadline.is_some())
                .count()
            + self.cache.len();
        ensure!(
            armed == self.deadlines.len(),
            "{} deadlines for {armed} owners",
            self.deadlines.len()
        );
        Ok(())
    }
}
