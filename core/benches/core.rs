//! Benchmarks of the pure core (issue 5). See BENCHMARKS.md for results.
//!
//! - `mixed`: inputs per second on a realistic mix of every input kind;
//! - `fanout/N`: one chunk reaching N parked readers (chunk + N wakes + N reads);
//!   `fanout/borrowed/N`: the same with `Machine::read_borrowed`;
//!   `fanout/batched/N`: the same with `Machine::handle_chunks_delivering` (no
//!   wakes: each reader is handed its new chunk as the chunk arrives);
//! - `cache_hit`: submit, attach, read to the end, detach for a cached key;
//! - `deadlines_1m`: arm/disarm and timeout handling with ~2,000,000 pending
//!   deadlines (1,000,000 queued requests, each with its own flight), and the
//!   status (queue position) of the last of them;
//! - memory per queued request and per idle reader, printed once (criterion
//!   measures time only), measured with the counting allocator below.
//!
//! Timings are measured, never asserted.
#![allow(missing_docs)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use flightdeck_core::{
    Action, Config, FlightId, Item, Key, Machine, Prepared, Readiness, RequestId, Route, Time,
};

// ----- counting allocator (bench-only unsafe) ------------------------------------
//
// UNSAFE, BENCH CODE ONLY. The core itself is `#![forbid(unsafe_code)]`; this bench
// is a separate target. The allocator forwards every call to `System` unchanged
// and only keeps a running count of live bytes, so memory per request can be
// measured as (live bytes after - live bytes before) / count.

struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

#[allow(unsafe_code, clippy::cast_possible_wrap)]
// SAFETY: every method forwards to `System` with the caller's arguments, so the
// `GlobalAlloc` contract is exactly `System`'s; the counter has no effect on memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        System.dealloc(ptr, layout);
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live_bytes() -> isize {
    LIVE_BYTES.load(Ordering::Relaxed)
}

// ----- helpers ---------------------------------------------------------------

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).unwrap_or(0)
    }
}

fn key(n: u64) -> Key {
    Key::from(n)
}

const CHUNK: &[u8] = b"a token of some twenty bytes";

fn big_config(n: usize) -> Config {
    Config {
        queue_capacity: n + 16,
        ..Config::default()
    }
}

/// Drives every pending action the simple way: preparations and streams are
/// recorded for the workload to complete later; wakes are collected.
#[derive(Default)]
struct Driver {
    preparing: Vec<FlightId>,
    streaming: Vec<(FlightId, u32)>,
    woken: Vec<RequestId>,
}

impl Driver {
    fn drain(&mut self, m: &mut Machine) {
        while let Some(action) = m.poll_action() {
            match action {
                Action::StartPreparation { flight, .. } => self.preparing.push(flight),
                Action::StartStream { flight } => self.streaming.push((flight, 0)),
                Action::Abort { flight, .. } | Action::FlightEnded { flight } => {
                    self.preparing.retain(|f| *f != flight);
                    self.streaming.retain(|(f, _)| *f != flight);
                }
                Action::Wake { request } => self.woken.push(request),
                _ => {}
            }
        }
    }
}

// ----- mixed workload ----------------------------------------------------------

