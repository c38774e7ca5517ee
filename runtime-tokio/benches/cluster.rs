//! Cluster mode's cost, on one real `redis-server` of the bench's own:
//!
//! - **herd**: 60 identical requests (one key, a fresh key per run) spread
//!   round-robin over the instances, until every stream ended; one instance
//!   without cluster mode (the baseline), one instance on Redis, three
//!   instances on Redis (three managers in this process, each with its own
//!   `Cluster` handle: its own connections);
//! - **Redis round trips per request** in each, counted by the `Cluster`
//!   handles (`Cluster::round_trips`: every script call, command and `XREAD`);
//! - **time to first chunk**: a request on the owner's instance and one on
//!   each of the two other instances, submitted together; the upstream's first
//!   chunk comes `first` after it opens. The extra time of a follower over the
//!   owner's member is the price of crossing instances (append, then the
//!   follower's blocked `XREAD` returning, plus the follower's connection setup
//!   when the chunk comes before it is in place).
//!
//! `cargo bench -p flightdeck-tokio --features cluster --bench cluster`
//! (`RUNS=n` to change the 30 interleaved runs). Prints medians; the numbers
//! are written up in BENCHMARKS.md ("Cluster") and docs/cluster.md.

#[path = "../tests/redis_server/mod.rs"]
mod redis_server;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::StreamExt as _;
use redis_server::RedisServer;

use flightdeck_tokio::cluster::{Cluster, ClusterConfig, RedisCoordinator};
use flightdeck_tokio::driver::Runtime as _;
use flightdeck_tokio::{
    Bytes, Config, Item, Manager, Outcome, Preparation, ResultStream, TokioRuntime,
};

const HERD: usize = 60;
const CHUNKS: usize = 20;

/// The counting fake upstream: `first` before the first chunk, `pause` before
/// each other one.
fn manager(
    calls: &Arc<AtomicUsize>,
    first: Duration,
    pause: Duration,
    cluster: Option<Cluster>,
) -> Manager<()> {
    let calls = Arc::clone(calls);
    let upstream = move |(): ()| {
        calls.fetch_add(1, Ordering::SeqCst);
        async move {
            let chunks = (0..CHUNKS).map(|i| (i, Bytes::from(format!("chunk {i} "))));
            let stream = futures_lite::stream::iter(chunks).then(move |(i, chunk)| async move {
                tokio::time::sleep(if i == 0 { first } else { pause }).await;
                Ok::<_, std::io::Error>(chunk)
            });
            Ok::<_, std::io::Error>(stream)
        }
    };
    let prepare = |(): ()| async { Ok::<_, std::io::Error>(Preparation::cacheable(())) };
    let runtime = TokioRuntime::current();
    match cluster {
        None => Manager::with_runtime(runtime, Config::default(), prepare, upstream),
        Some(cluster) => Manager::with_coordinator(
            runtime,
            Config::default(),
            prepare,
            upstream,
            Arc::new(RedisCoordinator::new(cluster)),
        ),
    }
    .expect("manager")
}

/// Reads a stream to its end; the time of its first chunk.
async fn read(mut stream: ResultStream, start: Instant) -> Duration {
    let mut first = None;
    let mut chunks = 0;
    while let Some(item) = stream.next_item().await {
        match item {
            Item::Chunk(_) => {
                chunks += 1;
                first.get_or_insert_with(|| start.elapsed());
            }
            Item::End(outcome) => {
                assert_eq!((outcome, chunks), (Outcome::Completed, CHUNKS));
            }
        }
    }
    first.expect("a chunk")
}

fn config(instance: &str) -> ClusterConfig {
    ClusterConfig {
        instance: instance.to_owned(),
        prefix: "bench:".to_owned(),
        lease: Duration::from_secs(3),
        log_retention: Duration::from_secs(1),
        cache_ttl: Duration::from_secs(60),
        cache_capacity: 4096,
        follow_poll: Duration::from_secs(1),
        response_timeout: Duration::from_secs(2),
    }
}

struct Setup {
    managers: Vec<Manager<()>>,
    clusters: Vec<Cluster>,
    calls: Arc<AtomicUsize>,
}

impl Setup {
    async fn new(
        server: &RedisServer,
        instances: usize,
        first: Duration,
        pause: Duration,
    ) -> Setup {
        let calls = Arc::new(AtomicUsize::new(0));
        let mut managers = Vec::new();
        let mut clusters = Vec::new();
        if instances == 0 {
            managers.push(manager(&calls, first, pause, None));
        }
        for i in 0..instances {
            let cluster = Cluster::connect(&server.url(), config(&format!("i{i}")))
                .await
                .expect("connect");
            clusters.push(cluster.clone());
            managers.push(manager(&calls, first, pause, Some(cluster)));
        }
        Setup {
            managers,
            clusters,
            calls,
        }
    }

