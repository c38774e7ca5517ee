//! The cluster Redis layer (`flightdeck_tokio::cluster`) against a real
//! `redis-server` (the Debian package; `.ci/run` installs it when missing).
//!
//! Every test starts its own server ([`RedisServer`](redis_server::RedisServer): a temporary directory, a Unix
//! socket in it, no persistence) and stops it on drop, is bounded in time
//! ([`bounded`]), and ends by checking that nothing but cache entries is left in
//! Redis once the finished logs' retention has passed ([`assert_only_cache_keys`]).

mod redis_server;

use std::time::{Duration, Instant};

use redis_server::{assert_only_cache_keys, bounded, cluster_config, connect, RedisServer};

use flightdeck_tokio::cluster::redis;
use flightdeck_tokio::cluster::{
    CachedResult, Claim, Cluster, ClusterConfig, ClusterError, LogEntry, LogPosition,
};
use flightdeck_tokio::Bytes;

fn chunks(words: &[&str]) -> Vec<Bytes> {
    words.iter().map(|w| Bytes::from(w.to_string())).collect()
}

async fn read_all(follower: flightdeck_tokio::cluster::Follower) -> Vec<LogEntry> {
    use futures_lite::StreamExt;
    follower
        .into_stream()
        .map(|entry| entry.expect("log entry"))
        .collect()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_is_exclusive_under_50_concurrent_claimers() {
    let server = RedisServer::start();
    bounded(async {
        let mut instances = Vec::new();
        for i in 0..50 {
            instances.push(connect(&server, &format!("i{i}"), "ex:").await);
        }
        let claims = instances.iter().map(|c| {
            let c = c.clone();
            tokio::spawn(async move { c.claim(b"the key").await.expect("claim") })
        });
        let mut results = Vec::new();
        for claim in claims.collect::<Vec<_>>() {
            results.push(claim.await.expect("task"));
        }
        let owners: Vec<(usize, u64)> = results
            .iter()
            .enumerate()
            .filter_map(|(i, c)| match c {
                Claim::Owner { generation } => Some((i, *generation)),
                _ => None,
            })
            .collect();
        assert_eq!(owners.len(), 1, "exactly one owner: {results:?}");
        let (owner_index, generation) = owners[0];
        for (i, claim) in results.iter().enumerate() {
            if i != owner_index {
                assert_eq!(
                    claim,
                    &Claim::Follower {
                        generation,
                        owner: format!("i{owner_index}")
                    }
                );
            }
        }
        instances[owner_index]
            .finish(b"the key", generation, b"done", false)
            .await
            .expect("finish");
        // The lease is gone: the next claim owns a higher generation.
        match instances[0].claim(b"the key").await.expect("claim") {
            Claim::Owner { generation: next } => {
                assert!(next > generation);
                instances[0]
                    .finish(b"the key", next, b"done", false)
                    .await
                    .expect("finish");
            }
            other => panic!("expected a new owner, got {other:?}"),
        }
        assert_only_cache_keys(&server, "ex:").await;
    })
    .await;
}

#[tokio::test]
async fn a_lapsed_lease_fences_the_old_owner() {
    let server = RedisServer::start();
    bounded(async {
        let a = connect(&server, "a", "fence:").await;
        let b = connect(&server, "b", "fence:").await;
        let Claim::Owner { generation: old } = a.claim(b"k").await.expect("claim") else {
            panic!("a owns first")
        };
        a.append(b"k", old, &chunks(&["a1"]))
            .await
            .expect("append while owner");
        // Renewing keeps the lease past its first term.
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            assert!(a.renew(b"k", old).await.expect("renew"));
        }
        assert!(matches!(
            b.claim(b"k").await.expect("claim"),
            Claim::Follower { generation, .. } if generation == old
        ));
        // a stalls: no renewal for longer than the lease.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let Claim::Owner { generation: new } = b.claim(b"k").await.expect("claim") else {
            panic!("b owns after the lease lapsed")
        };
        assert!(new > old, "generation {new} after {old}");
        // a's late writes are refused, and change nothing.
        assert!(matches!(
            a.append(b"k", old, &chunks(&["late"])).await,
            Err(ClusterError::Fenced { generation }) if generation == old
        ));
        assert!(!a.renew(b"k", old).await.expect("renew"));
        assert!(matches!(
            a.finish(b"k", old, b"late end", true).await,
            Err(ClusterError::Fenced { .. })
        ));
        // Nor can a write into the new generation with its own token.
        assert!(matches!(
            a.append(b"k", new, &chunks(&["forged"])).await,
            Err(ClusterError::Fenced { .. })
        ));
        assert!(a.cache_get(b"k").await.expect("cache get").is_none());
        b.append(b"k", new, &chunks(&["b1", "b2"]))
            .await
            .expect("append");
        b.finish(b"k", new, b"ok", false).await.expect("finish");
        let follower = b
            .follow(b"k", new, LogPosition::START)
            .await
            .expect("follow");
        assert_eq!(
            read_all(follower).await,
            vec![
                LogEntry::Chunks(chunks(&["b1", "b2"])),
                LogEntry::End(Bytes::from_static(b"ok"))
            ]
        );
        assert_only_cache_keys(&server, "fence:").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_read_every_batch_in_order_early_and_late() {
    let server = RedisServer::start();
    bounded(async {
        let owner = connect(&server, "owner", "log:").await;
        let other = connect(&server, "other", "log:").await;
        let Claim::Owner { generation } = owner.claim(b"k").await.expect("claim") else {
            panic!("owner")
        };
        let Claim::Follower {
            generation: seen,
            owner: name,
        } = other.claim(b"k").await.expect("claim")
        else {
            panic!("follower")
        };
        assert_eq!((seen, name.as_str()), (generation, "owner"));
        // An early follower, before the first chunk (the log does not exist yet).
        let early = other
            .follow(b"k", generation, LogPosition::START)
            .await
            .expect("follow");
        let early = tokio::spawn(read_all(early));
        let mut written = Vec::new();
        for batch in 0..30 {
            let batch: Vec<Bytes> = (0..=batch % 4)
                .map(|i| Bytes::from(format!("b{batch}c{i}")))
                .collect();
            owner
                .append(b"k", generation, &batch)
                .await
                .expect("append");
            written.push(LogEntry::Chunks(batch));
            // Let the follower catch up now and then, so it reads both while the
            // owner writes and in bulk.
            if written.len() % 2 == 1 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        // A big batch (split into several entries by the script), then the end.
        let big: Vec<Bytes> = (0..2500).map(|i| Bytes::from(format!("big{i}"))).collect();
        owner.append(b"k", generation, &big).await.expect("append");
        owner
            .finish(b"k", generation, b"completed", false)
            .await
            .expect("finish");
        let read = early.await.expect("task");
        let expected_chunks: Vec<Bytes> = written
            .iter()
            .flat_map(|e| match e {
                LogEntry::Chunks(c) => c.clone(),
                LogEntry::End(_) => unreachable!(),
            })
            .chain(big.iter().cloned())
            .collect();
        assert_eq!(
            flatten(&read),
            (expected_chunks.clone(), Bytes::from_static(b"completed"))
        );
        // The first 30 entries are exactly the batches as appended.
        assert_eq!(read[..30], written[..]);
        // A late follower, after the end, replays the same log.
        let late = other
            .follow(b"k", generation, LogPosition::START)
            .await
            .expect("follow");
        assert_eq!(read_all(late).await, read);
        // A follower resuming from a position gets the rest.
        let mut first = other
            .follow(b"k", generation, LogPosition::START)
            .await
            .expect("follow");
        for _ in 0..10 {
            first
                .next_entry()
                .await
                .expect("entry")
                .expect("not the end");
        }
        let resumed = other
            .follow(b"k", generation, first.position().clone())
            .await
            .expect("follow");
        assert_eq!(read_all(resumed).await, read[10..]);
        assert_only_cache_keys(&server, "log:").await;
    })
    .await;
}

/// The chunks of a log, in order, and its outcome; panics if the log does not end
/// with exactly one end entry.
fn flatten(log: &[LogEntry]) -> (Vec<Bytes>, Bytes) {
    let (last, body) = log.split_last().expect("non-empty log");
    let LogEntry::End(outcome) = last else {
        panic!("log does not end with End: {last:?}")
    };
    let chunks = body
        .iter()
        .flat_map(|e| match e {
            LogEntry::Chunks(c) => c.clone(),
            LogEntry::End(_) => panic!("End before the last entry"),
        })
        .collect();
    (chunks, outcome.clone())
}

#[tokio::test]
async fn cache_keeps_its_ttl_and_capacity_and_never_stores_uncacheable() {
    let server = RedisServer::start();
    bounded(async {
        let cfg = ClusterConfig {
            cache_ttl: Duration::from_millis(800),
            cache_capacity: 3,
            ..cluster_config("a", "cache:")
        };
        let a = Cluster::connect(&server.url(), cfg.clone())
            .await
            .expect("connect");
        let b = Cluster::connect(
            &server.url(),
            ClusterConfig {
                instance: "b".into(),
                ..cfg
            },
        )
        .await
        .expect("connect");
        // Four results, each finished by its owner as cacheable.
        for key in ["k1", "k2", "k3", "k4"] {
            let Claim::Owner { generation } = a.claim(key.as_bytes()).await.expect("claim") else {
                panic!("owner")
            };
            a.append(key.as_bytes(), generation, &chunks(&[key, "x"]))
                .await
                .expect("append");
            a.append(key.as_bytes(), generation, &chunks(&["y"]))
                .await
                .expect("append");
            a.finish(key.as_bytes(), generation, b"completed", true)
                .await
                .expect("finish");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Capacity 3: the oldest (k1) was evicted; the others are hits on b.
        let Claim::Owner { generation: k1 } = b.claim(b"k1").await.expect("claim") else {
            panic!("k1 was evicted: a miss")
        };
        b.finish(b"k1", k1, b"", false).await.expect("finish");
        for key in ["k2", "k3", "k4"] {
            assert_eq!(
                b.claim(key.as_bytes()).await.expect("claim"),
                Claim::Cached(CachedResult {
                    chunks: chunks(&[key, "x", "y"]),
                    outcome: Bytes::from_static(b"completed"),
                })
            );
        }
        let index: Vec<String> = redis::cmd("ZRANGE")
            .arg("cache:cache")
            .arg(0)
            .arg(-1)
            .query(&mut server.inspect())
            .expect("ZRANGE");
        assert_eq!(index.len(), 3, "index trimmed to the capacity: {index:?}");
        // An uncacheable result is never written.
        let Claim::Owner { generation } = a.claim(b"private").await.expect("claim") else {
            panic!("owner")
        };
        a.append(b"private", generation, &chunks(&["secret"]))
            .await
            .expect("append");
        a.finish(b"private", generation, b"completed", false)
            .await
            .expect("finish");
        assert!(b.cache_get(b"private").await.expect("get").is_none());
        let Claim::Owner {
            generation: private,
        } = b.claim(b"private").await.expect("claim")
        else {
            panic!("an uncacheable result is a miss")
        };
        b.finish(b"private", private, b"", false)
            .await
            .expect("finish");
        // cache_put / cache_get round trip.
        let put = CachedResult {
            chunks: chunks(&["p", "q"]),
            outcome: Bytes::from_static(b"completed"),
        };
        b.cache_put(b"put", &put).await.expect("put");
        assert_eq!(a.cache_get(b"put").await.expect("get"), Some(put));
        // After the time to live, every entry is a miss and the cache keys are gone.
        tokio::time::sleep(Duration::from_millis(900)).await;
        for key in ["k2", "k3", "k4", "put"] {
            assert!(
                a.cache_get(key.as_bytes()).await.expect("get").is_none(),
                "{key}"
            );
        }
        let Claim::Owner { generation: k4 } = a.claim(b"k4").await.expect("claim") else {
            panic!("k4 expired: a miss")
        };
        a.finish(b"k4", k4, b"", false).await.expect("finish");
        assert_only_cache_keys(&server, "cache:").await;
        // The cache entries and their index expired too: nothing at all is left.
        assert!(
            server.keys("cache:").is_empty(),
            "{:?}",
            server.keys("cache:")
        );
    })
    .await;
}

#[tokio::test]
async fn a_follower_fails_clearly_when_the_owner_is_lost() {
    let server = RedisServer::start();
    bounded(async {
        let owner = connect(&server, "owner", "lost:").await;
        let other = connect(&server, "other", "lost:").await;
        let Claim::Owner { generation } = owner.claim(b"k").await.expect("claim") else {
            panic!("owner")
        };
        owner
            .append(b"k", generation, &chunks(&["one"]))
            .await
            .expect("append");
        let mut follower = other
            .follow(b"k", generation, LogPosition::START)
            .await
            .expect("follow");
        assert_eq!(
            follower.next_entry().await.expect("entry"),
            Some(LogEntry::Chunks(chunks(&["one"])))
        );
        // The owner dies: no renewal, no end. The follower fails after about the lease.
        let started = Instant::now();
        assert!(matches!(
            follower.next_entry().await,
            Err(ClusterError::OwnerLost { generation: g }) if g == generation
        ));
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(follower.next_entry().await.expect("after the error"), None);
        assert_only_cache_keys(&server, "lost:").await;
    })
    .await;
}

#[tokio::test]
async fn redis_restarted_mid_follow_is_a_clear_error_not_a_hang() {
    let mut server = RedisServer::start();
    let owner = connect(&server, "owner", "restart:").await;
    let other = connect(&server, "other", "restart:").await;
    let Claim::Owner { generation } = owner.claim(b"k").await.expect("claim") else {
        panic!("owner")
    };
    owner
        .append(b"k", generation, &chunks(&["one"]))
        .await
        .expect("append");
    let mut follower = other
        .follow(b"k", generation, LogPosition::START)
        .await
        .expect("follow");
    assert!(follower.next_entry().await.expect("entry").is_some());
    // The follower is blocked in XREAD when Redis goes away.
    let reading = tokio::spawn(async move {
        let started = Instant::now();
        (follower.next_entry().await, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    server.restart();
    let (result, waited) = bounded(reading).await.expect("task");
    assert!(matches!(result, Err(ClusterError::Redis(_))), "{result:?}");
    assert!(waited < Duration::from_secs(3), "error after {waited:?}");
    println!(
        "follower error after a restart, in {waited:?}: {}",
        result.unwrap_err()
    );
    bounded(async {
        // The fresh Redis has lost the lease: the old owner's writes are fenced once
        // its command connection has reconnected (the first command may see the drop).
        let mut fenced = None;
        for _ in 0..20 {
            match owner.append(b"k", generation, &chunks(&["two"])).await {
                Err(ClusterError::Redis(_)) => tokio::time::sleep(Duration::from_millis(50)).await,
                other => {
                    fenced = Some(other);
                    break;
                }
            }
        }
        assert!(
            matches!(fenced, Some(Err(ClusterError::Fenced { .. }))),
            "{fenced:?}"
        );
        // New claims work on the fresh Redis (once `other`'s command connection has
        // seen the drop and reconnected), with a generation above the old one.
        let mut claim = other.claim(b"k").await;
        for _ in 0..20 {
            if !matches!(claim, Err(ClusterError::Redis(_))) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            claim = other.claim(b"k").await;
        }
        let Ok(Claim::Owner { generation: new }) = claim else {
            panic!("owner on the fresh Redis: {claim:?}")
        };
        assert!(new > generation, "{new} after {generation}");
        other.finish(b"k", new, b"ok", false).await.expect("finish");
        assert_only_cache_keys(&server, "restart:").await;
    })
    .await;
}

#[tokio::test]
async fn redis_unreachable_at_start_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("dir");
    let url = format!("redis+unix://{}", dir.path().join("nobody.sock").display());
    let result = bounded(Cluster::connect(&url, cluster_config("a", "x:"))).await;
    let Err(error) = result else {
        panic!("connected to nothing")
    };
    assert!(matches!(error, ClusterError::Redis(_)), "{error:?}");
}

/// Round trips per operation, counted by the server (`INFO commandstats`) and by
/// the handle; printed for the record (run with `--nocapture`).
#[tokio::test]
async fn round_trips_per_claim_append_and_finish() {
    let server = RedisServer::start();
    bounded(async {
        let owner = connect(&server, "owner", "rt:").await;
        let other = connect(&server, "other", "rt:").await;
        const FLIGHTS: u64 = 20;
        const BATCHES: u64 = 5;
        let scripts = |s: &RedisServer| s.calls("evalsha") + s.calls("eval");
        let (mut claims, mut appends, mut finishes, mut hits) = (0, 0, 0, 0);
        for flight in 0..FLIGHTS {
            let key = format!("k{flight}");
            let before = (scripts(&server), owner.round_trips());
            let Claim::Owner { generation } = owner.claim(key.as_bytes()).await.expect("claim")
            else {
                panic!("owner")
            };
            claims += scripts(&server) - before.0;
            assert_eq!(owner.round_trips() - before.1, 1);
            let before = scripts(&server);
            for batch in 0..BATCHES {
                owner
                    .append(key.as_bytes(), generation, &chunks(&[&format!("c{batch}"), "d"]))
                    .await
                    .expect("append");
            }
            appends += scripts(&server) - before;
            let before = scripts(&server);
            owner.finish(key.as_bytes(), generation, b"ok", true).await.expect("finish");
            finishes += scripts(&server) - before;
            let before = scripts(&server);
            assert!(matches!(other.claim(key.as_bytes()).await.expect("claim"), Claim::Cached(_)));
            hits += scripts(&server) - before;
        }
        let per = |n: u64, ops: u64| n as f64 / ops as f64;
        println!(
            "redis round trips (server-counted script calls): claim {:.2}, append {:.2} per batch, finish {:.2}, claim answered from the cache {:.2}",
            per(claims, FLIGHTS),
            per(appends, FLIGHTS * BATCHES),
            per(finishes, FLIGHTS),
            per(hits, FLIGHTS)
        );
        assert_eq!(claims, FLIGHTS, "one round trip per claim");
        assert_eq!(appends, FLIGHTS * BATCHES, "one round trip per appended batch");
        assert_eq!(finishes, FLIGHTS, "one round trip per finish");
        assert_eq!(hits, FLIGHTS, "one round trip per cache hit");
        assert_eq!(server.calls("script|load"), 12, "each handle loaded its 6 scripts once");
        assert_only_cache_keys(&server, "rt:").await;
    })
    .await;
}
