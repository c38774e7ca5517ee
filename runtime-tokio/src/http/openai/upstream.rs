//! The upstream side of a chat completion flight: one streaming `POST
//! {base}/chat/completions` (or the built-in simulated model), its SSE events
//! turned into log chunks.
//!
//! The flight always asks the upstream for a stream with usage
//! (`stream: true`, `stream_options.include_usage: true`), whatever its members
//! asked, so that streaming and non-streaming clients share it. The stream is
//! complete only when the upstream sends `data: [DONE]`: a connection that ends
//! before it is a cut, and fails the flight (OpenAI clients would otherwise take
//! a truncated answer as whole). An `{"error": ...}` event mid-stream fails it too.
//!
//! The SSE decoder is the few lines of the format that OpenAI-compatible servers
//! use (`data:` fields, comments, `\n`, `\r\n` or `\r` line ends, events split
//! anywhere across network reads); an event larger than [`MAX_EVENT_BYTES`] is an
//! error rather than unbounded memory.

use core::pin::Pin;
use core::time::Duration;

use axum::http::HeaderValue;
use futures_lite::Stream;
use serde_json::{Map, Value};

use super::simulated;
use super::wire::{encode_chunk, ChunkKind, UpstreamError};
use crate::Bytes;

/// The largest SSE event accepted from an upstream.
pub const MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

/// The largest error body read from an upstream that answered with an error status.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// A flight's log chunks, as the upstream produces them.
pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<Bytes, UpstreamError>> + Send>>;

/// Where a flight's answer comes from.
#[derive(Clone, Debug)]
pub enum Target {
    /// An OpenAI-compatible server.
    Http {
        /// `{base}/chat/completions`.
        url: String,
        /// The `Authorization` header sent to it: the configured upstream key, or,
        /// with none configured, the caller's own header (every member of a
        /// flight shares the caller's tenant namespace, hence its credential).
        authorization: Option<HeaderValue>,
    },
    /// The built-in simulated model (no upstream configured).
    Simulated {
        /// The delay before each token.
        token_delay: Duration,
    },
}

/// One prepared upstream call: what a chat completion flight runs. It is made
/// by the handler; the gateway's upstream runs it with [`UpstreamCall::open`].
#[derive(Clone, Debug)]
pub struct UpstreamCall {
    /// Where to send it.
    pub target: Target,
    /// The request body sent upstream: the client's body with `stream` and
    /// `stream_options` set as the flight needs them.
    pub body: Bytes,
}

