//! Turns a flight's chunks into the one `chat.completion` object a
//! `stream: false` client gets, so that it can share a flight with streaming
//! clients: per choice, the deltas' `content` and `refusal` concatenated, the
//! `role`, the `tool_calls` merged by index (their `arguments` concatenated),
//! `logprobs` lists concatenated, the last `finish_reason`; the response's `id`,
//! `created`, `model`, `system_fingerprint` and `service_tier` from the chunks;
//! `usage` from the usage chunk.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

/// One choice being assembled.
#[derive(Debug, Default)]
struct Choice {
    role: Option<Value>,
    content: Option<String>,
    refusal: Option<String>,
    /// By the tool call's `index`.
    tool_calls: BTreeMap<u64, Map<String, Value>>,
    logprobs: Option<Map<String, Value>>,
    finish_reason: Value,
}

/// Collects chunks, then builds the completion ([`Assembler::finish`]).
#[derive(Debug, Default)]
pub struct Assembler {
    /// `id`, `created`, `model`, `system_fingerprint`, `service_tier`: first seen.
    header: Map<String, Value>,
    choices: BTreeMap<u64, Choice>,
    usage: Option<Value>,
}

const HEADER_FIELDS: [&str; 5] = [
    "id",
    "created",
    "model",
    "system_fingerprint",
    "service_tier",
];

impl Assembler {
    /// Adds one `chat.completion.chunk`. A chunk that is not valid JSON or not an
    /// object is ignored (the proxy only logs objects).
    pub fn push(&mut self, payload: &str) {
        let Ok(Value::Object(chunk)) = serde_json::from_str::<Value>(payload) else {
            return;
        };
        for field in HEADER_FIELDS {
            if let Some(v) = chunk.get(field).filter(|v| !v.is_null()) {
                self.header.entry(field).or_insert_with(|| v.clone());
            }
        }
        if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(usage.clone());
        }
        let Some(choices) = chunk.get("choices").and_then(Value::as_array) else {
            return;
        };
        for choice in choices {
            let index = choice.get("index").and_then(Value::as_u64).unwrap_or(0);
            let slot = self.choices.entry(index).or_default();
            if let Some(delta) = choice.get("delta").and_then(Value::as_object) {
                slot.add_delta(delta);
            }
            if let Some(logprobs) = choice.get("logprobs").and_then(Value::as_object) {
                let merged = slot.logprobs.get_or_insert_with(Map::new);
                for (field, value) in logprobs {
                    append_list(merged, field, value);
                }
            }
            if let Some(reason) = choice.get("finish_reason").filter(|r| !r.is_null()) {
                slot.finish_reason = reason.clone();
            }
        }
    }

    /// The `chat.completion` object.
    #[must_use]
    pub fn finish(self) -> Value {
        let mut out = Map::new();
        out.insert(
            "id".into(),
            self.header.get("id").cloned().unwrap_or(Value::Null),
        );
        out.insert("object".into(), Value::from("chat.completion"));
        for field in ["created", "model"] {
            out.insert(
                field.into(),
                self.header.get(field).cloned().unwrap_or(Value::Null),
            );
        }
        let choices: Vec<Value> = self
            .choices
            .into_iter()
            .map(|(index, choice)| choice.into_value(index))
            .collect();
        out.insert("choices".into(), Value::Array(choices));
        out.insert("usage".into(), self.usage.unwrap_or(Value::Null));
        for field in ["system_fingerprint", "service_tier"] {
            if let Some(v) = self.header.get(field) {
                out.insert(field.into(), v.clone());
            }
        }
        Value::Object(out)
    }
}

