//! The exhaustive explorer: a small model checker over [`World`].
//!
//! From the empty world it enumerates every op enabled in each state (submits
//! over the bounded keys, attach, read, cancel and drop of every client, every
//! preparation outcome, every chunk, upstream end and failure, late completions,
//! and time jumping to the next deadline) and follows all of them depth-first.
//! States are deduplicated by a 128-bit fingerprint of the whole world (machine
//! plus what clients and upstream know), computed with a deterministic hasher.
//! Every transition runs all of [`World::apply`]'s checks; every state in which
//! no user work is running is also run to quiescence on a copy
//! ([`World::finish`]), checking rules [7](flightdeck_core::contract#rule-7), [13](flightdeck_core::contract#rule-13), [14](flightdeck_core::contract#rule-14), [19](flightdeck_core::contract#rule-19) and [21](flightdeck_core::contract#rule-21).
//!
//! # Checking your own configuration
//! The explorer is a library API: build a [`Bound`] around your [`Config`] with
//! [`Bound::new`] and its setters, and call [`explore`] (progress lines on
//! standard error) or [`explore_with`] (your own progress callback). A
//! [`Bound::property`] adds a check of your own to every state. The `verify`
//! binary of this crate does the same from the command line.
//!
//! ```no_run
//! use flightdeck_tests::explore::{explore, Bound};
//! # let my_config = flightdeck_core::Config::default();
//! let bound = Bound::new(my_config).requests(3).keys(2).chunks(2).reads(true);
//! match explore(&bound) {
//!     Ok(report) => println!("{} states, every invariant holds", report.states),
//!     Err(counterexample) => panic!("{counterexample}"),
//! }
//! ```
//!
//! The state space grows very fast with `requests` (each request brings a
//! client that can attach, read, cancel and drop at every step): three requests
//! over two keys is a couple of million states (a minute); four is beyond what a
//! laptop explores in an hour unless reads are off and the limits are 1/1.
//!
//! On a violation the explorer shrinks the path of ops (drops every op and pair
//! of ops it can, and lowers indices, while a violation is still reached),
//! prints it and saves it as a postcard
//! [`Trace`] under [`std::env::temp_dir`].

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use flightdeck_core::Config;

use crate::trace::Trace;
use crate::world::{Op, World};

/// A check of your own that the explorer runs in every state it visits (after
/// the built-in ones). Return `Err` with a message to report a violation.
pub type Property = fn(&World) -> Result<(), String>;

/// The bound of an exploration: the configuration under test and how far the
/// explorer goes. Build one with [`Bound::new`] and the setters.
#[derive(Clone, Debug)]
pub struct Bound {
    /// The machine's configuration.
    pub config: Config,
    /// How many requests may be submitted in total.
    pub requests: usize,
    /// How many distinct keys submits choose from.
    pub keys: u8,
    /// How many chunks each upstream produces before it may complete.
    pub chunks: usize,
    /// Whether preparations may also succeed uncacheable.
    pub uncacheable: bool,
    /// Whether clients may read (reads are always done at quiescence).
    pub reads: bool,
    /// An extra check run in every state, if any (see [`Property`]).
    pub property: Option<Property>,
}

impl Bound {
    /// A bound around `config`: 3 requests over 2 keys, 2 chunks per upstream,
    /// cacheable results only, clients read only at quiescence, no extra
    /// property. Every timeout of `config` is explored in every order it can
    /// fire in, so small, distinct timeouts cost nothing extra.
    #[must_use]
    pub fn new(config: Config) -> Bound {
        Bound {
            config,
            requests: 3,
            keys: 2,
            chunks: 2,
            uncacheable: false,
            reads: false,
            property: None,
        }
    }

    /// How many requests may be submitted in total.
    #[must_use]
    pub fn requests(mut self, requests: usize) -> Bound {
        self.requests = requests;
        self
    }

    /// How many distinct keys submits choose from.
    #[must_use]
    pub fn keys(mut self, keys: u8) -> Bound {
        self.keys = keys;
        self
    }

    /// How many chunks each upstream produces before it may complete.
    #[must_use]
    pub fn chunks(mut self, chunks: usize) -> Bound {
        self.chunks = chunks;
        self
    }

    /// Whether preparations may also succeed uncacheable.
    #[must_use]
    pub fn uncacheable(mut self, uncacheable: bool) -> Bound {
        self.uncacheable = uncacheable;
        self
    }

    /// Whether clients may read at every step (else only at quiescence).
    #[must_use]
    pub fn reads(mut self, reads: bool) -> Bound {
        self.reads = reads;
        self
    }

    /// An extra check run in every state.
    #[must_use]
    pub fn property(mut self, property: Property) -> Bound {
        self.property = Some(property);
        self
    }

