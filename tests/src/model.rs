//! A deliberately naive reference model of the behaviour contract (SPEC.md).
//!
//! # Why it exists
//! The core is written for speed: ordered maps, a deadline index, a ready list,
//! counters kept up to date incrementally, logs shared behind `Arc`s. Every one of
//! those is a place where the bookkeeping can drift from what the contract says
//! (a counter not decremented, a ready entry left behind, a deadline never
//! disarmed). [`Model`] restates the contract in the most obvious way possible so
//! that a property test can run both side by side over random input sequences and
//! demand identical answers after every step (`tests/tests/model_proptest.rs`).
//!
//! # What it does naively, on purpose
//! - State is plain [`Vec`]s: live flights, request records, cache entries. No maps,
//!   no sets, no indexes.
//! - Nothing is counted incrementally. Every gauge of [`Stats`], every slot count,
//!   every queue position and every flight's membership is recomputed by a linear
//!   scan when it is needed. A flight's members are "the records that say they
//!   belong to it"; a flight's attached readers are counted the same way.
//! - There is no deadline structure. Each flight, record and cache entry stores
//!   its own deadline; the next one is found by scanning everything
//!   ([`Model::poll_timeout`]), and [`Model::handle_timeout`] repeatedly scans for
//!   the earliest due one.
//! - Logs are copied, never shared: an ended record owns its own copy of the
//!   chunks its reader may still read.
//! - Wakes are not tracked per flight. After every input the model scans all
//!   readers: one whose last read was of a live request (`Pending`, or `Ready`
//!   without the end: read-and-park) and that now has something to read gets an
//!   [`Action::Wake`]. That is the contract of [`Readiness`] stated directly.
//!
//! It is slow (quadratic and worse) and that is fine: it only ever holds a
//! handful of requests.
//!
//! Cluster mode (contract rules 25-29) lives in `model/cluster.rs`: a flight's
//! phase says claiming or following, a flag says owner, and each flight keeps
//! the queue deadline it was created with.
//!
//! # Where the model copies a choice of the core
//! The SPEC leaves some things open. Where it does, the model makes the same
//! choice as the core and the code says so with a comment starting
//! "Core's choice". The test compares actions with [`normalise_actions`], which
//! keeps only the orderings the contract fixes (see there).

use core::time::Duration;

use bytes::Bytes;
use flightdeck_core::{
    Action, Config, ConfigError, Failure, FlightId, Input, Item, Key, Outcome, Phase, Prepared,
    Readiness, Reply, RequestError, RequestId, RequestState, RequestStatus, Route, StaleFlight,
    Stats, Submission, SubmitError, Time, Totals, Work,
};

mod cluster;

/// Where a live flight is.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase2 {
    Queued,
    Preparing,
    /// Prepared; `order` is its place in the wait for a stream slot.
    Prepared {
        cacheable: bool,
        order: u64,
    },
    Streaming {
        cacheable: bool,
        ends_by: Time,
    },
    /// Cluster mode: waiting for the claim's answer; its deadline is `queue_by`.
    Claiming,
    /// Cluster mode: following another machine's log.
    Following {
        ends_by: Time,
    },
}

/// A live flight. It has no member list: its members are the records whose
/// `life` names it.
#[derive(Clone, Debug)]
struct Flight {
    id: FlightId,
    key: Key,
    phase: Phase2,
    log: Vec<Bytes>,
    deadline: Time,
    /// Cluster mode: this machine owns the key (publishes, releases).
    owner: bool,
    /// The queue deadline, fixed at creation (claims count as queue time).
    queue_by: Time,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Life {
    Live(FlightId),
    /// Ended; `rest` holds the chunks the reader may still read from its cursor
    /// (`None` after a cancel or an attach timeout: only the outcome is left).
    Ended {
        outcome: Outcome,
        rest: Option<Vec<Bytes>>,
    },
}

#[derive(Clone, Debug)]
struct Reader {
    cursor: usize,
    /// Its last read was of a live request (found nothing, or everything so
    /// far) and no wake came since.
    parked: bool,
    /// It read the terminal item.
    finished: bool,
}

#[derive(Clone, Debug)]
struct Record {
    id: RequestId,
    life: Life,
    reader: Option<Reader>,
    deadline: Option<Time>,
}

#[derive(Clone, Debug)]
struct Cached {
    key: Key,
    log: Vec<Bytes>,
    /// Insertion number: the oldest entry is evicted first.
    order: u64,
    expires: Time,
}

/// Something that can expire, with the rank the core gives it among deadlines due
/// at the same instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Due {
    Flight(FlightId),
    Request(RequestId),
    Cache(u64),
}

