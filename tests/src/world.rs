//! A simulated world in virtual time: clients, a pretend upstream and a clock
//! driving the core exactly as a real driver would, checking every invariant
//! after every step.
//!
//! Every input goes through the harness's one test driver
//! ([`Driver::try_handle`], hence [`Machine::handle`](flightdeck_core::Machine::handle))
//! so that a run is recorded as a [`crate::trace::Trace`] for free, and every
//! check of the driver runs after every step (the machine's invariants; no
//! action after a flight's end; starts in the right phase and within the
//! limits; aborts of running work only). The world adds what its clients know:
//!
//! - a `Wake` names an attached client;
//! - no work runs for a flight none of whose members is still live (no zombie
//!   slot, [rule 12](flightdeck_core::contract#rule-12));
//! - a late completion for an ended flight is refused and changes nothing ([rule 16](flightdeck_core::contract#rule-16));
//! - a cancel followed by an attach within `cancelled_retention` never answers
//!   `NotFound` ([rule 13](flightdeck_core::contract#rule-13)).
//!
//! At quiescence ([`World::finish`]) every reader that a client still holds got
//! its flight's chunks exactly once, in order, with no gap, then exactly one
//! terminal item (rules [7](flightdeck_core::contract#rule-7), [14](flightdeck_core::contract#rule-14), [19](flightdeck_core::contract#rule-19)), and the machine is empty ([rule 21](flightdeck_core::contract#rule-21)).

use std::collections::BTreeMap;

use bytes::Bytes;
use flightdeck_core::{
    Action, Config, Failure, FlightId, Input, Item, Key, Outcome, Prepared, Readiness, Reply,
    RequestError, RequestId, RequestState, Route, StaleFlight, Time,
};

use crate::driver::Driver;
pub use crate::driver::Violation;

/// One step a world can take. Indices pick among the current candidates modulo
/// their count, so every op is meaningful in every state.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// A new client submits a request for key number `key`.
    Submit {
        /// Index of the key (keys are `k0`, `k1`, ...).
        key: u8,
    },
    /// A client attaches to its request.
    Attach(u8),
    /// A client reads (only clients not parked on a `Pending` read).
    Read(u8),
    /// A client cancels its request.
    Cancel(u8),
    /// A client drops its stream (detach).
    Detach(u8),
    /// A running preparation finishes successfully.
    PrepareOk {
        /// Which running preparation.
        which: u8,
        /// Whether the result may be cached.
        cacheable: bool,
    },
    /// A running preparation fails.
    PrepareFail(u8),
    /// A running upstream produces its next chunk.
    Chunk(u8),
    /// A running upstream finishes successfully.
    UpstreamOk(u8),
    /// A running upstream fails.
    UpstreamFail(u8),
    /// A late completion (preparation result and chunk) for an ended flight.
    Late(u8),
    /// Time jumps to the machine's next deadline.
    NextDeadline,
    /// Time moves forward by this many milliseconds.
    Sleep(u16),
}

/// What the world knows about one client (one submitted request).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Client {
    /// The request id the machine returned.
    pub request: RequestId,
    /// The key submitted.
    pub key: u8,
    /// How the submission was routed.
    pub route: Route,
    /// Whether a client attached successfully.
    pub attached: bool,
    /// Whether the client dropped its stream.
    pub dropped: bool,
    /// Whether the last read returned `Pending` and no `Wake` came since.
    pub parked: bool,
    /// Whether a read returned `Closed` or the terminal item.
    pub closed: bool,
    /// Time of the first successful cancel, if any.
    pub cancelled_at: Option<Time>,
    /// Whether the client was attached when it cancelled.
    pub cancelled_attached: bool,
    /// Every item read, in order.
    pub items: Vec<Item>,
}

/// What the world expects of one flight's output (which work runs is the
/// driver's to know: [`Driver::work`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlightTrack {
    /// The key index of the flight.
    pub key: u8,
    /// Chunks the upstream produced within the response limit, in order: what
    /// every reader of the flight must read.
    pub log: Vec<Bytes>,
    /// Whether the upstream completed successfully (the log is complete).
    pub completed: bool,
}

