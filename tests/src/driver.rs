//! The virtual-time test driver for the pure core: one [`Machine`], a clock,
//! what a real driver would know from the actions (which preparations and
//! upstreams run), and a check after every step.
//!
//! Every input goes in at [`Driver::now`], through the machine's typed methods
//! (the rule tests and seed scenarios name them) or as an [`Input`] value
//! ([`Driver::try_handle`], what the world and the model check use, and what
//! makes a run a trace). After each the driver drains the machine's actions into
//! its buffer and checks:
//!
//! - the machine's own invariants ([`Machine::check_invariants`]);
//! - that no action names a flight after its `Abort` or `FlightEnded`, and
//!   `FlightEnded` comes once per flight ([rule 16](flightdeck_core::contract#rule-16): nothing is emitted
//!   for an ended generation);
//! - that `StartPreparation` and `StartStream` name a flight in the right phase
//!   and respect the configured limits ([rule 4](flightdeck_core::contract#rule-4));
//! - that an `Abort` names work that runs, and `FlightEnded` comes only once
//!   the flight's work finished or was aborted (no work outlives its flight);
//! - in cluster mode: `Claim` only with cluster mode on, for a flight that runs
//!   nothing and has no role yet; `Publish` only for a streaming owner;
//!   `Release` only for a live owner, and right before its `FlightEnded`
//!   ([rule 26](flightdeck_core::contract#rule-26)); a follower's `Abort` of its
//!   stream only while it follows.
//!
//! A test states what one input produced by taking the buffer
//! ([`Driver::take`]) after it. Like quinn-proto's test pair, there are two ways
//! to move time: [`Driver::tick`] moves the clock to a given instant and handles
//! the deadlines due; [`Driver::drive`] handles every deadline in turn until none
//! is left (retentions, cache expiries), and [`Driver::drive_bounded`] does the
//! same for at most a given number of deadlines.
//!
//! Methods named `try_*` return the machine's answer and panic on a broken
//! check; the others also expect the input to be accepted (they are for tests).
//! [`Driver::try_handle`] returns a broken check as a [`Violation`] instead, so
//! that the explorer can shrink the path that led to it.
//!
//! # What stays outside
//! [`crate::world::World`] adds what simulated clients know (each client's
//! request, reads and cancels, the log its flight should have), because the
//! explorer fingerprints that whole state and enumerates the ops enabled in it.
//! [`crate::model_check`] adds the reference model, fed the same inputs in
//! lockstep. They keep their own op enums because the ops mean different
//! things: [`crate::world::Op`] picks among the clients a world knows (every op
//! is meaningful in every state, which keeps the explored space small), while
//! [`crate::model_check::Op`] names raw ids, including ones never issued, so that
//! the model is compared on every "not found" and stale answer too.

use std::collections::BTreeMap;

use flightdeck_core::{
    Action, Bytes, Config, Failure, FlightId, Input, Item, Key, Machine, Prepared, Readiness,
    Reply, RequestError, RequestId, RequestState, Role, Route, StaleFlight, Stats, Submission,
    SubmitError, Time, Work,
};

/// A broken check, with what broke.
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

/// What the driver knows about one flight, from the actions and the inputs it
/// reported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlightWork {
    /// A preparation runs.
    pub preparing: bool,
    /// An upstream stream runs.
    pub streaming: bool,
    /// `Abort` was emitted.
    pub aborted: bool,
    /// `FlightEnded` was emitted.
    pub ended: bool,
    /// Cluster mode: `Claim` was emitted and not answered yet.
    pub claiming: bool,
    /// Cluster mode: the claim was answered `Owner` (cleared when fenced).
    pub owner: bool,
    /// Cluster mode: the claim was answered `Follower`, and the remote log has
    /// neither ended nor been lost since (the driver follows it).
    pub following: bool,
}

impl FlightWork {
    /// Not claiming and not following: the flight runs (or will run) locally.
    fn local(&self) -> bool {
        !self.claiming && !self.following
    }
}

