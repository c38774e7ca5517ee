//! OpenAI's wire format as the proxy speaks it: the error object and its status,
//! the delivery options of a request (`stream`, `stream_options.include_usage`),
//! and what a flight's log holds.
//!
//! **The log.** A flight always streams from the upstream (`stream: true`,
//! `stream_options.include_usage: true`), whatever its members asked for, so that
//! streaming and non-streaming clients coalesce. Each log chunk is one upstream
//! SSE `data:` payload (a `chat.completion.chunk` JSON object), verbatim, behind a
//! one-byte kind: [`ChunkKind::Choices`] or [`ChunkKind::Usage`] (the final chunk
//! with empty `choices` that carries the token counts). The kind is decided once,
//! when the upstream's event is read, so that delivering to each member costs no
//! JSON parse: a member that did not ask for `include_usage` skips usage chunks.
//! (Its other chunks still carry the `"usage": null` that an upstream adds when
//! usage is on; OpenAI's SDKs read that as "no usage", as they must for any
//! client that asked for usage.)
//!
//! **Errors.** Every failure is OpenAI's error object,
//! `{"error":{"message","type","param","code"}}`. An upstream failure travels
//! through the core as [`crate::Failure::Upstream`] text; that
//! text is an [`UpstreamError`] as JSON, so every member of the flight gets the
//! upstream's own status, error object and `Retry-After`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::{Bytes, Failure, Outcome};

/// OpenAI's error object with the HTTP status it is sent with.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    /// The HTTP status before the first chunk.
    pub status: StatusCode,
    /// The `error` object: `message`, `type`, `param`, `code` (and whatever else an
    /// upstream put in it).
    pub error: Value,
    /// `Retry-After` to send with the status (always set for `429`).
    pub retry_after: Option<String>,
}

impl ApiError {
    /// An error object made here (not an upstream's).
    #[must_use]
    pub fn new(
        status: StatusCode,
        kind: &str,
        code: Option<&str>,
        message: impl Into<String>,
    ) -> Self {
        ApiError {
            status,
            error: json!({
                "message": message.into(),
                "type": kind,
                "param": Value::Null,
                "code": code,
            }),
            retry_after: (status == StatusCode::TOO_MANY_REQUESTS).then(|| "1".to_owned()),
        }
    }

    /// A `400` about the request body.
    #[must_use]
    pub fn invalid_request(param: Option<&str>, message: impl Into<String>) -> Self {
        let mut e = Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            None,
            message,
        );
        e.error["param"] = param.map_or(Value::Null, Value::from);
        e
    }

    /// The body `{"error": {...}}`.
    #[must_use]
    pub fn body(&self) -> Value {
        json!({ "error": self.error })
    }

    /// The message, for logs.
    #[must_use]
    pub fn message(&self) -> &str {
        self.error
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    /// How a request that ended with `outcome` before its first chunk is answered.
    /// `Outcome::Completed` is not an error; it maps to a `500` should it be passed.
    #[must_use]
    pub fn from_outcome(outcome: &Outcome) -> Self {
        match outcome {
            Outcome::Failed(Failure::Upstream(text)) => UpstreamError::parse(text).into_api_error(),
            Outcome::Failed(Failure::ResponseTooLarge { limit }) => Self::new(
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                Some("response_too_large"),
                format!("the upstream's answer exceeded the gateway's limit of {limit} bytes"),
            ),
            Outcome::Failed(Failure::Shutdown) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                Some("shutting_down"),
                "the gateway is shutting down",
            ),
            Outcome::Failed(Failure::Cluster(reason)) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                Some("cluster_unavailable"),
                format!("cluster mode failed: {reason}"),
            ),
            Outcome::Failed(Failure::OwnerLost) => Self::new(
                StatusCode::BAD_GATEWAY,
                "server_error",
                Some("owner_lost"),
                "the gateway instance running this answer's upstream call went away",
            ),
            Outcome::Failed(other) => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                None,
                other.to_string(),
            ),
            Outcome::TimedOut(phase) => Self::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                Some("timeout"),
                format!("timed out ({})", super::phase_text(*phase)),
            ),
            Outcome::Cancelled => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                Some("cancelled"),
                "the request was cancelled",
            ),
            Outcome::Completed => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                None,
                "completed",
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(retry) = self
            .retry_after
            .as_deref()
            .and_then(|r| HeaderValue::from_str(r).ok())
        {
            response.headers_mut().insert(header::RETRY_AFTER, retry);
        }
        response
    }
}

