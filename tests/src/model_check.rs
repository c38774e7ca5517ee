//! The reference-model check as a library: the core and the naive model
//! ([`crate::model`]) side by side over random input sequences.
//!
//! Each case draws a configuration (fixed with [`check`], random with
//! [`check_configs`] and [`random_configs`]) and a sequence of ops: submits
//! over three keys (and an empty one), attach, read, cancel, detach,
//! preparation results, chunks, upstream ends and failures, late completions
//! for any flight id ever issued, time jumps to the next deadline or by a few
//! milliseconds (with or without the timer firing), and an occasional shutdown.
//! Half the configurations have cluster mode on; their cases also answer claims
//! (owner, follower, cached, unavailable), feed followers their owner's chunks,
//! end or lose followers' owners, fence owners, and send every cluster input
//! late (contract rules 25-29).
//! Every op is applied to both the core ([`Machine::handle`]) and the model, and
//! after every step the check demands:
//!
//! - the same reply (submission, error, readiness and the items read);
//! - the same actions, compared with [`normalise_actions`] (everything the
//!   contract fixes: per-flight order, FIFO slot order, the set of wakes);
//! - the same status for every request id ever issued (and one beyond), the same
//!   stats, the same `poll_timeout`;
//! - every check of the harness's driver ([`crate::driver`]): the core's
//!   invariants, no action after a flight's end, starts in the right phase and
//!   within the limits, aborts of running work only;
//! - each reader's items so far are chunks followed by at most one end, and
//!   nothing after it ([rule 19](flightdeck_core::contract#rule-19)), independently of both.
//!
//! At the end every client drops its stream and time runs through every
//! deadline; both must then be empty ([rule 21](flightdeck_core::contract#rule-21)).
//!
//! # Checking your own configuration
//! ```no_run
//! # let my_config = flightdeck_core::Config::default();
//! match flightdeck_tests::model_check::check(my_config, 1000, 150) {
//!     Ok(report) => println!("{} cases agree with the model", report.cases),
//!     Err(counterexample) => panic!("{counterexample}"),
//! }
//! ```
//!
//! The core is deterministic and knows nothing of its configuration's values
//! beyond comparing times and counts, so the model check is most useful with
//! small limits and short, close timeouts: that is where orders of events
//! interleave.

use core::time::Duration;
use std::cell::RefCell;
use std::collections::BTreeMap;

use crate::driver::Driver;
use crate::model::{normalise_actions, Model};
use flightdeck_core::{
    Action, Bytes, Config, Failure, FlightId, Input, Item, Key, Machine, Outcome, Prepared,
    Readiness, Reply, RequestError, RequestId, RequestState, RequestStatus, Role, Route,
    StaleFlight, SubmitError, Time, Work,
};
use proptest::prelude::*;
use proptest::test_runner::{Config as PtConfig, FileFailurePersistence, TestError, TestRunner};

/// One step of a model-check case (see the module docs). Unlike
/// [`crate::world::Op`], which picks among the clients a world knows, these name
/// raw request and flight ids, including ones never issued, so that the model
/// is compared on every "not found" and stale answer too.
#[derive(Clone, Debug)]
pub enum Op {
    /// Submit key `k0`..`k2`; 3 is the empty key.
    Submit(u8),
    /// Attach to request id `i` (one past the last issued: not found).
    Attach(u8),
    /// Read request id `i`.
    Read(u8),
    /// Cancel request id `i`.
    Cancel(u8),
    /// Detach request id `i`.
    Detach(u8),
    /// A running preparation (picked by index) succeeds.
    PrepareOk {
        /// Which running preparation.
        which: u8,
        /// Whether the result may be cached.
        cacheable: bool,
    },
    /// A running preparation fails.
    PrepareFail(u8),
    /// A running upstream produces a chunk of `len` bytes.
    Chunk {
        /// Which running upstream.
        which: u8,
        /// The chunk's length.
        len: u8,
    },
    /// A running upstream completes.
    UpstreamOk(u8),
    /// A running upstream fails.
    UpstreamFail(u8),
    /// A completion of kind `kind % 3` for flight id `flight % (flights + 1)`,
    /// whatever its phase: mostly stale ([rule 16](flightdeck_core::contract#rule-16)).
    Late {
        /// The flight id (modulo the flights created, plus one).
        flight: u8,
        /// Which completion.
        kind: u8,
    },
    /// Time jumps to the core's next deadline, which is handled.
    NextDeadline,
    /// Time moves `ms` forward; the timer runs only if `fire`.
    Sleep {
        /// Milliseconds.
        ms: u8,
        /// Whether the driver's timer runs (else the next input comes late).
        fire: bool,
    },
    /// The manager shuts down.
    Shutdown,
    /// Cluster mode: a claiming flight's claim is answered with role
    /// `role % 4`: owner, follower, cached (`role / 4 % 3` chunks), unavailable.
    Claimed {
        /// Which claiming flight.
        which: u8,
        /// Which answer.
        role: u8,
    },
    /// Cluster mode: a following flight receives a chunk of `len` bytes of its
    /// owner's log.
    RemoteChunk {
        /// Which following flight.
        which: u8,
        /// The chunk's length.
        len: u8,
    },
    /// Cluster mode: a following flight's owner ends: completed, failed,
    /// cancelled, shut down or timed out (`kind % 5`).
    RemoteEnd {
        /// Which following flight.
        which: u8,
        /// How the owner ended.
        kind: u8,
    },
    /// Cluster mode: a following flight's owner is lost.
    OwnerLost(u8),
    /// Cluster mode: an owner flight is fenced (its lease is lost).
    Fenced(u8),
}