/// The simulated world: the driven machine plus everything real clients and a
/// real upstream would know.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct World {
    /// The driver: the machine under test, virtual time, the work that runs.
    pub driver: Driver,
    /// Every client, in submission order.
    pub clients: Vec<Client>,
    /// Every flight the world heard of.
    pub flights: BTreeMap<FlightId, FlightTrack>,
}

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(Violation(format!($($fmt)+)));
        }
    };
}

/// The key for key index `k`.
#[must_use]
pub fn key(k: u8) -> Key {
    Key::from(format!("k{k}"))
}

fn terminal(state: &RequestState) -> bool {
    matches!(state, RequestState::Cancelled | RequestState::Done(_))
}

impl World {
    /// A world around a fresh machine with this configuration.
    ///
    /// # Errors
    /// The configuration is invalid.
    pub fn new(config: Config) -> Result<Self, flightdeck_core::ConfigError> {
        Ok(World {
            driver: Driver::try_new(config)?,
            clients: Vec::new(),
            flights: BTreeMap::new(),
        })
    }

    /// Records every input and the actions it produced from now on.
    #[must_use]
    pub fn recording(mut self) -> Self {
        self.driver = self.driver.recording();
        self
    }

    /// The machine under test.
    #[must_use]
    pub fn machine(&self) -> &flightdeck_core::Machine {
        &self.driver.machine
    }

    /// Virtual time.
    #[must_use]
    pub fn now(&self) -> Time {
        self.driver.now
    }

    /// Flights with a running preparation, in id order.
    #[must_use]
    pub fn preparing(&self) -> Vec<FlightId> {
        self.driver.running_preparations()
    }

    /// Flights with a running upstream, in id order.
    #[must_use]
    pub fn streaming(&self) -> Vec<FlightId> {
        self.driver.running_streams()
    }

    /// Flights that ended (aborted or `FlightEnded`), in id order.
    #[must_use]
    pub fn ended(&self) -> Vec<FlightId> {
        self.driver.ended_flights()
    }

    /// Whether some user work (preparation or upstream) is running.
    #[must_use]
    pub fn work_pending(&self) -> bool {
        self.driver.work_pending()
    }

    fn input(&mut self, input: Input) -> Result<Reply, Violation> {
        let reply = self.driver.try_handle(input)?;
        for action in self.driver.take() {
            self.on_action(&action)?;
        }
        Ok(reply)
    }

    /// What the world learns from an action (the driver checked it already).
    fn on_action(&mut self, action: &Action) -> Result<(), Violation> {
        match action {
            Action::StartPreparation { flight, key: k } => {
                let idx = std::str::from_utf8(&k.as_bytes()[1..])
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(u8::MAX);
                self.flights.entry(*flight).or_default().key = idx;
            }
            Action::StartStream { flight }
            | Action::Abort { flight, .. }
            | Action::FlightEnded { flight } => {
                self.flights.entry(*flight).or_default();
            }
            Action::Wake { request } => {
                if let Some(c) = self.clients.iter_mut().find(|c| c.request == *request) {
                    ensure!(c.attached && !c.dropped, "Wake for unattached {request:?}");
                    c.parked = false;
                } else {
                    return Err(Violation(format!("Wake for unknown {request:?}")));
                }
            }
            other => return Err(Violation(format!("unknown action {other:?}"))),
        }
        Ok(())
    }

    /// Checks the machine's and the harness's invariants in the current state.
    ///
    /// # Errors
    /// The first violation found.
    pub fn check(&self) -> Result<(), Violation> {
        self.driver
            .machine
            .check_invariants()
            .map_err(|v| Violation(v.to_string()))?;
        for id in self.flights.keys() {
            let f = self.driver.work(*id).unwrap_or_default();
            if !(f.preparing || f.streaming) {
                continue;
            }
            let someone = self.clients.iter().any(|c| {
                matches!(c.route, Route::NewFlight(x) | Route::Joined(x) if x == *id)
                    && self
                        .driver
                        .machine
                        .status(c.request)
                        .is_some_and(|s| !terminal(&s.state))
            });
            ensure!(
                someone,
                "zombie: {id:?} runs work but none of its members is live: {f:?}"
            );
        }
        Ok(())
    }

    fn client(&self, i: u8) -> Option<usize> {
        let n = self.clients.len();
        (n > 0).then(|| usize::from(i) % n)
    }

    fn pick(list: &[FlightId], i: u8) -> Option<FlightId> {
        (!list.is_empty()).then(|| list[usize::from(i) % list.len()])
    }

