//! The seeds' API (the Go original's, made complete), `/healthz` and `/metrics`.
//!
//! | Method and path | Answers |
//! |---|---|
//! | `POST /v1/requests` | `202 {id, route, position, flight}`; `400` bad body; `413` body over the limit; `429` queue full (`Retry-After`); `503` shutting down |
//! | `GET /v1/requests/{id}/stream` | `200` SSE: `chunk` events, then one terminal event; `404` unknown id; `409` a client is already attached |
//! | `POST /v1/requests/{id}/cancel` | `200 {"status":"cancelled"}` (also when already cancelled); `404` unknown id; `409` finished otherwise, with its `outcome` |
//! | `GET /v1/requests/{id}` | `200 {id, state, queue_position, flight, attached, finished, outcome}`; `404` unknown id |
//! | `GET /v1/stats` | `200` the manager's gauges and totals |
//! | `GET /healthz` | `200 {"status":"ok"}`; `503` while shutting down |
//! | `GET /metrics` | `200` Prometheus text format |
//!
//! Every error body is `{"error": {"code": "...", "message": "..."}}`. An id is what
//! `POST /v1/requests` returned; anything else is an unknown id (`404`).
//!
//! **Cluster mode** (feature `cluster`, module `http::cluster`): ids are
//! `"<instance>.<number>"` strings. A cancel or status for another instance's
//! request is sent to that instance over Redis and its own answer relayed as it is
//! (so `200 {"status":"cancelled"}` means its core confirmed it); `503
//! instance_unreachable` when no instance of that id listens, `504
//! instance_timeout` when it does not answer within the control timeout, `503
//! cluster_unavailable` when Redis fails; each error body also names the
//! `instance`. A **stream** is read on the instance that owns the request: another
//! instance answers `421 wrong_instance` naming it. (A stream is one long
//! connection whose closing cancels the request; relaying it through a second
//! instance would double its hops and tie its life to two processes, while a load
//! balancer can route `/v1/requests/<instance>.<n>/…` by the id's prefix.)
//! `/healthz` and `/v1/stats` add `"cluster": {"mode": "cluster"|"single",
//! "instance": ..., "reason": ...}` when cluster mode is configured.
//! Closing a stream's connection detaches: the request is cancelled, and when it
//! was its flight's last member the upstream is aborted at once.

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_lite::StreamExt;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::sse::{outcome_json, outcome_name, seeds_stream};
use super::{short_hash, ChunkStream, Gateway, Job, KeySpace, SeedsJob, UpstreamContext};
use crate::{RequestError, RequestId, RequestState, Route, SubmitError};

/// Longest key a client may give, in bytes.
pub const MAX_KEY_BYTES: usize = 4096;

/// The seeds' routes, `/healthz` and `/metrics`.
pub fn routes() -> Router<Gateway> {
    Router::new()
        .route("/v1/requests", post(submit))
        .route("/v1/requests/{id}", get(status))
        .route("/v1/requests/{id}/stream", get(stream))
        .route("/v1/requests/{id}/cancel", post(cancel))
        .route("/v1/stats", get(stats))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
}

/// An error answer: `{"error": {"code": ..., "message": ...}}`.
fn error(status: StatusCode, code: &str, message: impl core::fmt::Display) -> Response {
    let body = json!({"error": {"code": code, "message": message.to_string()}});
    (status, Json(body)).into_response()
}

fn unknown_id() -> Response {
    error(StatusCode::NOT_FOUND, "not_found", "no such request")
}

/// Which instance a request id in a path belongs to.
enum Target {
    /// One of this gateway's requests.
    Local(RequestId),
    /// A request of another instance of the cluster.
    #[cfg(feature = "cluster")]
    Remote { instance: String, number: u64 },
}