/// The op strategy, weighted so that flights reach streaming with readers.
pub fn op() -> impl Strategy<Value = Op> {
    let idx = any::<u8>;
    // Weights: enough client and upstream traffic for flights to reach
    // streaming with readers attached; deadlines and shutdown rarer, since each
    // ends a lot at once.
    prop_oneof![
        30 => (0u8..3).prop_map(Op::Submit),
        2 => Just(Op::Submit(3)),
        30 => idx().prop_map(Op::Attach),
        40 => idx().prop_map(Op::Read),
        12 => idx().prop_map(Op::Cancel),
        8 => idx().prop_map(Op::Detach),
        30 => (idx(), any::<bool>()).prop_map(|(which, cacheable)| Op::PrepareOk { which, cacheable }),
        3 => idx().prop_map(Op::PrepareFail),
        40 => (idx(), 0u8..5).prop_map(|(which, len)| Op::Chunk { which, len }),
        12 => idx().prop_map(Op::UpstreamOk),
        3 => idx().prop_map(Op::UpstreamFail),
        8 => (idx(), idx()).prop_map(|(flight, kind)| Op::Late { flight, kind }),
        8 => Just(Op::NextDeadline),
        12 => (0u8..25, any::<bool>()).prop_map(|(ms, fire)| Op::Sleep { ms, fire }),
        1 => Just(Op::Shutdown),
        // Cluster mode (nothing to act on when the case's config has it off).
        24 => (idx(), any::<u8>()).prop_map(|(which, role)| Op::Claimed { which, role }),
        24 => (idx(), 0u8..5).prop_map(|(which, len)| Op::RemoteChunk { which, len }),
        5 => (idx(), any::<u8>()).prop_map(|(which, kind)| Op::RemoteEnd { which, kind }),
        4 => idx().prop_map(Op::OwnerLost),
        3 => idx().prop_map(Op::Fenced),
    ]
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Random small configurations: limits 1-2, a queue of 1-3, a cache of 0-2,
/// deadlines of 5-60 ms on a 5 ms grid (so that they often coincide), cluster
/// mode on in half of them.
pub fn random_configs() -> impl Strategy<Value = Config> {
    let t = || (1u64..=12).prop_map(|n| ms(5 * n));
    (
        (1usize..=3, 1usize..=2, 1usize..=2, 4u64..=12, 0usize..=2),
        (t(), t(), t(), t(), t(), t()),
        (t(), t(), t(), any::<bool>()),
    )
        .prop_map(
            |(
                (queue, preps, streams, bytes, cache),
                (ttl, queue_t, prep_t, slot_t, stream_t, idle_t),
                (attach_t, cancelled_r, finished_r, cluster),
            )| Config {
                queue_capacity: queue,
                max_concurrent_requests: preps,
                max_concurrent_streams: streams,
                max_response_bytes: bytes,
                cache_capacity: cache,
                cache_ttl: ttl,
                queue_timeout: queue_t,
                preparation_timeout: prep_t,
                stream_slot_timeout: slot_t,
                stream_timeout: stream_t,
                idle_timeout: idle_t,
                attach_timeout: attach_t,
                cancelled_retention: cancelled_r,
                finished_retention: finished_r,
                cluster,
            },
        )
}

/// What the clients and the upstream of a case know beyond the driver: what
/// each reader read, and how many chunks were made (for distinct contents).
#[derive(Default)]
struct Clients {
    /// Items each request's reader got so far, by raw id.
    items: Vec<Vec<Item>>,
    chunks: u64,
}

impl Clients {
    fn pick(list: &[FlightId], which: u8) -> Option<FlightId> {
        let n = u64::try_from(list.len()).ok()?.checked_sub(1)?;
        list.get(usize::try_from(index(which, n)).ok()?).copied()
    }

    fn next_chunk(&mut self, len: u8) -> Bytes {
        self.chunks += 1;
        // Distinct contents, so a chunk delivered twice or out of order shows.
        let tag = u8::try_from(self.chunks % 251).unwrap_or(0);
        Bytes::from(vec![tag; usize::from(len)])
    }
}

/// Index `i` into `0..=max`: `i` itself when it fits, so that proptest shrinks an
/// index straight to the id it means (removing later ops does not change it),
/// else wrapped.
fn index(i: u8, max: u64) -> u64 {
    let i = u64::from(i);
    if i <= max {
        i
    } else {
        i % (max + 1)
    }
}

fn key(k: u8) -> Key {
    match k {
        0 => Key::from("k0"),
        1 => Key::from("k1"),
        2 => Key::from("k2"),
        _ => Key::new(Bytes::new()),
    }
}

/// Turns an op into an input, using what the driver and the model know. `None`
/// when the op has nothing to act on (no running preparation, say).
fn to_input(
    op: &Op,
    now: &mut Time,
    driver: &mut Clients,
    model: &Model,
    core: &Driver,
) -> Option<Input> {
    // The raw id, or one past the last issued (not found).
    let request = |i: &u8| RequestId::from_raw(index(*i, model.requests_submitted()));
    Some(match op {
        Op::Submit(k) => Input::Submit { key: key(*k) },
        Op::Attach(i) => Input::Attach {
            request: request(i),
        },
        Op::Read(i) => Input::Read {
            request: request(i),
        },
        Op::Cancel(i) => Input::Cancel {
            request: request(i),
        },
        Op::Detach(i) => Input::Detach {
            request: request(i),
        },
        Op::PrepareOk { which, cacheable } => {
            let flight = Clients::pick(&core.running_preparations(), *which)?;
            let result = Ok(if *cacheable {
                Prepared::CACHEABLE
            } else {
                Prepared::UNCACHEABLE
            });
            Input::Prepared { flight, result }
        }
        Op::PrepareFail(which) => {
            let flight = Clients::pick(&core.running_preparations(), *which)?;
            let result = Err(Failure::Preparation("no".into()));
            Input::Prepared { flight, result }
        }
        Op::Chunk { which, len } => {
            let flight = Clients::pick(&core.running_streams(), *which)?;
            Input::Chunk {
                flight,
                data: driver.next_chunk(*len),
            }
        }
        Op::UpstreamOk(which) => {
            let flight = Clients::pick(&core.running_streams(), *which)?;
            Input::UpstreamEnded {
                flight,
                result: Ok(()),
            }
        }
        Op::UpstreamFail(which) => {
            let flight = Clients::pick(&core.running_streams(), *which)?;
            let result = Err(Failure::Panicked {
                work: Work::Stream,
                message: "boom".into(),
            });
            Input::UpstreamEnded { flight, result }
        }
        Op::Late { flight, kind } => {
            let flight = FlightId::from_raw(index(*flight, model.flights_created()));
            match kind % 7 {
                0 => Input::Prepared {
                    flight,
                    result: Ok(Prepared::CACHEABLE),
                },
                1 => Input::Chunk {
                    flight,
                    data: driver.next_chunk(1),
                },
                2 => Input::UpstreamEnded {
                    flight,
                    result: Ok(()),
                },
                3 => Input::Claimed {
                    flight,
                    role: Role::Owner,
                },
                4 => Input::RemoteEnded {
                    flight,
                    outcome: Outcome::Completed,
                },
                5 => Input::OwnerLost { flight },
                _ => Input::Fenced {
                    flight,
                    reason: "late".into(),
                },
            }
        }
        Op::Claimed { which, role } => {
            let flight = Clients::pick(&core.claiming_flights(), *which)?;
            let role = match role % 4 {
                0 => Role::Owner,
                1 => Role::Follower,
                2 => Role::Cached(
                    (0..role / 4 % 3)
                        .map(|n| driver.next_chunk(n + 1))
                        .collect(),
                ),
                _ => Role::Unavailable("redis down".into()),
            };
            Input::Claimed { flight, role }
        }
        Op::RemoteChunk { which, len } => {
            let flight = Clients::pick(&core.following_flights(), *which)?;
            Input::Chunk {
                flight,
                data: driver.next_chunk(*len),
            }
        }
        Op::RemoteEnd { which, kind } => {
            let flight = Clients::pick(&core.following_flights(), *which)?;
            let outcome = match kind % 5 {
                0 => Outcome::Completed,
                1 => Outcome::Failed(Failure::Upstream("remote".into())),
                2 => Outcome::Cancelled,
                3 => Outcome::Failed(Failure::Shutdown),
                _ => Outcome::TimedOut(flightdeck_core::Phase::Stream),
            };
            Input::RemoteEnded { flight, outcome }
        }
        Op::OwnerLost(which) => {
            let flight = Clients::pick(&core.following_flights(), *which)?;
            Input::OwnerLost { flight }
        }
        Op::Fenced(which) => {
            let flight = Clients::pick(&core.owner_flights(), *which)?;
            Input::Fenced {
                flight,
                reason: "lease lost".into(),
            }
        }
        Op::NextDeadline => {
            if let Some(at) = core.machine.poll_timeout() {
                *now = (*now).max(at);
            }
            Input::Timeout
        }
        Op::Sleep { ms: n, fire } => {
            *now = *now + ms(u64::from(*n));
            if !fire {
                // Time passes, but the driver's timer has not run yet: the next
                // input is stamped later than a deadline nobody handled.
                return None;
            }
            Input::Timeout
        }
        Op::Shutdown => Input::Shutdown,
    })
}

/// Applies `input` to both and compares everything observable.
fn step(
    n: usize,
    now: Time,
    input: &Input,
    core: &mut Driver,
    model: &mut Model,
    driver: &mut Clients,
    seen: &mut Seen,
) -> Result<(), TestCaseError> {
    let before = match input {
        Input::Attach { request } | Input::Cancel { request } => model.status(*request),
        _ => None,
    };
    core.now = now;
    // The driver checks the core's invariants and its actions after the step.
    let got = core
        .try_handle(input.clone())
        .map_err(|v| TestCaseError::fail(format!("step {n}: {input:?} at {now}: {v}")))?;
    seen.log.push(format!("{n:>3} @{now} {input:?} => {got:?}"));
    let want = model.handle(now, input.clone());
    prop_assert_eq!(
        Some(&got),
        want.as_ref(),
        "step {}: reply to {:?} at {}",
        n,
        input,
        now
    );
    let actions = core.take();
    let predicted = model.take_actions();
    prop_assert_eq!(
        normalise_actions(&actions),
        normalise_actions(&predicted),
        "step {}: actions after {:?} at {} (core {:?}, model {:?})",
        n,
        input,
        now,
        actions,
        predicted
    );
    note_step(seen, input, before.as_ref(), &got, &actions);
    compare_observations(n, &core.machine, model, seen)?;
    if let (Input::Read { request }, Reply::Read(result, items)) = (input, &got) {
        check_reader(n, *request, result, items, driver, seen)?;
    }
    Ok(())
}

/// What a run saw: coverage counters, and the inputs applied (for a readable
/// failure report).
#[derive(Default)]
struct Seen {
    counts: BTreeMap<String, u64>,
    log: Vec<String>,
}

fn see(seen: &mut Seen, what: &str) {
    *seen.counts.entry(what.to_owned()).or_default() += 1;
}

fn note_step(
    seen: &mut Seen,
    input: &Input,
    before: Option<&RequestStatus>,
    reply: &Reply,
    actions: &[Action],
) {
    let cancelled_before = before.is_some_and(|s| s.state == RequestState::Cancelled);
    if reply == &Reply::Flight(Ok(())) {
        match input {
            Input::Claimed { role, .. } => see(
                seen,
                match role {
                    Role::Owner => "claimed owner",
                    Role::Follower => "claimed follower",
                    Role::Cached(_) => "claimed cached",
                    _ => "claimed unavailable",
                },
            ),
            Input::RemoteEnded { .. } => see(seen, "remote end"),
            Input::OwnerLost { .. } => see(seen, "owner lost"),
            Input::Fenced { .. } => see(seen, "fenced"),
            _ => {}
        }
    }
    match reply {
        Reply::Submit(Ok(s)) => match s.route {
            Route::Joined(_) => see(seen, "route joined"),
            Route::Cached => see(seen, "route cached"),
            _ => see(seen, "route new flight"),
        },
        Reply::Submit(Err(SubmitError::QueueFull { .. })) => see(seen, "submit queue full"),
        Reply::Submit(Err(SubmitError::EmptyKey)) => see(seen, "submit empty key"),
        Reply::Submit(Err(SubmitError::ShuttingDown)) => see(seen, "submit shutting down"),
        Reply::Request(Ok(())) if cancelled_before => {
            // An attach or a cancel on a record that was already cancelled.
            see(seen, "attach to a cancelled record or cancel again");
        }
        Reply::Request(Err(RequestError::AlreadyFinished(_))) => see(seen, "cancel finished"),
        Reply::Flight(Err(StaleFlight)) => see(seen, "late completion refused"),
        _ => {}
    }
    for action in actions {
        match action {
            Action::Abort {
                work: Work::Preparation,
                ..
            } => see(seen, "abort preparation"),
            Action::Abort { .. } => see(seen, "abort stream"),
            Action::Wake { .. } => see(seen, "wake"),
            Action::Publish { .. } => see(seen, "publish"),
            Action::Release {
                cacheable: true, ..
            } => see(seen, "release cacheable"),
            Action::Release { .. } => see(seen, "release"),
            Action::Claim { .. }
                if matches!(input, Input::OwnerLost { .. } | Input::RemoteEnded { .. }) =>
            {
                see(seen, "re-claim after owner lost");
            }
            _ => {}
        }
    }
}

fn compare_observations(
    n: usize,
    machine: &Machine,
    model: &Model,
    seen: &mut Seen,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(machine.stats(), model.stats(), "step {}: stats", n);
    prop_assert_eq!(
        machine.poll_timeout(),
        model.poll_timeout(),
        "step {}: poll_timeout",
        n
    );
    for raw in 0..=model.requests_submitted() {
        let id = RequestId::from_raw(raw);
        let status = machine.status(id);
        prop_assert_eq!(&status, &model.status(id), "step {}: status of {}", n, id);
        match status.map(|s| s.state) {
            Some(RequestState::Done(Outcome::TimedOut(phase))) => {
                see(seen, &format!("timed out {phase:?}"));
            }
            Some(RequestState::Done(Outcome::Failed(Failure::ResponseTooLarge { .. }))) => {
                see(seen, "response too large");
            }
            Some(RequestState::Claiming) => see(seen, "state claiming"),
            Some(RequestState::Following) => see(seen, "state following"),
            _ => {}
        }
    }
    Ok(())
}

/// [Rule 19](flightdeck_core::contract#rule-19) on its own, independent of the model: chunks, then one end, then nothing.
fn check_reader(
    n: usize,
    request: RequestId,
    result: &Result<Readiness, flightdeck_core::RequestError>,
    items: &[Item],
    driver: &mut Clients,
    seen: &mut Seen,
) -> Result<(), TestCaseError> {
    let Ok(readiness) = result else {
        prop_assert!(
            items.is_empty(),
            "step {}: a refused read returned items",
            n
        );
        return Ok(());
    };
    let slot = usize::try_from(request.raw()).unwrap_or(usize::MAX);
    if driver.items.len() <= slot {
        driver.items.resize(slot + 1, Vec::new());
    }
    let so_far = &mut driver.items[slot];
    let ended = matches!(so_far.last(), Some(Item::End(_)));
    match readiness {
        Readiness::Closed => {
            see(seen, "read closed");
            prop_assert!(
                ended && items.is_empty(),
                "step {}: Closed before the end",
                n
            );
        }
        Readiness::Pending => {
            see(seen, "read pending");
            prop_assert!(!ended && items.is_empty(), "step {}: Pending with items", n);
        }
        _ => {
            prop_assert!(!ended, "step {}: {} read after its end", n, request);
            prop_assert!(!items.is_empty(), "step {}: Ready with nothing", n);
            let ends = items.iter().filter(|i| matches!(i, Item::End(_))).count();
            prop_assert!(ends <= 1, "step {}: two ends in one read", n);
            prop_assert!(
                ends == 0 || matches!(items.last(), Some(Item::End(_))),
                "step {}: the end is not last",
                n
            );
            if items.iter().any(|i| matches!(i, Item::Chunk(_))) {
                see(seen, "read chunks");
            }
        }
    }
    so_far.extend(items.iter().cloned());
    let had_chunks = so_far.iter().any(|i| matches!(i, Item::Chunk(_)));
    // Only the read that returned the end counts, not later `Closed` reads.
    match items.last().filter(|_| had_chunks) {
        Some(Item::End(Outcome::Completed)) => see(seen, "end completed after chunks"),
        Some(Item::End(Outcome::Cancelled)) if items.len() == 1 => {
            // Cancelled mid-stream: chunks in earlier reads, then only the end.
            see(seen, "end cancelled after chunks");
        }
        Some(Item::End(Outcome::Failed(Failure::OwnerLost))) => {
            see(seen, "end failed after chunks");
            see(seen, "end owner lost after chunks");
        }
        Some(Item::End(Outcome::Failed(_))) => see(seen, "end failed after chunks"),
        _ => {}
    }
    Ok(())
}

fn run(config: Config, ops: &[Op], seen: &mut Seen) -> Result<(), TestCaseError> {
    seen.log.clear();
    let mut core =
        Driver::try_new(config.clone()).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let mut model = Model::new(config).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let mut driver = Clients::default();
    let mut now = Time::ZERO;
    for (n, op) in ops.iter().enumerate() {
        let Some(input) = to_input(op, &mut now, &mut driver, &model, &core) else {
            compare_observations(n, &core.machine, &model, seen)?;
            continue;
        };
        step(n, now, &input, &mut core, &mut model, &mut driver, seen)?;
    }
    // Quiescence: every client drops its stream, then time runs out every
    // deadline (running work is never reported again; its deadlines end it).
    let mut n = ops.len();
    for raw in 0..model.requests_submitted() {
        let request = RequestId::from_raw(raw);
        if model.status(request).is_some_and(|s| s.attached) {
            step(
                n,
                now,
                &Input::Detach { request },
                &mut core,
                &mut model,
                &mut driver,
                seen,
            )?;
            n += 1;
        }
    }
    while let Some(at) = core.machine.poll_timeout() {
        now = now.max(at);
        step(
            n,
            now,
            &Input::Timeout,
            &mut core,
            &mut model,
            &mut driver,
            seen,
        )?;
        n += 1;
        prop_assert!(n < ops.len() + 10_000, "deadlines never run out");
    }
    prop_assert!(
        core.machine.is_empty(),
        "contract rule 21: the core holds something at quiescence"
    );
    prop_assert!(
        model.is_empty(),
        "contract rule 21: the model holds something at quiescence"
    );
    Ok(())
}

/// The interactions a run must have exercised at least once, so that a passing
/// run means something (a strategy that never reaches a phase proves nothing).
pub const MUST_SEE: &[&str] = &[
    "route joined",
    "route cached",
    "submit queue full",
    "submit empty key",
    "submit shutting down",
    "read chunks",
    "read pending",
    "read closed",
    "end completed after chunks",
    "end cancelled after chunks",
    "end failed after chunks",
    "attach to a cancelled record or cancel again",
    "cancel finished",
    "late completion refused",
    "abort preparation",
    "abort stream",
    "wake",
    "timed out Queue",
    "timed out Preparation",
    "timed out StreamSlot",
    "timed out Stream",
    "timed out Idle",
    "timed out Attach",
    "response too large",
    // Cluster mode (contract rules 25-29).
    "claimed owner",
    "claimed follower",
    "claimed cached",
    "claimed unavailable",
    "state claiming",
    "state following",
    "publish",
    "release",
    "release cacheable",
    "remote end",
    "owner lost",
    "re-claim after owner lost",
    "end owner lost after chunks",
    "fenced",
];

/// What a passing model check did.
#[derive(Clone, Debug)]
pub struct CheckReport {
    /// Cases run.
    pub cases: u32,
    /// Wall time.
    pub elapsed: std::time::Duration,
    /// How often each interaction of [`MUST_SEE`] (and a few more) happened
    /// over all cases: a check that never reached a phase proves nothing there.
    pub coverage: BTreeMap<String, u64>,
}

impl CheckReport {
    /// The interactions of [`MUST_SEE`] that no case reached.
    #[must_use]
    pub fn unreached(&self) -> Vec<&'static str> {
        MUST_SEE
            .iter()
            .copied()
            .filter(|what| self.coverage.get(*what).copied().unwrap_or(0) == 0)
            .collect()
    }
}