/// Runs a deterministic mix and returns the number of inputs fed to the machine.
///
/// Per step (1 ms of virtual time): 30% submit (keys: half from 500 hot keys,
/// half from 20,000 cold ones, so there is coalescing and cache hits and misses;
/// 90% are attached at once and read until pending), 10% a preparation finishes,
/// 35% a chunk for a random streaming flight (the 20th chunk is followed by the
/// upstream end), 15% every woken reader reads until pending (and detaches at
/// its end), 4% a random client cancels, 6% a second passes and deadlines are
/// handled (unattached requests time out, retentions pass).
fn mixed(steps: usize) -> u64 {
    let config = Config {
        queue_capacity: 4096,
        max_concurrent_requests: 32,
        max_concurrent_streams: 16,
        cache_capacity: 256,
        ..Config::default()
    };
    let mut m = Machine::new(config).expect("valid config");
    let mut d = Driver::default();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut clients: Vec<RequestId> = Vec::new();
    let mut out = Vec::with_capacity(64);
    let mut inputs = 0u64;
    let mut now = Time::ZERO;
    let chunk = Bytes::from_static(CHUNK);
    for _ in 0..steps {
        now = now + Duration::from_millis(1);
        let roll = rng.below(100);
        match roll {
            0..=29 => {
                let k = if rng.below(2) == 0 {
                    rng.below(500) as u64
                } else {
                    500 + rng.below(20_000) as u64
                };
                inputs += 1;
                if let Ok(s) = m.submit(now, key(k)) {
                    d.drain(&mut m);
                    if rng.below(10) != 0 {
                        inputs += 1;
                        let _ = m.attach(now, s.request);
                        d.drain(&mut m);
                        clients.push(s.request);
                        d.woken.push(s.request);
                    }
                }
            }
            30..=39 => {
                if !d.preparing.is_empty() {
                    let f = d.preparing.remove(0);
                    inputs += 1;
                    let _ = m.handle_prepared(now, f, Ok(Prepared::CACHEABLE));
                    d.drain(&mut m);
                }
            }
            40..=74 => {
                if !d.streaming.is_empty() {
                    let i = rng.below(d.streaming.len());
                    let (f, n) = d.streaming[i];
                    inputs += 1;
                    let _ = m.handle_chunk(now, f, chunk.clone());
                    d.streaming[i].1 = n + 1;
                    if n + 1 == 20 {
                        inputs += 1;
                        let _ = m.handle_upstream_end(now, f, Ok(()));
                    }
                    d.drain(&mut m);
                }
            }
            75..=89 => {
                let woken = std::mem::take(&mut d.woken);
                for r in woken {
                    loop {
                        out.clear();
                        inputs += 1;
                        match m.read(r, &mut out) {
                            Ok(Readiness::Ready) => {
                                if matches!(out.last(), Some(Item::End(_))) {
                                    inputs += 1;
                                    let _ = m.detach(now, r);
                                    d.drain(&mut m);
                                    break;
                                }
                            }
                            _ => break,
                        }
                    }
                }
                d.drain(&mut m);
            }
            90..=93 => {
                if !clients.is_empty() {
                    let r = clients.swap_remove(rng.below(clients.len()));
                    inputs += 1;
                    let _ = m.cancel(now, r);
                    d.drain(&mut m);
                }
            }
            _ => {
                now = now + Duration::from_secs(1);
                inputs += 1;
                m.handle_timeout(now);
                d.drain(&mut m);
            }
        }
        if clients.len() > 4096 {
            clients.drain(..2048);
        }
    }
    black_box(&m);
    inputs
}

fn bench_mixed(c: &mut Criterion) {
    const STEPS: usize = 20_000;
    let inputs = mixed(STEPS);
    let mut g = c.benchmark_group("mixed");
    g.sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    g.throughput(Throughput::Elements(inputs));
    g.bench_function(BenchmarkId::new("inputs", inputs), |b| {
        b.iter(|| mixed(STEPS));
    });
    g.finish();
}

// ----- fan-out -------------------------------------------------------------------

/// A machine with one streaming flight and `n` attached, parked readers.
fn fanout_setup(n: usize) -> (Machine, FlightId, Vec<RequestId>) {
    let mut m = Machine::new(big_config(n)).expect("valid config");
    let t = Time::from_millis(1);
    let mut readers = Vec::with_capacity(n);
    for _ in 0..n {
        let s = m.submit(t, "fan-out".into()).expect("submit");
        m.attach(t, s.request).expect("attach");
        readers.push(s.request);
    }
    let mut flight = None;
    while let Some(a) = m.poll_action() {
        match a {
            Action::StartPreparation { flight: f, .. } => {
                m.handle_prepared(t, f, Ok(Prepared::UNCACHEABLE))
                    .expect("prepared");
            }
            Action::StartStream { flight: f } => flight = Some(f),
            _ => {}
        }
    }
    let mut out = Vec::new();
    for r in &readers {
        assert_eq!(m.read(*r, &mut out), Ok(Readiness::Pending));
    }
    (m, flight.expect("stream started"), readers)
}