    /// The CI bound: 3 requests over 2 keys, limits 1/1, 2 chunks per flight;
    /// clients read only when run to quiescence (every idle state is).
    #[must_use]
    pub fn small() -> Bound {
        Bound::new(config(1, 1))
    }

    /// The reading CI bound: 2 requests over 2 keys, limits 1/1, 2 chunks per
    /// flight, uncacheable results too, and clients read at every step of the
    /// exploration, not only at quiescence.
    ///
    /// [`Bound::small`] never reads while work runs, so it cannot see what a
    /// reader that already holds chunks gets when its request is cancelled mid-
    /// stream ([rule 14](flightdeck_core::contract#rule-14), the Go "muted messenger"), nor a parked reader that is
    /// never woken. Reads multiply the state space, so this bound trades the
    /// third request for them; two requests still cover coalescing, a second
    /// key, cancel mid-stream with a reader and the slot handover.
    #[must_use]
    pub fn small_reading() -> Bound {
        Bound::new(config(1, 1))
            .requests(2)
            .uncacheable(true)
            .reads(true)
    }

    /// A larger bound: 4 requests over 2 keys, limits 2/1, uncacheable results too.
    #[must_use]
    pub fn large() -> Bound {
        Bound::new(config(2, 1))
            .requests(4)
            .uncacheable(true)
            .reads(true)
    }
}

/// A configuration with the given limits and distinct, small timeouts (so
/// every order of expiries is reachable).
#[must_use]
pub fn config(preparations: usize, streams: usize) -> Config {
    let ms = Duration::from_millis;
    Config {
        queue_capacity: 2,
        max_concurrent_requests: preparations,
        max_concurrent_streams: streams,
        max_response_bytes: 1 << 20,
        cache_capacity: 1,
        cache_ttl: ms(70),
        queue_timeout: ms(40),
        preparation_timeout: ms(30),
        stream_slot_timeout: ms(50),
        stream_timeout: ms(100),
        idle_timeout: ms(35),
        attach_timeout: ms(60),
        cancelled_retention: ms(20),
        finished_retention: ms(25),
        cluster: false,
    }
}

/// The result of a successful exploration.
#[derive(Clone, Copy, Debug)]
pub struct Report {
    /// Distinct states visited.
    pub states: usize,
    /// Transitions taken (including ones into known states).
    pub transitions: usize,
    /// Longest path.
    pub max_depth: usize,
    /// Wall time.
    pub elapsed: Duration,
}

/// A violation found by the explorer.
#[derive(Clone, Debug)]
pub struct Counterexample {
    /// The ops from the empty world to the violation, shrunk: no single op and
    /// no pair of ops can be removed, and no index lowered, with the path still
    /// reaching a violation.
    pub path: Vec<Op>,
    /// Length of the path as the depth-first search first found it.
    pub found_len: usize,
    /// The violation message.
    pub message: String,
    /// The recorded trace of the path (inputs and actions).
    pub trace: Trace,
    /// Where the trace was saved, if saving worked.
    pub saved: Option<std::path::PathBuf>,
}

impl std::fmt::Display for Counterexample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "VIOLATION: {}", self.message)?;
        writeln!(
            f,
            "path ({} ops, shrunk from {}):",
            self.path.len(),
            self.found_len
        )?;
        for (i, op) in self.path.iter().enumerate() {
            writeln!(f, "  {i:2}: {op:?}")?;
        }
        writeln!(f, "inputs:")?;
        for (t, input) in &self.trace.steps {
            writeln!(f, "  t={t} {input:?}")?;
        }
        if let Some(p) = &self.saved {
            writeln!(f, "trace saved to {}", p.display())?;
        }
        Ok(())
    }
}

fn fingerprint(world: &World) -> u128 {
    let mut a = DefaultHasher::new();
    world.hash(&mut a);
    let mut b = DefaultHasher::new();
    0xf1d3_u16.hash(&mut b);
    world.hash(&mut b);
    (u128::from(a.finish()) << 64) | u128::from(b.finish())
}

