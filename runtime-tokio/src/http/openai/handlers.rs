//! The proxy's routes.
//!
//! `POST /v1/chat/completions`: the body is parsed, the key decided
//! ([`canonical`](super::canonical)), and the request submitted to the gateway's
//! manager with a job that streams from the upstream. The handler then waits for
//! the request's first item before it answers, so that a failure before the first
//! chunk (upstream unreachable, `4xx`/`5xx`, `429`, a stall) is an HTTP error with
//! the right status (and `Retry-After` for `429`) for every member of the flight.
//! After the first chunk:
//!
//! - `stream: true`: SSE, each chunk framed as `data: {chunk}`, then
//!   `data: [DONE]`; the usage chunk only if the client asked for
//!   `stream_options.include_usage`. A failure after the first chunk is a final
//!   `data: {"error": {...}}` event and no `[DONE]`, so OpenAI clients raise
//!   instead of taking a truncated answer as whole.
//! - `stream: false`: one `chat.completion` object assembled from the chunks
//!   ([`Assembler`]); any failure is an HTTP error.
//!
//! A client that goes away drops its result stream, which detaches its request;
//! when the flight's last member leaves, the core aborts the upstream call at once
//! (its connection is closed) and frees the slot.
//!
//! `GET /v1/models` is forwarded to the upstream as it is (status and body); with
//! no upstream it lists the simulated model.

use core::convert::Infallible;
use std::time::Instant;

use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_lite::StreamExt;
use serde_json::{json, Value};
use tracing::Instrument;

use super::assemble::Assembler;
use super::canonical::{
    may_coalesce, opts_out, shared_key, tenant_namespace, unique_key, OPT_OUT_HEADER,
};
use super::upstream::{error_chain, flight_body, Target, UpstreamCall};
use super::wire::{decode_chunk, error_event, ApiError, ChunkKind, Delivery, DONE};
use crate::http::{ChatJob, ChunkStream, Gateway, Job, Observed, UpstreamConfig};
use crate::{Bytes, Item, Outcome, Route, SubmitError};

/// Response header: the request's id on the gateway (for the seeds' API's status
/// and cancel endpoints).
pub const REQUEST_ID_HEADER: &str = "x-flightdeck-request-id";
/// Response header: how the request was placed: `new`, `joined` or `cached`.
pub const ROUTE_HEADER: &str = "x-flightdeck-route";

/// Largest `GET /v1/models` body forwarded from the upstream.
const MAX_MODELS_BYTES: usize = 4 * 1024 * 1024;

/// The OpenAI-compatible routes, for [`router`](crate::http::router) to merge.
pub fn routes() -> Router<Gateway> {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
}

/// `{base}/{path}` (the base URL's path is kept: `.../v1` + `models`).
fn upstream_url(upstream: &UpstreamConfig, path: &str) -> String {
    format!(
        "{}/{path}",
        upstream.base_url.as_str().trim_end_matches('/')
    )
}

/// The `Authorization` sent upstream: the configured key, else the caller's own.
fn upstream_authorization(upstream: &UpstreamConfig, headers: &HeaderMap) -> Option<HeaderValue> {
    match &upstream.api_key {
        Some(key) => HeaderValue::from_str(&format!("Bearer {key}"))
            .ok()
            .map(|mut v| {
                v.set_sensitive(true);
                v
            }),
        None => headers.get(header::AUTHORIZATION).cloned(),
    }
}

async fn chat_completions(
    State(gateway): State<Gateway>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let span = tracing::info_span!(
        "chat_completion",
        request = tracing::field::Empty,
        key_hash = tracing::field::Empty,
        route = tracing::field::Empty,
    );
    match chat(&gateway, &headers, body).instrument(span).await {
        Ok(response) => response,
        Err(error) => {
            tracing::info!(status = %error.status, message = error.message(), "chat completion failed");
            error.into_response()
        }
    }
}