    fn chunk_data(flight: FlightId, seq: usize) -> Bytes {
        Bytes::from(format!("f{}c{seq};", flight.raw()))
    }

    /// Applies one op, checking everything afterwards. Ops whose target does not
    /// exist do nothing.
    ///
    /// # Errors
    /// The first violation found.
    pub fn apply(&mut self, op: &Op) -> Result<(), Violation> {
        self.apply_op(op)?;
        self.check()
    }

    fn apply_op(&mut self, op: &Op) -> Result<(), Violation> {
        match *op {
            Op::Submit { key: k } => {
                if let Reply::Submit(Ok(sub)) = self.input(Input::Submit { key: key(k) })? {
                    self.clients.push(Client {
                        request: sub.request,
                        key: k,
                        route: sub.route,
                        attached: false,
                        dropped: false,
                        parked: false,
                        closed: false,
                        cancelled_at: None,
                        cancelled_attached: false,
                        items: Vec::new(),
                    });
                }
            }
            Op::Attach(i) => {
                let Some(i) = self.client(i) else {
                    return Ok(());
                };
                let c = &self.clients[i];
                if c.attached || c.dropped {
                    return Ok(());
                }
                let request = c.request;
                let cancelled_at = c.cancelled_at;
                let reply = self.input(Input::Attach { request })?;
                if let Some(t) = cancelled_at {
                    let retention = self.driver.machine.config().cancelled_retention;
                    if self.driver.now < t + retention {
                        ensure!(
                            reply == Reply::Request(Ok(())),
                            "attach after cancel within retention answered {reply:?} \
                             (contract rule 13: must read Cancelled, never NotFound)"
                        );
                    }
                }
                if reply == Reply::Request(Ok(())) {
                    self.clients[i].attached = true;
                }
            }
            Op::Read(i) => {
                let Some(i) = self.client(i) else {
                    return Ok(());
                };
                self.read(i)?;
            }
            Op::Cancel(i) => {
                let Some(i) = self.client(i) else {
                    return Ok(());
                };
                if self.clients[i].dropped {
                    return Ok(());
                }
                let request = self.clients[i].request;
                let reply = self.input(Input::Cancel { request })?;
                let c = &mut self.clients[i];
                if reply == Reply::Request(Ok(())) && c.cancelled_at.is_none() {
                    c.cancelled_at = Some(self.driver.now);
                    c.cancelled_attached = c.attached;
                }
            }
            Op::Detach(i) => {
                if let Some(i) = self.client(i) {
                    self.detach(i)?;
                }
            }
            Op::PrepareOk { which, cacheable } => {
                if let Some(flight) = Self::pick(&self.preparing(), which) {
                    self.flight_mut(flight);
                    let reply = self.input(Input::Prepared {
                        flight,
                        result: Ok(Prepared { cacheable }),
                    })?;
                    ensure!(
                        reply == Reply::Flight(Ok(())),
                        "prepared for running {flight:?} refused: {reply:?}"
                    );
                }
            }
            Op::PrepareFail(which) => {
                if let Some(flight) = Self::pick(&self.preparing(), which) {
                    self.flight_mut(flight);
                    let reply = self.input(Input::Prepared {
                        flight,
                        result: Err(Failure::Preparation("boom".into())),
                    })?;
                    ensure!(
                        reply == Reply::Flight(Ok(())),
                        "failed preparation for running {flight:?} refused: {reply:?}"
                    );
                }
            }
            Op::Chunk(which) => {
                if let Some(flight) = Self::pick(&self.streaming(), which) {
                    let data = Self::chunk_data(flight, self.flights[&flight].log.len());
                    let limit = self.driver.machine.config().max_response_bytes;
                    let total: u64 = self.flights[&flight]
                        .log
                        .iter()
                        .map(|b| b.len() as u64)
                        .sum::<u64>()
                        + data.len() as u64;
                    // Over the limit the machine fails the flight and aborts the stream.
                    if total <= limit {
                        self.flight_mut(flight).log.push(data.clone());
                    }
                    let reply = self.input(Input::Chunk { flight, data })?;
                    ensure!(
                        reply == Reply::Flight(Ok(())),
                        "chunk for running {flight:?} refused: {reply:?}"
                    );
                }
            }
            Op::UpstreamOk(which) | Op::UpstreamFail(which) => {
                if let Some(flight) = Self::pick(&self.streaming(), which) {
                    let ok = matches!(op, Op::UpstreamOk(_));
                    self.flight_mut(flight).completed = ok;
                    let result = if ok {
                        Ok(())
                    } else {
                        Err(Failure::Upstream("upstream broke".into()))
                    };
                    let reply = self.input(Input::UpstreamEnded { flight, result })?;
                    ensure!(
                        reply == Reply::Flight(Ok(())),
                        "upstream end for running {flight:?} refused: {reply:?}"
                    );
                }
            }
            Op::Late(which) => {
                if let Some(flight) = Self::pick(&self.ended(), which) {
                    let before = self.driver.machine.clone();
                    for input in [
                        Input::Prepared {
                            flight,
                            result: Ok(Prepared::CACHEABLE),
                        },
                        Input::Chunk {
                            flight,
                            data: Bytes::from_static(b"late"),
                        },
                        Input::UpstreamEnded {
                            flight,
                            result: Ok(()),
                        },
                    ] {
                        let reply = self.input(input.clone())?;
                        ensure!(
                            reply == Reply::Flight(Err(StaleFlight)),
                            "late {input:?} for ended {flight:?} accepted: {reply:?} (contract rule 16)"
                        );
                    }
                    ensure!(
                        self.driver.machine == before,
                        "a late completion for ended {flight:?} changed the machine (contract rule 16)"
                    );
                }
            }
            Op::NextDeadline => {
                if let Some(t) = self.driver.machine.poll_timeout() {
                    self.driver.now = self.driver.now.max(t);
                    self.input(Input::Timeout)?;
                }
            }
            Op::Sleep(ms) => {
                self.driver.now = self.driver.now + std::time::Duration::from_millis(u64::from(ms));
                self.input(Input::Timeout)?;
            }
        }
        Ok(())
    }