/// The kind of a claim's answer, as far as the driver tracks it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RoleKind {
    Owner,
    Follower,
    Other,
}

/// What a cluster input reports, if the machine takes it.
enum Remote {
    Claimed(RoleKind),
    FollowEnded,
    Fenced,
}

fn cluster_report(input: &Input) -> Option<(FlightId, Remote)> {
    Some(match input {
        Input::Claimed { flight, role } => {
            let kind = match role {
                Role::Owner => RoleKind::Owner,
                Role::Follower => RoleKind::Follower,
                _ => RoleKind::Other,
            };
            (*flight, Remote::Claimed(kind))
        }
        Input::RemoteEnded { flight, .. } | Input::OwnerLost { flight } => {
            (*flight, Remote::FollowEnded)
        }
        Input::Fenced { flight, .. } => (*flight, Remote::Fenced),
        _ => return None,
    })
}

/// The pure core in virtual time, checked after every step. See the module docs.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Driver {
    /// The machine under test.
    pub machine: Machine,
    /// Virtual time: every input is stamped with it.
    pub now: Time,
    /// Actions emitted since the last [`Driver::take`].
    actions: Vec<Action>,
    /// Every flight the actions named.
    flights: BTreeMap<FlightId, FlightWork>,
    /// Everything each request's reader read through the typed reads, in order.
    reads: BTreeMap<RequestId, Vec<Item>>,
    /// Whether [`Driver::try_handle`] records its inputs and actions.
    record: bool,
    /// The recorded inputs, with their time.
    steps: Vec<(Time, Input)>,
    /// The actions each recorded input produced.
    recorded: Vec<Vec<Action>>,
}

impl Driver {
    /// A driver around a fresh machine with `config` at time zero.
    ///
    /// # Panics
    /// The configuration is invalid.
    #[must_use]
    pub fn new(config: Config) -> Self {
        Self::try_new(config).expect("valid config")
    }

    /// A driver around a fresh machine with `config` at time zero.
    ///
    /// # Errors
    /// The configuration is invalid.
    pub fn try_new(config: Config) -> Result<Self, flightdeck_core::ConfigError> {
        let driver = Driver {
            machine: Machine::new(config)?,
            now: Time::ZERO,
            actions: Vec::new(),
            flights: BTreeMap::new(),
            reads: BTreeMap::new(),
            record: false,
            steps: Vec::new(),
            recorded: Vec::new(),
        };
        driver.check();
        Ok(driver)
    }

    /// Records every input [`Driver::try_handle`] takes, and the actions it
    /// produced, from now on (see [`Driver::recorded`]).
    #[must_use]
    pub fn recording(mut self) -> Self {
        self.record = true;
        self
    }

    /// The recorded inputs with their time, and the actions each produced.
    #[must_use]
    pub fn recorded(&self) -> (&[(Time, Input)], &[Vec<Action>]) {
        (&self.steps, &self.recorded)
    }

    /// Checks the machine's invariants.
    ///
    /// # Panics
    /// An invariant is broken.
    pub fn check(&self) {
        if let Err(v) = self.machine.check_invariants() {
            panic!("after a step at {}: {v}", self.now);
        }
    }