/// The id in a path: what `POST /v1/requests` returned (in cluster mode
/// `"<instance>.<number>"`, else the number). `None`: not an id.
fn target(gateway: &Gateway, text: &str) -> Option<Target> {
    #[cfg(feature = "cluster")]
    if let Some(me) = gateway.instance_id() {
        return match super::cluster::parse_id(me, text)? {
            super::cluster::RoutedId::Local(id) => Some(Target::Local(id)),
            super::cluster::RoutedId::Remote { instance, number } => {
                Some(Target::Remote { instance, number })
            }
        };
    }
    #[cfg(not(feature = "cluster"))]
    let _ = gateway;
    text.parse::<u64>()
        .ok()
        .map(|n| Target::Local(RequestId::from_raw(n)))
}

/// What a request addressed to another instance is forwarded as.
#[derive(Clone, Copy)]
enum Forward {
    Cancel,
    Status,
}

/// This gateway's request named by `text`; otherwise the answer to send: `404`
/// for an id no instance has, or (cluster mode) the owning instance's own answer
/// to the cancel or status, forwarded through the control plane.
#[cfg_attr(
    not(feature = "cluster"),
    allow(clippy::unused_async, unused_variables)
)]
async fn local_or_forward(
    gateway: &Gateway,
    text: &str,
    op: Forward,
) -> Result<RequestId, Response> {
    match target(gateway, text) {
        None => Err(unknown_id()),
        Some(Target::Local(id)) => Ok(id),
        #[cfg(feature = "cluster")]
        Some(Target::Remote { instance, number }) => {
            let op = match op {
                Forward::Cancel => super::cluster::ControlOp::Cancel,
                Forward::Status => super::cluster::ControlOp::Status,
            };
            Err(remote(gateway, &instance, op, number).await)
        }
    }
}

/// A cancel or status for a request of another instance: sent to it over the
/// control plane; its own answer is relayed as it is.
#[cfg(feature = "cluster")]
async fn remote(
    gateway: &Gateway,
    instance: &str,
    op: super::cluster::ControlOp,
    number: u64,
) -> Response {
    use super::cluster::ControlError;
    let Some(control) = gateway.control_plane() else {
        return unknown_id();
    };
    match control.call(instance, op, number).await {
        Ok(answer) => {
            tracing::info!(
                instance,
                id = number,
                ?op,
                status = answer.status,
                "answered by its instance"
            );
            let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
            (status, Json(answer.body)).into_response()
        }
        Err(e) => {
            let (status, code) = match &e {
                ControlError::Unreachable { .. } => {
                    (StatusCode::SERVICE_UNAVAILABLE, "instance_unreachable")
                }
                ControlError::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "instance_timeout"),
                ControlError::Redis(_) => (StatusCode::SERVICE_UNAVAILABLE, "cluster_unavailable"),
            };
            tracing::warn!(instance, id = number, ?op, error = %e, "no answer from the request's instance");
            let body = json!({
                "error": {"code": code, "message": e.to_string()},
                "instance": instance,
            });
            (status, Json(body)).into_response()
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitBody {
    key: Option<String>,
    payload: Option<serde_json::Value>,
}

fn route_name(route: Route) -> (&'static str, Option<u64>) {
    match route {
        Route::NewFlight(flight) => ("new_flight", Some(flight.raw())),
        Route::Joined(flight) => ("joined", Some(flight.raw())),
        _ => ("cached", None),
    }
}

async fn submit(State(gateway): State<Gateway>, body: Result<Bytes, BytesRejection>) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the body exceeds {} bytes", gateway.config().body_limit),
            )
        }
        Err(rejection) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                rejection.body_text(),
            )
        }
    };
    let parsed: SubmitBody = match serde_json::from_slice(&body) {
        Ok(parsed) => parsed,
        Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_body", e),
    };
    let payload = match parsed.payload {
        None | Some(serde_json::Value::Null) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                "`payload` is required",
            )
        }
        Some(payload) => payload,
    };
    let key = match parsed.key {
        Some(key) if key.is_empty() => {
            return error(StatusCode::BAD_REQUEST, "invalid_body", "`key` is empty")
        }
        Some(key) if key.len() > MAX_KEY_BYTES => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                format!("`key` is longer than {MAX_KEY_BYTES} bytes"),
            )
        }
        Some(key) => KeySpace::Seeds.key(key.as_bytes()),
        // serde_json's maps are sorted, so equal payloads print equally.
        None => KeySpace::Seeds.key(&Sha256::digest(payload.to_string().as_bytes())),
    };
    if !gateway.is_admitting() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the gateway is shutting down",
        );
    }
    let key_hash = short_hash(key.as_bytes());
    let span = tracing::info_span!("request", api = "seeds", id = tracing::field::Empty, key_hash = %key_hash, route = tracing::field::Empty);
    let job = Job::Seeds(SeedsJob { payload, key_hash });
    match gateway.manager().submit(key, job) {
        Ok(placement) => {
            let (route, flight) = route_name(placement.route);
            let id = gateway.public_id(placement.id);
            span.record("id", tracing::field::display(&id));
            span.record("route", route);
            span.in_scope(|| tracing::info!(position = ?placement.queue_position, "submitted"));
            let body = json!({
                "id": id,
                "route": route,
                "position": placement.queue_position,
                "flight": flight,
            });
            let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
            let path_id = gateway.public_id_text(placement.id);
            if let Ok(location) = HeaderValue::from_str(&format!("/v1/requests/{path_id}/stream")) {
                response.headers_mut().insert(header::LOCATION, location);
            }
            response
        }
        Err(SubmitError::QueueFull { capacity }) => {
            span.in_scope(|| tracing::warn!(capacity, "queue full"));
            let mut response = error(
                StatusCode::TOO_MANY_REQUESTS,
                "queue_full",
                format!("the queue is full ({capacity} flights waiting)"),
            );
            let seconds = gateway.config().retry_after.as_secs_f64().ceil().max(1.0);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds_u64(seconds)));
            response
        }
        Err(SubmitError::ShuttingDown) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the gateway is shutting down",
        ),
        Err(e) => error(StatusCode::BAD_REQUEST, "invalid_request", e),
    }
}

