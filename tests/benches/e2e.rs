//! End-to-end benchmarks (issue 5): flightdeck through its runtime adapters
//! (`flightdeck-tokio`, `flightdeck-smol`) against the baseline a Rust team would
//! write without it, plus latency percentiles.
//!
//! Workload (`e2e/*`): 10,000 requests over 1,000 keys (request i has key
//! i % 1000), 100 chunks per response from an instant upstream (a stream whose
//! every item is ready at once), instant preparation, limits 10 preparations /
//! 5 streams, every client spawned as its own task and reading to the end. Each
//! flightdeck run uses a fresh `Manager` (`submit_and_stream`, then `next_item`
//! to the end).
//!
//! Baselines: `tokio::sync::Semaphore` for the two limits, a
//! `Mutex<HashMap<key, broadcast::Sender>>` for coalescing, one spawned task per
//! flight, clients reading a `broadcast::Receiver`. Two capacities, same code:
//! the *lossy* one ([`BROADCAST_CAPACITY`], what a team picks) and the *lossless*
//! one ([`LOSSLESS_CAPACITY`]: a whole answer and its end fit, so no reader
//! lags). They lose chunks two ways, both counted and printed: `RecvError::Lagged`,
//! and a joiner that subscribes after the flight started streaming never sees the
//! chunks sent before (no replay). flightdeck must lose none: every one of its
//! clients is checked to have received all 100 chunks and `Completed`.
//!
//! The scaling table (`scaling: ...` lines) times the same workload at 1k, 10k
//! and 100k requests with 1, 100 and 10,000 readers per flight
//! (`E2E_SKIP_SCALING=1` skips it).
//!
//! Timings are measured, never asserted.
#![allow(missing_docs)]

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, Criterion};
use flightdeck_core::{Config, Item, Key, Outcome};
use flightdeck_smol::SmolRuntime;
use flightdeck_tokio::driver::{Manager, Runtime};
use flightdeck_tokio::TokioRuntime;
use futures_lite::{Stream, StreamExt};
use tokio::sync::{broadcast, Semaphore};

const REQUESTS: usize = 10_000;
const KEYS: usize = 1_000;
/// The main workload: 10,000 requests over 1,000 keys.
const MAIN: Workload = Workload {
    requests: REQUESTS,
    keys: KEYS,
};
const CHUNKS: usize = 100;
const PREPARATIONS: usize = 10;
const STREAMS: usize = 5;
/// Baseline broadcast channel capacity: a common "generous" choice for token
/// streams (tokio's docs use 16; 64 is what a team would pick after seeing lag).
const BROADCAST_CAPACITY: usize = 64;
/// Lossless baseline capacity: every chunk of an answer and its end fit.
const LOSSLESS_CAPACITY: usize = CHUNKS + 1;
const CHUNK: &[u8] = b"a token of some twenty bytes";

/// How many requests, over how many keys (request i has key i % keys).
#[derive(Clone, Copy, Debug)]
struct Workload {
    requests: usize,
    keys: usize,
}

type BoxFut = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;
type Upstream = Pin<Box<dyn Stream<Item = Bytes> + Send + 'static>>;

fn instant_upstream() -> Upstream {
    Box::pin(futures_lite::stream::iter(
        (0..CHUNKS).map(|_| Bytes::from_static(CHUNK)),
    ))
}

/// What a client got.
#[derive(Default, Clone, Copy)]
struct Tally {
    chunks: u64,
    lagged: u64,
    completed: u64,
}

impl Tally {
    fn add(&mut self, o: Tally) {
        self.chunks += o.chunks;
        self.lagged += o.lagged;
        self.completed += o.completed;
    }
}

// ----- runtimes -------------------------------------------------------------------

/// Spawning on a runtime; `forget` lets a task finish without its handle.
trait Rt: Clone + Send + Sync + 'static {
    type Handle: Send + 'static;
    fn spawn(&self, fut: BoxFut) -> Self::Handle;
    fn forget(h: Self::Handle);
}

#[derive(Clone)]
struct TokioRt(tokio::runtime::Handle);

impl Rt for TokioRt {
    type Handle = tokio::task::JoinHandle<()>;
    fn spawn(&self, fut: BoxFut) -> Self::Handle {
        self.0.spawn(fut)
    }
    fn forget(h: Self::Handle) {
        drop(h);
    }
}

