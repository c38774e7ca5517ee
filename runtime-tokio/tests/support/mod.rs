//! Test support for the OpenAI proxy: a fake OpenAI-compatible upstream (a small
//! axum server on 127.0.0.1:0) that counts its calls and can stream, stall, cut a
//! stream mid-way, send an error event, or answer 500/429; a gateway started on
//! 127.0.0.1:0 in front of it; and an SSE reader for the client side.
//!
//! The fake chooses its behaviour from the request's `model`:
//! `fake` streams [`FakeConfig::chunks`] chunks, one every [`FakeConfig::delay`];
//! `fake-500`, `fake-429` answer that status (429 with `Retry-After: 7`);
//! `fake-cut` streams 3 chunks then closes the connection without `[DONE]`;
//! `fake-stall` streams 2 chunks then sends nothing more;
//! `fake-error-event` streams 2 chunks then `data: {"error": ...}`;
//! `fake-silent` never answers (not even headers).

#![allow(dead_code)] // each test binary uses a part of it

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use flightdeck_tokio::http::{Gateway, GatewayConfig, UpstreamConfig};
use flightdeck_tokio::Bytes;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Writes one summary line straight to standard error, past the test harness's
/// output capture, so that every `cargo test` log shows it (as the harness's
/// `report!` does).
pub(crate) fn report(line: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// How the fake streams.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FakeConfig {
    /// Content chunks per answer (before the finish and usage chunks).
    pub(crate) chunks: usize,
    /// Delay before each chunk.
    pub(crate) delay: Duration,
}

impl Default for FakeConfig {
    fn default() -> Self {
        FakeConfig {
            chunks: 10,
            delay: Duration::from_millis(10),
        }
    }
}

/// What the fake observed.
#[derive(Debug, Default)]
pub(crate) struct Observed {
    /// `POST /v1/chat/completions` calls.
    pub(crate) calls: AtomicUsize,
    /// `GET /v1/models` calls.
    pub(crate) model_calls: AtomicUsize,
    /// Response streams that ended because the gateway closed the connection.
    pub(crate) closed_early: AtomicUsize,
    /// Response streams that sent everything they had to send.
    pub(crate) finished: AtomicUsize,
    /// Every chat request body and `Authorization` header received.
    pub(crate) requests: Mutex<Vec<(Value, Option<String>)>>,
}

impl Observed {
    pub(crate) fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
    pub(crate) fn closed_early(&self) -> usize {
        self.closed_early.load(Ordering::SeqCst)
    }
}

#[derive(Clone)]
struct FakeState {
    config: FakeConfig,
    observed: Arc<Observed>,
}

