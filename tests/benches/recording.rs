//! What trace recording costs (issue 11 §6): the e2e bench's main workload
//! (10,000 requests over 1,000 keys, 100 chunks each from an instant upstream,
//! limits 10 preparations / 5 streams, every client its own task reading to
//! the end) through a fresh manager per run, three ways, interleaved in one
//! run: no recorder, a recorder writing to `io::sink()` (the encoding and the
//! writer thread, no I/O), and a recorder writing to a file in the temporary
//! directory. A recording run's time includes `stop_recording` (the last
//! flush). Prints the medians and their ratios against the run without a
//! recorder, and the trace's size.
//!
//! `cargo bench -p flightdeck-tests --bench recording`
//! (`RECORDING_BENCH_OFF_ONLY=1`: only the runs without a recorder, to compare
//! two builds). Timings are measured,
//! never asserted; every client is checked to have read all 100 chunks and
//! `Completed`, with or without a recorder.
#![allow(missing_docs)]

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flightdeck_core::driver::{Manager, Runtime};
use flightdeck_core::{Config, Item, Key, Outcome};
use flightdeck_smol::SmolRuntime;
use flightdeck_tokio::TokioRuntime;
use futures_lite::Stream;

const REQUESTS: usize = 10_000;
const KEYS: usize = 1_000;
const CHUNKS: usize = 100;
const CHUNK: &[u8] = b"a token of some twenty bytes";
/// Runs of each way (`RECORDING_BENCH_RUNS` overrides).
fn runs() -> usize {
    std::env::var("RECORDING_BENCH_RUNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(15)
}

/// Where a run's trace goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Recording {
    Off,
    Sink,
    File,
}

fn config() -> Config {
    Config {
        queue_capacity: KEYS + 16,
        max_concurrent_requests: 10,
        max_concurrent_streams: 5,
        ..Config::default()
    }
}

async fn prepare(_: ()) -> Result<flightdeck_tokio::Preparation<()>, std::convert::Infallible> {
    Ok(flightdeck_tokio::Preparation::cacheable(()))
}

async fn upstream(
    _: (),
) -> Result<
    impl Stream<Item = Result<Bytes, std::convert::Infallible>> + Send,
    std::convert::Infallible,
> {
    Ok(futures_lite::stream::iter(
        (0..CHUNKS).map(|_| Ok(Bytes::from_static(CHUNK))),
    ))
}

fn trace_path() -> PathBuf {
    std::env::temp_dir().join(format!("flightdeck-bench-{}.trace", std::process::id()))
}

/// One run on `runtime`; `spawn` starts a client task. Returns the trace's
/// size in bytes and records.
async fn run<R: Runtime + Clone>(
    runtime: R,
    spawn: impl Fn(std::pin::Pin<Box<dyn Future<Output = ()> + Send>>),
    recording: Recording,
) -> (u64, u64) {
    let m: Manager<(), R> =
        Manager::with_runtime(runtime, config(), prepare, upstream).expect("valid config");
    match recording {
        Recording::Off => {}
        Recording::Sink => m.record_to(std::io::sink()).expect("records"),
        Recording::File => m
            .record_to(std::fs::File::create(trace_path()).expect("temp file"))
            .expect("records"),
    }
    let left = Arc::new(AtomicU64::new(REQUESTS as u64));
    let chunks = Arc::new(AtomicU64::new(0));
    let (done_tx, done_rx) = async_channel::bounded::<()>(1);
    for i in 0..REQUESTS {
        let mut s = m
            .submit_and_stream(Key::from((i % KEYS) as u64), ())
            .expect("submit");
        let (left, chunks, done) = (left.clone(), chunks.clone(), done_tx.clone());
        spawn(Box::pin(async move {
            while let Some(item) = s.next_item().await {
                match item {
                    Item::Chunk(_) => {
                        chunks.fetch_add(1, Ordering::Relaxed);
                    }
                    Item::End(Outcome::Completed) => {}
                    Item::End(other) => panic!("a client ended with {other:?}"),
                }
            }
            if left.fetch_sub(1, Ordering::AcqRel) == 1 {
                let _ = done.try_send(());
            }
        }));
    }
    let _ = done_rx.recv().await;
    assert_eq!(chunks.load(Ordering::Relaxed), (REQUESTS * CHUNKS) as u64);
    match recording {
        Recording::Off => (0, 0),
        Recording::Sink | Recording::File => {
            let summary = m.stop_recording().expect("recorded");
            (summary.bytes, summary.records)
        }
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// [`runs`] interleaved runs of each way; prints medians and ratios.
fn compare(label: &str, mut one: impl FnMut(Recording) -> (u64, u64)) {
    let ways: &[Recording] = if std::env::var_os("RECORDING_BENCH_OFF_ONLY").is_some() {
        &[Recording::Off]
    } else {
        &[Recording::Off, Recording::Sink, Recording::File]
    };
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); ways.len()];
    let (mut bytes, mut records) = (0, 0);
    one(Recording::Off); // warm-up
    let runs = runs();
    for _ in 0..runs {
        for (i, way) in ways.iter().enumerate() {
            let start = Instant::now();
            let written = one(*way);
            times[i].push(start.elapsed());
            bytes = bytes.max(written.0);
            records = records.max(written.1);
        }
    }
    let medians: Vec<Duration> = times.into_iter().map(median).collect();
    let base = medians[0].as_secs_f64();
    if medians.len() == 1 {
        println!(
            "recording {label}: median over {runs} runs without a recorder: {:.1?}",
            medians[0]
        );
        return;
    }
    println!(
        "recording {label}: medians over {runs} interleaved runs: off {:.1?}, sink {:.1?}, file {:.1?}; \
         ratio sink/off = {:.3}, file/off = {:.3}; trace {:.1} MB, {records} records per run",
        medians[0],
        medians[1],
        medians[2],
        medians[1].as_secs_f64() / base,
        medians[2].as_secs_f64() / base,
        bytes as f64 / 1e6
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let handle = rt.handle().clone();
    compare("tokio", |way| {
        let runtime = TokioRuntime::with_handle(handle.clone());
        let h = handle.clone();
        rt.block_on(run(runtime, move |f| drop(h.spawn(f)), way))
    });

    let ex = Arc::new(smol::Executor::new());
    let (stop, stopped) = async_channel::unbounded::<()>();
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (ex, stopped) = (ex.clone(), stopped.clone());
            std::thread::spawn(move || {
                let _ = smol::block_on(ex.run(stopped.recv()));
            })
        })
        .collect();
    compare("smol", |way| {
        let runtime = SmolRuntime::with_executor(ex.clone());
        let spawner = ex.clone();
        smol::block_on(ex.spawn(run(runtime, move |f| spawner.spawn(f).detach(), way)))
    });
    drop(stop);
    for t in threads {
        let _ = t.join();
    }
    let _ = std::fs::remove_file(trace_path());
}