/// The naive reference model: the same inputs as
/// [`Machine`](flightdeck_core::Machine), the same answers, computed the obvious way.
#[derive(Clone, Debug)]
pub struct Model {
    config: Config,
    now: Time,
    next_request: u64,
    next_flight: u64,
    next_prepared: u64,
    next_cached: u64,
    flights: Vec<Flight>,
    records: Vec<Record>,
    cache: Vec<Cached>,
    actions: Vec<Action>,
    totals: Totals,
    shutting_down: bool,
}

impl Model {
    /// A model with `config`.
    ///
    /// # Errors
    /// The same as the core: the config's first invalid field.
    pub fn new(config: Config) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Model {
            config,
            now: Time::ZERO,
            next_request: 0,
            next_flight: 0,
            next_prepared: 0,
            next_cached: 0,
            flights: Vec::new(),
            records: Vec::new(),
            cache: Vec::new(),
            actions: Vec::new(),
            totals: Totals::default(),
            shutting_down: false,
        })
    }

    /// How many submits were accepted so far (request ids are `0..` this).
    #[must_use]
    pub fn requests_submitted(&self) -> u64 {
        self.next_request
    }

    /// How many flights were created so far (flight ids are `0..` this).
    #[must_use]
    pub fn flights_created(&self) -> u64 {
        self.next_flight
    }

    /// Takes the actions the model predicts for the inputs since the last call.
    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    /// Whether nothing is held: no record, flight, cache entry or pending action.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
            && self.flights.is_empty()
            && self.cache.is_empty()
            && self.actions.is_empty()
    }

    /// Applies one input, like [`Machine::handle`](flightdeck_core::Machine::handle).
    /// `None` for an input variant this model does not know (the enum is
    /// non-exhaustive); the caller should treat that as a gap in the model.
    pub fn handle(&mut self, now: Time, input: Input) -> Option<Reply> {
        Some(match input {
            Input::Submit { key } => Reply::Submit(self.submit(now, key)),
            Input::Attach { request } => Reply::Request(self.attach(now, request)),
            Input::Read { request } => {
                let (result, items) = self.read(request);
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
            _ => return None,
        })
    }

    // ----- clients -----------------------------------------------------------

    /// Rules [1](flightdeck_core::contract#rule-1)-[3](flightdeck_core::contract#rule-3): join the key's live flight, else serve from the cache, else a
    /// new flight at the back of the queue (if the queue has room).
    ///
    /// # Errors
    /// As the core: shutting down, empty key, queue full. Nothing changes then.
    pub fn submit(&mut self, now: Time, key: Key) -> Result<Submission, SubmitError> {
        // Core's choice: the order of the checks (shutdown, then key, then room).
        if self.shutting_down {
            return Err(SubmitError::ShuttingDown);
        }
        if key.is_empty() {
            return Err(SubmitError::EmptyKey);
        }
        let live = self.flights.iter().find(|f| f.key == key).map(|f| f.id);
        let cached = self
            .cache
            .iter()
            .find(|c| c.key == key)
            .map(|c| c.log.clone());
        // Core's choice (cluster mode): a claiming flight takes a queue place.
        let waiting = self.count_phase(|p| matches!(p, Phase2::Queued | Phase2::Claiming));
        if live.is_none() && cached.is_none() && waiting >= self.config.queue_capacity {
            return Err(SubmitError::QueueFull {
                capacity: self.config.queue_capacity,
            });
        }
        let now = self.advance(now);
        let id = RequestId::from_raw(self.next_request);
        self.next_request += 1;
        self.totals.submitted += 1;
        let route = if let Some(flight) = live {
            self.totals.coalesced += 1;
            self.add_member(now, id, flight);
            Route::Joined(flight)
        } else if let Some(log) = cached {
            // Core's choice: a cached entry is served until its expiry deadline has
            // been *handled*, like every deadline (they fire in `handle_timeout`).
            self.totals.cache_hits += 1;
            self.totals.completed += 1;
            self.records.push(Record {
                id,
                life: Life::Ended {
                    outcome: Outcome::Completed,
                    rest: Some(log),
                },
                reader: None,
                deadline: Some(now + self.config.finished_retention),
            });
            Route::Cached
        } else {
            let flight = FlightId::from_raw(self.next_flight);
            self.next_flight += 1;
            self.totals.flights += 1;
            let queue_by = now + self.config.queue_timeout;
            self.flights.push(Flight {
                id: flight,
                key,
                phase: Phase2::Queued,
                log: Vec::new(),
                deadline: queue_by,
                owner: false,
                queue_by,
            });
            if self.config.cluster {
                // Contract rule 25: claim the key before queueing.
                self.start_claim(flight);
            }
            self.add_member(now, id, flight);
            Route::NewFlight(flight)
        };
        self.settle(now);
        Ok(Submission { request: id, route })
    }

    fn add_member(&mut self, now: Time, id: RequestId, flight: FlightId) {
        self.records.push(Record {
            id,
            life: Life::Live(flight),
            reader: None,
            deadline: Some(now + self.config.attach_timeout),
        });
    }

    /// A client attaches; it reads from the first chunk ([rule 7](flightdeck_core::contract#rule-7)), or the outcome
    /// if the request already ended ([rule 13](flightdeck_core::contract#rule-13)). The attach deadline is dropped.
    ///
    /// # Errors
    /// Not found, or already attached.
    pub fn attach(&mut self, now: Time, request: RequestId) -> Result<(), RequestError> {
        let record = self.record(request).ok_or(RequestError::NotFound)?;
        if record.reader.is_some() {
            return Err(RequestError::AlreadyAttached);
        }
        let now = self.advance(now);
        if let Some(record) = self.record_mut(request) {
            record.deadline = None;
            record.reader = Some(Reader {
                cursor: 0,
                parked: false,
                finished: false,
            });
        }
        self.settle(now);
        Ok(())
    }

    /// The reader takes everything available: all unread chunks, and once the
    /// request has ended the outcome, exactly once (rules [7](flightdeck_core::contract#rule-7), [14](flightdeck_core::contract#rule-14), [19](flightdeck_core::contract#rule-19)).
    #[must_use = "the items read are the point"]
    pub fn read(&mut self, request: RequestId) -> (Result<Readiness, RequestError>, Vec<Item>) {
        let Some(pos) = self.records.iter().position(|r| r.id == request) else {
            return (Err(RequestError::NotFound), Vec::new());
        };
        let life = self.records[pos].life.clone();
        let live_log = match &life {
            Life::Live(fid) => self
                .flights
                .iter()
                .find(|f| f.id == *fid)
                .map(|f| f.log.clone()),
            Life::Ended { .. } => None,
        };
        let Some(reader) = self.records[pos].reader.as_mut() else {
            return (Err(RequestError::NotAttached), Vec::new());
        };
        let mut items = Vec::new();
        let readiness = match life {
            Life::Live(_) => {
                let log = live_log.unwrap_or_default();
                // Read-and-park: a read of a live request leaves its reader
                // waiting for a wake, whether it returned chunks or not.
                reader.parked = true;
                if reader.cursor < log.len() {
                    items.extend(log[reader.cursor..].iter().cloned().map(Item::Chunk));
                    reader.cursor = log.len();
                    Readiness::Ready
                } else {
                    Readiness::Pending
                }
            }
            Life::Ended { outcome, rest } => {
                if reader.finished {
                    Readiness::Closed
                } else {
                    if let Some(rest) = rest {
                        let from = reader.cursor.min(rest.len());
                        items.extend(rest[from..].iter().cloned().map(Item::Chunk));
                        reader.cursor = rest.len();
                    }
                    let retention = if outcome == Outcome::Cancelled {
                        self.config.cancelled_retention
                    } else {
                        self.config.finished_retention
                    };
                    items.push(Item::End(outcome));
                    reader.finished = true;
                    reader.parked = false;
                    // Contract rule 21: having read its end, the record is only
                    // retained, from the machine's latest time (a read has none).
                    self.records[pos].deadline = Some(self.now + retention);
                    Readiness::Ready
                }
            }
        };
        (Ok(readiness), items)
    }

    /// Rules [9](flightdeck_core::contract#rule-9)-[12](flightdeck_core::contract#rule-12): idempotent cancel; the last member's departure ends its flight.
    ///
    /// # Errors
    /// Not found, or already finished with another outcome.
    pub fn cancel(&mut self, now: Time, request: RequestId) -> Result<(), RequestError> {
        match &self.record(request).ok_or(RequestError::NotFound)?.life {
            Life::Ended {
                outcome: Outcome::Cancelled,
                ..
            } => return Ok(()),
            Life::Ended { outcome, .. } => {
                return Err(RequestError::AlreadyFinished(outcome.clone()))
            }
            Life::Live(_) => {}
        }
        let now = self.advance(now);
        self.leave(now, request, Outcome::Cancelled);
        self.settle(now);
        Ok(())
    }

    /// [Rule 15](flightdeck_core::contract#rule-15): the client dropped its stream. A live request is cancelled, and the
    /// record goes at once either way.
    ///
    /// # Errors
    /// Not found, or not attached.
    pub fn detach(&mut self, now: Time, request: RequestId) -> Result<(), RequestError> {
        if self
            .record(request)
            .ok_or(RequestError::NotFound)?
            .reader
            .is_none()
        {
            return Err(RequestError::NotAttached);
        }
        let now = self.advance(now);
        self.leave(now, request, Outcome::Cancelled);
        self.records.retain(|r| r.id != request);
        self.settle(now);
        Ok(())
    }

    // ----- the user's work ---------------------------------------------------

    /// A preparation finished (rules [5](flightdeck_core::contract#rule-5), [6](flightdeck_core::contract#rule-6), [20](flightdeck_core::contract#rule-20)).
    ///
    /// # Errors
    /// [`StaleFlight`] unless the flight is live and preparing ([rule 16](flightdeck_core::contract#rule-16)).
    pub fn handle_prepared(
        &mut self,
        now: Time,
        flight: FlightId,
        result: Result<Prepared, Failure>,
    ) -> Result<(), StaleFlight> {
        if !self.in_phase(flight, |p| *p == Phase2::Preparing) {
            return Err(StaleFlight);
        }
        let now = self.advance(now);
        match result {
            Ok(prepared) => {
                // Core's choice: the wait for a stream slot is ordered by when
                // preparation finished, also for a flight whose first client
                // attaches only later (it does not go to the back).
                let order = self.next_prepared;
                self.next_prepared += 1;
                let until = now + self.config.stream_slot_timeout;
                if let Some(f) = self.flight_mut(flight) {
                    f.phase = Phase2::Prepared {
                        cacheable: prepared.cacheable,
                        order,
                    };
                    f.deadline = until;
                }
            }
            Err(failure) => self.end_flight(now, flight, &Outcome::Failed(failure), false),
        }
        self.settle(now);
        Ok(())
    }

    /// The upstream produced a chunk ([rule 7](flightdeck_core::contract#rule-7)); past `max_response_bytes` the flight
    /// fails instead ([rule 22](flightdeck_core::contract#rule-22)).
    ///
    /// # Errors
    /// [`StaleFlight`] unless the flight is live and streaming ([rule 16](flightdeck_core::contract#rule-16)).
    pub fn handle_chunk(
        &mut self,
        now: Time,
        flight: FlightId,
        data: Bytes,
    ) -> Result<(), StaleFlight> {
        // Contract rule 27: a follower's chunks are the owner's log.
        let accepts = |p: &Phase2| matches!(p, Phase2::Streaming { .. } | Phase2::Following { .. });
        if !self.in_phase(flight, accepts) {
            return Err(StaleFlight);
        }
        let now = self.advance(now);
        let limit = self.config.max_response_bytes;
        let idle = self.config.idle_timeout;
        let Some(f) = self.flight_mut(flight) else {
            return Err(StaleFlight);
        };
        let so_far: u64 = f.log.iter().map(|c| c.len() as u64).sum();
        if so_far.saturating_add(data.len() as u64) > limit {
            let outcome = Outcome::Failed(Failure::ResponseTooLarge { limit });
            self.end_flight(now, flight, &outcome, true);
        } else {
            f.log.push(data.clone());
            if let Phase2::Streaming { ends_by, .. } | Phase2::Following { ends_by } = f.phase {
                f.deadline = ends_by.min(now + idle);
            }
            if f.owner {
                // Contract rule 26: what the owner accepts is published, in order.
                self.actions.push(Action::Publish {
                    flight,
                    chunks: vec![data],
                });
            }
        }
        self.settle(now);
        Ok(())
    }

    /// The upstream ended: completed (cached if cacheable, [rule 8](flightdeck_core::contract#rule-8)) or failed
    /// ([rule 20](flightdeck_core::contract#rule-20)).
    ///
    /// # Errors
    /// [`StaleFlight`] unless the flight is live and streaming ([rule 16](flightdeck_core::contract#rule-16)).
    pub fn handle_upstream_end(
        &mut self,
        now: Time,
        flight: FlightId,
        result: Result<(), Failure>,
    ) -> Result<(), StaleFlight> {
        if !self.in_phase(flight, |p| matches!(p, Phase2::Streaming { .. })) {
            return Err(StaleFlight);
        }
        let now = self.advance(now);
        let outcome = match result {
            Ok(()) => Outcome::Completed,
            Err(failure) => Outcome::Failed(failure),
        };
        self.end_flight(now, flight, &outcome, false);
        self.settle(now);
        Ok(())
    }

    // ----- time ----------------------------------------------------------------

    /// The earliest deadline of anything held, found by scanning everything.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Time> {
        self.earliest().map(|(at, _)| at)
    }

    /// Every deadline due at `now` expires ([rule 17](flightdeck_core::contract#rule-17)), earliest first.
    pub fn handle_timeout(&mut self, now: Time) {
        let now = self.advance(now);
        // Core's choice: deadlines due at the same instant expire flights first,
        // then requests, then cache entries, each by id. The SPEC fixes no order,
        // but it is observable (a queued flight and its only member's attach
        // deadline due together: the member ends TimedOut(Queue), not Attach).
        while let Some((at, due)) = self.earliest() {
            if at > now {
                break;
            }
            match due {
                Due::Flight(flight) => self.flight_expired(now, flight, at),
                Due::Request(request) => {
                    let ended = matches!(
                        self.record(request).map(|r| &r.life),
                        Some(Life::Ended { .. })
                    );
                    if ended {
                        // Retention passed: the record goes (contract rule 13).
                        self.records.retain(|r| r.id != request);
                    } else {
                        if let Some(r) = self.record_mut(request) {
                            r.deadline = None;
                        }
                        self.leave(now, request, Outcome::TimedOut(Phase::Attach));
                    }
                }
                Due::Cache(order) => self.cache.retain(|c| c.order != order),
            }
        }
        self.settle(now);
    }

    fn flight_expired(&mut self, now: Time, flight: FlightId, due: Time) {
        let Some(f) = self.flights.iter().find(|f| f.id == flight) else {
            return;
        };
        let (phase, abort) = match f.phase {
            // Core's choice (cluster mode): claiming is queue time.
            Phase2::Queued | Phase2::Claiming => (Phase::Queue, false),
            Phase2::Preparing => (Phase::Preparation, true),
            Phase2::Prepared { .. } => (Phase::StreamSlot, false),
            // The streaming deadline is the sooner of the total and the idle one;
            // the phase is named from the deadline that fell due (a tie is the
            // total one), not from when the timer was handled.
            Phase2::Streaming { ends_by, .. } | Phase2::Following { ends_by } if due >= ends_by => {
                (Phase::Stream, true)
            }
            Phase2::Streaming { .. } | Phase2::Following { .. } => (Phase::Idle, true),
        };
        self.end_flight(now, flight, &Outcome::TimedOut(phase), abort);
    }

    fn earliest(&self) -> Option<(Time, Due)> {
        let flights = self.flights.iter().map(|f| (f.deadline, Due::Flight(f.id)));
        let records = self
            .records
            .iter()
            .filter_map(|r| r.deadline.map(|at| (at, Due::Request(r.id))));
        let cache = self.cache.iter().map(|c| (c.expires, Due::Cache(c.order)));
        flights.chain(records).chain(cache).min()
    }

    /// Stops admission and fails every live request with [`Failure::Shutdown`],
    /// aborting all running work; ended records stay for their readers.
    pub fn shutdown(&mut self, now: Time) {
        let now = self.advance(now);
        self.shutting_down = true;
        let ids: Vec<FlightId> = self.flights.iter().map(|f| f.id).collect();
        for flight in ids {
            self.end_flight(now, flight, &Outcome::Failed(Failure::Shutdown), true);
        }
        self.settle(now);
    }

    // ----- observation -----------------------------------------------------------

    /// The request's state, queue position ([rule 3](flightdeck_core::contract#rule-3)) and whether it is attached.
    #[must_use]
    pub fn status(&self, request: RequestId) -> Option<RequestStatus> {
        let record = self.record(request)?;
        let attached = record.reader.is_some();
        Some(match &record.life {
            Life::Live(fid) => {
                let flight = self.flights.iter().find(|f| f.id == *fid)?;
                let (state, queue_position) = match flight.phase {
                    Phase2::Queued => {
                        let ahead = self
                            .flights
                            .iter()
                            .filter(|f| f.phase == Phase2::Queued && f.id < *fid)
                            .count();
                        (RequestState::Queued, Some(ahead))
                    }
                    Phase2::Preparing => (RequestState::Preparing, None),
                    Phase2::Prepared { .. } => (RequestState::WaitingForStream, None),
                    Phase2::Streaming { .. } => (RequestState::Streaming, None),
                    Phase2::Claiming => (RequestState::Claiming, None),
                    Phase2::Following { .. } => (RequestState::Following, None),
                };
                RequestStatus {
                    state,
                    queue_position,
                    flight: Some(*fid),
                    attached,
                }
            }
            Life::Ended { outcome, .. } => RequestStatus {
                state: match outcome {
                    Outcome::Cancelled => RequestState::Cancelled,
                    other => RequestState::Done(other.clone()),
                },
                queue_position: None,
                flight: None,
                attached,
            },
        })
    }

    /// [Rule 24](flightdeck_core::contract#rule-24), every gauge recomputed by scanning.
    #[must_use]
    pub fn stats(&self) -> Stats {
        let preparing = self.count_phase(|p| *p == Phase2::Preparing);
        let streaming = self.count_phase(|p| matches!(p, Phase2::Streaming { .. }));
        let mut s = Stats::default();
        s.requests = self.records.len();
        s.live_requests = self
            .records
            .iter()
            .filter(|r| matches!(r.life, Life::Live(_)))
            .count();
        s.queued = self.count_phase(|p| *p == Phase2::Queued);
        s.preparing = preparing;
        s.waiting_for_stream = self.count_phase(|p| matches!(p, Phase2::Prepared { .. }));
        s.streaming = streaming;
        s.claiming = self.count_phase(|p| *p == Phase2::Claiming);
        s.following = self.count_phase(|p| matches!(p, Phase2::Following { .. }));
        s.preparation_slots_in_use = preparing;
        s.stream_slots_in_use = streaming;
        s.readers = self.records.iter().filter(|r| r.reader.is_some()).count();
        s.cache_entries = self.cache.len();
        s.deadlines = self.flights.len()
            + self.records.iter().filter(|r| r.deadline.is_some()).count()
            + self.cache.len();
        s.totals = self.totals;
        s
    }

    // ----- internals -------------------------------------------------------------

    fn advance(&mut self, now: Time) -> Time {
        self.now = self.now.max(now);
        self.now
    }

    fn record(&self, id: RequestId) -> Option<&Record> {
        self.records.iter().find(|r| r.id == id)
    }

    fn record_mut(&mut self, id: RequestId) -> Option<&mut Record> {
        self.records.iter_mut().find(|r| r.id == id)
    }

    fn flight_mut(&mut self, id: FlightId) -> Option<&mut Flight> {
        self.flights.iter_mut().find(|f| f.id == id)
    }

    fn in_phase(&self, id: FlightId, phase: impl Fn(&Phase2) -> bool) -> bool {
        self.flights.iter().any(|f| f.id == id && phase(&f.phase))
    }

    fn count_phase(&self, phase: impl Fn(&Phase2) -> bool) -> usize {
        self.flights.iter().filter(|f| phase(&f.phase)).count()
    }

    fn has_reader_member(&self, flight: FlightId) -> bool {
        self.records
            .iter()
            .any(|r| r.life == Life::Live(flight) && r.reader.is_some())
    }

    /// A live member leaves with `outcome`; if nobody is left in its flight, the
    /// flight is aborted now (rules [10](flightdeck_core::contract#rule-10), [12](flightdeck_core::contract#rule-12)).
    fn leave(&mut self, now: Time, request: RequestId, outcome: Outcome) {
        let Some(Life::Live(flight)) = self.record(request).map(|r| r.life.clone()) else {
            return;
        };
        // Contract rule 14 / 13: a cancelled (or attach-timed-out) member keeps no chunks,
        // only its outcome.
        self.end_request(now, request, outcome, None);
        let anyone_left = self.records.iter().any(|r| r.life == Life::Live(flight));
        if !anyone_left {
            self.end_flight(now, flight, &Outcome::Cancelled, true);
        }
    }

    /// Ends a flight and every member still in it with `outcome`.
    fn end_flight(&mut self, now: Time, flight: FlightId, outcome: &Outcome, abort: bool) {
        let Some(pos) = self.flights.iter().position(|f| f.id == flight) else {
            return;
        };
        let f = self.flights.remove(pos);
        let mut cacheable = false;
        match f.phase {
            Phase2::Preparing if abort => self.actions.push(Action::Abort {
                flight,
                work: Work::Preparation,
            }),
            Phase2::Streaming { cacheable: c, .. } => {
                cacheable = c;
                if abort {
                    self.actions.push(Action::Abort {
                        flight,
                        work: Work::Stream,
                    });
                }
            }
            // Contract rule 27: a follower stops following; its result is not
            // cached here (core's choice: the cluster's cache is the shared one).
            Phase2::Following { .. } if abort => self.actions.push(Action::Abort {
                flight,
                work: Work::Stream,
            }),
            _ => {}
        }
        if *outcome == Outcome::Completed && cacheable {
            self.cache_insert(now, f.key.clone(), f.log.clone());
        }
        let members: Vec<RequestId> = self
            .records
            .iter()
            .filter(|r| r.life == Life::Live(flight))
            .map(|r| r.id)
            .collect();
        for member in members {
            // Contract rule 20: members keep the chunks already produced, then the outcome.
            self.end_request(now, member, outcome.clone(), Some(f.log.clone()));
        }
        if f.owner {
            // Contract rule 26: the owner's end, right before its FlightEnded.
            self.actions.push(Action::Release {
                flight,
                outcome: outcome.clone(),
                cacheable: *outcome == Outcome::Completed && cacheable,
            });
        }
        self.actions.push(Action::FlightEnded { flight });
    }

    fn cache_insert(&mut self, now: Time, key: Key, log: Vec<Bytes>) {
        if self.config.cache_capacity == 0 {
            return;
        }
        self.cache.retain(|c| c.key != key);
        // Entries are kept in insertion order: the front is the oldest.
        while self.cache.len() >= self.config.cache_capacity {
            self.cache.remove(0);
        }
        let order = self.next_cached;
        self.next_cached += 1;
        self.cache.push(Cached {
            key,
            log,
            order,
            expires: now + self.config.cache_ttl,
        });
    }

    fn end_request(
        &mut self,
        now: Time,
        request: RequestId,
        outcome: Outcome,
        rest: Option<Vec<Bytes>>,
    ) {
        let retention: Duration = if outcome == Outcome::Cancelled {
            self.config.cancelled_retention
        } else {
            self.config.finished_retention
        };
        let Some(record) = self.records.iter_mut().find(|r| r.id == request) else {
            return;
        };
        if !matches!(record.life, Life::Live(_)) {
            return;
        }
        match outcome {
            Outcome::Completed => self.totals.completed += 1,
            Outcome::Cancelled => self.totals.cancelled += 1,
            Outcome::Failed(_) => self.totals.failed += 1,
            Outcome::TimedOut(_) => self.totals.timed_out += 1,
        }
        record.life = Life::Ended { outcome, rest };
        // An unattached record waits `retention` for a client (contract rule 13); an
        // attached one stays until its client drops it.
        record.deadline = record.reader.is_none().then(|| now + retention);
    }

    /// Runs after every input: hand free slots to waiters (rules [4](flightdeck_core::contract#rule-4)-[6](flightdeck_core::contract#rule-6), [8](flightdeck_core::contract#rule-8), [12](flightdeck_core::contract#rule-12)),
    /// then wake every parked reader that has something to read now.
    fn settle(&mut self, now: Time) {
        loop {
            let busy = self.count_phase(|p| *p == Phase2::Preparing);
            if busy >= self.config.max_concurrent_requests {
                break;
            }
            // Flight ids grow with creation, and the queue is FIFO by creation.
            let Some(f) = self.flights.iter_mut().find(|f| f.phase == Phase2::Queued) else {
                break;
            };
            f.phase = Phase2::Preparing;
            f.deadline = now + self.config.preparation_timeout;
            self.totals.preparations_started += 1;
            self.actions.push(Action::StartPreparation {
                flight: f.id,
                key: f.key.clone(),
            });
        }
        loop {
            let busy = self.count_phase(|p| matches!(p, Phase2::Streaming { .. }));
            if busy >= self.config.max_concurrent_streams {
                break;
            }
            // Contract rule 6: only flights with an attached client take a slot, FIFO.
            let next = self
                .flights
                .iter()
                .filter_map(|f| match f.phase {
                    Phase2::Prepared { order, .. } if self.has_reader_member(f.id) => {
                        Some((order, f.id))
                    }
                    _ => None,
                })
                .min();
            let Some((_, id)) = next else { break };
            let stream_timeout = self.config.stream_timeout;
            let idle = self.config.idle_timeout;
            let Some(f) = self.flight_mut(id) else { break };
            let Phase2::Prepared { cacheable, .. } = f.phase else {
                break;
            };
            let ends_by = now + stream_timeout;
            f.phase = Phase2::Streaming { cacheable, ends_by };
            f.deadline = ends_by.min(now + idle);
            self.totals.streams_started += 1;
            self.actions.push(Action::StartStream { flight: id });
        }
        let mut woken = Vec::new();
        for r in &mut self.records {
            let readable = match &r.life {
                Life::Live(fid) => {
                    self.flights.iter().find(|f| f.id == *fid).is_some_and(|f| {
                        r.reader.as_ref().is_some_and(|rd| rd.cursor < f.log.len())
                    })
                }
                Life::Ended { .. } => r.reader.as_ref().is_some_and(|rd| !rd.finished),
            };
            if let Some(reader) = r.reader.as_mut() {
                if reader.parked && readable {
                    reader.parked = false;
                    woken.push(r.id);
                }
            }
        }
        self.actions
            .extend(woken.into_iter().map(|request| Action::Wake { request }));
    }
}

