//! Cluster mode at the gateway (issue 9): three gateway instances in this test
//! process on 127.0.0.1:0 share one `redis-server` of the test's own, with the
//! counting fake OpenAI upstream and the simulated model; reqwest is the client.
//!
//! - a herd of 60 identical chat completions spread round-robin over the three
//!   makes exactly one upstream call, and all 60 read the same complete stream;
//! - an answer cached on A is a hit on B (no new upstream call);
//! - a cancel sent to B ends a stream read on C with `cancelled`, and B answers
//!   only after C's core confirmed it; status from any instance; a stream asked of
//!   another instance is `421` naming the owner;
//! - an unknown or stopped owner instance is `503` naming it, a mute one `504`;
//!   an instance id already in use refuses to start;
//! - the `flightdeck` binary: Redis unreachable at start exits 1 naming the URL
//!   (`--cluster-fallback fail`), or runs alone and says so in `/healthz` and
//!   `/v1/stats` (`single`); in cluster mode `/healthz` names the instance.
//!
//! After every test: every gateway shut down with no task left running, and once
//! the retention passed no key left in Redis but the cache entries.

mod redis_server;
mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flightdeck_tokio::cluster::redis;
use flightdeck_tokio::http::sse::{SseDecoder, SseEvent};
use flightdeck_tokio::http::{ClusterSettings, GatewayConfig, SimulatedModel};
use futures_lite::StreamExt;
use redis_server::RedisServer;
use serde_json::{json, Value};
use support::{chat_body, fake_token, post_chat, report, FakeConfig, FakeUpstream, TestGateway};

const BINARY: &str = env!("CARGO_BIN_EXE_flightdeck");

/// How long a cancel or status waits for another instance.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(1);

/// The cancel test's attach timeout: a request nobody reads times out after it.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(1);

fn settings(redis: &RedisServer, instance: &str) -> ClusterSettings {
    let mut settings = ClusterSettings::new(redis.url());
    settings.redis.instance = instance.to_owned();
    settings.redis.lease = Duration::from_millis(400);
    settings.redis.log_retention = Duration::from_millis(200);
    settings.redis.follow_poll = Duration::from_millis(100);
    settings.redis.response_timeout = Duration::from_secs(1);
    settings.control_timeout = CONTROL_TIMEOUT;
    settings
}

fn config(redis: &RedisServer, instance: &str, simulated: SimulatedModel) -> GatewayConfig {
    GatewayConfig {
        simulated,
        cluster: Some(settings(redis, instance)),
        ..GatewayConfig::default()
    }
}

/// Instances `a`, `b` and `c` on `redis`, in front of `upstream` when given.
async fn three(
    redis: &RedisServer,
    upstream: Option<&str>,
    simulated: SimulatedModel,
) -> Vec<TestGateway> {
    let mut gateways = Vec::new();
    for instance in ["a", "b", "c"] {
        gateways
            .push(TestGateway::connect(config(redis, instance, simulated.clone()), upstream).await);
    }
    gateways
}

/// Stops every gateway (each asserts that no task is left), then waits for the
/// logs' retention and asserts that only cache entries remain in Redis.
async fn stop_and_check_redis(redis: &RedisServer, gateways: Vec<TestGateway>) {
    for gateway in gateways {
        gateway.stop().await;
    }
    let only_cache = |keys: &[String]| {
        keys.iter()
            .all(|k| k == "fd:cache" || (k.starts_with("fd:{") && k.ends_with("}:cache")))
    };
    // The logs and counters expire within lease + retention (600 ms) of the end.
    let started = Instant::now();
    let mut keys = redis.keys("fd:");
    while !only_cache(&keys) && started.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        keys = redis.keys("fd:");
    }
    assert!(only_cache(&keys), "keys left in Redis: {keys:?}");
}

