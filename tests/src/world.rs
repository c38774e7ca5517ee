//! A simulated world in virtual time: clients, a pretend upstream and a clock
//! driving the core exactly as a real driver would, checking every invariant
//! after every step.
//!
//! Every input goes through [`Machine::handle`] so that a run is recorded as a
//! [`crate::trace::Trace`] for free. After each step the world drains the
//! machine's actions and checks, besides [`Machine::check_invariants`]:
//!
//! - no action names a flight after its `Abort` / `FlightEnded`;
//! - `FlightEnded` is emitted exactly once per flight;
//! - `StartPreparation` / `StartStream` respect the configured limits and only
//!   name flights in the right phase;
//! - no work runs for a flight none of whose members is still live (no zombie
//!   slot, rule 12);
//! - a late completion for an ended flight is refused and changes nothing (rule 16);
//! - a cancel followed by an attach within `cancelled_retention` never answers
//!   `NotFound` (rule 13).
//!
//! At quiescence ([`World::finish`]) every reader that a client still holds got
//! its flight's chunks exactly once, in order, with no gap, then exactly one
//! terminal item (rules 7, 14, 19), and the machine is empty (rule 21).

use std::collections::BTreeMap;

use bytes::Bytes;
use flightdeck_core::{
    Action, Config, Failure, FlightId, Input, Item, Key, Machine, Outcome, Prepared, Readiness,
    Reply, RequestError, RequestId, RequestState, Route, StaleFlight, Time, Work,
};

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

/// What the world knows about one flight, from the machine's actions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlightTrack {
    /// The key index of the flight.
    pub key: u8,
    /// A preparation is running.
    pub preparing: bool,
    /// An upstream stream is running.
    pub streaming: bool,
    /// Chunks the machine accepted, in order.
    pub log: Vec<Bytes>,
    /// Whether the upstream completed successfully (the log is complete).
    pub completed: bool,
    /// Whether `Abort` was emitted.
    pub aborted: bool,
    /// Whether `FlightEnded` was emitted.
    pub ended: bool,
}

/// The simulated world: the machine plus everything real clients and a real
/// upstream would know.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct World {
    /// The machine under test.
    pub machine: Machine,
    /// Virtual time.
    pub now: Time,
    /// Every client, in submission order.
    pub clients: Vec<Client>,
    /// Every flight the world heard of.
    pub flights: BTreeMap<FlightId, FlightTrack>,
    /// Whether to record the trace.
    record: bool,
    /// The recorded inputs (if recording).
    pub steps: Vec<(Time, Input)>,
    /// The actions after each recorded input (if recording).
    pub actions: Vec<Vec<Action>>,
}

