//! The coalescing key of a chat completion, and the rule that decides whether a
//! request may share an answer at all.
//!
//! Two requests share one upstream stream (and a cached answer) only if the
//! upstream would be asked exactly the same thing, by the same tenant, and the
//! answer is reproducible:
//!
//! - **Same question.** The key covers the whole body except the fields that only
//!   shape delivery (`stream`, `stream_options`), unknown fields included: a field
//!   flightdeck does not know may well change the answer. The body is written in a
//!   canonical form first (object keys sorted, numbers normalised so that `0`,
//!   `0.0`, `-0.0` and `0e0` agree, whitespace dropped), so that two clients who
//!   serialise the same request differently still meet.
//! - **Same upstream.** The upstream's base URL is part of the key.
//! - **Same tenant.** A tenant namespace is part of the key: by default a hash of
//!   the caller's `Authorization` header (the credential itself is never stored),
//!   or one shared namespace the operator configures.
//! - **Reproducible answer.** By default only requests that are deterministic by
//!   the API's contract coalesce: an explicit `temperature` of 0 and one choice
//!   (`n` absent or 1). A `seed` alone does not count: OpenAI documents it as best
//!   effort. Sharing a sampled answer would silently give every caller the same
//!   sample, which they did not ask for. The operator can widen the rule
//!   ([`CoalesceRule`]) and a client can opt out per request (header
//!   [`OPT_OUT_HEADER`]). A request that does not coalesce gets a unique key and
//!   its answer is never cached.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Map, Number, Value};
use sha2::{Digest, Sha256};

use crate::http::{CoalesceRule, KeySpace, OpenAiPolicy};
use crate::Key;

/// The request header with which a client opts out of coalescing and caching for
/// one request: `x-flightdeck-coalesce: off` (also `false`, `0`, `no`).
pub const OPT_OUT_HEADER: &str = "x-flightdeck-coalesce";

/// The body written canonically: object keys sorted by their UTF-8 bytes, no
/// whitespace, strings escaped as `serde_json` escapes them, numbers normalised
/// (see [`write_number`]).
#[must_use]
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, value);
    out
}

fn write_value(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => write_number(out, n),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => write_object(out, map, &[]),
    }
}

/// Writes an object with sorted keys, leaving out the keys in `skip`.
fn write_object(out: &mut String, map: &Map<String, Value>, skip: &[&str]) {
    let mut entries: Vec<(&String, &Value)> = map
        .iter()
        .filter(|(k, _)| !skip.contains(&k.as_str()))
        .collect();
    entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    out.push('{');
    for (i, (k, v)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_string(out, k);
        out.push(':');
        write_value(out, v);
    }
    out.push('}');
}

fn write_string(out: &mut String, s: &str) {
    // Serialising a `str` cannot fail; the fallback keeps this panic-free anyway.
    match serde_json::to_string(s) {
        Ok(escaped) => out.push_str(&escaped),
        Err(_) => out.push_str("\"\""),
    }
}

/// Numbers that denote the same value are written the same: an integral value
/// that fits a 64-bit integer is written as that integer (`0.0`, `-0.0`, `0e0`
/// and `0` all give `0`; `1e2` and `100` give `100`), any other finite value in
/// the shortest form that reads back as the same `f64`.
fn write_number(out: &mut String, n: &Number) {
    if let Some(i) = n.as_i64() {
        let _ = write!(out, "{i}");
    } else if let Some(u) = n.as_u64() {
        let _ = write!(out, "{u}");
    } else if let Some(f) = n.as_f64() {
        // 2^63 and 2^64 are exact as f64; inside these bounds the casts are exact.
        const TWO_63: f64 = 9_223_372_036_854_775_808.0;
        const TWO_64: f64 = 18_446_744_073_709_551_616.0;
        if f.fract() == 0.0 && (-TWO_63..TWO_63).contains(&f) {
            #[allow(clippy::cast_possible_truncation)]
            let i = f as i64;
            let _ = write!(out, "{i}");
        } else if f.fract() == 0.0 && (0.0..TWO_64).contains(&f) {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let u = f as u64;
            let _ = write!(out, "{u}");
        } else {
            // serde_json never holds a non-finite number; its Display is the
            // shortest round-trip form.
            let _ = write!(
                out,
                "{}",
                Number::from_f64(f).unwrap_or_else(|| Number::from(0))
            );
        }
    }
}

