//! The virtual-time test driver for the pure core: one [`Machine`], a clock, and
//! a check after every step.
//!
//! Every method is one input at [`Driver::now`], after which the driver drains
//! the machine's actions into its buffer and checks
//!
//! - the machine's own invariants ([`Machine::check_invariants`]);
//! - that no action names a flight after its `FlightEnded` (rule 16: nothing
//!   is ever emitted for an ended generation).
//!
//! A test states what one input produced by taking the buffer
//! ([`Driver::take`]) after it. Like quinn-proto's test pair, there are two ways
//! to move time: [`Driver::tick`] moves the clock to a given instant and handles
//! the deadlines due; [`Driver::drive`] handles every deadline in turn until none
//! is left (retentions, cache expiries), and [`Driver::drive_bounded`] does the
//! same for at most a given number of deadlines.
//!
//! Methods named `try_*` return the machine's answer; the others expect success
//! and panic with a message otherwise (they are for tests).
//!
//! # Why the world and the model check keep their own loops
//! [`crate::world::World`] and [`crate::model_check`] drive the core too, but
//! they encode different things: the world keeps what every simulated client and
//! the upstream know, because the explorer fingerprints that whole state and
//! enumerates the ops enabled in it; the model check feeds each input to the
//! reference model in lockstep and compares replies and actions. Both go
//! through [`Machine::handle`] (one `Input` value per step, which is what makes
//! a run a trace), where this driver calls the typed methods the rule tests
//! name. What is the same logic (invariants after every step, running out the
//! clock) is the same code: they check with [`Machine::check_invariants`] and
//! their ops come from one decoder per purpose ([`crate::world::Op`] for
//! exploration and fuzzing, the model check's own ops for ids that may not
//! exist).

use std::collections::{BTreeMap, BTreeSet};

use flightdeck_core::{
    Action, Bytes, Config, Failure, FlightId, Item, Key, Machine, Prepared, Readiness,
    RequestError, RequestId, RequestState, Route, StaleFlight, Stats, Submission, SubmitError,
    Time,
};

/// The pure core in virtual time, checked after every step. See the module docs.
#[derive(Clone, Debug)]
pub struct Driver {
    /// The machine under test.
    pub machine: Machine,
    /// Virtual time: every input is stamped with it.
    pub now: Time,
    /// Actions emitted since the last [`Driver::take`].
    actions: Vec<Action>,
    /// Flights whose `FlightEnded` was emitted.
    ended: BTreeSet<FlightId>,
    /// Everything each request's reader read through this driver, in order.
    reads: BTreeMap<RequestId, Vec<Item>>,
}

impl Driver {
    /// A driver around a fresh machine with `config` at time zero.
    ///
    /// # Panics
    /// The configuration is invalid.
    #[must_use]
    pub fn new(config: Config) -> Self {
        let driver = Driver {
            machine: Machine::new(config).expect("valid config"),
            now: Time::ZERO,
            actions: Vec::new(),
            ended: BTreeSet::new(),
            reads: BTreeMap::new(),
        };
        driver.check();
        driver
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

    /// Drains the machine's actions into the buffer, checking each, then the
    /// machine's invariants.
    fn step(&mut self) {
        while let Some(a) = self.machine.poll_action() {
            let named = match &a {
                Action::StartPreparation { flight, .. }
                | Action::StartStream { flight }
                | Action::Abort { flight, .. }
                | Action::FlightEnded { flight } => Some(*flight),
                _ => None,
            };
            if let Some(f) = named {
                assert!(
                    !self.ended.contains(&f),
                    "action {a:?} names {f} after its FlightEnded"
                );
            }
            if let Action::FlightEnded { flight } = &a {
                self.ended.insert(*flight);
            }
            self.actions.push(a);
        }
        self.check();
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