async fn chat(
    gateway: &Gateway,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    if !gateway.is_admitting() {
        return Err(shutting_down());
    }
    let body = body.map_err(|rejection| {
        ApiError::new(
            rejection.status(),
            "invalid_request_error",
            None,
            rejection.body_text(),
        )
    })?;
    let body = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(map)) => map,
        Ok(_) => {
            return Err(ApiError::invalid_request(
                None,
                "the request body must be a JSON object",
            ));
        }
        Err(e) => {
            return Err(ApiError::invalid_request(
                None,
                format!("the request body is not valid JSON: {e}"),
            ));
        }
    };
    let delivery = Delivery::from_body(&body)?;
    let config = gateway.config();
    let opted_out = headers
        .get(OPT_OUT_HEADER)
        .is_some_and(|v| opts_out(v.as_bytes()));
    let coalesce = !opted_out && may_coalesce(config.openai.coalesce, &body);
    let (upstream_name, target) = match &config.upstream {
        Some(upstream) => (
            upstream.base_url.as_str().to_owned(),
            Target::Http {
                url: upstream_url(upstream, "chat/completions"),
                authorization: upstream_authorization(upstream, headers),
            },
        ),
        None => (
            "simulated".to_owned(),
            Target::Simulated {
                token_delay: config.simulated.token_delay,
            },
        ),
    };
    let key = if coalesce {
        let credential = headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes);
        let namespace = tenant_namespace(&config.openai, credential);
        shared_key(&upstream_name, &namespace, &body)
    } else {
        unique_key()
    };
    let label = crate::http::short_hash(key.as_bytes());
    let call = UpstreamCall {
        target,
        body: flight_body(&body),
    };
    let job = Job::Chat(ChatJob {
        cacheable: coalesce,
        label: label.clone(),
        open: Box::new(move |context| {
            Box::pin(async move {
                match call.open(&context.client).await {
                    Ok(stream) => {
                        let stream: ChunkStream =
                            Box::pin(stream.map(|chunk| chunk.map_err(|e| e.to_text())));
                        Ok(stream)
                    }
                    Err(e) => Err(e.to_text()),
                }
            })
        }),
    });
    let manager = gateway.manager();
    let placement = manager
        .submit(key, job)
        .map_err(|e| submit_error(gateway, &e))?;
    let route = match placement.route {
        Route::NewFlight(_) => "new",
        Route::Joined(_) => "joined",
        Route::Cached => "cached",
        _ => "other",
    };
    let span = tracing::Span::current();
    span.record("request", tracing::field::display(placement.id));
    span.record("key_hash", label.as_str());
    span.record("route", route);
    tracing::info!(
        coalesce,
        stream = delivery.stream,
        "chat completion admitted"
    );
    let stream = manager.stream(placement.id).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            None,
            e.to_string(),
        )
    })?;
    let mut stream = gateway.observe("openai", started, stream);

    let first = stream.next_item().await;
    let mut response = match first {
        None => return Err(ended_without_outcome()),
        Some(Item::End(outcome)) if outcome != Outcome::Completed => {
            return Err(ApiError::from_outcome(&outcome));
        }
        Some(first) if delivery.stream => {
            sse_response(gateway, first, stream, delivery.include_usage)
        }
        Some(first) => assembled(first, stream).await?,
    };
    let headers = response.headers_mut();
    if let Ok(id) = HeaderValue::from_str(&gateway.public_id_text(placement.id)) {
        headers.insert(REQUEST_ID_HEADER, id);
    }
    headers.insert(ROUTE_HEADER, HeaderValue::from_static(route));
    Ok(response)
}

fn shutting_down() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "server_error",
        Some("shutting_down"),
        "the gateway is shutting down",
    )
}

fn ended_without_outcome() -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "server_error",
        None,
        "the request's stream ended without an outcome",
    )
}

fn submit_error(gateway: &Gateway, error: &SubmitError) -> ApiError {
    match error {
        SubmitError::QueueFull { .. } => {
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                Some("queue_full"),
                format!("the gateway's queue is full: {error}; retry later"),
            );
            let seconds = gateway.config().retry_after.as_secs_f64().ceil().max(1.0);
            e.retry_after = Some(format!("{seconds:.0}"));
            e
        }
        SubmitError::ShuttingDown => shutting_down(),
        _ => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            None,
            error.to_string(),
        ),
    }
}