    /// One input as a value: hands it to [`Machine::handle`], notes the work it
    /// reports finished, drains and checks the actions (they stay in the buffer
    /// for [`Driver::take`]), and checks the machine's invariants.
    ///
    /// # Errors
    /// The first broken check.
    pub fn try_handle(&mut self, input: Input) -> Result<Reply, Violation> {
        let reports_end = match &input {
            Input::Prepared { flight, .. } => Some((*flight, Work::Preparation)),
            Input::UpstreamEnded { flight, .. } => Some((*flight, Work::Stream)),
            _ => None,
        };
        if self.record {
            self.steps.push((self.now, input.clone()));
        }
        let remote = cluster_report(&input);
        let first = self.actions.len();
        let reply = self.machine.handle(self.now, input);
        if let (Some((flight, work)), Reply::Flight(Ok(()))) = (reports_end, &reply) {
            self.finished(flight, work);
        }
        if let (Some((flight, report)), Reply::Flight(Ok(()))) = (remote, &reply) {
            let f = self.flights.entry(flight).or_default();
            match report {
                Remote::Claimed(role) => {
                    f.claiming = false;
                    f.owner = role == RoleKind::Owner;
                    f.following = role == RoleKind::Follower;
                }
                Remote::FollowEnded => f.following = false,
                Remote::Fenced => f.owner = false,
            }
        }
        self.try_step()?;
        if self.record {
            self.recorded.push(self.actions[first..].to_vec());
        }
        Ok(reply)
    }

    /// Notes that `flight`'s `work` reported its end and the machine took it.
    fn finished(&mut self, flight: FlightId, work: Work) {
        let f = self.flights.entry(flight).or_default();
        match work {
            Work::Preparation => f.preparing = false,
            _ => f.streaming = false,
        }
    }

    /// Drains the machine's actions into the buffer, checking each, then the
    /// machine's invariants; panics on a broken check.
    fn step(&mut self) {
        if let Err(v) = self.try_step() {
            panic!("after a step at {}: {v}", self.now);
        }
    }

    fn try_step(&mut self) -> Result<(), Violation> {
        let mut released = None;
        while let Some(a) = self.machine.poll_action() {
            if let Some(flight) = released.take() {
                ensure!(
                    a == Action::FlightEnded { flight },
                    "Release for {flight:?} not followed by its FlightEnded but {a:?} \
                     (contract rule 26)"
                );
            }
            if let Action::Release { flight, .. } = a {
                released = Some(flight);
            }
            self.on_action(&a)?;
            self.actions.push(a);
        }
        ensure!(released.is_none(), "Release was the last action of a step");
        self.machine
            .check_invariants()
            .map_err(|v| Violation(v.to_string()))
    }

    fn on_action(&mut self, action: &Action) -> Result<(), Violation> {
        let config = self.machine.config();
        let (max_preparations, max_streams) = (
            config.max_concurrent_requests,
            config.max_concurrent_streams,
        );
        match action {
            Action::StartPreparation { flight, .. } => {
                let f = self.flights.entry(*flight).or_default();
                ensure!(
                    !f.ended && !f.aborted && !f.preparing && !f.streaming && f.local(),
                    "StartPreparation for {flight:?} in a wrong phase: {f:?}"
                );
                f.preparing = true;
                let n = self.flights.values().filter(|f| f.preparing).count();
                ensure!(
                    n <= max_preparations,
                    "{n} preparations exceed max_concurrent_requests"
                );
            }
            Action::StartStream { flight } => {
                let f = self.flights.entry(*flight).or_default();
                ensure!(
                    !f.ended && !f.aborted && !f.preparing && !f.streaming && f.local(),
                    "StartStream for {flight:?} in a wrong phase: {f:?}"
                );
                f.streaming = true;
                let n = self.flights.values().filter(|f| f.streaming).count();
                ensure!(
                    n <= max_streams,
                    "{n} streams exceed max_concurrent_streams"
                );
            }
            Action::Abort { flight, work } => {
                let f = self.flights.entry(*flight).or_default();
                ensure!(!f.ended && !f.aborted, "Abort for ended {flight:?}");
                let running = match work {
                    Work::Preparation => f.preparing,
                    // A follower's "stream" is the following of the remote log.
                    Work::Stream => f.streaming || f.following,
                    _ => false,
                };
                ensure!(
                    running,
                    "Abort {work:?} for {flight:?} that runs no such work"
                );
                f.aborted = true;
                f.preparing = false;
                f.streaming = false;
                f.following = false;
            }
            Action::FlightEnded { flight } => {
                let f = self.flights.entry(*flight).or_default();
                ensure!(!f.ended, "FlightEnded twice for {flight:?}");
                f.ended = true;
                f.claiming = false; // an unanswered claim is dropped
                ensure!(
                    !f.preparing && !f.streaming && !f.following,
                    "FlightEnded for {flight:?} while its work runs and was not aborted"
                );
            }
            Action::Wake { .. } => {}
            Action::Claim { flight, .. } => {
                let cluster = self.machine.config().cluster;
                let f = self.flights.entry(*flight).or_default();
                ensure!(cluster, "Claim for {flight:?} with cluster mode off");
                ensure!(
                    !f.ended && !f.aborted && !f.claiming && !f.owner && !f.following,
                    "Claim for {flight:?} in a wrong phase: {f:?} (contract rule 25)"
                );
                ensure!(
                    !f.preparing && !f.streaming,
                    "Claim for {flight:?} that runs work"
                );
                f.claiming = true;
            }
            Action::Publish { flight, chunks } => {
                let f = self.flights.entry(*flight).or_default();
                ensure!(
                    f.owner && f.streaming && !f.ended && !chunks.is_empty(),
                    "Publish for {flight:?} that is no streaming owner, or of nothing: {f:?} \
                     (contract rule 26)"
                );
            }
            Action::Release { flight, .. } => {
                let f = self.flights.entry(*flight).or_default();
                ensure!(
                    f.owner && !f.ended,
                    "Release for {flight:?} that is no live owner: {f:?} (contract rule 26)"
                );
            }
            other => return Err(Violation(format!("unknown action {other:?}"))),
        }
        Ok(())
    }

