//! A small test driver over the pure core: every step checks the machine's
//! invariants, drains its actions, and checks that no action names a flight after
//! its `FlightEnded`.
#![allow(dead_code, missing_docs, unreachable_pub)]

use std::collections::BTreeSet;
use std::time::Duration;

use flightdeck_core::{
    Action, Bytes, Config, Failure, FlightId, Item, Key, Machine, Prepared, Readiness,
    RequestError, RequestId, Route, StaleFlight, Submission, SubmitError, Time,
};

/// Milliseconds as a `Time`.
pub fn ms(n: u64) -> Time {
    Time::from_millis(n)
}

/// Milliseconds as a `Duration`.
pub fn d(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A config whose deadlines are all distinct and short, so each test can name
/// exactly which one fires when.
pub fn config() -> Config {
    Config {
        queue_capacity: 8,
        max_concurrent_requests: 2,
        max_concurrent_streams: 1,
        max_response_bytes: 1024,
        cache_capacity: 4,
        cache_ttl: d(10_000),
        queue_timeout: d(1_000),
        preparation_timeout: d(2_000),
        stream_slot_timeout: d(3_000),
        stream_timeout: d(8_000),
        idle_timeout: d(1_500),
        attach_timeout: d(5_000),
        cancelled_retention: d(300),
        finished_retention: d(700),
    }
}

pub fn chunk(s: &'static str) -> Item {
    Item::Chunk(Bytes::from_static(s.as_bytes()))
}

pub struct Sim {
    pub m: Machine,
    pub now: Time,
    actions: Vec<Action>,
    ended: BTreeSet<FlightId>,
}

impl Sim {
    pub fn new(config: Config) -> Self {
        Sim {
            m: Machine::new(config).expect("valid config"),
            now: Time::ZERO,
            actions: Vec::new(),
            ended: BTreeSet::new(),
        }
    }

    pub fn default_test() -> Self {
        Sim::new(config())
    }

    /// Checks invariants and drains the machine's actions into the buffer.
    fn step(&mut self) {
        self.m
            .check_invariants()
            .unwrap_or_else(|e| panic!("after a step at {}: {e}", self.now));
        while let Some(a) = self.m.poll_action() {
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
    }

    /// The actions emitted since the last call.
    pub fn take(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    /// Moves the clock to `t` (ms) without handling deadlines.
    pub fn at(&mut self, t: u64) -> &mut Self {
        self.now = ms(t);
        self
    }

    pub fn try_submit(&mut self, key: impl Into<Key>) -> Result<Submission, SubmitError> {
        let r = self.m.submit(self.now, key.into());
        self.step();
        r
    }

    pub fn submit(&mut self, key: impl Into<Key>) -> Submission {
        self.try_submit(key).expect("submit accepted")
    }

    /// Submits and returns the new flight id (panics if it joined or was cached).
    pub fn submit_new(&mut self, key: impl Into<Key>) -> (RequestId, FlightId) {
        let s = self.submit(key);
        match s.route {
            Route::NewFlight(f) => (s.request, f),
            other => panic!("expected a new flight, got {other:?}"),
        }
    }

    pub fn try_attach(&mut self, r: RequestId) -> Result<(), RequestError> {
        let res = self.m.attach(self.now, r);
        self.step();
        res
    }

    pub fn attach(&mut self, r: RequestId) {
        self.try_attach(r).expect("attach accepted");
    }

    pub fn try_read(&mut self, r: RequestId) -> (Result<Readiness, RequestError>, Vec<Item>) {
        let mut out = Vec::new();
        let res = self.m.read(r, &mut out);
        self.step();
        (res, out)
    }

    pub fn read(&mut self, r: RequestId) -> Vec<Item> {
        let (res, out) = self.try_read(r);
        res.expect("read accepted");
        out
    }

    pub fn try_cancel(&mut self, r: RequestId) -> Result<(), RequestError> {
        let res = self.m.cancel(self.now, r);
        self.step();
        res
    }

    pub fn cancel(&mut self, r: RequestId) {
        self.try_cancel(r).expect("cancel accepted");
    }

    pub fn try_detach(&mut self, r: RequestId) -> Result<(), RequestError> {
        let res = self.m.detach(self.now, r);
        self.step();
        res
    }

    pub fn detach(&mut self, r: RequestId) {
        self.try_detach(r).expect("detach accepted");
    }

    pub fn try_prepared(
        &mut self,
        f: FlightId,
        result: Result<Prepared, Failure>,
    ) -> Result<(), StaleFlight> {
        let res = self.m.handle_prepared(self.now, f, result);
        self.step();
        res
    }

    pub fn prepared(&mut self, f: FlightId) {
        self.try_prepared(f, Ok(Prepared::CACHEABLE))
            .expect("flight was preparing");
    }

    pub fn try_chunk(&mut self, f: FlightId, data: &'static str) -> Result<(), StaleFlight> {
        let res = self
            .m
            .handle_chunk(self.now, f, Bytes::from_static(data.as_bytes()));
        self.step();
        res
    }

    pub fn chunk(&mut self, f: FlightId, data: &'static str) {
        self.try_chunk(f, data).expect("flight was streaming");
    }

    pub fn try_end(&mut self, f: FlightId, result: Result<(), Failure>) -> Result<(), StaleFlight> {
        let res = self.m.handle_upstream_end(self.now, f, result);
        self.step();
        res
    }

    pub fn end(&mut self, f: FlightId) {
        self.try_end(f, Ok(())).expect("flight was streaming");
    }

    /// Moves the clock to `t` (ms) and handles the deadlines due.
    pub fn tick(&mut self, t: u64) {
        self.now = ms(t);
        self.m.handle_timeout(self.now);
        self.step();
    }

    /// Handles every deadline in turn until none is left (retentions, cache).
    pub fn run_out_the_clock(&mut self) {
        while let Some(at) = self.m.poll_timeout() {
            assert!(at >= self.now, "a deadline in the past");
            self.now = at;
            self.m.handle_timeout(at);
            self.step();
        }
    }

    /// Submit, attach, prepare (all instantly) until the flight is streaming.
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
}