#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn seconds_u64(seconds: f64) -> u64 {
    seconds as u64
}

async fn stream(State(gateway): State<Gateway>, Path(id): Path<String>) -> Response {
    let id = match target(&gateway, &id) {
        None => return unknown_id(),
        Some(Target::Local(id)) => id,
        // A stream is read where its request lives: see the module docs.
        #[cfg(feature = "cluster")]
        Some(Target::Remote { instance, number }) => {
            let body = json!({
                "error": {
                    "code": "wrong_instance",
                    "message": format!(
                        "request {} belongs to instance `{instance}`: read its stream there",
                        super::cluster::format_id(&instance, number)
                    ),
                },
                "instance": instance,
            });
            return (StatusCode::MISDIRECTED_REQUEST, Json(body)).into_response();
        }
    };
    let started = Instant::now();
    match gateway.manager().stream(id) {
        Ok(stream) => {
            let span = tracing::info_span!("stream", api = "seeds", id = id.raw());
            span.in_scope(|| tracing::info!("client attached"));
            let observed = gateway.observe("seeds", started, stream);
            seeds_stream(observed, gateway.config().sse_keep_alive).into_response()
        }
        Err(RequestError::AlreadyAttached) => error(
            StatusCode::CONFLICT,
            "already_attached",
            "a client is already reading this request",
        ),
        Err(_) => unknown_id(),
    }
}

async fn cancel(State(gateway): State<Gateway>, Path(id): Path<String>) -> Response {
    let id = match local_or_forward(&gateway, &id, Forward::Cancel).await {
        Ok(id) => id,
        Err(answer) => return answer,
    };
    let (status, body) = cancel_answer(gateway.manager(), id);
    (status, Json(body)).into_response()
}

/// The answer to a cancel of this gateway's request `id` (also what the control
/// plane sends back for a cancel from another instance). `200` only once the core
/// confirmed the cancellation.
pub(crate) fn cancel_answer(
    manager: &crate::Manager<super::Job>,
    id: RequestId,
) -> (StatusCode, serde_json::Value) {
    match manager.cancel(id) {
        Ok(()) => {
            tracing::info!(id = id.raw(), "cancelled");
            (StatusCode::OK, json!({"status": "cancelled"}))
        }
        Err(RequestError::AlreadyFinished(outcome)) => (
            StatusCode::CONFLICT,
            json!({
                "error": {
                    "code": "already_finished",
                    "message": format!("the request already ended: {outcome}"),
                },
                "outcome": outcome_json(&outcome),
            }),
        ),
        Err(_) => (
            StatusCode::NOT_FOUND,
            json!({"error": {"code": "not_found", "message": "no such request"}}),
        ),
    }
}