/// A case where the core and the model disagree (or an invariant broke).
#[derive(Clone, Debug)]
pub struct ModelCounterexample {
    /// Proptest's failure (the shrunk case and the first disagreement).
    pub message: String,
    /// The greedily minimised ops, the disagreement and the inputs applied.
    pub minimised: String,
}

impl std::fmt::Display for ModelCounterexample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}\n{}", self.message, self.minimised)
    }
}

/// Options of [`check_configs`].
#[derive(Clone, Debug)]
pub struct Options {
    /// Cases to run.
    pub cases: u32,
    /// Ops per case, at most (exclusive).
    pub max_ops: usize,
    /// A proptest regressions file: failures are saved there and replayed
    /// first on every run.
    pub regressions: Option<&'static str>,
}

/// Runs `cases` random cases of up to `max_ops` ops against `config`.
///
/// # Errors
/// The first disagreement, shrunk and minimised; or the configuration is
/// invalid (the message says so).
pub fn check(
    config: Config,
    cases: u32,
    max_ops: usize,
) -> Result<CheckReport, Box<ModelCounterexample>> {
    if let Err(e) = config.validate() {
        return Err(Box::new(ModelCounterexample {
            message: format!("invalid configuration: {e}"),
            minimised: String::new(),
        }));
    }
    let options = Options {
        cases,
        max_ops,
        regressions: None,
    };
    check_configs(Just(config), &options)
}