    /// What the driver knows about `flight`'s work.
    #[must_use]
    pub fn work(&self, flight: FlightId) -> Option<FlightWork> {
        self.flights.get(&flight).copied()
    }

    fn flights_where(&self, pred: impl Fn(&FlightWork) -> bool) -> Vec<FlightId> {
        self.flights
            .iter()
            .filter(|(_, f)| pred(f))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Flights with a running preparation, in id order.
    #[must_use]
    pub fn running_preparations(&self) -> Vec<FlightId> {
        self.flights_where(|f| f.preparing)
    }

    /// Flights with a running upstream, in id order.
    #[must_use]
    pub fn running_streams(&self) -> Vec<FlightId> {
        self.flights_where(|f| f.streaming)
    }

    /// Flights that ended (aborted or `FlightEnded`), in id order.
    #[must_use]
    pub fn ended_flights(&self) -> Vec<FlightId> {
        self.flights_where(|f| f.ended || f.aborted)
    }

    /// Whether some user work (preparation or upstream) is running, or, in
    /// cluster mode, a claim or a follow is in progress.
    #[must_use]
    pub fn work_pending(&self) -> bool {
        self.flights
            .values()
            .any(|f| f.preparing || f.streaming || f.claiming || f.following)
    }

    /// Cluster mode: flights whose claim is unanswered, in id order.
    #[must_use]
    pub fn claiming_flights(&self) -> Vec<FlightId> {
        self.flights_where(|f| f.claiming)
    }

    /// Cluster mode: flights following a remote log, in id order.
    #[must_use]
    pub fn following_flights(&self) -> Vec<FlightId> {
        self.flights_where(|f| f.following)
    }

    /// Cluster mode: live owner flights (not ended, not fenced), in id order.
    #[must_use]
    pub fn owner_flights(&self) -> Vec<FlightId> {
        self.flights_where(|f| f.owner && !f.ended)
    }

    /// The actions emitted since the last call.
    pub fn take(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    /// Moves the clock to `t` milliseconds without handling deadlines.
    pub fn at(&mut self, t: u64) -> &mut Self {
        self.now = Time::from_millis(t);
        self
    }

    /// Submits `key`.
    ///
    /// # Errors
    /// The machine refused the submit.
    pub fn try_submit(&mut self, key: impl Into<Key>) -> Result<Submission, SubmitError> {
        let r = self.machine.submit(self.now, key.into());
        self.step();
        r
    }

    /// Submits `key`, expecting it to be accepted.
    ///
    /// # Panics
    /// The submit was refused.
    pub fn submit(&mut self, key: impl Into<Key>) -> Submission {
        self.try_submit(key).expect("submit accepted")
    }

    /// Submits and returns the new flight id.
    ///
    /// # Panics
    /// The submit was refused, joined a live flight or was served from the cache.
    pub fn submit_new(&mut self, key: impl Into<Key>) -> (RequestId, FlightId) {
        let s = self.submit(key);
        match s.route {
            Route::NewFlight(f) => (s.request, f),
            other => panic!("expected a new flight, got {other:?}"),
        }
    }

    /// A client attaches to `r`.
    ///
    /// # Errors
    /// The machine refused the attach.
    pub fn try_attach(&mut self, r: RequestId) -> Result<(), RequestError> {
        let res = self.machine.attach(self.now, r);
        self.step();
        res
    }

    /// A client attaches to `r`, expecting success.
    ///
    /// # Panics
    /// The attach was refused.
    pub fn attach(&mut self, r: RequestId) {
        self.try_attach(r).expect("attach accepted");
    }

    /// `r`'s client reads once; the items are also kept in [`Driver::reads`].
    pub fn try_read(&mut self, r: RequestId) -> (Result<Readiness, RequestError>, Vec<Item>) {
        let mut out = Vec::new();
        let res = self.machine.read(r, &mut out);
        self.step();
        self.reads.entry(r).or_default().extend(out.iter().cloned());
        (res, out)
    }

    /// `r`'s client reads once, expecting the read to be accepted.
    ///
    /// # Panics
    /// The read was refused.
    pub fn read(&mut self, r: RequestId) -> Vec<Item> {
        self.read_with_readiness(r).1
    }

    /// Like [`Driver::read`], with the readiness the machine answered.
    ///
    /// # Panics
    /// The read was refused.
    pub fn read_with_readiness(&mut self, r: RequestId) -> (Readiness, Vec<Item>) {
        let (res, out) = self.try_read(r);
        (res.expect("read accepted"), out)
    }

    /// Everything `r`'s reader read through this driver so far, in order.
    #[must_use]
    pub fn reads(&self, r: RequestId) -> &[Item] {
        self.reads.get(&r).map_or(&[], Vec::as_slice)
    }

    /// Cancels `r`.
    ///
    /// # Errors
    /// The machine refused the cancel.
    pub fn try_cancel(&mut self, r: RequestId) -> Result<(), RequestError> {
        let res = self.machine.cancel(self.now, r);
        self.step();
        res
    }

    /// Cancels `r`, expecting success.
    ///
    /// # Panics
    /// The cancel was refused.
    pub fn cancel(&mut self, r: RequestId) {
        self.try_cancel(r).expect("cancel accepted");
    }

    /// `r`'s client drops its stream.
    ///
    /// # Errors
    /// The machine refused the detach.
    pub fn try_detach(&mut self, r: RequestId) -> Result<(), RequestError> {
        let res = self.machine.detach(self.now, r);
        self.step();
        res
    }

    /// `r`'s client drops its stream, expecting success.
    ///
    /// # Panics
    /// The detach was refused.
    pub fn detach(&mut self, r: RequestId) {
        self.try_detach(r).expect("detach accepted");
    }

    /// `f`'s preparation ends with `result`.
    ///
    /// # Errors
    /// The flight was not preparing (a late completion).
    pub fn try_prepared(
        &mut self,
        f: FlightId,
        result: Result<Prepared, Failure>,
    ) -> Result<(), StaleFlight> {
        let res = self.machine.handle_prepared(self.now, f, result);
        if res.is_ok() {
            self.finished(f, Work::Preparation);
        }
        self.step();
        res
    }

    /// `f`'s preparation succeeds, cacheable.
    ///
    /// # Panics
    /// The flight was not preparing.
    pub fn prepared(&mut self, f: FlightId) {
        self.try_prepared(f, Ok(Prepared::CACHEABLE))
            .expect("flight was preparing");
    }

    /// `f`'s upstream produces `data`.
    ///
    /// # Errors
    /// The flight was not streaming (a late chunk).
    pub fn try_chunk(&mut self, f: FlightId, data: impl Into<Bytes>) -> Result<(), StaleFlight> {
        let res = self.machine.handle_chunk(self.now, f, data.into());
        self.step();
        res
    }

    /// `f`'s upstream produces `data`, expecting it to be accepted.
    ///
    /// # Panics
    /// The flight was not streaming.
    pub fn chunk(&mut self, f: FlightId, data: impl Into<Bytes>) {
        self.try_chunk(f, data).expect("flight was streaming");
    }

    /// `f`'s upstream ends with `result`.
    ///
    /// # Errors
    /// The flight was not streaming (a late end).
    pub fn try_end(&mut self, f: FlightId, result: Result<(), Failure>) -> Result<(), StaleFlight> {
        let res = self.machine.handle_upstream_end(self.now, f, result);
        if res.is_ok() {
            self.finished(f, Work::Stream);
        }
        self.step();
        res
    }

    /// `f`'s upstream ends successfully.
    ///
    /// # Panics
    /// The flight was not streaming.
    pub fn end(&mut self, f: FlightId) {
        self.try_end(f, Ok(())).expect("flight was streaming");
    }

    /// Handles the deadlines due at [`Driver::now`].
    pub fn timeout(&mut self) {
        self.machine.handle_timeout(self.now);
        self.step();
    }

    /// Moves the clock to `t` milliseconds and handles the deadlines due.
    pub fn tick(&mut self, t: u64) {
        self.at(t).timeout();
    }

    /// Handles every deadline in turn until none is left (retentions, cache).
    ///
    /// # Panics
    /// A deadline lies in the past, or an invariant breaks.
    pub fn drive(&mut self) {
        while self.drive_one() {}
    }

    /// Handles at most `max` deadlines in turn; returns whether none is left.
    ///
    /// # Panics
    /// A deadline lies in the past, or an invariant breaks.
    pub fn drive_bounded(&mut self, max: usize) -> bool {
        for _ in 0..max {
            if !self.drive_one() {
                return true;
            }
        }
        self.machine.poll_timeout().is_none()
    }

    /// Handles the next deadline, if any; returns whether there was one.
    fn drive_one(&mut self) -> bool {
        let Some(at) = self.machine.poll_timeout() else {
            return false;
        };
        assert!(at >= self.now, "a deadline in the past");
        self.now = at;
        self.timeout();
        true
    }

    /// Submit, attach, prepare (all instantly) until the flight is streaming.
    ///
    /// # Panics
    /// The flight did not start streaming.
    pub fn streaming(&mut self, key: impl Into<Key>) -> (RequestId, FlightId) {
        let (r, f) = self.submit_new(key);
        self.attach(r);
        self.prepared(f);
        assert!(
            self.take().contains(&Action::StartStream { flight: f }),
            "{f} did not start streaming"
        );
        (r, f)
    }

    /// `r`'s state, if its record exists.
    #[must_use]
    pub fn state(&self, r: RequestId) -> Option<RequestState> {
        self.machine.status(r).map(|s| s.state)
    }

    /// `r`'s queue position, if it is queued.
    #[must_use]
    pub fn position(&self, r: RequestId) -> Option<usize> {
        self.machine.status(r).and_then(|s| s.queue_position)
    }

    /// The machine's stats.
    #[must_use]
    pub fn stats(&self) -> Stats {
        self.machine.stats()
    }
}