/// An upstream failure as it travels through the core ([`Failure::Upstream`]'s
/// text is this value's JSON, see [`UpstreamError::to_text`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpstreamError {
    /// The status to answer with before the first chunk.
    pub status: u16,
    /// The upstream's `Retry-After`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<String>,
    /// OpenAI's error object (the value of `error`).
    pub error: Value,
}

impl UpstreamError {
    /// An error detected by the gateway about the upstream (unreachable, cut,
    /// malformed): `502`, type `upstream_error`.
    #[must_use]
    pub fn gateway(code: &str, message: impl Into<String>) -> Self {
        UpstreamError {
            status: StatusCode::BAD_GATEWAY.as_u16(),
            retry_after: None,
            error: json!({
                "message": message.into(),
                "type": "upstream_error",
                "param": Value::Null,
                "code": code,
            }),
        }
    }

    /// The upstream answered `status` with `body`: its error object if the body
    /// has one, else one that quotes the body.
    #[must_use]
    pub fn from_response(status: u16, retry_after: Option<String>, body: &[u8]) -> Self {
        let error = match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(mut map)) if map.get("error").is_some_and(Value::is_object) => {
                map.remove("error").unwrap_or(Value::Null)
            }
            _ => {
                let text = String::from_utf8_lossy(body);
                let text: String = text.chars().take(512).collect();
                json!({
                    "message": format!("upstream answered {status}: {text}"),
                    "type": if status == 429 { "rate_limit_error" } else { "upstream_error" },
                    "param": Value::Null,
                    "code": Value::Null,
                })
            }
        };
        let retry_after = retry_after.or_else(|| (status == 429).then(|| "1".to_owned()));
        UpstreamError {
            status,
            retry_after,
            error,
        }
    }

    /// The text carried by [`Failure::Upstream`].
    #[must_use]
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }

    /// Reads the text back; text that is not an `UpstreamError` (an upstream
    /// error made elsewhere) becomes a `502` quoting it.
    #[must_use]
    pub fn parse(text: &str) -> Self {
        serde_json::from_str(text).unwrap_or_else(|_| Self::gateway("upstream_error", text))
    }

    /// As an [`ApiError`]. A status that is not an error status becomes `502`.
    #[must_use]
    pub fn into_api_error(self) -> ApiError {
        let status = StatusCode::from_u16(self.status)
            .ok()
            .filter(|s| s.is_client_error() || s.is_server_error())
            .unwrap_or(StatusCode::BAD_GATEWAY);
        let retry_after = self
            .retry_after
            .or_else(|| (status == StatusCode::TOO_MANY_REQUESTS).then(|| "1".to_owned()));
        ApiError {
            status,
            error: self.error,
            retry_after,
        }
    }
}

impl core::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.to_text())
    }
}

impl std::error::Error for UpstreamError {}

/// How a client wants its answer delivered (the fields left out of the key).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delivery {
    /// `stream`: SSE chunks, else one `chat.completion` object.
    pub stream: bool,
    /// `stream_options.include_usage`: the final usage chunk is sent.
    pub include_usage: bool,
}

impl Delivery {
    /// Reads `stream` and `stream_options` from a request body.
    ///
    /// # Errors
    /// A `400` naming the field if one has the wrong type.
    pub fn from_body(body: &Map<String, Value>) -> Result<Self, ApiError> {
        let stream = match body.get("stream") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(ApiError::invalid_request(
                    Some("stream"),
                    "`stream` must be a boolean",
                ));
            }
        };
        let include_usage = match body.get("stream_options") {
            None | Some(Value::Null) => false,
            Some(Value::Object(options)) => match options.get("include_usage") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => {
                    return Err(ApiError::invalid_request(
                        Some("stream_options.include_usage"),
                        "`stream_options.include_usage` must be a boolean",
                    ));
                }
            },
            Some(_) => {
                return Err(ApiError::invalid_request(
                    Some("stream_options"),
                    "`stream_options` must be an object",
                ));
            }
        };
        Ok(Delivery {
            stream,
            include_usage,
        })
    }
}

/// What one log chunk holds besides the upstream's payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkKind {
    /// A chunk with choices (deltas, finish reasons).
    Choices,
    /// The final usage chunk: empty `choices`, a `usage` object.
    Usage,
}

impl ChunkKind {
    const CHOICES: u8 = b'c';
    const USAGE: u8 = b'u';

    /// The kind of an upstream chunk.
    #[must_use]
    pub fn of(chunk: &Map<String, Value>) -> Self {
        let no_choices = chunk
            .get("choices")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty);
        if no_choices && chunk.get("usage").is_some_and(Value::is_object) {
            ChunkKind::Usage
        } else {
            ChunkKind::Choices
        }
    }
}