/// The actions of one step, reduced to what the contract fixes about their order.
///
/// The SPEC fixes: which actions are emitted; for each flight, the order of its
/// own actions (start, abort, and `FlightEnded` last); the FIFO order in which
/// flights get preparation slots and stream slots (rules [3](flightdeck_core::contract#rule-3), [6](flightdeck_core::contract#rule-6)). It does not fix
/// how one flight's actions interleave with another's, nor the order of wakes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepActions {
    /// Each flight's actions in emitted order, flights in id order.
    pub per_flight: Vec<(FlightId, Vec<Action>)>,
    /// Flights given a preparation slot, in order.
    pub preparations: Vec<FlightId>,
    /// Flights given a stream slot, in order.
    pub streams: Vec<FlightId>,
    /// Requests woken, sorted.
    pub wakes: Vec<RequestId>,
    /// Action variants this function does not know, in order.
    pub other: Vec<Action>,
}

/// Reduces one step's actions to a [`StepActions`], for comparing core and model.
#[must_use]
pub fn normalise_actions(actions: &[Action]) -> StepActions {
    let mut out = StepActions {
        per_flight: Vec::new(),
        preparations: Vec::new(),
        streams: Vec::new(),
        wakes: Vec::new(),
        other: Vec::new(),
    };
    for action in actions {
        let flight = match action {
            Action::StartPreparation { flight, .. } => {
                out.preparations.push(*flight);
                *flight
            }
            Action::StartStream { flight } => {
                out.streams.push(*flight);
                *flight
            }
            Action::Abort { flight, .. }
            | Action::FlightEnded { flight }
            | Action::Claim { flight, .. }
            | Action::Publish { flight, .. }
            | Action::Release { flight, .. } => *flight,
            Action::Wake { request } => {
                out.wakes.push(*request);
                continue;
            }
            _ => {
                out.other.push(action.clone());
                continue;
            }
        };
        match out.per_flight.iter_mut().find(|(f, _)| *f == flight) {
            Some((_, list)) => list.push(action.clone()),
            None => out.per_flight.push((flight, vec![action.clone()])),
        }
    }
    out.per_flight.sort_by_key(|(f, _)| *f);
    out.wakes.sort();
    out
}