/// One chunk, then what a driver does for each reader: take its `Wake` and read
/// (gets the chunk; the read leaves the reader parked for the next chunk).
fn fanout_once(m: &mut Machine, f: FlightId, now: Time, chunk: &Bytes, out: &mut Vec<Item>) {
    m.handle_chunk(now, f, chunk.clone()).expect("streaming");
    while let Some(a) = m.poll_action() {
        if let Action::Wake { request } = a {
            out.clear();
            let _ = m.read(request, out);
        }
    }
}

/// The same with the borrowing read: each reader is lent the new chunk and
/// looks at its bytes (no reference count, no owned item).
fn fanout_borrowed_once(m: &mut Machine, f: FlightId, now: Time, chunk: &Bytes) {
    m.handle_chunk(now, f, chunk.clone()).expect("streaming");
    while let Some(a) = m.poll_action() {
        if let Action::Wake { request } = a {
            if let Ok(lent) = m.read_borrowed(request) {
                for c in lent.chunks {
                    black_box(c.as_ref());
                }
            }
        }
    }
}

/// The same delivered in place: one input hands each parked reader its new
/// chunk (lent; it looks at the bytes), no `Wake` is queued and the readers
/// stay parked. The driver still drains the actions (there are none).
fn fanout_batched_once(m: &mut Machine, f: FlightId, now: Time, chunk: &Bytes) {
    m.handle_chunks_delivering(now, f, [chunk.clone()], |_, lent| {
        for c in lent.chunks {
            black_box(c.as_ref());
        }
    })
    .expect("streaming");
    while let Some(a) = m.poll_action() {
        black_box(a);
    }
}

#[derive(Clone, Copy)]
enum Fanout {
    Owned,
    Borrowed,
    Batched,
}

fn bench_fanout(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout");
    g.sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    let chunk = Bytes::from_static(CHUNK);
    for (mode, n) in [
        (Fanout::Owned, 1usize),
        (Fanout::Owned, 100),
        (Fanout::Owned, 10_000),
        (Fanout::Borrowed, 1),
        (Fanout::Borrowed, 100),
        (Fanout::Borrowed, 10_000),
        (Fanout::Batched, 100),
        (Fanout::Batched, 10_000),
    ] {
        // Chunks per flight before the log is reset (keeps memory bounded).
        let per_flight = (1_000_000 / n).clamp(16, 10_000);
        g.throughput(Throughput::Elements(n as u64));
        let id = match mode {
            Fanout::Owned => BenchmarkId::from_parameter(n),
            Fanout::Borrowed => BenchmarkId::new("borrowed", n),
            Fanout::Batched => BenchmarkId::new("batched", n),
        };
        g.bench_function(id, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters;
                let mut out = Vec::with_capacity(4);
                while left > 0 {
                    let (mut m, f, _readers) = fanout_setup(n);
                    let batch = left.min(per_flight as u64);
                    let now = Time::from_millis(2);
                    let start = Instant::now();
                    for _ in 0..batch {
                        match mode {
                            Fanout::Owned => fanout_once(&mut m, f, now, &chunk, &mut out),
                            Fanout::Borrowed => fanout_borrowed_once(&mut m, f, now, &chunk),
                            Fanout::Batched => fanout_batched_once(&mut m, f, now, &chunk),
                        }
                    }
                    total += start.elapsed();
                    left -= batch;
                    drop(black_box(m));
                }
                total
            });
        });
    }
    g.finish();
}

// ----- cache hit -----------------------------------------------------------------

fn cached_machine(chunks: usize) -> Machine {
    let mut m = Machine::new(Config::default()).expect("valid config");
    let t = Time::from_millis(1);
    let s = m.submit(t, "cached".into()).expect("submit");
    m.attach(t, s.request).expect("attach");
    while let Some(a) = m.poll_action() {
        match a {
            Action::StartPreparation { flight, .. } => {
                m.handle_prepared(t, flight, Ok(Prepared::CACHEABLE))
                    .expect("prepared");
            }
            Action::StartStream { flight } => {
                for _ in 0..chunks {
                    m.handle_chunk(t, flight, Bytes::from_static(CHUNK))
                        .expect("chunk");
                }
                m.handle_upstream_end(t, flight, Ok(())).expect("end");
            }
            _ => {}
        }
    }
    m.detach(t, s.request).expect("detach");
    while m.poll_action().is_some() {}
    m
}