/// Runs random cases with configurations drawn from `configs`.
///
/// # Errors
/// The first disagreement, shrunk and minimised.
pub fn check_configs(
    configs: impl Strategy<Value = Config>,
    options: &Options,
) -> Result<CheckReport, Box<ModelCounterexample>> {
    let coverage = RefCell::new(Seen::default());
    let mut runner = TestRunner::new(PtConfig {
        cases: options.cases,
        failure_persistence: options.regressions.map(|file| {
            Box::new(FileFailurePersistence::Direct(file))
                as Box<dyn proptest::test_runner::FailurePersistence>
        }),
        ..PtConfig::default()
    });
    let strategy = (
        configs,
        prop::collection::vec(op(), 1..options.max_ops.max(2)),
    );
    let started = std::time::Instant::now();
    let result = runner.run(&strategy, |(config, ops)| {
        run(config, &ops, &mut coverage.borrow_mut())
    });
    if let Err(error) = result {
        let minimised = match &error {
            TestError::Fail(_, (config, ops)) => minimise(config, ops),
            TestError::Abort(_) => String::new(),
        };
        return Err(Box::new(ModelCounterexample {
            message: error.to_string(),
            minimised,
        }));
    }
    Ok(CheckReport {
        cases: options.cases,
        elapsed: started.elapsed(),
        coverage: coverage.into_inner().counts,
    })
}

/// Proptest's shrinking removes ops and shrinks indices, but cannot remove an op
/// whose removal renumbers later requests. This greedy pass removes any single op
/// whose removal keeps the failure, until none can go, and returns a report: the
/// ops left and the inputs they applied, with the core's replies.
fn minimise(config: &Config, ops: &[Op]) -> String {
    let fails = |ops: &[Op]| run(config.clone(), ops, &mut Seen::default()).is_err();
    let mut ops = ops.to_vec();
    let mut shrunk = true;
    while shrunk {
        shrunk = false;
        for i in (0..ops.len()).rev() {
            let mut fewer = ops.clone();
            fewer.remove(i);
            if fails(&fewer) {
                ops = fewer;
                shrunk = true;
            }
        }
    }
    let mut seen = Seen::default();
    let why = match run(config.clone(), &ops, &mut seen) {
        Err(e) => e.to_string(),
        Ok(()) => "passes?".into(),
    };
    format!(
        "greedily minimised to {} ops: {ops:?}\nfails with: {why}\ninputs applied (core replies):\n{}",
        ops.len(),
        seen.log.join("\n")
    )
}
