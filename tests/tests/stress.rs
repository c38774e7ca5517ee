//! No leaks, measured (issue 4): per runtime, 10,000 requests over 300 keys with
//! random cancels (before attaching and mid-stream), random client drops, random
//! late attaches, random slow readers, and random preparation and upstream
//! failures, panics and stalls (ended by the idle deadline). At the end every
//! reading client got exactly one terminal item, the machine holds nothing
//! (contract rule 21) and every task the manager spawned has finished.
//!
//! Run with `--nocapture` to see the numbers.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flightdeck_tokio::{Config, Failure, Outcome, RequestError};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use flightdeck_tests::{conformance_kit as kit, runtimes as rt};
use kit::{ms, read_all, Open, Plan, Prep, Probe, Then, M};
use rt::TestRt;

const REQUESTS: usize = 10_000;
const KEYS: u64 = 300;
const CLIENTS: usize = 200;

/// What the clients saw.
#[derive(Debug, Default)]
struct Tally {
    completed: AtomicU64,
    cancelled: AtomicU64,
    failed: AtomicU64,
    panicked: AtomicU64,
    timed_out: AtomicU64,
    /// Clients that dropped their stream before the end (no terminal expected).
    dropped: AtomicU64,
    /// `cancel` calls that returned Ok.
    cancels: AtomicU64,
    /// Terminal items read; one per client that read to the end.
    terminals: AtomicU64,
    slow_readers: AtomicU64,
}

impl Tally {
    fn end(&self, outcome: &Outcome) {
        self.terminals.fetch_add(1, SeqCst);
        let counter = match outcome {
            Outcome::Completed => &self.completed,
            Outcome::Cancelled => &self.cancelled,
            Outcome::Failed(Failure::Panicked { .. }) => &self.panicked,
            Outcome::Failed(_) => &self.failed,
            Outcome::TimedOut(_) => &self.timed_out,
        };
        counter.fetch_add(1, SeqCst);
    }
}

/// The script of the flight a request creates (used only if it does).
fn plan(rng: &mut SmallRng) -> Plan {
    let mut plan = Plan::chunks(rng.gen_range(3..=15)).every(if rng.gen_bool(0.2) {
        ms(1)
    } else {
        Duration::ZERO
    });
    let roll = rng.gen_range(0..100);
    plan = match roll {
        0..=1 => plan.prep(Prep::Fail, Duration::ZERO),
        2 => plan.prep(Prep::Panic, Duration::ZERO),
        3..=4 => plan.open(Open::Fail),
        5 => plan.open(Open::Panic),
        6..=9 => plan.then(Then::Fail),
        10..=12 => plan.then(Then::Panic),
        13..=14 => plan.then(Then::Hang), // ended by the idle deadline
        _ => plan,
    };
    if rng.gen_bool(0.3) {
        plan.prep_delay = ms(rng.gen_range(0..3));
    }
    if rng.gen_bool(0.1) {
        plan = plan.uncacheable();
    }
    plan
}