/// Every op enabled in `world` under `bound`.
#[must_use]
pub fn enabled(world: &World, bound: &Bound) -> Vec<Op> {
    let mut ops = Vec::new();
    let idx = |i: usize| u8::try_from(i).unwrap_or(u8::MAX);
    if world.clients.len() < bound.requests {
        for key in 0..bound.keys {
            ops.push(Op::Submit { key });
        }
    }
    for (i, c) in world.clients.iter().enumerate() {
        if c.dropped {
            continue;
        }
        if !c.attached {
            ops.push(Op::Attach(idx(i)));
        } else {
            if bound.reads && !c.parked && !c.closed {
                ops.push(Op::Read(idx(i)));
            }
            ops.push(Op::Detach(idx(i)));
        }
        if c.cancelled_at.is_none() {
            ops.push(Op::Cancel(idx(i)));
        }
    }
    for i in 0..world.preparing().len() {
        let i = idx(i);
        ops.push(Op::PrepareOk {
            which: i,
            cacheable: true,
        });
        if bound.uncacheable {
            ops.push(Op::PrepareOk {
                which: i,
                cacheable: false,
            });
        }
        ops.push(Op::PrepareFail(i));
    }
    for (i, f) in world.streaming().iter().enumerate() {
        let i = idx(i);
        if world.flights[f].log.len() < bound.chunks {
            ops.push(Op::Chunk(i));
        } else {
            ops.push(Op::UpstreamOk(i));
        }
        ops.push(Op::UpstreamFail(i));
    }
    for i in 0..world.ended().len() {
        ops.push(Op::Late(idx(i)));
    }
    if world.machine().poll_timeout().is_some() {
        ops.push(Op::NextDeadline);
    }
    ops
}

/// How many new states between two progress lines on standard error (the CI
/// bound prints two; a large bound shows it is alive).
const PROGRESS_EVERY: usize = 1_000_000;

/// Explores every interleaving within `bound`, printing a progress line on
/// standard error every million states.
///
/// # Errors
/// The first violation found, as a [`Counterexample`] (already printed and
/// saved), or the configuration is invalid (a counterexample with an empty path
/// whose message says so).
pub fn explore(bound: &Bound) -> Result<Report, Box<Counterexample>> {
    explore_with(bound, PROGRESS_EVERY, |r, depth| {
        crate::report!(
            "exploring: {} states, {} transitions, depth {} (deepest {}), {:.0} s",
            r.states,
            r.transitions,
            depth,
            r.max_depth,
            r.elapsed.as_secs_f64()
        );
    })
}

/// Like [`explore`], calling `progress` with the report so far and the current
/// depth every `every` new states (never, if `every` is zero).
///
/// # Errors
/// As [`explore`].
pub fn explore_with(
    bound: &Bound,
    every: usize,
    mut progress: impl FnMut(&Report, usize),
) -> Result<Report, Box<Counterexample>> {
    let start = Instant::now();
    let root = match World::new(bound.config.clone()) {
        Ok(world) => world,
        Err(e) => {
            return Err(Box::new(Counterexample {
                path: Vec::new(),
                found_len: 0,
                message: format!("invalid configuration: {e}"),
                trace: Trace {
                    config: bound.config.clone(),
                    steps: Vec::new(),
                    actions: None,
                },
                saved: None,
            }))
        }
    };
    let mut seen: HashSet<u128> = HashSet::new();
    seen.insert(fingerprint(&root));
    let mut report = Report {
        states: 1,
        transitions: 0,
        max_depth: 0,
        elapsed: Duration::ZERO,
    };
    // Depth-first: each frame is a state, its enabled ops and the next to try.
    let mut path: Vec<Op> = Vec::new();
    let mut stack: Vec<(World, Vec<Op>, usize)> = Vec::new();
    if let Err(v) = check_state(bound, &root) {
        return Err(counterexample(bound, &path, &v));
    }
    let ops = enabled(&root, bound);
    stack.push((root, ops, 0));
    while let Some((world, ops, next)) = stack.last_mut() {
        let Some(op) = ops.get(*next).cloned() else {
            stack.pop();
            path.pop();
            continue;
        };
        *next += 1;
        let mut child = world.clone();
        report.transitions += 1;
        path.push(op.clone());
        if let Err(v) = child.apply(&op) {
            return Err(counterexample(bound, &path, &v.0));
        }
        if !seen.insert(fingerprint(&child)) {
            path.pop();
            continue;
        }
        report.states += 1;
        report.max_depth = report.max_depth.max(path.len());
        if every > 0 && report.states % every == 0 {
            report.elapsed = start.elapsed();
            progress(&report, path.len());
        }
        if let Err(v) = check_state(bound, &child) {
            return Err(counterexample(bound, &path, &v));
        }
        let ops = enabled(&child, bound);
        stack.push((child, ops, 0));
    }
    report.elapsed = start.elapsed();
    Ok(report)
}

/// The checks of a newly reached state: quiescence, then the bound's property.
fn check_state(bound: &Bound, world: &World) -> Result<(), String> {
    quiescence(world)?;
    match bound.property {
        Some(property) => property(world).map_err(|v| format!("property: {v}")),
        None => Ok(()),
    }
}