fn bench_cache_hit(c: &mut Criterion) {
    let mut g = c.benchmark_group("cache_hit");
    g.sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for chunks in [1usize, 100] {
        let mut m = cached_machine(chunks);
        let t = Time::from_millis(2);
        let mut out = Vec::with_capacity(chunks + 1);
        g.bench_function(BenchmarkId::new("submit_attach_read_detach", chunks), |b| {
            b.iter(|| {
                let s = m.submit(t, "cached".into()).expect("submit");
                debug_assert!(matches!(s.route, Route::Cached));
                m.attach(t, s.request).expect("attach");
                out.clear();
                m.read(s.request, &mut out).expect("read");
                debug_assert!(matches!(out.last(), Some(Item::End(_))));
                m.detach(t, s.request).expect("detach");
                while m.poll_action().is_some() {}
                black_box(out.len())
            });
        });
    }
    g.finish();
}

// ----- deadlines with 1,000,000 pending ----------------------------------------

const MILLION: usize = 1_000_000;

/// 1,000,000 distinct keys submitted 1 us apart, unattached: 1,000,000 queued
/// flights and requests, so ~2,000,000 pending deadlines (1,000,000 attach
/// deadlines armed, 1,000,000 queue deadlines implied by the queue's order).
fn million_queued() -> Machine {
    let mut m = Machine::new(big_config(MILLION)).expect("valid config");
    for i in 0..MILLION {
        let now = Time::from_nanos(1_000 * (i as u64 + 1));
        m.submit(now, key(i as u64)).expect("submit");
    }
    while m.poll_action().is_some() {}
    m
}

/// The machine of `million_queued`, built on first use.
fn built(million: &mut Option<Machine>) -> &mut Machine {
    million.get_or_insert_with(|| {
        let m = million_queued();
        println!(
            "deadlines_1m: {} pending deadlines, {} requests",
            m.stats().deadlines,
            m.stats().requests
        );
        m
    })
}

fn bench_deadlines(c: &mut Criterion) {
    let mut g = c.benchmark_group("deadlines_1m");
    g.sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    // Built on first use, so a filter that skips this group skips the
    // million submits too.
    let mut million: Option<Machine> = None;
    // The status of the last of 1,000,000 queued requests: its queue position
    // counts the 999,999 flights ahead (O(log n) since the queue keeps counts;
    // it was a walk over all of them).
    g.bench_function("status_of_the_last_queued", |b| {
        let m = built(&mut million);
        let last = m.request_ids().last().expect("a request");
        b.iter(|| {
            let status = m.status(black_box(last)).expect("queued");
            black_box(status.queue_position)
        });
    });
    let late = Time::from_millis(2_000);
    // Arm + disarm at 2M pending: a new request (flight queue deadline + attach
    // deadline armed), attach (attach deadline disarmed), detach (flight ends:
    // flight deadline disarmed, record removed). Net state unchanged.
    let mut next_key = 2 * MILLION as u64;
    g.bench_function("submit_attach_detach_at_2m", |b| {
        let m = built(&mut million);
        b.iter(|| {
            next_key += 1;
            let s = m.submit(late, key(next_key)).expect("submit");
            m.attach(late, s.request).expect("attach");
            m.detach(late, s.request).expect("detach");
            while m.poll_action().is_some() {}
        });
    });
    let mut small = Machine::new(Config::default()).expect("valid config");
    g.bench_function("submit_attach_detach_at_0", |b| {
        b.iter(|| {
            next_key += 1;
            let s = small.submit(late, key(next_key)).expect("submit");
            small.attach(late, s.request).expect("attach");
            small.detach(late, s.request).expect("detach");
            while small.poll_action().is_some() {}
        });
    });
    // handle_timeout popping the earliest deadline (1M-2M pending): an attach timeout that ends
    // the request's flight (last member), disarms the flight's queue deadline and
    // arms the record's retention. One expiry per iteration.
    g.bench_function("handle_timeout_one_of_2m", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let m = built(&mut million);
                // Only attach expiries are timed: rebuild once all have fired
                // (pending deadlines stay between 1M and 2M).
                if m.stats().live_requests == 0 {
                    *m = million_queued();
                }
                let Some(at) = m.poll_timeout() else {
                    continue;
                };
                let start = Instant::now();
                m.handle_timeout(at);
                while m.poll_action().is_some() {}
                total += start.elapsed();
            }
            total
        });
    });
    g.finish();
    drop(million);
}

