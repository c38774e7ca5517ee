//! Cluster mode end to end at the library level: several
//! `flightdeck_tokio::Manager`s in one process on one real `redis-server`
//! (`RedisCoordinator`), with a counting fake upstream.
//!
//! Every test starts its own server ([`RedisServer`]), is bounded in time
//! ([`bounded`]), and ends by checking that only cache entries are left in Redis
//! once the retention has passed ([`assert_only_cache_keys`]) and that every
//! manager's tasks are gone after shutdown.

mod redis_server;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_lite::StreamExt as _;
use redis_server::{assert_only_cache_keys, bounded, cluster_config, connect, RedisServer};

use flightdeck_tokio::cluster::{Cluster, RedisCoordinator};
use flightdeck_tokio::driver::Runtime as _;
use flightdeck_tokio::{
    Bytes, Config, Failure, Item, Manager, Outcome, Preparation, ResultStream, TokioRuntime,
};

fn expected(chunks: usize) -> Vec<Bytes> {
    (0..chunks)
        .map(|i| Bytes::from(format!("chunk {i} ")))
        .collect()
}

/// The fake upstream: counts its calls in `calls`, waits `first` before its
/// first chunk and `pause` before each of the others.
#[derive(Clone)]
struct Fake {
    calls: Arc<AtomicUsize>,
    chunks: usize,
    first: Duration,
    pause: Duration,
}