impl UpstreamCall {
    /// Opens the upstream stream. Errors before the first chunk carry the
    /// upstream's status (and `Retry-After`); errors after it end the stream.
    ///
    /// # Errors
    /// The upstream could not be reached or answered with an error status.
    pub async fn open(self, client: &reqwest::Client) -> Result<ChunkStream, UpstreamError> {
        match self.target {
            Target::Simulated { token_delay } => Ok(simulated::stream(&self.body, token_delay)),
            Target::Http { url, authorization } => {
                let mut request = client
                    .post(&url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .header(reqwest::header::ACCEPT, "text/event-stream")
                    .body(self.body);
                if let Some(auth) = authorization {
                    request = request.header(reqwest::header::AUTHORIZATION, auth);
                }
                let response = request.send().await.map_err(|e| {
                    UpstreamError::gateway(
                        "upstream_unreachable",
                        format!("could not reach the upstream: {}", error_chain(&e)),
                    )
                })?;
                if !response.status().is_success() {
                    return Err(error_response(response).await);
                }
                Ok(sse_chunks(response))
            }
        }
    }
}

/// The upstream's error status and body as an [`UpstreamError`].
pub(crate) async fn error_response(mut response: reqwest::Response) -> UpstreamError {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut body = Vec::new();
    while body.len() < MAX_ERROR_BODY_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    UpstreamError::from_response(status, retry_after, &body)
}

/// An error with its sources ("error sending request: connection refused").
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// What the chunk stream keeps between reads.
struct Reader {
    response: reqwest::Response,
    decoder: SseDecoder,
    events: std::collections::VecDeque<String>,
    over: bool,
}

/// The response's SSE events as log chunks, ending at `[DONE]`.
fn sse_chunks(response: reqwest::Response) -> ChunkStream {
    let reader = Reader {
        response,
        decoder: SseDecoder::default(),
        events: std::collections::VecDeque::new(),
        over: false,
    };
    Box::pin(futures_lite::stream::unfold(reader, |mut r| async move {
        if r.over {
            return None;
        }
        loop {
            if let Some(data) = r.events.pop_front() {
                if data == super::wire::DONE {
                    return None;
                }
                let item = log_chunk(&data);
                r.over = item.is_err();
                return Some((item, r));
            }
            let failure = match r.response.chunk().await {
                Ok(Some(bytes)) => match r.decoder.feed(&bytes, &mut r.events) {
                    Ok(()) => continue,
                    Err(e) => e,
                },
                Ok(None) => UpstreamError::gateway(
                    "stream_cut",
                    "the upstream's stream ended before data: [DONE]",
                ),
                Err(e) => UpstreamError::gateway(
                    "stream_cut",
                    format!("the upstream's stream broke: {}", error_chain(&e)),
                ),
            };
            r.over = true;
            return Some((Err(failure), r));
        }
    }))
}

/// One upstream event's data as a log chunk, or the error it carries.
pub(crate) fn log_chunk(data: &str) -> Result<Bytes, UpstreamError> {
    match serde_json::from_str::<Value>(data) {
        Ok(Value::Object(chunk)) => match chunk.get("error") {
            Some(error) if !error.is_null() => Err(mid_stream_error(error)),
            _ => Ok(encode_chunk(ChunkKind::of(&chunk), data)),
        },
        _ => {
            let shown: String = data.chars().take(200).collect();
            Err(UpstreamError::gateway(
                "malformed_chunk",
                format!("the upstream sent an event that is not a JSON object: {shown}"),
            ))
        }
    }
}

fn mid_stream_error(error: &Value) -> UpstreamError {
    let mut e = UpstreamError::gateway("upstream_error", "the upstream reported an error");
    match error {
        Value::Object(_) => e.error = error.clone(),
        Value::String(message) => e.error["message"] = Value::from(message.as_str()),
        _ => {}
    }
    e
}

/// The flight's request body: the client's, with `stream: true` and
/// `stream_options: {"include_usage": true}`.
#[must_use]
pub fn flight_body(body: &Map<String, Value>) -> Bytes {
    let mut body = body.clone();
    body.insert("stream".into(), Value::Bool(true));
    body.insert(
        "stream_options".into(),
        serde_json::json!({ "include_usage": true }),
    );
    Bytes::from(Value::Object(body).to_string())
}

/// Splits a byte stream into SSE events and keeps each event's data.
#[derive(Debug, Default)]
pub struct SseDecoder {
    line: Vec<u8>,
    data: Vec<u8>,
    has_data: bool,
    /// The previous byte was `\r`: a `\n` right after it ends no second line.
    after_cr: bool,
}

impl SseDecoder {
    /// Feeds bytes; pushes the data of every event completed by them to `events`.
    ///
    /// # Errors
    /// An event longer than [`MAX_EVENT_BYTES`], or data that is not UTF-8.
    pub fn feed(
        &mut self,
        mut input: &[u8],
        events: &mut std::collections::VecDeque<String>,
    ) -> Result<(), UpstreamError> {
        while !input.is_empty() {
            if self.after_cr && input[0] == b'\n' {
                input = &input[1..];
                self.after_cr = false;
                continue;
            }
            self.after_cr = false;
            match input.iter().position(|&b| b == b'\n' || b == b'\r') {
                Some(end) => {
                    self.line.extend_from_slice(&input[..end]);
                    self.after_cr = input[end] == b'\r';
                    input = &input[end + 1..];
                    self.end_line(events)?;
                }
                None => {
                    self.line.extend_from_slice(input);
                    input = &[];
                }
            }
            if self.line.len() + self.data.len() > MAX_EVENT_BYTES {
                return Err(UpstreamError::gateway(
                    "malformed_stream",
                    format!("the upstream sent an event over {MAX_EVENT_BYTES} bytes"),
                ));
            }
        }
        Ok(())
    }

