//! The built-in simulated model: answers chat completions in OpenAI's chunk
//! format when no upstream is configured, so the proxy works on a machine with
//! no backend. The answer is deterministic (it quotes the last user message, one
//! word per chunk, after a delay per word), then comes a `stop` chunk and a usage
//! chunk, like an OpenAI-compatible server with `include_usage`.

use core::time::Duration;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::upstream::ChunkStream;
use super::wire::{encode_chunk, ChunkKind};

/// The model name the simulated model reports when the request names none.
pub const MODEL: &str = "flightdeck-simulated";

/// The answer to a request body: its words.
fn answer_words(body: &Value) -> Vec<String> {
    let prompt = body
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|messages| {
            messages
                .iter()
                .rev()
                .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        })
        .and_then(|m| m.get("content"))
        .map(|content| match content {
            Value::String(text) => text.clone(),
            // Content parts: their text parts.
            Value::Array(parts) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(" "),
            _ => String::new(),
        })
        .unwrap_or_default();
    let mut words = vec!["You".to_owned(), " said:".to_owned()];
    words.extend(prompt.split_whitespace().map(|w| format!(" {w}")));
    words
}

/// The simulated answer's chunks, one every `token_delay`.
#[must_use]
pub fn stream(body: &[u8], token_delay: Duration) -> ChunkStream {
    let request: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or(MODEL)
        .to_owned();
    let digest = Sha256::digest(body);
    let id = format!(
        "chatcmpl-sim-{}",
        digest[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let words = answer_words(&request);
    let prompt_tokens = request
        .get("messages")
        .map_or(0, |m| m.to_string().split_whitespace().count());
    let completion_tokens = words.len();

    let chunk = |choices: Value, usage: Value| {
        json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": "flightdeck-simulated",
            "choices": choices,
            "usage": usage,
        })
    };
    let mut chunks = vec![(
        ChunkKind::Choices,
        chunk(
            json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]),
            Value::Null,
        ),
    )];
    chunks.extend(words.iter().map(|w| {
        (
            ChunkKind::Choices,
            chunk(
                json!([{"index": 0, "delta": {"content": w}, "logprobs": null, "finish_reason": null}]),
                Value::Null,
            ),
        )
    }));
    chunks.push((
        ChunkKind::Choices,
        chunk(
            json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": "stop"}]),
            Value::Null,
        ),
    ));
    chunks.push((
        ChunkKind::Usage,
        chunk(
            json!([]),
            json!({
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            }),
        ),
    ));
    let chunks = chunks
        .into_iter()
        .map(|(kind, value)| encode_chunk(kind, &value.to_string()));
    Box::pin(futures_lite::stream::unfold(
        chunks,
        move |mut chunks| async move {
            let next = chunks.next()?;
            tokio::time::sleep(token_delay).await;
            Some((Ok(next), chunks))
        },
    ))
}

#[cfg(test)]
mod tests {
    use futures_lite::StreamExt;

    use super::*;
    use crate::http::openai::assemble::Assembler;
    use crate::http::openai::wire::decode_chunk;

    #[tokio::test]
    async fn answers_in_chunk_format_and_assembles() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":"hello  world"}]}"#;
        let chunks: Vec<_> = stream(body, Duration::ZERO).collect().await;
        let mut assembler = Assembler::default();
        let mut kinds = Vec::new();
        for chunk in &chunks {
            let chunk = chunk.as_ref().expect("no error");
            let (kind, payload) = decode_chunk(chunk).expect("a log chunk");
            kinds.push(kind);
            assembler.push(payload);
        }
        assert_eq!(kinds.last(), Some(&ChunkKind::Usage));
        let done = assembler.finish();
        assert_eq!(done["model"], "m");
        assert_eq!(
            done["choices"][0]["message"]["content"],
            "You said: hello world"
        );
        assert_eq!(done["choices"][0]["finish_reason"], "stop");
        assert_eq!(done["usage"]["completion_tokens"], 4);
    }
}