/// A fake OpenAI-compatible upstream on 127.0.0.1:0; stopped on drop.
pub(crate) struct FakeUpstream {
    pub(crate) addr: SocketAddr,
    pub(crate) observed: Arc<Observed>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl FakeUpstream {
    pub(crate) async fn start(config: FakeConfig) -> Self {
        let observed = Arc::new(Observed::default());
        let state = FakeState {
            config,
            observed: Arc::clone(&observed),
        };
        let app = Router::new()
            .route("/v1/chat/completions", post(fake_chat))
            .route("/v1/models", get(fake_models))
            .with_state(state);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind fake");
        let addr = listener.local_addr().expect("fake addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        FakeUpstream {
            addr,
            observed,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// The base URL to configure the gateway with.
    pub(crate) fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Stops the server (open streams are aborted).
    pub(crate) async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The content of chunk `i` of upstream call `call`.
pub(crate) fn fake_token(i: usize) -> String {
    format!("tok{i} ")
}

fn chunk(call: usize, model: &str, choices: &Value, usage: &Value) -> String {
    json!({
        "id": format!("chatcmpl-fake-{call}"),
        "object": "chat.completion.chunk",
        "created": 1_700_000_000 + call,
        "model": model,
        "system_fingerprint": "fp_fake",
        "choices": choices,
        "usage": usage,
    })
    .to_string()
}

/// Counts, on drop, whether the response stream was read to its end.
struct DropWatch {
    observed: Arc<Observed>,
    finished: bool,
}

impl DropWatch {
    /// The stream sent its last frame.
    fn finish(mut self) {
        self.finished = true;
    }
}

impl Drop for DropWatch {
    fn drop(&mut self) {
        let counter = if self.finished {
            &self.observed.finished
        } else {
            &self.observed.closed_early
        };
        counter.fetch_add(1, Ordering::SeqCst);
    }
}

/// What the fake sends after its content chunks.
#[derive(Clone, Copy, PartialEq)]
enum Ending {
    Done,
    Cut,
    Stall,
    ErrorEvent,
}

async fn fake_chat(State(state): State<FakeState>, headers: HeaderMap, body: Bytes) -> Response {
    let call = state.observed.calls.fetch_add(1, Ordering::SeqCst) + 1;
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    state
        .observed
        .requests
        .lock()
        .expect("requests")
        .push((request.clone(), auth));
    let model = request["model"].as_str().unwrap_or("fake").to_owned();
    let (chunks, ending) = match model.as_str() {
        "fake-500" => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                axum::Json(json!({"error": {"message": "the fake upstream broke", "type": "server_error", "param": null, "code": "fake_500"}})),
            )
                .into_response();
        }
        "fake-429" => {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, "7")],
                axum::Json(json!({"error": {"message": "slow down", "type": "requests", "param": null, "code": "rate_limit_exceeded"}})),
            )
                .into_response();
        }
        "fake-silent" => std::future::pending().await,
        "fake-cut" => (3, Ending::Cut),
        "fake-stall" => (2, Ending::Stall),
        "fake-error-event" => (2, Ending::ErrorEvent),
        _ => (state.config.chunks, Ending::Done),
    };
    let delay = state.config.delay;
    let mut events: Vec<String> = vec![chunk(
        call,
        &model,
        &json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]),
        &Value::Null,
    )];
    events.extend((0..chunks).map(|i| {
        chunk(
            call,
            &model,
            &json!([{"index": 0, "delta": {"content": fake_token(i)}, "logprobs": null, "finish_reason": null}]),
            &Value::Null,
        )
    }));
    if ending == Ending::Done {
        events.push(chunk(
            call,
            &model,
            &json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": "stop"}]),
            &Value::Null,
        ));
        events.push(chunk(
            call,
            &model,
            &json!([]),
            &json!({"prompt_tokens": 5, "completion_tokens": chunks, "total_tokens": 5 + chunks}),
        ));
    }
    let mut frames: Vec<String> = events
        .into_iter()
        .map(|e| format!("data: {e}\n\n"))
        .collect();
    match ending {
        Ending::Done => frames.push("data: [DONE]\n\n".to_owned()),
        Ending::ErrorEvent => frames.push(
            "data: {\"error\":{\"message\":\"the fake model overloaded mid-stream\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n"
                .to_owned(),
        ),
        Ending::Cut | Ending::Stall => {}
    }
    let watch = DropWatch {
        observed: Arc::clone(&state.observed),
        finished: false,
    };
    let stream = futures_lite::stream::unfold(
        (frames.into_iter(), watch),
        move |(mut frames, watch)| async move {
            tokio::time::sleep(delay).await;
            match frames.next() {
                Some(frame) => Some((Ok::<_, Infallible>(Bytes::from(frame)), (frames, watch))),
                None if ending == Ending::Stall => {
                    std::future::pending::<()>().await;
                    None
                }
                None => {
                    watch.finish();
                    None
                }
            }
        },
    );
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn fake_models(State(state): State<FakeState>) -> Response {
    state.observed.model_calls.fetch_add(1, Ordering::SeqCst);
    axum::Json(json!({
        "object": "list",
        "data": [{"id": "fake-model", "object": "model", "created": 1, "owned_by": "fake"}],
    }))
    .into_response()
}