    fn round_trips(&self) -> u64 {
        self.clusters.iter().map(Cluster::round_trips).sum()
    }

    async fn shutdown(self) {
        for m in &self.managers {
            m.shutdown().await;
        }
    }
}

/// One herd on `setup`: (time to complete, round trips).
async fn herd(setup: &Setup, key: &str) -> (Duration, u64) {
    let calls = setup.calls.load(Ordering::SeqCst);
    let trips = setup.round_trips();
    let start = Instant::now();
    let readers: Vec<_> = (0..HERD)
        .map(|i| {
            let m = &setup.managers[i % setup.managers.len()];
            tokio::spawn(read(m.submit_and_stream(key, ()).expect("submit"), start))
        })
        .collect();
    for reader in readers {
        reader.await.expect("reader");
    }
    let elapsed = start.elapsed();
    assert_eq!(
        setup.calls.load(Ordering::SeqCst),
        calls + 1,
        "one upstream call"
    );
    // Let the owner's release finish before counting.
    tokio::time::sleep(Duration::from_millis(20)).await;
    (elapsed, setup.round_trips() - trips)
}

/// One request on each of three instances, together: (owner's member, the
/// slower follower) time to first chunk.
async fn first_chunks(setup: &Setup, key: &str) -> (Duration, Duration) {
    let start = Instant::now();
    let before: Vec<u64> = setup
        .managers
        .iter()
        .map(|m| m.stats().totals.streams_started)
        .collect();
    let readers: Vec<_> = setup
        .managers
        .iter()
        .map(|m| tokio::spawn(read(m.submit_and_stream(key, ()).expect("submit"), start)))
        .collect();
    let mut times = Vec::new();
    for reader in readers {
        times.push(reader.await.expect("reader"));
    }
    let owner = setup
        .managers
        .iter()
        .zip(&before)
        .position(|(m, b)| m.stats().totals.streams_started > *b)
        .expect("an owner");
    let follower = times
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != owner)
        .map(|(_, t)| *t)
        .max()
        .expect("followers");
    tokio::time::sleep(Duration::from_millis(20)).await;
    (times[owner], follower)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(30);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "cluster bench: {runs} interleaved runs, load average at start: {}",
        load.trim()
    );
    let server = RedisServer::start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let pause = Duration::from_millis(1);
        let local = Setup::new(&server, 0, pause, pause).await;
        let one = Setup::new(&server, 1, pause, pause).await;
        let three = Setup::new(&server, 3, pause, pause).await;
        let mut times: [Vec<Duration>; 3] = Default::default();
        let mut trips: [Vec<u64>; 3] = Default::default();
        for run in 0..runs {
            for (i, setup) in [&local, &one, &three].into_iter().enumerate() {
                let (time, rt) = herd(setup, &format!("herd-{i}-{run}")).await;
                times[i].push(time);
                trips[i].push(rt);
            }
        }
        let base = median(times[0].clone());
        println!(
            "herd of {HERD} requests, one key, {CHUNKS} chunks 1 ms apart (median of {runs}):"
        );
        for (i, name) in [
            "one instance, local (baseline)",
            "one instance on Redis",
            "three instances on Redis",
        ]
        .into_iter()
        .enumerate()
        {
            let time = median(times[i].clone());
            let total: u64 = trips[i].iter().sum();
            println!(
                "  {name:32} {:>10}  x{:.2}  Redis round trips per request {:.2} (per herd {:.1})",
                ms(time),
                time.as_secs_f64() / base.as_secs_f64(),
                total as f64 / (runs * HERD) as f64,
                total as f64 / runs as f64,
            );
        }
        for setup in [local, one, three] {
            setup.shutdown().await;
        }

        for first in [Duration::from_millis(1), Duration::from_millis(50)] {
            let three = Setup::new(&server, 3, first, pause).await;
            let mut owner = Vec::new();
            let mut follower = Vec::new();
            let mut extra = Vec::new();
            for run in 0..runs {
                let (o, f) =
                    first_chunks(&three, &format!("first-{}-{run}", first.as_millis())).await;
                owner.push(o);
                follower.push(f);
                extra.push(f.saturating_sub(o));
            }
            println!(
                "time to first chunk, first chunk {} after the upstream opens (median of {runs}): \
                 owner's instance {}, other instance (slower of two) {}, extra {}",
                ms(first),
                ms(median(owner)),
                ms(median(follower)),
                ms(median(extra)),
            );
            three.shutdown().await;
        }
    });
}