    /// Client `i` drops its stream, if attached and not dropped yet.
    ///
    /// # Errors
    /// The detach was refused or left the record behind ([rule 15](flightdeck_core::contract#rule-15)).
    pub fn detach(&mut self, i: usize) -> Result<(), Violation> {
        let c = &self.clients[i];
        if !c.attached || c.dropped {
            return Ok(());
        }
        let request = c.request;
        // Contract rule 21: a client that has read its terminal item holds its
        // record only for the retention; after that the record is gone.
        let retained = !c.closed || self.driver.machine.status(request).is_some();
        let reply = self.input(Input::Detach { request })?;
        let expected = if retained {
            Reply::Request(Ok(()))
        } else {
            Reply::Request(Err(RequestError::NotFound))
        };
        ensure!(
            reply == expected,
            "detach of an attached client answered {reply:?}, not {expected:?}"
        );
        ensure!(
            self.driver.machine.status(request).is_none(),
            "detach left the record behind (contract rule 15)"
        );
        self.clients[i].dropped = true;
        Ok(())
    }

    fn flight_mut(&mut self, flight: FlightId) -> &mut FlightTrack {
        self.flights.entry(flight).or_default()
    }

    /// Client `i` reads once, if it is attached, not dropped, not parked and not
    /// closed.
    ///
    /// # Errors
    /// A violation of the reading contract.
    pub fn read(&mut self, i: usize) -> Result<(), Violation> {
        let c = &self.clients[i];
        if !c.attached || c.dropped || c.parked || c.closed {
            return Ok(());
        }
        let request = c.request;
        let reply = self.input(Input::Read { request })?;
        let c = &mut self.clients[i];
        match reply {
            Reply::Read(Ok(readiness), items) => {
                ensure!(
                    !c.items.iter().any(|it| matches!(it, Item::End(_))),
                    "{request:?} read {items:?} after its terminal item (contract rule 19)"
                );
                if let Some(pos) = items.iter().position(|it| matches!(it, Item::End(_))) {
                    ensure!(
                        pos + 1 == items.len(),
                        "{request:?} got items after the terminal: {items:?}"
                    );
                    c.closed = true;
                }
                match readiness {
                    Readiness::Pending => {
                        ensure!(items.is_empty(), "Pending with items {items:?}");
                        c.parked = true;
                    }
                    Readiness::Closed => {
                        ensure!(items.is_empty(), "Closed with items {items:?}");
                        c.closed = true;
                    }
                    _ => {}
                }
                c.items.extend(items);
            }
            Reply::Read(Err(RequestError::NotFound), _) => {
                return Err(Violation(format!(
                    "{request:?}: an attached client's record vanished before it read its \
                     terminal item"
                )));
            }
            other => return Err(Violation(format!("read of {request:?} answered {other:?}"))),
        }
        Ok(())
    }