// ----- memory ----------------------------------------------------------------

fn per(n: usize, before: isize, after: isize) -> f64 {
    (after - before) as f64 / n as f64
}

#[allow(clippy::cast_precision_loss)]
fn report_memory() {
    const N: usize = 100_000;
    let t = Time::from_millis(1);

    // A queued request with its own flight (distinct keys).
    let before = live_bytes();
    let mut m = Machine::new(big_config(N)).expect("valid config");
    for i in 0..N {
        m.submit(t, key(i as u64)).expect("submit");
    }
    while m.poll_action().is_some() {}
    let own = per(N, before, live_bytes());
    drop(m);

    // A queued request joining an existing queued flight (same key).
    let mut m = Machine::new(big_config(N)).expect("valid config");
    m.submit(t, "busy".into()).expect("submit");
    for i in 0..10 {
        m.submit(t, key(i)).expect("fill the preparation slots");
    }
    m.submit(t, "queued".into()).expect("submit");
    let before = live_bytes();
    for _ in 0..N {
        m.submit(t, "queued".into()).expect("submit");
    }
    while m.poll_action().is_some() {}
    let joined = per(N, before, live_bytes());
    drop(m);

    // An idle reader: attached to a streaming flight and parked (read → pending).
    let mut m = Machine::new(big_config(N)).expect("valid config");
    let mut ids = Vec::with_capacity(N);
    for _ in 0..N {
        ids.push(m.submit(t, "idle".into()).expect("submit").request);
    }
    m.attach(t, ids[0]).expect("attach");
    while let Some(a) = m.poll_action() {
        if let Action::StartPreparation { flight, .. } = a {
            m.handle_prepared(t, flight, Ok(Prepared::UNCACHEABLE))
                .expect("prepared");
        }
    }
    let mut out = Vec::new();
    let before = live_bytes();
    for r in &ids[1..] {
        m.attach(t, *r).expect("attach");
        let _ = m.read(*r, &mut out);
    }
    while m.poll_action().is_some() {}
    let reader = per(N - 1, before, live_bytes());
    drop(m);

    // The same, counting the request record too: submit + attach + park.
    let mut m = Machine::new(big_config(N)).expect("valid config");
    let first = m.submit(t, "idle".into()).expect("submit").request;
    m.attach(t, first).expect("attach");
    while let Some(a) = m.poll_action() {
        if let Action::StartPreparation { flight, .. } = a {
            m.handle_prepared(t, flight, Ok(Prepared::UNCACHEABLE))
                .expect("prepared");
        }
    }
    let before = live_bytes();
    for _ in 1..N {
        let r = m.submit(t, "idle".into()).expect("submit").request;
        m.attach(t, r).expect("attach");
        let _ = m.read(r, &mut out);
    }
    while m.poll_action().is_some() {}
    let reader_with_request = per(N - 1, before, live_bytes());
    drop(m);

    println!("memory (counting allocator, live heap bytes, mean over {N}):");
    println!("  queued request with its own flight (distinct key): {own:.1} B");
    println!("  queued request joining a queued flight (same key): {joined:.1} B");
    println!("  idle reader (attach + parked read), record already counted: {reader:.1} B");
    println!("  idle reader including its request record: {reader_with_request:.1} B");
}

fn bench_memory(_c: &mut Criterion) {
    report_memory();
}

criterion_group!(
    benches,
    bench_memory,
    bench_mixed,
    bench_fanout,
    bench_cache_hit,
    bench_deadlines
);
criterion_main!(benches);