/// The tenant namespace of a caller: the operator's shared namespace if one is
/// configured, else a SHA-256 of the caller's `Authorization` header value (the
/// credential is hashed at once and never kept), else `anonymous`.
#[must_use]
pub fn tenant_namespace(policy: &OpenAiPolicy, authorization: Option<&[u8]>) -> String {
    if let Some(shared) = &policy.shared_namespace {
        return format!("shared:{shared}");
    }
    match authorization {
        Some(credential) => format!("credential:{}", hex(&Sha256::digest(credential))),
        None => "anonymous".to_owned(),
    }
}

/// Whether `body` may coalesce under `rule`. Every rule requires one choice: `n`
/// absent, `null` or 1.
#[must_use]
pub fn may_coalesce(rule: CoalesceRule, body: &Map<String, Value>) -> bool {
    let one_choice = match body.get("n") {
        None | Some(Value::Null) => true,
        Some(Value::Number(n)) => n.as_f64() == Some(1.0),
        Some(_) => false,
    };
    let zero_temperature =
        matches!(body.get("temperature"), Some(Value::Number(t)) if t.as_f64() == Some(0.0));
    let seeded = matches!(body.get("seed"), Some(Value::Number(_)));
    one_choice
        && match rule {
            CoalesceRule::Deterministic => zero_temperature,
            CoalesceRule::Seeded => zero_temperature || seeded,
            CoalesceRule::All => true,
            CoalesceRule::Never => false,
        }
}

/// Whether the value of the opt-out header turns coalescing off.
#[must_use]
pub fn opts_out(header_value: &[u8]) -> bool {
    let value = String::from_utf8_lossy(header_value);
    let value = value.trim();
    ["off", "false", "0", "no"]
        .iter()
        .any(|off| value.eq_ignore_ascii_case(off))
}

/// The coalescing key of a request that may coalesce: a SHA-256 over the upstream
/// base URL, the tenant namespace and the canonical body without `stream` and
/// `stream_options`, each part length-prefixed so that no two different triples
/// give the same input.
#[must_use]
pub fn shared_key(upstream: &str, namespace: &str, body: &Map<String, Value>) -> Key {
    let mut canonical = String::new();
    write_object(&mut canonical, body, &["stream", "stream_options"]);
    let mut hasher = Sha256::new();
    hasher.update(b"flightdeck/openai/chat/v1");
    for part in [upstream, namespace, canonical.as_str()] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    KeySpace::Chat.key(hex(&hasher.finalize()).as_bytes())
}