impl Fake {
    fn new(chunks: usize, pause: Duration) -> Self {
        Fake {
            calls: Arc::new(AtomicUsize::new(0)),
            chunks,
            first: pause,
            pause,
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// A manager on `runtime` with this upstream, coordinated by `cluster`.
    fn manager(&self, runtime: TokioRuntime, cluster: Cluster) -> Manager<()> {
        let fake = self.clone();
        let upstream = move |(): ()| {
            fake.calls.fetch_add(1, Ordering::SeqCst);
            let (first, pause) = (fake.first, fake.pause);
            let chunks = expected(fake.chunks).into_iter().enumerate();
            async move {
                let stream =
                    futures_lite::stream::iter(chunks).then(move |(i, chunk)| async move {
                        tokio::time::sleep(if i == 0 { first } else { pause }).await;
                        Ok::<_, std::io::Error>(chunk)
                    });
                Ok::<_, std::io::Error>(stream)
            }
        };
        let prepare = |(): ()| async { Ok::<_, std::io::Error>(Preparation::cacheable(())) };
        let coordinator = Arc::new(RedisCoordinator::new(cluster));
        Manager::with_coordinator(runtime, Config::default(), prepare, upstream, coordinator)
            .expect("manager")
    }
}

async fn read_all(mut stream: ResultStream) -> (Vec<Bytes>, Outcome) {
    let mut chunks = Vec::new();
    while let Some(item) = stream.next_item().await {
        match item {
            Item::Chunk(chunk) => chunks.push(chunk),
            Item::End(outcome) => return (chunks, outcome),
        }
    }
    panic!("stream ended without an end item");
}

/// Reads `n` chunks (the stream must not end before).
async fn read_chunks(stream: &mut ResultStream, n: usize) -> Vec<Bytes> {
    let mut chunks = Vec::new();
    while chunks.len() < n {
        match stream.next_item().await {
            Some(Item::Chunk(chunk)) => chunks.push(chunk),
            other => panic!("expected a chunk, got {other:?}"),
        }
    }
    chunks
}

/// Waits until each manager runs only its timer: every claim, follow and
/// publisher task ended with its flight.
async fn settled(managers: &[&Manager<()>]) {
    for _ in 0..1000 {
        if managers.iter().all(|m| m.tasks_running() == 1) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let running: Vec<u64> = managers.iter().map(|m| m.tasks_running()).collect();
    panic!("tasks still running after the flights ended: {running:?}");
}

async fn shut_down(managers: &[&Manager<()>]) {
    for m in managers {
        m.check_invariants().expect("invariants");
        m.shutdown().await;
        assert_eq!(m.tasks_running(), 0);
    }
}

/// A tokio runtime of its own, for a manager the test kills with it.
fn own_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herd_of_60_over_three_managers_makes_one_upstream_call() {
    let server = RedisServer::start();
    bounded(async {
        let fake = Fake::new(20, Duration::from_millis(5));
        let mut managers = Vec::new();
        let mut clusters = Vec::new();
        for name in ["a", "b", "c"] {
            let cluster = connect(&server, name, "herd:").await;
            clusters.push(cluster.clone());
            managers.push(fake.manager(TokioRuntime::current(), cluster));
        }
        let readers: Vec<_> = (0..60)
            .map(|i| {
                let stream = managers[i % 3]
                    .submit_and_stream("herd", ())
                    .expect("submit");
                tokio::spawn(read_all(stream))
            })
            .collect();
        for reader in readers {
            let (chunks, outcome) = reader.await.expect("reader");
            assert_eq!(outcome, Outcome::Completed);
            assert_eq!(chunks, expected(20));
        }
        assert_eq!(fake.calls(), 1, "exactly one upstream call");
        let followed: u64 = managers.iter().map(|m| m.stats().totals.followed).sum();
        let hits: u64 = managers
            .iter()
            .map(|m| m.stats().totals.remote_cache_hits)
            .sum();
        assert_eq!(
            followed + hits,
            2,
            "the other two instances followed or hit"
        );
        let m: Vec<&Manager<()>> = managers.iter().collect();
        settled(&m).await;
        shut_down(&m).await;
        assert_only_cache_keys(&server, "herd:").await;
        assert!(server.keys("herd:").iter().any(|k| k.ends_with(":cache")));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_cached_via_a_is_a_hit_on_b() {
    let server = RedisServer::start();
    bounded(async {
        let fake = Fake::new(5, Duration::ZERO);
        let a = fake.manager(TokioRuntime::current(), connect(&server, "a", "hit:").await);
        let b = fake.manager(TokioRuntime::current(), connect(&server, "b", "hit:").await);
        let result = read_all(a.submit_and_stream("k", ()).expect("submit")).await;
        assert_eq!(result, (expected(5), Outcome::Completed));
        settled(&[&a]).await; // the release (and cache write) is done
        let result = read_all(b.submit_and_stream("k", ()).expect("submit")).await;
        assert_eq!(result, (expected(5), Outcome::Completed));
        assert_eq!(fake.calls(), 1, "B was served from the cluster's cache");
        assert_eq!(b.stats().totals.remote_cache_hits, 1);
        assert_eq!(b.stats().totals.streams_started, 0);
        settled(&[&a, &b]).await;
        shut_down(&[&a, &b]).await;
        assert_only_cache_keys(&server, "hit:").await;
    })
    .await;
}

/// Design choice (docs/cluster.md): followers that already read part of the
/// answer end `Failed(OwnerLost)` after those chunks (a new upstream call would
/// not continue it token for token).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_killed_mid_stream_fails_followers_that_read_with_owner_lost() {
    let server = RedisServer::start();
    let owner_runtime = own_runtime();
    bounded(async {
        let fake = Fake::new(50, Duration::from_millis(20));
        let handle = owner_runtime.handle().clone();
        let cluster_a = handle
            .spawn(connect_owned(server.url(), "a", "kill:"))
            .await
            .expect("connect on A's runtime");
        let a = fake.manager(TokioRuntime::with_handle(handle), cluster_a);
        let b = fake.manager(
            TokioRuntime::current(),
            connect(&server, "b", "kill:").await,
        );
        let c = fake.manager(
            TokioRuntime::current(),
            connect(&server, "c", "kill:").await,
        );
        let mut on_a = a.submit_and_stream("k", ()).expect("submit");
        read_chunks(&mut on_a, 1).await; // A owns the key and streams
        let mut on_b = b.submit_and_stream("k", ()).expect("submit");
        let mut on_c = c.submit_and_stream("k", ()).expect("submit");
        let read_b = read_chunks(&mut on_b, 2).await;
        let read_c = read_chunks(&mut on_c, 2).await;
        // Kill A: its tasks (upstream, renewals, Redis connection) stop at once.
        owner_runtime.shutdown_background();
        for (mut read, stream) in [(read_b, on_b), (read_c, on_c)] {
            let (rest, outcome) = read_all(stream).await;
            read.extend(rest);
            assert_eq!(outcome, Outcome::Failed(Failure::OwnerLost));
            assert!(read.len() >= 2 && read.len() < 50, "{} chunks", read.len());
            assert_eq!(read, expected(read.len()), "a prefix of the owner's answer");
        }
        assert_eq!(fake.calls(), 1, "nobody took over");
        drop(on_a);
        settled(&[&b, &c]).await;
        shut_down(&[&b, &c]).await;
        assert_eq!(a.tasks_running(), 0, "A's runtime dropped its tasks");
        assert_only_cache_keys(&server, "kill:").await;
    })
    .await;
}

/// Design choice (docs/cluster.md): a follower that has read nothing when its
/// owner is lost claims again and may become the owner; its members never see
/// the loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_killed_before_its_first_chunk_lets_a_follower_take_over() {
    let server = RedisServer::start();
    let owner_runtime = own_runtime();
    bounded(async {
        let fake = Fake::new(5, Duration::from_millis(5));
        let slow = Fake {
            first: Duration::from_secs(60),
            ..fake.clone()
        };
        let handle = owner_runtime.handle().clone();
        let cluster_a = handle
            .spawn(connect_owned(server.url(), "a", "take:"))
            .await
            .expect("connect on A's runtime");
        let a = slow.manager(TokioRuntime::with_handle(handle), cluster_a);
        let b = fake.manager(
            TokioRuntime::current(),
            connect(&server, "b", "take:").await,
        );
        let on_a = a.submit_and_stream("k", ()).expect("submit");
        while fake.calls() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await; // A owns the key
        }
        let on_b = b.submit_and_stream("k", ()).expect("submit");
        while b.stats().following == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        owner_runtime.shutdown_background();
        let result = read_all(on_b).await;
        assert_eq!(result, (expected(5), Outcome::Completed));
        assert_eq!(fake.calls(), 2, "B claimed again and ran the upstream");
        assert_eq!(b.stats().totals.claims, 2);
        drop(on_a);
        settled(&[&b]).await;
        shut_down(&[&b]).await;
        assert_eq!(a.tasks_running(), 0);
        assert_only_cache_keys(&server, "take:").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_mid_stream_fails_every_member_then_new_requests_work() {
    let mut server = RedisServer::start();
    bounded(async {
        let fake = Fake::new(50, Duration::from_millis(20));
        let mut managers = Vec::new();
        for name in ["a", "b", "c"] {
            let cluster = connect(&server, name, "restart:").await;
            managers.push(fake.manager(TokioRuntime::current(), cluster));
        }
        let mut on_a = managers[0].submit_and_stream("k", ()).expect("submit");
        read_chunks(&mut on_a, 1).await; // A owns the key and streams
        let mut streams = vec![on_a];
        for m in &managers[1..] {
            let mut stream = m.submit_and_stream("k", ()).expect("submit");
            read_chunks(&mut stream, 1).await;
            streams.push(stream);
        }
        server.restart();
        for stream in streams {
            let (_, outcome) = read_all(stream).await;
            eprintln!("after the restart: {outcome}");
            assert!(
                matches!(outcome, Outcome::Failed(Failure::Cluster(_))),
                "a clear cluster failure, got {outcome:?}"
            );
        }
        // The fresh Redis serves new requests: one owner again, and it completes.
        let readers: Vec<_> = (0..6)
            .map(|i| {
                let stream = managers[i % 3].submit_and_stream("k", ()).expect("submit");
                tokio::spawn(read_all(stream))
            })
            .collect();
        for reader in readers {
            let (chunks, outcome) = reader.await.expect("reader");
            assert_eq!((chunks, outcome), (expected(50), Outcome::Completed));
        }
        assert_eq!(fake.calls(), 2, "one call before the restart, one after");
        let m: Vec<&Manager<()>> = managers.iter().collect();
        settled(&m).await;
        shut_down(&m).await;
        assert_only_cache_keys(&server, "restart:").await;
    })
    .await;
}

/// `connect` with owned arguments, to run on another runtime.
async fn connect_owned(url: String, instance: &'static str, prefix: &'static str) -> Cluster {
    Cluster::connect(&url, cluster_config(instance, prefix))
        .await
        .expect("connect")
}

/// An owner whose chunks come further apart than the lease keeps it by
/// renewing (every lease / 3): its followers complete, nobody sees it lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_owner_keeps_its_lease_by_renewing() {
    let server = RedisServer::start();
    bounded(async {
        // 3 chunks 500 ms apart: 1.5 s, the lease is 400 ms.
        let fake = Fake::new(3, Duration::from_millis(500));
        let a = fake.manager(
            TokioRuntime::current(),
            connect(&server, "a", "renew:").await,
        );
        let b = fake.manager(
            TokioRuntime::current(),
            connect(&server, "b", "renew:").await,
        );
        let on_a = a.submit_and_stream("k", ()).expect("submit");
        while fake.calls() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await; // A owns the key
        }
        let on_b = b.submit_and_stream("k", ()).expect("submit");
        let (a_result, b_result) = futures_lite::future::zip(read_all(on_a), read_all(on_b)).await;
        assert_eq!(a_result, (expected(3), Outcome::Completed));
        assert_eq!(b_result, (expected(3), Outcome::Completed));
        assert_eq!(fake.calls(), 1);
        assert_eq!(b.stats().totals.followed, 1);
        settled(&[&a, &b]).await;
        shut_down(&[&a, &b]).await;
        assert_only_cache_keys(&server, "renew:").await;
    })
    .await;
}

/// An owner that lost its lease while alive (here the lease is deleted, as if
/// it had lapsed during a partition): its next append is fenced, its members
/// end `Failed(Cluster)` and its upstream is stopped; a follower that read
/// ends `Failed(OwnerLost)`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_whose_lease_is_gone_is_fenced() {
    let server = RedisServer::start();
    bounded(async {
        let fake = Fake::new(50, Duration::from_millis(20));
        let a = fake.manager(TokioRuntime::current(), connect(&server, "a", "fence:").await);
        let b = fake.manager(TokioRuntime::current(), connect(&server, "b", "fence:").await);
        let mut on_a = a.submit_and_stream("k", ()).expect("submit");
        read_chunks(&mut on_a, 1).await;
        let mut on_b = b.submit_and_stream("k", ()).expect("submit");
        read_chunks(&mut on_b, 1).await;
        let owner_keys: Vec<String> = server
            .keys("fence:")
            .into_iter()
            .filter(|k| k.ends_with(":owner"))
            .collect();
        assert_eq!(owner_keys.len(), 1, "{owner_keys:?}");
        let _: i64 = flightdeck_tokio::cluster::redis::cmd("DEL")
            .arg(&owner_keys[0])
            .query(&mut server.inspect())
            .expect("DEL");
        let (_, outcome) = read_all(on_a).await;
        assert!(
            matches!(&outcome, Outcome::Failed(Failure::Cluster(reason)) if reason.contains("fenced")),
            "{outcome:?}"
        );
        let (_, outcome) = read_all(on_b).await;
        assert_eq!(outcome, Outcome::Failed(Failure::OwnerLost));
        assert_eq!(fake.calls(), 1);
        assert_eq!(a.stats().streaming, 0, "the owner's upstream was stopped");
        settled(&[&a, &b]).await;
        shut_down(&[&a, &b]).await;
        assert_only_cache_keys(&server, "fence:").await;
    })
    .await;
}
