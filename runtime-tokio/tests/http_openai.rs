//! The OpenAI-compatible proxy over real HTTP: a reqwest client against the
//! gateway on 127.0.0.1:0, in front of a fake OpenAI-compatible upstream (also on
//! 127.0.0.1:0) that counts its calls and streams, stalls, cuts or fails on
//! demand (`support/mod.rs`).

#![cfg(feature = "http")]

mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use flightdeck_tokio::http::{CoalesceRule, GatewayConfig};
use serde_json::{json, Value};
use support::{chat_body, fake_token, post_chat, FakeConfig, FakeUpstream, SseRead, TestGateway};

const CHAT: &str = "/v1/chat/completions";

fn config() -> GatewayConfig {
    let mut config = GatewayConfig::default();
    config.manager.max_concurrent_streams = 64;
    config.manager.max_concurrent_requests = 64;
    config
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// Checks that a stream is a complete, valid OpenAI stream of `chunks` tokens.
fn assert_complete(read: &SseRead, chunks: usize) {
    assert_eq!(read.status, 200, "{}", read.raw);
    assert_eq!(
        read.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    assert!(read.ends_with_done(), "ends with [DONE]: {}", read.raw);
    assert_eq!(read.data.iter().filter(|d| *d == "[DONE]").count(), 1);
    for chunk in read.chunks() {
        assert_eq!(chunk["object"], "chat.completion.chunk", "{chunk}");
        assert!(chunk.get("error").is_none(), "{chunk}");
    }
    let expected: String = (0..chunks).map(fake_token).collect();
    assert_eq!(read.content(), expected);
    let finish: Vec<Value> = read
        .chunks()
        .iter()
        .filter_map(|c| c["choices"][0].get("finish_reason").cloned())
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finish, vec![json!("stop")]);
}

async fn wait_for(mut condition: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_identical_chat_completions_share_one_upstream_call() {
    let chunks = 20;
    let fake = FakeUpstream::start(FakeConfig {
        chunks,
        delay: Duration::from_millis(20),
    })
    .await;
    let gateway = TestGateway::start(config(), Some(&fake.base_url())).await;
    let client = client();
    let url = gateway.url(CHAT);
    let body = chat_body("fake", "the same question", 0.0, true);
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (client, url, body) = (client.clone(), url.clone(), body.clone());
            tokio::spawn(async move { post_chat(&client, &url, &body, &[]).await })
        })
        .collect();
    let mut reads = Vec::new();
    for task in tasks {
        reads.push(task.await.expect("client task"));
    }
    assert_eq!(
        fake.observed.calls(),
        1,
        "one upstream call for 50 identical requests"
    );
    for read in &reads {
        assert_complete(read, chunks);
        assert_eq!(read.raw, reads[0].raw, "every member gets the same bytes");
        // No usage chunk for clients that did not ask for it.
        assert!(read
            .chunks()
            .iter()
            .all(|c| !c["choices"].as_array().is_some_and(Vec::is_empty)));
    }
    let (leaders, followers): (Vec<&SseRead>, Vec<&SseRead>) =
        reads.iter().partition(|r| r.route() == "new");
    assert_eq!(leaders.len(), 1, "exactly one request created the flight");
    assert!(followers
        .iter()
        .all(|r| r.route() == "joined" || r.route() == "cached"));
    let leader = millis(leaders[0].first_chunk_after.expect("leader's first chunk"));
    let mut follower_ms: Vec<f64> = followers
        .iter()
        .map(|r| millis(r.first_chunk_after.expect("first chunk")))
        .collect();
    follower_ms.sort_by(f64::total_cmp);
    let median = follower_ms[follower_ms.len() / 2];
    let max = follower_ms[follower_ms.len() - 1];
    support::report(format_args!(
        "openai 50 identical: upstream calls {}, time to first chunk: leader {leader:.1} ms, \
         followers median {median:.1} ms, max {max:.1} ms (upstream chunk delay 20 ms)",
        fake.observed.calls()
    ));
    let sent = fake.observed.requests.lock().unwrap()[0].0.clone();
    assert_eq!(sent["stream"], true, "the flight always streams");
    assert_eq!(sent["stream_options"]["include_usage"], true);
    gateway.stop().await;
    fake.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_sampled_chat_completions_make_fifty_upstream_calls() {
    let fake = FakeUpstream::start(FakeConfig {
        chunks: 3,
        delay: Duration::from_millis(2),
    })
    .await;
    let gateway = TestGateway::start(config(), Some(&fake.base_url())).await;
    let client = client();
    let url = gateway.url(CHAT);
    // temperature 0.7: sampled, so never shared, even though the bodies are equal.
    let body = chat_body("fake", "the same question", 0.7, true);
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (client, url, body) = (client.clone(), url.clone(), body.clone());
            tokio::spawn(async move { post_chat(&client, &url, &body, &[]).await })
        })
        .collect();
    let mut ids = std::collections::BTreeSet::new();
    for task in tasks {
        let read = task.await.expect("client task");
        assert_complete(&read, 3);
        assert_eq!(read.route(), "new");
        ids.insert(read.chunks()[0]["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(fake.observed.calls(), 50);
    assert_eq!(ids.len(), 50, "each client got its own upstream answer");
    // Uncacheable: the same sampled request again is a new call.
    let again = post_chat(&client, &url, &body, &[]).await;
    assert_eq!(again.route(), "new");
    assert_eq!(fake.observed.calls(), 51);
    gateway.stop().await;
    fake.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_false_shares_a_flight_with_stream_true() {
    let chunks = 10;
    let fake = FakeUpstream::start(FakeConfig {
        chunks,
        delay: Duration::from_millis(30),
    })
    .await;
    let gateway = TestGateway::start(config(), Some(&fake.base_url())).await;
    let client = client();
    let url = gateway.url(CHAT);
    let streaming = {
        let (client, url) = (client.clone(), url.clone());
        let mut body = chat_body("fake", "q", 0.0, true);
        body["stream_options"] = json!({"include_usage": true});
        tokio::spawn(async move { post_chat(&client, &url, &body, &[]).await })
    };
    wait_for(|| fake.observed.calls() == 1, "the flight to start").await;
    // Same question (different field order and number spelling), not streaming.
    let plain = client
        .post(&url)
        .header("content-type", "application/json")
        .body(r#"{"stream":false,"temperature":0.0,"messages":[{"content":"q","role":"user"}],"model":"fake"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 200);
    assert_eq!(plain.headers()["x-flightdeck-route"], "joined");
    assert!(plain.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let completion: Value = serde_json::from_str(&plain.text().await.unwrap()).unwrap();
    let streamed = streaming.await.unwrap();
    assert_complete(&streamed, chunks);
    assert_eq!(
        fake.observed.calls(),
        1,
        "stream:false and stream:true coalesced"
    );
    assert_eq!(completion["object"], "chat.completion");
    assert_eq!(completion["id"], "chatcmpl-fake-1");
    assert_eq!(completion["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        completion["choices"][0]["message"]["content"],
        streamed.content()
    );
    assert_eq!(completion["choices"][0]["finish_reason"], "stop");
    assert_eq!(completion["usage"]["completion_tokens"], chunks);
    // The streaming client asked for usage: it got the usage chunk, before [DONE].
    let chunks_read = streamed.chunks();
    let usage = chunks_read.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["total_tokens"], 5 + chunks);
    gateway.stop().await;
    fake.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_never_share_and_the_same_tenant_is_served_from_cache() {
    let fake = FakeUpstream::start(FakeConfig::default()).await;
    let gateway = TestGateway::start(config(), Some(&fake.base_url())).await;
    let client = client();
    let url = gateway.url(CHAT);
    let body = chat_body("fake", "q", 0.0, true);
    let a = post_chat(
        &client,
        &url,
        &body,
        &[("authorization", "Bearer sk-tenant-a")],
    )
    .await;
    let b = post_chat(
        &client,
        &url,
        &body,
        &[("authorization", "Bearer sk-tenant-b")],
    )
    .await;
    assert_complete(&a, 10);
    assert_complete(&b, 10);
    assert_eq!(fake.observed.calls(), 2, "two tenants, two upstream calls");
    assert_ne!(a.raw, b.raw);
    let a_again = post_chat(
        &client,
        &url,
        &body,
        &[("authorization", "Bearer sk-tenant-a")],
    )
    .await;
    assert_eq!(fake.observed.calls(), 2, "the same tenant twice: one call");
    assert_eq!(a_again.route(), "cached");
    assert_eq!(a_again.raw, a.raw);
    // With no upstream key configured, each tenant's own credential went upstream.
    let auths: Vec<Option<String>> = fake
        .observed
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|(_, auth)| auth.clone())
        .collect();
    assert_eq!(
        auths,
        vec![
            Some("Bearer sk-tenant-a".to_owned()),
            Some("Bearer sk-tenant-b".to_owned())
        ]
    );
    gateway.stop().await;
    fake.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_namespace_and_a_wider_rule_are_operator_choices() {
    let fake = FakeUpstream::start(FakeConfig::default()).await;
    let mut config = config();
    config.openai.shared_namespace = Some("team".to_owned());
    config.openai.coalesce = CoalesceRule::All;
    let gateway = TestGateway::start(config, Some(&fake.base_url())).await;
    let client = client();
    let url = gateway.url(CHAT);
    let body = chat_body("fake", "q", 0.9, true);
    let a = post_chat(&client, &url, &body, &[("authorization", "Bearer sk-a")]).await;
    let b = post_chat(&client, &url, &body, &[("authorization", "Bearer sk-b")]).await;
    assert_eq!(fake.observed.calls(), 1);
    assert_eq!((a.route(), b.route()), ("new", "cached"));
    gateway.stop().await;
    fake.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_opt_out_header_gives_a_request_its_own_call() {
    let fake = FakeUpstream::start(FakeConfig::default()).await;
    let gateway = TestGateway::start(config(), Some(&fake.base_url())).await;
    let client = client();
    let url = gateway.url(CHAT);
    let body = chat_body("fake", "q", 0.0, true);
    let opt_out = [("x-flightdeck-coalesce", "off")];
    let a = post_chat(&client, &url, &body, &opt_out).await;
    let b = post_chat(&client, &url, &body, &opt_out).await;
    assert_complete(&a, 10);
    assert_eq!((a.route(), b.route()), ("new", "new"));
    assert_eq!(fake.observed.calls(), 2);
    // Opted-out answers are not cached either: a normal request makes a call.
    let c = post_chat(&client, &url, &body, &[]).await;
    assert_eq!(c.route(), "new");
    assert_eq!(fake.observed.calls(), 3);
    gateway.stop().await;
    fake.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_client_leaves_the_upstream_connection_is_closed() {
    use futures_lite::StreamExt;
    let fake = FakeUpstream::start(FakeConfig {
        chunks: 1000,
        delay: Duration::from_millis(20),
    })
    .await;
    let gateway = TestGateway::start(config(), Some(&fake.base_url())).await;
    let client = client();
    let url = gateway.url(CHAT);
    let body = chat_body("fake", "a long answer", 0.0, true).to_string();
    let mut open = Vec::new();
    for _ in 0..5 {
        let response = client
            .post(&url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let mut bytes = response.bytes_stream();
        let first = bytes.next().await.expect("a first chunk").unwrap();
        assert!(std::str::from_utf8(&first).unwrap().contains("data: "));
        open.push(bytes);
    }
    assert_eq!(fake.observed.calls(), 1);
    assert_eq!(fake.observed.closed_early(), 0);
    drop(open); // every client disconnects mid-stream
    wait_for(
        || fake.observed.closed_early() == 1,
        "the fake to see its connection closed",
    )
    .await;
    assert_eq!(fake.observed.finished.load(Ordering::SeqCst), 0);
    wait_for(
        || gateway.gateway.manager().stats().streaming == 0,
        "the stream slot to be freed",
    )
    .await;
    gateway.stop().await;
    fake.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_replays_from_the_first_chunk() {
    use futures_lite::StreamExt;
    let chunks = 30;
    let fake = FakeUpstream::start(FakeConfig {
        chunks,
        delay: Duration::from_millis(10),
    })
    .await;
    let gateway = TestGateway::start(config(), Some(&fake.base_url())).await;
    let client = client();
    let url = gateway.url(CHAT);
    let body = chat_body("fake", "q", 0.0, true);
    let early = client
        .post(&url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let mut early_raw = Vec::new();
    let mut early_bytes = early.bytes_stream();
    // Let the flight get a third of the way.
    while support::sse_data(std::str::from_utf8(&early_raw).unwrap()).len() < 10 {
        early_raw.extend_from_slice(&early_bytes.next().await.expect("more").unwrap());
    }
    let late = post_chat(&client, &url, &body, &[]).await;
    while let Some(part) = early_bytes.next().await {
        early_raw.extend_from_slice(&part.unwrap());
    }
    assert_eq!(late.route(), "joined");
    assert_complete(&late, chunks);
    assert_eq!(
        late.raw.as_bytes(),
        &early_raw[..],
        "the late joiner got every chunk from the first"
    );
    assert_eq!(fake.observed.calls(), 1);
    gateway.stop().await;
    fake.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_streams_with_an_error_event() {
    let fake = FakeUpstream::start(FakeConfig {
        chunks: 1000,
        delay: Duration::from_millis(10),
    })
    .await;
    let gateway = TestGateway::start(config(), Some(&fake.base_url())).await;
    let client = client();
    let url = gateway.url(CHAT);
    let reader = {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move {
            post_chat(&client, &url, &chat_body("fake", "q", 0.0, true), &[]).await
        })
    };
    wait_for(|| fake.observed.calls() == 1, "the flight to start").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    gateway.stop().await;
    let read = reader.await.unwrap();
    let error = assert_error_event(&read, "shutdown");
    assert_eq!(error["code"], "shutting_down");
    wait_for(
        || fake.observed.closed_early() == 1,
        "the upstream call to be aborted",
    )
    .await;
    fake.stop().await;
}

/// Reads a failed stream: status 200, some chunks, an error event last, no [DONE].
fn assert_error_event(read: &SseRead, what: &str) -> Value {
    assert_eq!(read.status, 200, "{what}: {}", read.raw);
    assert!(
        !read.has_done(),
        "{what}: no [DONE] after a failure: {}",
        read.raw
    );
    let last: Value = serde_json::from_str(read.data.last().expect("events")).unwrap();
    let error = last
        .get("error")
        .unwrap_or_else(|| panic!("{what}: error event last: {}", read.raw));
    for field in ["message", "type", "param", "code"] {
        assert!(error.get(field).is_some(), "{what}: {field} in {error}");
    }
    assert!(read.data.len() >= 2, "{what}: chunks came before the error");
    error.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_reach_every_member() {
    let fake = FakeUpstream::start(FakeConfig::default()).await;
    let mut config = config();
    config.manager.idle_timeout = Duration::from_millis(300);
    let gateway = TestGateway::start(config, Some(&fake.base_url())).await;
    let client = client();
    let url = gateway.url(CHAT);

    // A 500 before the first chunk: an HTTP error for every member.
    let body = chat_body("fake-500", "q", 0.0, true);
    let (a, b) = tokio::join!(
        post_chat(&client, &url, &body, &[]),
        post_chat(&client, &url, &body, &[])
    );
    for read in [&a, &b] {
        assert_eq!(read.status, 500, "{}", read.raw);
        let error: Value = serde_json::from_str(&read.raw).unwrap();
        assert_eq!(error["error"]["message"], "the fake upstream broke");
        assert_eq!(error["error"]["code"], "fake_500");
    }
    let plain = post_chat(&client, &url, &chat_body("fake-500", "q2", 0.0, false), &[]).await;
    assert_eq!(plain.status, 500);

    // A cut stream: the chunks already sent, then an error event, no [DONE].
    let cut = post_chat(&client, &url, &chat_body("fake-cut", "q", 0.0, true), &[]).await;
    let error = assert_error_event(&cut, "cut");
    assert_eq!(error["code"], "stream_cut");
    assert_eq!(cut.content(), "tok0 tok1 tok2 ");
    // Not cached: asking again calls again.
    let calls = fake.observed.calls();
    let _ = post_chat(&client, &url, &chat_body("fake-cut", "q", 0.0, true), &[]).await;
    assert_eq!(
        fake.observed.calls(),
        calls + 1,
        "a failed answer is not cached"
    );

    // A stall: the idle deadline ends it.
    let started = Instant::now();
    let stall = post_chat(&client, &url, &chat_body("fake-stall", "q", 0.0, true), &[]).await;
    let error = assert_error_event(&stall, "stall");
    assert_eq!(error["type"], "timeout");
    assert!(started.elapsed() < Duration::from_secs(5));

    // An upstream that never answers: the idle deadline makes it an HTTP 504.
    let silent = post_chat(
        &client,
        &url,
        &chat_body("fake-silent", "q", 0.0, true),
        &[],
    )
    .await;
    assert_eq!(silent.status, 504, "{}", silent.raw);
    let error: Value = serde_json::from_str(&silent.raw).unwrap();
    assert_eq!(error["error"]["type"], "timeout");

    // An error event from the upstream mid-stream is passed on.
    let event = post_chat(
        &client,
        &url,
        &chat_body("fake-error-event", "q", 0.0, true),
        &[],
    )
    .await;
    let error = assert_error_event(&event, "error event");
    assert_eq!(error["message"], "the fake model overloaded mid-stream");

    // stream:false with a mid-stream failure: an HTTP error, not a truncated answer.
    let plain = post_chat(&client, &url, &chat_body("fake-cut", "q3", 0.0, false), &[]).await;
    assert_eq!(plain.status, 502, "{}", plain.raw);

    wait_for(
        || gateway.gateway.manager().stats().streaming == 0,
        "no slot kept",
    )
    .await;
    gateway.stop().await;
    fake.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_429_carries_retry_after() {
    let fake = FakeUpstream::start(FakeConfig::default()).await;
    let gateway = TestGateway::start(config(), Some(&fake.base_url())).await;
    let client = client();
    let read = post_chat(
        &client,
        &gateway.url(CHAT),
        &chat_body("fake-429", "q", 0.0, true),
        &[],
    )
    .await;
    assert_eq!(read.status, 429);
    assert_eq!(read.headers["retry-after"], "7");
    let error: Value = serde_json::from_str(&read.raw).unwrap();
    assert_eq!(error["error"]["code"], "rate_limit_exceeded");
    gateway.stop().await;
    fake.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_upstream_is_a_502() {
    // A port that was just free: nothing listens there.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let gateway = TestGateway::start(config(), Some(&format!("http://127.0.0.1:{port}/v1"))).await;
    let client = client();
    let read = post_chat(
        &client,
        &gateway.url(CHAT),
        &chat_body("fake", "q", 0.0, true),
        &[],
    )
    .await;
    assert_eq!(read.status, 502, "{}", read.raw);
    let error: Value = serde_json::from_str(&read.raw).unwrap();
    assert_eq!(error["error"]["code"], "upstream_unreachable");
    let models = client.get(gateway.url("/v1/models")).send().await.unwrap();
    assert_eq!(models.status(), 502);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_are_forwarded() {
    let fake = FakeUpstream::start(FakeConfig::default()).await;
    let gateway = TestGateway::start(config(), Some(&fake.base_url())).await;
    let response = client()
        .get(gateway.url("/v1/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let list: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(list["data"][0]["id"], "fake-model");
    assert_eq!(fake.observed.model_calls.load(Ordering::SeqCst), 1);
    gateway.stop().await;
    fake.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_openai_errors() {
    let fake = FakeUpstream::start(FakeConfig::default()).await;
    let mut config = config();
    config.body_limit = 4096;
    let gateway = TestGateway::start(config, Some(&fake.base_url())).await;
    let client = client();
    let url = gateway.url(CHAT);
    for (body, status, param) in [
        ("{not json".to_owned(), 400, Value::Null),
        ("[1,2]".to_owned(), 400, Value::Null),
        (
            r#"{"model":"fake","stream":"yes"}"#.to_owned(),
            400,
            json!("stream"),
        ),
        (
            format!(r#"{{"model":"fake","messages":"{}"}}"#, "x".repeat(10_000)),
            413,
            Value::Null,
        ),
    ] {
        let response = client
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status);
        let error: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        assert_eq!(error["error"]["type"], "invalid_request_error");
        assert_eq!(error["error"]["param"], param);
    }
    let bad_utf8 = client
        .post(&url)
        .header("content-type", "application/json")
        .body(&b"{\"model\":\"\xff\"}"[..])
        .send()
        .await
        .unwrap();
    assert_eq!(bad_utf8.status(), 400);
    assert_eq!(fake.observed.calls(), 0, "nothing bad went upstream");
    gateway.stop().await;
    fake.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_upstream_the_simulated_model_answers() {
    let gateway = TestGateway::start(config(), None).await;
    let client = client();
    let url = gateway.url(CHAT);
    let mut body = chat_body("any", "hello there", 0.0, true);
    body["stream_options"] = json!({"include_usage": true});
    let read = post_chat(&client, &url, &body, &[]).await;
    assert_eq!(read.status, 200);
    assert!(read.ends_with_done());
    assert_eq!(read.content(), "You said: hello there");
    assert!(
        read.chunks().last().unwrap()["usage"]["total_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );
    let plain = client
        .post(&url)
        .header("content-type", "application/json")
        .body(chat_body("any", "hello there", 0.0, false).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(plain.headers()["x-flightdeck-route"], "cached");
    let completion: Value = serde_json::from_str(&plain.text().await.unwrap()).unwrap();
    assert_eq!(
        completion["choices"][0]["message"]["content"],
        "You said: hello there"
    );
    let models: Value = serde_json::from_str(
        &client
            .get(gateway.url("/v1/models"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(models["data"][0]["id"], "flightdeck-simulated");
    gateway.stop().await;
}

/// The Python interpreter with the `openai` package: `FLIGHTDECK_PYTHON`, else
/// `target/py/bin/python` under the workspace root (what `.ci/run` creates).
fn python_with_openai() -> Result<std::path::PathBuf, String> {
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate is in the workspace");
    let python = match std::env::var_os("FLIGHTDECK_PYTHON") {
        Some(path) => std::path::PathBuf::from(path),
        None => workspace.join("target/py/bin/python"),
    };
    if !python.exists() {
        return Err(format!("no Python interpreter at {}", python.display()));
    }
    let import = std::process::Command::new(&python)
        .args(["-c", "import openai"])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if !import.status.success() {
        return Err(format!(
            "{} cannot import openai: {}",
            python.display(),
            String::from_utf8_lossy(&import.stderr).trim()
        ));
    }
    Ok(python)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_python_client_works_through_the_gateway() {
    let python = match python_with_openai() {
        Ok(python) => python,
        Err(why) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI must run the OpenAI Python client test: {why}")
        }
        Err(why) => {
            support::report(format_args!(
                "SKIPPED the_official_openai_python_client_works_through_the_gateway: {why} \
                 (python3 -m venv target/py && target/py/bin/pip install openai)"
            ));
            return;
        }
    };
    let fake = FakeUpstream::start(FakeConfig {
        chunks: 10,
        delay: Duration::from_millis(5),
    })
    .await;
    let gateway = TestGateway::start(config(), Some(&fake.base_url())).await;
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/openai_client.py");
    let base = gateway.url("");
    let run = tokio::task::spawn_blocking(move || {
        let mut child = std::process::Command::new(python)
            .arg(script)
            .arg(base)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start the Python script");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if child.try_wait().expect("wait for Python").is_some() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().expect("Python's output")
    })
    .await
    .expect("the Python runner");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    support::report(format_args!("{}", stdout.trim()));
    assert!(
        run.status.success(),
        "the Python client failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains(": OK"), "{stdout}");
    gateway.stop().await;
    fake.stop().await;
}
