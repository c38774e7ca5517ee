//! The seeds' API through real HTTP: reqwest against a gateway bound to
//! 127.0.0.1:0 (and, where the upstream's side must be observed, a fake seeds
//! upstream, a small axum server on 127.0.0.1:0 that notices when its response
//! stream is dropped). Every server a test starts is stopped by the test.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flightdeck_tokio::http::sse::{SseDecoder, SseEvent};
use flightdeck_tokio::http::{serve, Gateway, GatewayConfig, SimulatedModel, UpstreamConfig};
use flightdeck_tokio::Config;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Bound on any one wait in these tests: a hang fails, it never blocks CI.
const PATIENCE: Duration = Duration::from_secs(20);

/// A gateway serving on a loopback port.
struct Server {
    base: String,
    gateway: Gateway,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl Server {
    async fn start(config: GatewayConfig) -> Server {
        let gateway = Gateway::new(config).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, gateway.clone(), async {
            let _ = stopped.await;
        }));
        Server {
            base,
            gateway,
            stop: Some(stop),
            task: Some(task),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Graceful shutdown, as on SIGTERM; waits until the server has finished.
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(PATIENCE, task)
                .await
                .expect("the server stops")
                .unwrap()
                .unwrap();
        }
        assert_eq!(self.gateway.manager().tasks_running(), 0);
        self.gateway.manager().check_invariants().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn config() -> GatewayConfig {
    GatewayConfig {
        simulated: SimulatedModel {
            tokens: 8,
            token_delay: Duration::from_millis(5),
        },
        ..GatewayConfig::default()
    }
}

async fn submit(http: &reqwest::Client, server: &Server, body: Value) -> (u16, Value) {
    let response = http
        .post(server.url("/v1/requests"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// Reads a whole SSE stream: its events, in order.
async fn read_events(response: reqwest::Response) -> Vec<SseEvent> {
    let mut response = response;
    let mut decoder = SseDecoder::default();
    let mut events = Vec::new();
    tokio::time::timeout(PATIENCE, async {
        while let Some(bytes) = response.chunk().await.unwrap() {
            events.extend(decoder.push(&bytes));
        }
    })
    .await
    .expect("the stream ends");
    events
}

async fn stream(http: &reqwest::Client, server: &Server, id: u64) -> reqwest::Response {
    let response = http
        .get(server.url(&format!("/v1/requests/{id}/stream")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/event-stream",
        "an SSE response"
    );
    response
}

/// The chunks' text, and checks that exactly one terminal event comes last.
fn text_and_end(events: &[SseEvent]) -> (String, SseEvent) {
    let (end, chunks) = events.split_last().expect("at least the terminal event");
    assert!(
        chunks.iter().all(|e| e.event == "chunk"),
        "only chunks before the end: {events:?}"
    );
    assert_ne!(end.event, "chunk", "the last event is terminal: {events:?}");
    for (i, chunk) in chunks.iter().enumerate() {
        assert_eq!(chunk.id.as_deref(), Some(i.to_string().as_str()));
    }
    (
        chunks.iter().map(|e| e.data.as_str()).collect(),
        end.clone(),
    )
}

fn expected_text(config: &GatewayConfig, payload: &Value) -> String {
    config.simulated.answer_for(payload).tokens().concat()
}

async fn get_json(http: &reqwest::Client, url: String) -> (u16, Value) {
    let response = http.get(url).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_stream_status_stats_healthz_and_cache() {
    let server = Server::start(config()).await;
    let http = reqwest::Client::new();

    let (status, health) = get_json(&http, server.url("/healthz")).await;
    assert_eq!((status, health), (200, json!({"status": "ok"})));

    let payload = json!("why is the sky blue");
    let response = http
        .post(server.url("/v1/requests"))
        .json(&json!({ "payload": payload }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let id_location = response.headers()["location"].to_str().unwrap().to_owned();
    let placed: Value = response.json().await.unwrap();
    assert_eq!(placed["route"], "new_flight");
    // A free preparation slot: the flight left the queue in the same step.
    assert_eq!(placed["position"], Value::Null, "{placed}");
    let id = placed["id"].as_u64().unwrap();
    assert_eq!(id_location, format!("/v1/requests/{id}/stream"));

    let (status, before) = get_json(&http, server.url(&format!("/v1/requests/{id}"))).await;
    assert_eq!(status, 200);
    assert_eq!(before["id"], id);
    assert_eq!(before["finished"], false);
    assert_eq!(before["outcome"], Value::Null);
    assert!(
        ["queued", "preparing", "waiting_for_stream"].contains(&before["state"].as_str().unwrap()),
        "{before}"
    );

    let events = read_events(stream(&http, &server, id).await).await;
    let (text, end) = text_and_end(&events);
    assert_eq!(text, expected_text(&config(), &payload));
    assert_eq!(events.len(), 9, "8 tokens and one end");
    assert_eq!(end.event, "completed");
    let end: Value = serde_json::from_str(&end.data).unwrap();
    assert_eq!(end, json!({"status": "completed"}));

    // The same payload again: served from the cache at once, same text. Its
    // record says how it ended until a client reads it.
    let (status, again) = submit(&http, &server, json!({ "payload": payload })).await;
    assert_eq!((status, again["route"].as_str()), (202, Some("cached")));
    assert_eq!(again["position"], Value::Null);
    let again = again["id"].as_u64().unwrap();
    let (status, after) = get_json(&http, server.url(&format!("/v1/requests/{again}"))).await;
    assert_eq!(status, 200);
    assert_eq!(after["state"], "completed");
    assert_eq!(after["finished"], true);
    assert_eq!(after["outcome"], json!({"status": "completed"}));
    let events = read_events(stream(&http, &server, again).await).await;
    assert_eq!(text_and_end(&events).0, text);
    // A stream read to its end and closed takes its record with it.
    let (status, _) = get_json(&http, server.url(&format!("/v1/requests/{id}"))).await;
    assert_eq!(status, 404);

    // An explicit key shares with nobody else's payload-derived key.
    let (_, keyed) = submit(&http, &server, json!({"key": "k1", "payload": payload})).await;
    assert_eq!(keyed["route"], "new_flight");
    drop(stream(&http, &server, keyed["id"].as_u64().unwrap()).await);

    let (status, stats) = get_json(&http, server.url("/v1/stats")).await;
    assert_eq!(status, 200);
    assert_eq!(stats["totals"]["submitted"], 3);
    assert_eq!(stats["totals"]["cache_hits"], 1);
    assert_eq!(stats["totals"]["flights"], 2);
    assert!(
        stats["queued"].is_u64() && stats["readers"].is_u64(),
        "{stats}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_concurrent_submits_share_one_upstream_stream() {
    let config = GatewayConfig {
        simulated: SimulatedModel {
            tokens: 30,
            token_delay: Duration::from_millis(10),
        },
        ..GatewayConfig::default()
    };
    let expected = expected_text(&config, &json!("the same question"));
    let server = Server::start(config).await;
    let http = reqwest::Client::new();
    let clients = 20;
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let http = http.clone();
        let submit_url = server.url("/v1/requests");
        let base = server.base.clone();
        tasks.push(tokio::spawn(async move {
            let placed: Value = http
                .post(submit_url)
                .json(&json!({"payload": "the same question"}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let id = placed["id"].as_u64().unwrap();
            let response = http
                .get(format!("{base}/v1/requests/{id}/stream"))
                .send()
                .await
                .unwrap();
            (
                placed["route"].as_str().unwrap().to_owned(),
                read_events(response).await,
            )
        }));
    }
    let mut routes = Vec::new();
    for task in tasks {
        let (route, events) = task.await.unwrap();
        let (text, end) = text_and_end(&events);
        assert_eq!(end.event, "completed");
        assert_eq!(text, expected, "every member reads the whole answer");
        routes.push(route);
    }
    let stats = server.gateway.manager().stats();
    assert_eq!(
        stats.totals.streams_started, 1,
        "one upstream stream for all"
    );
    assert_eq!(routes.iter().filter(|r| *r == "new_flight").count(), 1);
    assert_eq!(
        stats.totals.coalesced + stats.totals.cache_hits,
        clients - 1,
        "{routes:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_is_idempotent_and_its_answers_are_distinct() {
    let server = Server::start(config()).await;
    let http = reqwest::Client::new();
    let cancel = |id: u64| {
        let http = http.clone();
        let url = server.url(&format!("/v1/requests/{id}/cancel"));
        async move {
            let response = http.post(url).send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };

    // Cancel mid-stream: the reader gets the chunks so far, then `cancelled`.
    let (_, placed) = submit(
        &http,
        &server,
        json!({"payload": {"prompt": "long", "tokens": 1000, "delay_ms": 5}}),
    )
    .await;
    let id = placed["id"].as_u64().unwrap();
    let mut response = stream(&http, &server, id).await;
    let mut decoder = SseDecoder::default();
    let mut events = Vec::new();
    while events.len() < 2 {
        events.extend(decoder.push(&response.chunk().await.unwrap().unwrap()));
    }
    assert_eq!(cancel(id).await, (200, json!({"status": "cancelled"})));
    events.extend(read_events(response).await);
    let (_, end) = text_and_end(&events);
    assert_eq!(end.event, "cancelled");
    assert_eq!(
        serde_json::from_str::<Value>(&end.data).unwrap(),
        json!({"status": "cancelled"})
    );

    // Cancel, then attach: the stream says cancelled (never "not found").
    let (_, placed) = submit(&http, &server, json!({"payload": "cancel me first"})).await;
    let id = placed["id"].as_u64().unwrap();
    assert_eq!(cancel(id).await, (200, json!({"status": "cancelled"})));
    assert_eq!(
        cancel(id).await,
        (200, json!({"status": "cancelled"})),
        "idempotent"
    );
    let (status, state) = get_json(&http, server.url(&format!("/v1/requests/{id}"))).await;
    assert_eq!((status, &state["state"]), (200, &json!("cancelled")));
    assert_eq!(state["outcome"], json!({"status": "cancelled"}));
    let events = read_events(stream(&http, &server, id).await).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event, "cancelled");

    // Unknown id: 404. Finished otherwise: 409 with the outcome.
    let (status, unknown) = cancel(999_999).await;
    assert_eq!(status, 404);
    assert_eq!(unknown["error"]["code"], "not_found");
    // A cache hit has finished before anyone reads it.
    let (_, first) = submit(&http, &server, json!({"payload": "finish first"})).await;
    read_events(stream(&http, &server, first["id"].as_u64().unwrap()).await).await;
    let (_, cached) = submit(&http, &server, json!({"payload": "finish first"})).await;
    assert_eq!(cached["route"], "cached");
    let (status, finished) = cancel(cached["id"].as_u64().unwrap()).await;
    assert_eq!(status, 409, "{finished}");
    assert_eq!(finished["error"]["code"], "already_finished");
    assert_eq!(finished["outcome"], json!({"status": "completed"}));
    server.stop().await;
}

/// A fake seeds upstream: streams a token every 20 ms for a long time, counts
/// the calls, and counts responses whose stream was dropped (the connection
/// closed by the gateway) before their end.
struct FakeUpstream {
    url: String,
    calls: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

struct CountOnDrop(Arc<AtomicUsize>);

impl Drop for CountOnDrop {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl FakeUpstream {
    async fn start() -> FakeUpstream {
        let calls = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let (c, d) = (Arc::clone(&calls), Arc::clone(&closed));
        let app = axum::Router::new()
            .route(
                "/generate",
                axum::routing::post(move |body: String| {
                    let (calls, closed) = (Arc::clone(&c), Arc::clone(&d));
                    async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        let guard = CountOnDrop(closed);
                        let tokens =
                            futures_lite::stream::unfold((0u32, guard), move |(i, guard)| {
                                let body = body.clone();
                                async move {
                                    tokio::time::sleep(Duration::from_millis(20)).await;
                                    (i < 10_000).then(|| {
                                        let token = format!("{body}#{i} ");
                                        (Ok::<_, std::convert::Infallible>(token), (i + 1, guard))
                                    })
                                }
                            });
                        axum::body::Body::from_stream(tokens)
                    }
                }),
            )
            .route(
                "/overloaded",
                axum::routing::post(|| async {
                    (
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        "overloaded, try later",
                    )
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/generate", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        FakeUpstream {
            url,
            calls,
            closed,
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    tokio::time::timeout(PATIENCE, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting until {what}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_disconnecting_detaches_and_the_last_one_aborts_the_upstream() {
    let upstream = FakeUpstream::start().await;
    let config = GatewayConfig {
        seeds_upstream: Some(UpstreamConfig {
            base_url: upstream.url.parse().unwrap(),
            api_key: None,
        }),
        ..GatewayConfig::default()
    };
    let server = Server::start(config).await;
    let http = reqwest::Client::new();

    // Two members of one flight; each reads a little.
    let (_, first) = submit(&http, &server, json!({"payload": "p"})).await;
    let (_, second) = submit(&http, &server, json!({"payload": "p"})).await;
    assert_eq!(second["route"], "joined");
    let (a, b) = (
        first["id"].as_u64().unwrap(),
        second["id"].as_u64().unwrap(),
    );
    let mut first_stream = stream(&http, &server, a).await;
    let mut second_stream = stream(&http, &server, b).await;
    let first_chunk = first_stream.chunk().await.unwrap().unwrap();
    assert!(
        String::from_utf8_lossy(&first_chunk).contains("\"p\"#0"),
        "the upstream's bytes: {first_chunk:?}"
    );
    second_stream.chunk().await.unwrap().unwrap();
    assert_eq!(upstream.calls.load(Ordering::SeqCst), 1);

    // The first disconnects: it is detached (its record goes), the flight goes on.
    drop(first_stream);
    wait_until("the first member is detached", || {
        server
            .gateway
            .manager()
            .status(flightdeck_tokio::RequestId::from_raw(a))
            .is_none()
    })
    .await;
    for _ in 0..3 {
        second_stream.chunk().await.unwrap().unwrap();
    }
    assert_eq!(
        upstream.closed.load(Ordering::SeqCst),
        0,
        "the other member still reads"
    );

    // The last member disconnects: the upstream connection is closed.
    drop(second_stream);
    wait_until("the fake upstream sees its response dropped", || {
        upstream.closed.load(Ordering::SeqCst) == 1
    })
    .await;
    let stats = server.gateway.manager().stats();
    assert_eq!(
        (
            stats.streaming,
            stats.stream_slots_in_use,
            stats.live_requests
        ),
        (0, 0, 0)
    );
    assert_eq!(stats.totals.cancelled, 2);
    let metrics = http
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("flightdeck_upstream_aborted_total{kind=\"seeds\"} 1"),
        "{metrics}"
    );
    server.stop().await;
    upstream.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors() {
    let config = GatewayConfig {
        body_limit: 1024,
        ..config()
    };
    let server = Server::start(config).await;
    let http = reqwest::Client::new();
    let post = |body: Vec<u8>| {
        let request = http
            .post(server.url("/v1/requests"))
            .header("content-type", "application/json")
            .body(body);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    let cases: [(&str, Vec<u8>, u16); 9] = [
        ("malformed JSON", b"{\"payload\": ".to_vec(), 400),
        ("not an object", b"[1, 2]".to_vec(), 400),
        (
            "key of the wrong type",
            br#"{"key": 5, "payload": "x"}"#.to_vec(),
            400,
        ),
        ("no payload", br#"{"key": "k"}"#.to_vec(), 400),
        ("null payload", br#"{"payload": null}"#.to_vec(), 400),
        ("empty key", br#"{"key": "", "payload": "x"}"#.to_vec(), 400),
        (
            "unknown field",
            br#"{"payload": "x", "priority": 1}"#.to_vec(),
            400,
        ),
        (
            "invalid UTF-8",
            b"{\"payload\": \"\xff\xfe\"}".to_vec(),
            400,
        ),
        (
            "huge body",
            format!("{{\"payload\": \"{}\"}}", "x".repeat(4096)).into_bytes(),
            413,
        ),
    ];
    for (what, body, expected) in cases {
        let (status, answer) = post(body).await;
        assert_eq!(status, expected, "{what}: {answer}");
        assert!(answer["error"]["code"].is_string(), "{what}: {answer}");
        assert!(answer["error"]["message"].is_string(), "{what}: {answer}");
    }

    // Unknown and malformed ids: 404 everywhere.
    for id in ["424242", "abc", "-1", "18446744073709551616"] {
        let (status, answer) = get_json(&http, server.url(&format!("/v1/requests/{id}"))).await;
        assert_eq!(status, 404, "{id}: {answer}");
        let (status, _) = get_json(&http, server.url(&format!("/v1/requests/{id}/stream"))).await;
        assert_eq!(status, 404, "{id}");
    }

    // A second reader of one request: 409.
    let (_, placed) = submit(
        &http,
        &server,
        json!({"payload": {"prompt": "x", "tokens": 500}}),
    )
    .await;
    let id = placed["id"].as_u64().unwrap();
    let reading = stream(&http, &server, id).await;
    let (status, answer) = get_json(&http, server.url(&format!("/v1/requests/{id}/stream"))).await;
    assert_eq!(
        (status, &answer["error"]["code"]),
        (409, &json!("already_attached"))
    );
    drop(reading);

    // Nothing above left anything behind, and the server is fine.
    wait_until("the dropped reader is detached", || {
        server.gateway.manager().stats().live_requests == 0
    })
    .await;
    assert_eq!(get_json(&http, server.url("/healthz")).await.0, 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_with_retry_after() {
    let config = GatewayConfig {
        manager: Config {
            queue_capacity: 1,
            max_concurrent_requests: 1,
            ..Config::default()
        },
        retry_after: Duration::from_secs(3),
        ..config()
    };
    let server = Server::start(config).await;
    let http = reqwest::Client::new();
    // The first flight prepares for a long time; the second waits in the queue.
    let (status, _) = submit(
        &http,
        &server,
        json!({"payload": {"prompt": "a", "prepare_ms": 10_000}}),
    )
    .await;
    assert_eq!(status, 202);
    let (status, second) = submit(&http, &server, json!({"payload": "b"})).await;
    assert_eq!((status, second["position"].as_u64()), (202, Some(0)));
    let response = http
        .post(server.url("/v1/requests"))
        .json(&json!({"payload": "c"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "3");
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["error"]["code"], "queue_full");
    // A duplicate of a queued flight still joins it: it takes no queue place.
    let (status, joined) = submit(&http, &server, json!({"payload": "b"})).await;
    assert_eq!((status, joined["route"].as_str()), (202, Some("joined")));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_and_deadlines_end_streams_with_named_events() {
    let config = GatewayConfig {
        manager: Config {
            idle_timeout: Duration::from_millis(200),
            ..Config::default()
        },
        ..config()
    };
    let server = Server::start(config).await;
    let http = reqwest::Client::new();

    let (_, placed) = submit(
        &http,
        &server,
        json!({"payload": {"prompt": "f", "tokens": 5, "delay_ms": 1, "fail_after": 2}}),
    )
    .await;
    let events = read_events(stream(&http, &server, placed["id"].as_u64().unwrap()).await).await;
    let (_, end) = text_and_end(&events);
    assert_eq!(events.len(), 3, "two chunks, then the failure: {events:?}");
    assert_eq!(end.event, "failed");
    let end: Value = serde_json::from_str(&end.data).unwrap();
    assert_eq!(end["kind"], "upstream");
    assert!(
        end["reason"]
            .as_str()
            .unwrap()
            .contains("simulated failure after 2 tokens"),
        "{end}"
    );

    let (_, placed) = submit(
        &http,
        &server,
        json!({"payload": {"prompt": "slow", "tokens": 5, "delay_ms": 1000}}),
    )
    .await;
    let events = read_events(stream(&http, &server, placed["id"].as_u64().unwrap()).await).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event, "timed_out");
    assert_eq!(
        serde_json::from_str::<Value>(&events[0].data).unwrap(),
        json!({"status": "timed_out", "phase": "idle"})
    );
    // Neither failure is cached: the same failing request runs again.
    let (_, again) = submit(
        &http,
        &server,
        json!({"payload": {"prompt": "f", "tokens": 5, "delay_ms": 1, "fail_after": 2}}),
    )
    .await;
    assert_eq!(again["route"], "new_flight");
    drop(stream(&http, &server, again["id"].as_u64().unwrap()).await);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_slows_nobody() {
    let big_config = GatewayConfig {
        manager: Config {
            max_response_bytes: 64 * 1024 * 1024,
            ..Config::default()
        },
        ..config()
    };
    let server = Server::start(big_config).await;
    let http = reqwest::Client::new();
    // A large answer (~7 MB of events), produced as fast as possible, for two
    // members of one flight: one never reads its stream (its socket fills up),
    // the other reads it all.
    let big = json!({"prompt": "big", "tokens": 200_000, "delay_ms": 0});
    let (_, stalled) = submit(&http, &server, json!({ "payload": big })).await;
    let (_, reader) = submit(&http, &server, json!({ "payload": big })).await;
    assert_eq!(reader["route"], "joined");
    let stalled_id = stalled["id"].as_u64().unwrap();
    // The stalled client: a raw connection with a small receive buffer that
    // sends its GET and never reads a byte.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let address = server.base.trim_start_matches("http://").parse().unwrap();
    let mut stalled_response = socket.connect(address).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut stalled_response,
        format!("GET /v1/requests/{stalled_id}/stream HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    wait_until("the stalled client is attached", || {
        server
            .gateway
            .manager()
            .status(flightdeck_tokio::RequestId::from_raw(stalled_id))
            .is_some_and(|s| s.attached)
    })
    .await;
    let reading = tokio::spawn(read_events(
        stream(&http, &server, reader["id"].as_u64().unwrap()).await,
    ));
    // Others come and go, in full, meanwhile.
    for round in 0..5 {
        let payload = json!(format!("question {round}"));
        let (_, placed) = submit(&http, &server, json!({ "payload": payload })).await;
        let events =
            read_events(stream(&http, &server, placed["id"].as_u64().unwrap()).await).await;
        let (text, end) = text_and_end(&events);
        assert_eq!(end.event, "completed");
        assert_eq!(text, expected_text(&config(), &payload));
    }
    // The reading member of the big flight gets all of it, in order.
    let events = reading.await.unwrap();
    let (text, end) = text_and_end(&events);
    assert_eq!(end.event, "completed");
    assert_eq!(events.len(), 200_001);
    assert_eq!(text, config().simulated.answer_for(&big).tokens().concat());
    // ~7 MB of events exceed what the kernel buffers for it: it really stalled
    // (its stream is not read to the end, so its record is still there).
    let stalled = server
        .gateway
        .manager()
        .status(flightdeck_tokio::RequestId::from_raw(stalled_id))
        .expect("the stalled client is still attached (unless the kernel buffered ~7 MB for it)");
    assert!(stalled.attached);
    drop(stalled_response);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_name_every_series() {
    let server = Server::start(config()).await;
    let http = reqwest::Client::new();
    for _ in 0..2 {
        let (_, placed) = submit(&http, &server, json!({"payload": "m"})).await;
        read_events(stream(&http, &server, placed["id"].as_u64().unwrap()).await).await;
    }
    let response = http.get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = response.text().await.unwrap();
    for series in [
        "flightdeck_queue_length 0",
        "flightdeck_preparations 0",
        "flightdeck_streams 0",
        "flightdeck_readers ",
        "flightdeck_requests_submitted_total 2",
        "flightdeck_requests_coalesced_total 0",
        "flightdeck_cache_hits_total 1",
        "flightdeck_upstream_streams_started_total 1",
        "flightdeck_requests_completed_total 2",
        "flightdeck_upstream_opened_total{kind=\"seeds\"} 1",
        "flightdeck_time_to_first_chunk_seconds_bucket{api=\"seeds\",le=",
        "flightdeck_time_to_first_chunk_seconds_count{api=\"seeds\"} 2",
        "flightdeck_stream_duration_seconds_count{api=\"seeds\"} 2",
        "# TYPE flightdeck_time_to_first_chunk_seconds histogram",
        "# HELP flightdeck_queue_length",
    ] {
        assert!(text.contains(series), "missing {series:?} in:\n{text}");
    }
    // A second gateway has its own registry: nothing leaks across.
    let other = Server::start(config()).await;
    let text = http
        .get(other.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("flightdeck_requests_submitted_total 0"),
        "{text}"
    );
    other.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_ends_open_streams_with_a_terminal_event() {
    let server = Server::start(config()).await;
    let http = reqwest::Client::new();
    let (_, placed) = submit(
        &http,
        &server,
        json!({"payload": {"prompt": "endless", "tokens": 100_000, "delay_ms": 10}}),
    )
    .await;
    let mut response = stream(&http, &server, placed["id"].as_u64().unwrap()).await;
    let mut decoder = SseDecoder::default();
    let mut events = decoder.push(&response.chunk().await.unwrap().unwrap());
    let gateway = server.gateway.clone();
    let base = server.base.clone();
    let stopping = tokio::spawn(server.stop());
    // The open stream ends with exactly one terminal event.
    events.extend(
        tokio::time::timeout(PATIENCE, async {
            let mut rest = Vec::new();
            while let Ok(Some(bytes)) = response.chunk().await {
                rest.extend(decoder.push(&bytes));
            }
            rest
        })
        .await
        .expect("the stream ends"),
    );
    let (_, end) = text_and_end(&events);
    assert_eq!(end.event, "failed");
    let end: Value = serde_json::from_str(&end.data).unwrap();
    assert_eq!(end["kind"], "shutdown", "{end}");
    stopping.await.unwrap();
    assert!(!gateway.is_admitting());
    // The server is gone.
    assert!(http.get(format!("{base}/healthz")).send().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeds_upstream_errors_end_the_stream_as_failed() {
    let upstream = FakeUpstream::start().await;
    let overloaded = upstream.url.replace("/generate", "/overloaded");
    // A port nobody listens on: bind one, then free it.
    let refused = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/", listener.local_addr().unwrap())
    };
    let http = reqwest::Client::new();
    for (url, reason) in [
        (
            overloaded,
            "the upstream answered 503 Service Unavailable: overloaded, try later",
        ),
        (refused, "cannot reach the upstream"),
    ] {
        let config = GatewayConfig {
            seeds_upstream: Some(UpstreamConfig {
                base_url: url.parse().unwrap(),
                api_key: Some("sk-test".to_owned()),
            }),
            ..GatewayConfig::default()
        };
        let server = Server::start(config).await;
        let (_, placed) = submit(&http, &server, json!({"payload": "p"})).await;
        let events =
            read_events(stream(&http, &server, placed["id"].as_u64().unwrap()).await).await;
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].event, "failed");
        let end: Value = serde_json::from_str(&events[0].data).unwrap();
        assert_eq!(end["kind"], "upstream");
        assert!(end["reason"].as_str().unwrap().contains(reason), "{end}");
        assert_eq!(server.gateway.manager().stats().totals.failed, 1);
        server.stop().await;
    }
    upstream.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_stream_carries_keep_alive_comments() {
    let config = GatewayConfig {
        sse_keep_alive: Duration::from_millis(20),
        ..config()
    };
    let server = Server::start(config).await;
    let http = reqwest::Client::new();
    // Nothing to send for 300 ms (a slow preparation), then two tokens.
    let (_, placed) = submit(
        &http,
        &server,
        json!({"payload": {"prompt": "q", "tokens": 2, "delay_ms": 1, "prepare_ms": 300}}),
    )
    .await;
    let mut response = stream(&http, &server, placed["id"].as_u64().unwrap()).await;
    let mut raw = Vec::new();
    while let Some(bytes) = response.chunk().await.unwrap() {
        raw.extend_from_slice(&bytes);
    }
    let raw = String::from_utf8(raw).unwrap();
    let before_first_chunk = &raw[..raw.find("event: chunk").unwrap()];
    assert!(
        before_first_chunk
            .lines()
            .filter(|l| l.starts_with(':'))
            .count()
            >= 2,
        "keep-alive comments while waiting: {raw:?}"
    );
    let events = SseDecoder::default().push(raw.as_bytes());
    assert_eq!(text_and_end(&events).1.event, "completed");
    server.stop().await;
}