    /// Runs the world to quiescence the way real clients would: every attached
    /// client reads whenever it is not parked, running work is left hanging (so
    /// its deadline ends it), and time jumps to each next deadline until none is
    /// left. Then checks rules [7](flightdeck_core::contract#rule-7), [13](flightdeck_core::contract#rule-13), [14](flightdeck_core::contract#rule-14), [19](flightdeck_core::contract#rule-19) and [21](flightdeck_core::contract#rule-21).
    ///
    /// # Errors
    /// The first violation found.
    pub fn finish(&mut self) -> Result<(), Violation> {
        for _round in 0..10_000 {
            let mut progressed = true;
            while progressed {
                progressed = false;
                for i in 0..self.clients.len() {
                    let before = self.clients[i].items.len();
                    let was = (self.clients[i].parked, self.clients[i].closed);
                    self.read(i)?;
                    let c = &self.clients[i];
                    if c.closed && !c.dropped {
                        // Having read its terminal item, a client drops its stream.
                        self.detach(i)?;
                        self.check()?;
                    }
                    if self.clients[i].items.len() != before
                        || was != (self.clients[i].parked, self.clients[i].closed)
                    {
                        progressed = true;
                    }
                }
            }
            if self.driver.machine.poll_timeout().is_none() {
                break;
            }
            self.apply(&Op::NextDeadline)?;
        }
        self.check_final()
    }

    fn check_final(&self) -> Result<(), Violation> {
        ensure!(
            self.driver.machine.poll_timeout().is_none(),
            "deadlines left after quiescence"
        );
        ensure!(
            self.driver.machine.is_empty(),
            "machine not empty at quiescence (contract rule 21): {:?}",
            self.driver.machine.stats()
        );
        let running = self.driver.running_preparations();
        ensure!(
            running.is_empty(),
            "preparations still running at quiescence: {running:?}"
        );
        let running = self.driver.running_streams();
        ensure!(
            running.is_empty(),
            "streams still running at quiescence: {running:?}"
        );
        for c in &self.clients {
            if !c.attached || (c.dropped && !c.closed) {
                continue;
            }
            let r = c.request;
            let Some((Item::End(outcome), chunks)) = c.items.split_last() else {
                return Err(Violation(format!(
                    "{r:?} attached but never got a terminal item (contract rule 19): {:?} parked={}",
                    c.items, c.parked
                )));
            };
            let mut got = Vec::new();
            for it in chunks {
                match it {
                    Item::Chunk(b) => got.push(b.clone()),
                    Item::End(_) => {
                        return Err(Violation(format!(
                            "{r:?} got two terminal items: {:?}",
                            c.items
                        )))
                    }
                }
            }
            if c.cancelled_at.is_some() {
                ensure!(
                    *outcome == Outcome::Cancelled,
                    "{r:?} cancelled but its terminal is {outcome:?} (contract rule 14)"
                );
            }
            let log: Option<&Vec<Bytes>> = match c.route {
                Route::NewFlight(f) | Route::Joined(f) => self.flights.get(&f).map(|t| &t.log),
                _ => None,
            };
            match log {
                Some(log) => {
                    ensure!(
                        got.len() <= log.len() && got[..] == log[..got.len()],
                        "{r:?} read {got:?}, not a prefix of its flight's log {log:?} (contract rule 7)"
                    );
                    if *outcome == Outcome::Completed || matches!(outcome, Outcome::Failed(_)) {
                        ensure!(
                            got == *log,
                            "{r:?} ended {outcome:?} with {got:?}, log is {log:?} (contract rules 7, 20)"
                        );
                    }
                }
                None => {
                    // Served from the cache: the full log of a completed flight.
                    let ok = *outcome == Outcome::Completed
                        && self
                            .flights
                            .values()
                            .any(|f| f.completed && f.key == c.key && f.log == got);
                    ensure!(
                        ok,
                        "{r:?} served from cache read {got:?} then {outcome:?}: no completed \
                         flight for its key has that log"
                    );
                }
            }
        }
        Ok(())
    }
}