/// A key no other request has: for requests that must not coalesce. It cannot
/// collide with a [`shared_key`] (different prefix).
#[must_use]
pub fn unique_key() -> Key {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    KeySpace::Chat.key(format!("unique:{}:{n}", std::process::id()).as_bytes())
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(text: &str) -> Map<String, Value> {
        match serde_json::from_str(text).expect("valid JSON") {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    fn key(text: &str) -> Key {
        shared_key("http://up", "tenant", &object(text))
    }

    #[test]
    fn field_order_and_whitespace_do_not_matter() {
        let a = key(r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"hi"}]}"#);
        let b = key(
            "{ \"messages\" : [ { \"content\":\"hi\", \"role\":\"user\" } ],\n\t\"temperature\":0, \"model\":\"m\" }",
        );
        assert_eq!(a, b);
    }

    #[test]
    fn equal_numbers_agree() {
        let base = key(r#"{"model":"m","temperature":0,"max_tokens":100}"#);
        for other in [
            r#"{"model":"m","temperature":0.0,"max_tokens":100}"#,
            r#"{"model":"m","temperature":-0.0,"max_tokens":1e2}"#,
            r#"{"model":"m","temperature":0e0,"max_tokens":100.0}"#,
        ] {
            assert_eq!(base, key(other), "{other}");
        }
        assert_eq!(
            canonical_json(
                &serde_json::from_str("[0.5, 1e0, -3, 1.5e300, 10000000000000000000.0]").unwrap()
            ),
            "[0.5,1,-3,1.5e+300,10000000000000000000]"
        );
    }

    #[test]
    fn a_changed_field_changes_the_key() {
        let base =
            key(r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"hi"}]}"#);
        for other in [
            r#"{"model":"m2","temperature":0,"messages":[{"role":"user","content":"hi"}]}"#,
            r#"{"model":"m","temperature":0.5,"messages":[{"role":"user","content":"hi"}]}"#,
            r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"hi!"}]}"#,
            r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"hi"}],"x_unknown":1}"#,
            r#"{"model":"m","temperature":0,"messages":[{"content":"hi","role":"system"}]}"#,
        ] {
            assert_ne!(base, key(other), "{other}");
        }
        let body = object(r#"{"model":"m","temperature":0}"#);
        assert_ne!(
            shared_key("http://up", "a", &body),
            shared_key("http://up", "b", &body)
        );
        assert_ne!(
            shared_key("http://up1", "a", &body),
            shared_key("http://up2", "a", &body)
        );
    }

    #[test]
    fn stream_and_stream_options_are_ignored() {
        let base = key(r#"{"model":"m","temperature":0}"#);
        assert_eq!(base, key(r#"{"model":"m","temperature":0,"stream":true}"#));
        assert_eq!(
            base,
            key(
                r#"{"stream":false,"model":"m","temperature":0,"stream_options":{"include_usage":true}}"#
            )
        );
        // Only at the top level: a nested "stream" is part of the question.
        assert_ne!(
            base,
            key(r#"{"model":"m","temperature":0,"metadata":{"stream":"x"}}"#)
        );
    }

    #[test]
    fn only_deterministic_requests_coalesce_by_default() {
        let rule = CoalesceRule::Deterministic;
        assert!(may_coalesce(rule, &object(r#"{"temperature":0}"#)));
        assert!(may_coalesce(rule, &object(r#"{"temperature":0.0,"n":1}"#)));
        assert!(!may_coalesce(rule, &object(r#"{"temperature":0,"n":2}"#)));
        assert!(
            !may_coalesce(rule, &object(r#"{}"#)),
            "the default temperature samples"
        );
        assert!(!may_coalesce(rule, &object(r#"{"temperature":0.7}"#)));
        assert!(!may_coalesce(rule, &object(r#"{"temperature":"0"}"#)));
        assert!(
            !may_coalesce(rule, &object(r#"{"seed":42}"#)),
            "a seed alone is best effort"
        );
        assert!(may_coalesce(
            CoalesceRule::Seeded,
            &object(r#"{"seed":42}"#)
        ));
        assert!(!may_coalesce(
            CoalesceRule::Seeded,
            &object(r#"{"seed":42,"n":3}"#)
        ));
        assert!(may_coalesce(
            CoalesceRule::All,
            &object(r#"{"temperature":1}"#)
        ));
        assert!(!may_coalesce(
            CoalesceRule::Never,
            &object(r#"{"temperature":0}"#)
        ));
    }

    #[test]
    fn tenants_are_hashed_and_kept_apart() {
        let policy = OpenAiPolicy::default();
        let a = tenant_namespace(&policy, Some(b"Bearer sk-a"));
        let b = tenant_namespace(&policy, Some(b"Bearer sk-b"));
        assert_ne!(a, b);
        assert_eq!(a, tenant_namespace(&policy, Some(b"Bearer sk-a")));
        assert!(!a.contains("sk-a"), "the credential is never kept: {a}");
        let shared = OpenAiPolicy {
            shared_namespace: Some("team".into()),
            ..OpenAiPolicy::default()
        };
        assert_eq!(
            tenant_namespace(&shared, Some(b"Bearer sk-a")),
            tenant_namespace(&shared, Some(b"Bearer sk-b"))
        );
    }

    #[test]
    fn opt_out_values() {
        assert!(opts_out(b"off"));
        assert!(opts_out(b" OFF "));
        assert!(opts_out(b"false"));
        assert!(!opts_out(b"on"));
        assert_ne!(unique_key(), unique_key());
    }
}