fn expected_content(chunks: usize) -> String {
    (0..chunks).map(fake_token).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_herd_over_three_instances_makes_one_upstream_call() {
    let redis = RedisServer::start();
    let fake = FakeUpstream::start(FakeConfig {
        chunks: 10,
        delay: Duration::from_millis(30),
    })
    .await;
    let gateways = three(&redis, Some(&fake.base_url()), SimulatedModel::default()).await;
    let client = reqwest::Client::new();
    let body = chat_body("fake", "one herd, one call", 0.0, true);
    let mut herd = Vec::new();
    for i in 0..60 {
        let (client, body) = (client.clone(), body.clone());
        let url = gateways[i % 3].url("/v1/chat/completions");
        herd.push(tokio::spawn(async move {
            post_chat(&client, &url, &body, &[]).await
        }));
    }
    let mut reads = Vec::new();
    for member in herd {
        reads.push(member.await.expect("client task"));
    }
    assert_eq!(fake.observed.calls(), 1, "one upstream call for the herd");
    let first = &reads[0];
    for (i, read) in reads.iter().enumerate() {
        assert_eq!(read.status, 200, "member {i}: {}", read.raw);
        assert!(read.ends_with_done(), "member {i} incomplete: {}", read.raw);
        assert_eq!(read.content(), expected_content(10), "member {i}");
        assert_eq!(read.data, first.data, "member {i} read another stream");
    }
    let mut routes: BTreeMap<(usize, String), usize> = BTreeMap::new();
    for (i, read) in reads.iter().enumerate() {
        *routes.entry((i % 3, read.route().to_owned())).or_default() += 1;
    }
    let totals: Vec<_> = gateways
        .iter()
        .map(|g| g.gateway.manager().stats().totals)
        .collect();
    assert_eq!(
        totals.iter().map(|t| t.streams_started).sum::<u64>(),
        1,
        "one upstream stream in the whole cluster: {totals:?}"
    );
    report(format_args!(
        "cluster herd: 60 requests over 3 instances -> {} upstream call; routes by instance {routes:?}; followed flights {:?}",
        fake.observed.calls(),
        totals.iter().map(|t| t.followed).collect::<Vec<_>>()
    ));
    stop_and_check_redis(&redis, gateways).await;
    fake.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_cached_on_a_is_a_hit_on_b() {
    let redis = RedisServer::start();
    let fake = FakeUpstream::start(FakeConfig {
        chunks: 5,
        delay: Duration::from_millis(5),
    })
    .await;
    let gateways = three(&redis, Some(&fake.base_url()), SimulatedModel::default()).await;
    let client = reqwest::Client::new();
    let body = chat_body("fake", "cache me", 0.0, true);
    let on_a = post_chat(
        &client,
        &gateways[0].url("/v1/chat/completions"),
        &body,
        &[],
    )
    .await;
    assert_eq!(on_a.status, 200, "{}", on_a.raw);
    assert!(on_a.ends_with_done());
    assert_eq!(fake.observed.calls(), 1);
    // The owner writes the cache entry as it releases the key, just after its
    // clients read the end: wait for it.
    let started = Instant::now();
    while !redis
        .keys("fd:")
        .iter()
        .any(|k| k.ends_with(":cache") && k != "fd:cache")
    {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no cache entry written"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let on_b = post_chat(
        &client,
        &gateways[1].url("/v1/chat/completions"),
        &body,
        &[],
    )
    .await;
    assert_eq!(on_b.status, 200, "{}", on_b.raw);
    assert_eq!(
        fake.observed.calls(),
        1,
        "B answered from the cluster's cache"
    );
    assert_eq!(on_b.data, on_a.data, "B serves A's answer as it was");
    let b = gateways[1].gateway.manager().stats().totals;
    assert_eq!((b.remote_cache_hits, b.streams_started), (1, 0), "{b:?}");
    stop_and_check_redis(&redis, gateways).await;
    fake.stop().await;
}

/// Reads a seeds' stream to its terminal event; reports its first chunk.
async fn read_seeds_stream(
    client: reqwest::Client,
    url: String,
    first_chunk: tokio::sync::oneshot::Sender<()>,
) -> Vec<SseEvent> {
    let response = client.get(url).send().await.expect("stream");
    assert_eq!(response.status(), 200);
    let mut first_chunk = Some(first_chunk);
    let mut decoder = SseDecoder::default();
    let mut events = Vec::new();
    let mut body = response.bytes_stream();
    while let Some(part) = body.next().await {
        events.extend(decoder.push(&part.expect("stream body")));
        if events.iter().any(|e| e.event == "chunk") {
            if let Some(tx) = first_chunk.take() {
                let _ = tx.send(());
            }
        }
        if events.iter().any(|e| e.event != "chunk") {
            break;
        }
    }
    events
}

async fn json_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_sent_to_b_ends_a_stream_read_on_c() {
    let redis = RedisServer::start();
    let slow = SimulatedModel {
        tokens: 400,
        token_delay: Duration::from_millis(10),
    };
    let mut gateways = Vec::new();
    for instance in ["a", "b", "c"] {
        let mut config = config(&redis, instance, slow.clone());
        config.manager.attach_timeout = ATTACH_TIMEOUT;
        gateways.push(TestGateway::connect(config, None).await);
    }
    let (a, b, c) = (&gateways[0], &gateways[1], &gateways[2]);
    let client = reqwest::Client::new();

    let (status, placed) = json_of(
        client
            .post(c.url("/v1/requests"))
            .json(&json!({"payload": {"prompt": "a long answer"}}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 202, "{placed}");
    let id = placed["id"]
        .as_str()
        .expect("cluster ids are strings")
        .to_owned();
    assert!(id.starts_with("c."), "C's id names C: {id}");
    let (tx, first_chunk) = tokio::sync::oneshot::channel();
    let reader = tokio::spawn(read_seeds_stream(
        client.clone(),
        c.url(&format!("/v1/requests/{id}/stream")),
        tx,
    ));
    first_chunk.await.expect("a first chunk on C");

    // Status from every instance: C's own answer, relayed.
    for gateway in [a, b, c] {
        let (status, body) = json_of(
            client
                .get(gateway.url(&format!("/v1/requests/{id}")))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            (body["id"].as_str(), body["state"].as_str()),
            (Some(id.as_str()), Some("streaming")),
            "{body}"
        );
    }
    // A stream is read where its request lives.
    let (status, body) = json_of(
        client
            .get(a.url(&format!("/v1/requests/{id}/stream")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 421, "{body}");
    assert_eq!(body["instance"], "c", "{body}");
    assert_eq!(body["error"]["code"], "wrong_instance", "{body}");

    let control_commands = || ["publish", "blpop", "rpush"].map(|command| redis.calls(command));
    let before = control_commands();
    let sent = Instant::now();
    let (status, body) = json_of(
        client
            .post(b.url(&format!("/v1/requests/{id}/cancel")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let took = sent.elapsed();
    let after = control_commands();
    let used: Vec<u64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    // One PUBLISH and one BLPOP by B, one RPUSH (with its PEXPIRE, in one MULTI)
    // by C. (PEXPIRE is not counted: the lease scripts call it too.)
    assert_eq!(used, [1, 1, 1], "publish, blpop, rpush");
    assert_eq!(
        (status, body.clone()),
        (200, json!({"status": "cancelled"}))
    );
    // B answered "cancelled" only after C's core confirmed it: C counts it already.
    let on_c = c.gateway.manager().stats().totals;
    assert_eq!(on_c.cancelled, 1, "{on_c:?}");

    let events = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .expect("the stream on C ends")
        .expect("reader task");
    let last = events.last().expect("events");
    assert_eq!(last.event, "cancelled", "{events:?}");
    let chunks = events.iter().filter(|e| e.event == "chunk").count();
    assert!(
        (1..400).contains(&chunks),
        "{chunks} chunks before the cancel"
    );

    // Requests of C's that nobody attaches to (their records stay, as no reader
    // consumes them): a cancel from B is idempotent from A, status agrees; one
    // left alone times out waiting for its client, and a cancel from B then gets
    // C's own `409 already_finished` with that outcome.
    let mut unattached = Vec::new();
    for prompt in ["left alone", "cancelled twice"] {
        let (status, placed) = json_of(
            client
                .post(c.url("/v1/requests"))
                .json(&json!({"payload": {"prompt": prompt}}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 202, "{placed}");
        unattached.push(placed["id"].as_str().unwrap().to_owned());
    }
    let submitted = Instant::now();
    let (alone, twice) = (&unattached[0], &unattached[1]);
    for gateway in [b, a] {
        let (status, body) = json_of(
            client
                .post(gateway.url(&format!("/v1/requests/{twice}/cancel")))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!((status, body), (200, json!({"status": "cancelled"})));
    }
    let (status, body) = json_of(
        client
            .get(a.url(&format!("/v1/requests/{twice}")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["state"].as_str()),
        (200, Some("cancelled")),
        "{body}"
    );
    tokio::time::sleep(
        ATTACH_TIMEOUT.saturating_sub(submitted.elapsed()) + Duration::from_millis(200),
    )
    .await;
    let (status, body) = json_of(
        client
            .post(b.url(&format!("/v1/requests/{alone}/cancel")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        body["outcome"],
        json!({"status": "timed_out", "phase": "attach"}),
        "{body}"
    );
    // C's own 404 for a number it never handed out, relayed by B.
    let (status, body) = json_of(
        client
            .post(b.url("/v1/requests/c.999999/cancel"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
    report(format_args!(
        "cluster cancel: B -> C confirmed in {took:?} (Redis: 1 PUBLISH + 1 BLPOP by B on a new connection, 1 MULTI RPUSH+PEXPIRE by C); C's reader got {chunks} chunks then `cancelled`"
    ));
    stop_and_check_redis(&redis, gateways).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_stopped_or_mute_owners_are_clear_errors() {
    let redis = RedisServer::start();
    let mut gateways = three(&redis, None, SimulatedModel::default()).await;
    let client = reqwest::Client::new();
    let a_url = |path: &str| gateways[0].url(path);

    // No instance of that id.
    let (status, body) = json_of(
        client
            .post(a_url("/v1/requests/zz.1/cancel"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        (body["error"]["code"].as_str(), body["instance"].as_str()),
        (Some("instance_unreachable"), Some("zz"))
    );
    assert!(
        body["error"]["message"].as_str().unwrap().contains("`zz`"),
        "{body}"
    );

    // An instance that hears the command but never answers.
    let mut mute = redis::Client::open(redis.url())
        .unwrap()
        .get_async_pubsub()
        .await
        .unwrap();
    mute.subscribe("fd:ctl:mute").await.unwrap();
    let sent = Instant::now();
    let (status, body) = json_of(
        client
            .get(a_url("/v1/requests/mute.3"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let waited = sent.elapsed();
    assert_eq!(status, 504, "{body}");
    assert_eq!(
        (body["error"]["code"].as_str(), body["instance"].as_str()),
        (Some("instance_timeout"), Some("mute"))
    );
    assert!(
        waited >= CONTROL_TIMEOUT && waited < CONTROL_TIMEOUT * 4,
        "{waited:?}"
    );
    drop(mute);

    // A request of B, then B stops: never a false "cancelled".
    let (status, placed) = json_of(
        client
            .post(gateways[1].url("/v1/requests"))
            .json(&json!({"payload": {"prompt": "orphan"}}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 202);
    let id = placed["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("b."), "{id}");
    let b = gateways.remove(1);
    b.stop().await;
    for request in [
        client.post(gateways[0].url(&format!("/v1/requests/{id}/cancel"))),
        client.get(gateways[1].url(&format!("/v1/requests/{id}"))),
    ] {
        let (status, body) = json_of(request.send().await.unwrap()).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["instance"], "b", "{body}");
        assert_ne!(body.get("status"), Some(&json!("cancelled")));
    }

    // An instance id already listening refuses to start.
    let duplicate =
        flightdeck_tokio::http::Gateway::connect(config(&redis, "a", SimulatedModel::default()))
            .await;
    let error = duplicate.expect_err("a second `a`").to_string();
    assert!(error.contains("already in use"), "{error}");
    stop_and_check_redis(&redis, gateways).await;
}

/// The binary, started with `args`; its log is read until it listens.
struct Binary {
    child: Child,
    address: String,
    log: Option<std::thread::JoinHandle<String>>,
}

impl Binary {
    fn start(args: &[&str]) -> Binary {
        let mut child = Command::new(BINARY)
            .args(["--listen", "127.0.0.1:0", "--log", "info"])
            .args(args)
            .env_remove("FLIGHTDECK_REDIS_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut seen = String::new();
        let address = loop {
            let mut line = String::new();
            if stderr.read_line(&mut line).unwrap() == 0 {
                let _ = child.wait();
                panic!("flightdeck {args:?} exited early:\n{seen}");
            }
            seen.push_str(&line);
            if let Some(rest) = line.split("address=").nth(1) {
                break rest.split_whitespace().next().unwrap().to_owned();
            }
        };
        let log = std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = stderr.read_to_string(&mut rest);
            seen + &rest
        });
        Binary {
            child,
            address,
            log: Some(log),
        }
    }

    fn get(&self, path: &str) -> Value {
        let mut tcp = TcpStream::connect(&self.address).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        write!(
            tcp,
            "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).unwrap();
        let body = answer.split("\r\n\r\n").nth(1).expect("a body");
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"))
    }

    /// SIGTERM, then the exit code and the log.
    fn stop(mut self) -> (Option<i32>, String) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > Duration::from_secs(20) {
                self.child.kill().unwrap();
                panic!("the server did not exit after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let log = self.log.take().unwrap().join().unwrap();
        (status.code(), log)
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary to completion (killed if it outlives 20 s).
fn run(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(BINARY)
        .args(args)
        .env_remove("FLIGHTDECK_LISTEN")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(20) {
            child.kill().unwrap();
            panic!("flightdeck {args:?} did not exit within 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn the_binary_without_redis_fails_clearly_or_runs_alone() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("redis+unix://{}", dir.path().join("nobody.sock").display());

    let (code, stderr) = run(&["--listen", "127.0.0.1:0", "--redis-url", &url]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains(&url), "the error names the URL: {stderr}");
    assert!(stderr.contains("--cluster-fallback single"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let alone = Binary::start(&[
        "--redis-url",
        &url,
        "--cluster-fallback",
        "single",
        "--instance-id",
        "solo",
    ]);
    let health = alone.get("/healthz");
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(
        (
            health["cluster"]["mode"].as_str(),
            health["cluster"]["instance"].as_str()
        ),
        (Some("single"), Some("solo")),
        "{health}"
    );
    assert!(
        health["cluster"]["reason"].as_str().unwrap().contains(&url),
        "{health}"
    );
    let stats = alone.get("/v1/stats");
    assert_eq!(stats["cluster"]["mode"], "single", "{stats}");
    assert!(
        stats["totals"].is_object(),
        "the usual stats are there: {stats}"
    );
    let (code, log) = alone.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("runs alone"), "{log}");

    for (args, needle) in [
        (&["--redis-url", "http://x"][..], "--redis-url"),
        (
            &["--redis-url", &url, "--instance-id", "a.b"][..],
            "--instance-id",
        ),
        (&["--instance-id", "a"][..], "--instance-id"),
        (
            &["--redis-url", &url, "--cluster-follow-poll", "5s"][..],
            "--cluster-follow-poll",
        ),
        (
            &["--redis-url", &url, "--cluster-fallback", "maybe"][..],
            "--cluster-fallback",
        ),
    ] {
        let (code, stderr) = run(args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

#[test]
fn the_binary_in_cluster_mode_names_its_instance_and_refuses_a_duplicate() {
    let redis = RedisServer::start();
    let url = redis.url();
    let one = Binary::start(&["--redis-url", &url, "--instance-id", "bin-a"]);
    let health = one.get("/healthz");
    assert_eq!(
        health,
        json!({"status": "ok", "cluster": {"mode": "cluster", "instance": "bin-a"}})
    );
    let (code, stderr) = run(&[
        "--listen",
        "127.0.0.1:0",
        "--redis-url",
        &url,
        "--instance-id",
        "bin-a",
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("already in use"), "{stderr}");
    let (code, log) = one.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(redis.keys("fd:").is_empty(), "{:?}", redis.keys("fd:"));
}
