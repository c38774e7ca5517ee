//! What the conformance scenarios and the stress test share: a scriptable
//! preparer and upstream that count what they do and notice being dropped, and a
//! reader that checks [rule 19](flightdeck_core::contract#rule-19).
//!
//! It lives in the harness library (rather than being included by path into each
//! test binary) so that `tests/tests/conformance` and `tests/tests/stress.rs` use
//! one copy, compiled once.

#![allow(dead_code, unreachable_pub)]

use std::future::{pending, Future};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use flightdeck_tokio::driver::{Manager, Preparation, ResultStream};
use flightdeck_tokio::{Bytes, Config, Item, Outcome};
use futures_lite::future;

use crate::runtimes::{TestRt, DELIBERATE};

/// How a scripted preparation goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prep {
    /// Succeeds.
    Ok,
    /// Returns an error.
    Fail,
    /// Panics (deliberately).
    Panic,
    /// Never finishes.
    Hang,
}

/// How a scripted upstream open goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Open {
    /// Opens the stream.
    Ok,
    /// Returns an error.
    Fail,
    /// Panics (deliberately).
    Panic,
    /// Never opens.
    Hang,
}

/// What a scripted upstream does after its chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Then {
    /// Ends successfully.
    Complete,
    /// Ends with an error.
    Fail,
    /// Panics (deliberately).
    Panic,
    /// Goes silent forever.
    Hang,
    /// Never stops producing chunks.
    Forever,
}

/// A script for one flight; it is the submit's payload.
#[derive(Clone, Debug)]
pub struct Plan {
    /// How the preparation goes.
    pub prep: Prep,
    /// How long the preparation takes.
    pub prep_delay: Duration,
    /// Whether the prepared result may be cached.
    pub cacheable: bool,
    /// How opening the upstream goes.
    pub open: Open,
    /// How many chunks the upstream produces.
    pub chunks: usize,
    /// The pause before each chunk (zero: yield only).
    pub chunk_delay: Duration,
    /// What the upstream does after its chunks.
    pub then: Then,
}

impl Default for Plan {
    fn default() -> Self {
        Plan {
            prep: Prep::Ok,
            prep_delay: Duration::ZERO,
            cacheable: true,
            open: Open::Ok,
            chunks: 3,
            chunk_delay: Duration::from_millis(1),
            then: Then::Complete,
        }
    }
}

impl Plan {
    /// The default plan with `n` chunks.
    #[must_use]
    pub fn chunks(n: usize) -> Self {
        Plan {
            chunks: n,
            ..Plan::default()
        }
    }

    /// A chunk every `d`.
    #[must_use]
    pub fn every(mut self, d: Duration) -> Self {
        self.chunk_delay = d;
        self
    }

    /// What happens after the chunks.
    #[must_use]
    pub fn then(mut self, then: Then) -> Self {
        self.then = then;
        self
    }

    /// How the preparation goes, after `delay`.
    #[must_use]
    pub fn prep(mut self, prep: Prep, delay: Duration) -> Self {
        self.prep = prep;
        self.prep_delay = delay;
        self
    }

    /// How opening the upstream goes.
    #[must_use]
    pub fn open(mut self, open: Open) -> Self {
        self.open = open;
        self
    }

    /// The prepared result may not be cached.
    #[must_use]
    pub fn uncacheable(mut self) -> Self {
        self.cacheable = false;
        self
    }
}

/// The text of chunk `i`.
#[must_use]
pub fn chunk(i: usize) -> String {
    format!("c{i} ")
}

/// The text of chunks `0..n`.
#[must_use]
pub fn text(n: usize) -> String {
    (0..n).map(chunk).collect()
}

/// Counters the scripted user code updates.
#[derive(Debug, Default)]
pub struct Probe {
    /// Preparations started.
    pub prepares: AtomicUsize,
    /// Preparations that ran to their end (success or failure).
    pub prepares_done: AtomicUsize,
    /// Preparation futures dropped (finished or aborted).
    pub prepares_dropped: AtomicUsize,
    /// Upstream opens started.
    pub opens: AtomicUsize,
    /// Upstream streams dropped (finished or aborted).
    pub streams_dropped: AtomicUsize,
}

impl Probe {
    /// Reads one counter.
    pub fn get(&self, which: fn(&Probe) -> &AtomicUsize) -> usize {
        which(self).load(SeqCst)
    }
}

/// Counts a drop of a user future or stream.
struct OnDrop(Arc<Probe>, fn(&Probe) -> &AtomicUsize);

impl Drop for OnDrop {
    fn drop(&mut self) {
        (self.1)(&self.0).fetch_add(1, SeqCst);
    }
}

/// The manager type the scenarios use on runtime `T`.
pub type M<T> = Manager<Plan, <T as TestRt>::R>;