fn state_name(state: &RequestState) -> &'static str {
    match state {
        RequestState::Queued => "queued",
        RequestState::Preparing => "preparing",
        RequestState::WaitingForStream => "waiting_for_stream",
        RequestState::Streaming => "streaming",
        RequestState::Claiming => "claiming",
        RequestState::Following => "following",
        RequestState::Cancelled => "cancelled",
        RequestState::Done(outcome) => outcome_name(outcome),
        _ => "unknown",
    }
}

async fn status(State(gateway): State<Gateway>, Path(id): Path<String>) -> Response {
    let id = match local_or_forward(&gateway, &id, Forward::Status).await {
        Ok(id) => id,
        Err(answer) => return answer,
    };
    let (status, body) = status_answer(gateway.manager(), id, &gateway.public_id(id));
    (status, Json(body)).into_response()
}

/// The answer to a status of this gateway's request `id`, shown to clients as
/// `public` (also what the control plane sends back to another instance).
pub(crate) fn status_answer(
    manager: &crate::Manager<super::Job>,
    id: RequestId,
    public: &serde_json::Value,
) -> (StatusCode, serde_json::Value) {
    let Some(status) = manager.status(id) else {
        return (
            StatusCode::NOT_FOUND,
            json!({"error": {"code": "not_found", "message": "no such request"}}),
        );
    };
    (
        StatusCode::OK,
        json!({
            "id": public,
            "state": state_name(&status.state),
            "queue_position": status.queue_position,
            "flight": status.flight.map(crate::FlightId::raw),
            "attached": status.attached,
            "finished": status.is_finished(),
            "outcome": status.outcome().as_ref().map(outcome_json),
        }),
    )
}

async fn stats(State(gateway): State<Gateway>) -> Response {
    let stats = gateway.manager().stats();
    match gateway.cluster_mode().to_json() {
        None => Json(stats).into_response(),
        Some(cluster) => {
            let mut value = serde_json::to_value(stats).unwrap_or_default();
            if let Some(fields) = value.as_object_mut() {
                fields.insert("cluster".to_owned(), cluster);
            }
            Json(value).into_response()
        }
    }
}

async fn healthz(State(gateway): State<Gateway>) -> Response {
    let (status, mut body) = if gateway.is_admitting() {
        (StatusCode::OK, json!({"status": "ok"}))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "shutting_down"}),
        )
    };
    if let Some(cluster) = gateway.cluster_mode().to_json() {
        body["cluster"] = cluster;
    }
    (status, Json(body)).into_response()
}

async fn metrics(State(gateway): State<Gateway>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        gateway.render_metrics(),
    )
        .into_response()
}

/// Opens a seeds' flight's upstream: the configured seeds upstream (the payload
/// POSTed as JSON, the response body's bytes as chunks), or the simulated model.
pub(crate) async fn open_upstream(
    context: &UpstreamContext,
    job: SeedsJob,
) -> Result<ChunkStream, String> {
    let Some(upstream) = &context.config.seeds_upstream else {
        return Ok(context.config.simulated.answer_for(&job.payload).stream());
    };
    let mut request = context
        .client
        .post(upstream.base_url.clone())
        .json(&job.payload);
    if let Some(key) = &upstream.api_key {
        request = request.bearer_auth(key);
    }
    let response = request
        .send()
        .await
        .map_err(|e| format!("cannot reach the upstream: {e}"))?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        let snippet: String = body.chars().take(200).collect();
        return Err(format!("the upstream answered {status}: {snippet}"));
    }
    Ok(Box::pin(response.bytes_stream().map(|chunk| {
        chunk.map_err(|e| format!("the upstream stream broke: {e}"))
    })))
}