/// A harness-side invariant violation, with the path that led to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation(pub String);

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
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
            machine: Machine::new(config)?,
            now: Time::ZERO,
            clients: Vec::new(),
            flights: BTreeMap::new(),
            record: false,
            steps: Vec::new(),
            actions: Vec::new(),
        })
    }

    /// Records every input and the actions it produced from now on.
    #[must_use]
    pub fn recording(mut self) -> Self {
        self.record = true;
        self
    }

    /// Flights with a running preparation, in id order.
    #[must_use]
    pub fn preparing(&self) -> Vec<FlightId> {
        self.flights
            .iter()
            .filter(|(_, f)| f.preparing)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Flights with a running upstream, in id order.
    #[must_use]
    pub fn streaming(&self) -> Vec<FlightId> {
        self.flights
            .iter()
            .filter(|(_, f)| f.streaming)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Flights that ended (aborted or `FlightEnded`), in id order.
    #[must_use]
    pub fn ended(&self) -> Vec<FlightId> {
        self.flights
            .iter()
            .filter(|(_, f)| f.ended || f.aborted)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Whether some user work (preparation or upstream) is running.
    #[must_use]
    pub fn work_pending(&self) -> bool {
        self.flights.values().any(|f| f.preparing || f.streaming)
    }

    fn input(&mut self, input: Input) -> Result<Reply, Violation> {
        if self.record {
            self.steps.push((self.now, input.clone()));
        }
        let reply = self.machine.handle(self.now, input);
        let mut actions = Vec::new();
        while let Some(action) = self.machine.poll_action() {
            self.on_action(&action)?;
            actions.push(action);
        }
        if self.record {
            self.actions.push(actions);
        }
        self.machine
            .check_invariants()
            .map_err(|v| Violation(v.to_string()))?;
        Ok(reply)
    }

    fn on_action(&mut self, action: &Action) -> Result<(), Violation> {
        let config = self.machine.config().clone();
        match action {
            Action::StartPreparation { flight, key: k } => {
                let idx = std::str::from_utf8(&k.as_bytes()[1..])
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(u8::MAX);
                let f = self.flights.entry(*flight).or_default();
                ensure!(
                    !f.ended && !f.aborted && !f.preparing && !f.streaming,
                    "StartPreparation for {flight:?} in a wrong phase: {f:?}"
                );
                f.key = idx;
                f.preparing = true;
                let n = self.preparing().len();
                ensure!(
                    n <= config.max_concurrent_requests,
                    "{n} preparations exceed max_concurrent_requests"
                );
            }
            Action::StartStream { flight } => {
                let f = self.flights.entry(*flight).or_default();
                ensure!(
                    !f.ended && !f.aborted && !f.preparing && !f.streaming,
                    "StartStream for {flight:?} in a wrong phase: {f:?}"
                );
                f.streaming = true;
                let n = self.streaming().len();
                ensure!(
                    n <= config.max_concurrent_streams,
                    "{n} streams exceed max_concurrent_streams"
                );
            }
            Action::Abort { flight, work } => {
                let f = self.flights.entry(*flight).or_default();
                ensure!(!f.ended && !f.aborted, "Abort for ended {flight:?}");
                let running = match work {
                    Work::Preparation => f.preparing,
                    Work::Stream => f.streaming,
                    _ => false,
                };
                ensure!(
                    running,
                    "Abort {work:?} for {flight:?} that runs no such work"
                );
                f.aborted = true;
                f.preparing = false;
                f.streaming = false;
            }
            Action::FlightEnded { flight } => {
                let f = self.flights.entry(*flight).or_default();
                ensure!(!f.ended, "FlightEnded twice for {flight:?}");
                f.ended = true;
                ensure!(
                    !f.preparing && !f.streaming,
                    "FlightEnded for {flight:?} while its work runs and was not aborted"
                );
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
        self.machine
            .check_invariants()
            .map_err(|v| Violation(v.to_string()))?;
        for (id, f) in &self.flights {
            if !(f.preparing || f.streaming) {
                continue;
            }
            let someone = self.clients.iter().any(|c| {
                matches!(c.route, Route::NewFlight(x) | Route::Joined(x) if x == *id)
                    && self
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
                    let retention = self.machine.config().cancelled_retention;
                    if self.now < t + retention {
                        ensure!(
                            reply == Reply::Request(Ok(())),
                            "attach after cancel within retention answered {reply:?} \
                             (rule 13: must read Cancelled, never NotFound)"
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
                    c.cancelled_at = Some(self.now);
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
                    self.flight_mut(flight).preparing = false;
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
                    self.flight_mut(flight).preparing = false;
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
                    let limit = self.machine.config().max_response_bytes;
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
                    let f = self.flight_mut(flight);
                    f.streaming = false;
                    f.completed = ok;
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
                    let before = self.machine.clone();
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
                            "late {input:?} for ended {flight:?} accepted: {reply:?} (rule 16)"
                        );
                    }
                    ensure!(
                        self.machine == before,
                        "a late completion for ended {flight:?} changed the machine (rule 16)"
                    );
                }
            }
            Op::NextDeadline => {
                if let Some(t) = self.machine.poll_timeout() {
                    self.now = self.now.max(t);
                    self.input(Input::Timeout)?;
                }
            }
            Op::Sleep(ms) => {
                self.now = self.now + std::time::Duration::from_millis(u64::from(ms));
                self.input(Input::Timeout)?;
            }
        }
        Ok(())
    }

    /// Client `i` drops its stream, if attached and not dropped yet.
    ///
    /// # Errors
    /// The detach was refused or left the record behind (rule 15).
    pub fn detach(&mut self, i: usize) -> Result<(), Violation> {
        let c = &self.clients[i];
        if !c.attached || c.dropped {
            return Ok(());
        }
        let request = c.request;
        // Contract rule 21: a client that has read its terminal item holds its
        // record only for the retention; after that the record is gone.
        let retained = !c.closed || self.machine.status(request).is_some();
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
            self.machine.status(request).is_none(),
            "detach left the record behind (rule 15)"
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
                    "{request:?} read {items:?} after its terminal item (rule 19)"
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
    /// left. Then checks rules 7, 13, 14, 19 and 21.
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
            if self.machine.poll_timeout().is_none() {
                break;
            }
            self.apply(&Op::NextDeadline)?;
        }
        self.check_final()
    }

    fn check_final(&self) -> Result<(), Violation> {
        ensure!(
            self.machine.poll_timeout().is_none(),
            "deadlines left after quiescence"
        );
        ensure!(
            self.machine.is_empty(),
            "machine not empty at quiescence (rule 21): {:?}",
            self.machine.stats()
        );
        for (id, f) in &self.flights {
            ensure!(
                !f.preparing && !f.streaming,
                "work still running for {id:?} at quiescence"
            );
        }
        for c in &self.clients {
            if !c.attached || (c.dropped && !c.closed) {
                continue;
            }
            let r = c.request;
            let Some((Item::End(outcome), chunks)) = c.items.split_last() else {
                return Err(Violation(format!(
                    "{r:?} attached but never got a terminal item (rule 19): {:?} parked={}",
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
                    "{r:?} cancelled but its terminal is {outcome:?} (rule 14)"
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
                        "{r:?} read {got:?}, not a prefix of its flight's log {log:?} (rule 7)"
                    );
                    if *outcome == Outcome::Completed || matches!(outcome, Outcome::Failed(_)) {
                        ensure!(
                            got == *log,
                            "{r:?} ended {outcome:?} with {got:?}, log is {log:?} (rules 7, 20)"
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