impl Choice {
    fn add_delta(&mut self, delta: &Map<String, Value>) {
        if let Some(role) = delta.get("role").filter(|r| !r.is_null()) {
            self.role = Some(role.clone());
        }
        if let Some(text) = delta.get("content").and_then(Value::as_str) {
            self.content.get_or_insert_with(String::new).push_str(text);
        }
        if let Some(text) = delta.get("refusal").and_then(Value::as_str) {
            self.refusal.get_or_insert_with(String::new).push_str(text);
        }
        for call in delta
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(call) = call.as_object() else {
                continue;
            };
            let index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
            let slot = self.tool_calls.entry(index).or_default();
            for (field, value) in call {
                match (field.as_str(), value) {
                    ("index", _) | (_, Value::Null) => {}
                    ("function", Value::Object(function)) => {
                        let merged = slot.entry("function").or_insert_with(|| json!({}));
                        if let Some(merged) = merged.as_object_mut() {
                            for (name, part) in function {
                                append_text(merged, name, part);
                            }
                        }
                    }
                    _ => {
                        slot.insert(field.clone(), value.clone());
                    }
                }
            }
        }
    }

    fn into_value(self, index: u64) -> Value {
        let mut message = Map::new();
        message.insert(
            "role".into(),
            self.role.unwrap_or_else(|| Value::from("assistant")),
        );
        message.insert(
            "content".into(),
            self.content.map_or(Value::Null, Value::from),
        );
        message.insert(
            "refusal".into(),
            self.refusal.map_or(Value::Null, Value::from),
        );
        if !self.tool_calls.is_empty() {
            let calls: Vec<Value> = self.tool_calls.into_values().map(Value::Object).collect();
            message.insert("tool_calls".into(), Value::Array(calls));
        }
        json!({
            "index": index,
            "message": message,
            "logprobs": self.logprobs.map_or(Value::Null, Value::Object),
            "finish_reason": self.finish_reason,
        })
    }
}

/// Concatenates strings (a streamed function name or arguments); keeps the
/// first value of anything else.
fn append_text(into: &mut Map<String, Value>, field: &str, part: &Value) {
    match (into.get_mut(field), part) {
        (Some(Value::String(s)), Value::String(more)) => s.push_str(more),
        (None, _) => {
            into.insert(field.to_owned(), part.clone());
        }
        _ => {}
    }
}

/// Concatenates lists (streamed `logprobs.content`); keeps the last value of
/// anything else.
fn append_list(into: &mut Map<String, Value>, field: &str, part: &Value) {
    match (into.get_mut(field), part) {
        (Some(Value::Array(list)), Value::Array(more)) => list.extend(more.iter().cloned()),
        _ => {
            into.insert(field.to_owned(), part.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_is_concatenated_with_finish_reason_and_usage() {
        let mut a = Assembler::default();
        for chunk in [
            r#"{"id":"c1","object":"chat.completion.chunk","created":7,"model":"m","system_fingerprint":"fp","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}],"usage":null}"#,
            r#"{"id":"c1","object":"chat.completion.chunk","created":7,"model":"m","choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}"#,
            r#"{"id":"c1","object":"chat.completion.chunk","created":7,"model":"m","choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":null}]}"#,
            r#"{"id":"c1","object":"chat.completion.chunk","created":7,"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
            r#"{"id":"c1","object":"chat.completion.chunk","created":7,"model":"m","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#,
        ] {
            a.push(chunk);
        }
        let done = a.finish();
        assert_eq!(done["object"], "chat.completion");
        assert_eq!(done["id"], "c1");
        assert_eq!(done["created"], 7);
        assert_eq!(done["system_fingerprint"], "fp");
        assert_eq!(done["choices"][0]["message"]["role"], "assistant");
        assert_eq!(done["choices"][0]["message"]["content"], "Hello");
        assert_eq!(done["choices"][0]["finish_reason"], "stop");
        assert_eq!(done["usage"]["total_tokens"], 5);
    }

    #[test]
    fn tool_calls_merge_by_index_and_choices_stay_apart() {
        let mut a = Assembler::default();
        for chunk in [
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","tool_calls":[{"index":0,"id":"t1","type":"function","function":{"name":"get","arguments":""}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"a\":"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"1}"}}]}},{"index":1,"delta":{"content":"x"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
            "not json",
        ] {
            a.push(chunk);
        }
        let done = a.finish();
        let call = &done["choices"][0]["message"]["tool_calls"][0];
        assert_eq!(call["id"], "t1");
        assert_eq!(call["function"]["name"], "get");
        assert_eq!(call["function"]["arguments"], "{\"a\":1}");
        assert_eq!(done["choices"][0]["message"]["content"], Value::Null);
        assert_eq!(done["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(done["choices"][1]["message"]["content"], "x");
        assert_eq!(done["usage"], Value::Null);
    }
}