/// One log chunk: the kind byte, then the payload.
#[must_use]
pub fn encode_chunk(kind: ChunkKind, payload: &str) -> Bytes {
    let mut bytes = Vec::with_capacity(payload.len() + 1);
    bytes.push(match kind {
        ChunkKind::Choices => ChunkKind::CHOICES,
        ChunkKind::Usage => ChunkKind::USAGE,
    });
    bytes.extend_from_slice(payload.as_bytes());
    Bytes::from(bytes)
}

/// A log chunk read back: its kind and payload; `None` if it is not one (not
/// written by [`encode_chunk`], or not UTF-8).
#[must_use]
pub fn decode_chunk(chunk: &[u8]) -> Option<(ChunkKind, &str)> {
    let (&tag, payload) = chunk.split_first()?;
    let kind = match tag {
        ChunkKind::CHOICES => ChunkKind::Choices,
        ChunkKind::USAGE => ChunkKind::Usage,
        _ => return None,
    };
    Some((kind, std::str::from_utf8(payload).ok()?))
}

/// The payload of the SSE event that ends a stream on a failure (`data:` it,
/// with no `[DONE]` after): `{"error": {...}}`.
#[must_use]
pub fn error_event(error: &ApiError) -> String {
    error.body().to_string()
}

/// The payload of the event that ends a complete stream.
pub const DONE: &str = "[DONE]";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_error_round_trips_through_failure_text() {
        let e = UpstreamError::from_response(
            429,
            Some("7".into()),
            br#"{"error":{"message":"slow down","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#,
        );
        let text = e.to_text();
        let api = ApiError::from_outcome(&Outcome::Failed(Failure::Upstream(text)));
        assert_eq!(api.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(api.retry_after.as_deref(), Some("7"));
        assert_eq!(api.message(), "slow down");
        assert_eq!(api.error["code"], "rate_limit_exceeded");
    }

    #[test]
    fn a_429_always_has_retry_after_and_odd_bodies_are_quoted() {
        let api = UpstreamError::from_response(429, None, b"busy").into_api_error();
        assert_eq!(api.retry_after.as_deref(), Some("1"));
        assert!(api.message().contains("busy"));
        let api = ApiError::from_outcome(&Outcome::Failed(Failure::Upstream("boom".into())));
        assert_eq!(api.status, StatusCode::BAD_GATEWAY);
        assert_eq!(api.message(), "boom");
        let body = api.body();
        for field in ["message", "type", "param", "code"] {
            assert!(body["error"].get(field).is_some(), "{field} in {body}");
        }
    }

    #[test]
    fn timeouts_and_shutdown_have_their_status() {
        assert_eq!(
            ApiError::from_outcome(&Outcome::TimedOut(crate::Phase::Idle)).status,
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(
            ApiError::from_outcome(&Outcome::Failed(Failure::Shutdown)).status,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[test]
    fn delivery_options() {
        let body = |t: &str| match serde_json::from_str(t).unwrap() {
            Value::Object(m) => m,
            _ => unreachable!(),
        };
        assert_eq!(
            Delivery::from_body(&body("{}")).unwrap(),
            Delivery::default()
        );
        assert_eq!(
            Delivery::from_body(&body(
                r#"{"stream":true,"stream_options":{"include_usage":true}}"#
            ))
            .unwrap(),
            Delivery {
                stream: true,
                include_usage: true
            }
        );
        let e = Delivery::from_body(&body(r#"{"stream":"yes"}"#)).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.error["param"], "stream");
        assert!(Delivery::from_body(&body(r#"{"stream_options":3}"#)).is_err());
    }

    #[test]
    fn chunk_kinds() {
        let chunk = |t: &str| match serde_json::from_str(t).unwrap() {
            Value::Object(m) => m,
            _ => unreachable!(),
        };
        assert_eq!(
            ChunkKind::of(&chunk(r#"{"choices":[{"index":0}],"usage":null}"#)),
            ChunkKind::Choices
        );
        assert_eq!(
            ChunkKind::of(&chunk(r#"{"choices":[],"usage":{"total_tokens":3}}"#)),
            ChunkKind::Usage
        );
        let encoded = encode_chunk(ChunkKind::Usage, r#"{"a":1}"#);
        assert_eq!(
            decode_chunk(&encoded),
            Some((ChunkKind::Usage, r#"{"a":1}"#))
        );
        assert_eq!(decode_chunk(b"xyz"), None);
        assert_eq!(decode_chunk(b""), None);
    }
}