#[derive(Clone)]
struct SmolRt(Arc<smol::Executor<'static>>);

impl Rt for SmolRt {
    type Handle = smol::Task<()>;
    fn spawn(&self, fut: BoxFut) -> Self::Handle {
        self.0.spawn(fut)
    }
    fn forget(h: Self::Handle) {
        h.detach();
    }
}

fn tokio_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A smol executor run by two threads (like the tokio runtime), until dropped.
struct SmolPool {
    ex: Arc<smol::Executor<'static>>,
    stop: Option<smol::channel::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl SmolPool {
    fn new() -> Self {
        let ex = Arc::new(smol::Executor::new());
        let (tx, rx) = smol::channel::unbounded::<()>();
        let threads = (0..2)
            .map(|_| {
                let ex = ex.clone();
                let rx = rx.clone();
                std::thread::spawn(move || {
                    let _ = smol::block_on(ex.run(rx.recv()));
                })
            })
            .collect();
        SmolPool {
            ex,
            stop: Some(tx),
            threads,
        }
    }
    fn block_on<T: Send + 'static>(&self, fut: impl Future<Output = T> + Send + 'static) -> T {
        smol::block_on(self.ex.spawn(fut))
    }
}

impl Drop for SmolPool {
    fn drop(&mut self) {
        drop(self.stop.take());
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn e2e_config() -> Config {
    workload_config(MAIN)
}

fn workload_config(w: Workload) -> Config {
    Config {
        queue_capacity: w.keys + 16,
        max_concurrent_requests: PREPARATIONS,
        max_concurrent_streams: STREAMS,
        ..Config::default()
    }
}

// ----- flightdeck through the runtime adapters ---------------------------------------

async fn adapter_prepare(
    _: (),
) -> Result<flightdeck_tokio::Preparation<()>, std::convert::Infallible> {
    Ok(flightdeck_tokio::Preparation::cacheable(()))
}

async fn adapter_upstream(
    _: (),
) -> Result<
    impl Stream<Item = Result<Bytes, std::convert::Infallible>> + Send,
    std::convert::Infallible,
> {
    Ok(futures_lite::stream::iter(
        (0..CHUNKS).map(|_| Ok(Bytes::from_static(CHUNK))),
    ))
}

async fn adapter_client(mut s: flightdeck_tokio::ResultStream) -> Tally {
    let mut t = Tally::default();
    while let Some(item) = s.next_item().await {
        match item {
            Item::Chunk(_) => t.chunks += 1,
            Item::End(Outcome::Completed) => t.completed += 1,
            Item::End(other) => {
                eprintln!(
                    "flightdeck client ended with {other:?} after {} chunks",
                    t.chunks
                );
            }
        }
    }
    t
}

/// One full run through `flightdeck-tokio` (or `flightdeck-smol`: `spawn` decides).
async fn adapter_run<R: Rt>(
    rt: R,
    submit: Arc<dyn Fn(Key) -> flightdeck_tokio::ResultStream + Send + Sync>,
    w: Workload,
) -> Tally {
    let tally = Arc::new(Mutex::new(Tally::default()));
    let (done_tx, done_rx) = smol::channel::bounded::<()>(1);
    let left = Arc::new(AtomicU64::new(w.requests as u64));
    let keys = w.keys;
    for i in 0..w.requests {
        let submit = submit.clone();
        let tally = tally.clone();
        let left = left.clone();
        let done = done_tx.clone();
        R::forget(rt.spawn(Box::pin(async move {
            let s = submit(Key::from((i % keys) as u64));
            let t = adapter_client(s).await;
            tally.lock().expect("lock").add(t);
            if left.fetch_sub(1, Ordering::AcqRel) == 1 {
                let _ = done.try_send(());
            }
        })));
    }
    let _ = done_rx.recv().await;
    let t = *tally.lock().expect("lock");
    t
}

fn tokio_adapter(
    rt: &tokio::runtime::Runtime,
    w: Workload,
) -> Arc<dyn Fn(Key) -> flightdeck_tokio::ResultStream + Send + Sync> {
    let m: flightdeck_tokio::Manager<()> = flightdeck_tokio::Manager::with_runtime(
        flightdeck_tokio::TokioRuntime::with_handle(rt.handle().clone()),
        workload_config(w),
        adapter_prepare,
        adapter_upstream,
    )
    .expect("valid config");
    Arc::new(move |k| m.submit_and_stream(k, ()).expect("submit"))
}

fn smol_adapter(
    ex: &Arc<smol::Executor<'static>>,
    w: Workload,
) -> Arc<dyn Fn(Key) -> flightdeck_tokio::ResultStream + Send + Sync> {
    let m: flightdeck_smol::Manager<()> = flightdeck_smol::Manager::with_runtime(
        flightdeck_smol::SmolRuntime::with_executor(ex.clone()),
        workload_config(w),
        adapter_prepare,
        adapter_upstream,
    )
    .expect("valid config");
    Arc::new(move |k| m.submit_and_stream(k, ()).expect("submit"))
}

// ----- baseline: semaphores + Mutex<HashMap<key, broadcast::Sender>> ----------------

#[derive(Clone, Debug)]
enum Msg {
    Chunk(Bytes),
    End,
}

struct Baseline<R: Rt> {
    rt: R,
    capacity: usize,
    prep: Arc<Semaphore>,
    stream: Arc<Semaphore>,
    inflight: Mutex<HashMap<u64, broadcast::Sender<Msg>>>,
}

impl<R: Rt> Baseline<R> {
    fn subscribe(self: &Arc<Self>, key: u64) -> broadcast::Receiver<Msg> {
        let mut map = self.inflight.lock().expect("lock");
        if let Some(tx) = map.get(&key) {
            return tx.subscribe();
        }
        let (tx, rx) = broadcast::channel(self.capacity);
        map.insert(key, tx.clone());
        drop(map);
        let this = self.clone();
        R::forget(self.rt.spawn(Box::pin(async move {
            {
                let _permit = this.prep.acquire().await.expect("open");
                // instant preparation
            }
            let _permit = this.stream.acquire().await.expect("open");
            let mut s = instant_upstream();
            while let Some(chunk) = s.next().await {
                let _ = tx.send(Msg::Chunk(chunk));
            }
            this.inflight.lock().expect("lock").remove(&key);
            let _ = tx.send(Msg::End);
        })));
        rx
    }
}

async fn baseline_read(mut rx: broadcast::Receiver<Msg>) -> Tally {
    let mut t = Tally::default();
    loop {
        match rx.recv().await {
            Ok(Msg::Chunk(c)) => {
                t.chunks += 1;
                std::hint::black_box(c.len());
            }
            Ok(Msg::End) => {
                t.completed += 1;
                break;
            }
            Err(broadcast::error::RecvError::Lagged(n)) => t.lagged += n,
            Err(broadcast::error::RecvError::Closed) => break,
        }
    }
    t
}

async fn baseline_run<R: Rt>(rt: R, w: Workload, capacity: usize) -> Tally {
    let b = Arc::new(Baseline {
        rt: rt.clone(),
        capacity,
        prep: Arc::new(Semaphore::new(PREPARATIONS)),
        stream: Arc::new(Semaphore::new(STREAMS)),
        inflight: Mutex::new(HashMap::new()),
    });
    let tally = Arc::new(Mutex::new(Tally::default()));
    let (done_tx, done_rx) = smol::channel::bounded::<()>(1);
    let left = Arc::new(AtomicU64::new(w.requests as u64));
    let keys = w.keys;
    for i in 0..w.requests {
        let b = b.clone();
        let tally = tally.clone();
        let left = left.clone();
        let done = done_tx.clone();
        R::forget(rt.spawn(Box::pin(async move {
            let rx = b.subscribe((i % keys) as u64);
            let t = baseline_read(rx).await;
            tally.lock().expect("lock").add(t);
            if left.fetch_sub(1, Ordering::AcqRel) == 1 {
                let _ = done.try_send(());
            }
        })));
    }
    let _ = done_rx.recv().await;
    let t = *tally.lock().expect("lock");
    t
}

// ----- running both, checking, timing ---------------------------------------------

fn report(name: &str, t: Tally) {
    let expected = (REQUESTS * CHUNKS) as u64;
    println!(
        "{name}: {} of {expected} chunks received, {} lost ({} to RecvError::Lagged, {} missed by joining late), {}/{REQUESTS} completed",
        t.chunks,
        expected - t.chunks,
        t.lagged,
        expected - t.chunks - t.lagged,
        t.completed,
    );
}

fn check_flightdeck(t: Tally) {
    assert_eq!(
        t.chunks,
        (REQUESTS * CHUNKS) as u64,
        "flightdeck lost chunks"
    );
    assert_eq!(
        t.completed, REQUESTS as u64,
        "flightdeck clients not completed"
    );
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Interleaved timing of flightdeck and both baselines in one run: the ratios
/// printed are what BENCHMARKS.md reports (criterion's medians are printed beside
/// them).
fn interleaved<A, B, C>(label: &str, runs: usize, mut fd: A, mut lossy: B, mut lossless: C)
where
    A: FnMut() -> Tally,
    B: FnMut() -> Tally,
    C: FnMut() -> Tally,
{
    let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
    let (mut lost_b, mut lost_c) = (Tally::default(), Tally::default());
    for _ in 0..runs {
        let s = Instant::now();
        check_flightdeck(fd());
        a.push(s.elapsed());
        let s = Instant::now();
        lost_b.add(lossy());
        b.push(s.elapsed());
        let s = Instant::now();
        lost_c.add(lossless());
        c.push(s.elapsed());
    }
    let range = |v: &[Duration]| {
        let lo = v.iter().min().copied().unwrap_or_default();
        let hi = v.iter().max().copied().unwrap_or_default();
        format!("{lo:.1?}..{hi:.1?}")
    };
    println!(
        "{label}: run times flightdeck {}, lossy baseline {}, lossless baseline {}",
        range(&a),
        range(&b),
        range(&c)
    );
    let (ma, mb, mc) = (median(a), median(b), median(c));
    println!(
        "{label}: interleaved medians over {runs} runs each: flightdeck {ma:?}, lossy baseline {mb:?}, lossless baseline {mc:?}; ratio flightdeck/lossy = {:.3}, flightdeck/lossless = {:.3}",
        ma.as_secs_f64() / mb.as_secs_f64(),
        ma.as_secs_f64() / mc.as_secs_f64()
    );
    let per_run = (REQUESTS * CHUNKS) as u64;
    for (name, lost) in [("lossy", lost_b), ("lossless", lost_c)] {
        println!(
            "{label}: {name} baseline lost on average {:.0} of {per_run} chunks per run ({:.0} to Lagged)",
            (per_run * runs as u64 - lost.chunks) as f64 / runs as f64,
            lost.lagged as f64 / runs as f64
        );
    }
}

fn bench_e2e(c: &mut Criterion) {
    let rt = tokio_runtime();
    let trt = TokioRt(rt.handle().clone());
    let pool = SmolPool::new();
    let srt = SmolRt(pool.ex.clone());
    let tokio_fd = || rt.block_on(adapter_run(trt.clone(), tokio_adapter(&rt, MAIN), MAIN));
    let tokio_base = || rt.block_on(baseline_run(trt.clone(), MAIN, BROADCAST_CAPACITY));
    let tokio_lossless = || rt.block_on(baseline_run(trt.clone(), MAIN, LOSSLESS_CAPACITY));
    let smol_fd = || pool.block_on(adapter_run(srt.clone(), smol_adapter(&pool.ex, MAIN), MAIN));
    let smol_base = || pool.block_on(baseline_run(srt.clone(), MAIN, BROADCAST_CAPACITY));
    let smol_lossless = || pool.block_on(baseline_run(srt.clone(), MAIN, LOSSLESS_CAPACITY));

    // Correctness first (not timing): flightdeck loses nothing, the baselines lose.
    let t = tokio_fd();
    report("flightdeck-tokio", t);
    check_flightdeck(t);
    report("baseline/tokio (lossy)", tokio_base());
    report("baseline/tokio (lossless)", tokio_lossless());
    let t = smol_fd();
    report("flightdeck-smol", t);
    check_flightdeck(t);
    report("baseline/smol (lossy)", smol_base());
    report("baseline/smol (lossless)", smol_lossless());

    interleaved(
        "tokio",
        INTERLEAVED_RUNS,
        tokio_fd,
        tokio_base,
        tokio_lossless,
    );
    interleaved("smol", INTERLEAVED_RUNS, smol_fd, smol_base, smol_lossless);

    let mut g = c.benchmark_group("e2e");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    g.bench_function("flightdeck_tokio", |b| b.iter(tokio_fd));
    g.bench_function("baseline_tokio", |b| b.iter(tokio_base));
    g.bench_function("baseline_lossless_tokio", |b| b.iter(tokio_lossless));
    g.bench_function("flightdeck_smol", |b| b.iter(smol_fd));
    g.bench_function("baseline_smol", |b| b.iter(smol_base));
    g.bench_function("baseline_lossless_smol", |b| b.iter(smol_lossless));
    g.finish();
}

// ----- scaling -----------------------------------------------------------------

/// Median of `runs` timed calls.
/// With `check`, every one of `w.requests` clients must have read all chunks
/// and `Completed` (flightdeck's promise).
fn timed_median(runs: usize, mut f: impl FnMut() -> Tally, check: Option<Workload>) -> Duration {
    let mut v = Vec::with_capacity(runs);
    for _ in 0..runs {
        let s = Instant::now();
        let t = f();
        v.push(s.elapsed());
        if let Some(w) = check {
            assert_eq!(
                t.chunks,
                (w.requests * CHUNKS) as u64,
                "flightdeck lost chunks"
            );
            assert_eq!(
                t.completed, w.requests as u64,
                "flightdeck clients not completed"
            );
        }
    }
    median(v)
}

/// End-to-end time at 1k, 10k and 100k requests with 1, 100 and 10,000 readers
/// per flight (keys = requests / readers), flightdeck on both runtimes beside
/// the lossless baseline. 1k requests cannot have 10,000 readers per flight:
/// that cell is skipped. Three runs per cell (one at 100k requests).
fn bench_scaling(_c: &mut Criterion) {
    if std::env::var_os("E2E_SKIP_SCALING").is_some() {
        return;
    }
    let rt = tokio_runtime();
    let trt = TokioRt(rt.handle().clone());
    let pool = SmolPool::new();
    let srt = SmolRt(pool.ex.clone());
    println!("scaling: requests x readers per flight -> median end-to-end time (100 chunks per answer); ratio = flightdeck / lossless baseline");
    for requests in [1_000usize, 10_000, 100_000] {
        for readers in [1usize, 100, 10_000] {
            if readers > requests {
                continue;
            }
            let w = Workload {
                requests,
                keys: requests / readers,
            };
            let runs = if requests >= 100_000 { 1 } else { 3 };
            let ft = timed_median(
                runs,
                || rt.block_on(adapter_run(trt.clone(), tokio_adapter(&rt, w), w)),
                Some(w),
            );
            let bt = timed_median(
                runs,
                || rt.block_on(baseline_run(trt.clone(), w, LOSSLESS_CAPACITY)),
                None,
            );
            let fs = timed_median(
                runs,
                || pool.block_on(adapter_run(srt.clone(), smol_adapter(&pool.ex, w), w)),
                Some(w),
            );
            let bs = timed_median(
                runs,
                || pool.block_on(baseline_run(srt.clone(), w, LOSSLESS_CAPACITY)),
                None,
            );
            println!(
                "scaling: {requests} requests x {readers} readers/flight ({} flights, {runs} runs): tokio flightdeck {ft:.1?} lossless {bt:.1?} ratio {:.2}; smol flightdeck {fs:.1?} lossless {bs:.1?} ratio {:.2}",
                w.keys,
                ft.as_secs_f64() / bt.as_secs_f64(),
                fs.as_secs_f64() / bs.as_secs_f64(),
            );
        }
    }
}

/// Runs per system for the interleaved ratio.
const INTERLEAVED_RUNS: usize = 30;

// ----- latency -----------------------------------------------------------------

const LATENCY_SAMPLES: usize = 10_000;

fn percentiles(label: &str, mut v: Vec<Duration>) {
    v.sort();
    let at = |q: usize| v[(v.len() * q / 100).min(v.len() - 1)];
    println!(
        "{label}: p50 {:?}, p99 {:?}, max {:?} ({} samples)",
        at(50),
        at(99),
        v[v.len() - 1],
        v.len()
    );
}

/// One chunk's hop from the upstream to its reader: how long, and whether the
/// reader ran on the thread that produced the chunk.
#[derive(Clone, Copy)]
struct Hop {
    time: Duration,
    same_thread: bool,
}

/// The hops' percentiles, then the same split by where the reader ran: a
/// reader woken onto the other worker pays that thread's wake-up.
fn hop_percentiles(label: &str, hops: &[Hop]) {
    percentiles(label, hops.iter().map(|h| h.time).collect());
    for (place, same) in [("same thread", true), ("other thread", false)] {
        let v: Vec<Duration> = hops
            .iter()
            .filter(|h| h.same_thread == same)
            .map(|h| h.time)
            .collect();
        if !v.is_empty() {
            percentiles(&format!("{label}, reader on the {place}"), v);
        }
    }
}

async fn prepare_u64(
    k: u64,
) -> Result<flightdeck_tokio::Preparation<u64>, std::convert::Infallible> {
    Ok(flightdeck_tokio::Preparation::cacheable(k))
}

/// From `Manager::cancel` of the last member of the streaming flight to the next
/// waiting flight's upstream being first polled (stream limit 1). The upstream
/// future records `Instant::now()` when first polled. Called where it is awaited:
/// from a runtime task, or from the `block_on` thread.
async fn cancel_to_reuse<R: Runtime>(runtime: R) -> Vec<Duration> {
    let (tx, rx) = smol::channel::unbounded::<(u64, Instant)>();
    let upstream = move |k: u64| {
        let tx = tx.clone();
        async move {
            let _ = tx.try_send((k, Instant::now()));
            Ok::<_, std::convert::Infallible>(futures_lite::stream::pending::<
                Result<Bytes, std::convert::Infallible>,
            >())
        }
    };
    let config = Config {
        max_concurrent_streams: 1,
        ..e2e_config()
    };
    let m: Manager<u64, R> =
        Manager::with_runtime(runtime, config, prepare_u64, upstream).expect("valid config");
    let mut samples = Vec::with_capacity(LATENCY_SAMPLES);
    let mut k = 0u64;
    let mut a = m.submit_and_stream(k, k).expect("submit");
    rx.recv().await.expect("a started");
    for _ in 0..LATENCY_SAMPLES {
        k += 1;
        let b = m.submit_and_stream(k, k).expect("submit");
        // Let b's preparation finish first: b then waits for the stream slot only.
        while m.status(b.id()).map(|s| s.state)
            != Some(flightdeck_tokio::RequestState::WaitingForStream)
        {
            futures_lite::future::yield_now().await;
        }
        let t0 = Instant::now();
        m.cancel(a.id()).expect("cancel");
        let (started, t1) = rx.recv().await.expect("b started");
        debug_assert_eq!(started, k);
        samples.push(t1 - t0);
        a = b;
    }
    drop(a);
    m.shutdown().await;
    samples
}

/// From the upstream yielding a chunk to the attached reader (a spawned task
/// reading `next_item`) seeing it.
async fn chunk_to_reader<R: Runtime>(runtime: R, spawn: impl Fn(BoxFut)) -> Vec<Hop> {
    let (feed_tx, feed_rx) = smol::channel::unbounded::<Bytes>();
    let yielded = Arc::new(Mutex::new(None::<(Instant, ThreadId)>));
    let y = yielded.clone();
    let feed = Arc::new(Mutex::new(Some(feed_rx)));
    let upstream = move |_: u64| {
        let y = y.clone();
        let rx = feed.lock().expect("lock").take().expect("one flight");
        async move {
            Ok::<_, std::convert::Infallible>(rx.map(move |c| {
                *y.lock().expect("lock") = Some((Instant::now(), std::thread::current().id()));
                Ok::<_, std::convert::Infallible>(c)
            }))
        }
    };
    let m: Manager<u64, R> =
        Manager::with_runtime(runtime, e2e_config(), prepare_u64, upstream).expect("valid config");
    let mut s = m.submit_and_stream(1u64, 1).expect("submit");
    let (seen_tx, seen_rx) = smol::channel::unbounded::<(Instant, ThreadId)>();
    spawn(Box::pin(async move {
        while let Some(item) = s.next_item().await {
            if matches!(item, Item::Chunk(_)) {
                let _ = seen_tx.try_send((Instant::now(), std::thread::current().id()));
            }
        }
    }));
    let mut samples = Vec::with_capacity(LATENCY_SAMPLES);
    for _ in 0..LATENCY_SAMPLES {
        feed_tx.send(Bytes::from_static(CHUNK)).await.expect("feed");
        let (t1, reader) = seen_rx.recv().await.expect("seen");
        let (t0, upstream) = yielded.lock().expect("lock").take().expect("yielded");
        samples.push(Hop {
            time: t1 - t0,
            same_thread: reader == upstream,
        });
    }
    drop(feed_tx); // the upstream ends, the reader reads `Completed`
    m.shutdown().await;
    samples
}

/// The same hop without flightdeck, for the floor the runtime itself sets: a
/// task forwards each fed chunk into a tokio broadcast channel (the baselines'
/// primitive), a spawned reader receives it; from the forward to the reader.
async fn chunk_to_reader_baseline(spawn: impl Fn(BoxFut)) -> Vec<Hop> {
    let (feed_tx, feed_rx) = smol::channel::unbounded::<Bytes>();
    let (tx, mut rx) = broadcast::channel::<(Bytes, Instant, ThreadId)>(LOSSLESS_CAPACITY);
    spawn(Box::pin(async move {
        while let Ok(chunk) = feed_rx.recv().await {
            let _ = tx.send((chunk, Instant::now(), std::thread::current().id()));
        }
    }));
    let (seen_tx, seen_rx) = smol::channel::unbounded::<Hop>();
    spawn(Box::pin(async move {
        while let Ok((_, sent, sender)) = rx.recv().await {
            let _ = seen_tx.try_send(Hop {
                time: sent.elapsed(),
                same_thread: sender == std::thread::current().id(),
            });
        }
    }));
    let mut samples = Vec::with_capacity(LATENCY_SAMPLES);
    for _ in 0..LATENCY_SAMPLES {
        feed_tx.send(Bytes::from_static(CHUNK)).await.expect("feed");
        samples.push(seen_rx.recv().await.expect("seen"));
    }
    samples
}

fn bench_latency(_c: &mut Criterion) {
    let rt = tokio_runtime();
    let handle = rt.handle().clone();
    let tokio_rt = || TokioRuntime::with_handle(handle.clone());
    // Called from a task (a request handler, the usual place a cancel comes from)
    // the upstream's spawn lands on the worker's own queue; called from the bench
    // thread (outside the runtime) it must unpark an idle worker thread. Both shown.
    percentiles(
        "latency/tokio cancel-to-reuse (cancel from a runtime task)",
        rt.block_on(rt.spawn(cancel_to_reuse(tokio_rt())))
            .expect("task"),
    );
    percentiles(
        "latency/tokio cancel-to-reuse (cancel from outside the runtime)",
        rt.block_on(cancel_to_reuse(tokio_rt())),
    );
    let h = handle.clone();
    hop_percentiles(
        "latency/tokio chunk-to-reader",
        &rt.block_on(rt.spawn(chunk_to_reader(tokio_rt(), move |f| {
            drop(h.spawn(f));
        })))
        .expect("task"),
    );
    let h = handle.clone();
    hop_percentiles(
        "latency/tokio chunk-to-reader, baseline (broadcast, no flightdeck)",
        &rt.block_on(rt.spawn(chunk_to_reader_baseline(move |f| {
            drop(h.spawn(f));
        })))
        .expect("task"),
    );
    let pool = SmolPool::new();
    let ex = pool.ex.clone();
    percentiles(
        "latency/smol cancel-to-reuse (cancel from a runtime task)",
        pool.block_on(cancel_to_reuse(SmolRuntime::with_executor(ex.clone()))),
    );
    let spawner = ex.clone();
    hop_percentiles(
        "latency/smol chunk-to-reader",
        &pool.block_on(chunk_to_reader(
            SmolRuntime::with_executor(ex.clone()),
            move |f| {
                spawner.spawn(f).detach();
            },
        )),
    );
    hop_percentiles(
        "latency/smol chunk-to-reader, baseline (broadcast, no flightdeck)",
        &pool.block_on(chunk_to_reader_baseline(move |f| {
            ex.spawn(f).detach();
        })),
    );
}

// ----- the card's primitives ---------------------------------------------------

/// Nanoseconds per operation of `f` run `ops` times.
fn ns_per(ops: u64, f: impl FnOnce()) -> f64 {
    let start = Instant::now();
    f();
    start.elapsed().as_nanos() as f64 / ops as f64
}

/// What decided against `async-lock` and `async-channel` for the machine (see
/// the driver's module docs): the cost of one input under `std::sync::Mutex`
/// (what the driver does), under `async_lock::Mutex`, and sent as a message to
/// a thread that owns the state and answers (an actor on `async-channel`),
/// uncontended and from two threads.
fn bench_primitives(_c: &mut Criterion) {
    const OPS: u64 = 1_000_000;
    let std_lock = std::sync::Mutex::new(0u64);
    let std_one = ns_per(OPS, || {
        for _ in 0..OPS {
            *std_lock.lock().expect("lock") += 1;
        }
    });
    let async_lock = async_lock::Mutex::new(0u64);
    let async_one = ns_per(OPS, || {
        futures_lite::future::block_on(async {
            for _ in 0..OPS {
                *async_lock.lock().await += 1;
            }
        });
    });
    let two = |f: &(dyn Fn() + Sync)| {
        ns_per(OPS, || {
            std::thread::scope(|s| {
                s.spawn(f);
                s.spawn(f);
            });
        })
    };
    let std_two = two(&|| {
        for _ in 0..OPS / 2 {
            *std_lock.lock().expect("lock") += 1;
        }
    });
    let async_two = two(&|| {
        futures_lite::future::block_on(async {
            for _ in 0..OPS / 2 {
                *async_lock.lock().await += 1;
            }
        });
    });
    // The actor: inputs through a channel to the owner, answers back.
    let (tx, rx) = async_channel::bounded::<(u64, async_channel::Sender<u64>)>(64);
    let owner = std::thread::spawn(move || {
        futures_lite::future::block_on(async {
            let mut state = 0u64;
            while let Ok((x, reply)) = rx.recv().await {
                state += x;
                let _ = reply.send(state).await;
            }
        });
    });
    let actor_ops = OPS / 10;
    let actor = ns_per(actor_ops, || {
        futures_lite::future::block_on(async {
            let (reply_tx, reply_rx) = async_channel::bounded(1);
            for _ in 0..actor_ops {
                tx.send((1, reply_tx.clone())).await.expect("owner");
                reply_rx.recv().await.expect("reply");
            }
        });
    });
    drop(tx);
    owner.join().expect("owner");
    println!(
        "primitives: one input, uncontended: std::sync::Mutex {std_one:.1} ns, async_lock::Mutex {async_one:.1} ns; \
         two threads: std {std_two:.1} ns, async_lock {async_two:.1} ns per input; \
         sent to an owner thread over async-channel and answered: {actor:.0} ns per input"
    );
}

criterion_group!(
    benches,
    bench_primitives,
    bench_latency,
    bench_e2e,
    bench_scaling
);

/// A profiling mode, for `perf` and `valgrind`: `E2E_PROFILE=<workload>:<runs>`
/// runs one workload of the main comparison `runs` times and nothing else
/// (`flightdeck_tokio`, `lossy_tokio`, `lossless_tokio`, and the same with
/// `_smol`), or one chunk-to-reader latency measurement on smol
/// (`chunk_to_reader_smol`, `chunk_to_reader_baseline_smol`), so a
/// profiler's counts belong to that workload alone.
fn profile(spec: &str) {
    let (name, runs) = spec.split_once(':').unwrap_or((spec, "20"));
    let runs: usize = runs.parse().expect("E2E_PROFILE=<workload>:<runs>");
    let rt = tokio_runtime();
    let trt = TokioRt(rt.handle().clone());
    let pool = SmolPool::new();
    let srt = SmolRt(pool.ex.clone());
    let mut one: Box<dyn FnMut() -> Tally> = match name {
        "flightdeck_tokio" => {
            Box::new(|| rt.block_on(adapter_run(trt.clone(), tokio_adapter(&rt, MAIN), MAIN)))
        }
        "lossy_tokio" => {
            Box::new(|| rt.block_on(baseline_run(trt.clone(), MAIN, BROADCAST_CAPACITY)))
        }
        "lossless_tokio" => {
            Box::new(|| rt.block_on(baseline_run(trt.clone(), MAIN, LOSSLESS_CAPACITY)))
        }
        "flightdeck_smol" => {
            Box::new(|| pool.block_on(adapter_run(srt.clone(), smol_adapter(&pool.ex, MAIN), MAIN)))
        }
        "lossy_smol" => {
            Box::new(|| pool.block_on(baseline_run(srt.clone(), MAIN, BROADCAST_CAPACITY)))
        }
        "lossless_smol" => {
            Box::new(|| pool.block_on(baseline_run(srt.clone(), MAIN, LOSSLESS_CAPACITY)))
        }
        // One latency measurement (10,000 chunks through one hop), smol.
        "chunk_to_reader_smol" => Box::new(|| {
            let ex = pool.ex.clone();
            let spawner = ex.clone();
            let runtime = SmolRuntime::with_executor(ex);
            let v = pool.block_on(chunk_to_reader(runtime, move |f| spawner.spawn(f).detach()));
            std::hint::black_box(v);
            Tally::default()
        }),
        "chunk_to_reader_baseline_smol" => Box::new(|| {
            let ex = pool.ex.clone();
            let v = pool.block_on(chunk_to_reader_baseline(move |f| ex.spawn(f).detach()));
            std::hint::black_box(v);
            Tally::default()
        }),
        other => panic!("E2E_PROFILE: unknown workload {other:?}"),
    };
    let start = Instant::now();
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let s = Instant::now();
        let t = one();
        times.push(s.elapsed());
        if name.starts_with("flightdeck_") {
            check_flightdeck(t);
        }
    }
    println!(
        "profile {name}: {runs} runs in {:?}, median {:?}",
        start.elapsed(),
        median(times)
    );
}

fn main() {
    if let Ok(spec) = std::env::var("E2E_PROFILE") {
        profile(&spec);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