/// One client: submit, then one of several behaviours.
async fn client<T: TestRt>(m: M<T>, tally: Arc<Tally>, seed: u64) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let key = rng.gen_range(0..KEYS);
    let plan = plan(&mut rng);
    let slow = rng.gen_bool(0.1);
    if slow {
        tally.slow_readers.fetch_add(1, SeqCst);
    }
    let read_to_end = |mut s: flightdeck_tokio::ResultStream, tally: Arc<Tally>| async move {
        if slow {
            // A slow reader: a chunk at a time, with pauses; blocks nobody.
            while let Some(item) = s.next_item().await {
                if let flightdeck_tokio::Item::End(outcome) = item {
                    assert_eq!(s.next_item().await, None, "item after the end");
                    tally.end(&outcome);
                    return outcome;
                }
                T::sleep(ms(1)).await;
            }
            panic!("{}: no terminal item", T::NAME);
        }
        let (_, outcome) = read_all::<T>(&mut s).await;
        tally.end(&outcome);
        outcome
    };
    match rng.gen_range(0..100) {
        // Cancel before attaching, then attach: the cancellation (contract rule 13).
        0..=9 => {
            let id = m.submit(key, plan).expect("submit").id;
            let cancelled = m.cancel(id);
            let s = m
                .stream(id)
                .expect("a cancelled record stays for its client");
            let outcome = read_to_end(s, tally.clone()).await;
            match cancelled {
                Ok(()) => {
                    tally.cancels.fetch_add(1, SeqCst);
                    assert_eq!(outcome, Outcome::Cancelled);
                }
                // Served from the cache: it ended before the cancel.
                Err(RequestError::AlreadyFinished(o)) => assert_eq!(outcome, o),
                Err(e) => panic!("{}: cancel: {e}", T::NAME),
            }
        }
        // Cancel mid-stream: the cancellation is the last item (contract rule 14), unless
        // the request ended first.
        10..=19 => {
            let mut s = m.submit_and_stream(key, plan).expect("submit");
            let mut ended = None;
            for _ in 0..rng.gen_range(0..4) {
                match s.next_item().await {
                    Some(flightdeck_tokio::Item::End(o)) => {
                        ended = Some(o);
                        break;
                    }
                    Some(_) => {}
                    None => panic!("{}: None before the end", T::NAME),
                }
            }
            if let Some(o) = ended {
                tally.end(&o);
                assert_eq!(s.next_item().await, None);
                return;
            }
            let cancelled = m.cancel(s.id());
            let outcome = read_to_end(s, tally.clone()).await;
            match cancelled {
                Ok(()) => {
                    tally.cancels.fetch_add(1, SeqCst);
                    assert_eq!(outcome, Outcome::Cancelled, "{}", T::NAME);
                }
                Err(RequestError::AlreadyFinished(o)) => assert_eq!(outcome, o),
                Err(e) => panic!("{}: cancel: {e}", T::NAME),
            }
        }
        // Drop the stream without cancelling (contract rule 15): the record goes at once.
        20..=29 => {
            let mut s = m.submit_and_stream(key, plan).expect("submit");
            let n = rng.gen_range(0..3);
            let id = s.id();
            for _ in 0..n {
                if !matches!(s.next_item().await, Some(flightdeck_tokio::Item::Chunk(_))) {
                    break;
                }
            }
            drop(s);
            tally.dropped.fetch_add(1, SeqCst);
            assert!(
                m.status(id).is_none(),
                "{}: dropped client's record kept",
                T::NAME
            );
        }
        // Attach late: replay from the first chunk, or the outcome (contract rule 7, 13).
        30..=39 => {
            let id = m.submit(key, plan).expect("submit").id;
            T::sleep(ms(rng.gen_range(0..5))).await;
            let s = m.stream(id).expect("attach within attach_timeout");
            read_to_end(s, tally.clone()).await;
        }
        // The usual client.
        _ => {
            let s = m.submit_and_stream(key, plan).expect("submit");
            read_to_end(s, tally.clone()).await;
        }
    }
}

fn stress_config() -> Config {
    Config {
        queue_capacity: REQUESTS,
        max_concurrent_requests: 16,
        max_concurrent_streams: 8,
        max_response_bytes: 1 << 20,
        cache_capacity: 128,
        cache_ttl: ms(300),
        queue_timeout: Duration::from_secs(20),
        preparation_timeout: Duration::from_secs(20),
        stream_slot_timeout: Duration::from_secs(20),
        stream_timeout: Duration::from_secs(20),
        idle_timeout: ms(50),
        attach_timeout: Duration::from_secs(5),
        cancelled_retention: ms(200),
        finished_retention: ms(200),
        cluster: false,
    }
}

