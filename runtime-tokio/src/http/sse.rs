//! Server-sent events: the seeds' API's event stream, and a small decoder for
//! clients (the demo and the tests read the gateway through it).
//!
//! A seeds' stream is one `chunk` event per chunk (`id` = its index from 0, `data`
//! = the chunk's text; bytes that are not UTF-8 are replaced by U+FFFD, and a
//! chunk's newlines become several `data:` lines, which SSE clients join back),
//! then exactly one terminal event named after the outcome:
//! `completed`, `failed` (`reason`), `timed_out` (`phase`) or `cancelled`, whose
//! data is the outcome as JSON ([`outcome_json`]). Nothing follows it.

use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures_lite::{Stream, StreamExt};
use serde_json::json;

use super::Observed;
use crate::{Failure, Item, Outcome, Phase};

/// The snake-case name of a deadline's phase (`queue`, `preparation`,
/// `stream_slot`, `stream`, `idle`, `attach`).
#[must_use]
pub fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Queue => "queue",
        Phase::Preparation => "preparation",
        Phase::StreamSlot => "stream_slot",
        Phase::Stream => "stream",
        Phase::Idle => "idle",
        Phase::Attach => "attach",
        _ => "unknown",
    }
}

/// The outcome's name, also the terminal event's name: `completed`, `failed`,
/// `timed_out` or `cancelled`.
#[must_use]
pub fn outcome_name(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Completed => "completed",
        Outcome::Cancelled => "cancelled",
        Outcome::Failed(_) => "failed",
        Outcome::TimedOut(_) => "timed_out",
    }
}

/// A machine-readable name for a failure's kind.
fn failure_kind(failure: &Failure) -> &'static str {
    match failure {
        Failure::Preparation(_) => "preparation",
        Failure::Upstream(_) => "upstream",
        Failure::Panicked { .. } => "panicked",
        Failure::ResponseTooLarge { .. } => "response_too_large",
        Failure::Shutdown => "shutdown",
        Failure::OwnerLost => "owner_lost",
        Failure::Cluster(_) => "cluster",
        _ => "other",
    }
}

/// The outcome as JSON: `{"status": "completed"}`, `{"status": "cancelled"}`,
/// `{"status": "failed", "kind": "upstream", "reason": "..."}`,
/// `{"status": "timed_out", "phase": "idle"}`.
#[must_use]
pub fn outcome_json(outcome: &Outcome) -> serde_json::Value {
    match outcome {
        Outcome::Failed(failure) => json!({
            "status": "failed",
            "kind": failure_kind(failure),
            "reason": failure.to_string(),
        }),
        Outcome::TimedOut(phase) => json!({"status": "timed_out", "phase": phase_name(*phase)}),
        other => json!({"status": outcome_name(other)}),
    }
}

/// The SSE event for one item; `index` is the chunk's index.
pub fn item_event(index: u64, item: &Item) -> Event {
    match item {
        Item::Chunk(bytes) => Event::default()
            .event("chunk")
            .id(index.to_string())
            .data(String::from_utf8_lossy(bytes)),
        Item::End(outcome) => Event::default()
            .event(outcome_name(outcome))
            .data(outcome_json(outcome).to_string()),
    }
}

/// A seeds' event stream over a client's result stream, with keep-alive comments.
pub fn seeds_stream(
    stream: Observed,
    keep_alive: Duration,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let events = stream.scan(0u64, |index, item| {
        let event = item_event(*index, &item);
        if matches!(item, Item::Chunk(_)) {
            *index += 1;
        }
        Some(Ok(event))
    });
    Sse::new(events).keep_alive(KeepAlive::new().interval(keep_alive))
}

/// One decoded server-sent event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field (`message` when absent).
    pub event: String,
    /// The `data:` lines, joined by `\n`.
    pub data: String,
    /// The `id:` field, if any.
    pub id: Option<String>,
}

/// Decodes a server-sent event stream fed in arbitrary pieces (the
/// `text/event-stream` format: `field: value` lines, events ended by a blank
/// line, comments starting with `:`).
#[derive(Clone, Debug, Default)]
pub struct SseDecoder {
    pending: Vec<u8>,
    event: Option<String>,
    data: Vec<String>,
    id: Option<String>,
}

impl SseDecoder {
    /// Feeds bytes; returns the events they completed.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.pending.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = self.pending.drain(..=end).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8_lossy(&line).into_owned();
            if line.is_empty() {
                if !self.data.is_empty() || self.event.is_some() {
                    events.push(SseEvent {
                        event: self.event.take().unwrap_or_else(|| "message".to_owned()),
                        data: std::mem::take(&mut self.data).join("\n"),
                        id: self.id.take(),
                    });
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
                None => (line.as_str(), ""),
            };
            match field {
                "event" => self.event = Some(value.to_owned()),
                "data" => self.data.push(value.to_owned()),
                "id" => self.id = Some(value.to_owned()),
                _ => {}
            }
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_decoder_reassembles_events_split_anywhere() {
        let text = b": keep-alive\n\nevent: chunk\nid: 0\ndata: a\ndata: b\n\nevent: completed\r\ndata: {}\r\n\r\n";
        for split in 0..text.len() {
            let mut decoder = SseDecoder::default();
            let mut events = decoder.push(&text[..split]);
            events.extend(decoder.push(&text[split..]));
            assert_eq!(
                events,
                vec![
                    SseEvent {
                        event: "chunk".into(),
                        data: "a\nb".into(),
                        id: Some("0".into())
                    },
                    SseEvent {
                        event: "completed".into(),
                        data: "{}".into(),
                        id: None
                    },
                ],
                "split at {split}"
            );
        }
    }

    #[test]
    fn outcomes_name_their_status_and_details() {
        assert_eq!(
            outcome_json(&Outcome::Completed),
            json!({"status": "completed"})
        );
        assert_eq!(
            outcome_json(&Outcome::Cancelled),
            json!({"status": "cancelled"})
        );
        assert_eq!(
            outcome_json(&Outcome::TimedOut(Phase::StreamSlot)),
            json!({"status": "timed_out", "phase": "stream_slot"})
        );
        let failed = outcome_json(&Outcome::Failed(Failure::Upstream("boom".into())));
        assert_eq!(failed["status"], "failed");
        assert_eq!(failed["kind"], "upstream");
        assert_eq!(failed["reason"], "upstream failed: boom");
    }
}