/// A gateway on 127.0.0.1:0; shut down by [`TestGateway::stop`].
pub(crate) struct TestGateway {
    pub(crate) addr: SocketAddr,
    pub(crate) gateway: Gateway,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestGateway {
    /// A gateway with `config`, in front of `upstream` when given.
    pub(crate) async fn start(config: GatewayConfig, upstream: Option<&str>) -> Self {
        let config = with_upstream(config, upstream);
        Self::serve(Gateway::new(config).expect("gateway")).await
    }

    /// A gateway built by `Gateway::connect` (cluster mode when `config` asks for
    /// it), in front of `upstream` when given.
    pub(crate) async fn connect(config: GatewayConfig, upstream: Option<&str>) -> Self {
        let config = with_upstream(config, upstream);
        Self::serve(Gateway::connect(config).await.expect("gateway")).await
    }

    /// Serves `gateway` on 127.0.0.1:0.
    pub(crate) async fn serve(gateway: Gateway) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind gateway");
        let addr = listener.local_addr().expect("gateway addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(flightdeck_tokio::http::serve(
            listener,
            gateway.clone(),
            async move {
                let _ = stopped.await;
            },
        ));
        TestGateway {
            addr,
            gateway,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Graceful shutdown; then checks that the manager's tasks all finished.
    pub(crate) async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
        assert_eq!(self.gateway.manager().tasks_running(), 0, "no task left");
        assert_eq!(self.gateway.tasks_running(), 0, "no gateway task left");
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn with_upstream(mut config: GatewayConfig, upstream: Option<&str>) -> GatewayConfig {
    config.upstream = upstream.map(|url| UpstreamConfig {
        base_url: url.parse().expect("upstream url"),
        api_key: None,
    });
    config
}

/// A client body for a chat completion.
pub(crate) fn chat_body(model: &str, prompt: &str, temperature: f64, stream: bool) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "temperature": temperature,
        "stream": stream,
    })
}

/// One SSE response read to its end: its `data:` payloads in order.
#[derive(Debug, Clone)]
pub(crate) struct SseRead {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) raw: String,
    pub(crate) data: Vec<String>,
    /// From sending the request to the first `data:` bytes.
    pub(crate) first_chunk_after: Option<Duration>,
}

impl SseRead {
    pub(crate) fn ends_with_done(&self) -> bool {
        self.data.last().map(String::as_str) == Some("[DONE]")
    }
    pub(crate) fn has_done(&self) -> bool {
        self.data.iter().any(|d| d == "[DONE]")
    }
    /// The concatenated `delta.content` of choice 0.
    pub(crate) fn content(&self) -> String {
        self.chunks()
            .iter()
            .filter_map(|c| {
                c["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect()
    }
    /// Every payload except `[DONE]`, parsed.
    pub(crate) fn chunks(&self) -> Vec<Value> {
        self.data
            .iter()
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).expect("each data payload is JSON"))
            .collect()
    }
    pub(crate) fn route(&self) -> &str {
        self.headers
            .get("x-flightdeck-route")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// The `data:` payloads of an SSE text (events separated by a blank line).
pub(crate) fn sse_data(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|event| {
            let lines: Vec<&str> = event
                .lines()
                .filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
                .collect();
            (!lines.is_empty()).then(|| lines.join("\n"))
        })
        .collect()
}

/// Posts `body` and reads the whole answer, timing the first `data:` bytes.
pub(crate) async fn post_chat(
    client: &reqwest::Client,
    url: &str,
    body: &Value,
    headers: &[(&str, &str)],
) -> SseRead {
    use futures_lite::StreamExt;
    let started = std::time::Instant::now();
    let mut request = client
        .post(url)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("gateway reachable");
    let status = response.status();
    let headers = response.headers().clone();
    let mut first_chunk_after = None;
    let mut raw = Vec::new();
    let mut bytes = response.bytes_stream();
    while let Some(part) = bytes.next().await {
        let part = part.expect("body readable");
        raw.extend_from_slice(&part);
        if first_chunk_after.is_none() && raw.windows(5).any(|w| w == b"data:") {
            first_chunk_after = Some(started.elapsed());
        }
    }
    let raw = String::from_utf8(raw).expect("UTF-8 body");
    SseRead {
        status,
        headers,
        data: sse_data(&raw),
        raw,
        first_chunk_after,
    }
}