    fn end_line(
        &mut self,
        events: &mut std::collections::VecDeque<String>,
    ) -> Result<(), UpstreamError> {
        let line = core::mem::take(&mut self.line);
        if line.is_empty() {
            if self.has_data {
                let data = core::mem::take(&mut self.data);
                self.has_data = false;
                let data = String::from_utf8(data).map_err(|_| {
                    UpstreamError::gateway(
                        "malformed_stream",
                        "the upstream sent data that is not UTF-8",
                    )
                })?;
                events.push_back(data);
            }
            return Ok(());
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(0) => return Ok(()), // a comment (keep-alive)
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (&line[..], &[][..]),
        };
        if field == b"data" {
            if self.has_data {
                self.data.push(b'\n');
            }
            self.data.extend_from_slice(value);
            self.has_data = true;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    fn decode_in_pieces(input: &[u8], piece: usize) -> Vec<String> {
        let mut decoder = SseDecoder::default();
        let mut events = VecDeque::new();
        for part in input.chunks(piece) {
            decoder.feed(part, &mut events).unwrap();
        }
        events.into()
    }

    #[test]
    fn events_split_anywhere_decode_the_same() {
        let input = b": keep-alive\n\ndata: {\"a\":1}\n\ndata:{\"b\":2}\r\n\r\nevent: x\ndata: one\ndata: two\r\rdata: [DONE]\n\n";
        let expected = vec!["{\"a\":1}", "{\"b\":2}", "one\ntwo", "[DONE]"];
        for piece in 1..input.len() {
            assert_eq!(
                decode_in_pieces(input, piece),
                expected,
                "piece size {piece}"
            );
        }
    }

    #[test]
    fn an_unfinished_event_is_not_emitted() {
        assert!(decode_in_pieces(b"data: {\"a\":1}\n", 4).is_empty());
    }

    #[test]
    fn oversized_events_and_bad_utf8_are_errors() {
        let mut decoder = SseDecoder::default();
        let mut events = VecDeque::new();
        let big = vec![b'x'; MAX_EVENT_BYTES + 1];
        assert!(decoder.feed(b"data: ", &mut events).is_ok());
        assert!(decoder.feed(&big, &mut events).is_err());
        let mut decoder = SseDecoder::default();
        assert!(decoder.feed(b"data: \xff\n\n", &mut events).is_err());
    }

    #[test]
    fn log_chunks_and_error_events() {
        let chunk = log_chunk(r#"{"choices":[{"index":0,"delta":{"content":"x"}}]}"#).unwrap();
        assert_eq!(chunk[0], b'c');
        let e =
            log_chunk(r#"{"error":{"message":"overloaded","type":"server_error"}}"#).unwrap_err();
        assert_eq!(e.error["message"], "overloaded");
        assert!(log_chunk("[1,2]").is_err());
        assert!(log_chunk("nope").is_err());
    }

    #[test]
    fn the_flight_always_streams_with_usage() {
        let Value::Object(body) = serde_json::from_str(r#"{"model":"m","stream":false}"#).unwrap()
        else {
            unreachable!("an object")
        };
        let sent: Value = serde_json::from_slice(&flight_body(&body)).unwrap();
        assert_eq!(sent["stream"], true);
        assert_eq!(sent["stream_options"]["include_usage"], true);
        assert_eq!(sent["model"], "m");
    }
}