/// What a streaming client reads: the chunks (usage chunks only if asked for),
/// then `[DONE]` on completion or an error event on anything else.
struct Delivering {
    stream: Observed,
    pending: Option<Item>,
    include_usage: bool,
    over: bool,
}

/// The SSE event for one item; `None` for a chunk this client does not get.
fn event_for(item: Item, include_usage: bool) -> Option<(Event, bool)> {
    match item {
        Item::Chunk(chunk) => match decode_chunk(&chunk) {
            Some((ChunkKind::Usage, _)) if !include_usage => None,
            Some((_, payload)) => Some((Event::default().data(payload), false)),
            None => {
                let error = ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    None,
                    "the flight's log holds a chunk the proxy did not write",
                );
                Some((Event::default().data(error_event(&error)), true))
            }
        },
        Item::End(Outcome::Completed) => Some((Event::default().data(DONE), true)),
        Item::End(outcome) => Some((
            Event::default().data(error_event(&ApiError::from_outcome(&outcome))),
            true,
        )),
    }
}

fn sse_response(gateway: &Gateway, first: Item, stream: Observed, include_usage: bool) -> Response {
    let state = Delivering {
        stream,
        pending: Some(first),
        include_usage,
        over: false,
    };
    let events = futures_lite::stream::unfold(state, |mut s| async move {
        loop {
            if s.over {
                return None;
            }
            let item = match s.pending.take() {
                Some(item) => item,
                None => match s.stream.next_item().await {
                    Some(item) => item,
                    None => {
                        s.over = true;
                        let event = Event::default().data(error_event(&ended_without_outcome()));
                        return Some((Ok::<_, Infallible>(event), s));
                    }
                },
            };
            if let Some((event, last)) = event_for(item, s.include_usage) {
                s.over = last;
                return Some((Ok(event), s));
            }
        }
    });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(gateway.config().sse_keep_alive))
        .into_response()
}

/// Reads the whole flight and answers with one `chat.completion`.
async fn assembled(first: Item, mut stream: Observed) -> Result<Response, ApiError> {
    let mut assembler = Assembler::default();
    let mut item = Some(first);
    loop {
        match item {
            Some(Item::Chunk(chunk)) => {
                if let Some((_, payload)) = decode_chunk(&chunk) {
                    assembler.push(payload);
                }
            }
            Some(Item::End(Outcome::Completed)) => break,
            Some(Item::End(outcome)) => return Err(ApiError::from_outcome(&outcome)),
            None => return Err(ended_without_outcome()),
        }
        item = stream.next_item().await;
    }
    Ok(axum::Json(assembler.finish()).into_response())
}

async fn models(State(gateway): State<Gateway>, headers: HeaderMap) -> Response {
    let Some(upstream) = &gateway.config().upstream else {
        return axum::Json(json!({
            "object": "list",
            "data": [{
                "id": super::simulated::MODEL,
                "object": "model",
                "created": 0,
                "owned_by": "flightdeck",
            }],
        }))
        .into_response();
    };
    let mut request = gateway.client().get(upstream_url(upstream, "models"));
    if let Some(auth) = upstream_authorization(upstream, &headers) {
        request = request.header(reqwest::header::AUTHORIZATION, auth);
    }
    let mut response = match request.send().await {
        Ok(response) => response,
        Err(e) => {
            return ApiError::new(
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                Some("upstream_unreachable"),
                format!("could not reach the upstream: {}", error_chain(&e)),
            )
            .into_response();
        }
    };
    let status = response.status();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .cloned();
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) if body.len() + chunk.len() <= MAX_MODELS_BYTES => {
                body.extend_from_slice(&chunk);
            }
            Ok(Some(_)) => {
                return ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "upstream_error",
                    Some("response_too_large"),
                    format!("the upstream's model list exceeds {MAX_MODELS_BYTES} bytes"),
                )
                .into_response();
            }
            Ok(None) => break,
            Err(e) => {
                return ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "upstream_error",
                    Some("stream_cut"),
                    format!("the upstream's answer broke: {}", error_chain(&e)),
                )
                .into_response();
            }
        }
    }
    let status = StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut response = (status, body).into_response();
    if let Some(content_type) =
        content_type.and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok())
    {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, content_type);
    }
    response
}