/// In a state where no user work runs, runs a copy to quiescence and checks it.
fn quiescence(world: &World) -> Result<(), String> {
    if world.work_pending() {
        return Ok(());
    }
    let mut copy = world.clone();
    copy.finish().map_err(|v| format!("at quiescence: {v}"))
}

/// Replays `path` from the empty world with the explorer's checks (every
/// transition, and quiescence in every state without running work). Returns the
/// first violation and the length of the prefix that reached it.
fn replay(bound: &Bound, path: &[Op]) -> Option<(usize, String)> {
    let mut world = World::new(bound.config.clone()).expect("the bound's config is valid");
    if let Err(v) = check_state(bound, &world) {
        return Some((0, v));
    }
    for (i, op) in path.iter().enumerate() {
        if let Err(v) = world.apply(op) {
            return Some((i + 1, v.0));
        }
        if let Err(v) = check_state(bound, &world) {
            return Some((i + 1, v));
        }
    }
    None
}

/// Shrinks a violating path while some violation is still reached: drops
/// single ops, then pairs of ops (ops pick their targets by index, so a submit
/// often only goes together with an op naming its client), then lowers the
/// indices ops carry; repeats until none of these finds a shorter or simpler
/// path.
fn shrink(bound: &Bound, path: &[Op], message: &str) -> (Vec<Op>, String) {
    let mut best = path.to_vec();
    let mut msg = message.to_owned();
    let attempt = |candidate: Vec<Op>, best: &mut Vec<Op>, msg: &mut String| match replay(
        bound, &candidate,
    ) {
        Some((len, v)) => {
            *best = candidate;
            best.truncate(len);
            *msg = v;
            true
        }
        None => false,
    };
    'again: loop {
        for i in 0..best.len() {
            let mut candidate = best.clone();
            candidate.remove(i);
            if attempt(candidate, &mut best, &mut msg) {
                continue 'again;
            }
        }
        for i in 0..best.len() {
            for j in i + 1..best.len() {
                let mut candidate = best.clone();
                candidate.remove(j);
                candidate.remove(i);
                if attempt(candidate, &mut best, &mut msg) {
                    continue 'again;
                }
            }
        }
        for i in 0..best.len() {
            for op in lower(&best[i]) {
                let mut candidate = best.clone();
                candidate[i] = op;
                if attempt(candidate, &mut best, &mut msg) {
                    continue 'again;
                }
            }
        }
        break;
    }
    (best, msg)
}

/// The same op with each smaller index (the simpler variants tried first).
fn lower(op: &Op) -> Vec<Op> {
    let below = |n: u8| 0..n;
    match *op {
        Op::Submit { key } => below(key).map(|key| Op::Submit { key }).collect(),
        Op::Attach(n) => below(n).map(Op::Attach).collect(),
        Op::Read(n) => below(n).map(Op::Read).collect(),
        Op::Cancel(n) => below(n).map(Op::Cancel).collect(),
        Op::Detach(n) => below(n).map(Op::Detach).collect(),
        Op::PrepareOk { which, cacheable } => below(which)
            .map(|which| Op::PrepareOk { which, cacheable })
            .chain((!cacheable).then_some(Op::PrepareOk {
                which,
                cacheable: true,
            }))
            .collect(),
        Op::PrepareFail(n) => below(n).map(Op::PrepareFail).collect(),
        Op::Chunk(n) => below(n).map(Op::Chunk).collect(),
        Op::UpstreamOk(n) => below(n).map(Op::UpstreamOk).collect(),
        Op::UpstreamFail(n) => below(n).map(Op::UpstreamFail).collect(),
        Op::Late(n) => below(n).map(Op::Late).collect(),
        Op::NextDeadline | Op::Sleep(_) => Vec::new(),
    }
}

static SAVED: AtomicUsize = AtomicUsize::new(0);

fn counterexample(bound: &Bound, path: &[Op], message: &str) -> Box<Counterexample> {
    let found_len = path.len();
    let (path, message) = shrink(bound, path, message);
    // Re-run the path in a recording world to get the inputs and actions.
    let mut world = World::new(bound.config.clone())
        .expect("the bound's config is valid")
        .recording();
    for op in &path {
        if world.apply(op).is_err() {
            break;
        }
    }
    if message.starts_with("at quiescence") {
        let _ = world.finish();
    }
    let trace = Trace::from_world(&world);
    let file = std::env::temp_dir().join(format!(
        "flightdeck-counterexample-{}-{}.trace",
        std::process::id(),
        SAVED.fetch_add(1, Ordering::Relaxed)
    ));
    let saved = trace.save(&file).ok().map(|()| file);
    let cx = Box::new(Counterexample {
        path,
        found_len,
        message,
        trace,
        saved,
    });
    eprintln!("{cx}");
    cx
}