async fn stress<T: TestRt>() {
    let started = Instant::now();
    let probe = Arc::new(Probe::default());
    let m = kit::manager::<T>(stress_config(), &probe);
    let tally = Arc::new(Tally::default());
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..CLIENTS {
        let (m, tally, next) = (m.clone(), tally.clone(), next.clone());
        workers.push(T::spawn(async move {
            loop {
                let i = next.fetch_add(1, SeqCst);
                if i >= REQUESTS {
                    return;
                }
                client::<T>(m.clone(), tally.clone(), 0x5eed_0000 + i as u64).await;
            }
        }));
    }
    for w in workers {
        w.await;
    }
    let clients_done = started.elapsed();

    // Everything ended: nothing live, no slot, no reader.
    let stats = m.stats();
    assert_eq!(stats.totals.submitted, REQUESTS as u64, "{}", T::NAME);
    assert_eq!(stats.live_requests, 0, "{}: {stats:?}", T::NAME);
    assert_eq!(stats.preparation_slots_in_use, 0, "{}", T::NAME);
    assert_eq!(stats.stream_slots_in_use, 0, "{}", T::NAME);
    assert_eq!(stats.readers, 0, "{}", T::NAME);
    assert_eq!(
        stats.queued + stats.preparing + stats.waiting_for_stream + stats.streaming,
        0
    );
    let t = stats.totals;
    assert_eq!(
        t.completed + t.cancelled + t.failed + t.timed_out,
        REQUESTS as u64,
        "{}: every request ended exactly once",
        T::NAME
    );
    m.check_invariants().expect("invariants");
    // Every user task has finished: only the timer runs.
    kit::eventually::<T>("only the timer task runs", || m.tasks_running() == 1).await;
    // Retentions and cache entries expire on the timer: the machine empties (contract rule 21).
    kit::eventually::<T>("the machine is empty", || {
        let s = m.stats();
        s.requests == 0 && s.cache_entries == 0 && s.deadlines == 0
    })
    .await;
    m.shutdown().await;
    let tasks = m.tasks();
    assert_eq!(tasks.spawned, tasks.finished, "{}", T::NAME);
    assert_eq!(m.tasks_running(), 0);

    let read = |c: &AtomicU64| c.load(SeqCst);
    let terminals = read(&tally.terminals);
    assert_eq!(
        terminals + read(&tally.dropped),
        REQUESTS as u64,
        "{}: a client neither read an end nor dropped",
        T::NAME
    );
    flightdeck_tests::report!(
        "stress {}: {REQUESTS} requests over {KEYS} keys by {CLIENTS} concurrent clients in {:?} \
         (clients done in {clients_done:?})\n\
         clients: {} terminals read (completed {}, cancelled {}, failed {}, panicked {}, timed out {}), \
         {} dropped streams, {} successful cancels, {} slow readers\n\
         machine: flights {}, coalesced {}, cache hits {}, preparations {}, streams {}, \
         completed {}, cancelled {}, failed {}, timed out {}\n\
         user code: {} preparations ({} aborted), {} upstream opens, {} upstream streams dropped\n\
         tasks: spawned {}, finished {}",
        T::NAME,
        started.elapsed(),
        terminals,
        read(&tally.completed),
        read(&tally.cancelled),
        read(&tally.failed),
        read(&tally.panicked),
        read(&tally.timed_out),
        read(&tally.dropped),
        read(&tally.cancels),
        read(&tally.slow_readers),
        t.flights,
        t.coalesced,
        t.cache_hits,
        t.preparations_started,
        t.streams_started,
        t.completed,
        t.cancelled,
        t.failed,
        t.timed_out,
        probe.get(|p| &p.prepares),
        probe.get(|p| &p.prepares_dropped) - probe.get(|p| &p.prepares_done),
        probe.get(|p| &p.opens),
        probe.get(|p| &p.streams_dropped),
        tasks.spawned,
        tasks.finished,
    );
    assert!(read(&tally.cancels) > 0 && read(&tally.dropped) > 0 && read(&tally.panicked) > 0);
}

#[test]
fn stress_smol() {
    rt::Smol::block_on(stress::<rt::Smol>());
}

#[test]
fn stress_tokio_current_thread() {
    rt::TokioCurrent::block_on(stress::<rt::TokioCurrent>());
}

#[test]
fn stress_tokio_multi_thread() {
    rt::TokioMulti::block_on(stress::<rt::TokioMulti>());
}