/// A manager whose preparer and upstream follow each flight's [`Plan`].
///
/// # Panics
/// Never: the caller passes a valid config.
pub fn manager<T: TestRt>(config: Config, probe: &Arc<Probe>) -> M<T> {
    crate::runtimes::quiet_deliberate_panics();
    let p = Arc::clone(probe);
    let prepare = move |plan: Plan| {
        let probe = Arc::clone(&p);
        async move {
            probe.prepares.fetch_add(1, SeqCst);
            let _drop = OnDrop(Arc::clone(&probe), |p| &p.prepares_dropped);
            if !plan.prep_delay.is_zero() {
                T::sleep(plan.prep_delay).await;
            }
            let result = match plan.prep {
                Prep::Ok => Ok(Preparation {
                    cacheable: plan.cacheable,
                    request: plan,
                }),
                Prep::Fail => Err("no such model".to_owned()),
                Prep::Panic => panic!("{DELIBERATE} in prepare"),
                Prep::Hang => pending().await,
            };
            probe.prepares_done.fetch_add(1, SeqCst);
            result
        }
    };
    let p = Arc::clone(probe);
    let upstream = move |plan: Plan| {
        let probe = Arc::clone(&p);
        async move {
            probe.opens.fetch_add(1, SeqCst);
            match plan.open {
                Open::Ok => {}
                Open::Fail => return Err("connection refused".to_owned()),
                Open::Panic => panic!("{DELIBERATE} in open"),
                Open::Hang => pending().await,
            }
            let guard = OnDrop(Arc::clone(&probe), |p| &p.streams_dropped);
            Ok(futures_lite::stream::unfold(
                (0usize, plan, guard),
                |(i, plan, guard)| async move {
                    if i < plan.chunks || plan.then == Then::Forever {
                        if plan.chunk_delay.is_zero() {
                            future::yield_now().await;
                        } else {
                            T::sleep(plan.chunk_delay).await;
                        }
                        let data = Ok(Bytes::from(chunk(i)));
                        return Some((data, (i + 1, plan, guard)));
                    }
                    match plan.then {
                        Then::Complete | Then::Forever => None,
                        Then::Fail => Some((Err("upstream reset".to_owned()), (i, plan, guard))),
                        Then::Panic => panic!("{DELIBERATE} mid-stream"),
                        Then::Hang => pending().await,
                    }
                },
            ))
        }
    };
    Manager::new(config, prepare, upstream).expect("valid config")
}

/// Deadlines long enough not to interfere; each scenario shortens the one it tests.
#[must_use]
pub fn config() -> Config {
    let long = Duration::from_secs(20);
    Config {
        queue_capacity: 64,
        max_concurrent_requests: 4,
        max_concurrent_streams: 4,
        max_response_bytes: 1 << 20,
        cache_capacity: 64,
        cache_ttl: long,
        queue_timeout: long,
        preparation_timeout: long,
        stream_slot_timeout: long,
        stream_timeout: long,
        idle_timeout: long,
        attach_timeout: long,
        cancelled_retention: long,
        finished_retention: long,
        cluster: false,
    }
}

/// `n` milliseconds.
#[must_use]
pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// `f`, or a test failure after 10 s (never a hung test).
pub async fn within<T: TestRt, F: Future>(what: &str, f: F) -> F::Output {
    let deadline = async {
        T::sleep(Duration::from_secs(10)).await;
        panic!("{}: timed out waiting for {what}", T::NAME)
    };
    future::or(f, deadline).await
}

/// Waits until `cond` holds (checked every 2 ms), failing after 5 s.
pub async fn eventually<T: TestRt>(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..2500 {
        if cond() {
            return;
        }
        T::sleep(ms(2)).await;
    }
    panic!("{}: never happened: {what}", T::NAME);
}

/// Reads `n` chunks.
pub async fn read_chunks<T: TestRt>(s: &mut ResultStream, n: usize) -> String {
    let mut out = String::new();
    for _ in 0..n {
        match within::<T, _>("a chunk", s.next_item()).await {
            Some(Item::Chunk(c)) => out.push_str(std::str::from_utf8(&c).expect("utf-8")),
            other => panic!("{}: expected a chunk, got {other:?}", T::NAME),
        }
    }
    out
}

/// Reads to the end and checks [rule 19](flightdeck_core::contract#rule-19): chunks, exactly one end, then `None`
/// (twice). Returns the chunks' text and the outcome.
pub async fn read_all<T: TestRt>(s: &mut ResultStream) -> (String, Outcome) {
    let mut out = String::new();
    loop {
        match within::<T, _>("the next item", s.next_item()).await {
            Some(Item::Chunk(c)) => out.push_str(std::str::from_utf8(&c).expect("utf-8")),
            Some(Item::End(outcome)) => {
                assert_eq!(s.next_item().await, None, "{}: item after the end", T::NAME);
                assert_eq!(s.next_item().await, None, "{}: item after the end", T::NAME);
                return (out, outcome);
            }
            None => panic!("{}: stream ended without a terminal item", T::NAME),
        }
    }
}

/// Ends a scenario: invariants hold, the machine holds no slot, shutdown waits for
/// every task, and none is left.
pub async fn finish<T: TestRt>(m: &M<T>) {
    m.check_invariants().expect("invariants");
    m.shutdown().await;
    let stats = m.stats();
    assert_eq!(stats.live_requests, 0, "{}", T::NAME);
    assert_eq!(stats.preparation_slots_in_use, 0, "{}", T::NAME);
    assert_eq!(stats.stream_slots_in_use, 0, "{}", T::NAME);
    assert_eq!(
        m.tasks_running(),
        0,
        "{}: tasks left after shutdown",
        T::NAME
    );
    let tasks = m.tasks();
    assert_eq!(tasks.spawned, tasks.finished, "{}", T::NAME);
    m.check_invariants().expect("invariants");
}
