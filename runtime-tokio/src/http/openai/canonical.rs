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
/// (integral values as integers, so `0`, `0.0` and `1e0`-style spellings agree;
/// other numbers in the shortest form that reads back as the same `f64`).
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
    // serde_json's map is sorted already, unless some crate in the build turns on
    // its `preserve_order` feature (then it keeps the client's order): sort anyway.
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
        match serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}")) {
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

    /// A small deterministic generator (xorshift), so the randomized test below
    /// needs no dependency and replays the same cases every run.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn index(&mut self, n: usize) -> usize {
            let n = u64::try_from(n).expect("a small length");
            usize::try_from(self.below(n)).expect("below a usize")
        }
    }

    /// A random JSON value: objects, arrays, strings, small integers and halves.
    fn random_value(rng: &mut Rng, depth: u32) -> Value {
        match rng.below(if depth == 0 { 4 } else { 6 }) {
            0 => Value::Null,
            1 => Value::Bool(rng.below(2) == 0),
            2 => {
                let n = i64::try_from(rng.below(2001)).unwrap() - 1000;
                if rng.below(2) == 0 {
                    Value::from(n)
                } else {
                    Value::from(n as f64 + 0.5)
                }
            }
            3 => Value::from(format!("s{}\u{e9}\"", rng.below(50))),
            4 => Value::Array(
                (0..rng.below(4))
                    .map(|_| random_value(rng, depth - 1))
                    .collect(),
            ),
            _ => Value::Object(
                (0..rng.below(5))
                    .map(|i| {
                        (
                            format!("k{i}{}", rng.below(3)),
                            random_value(rng, depth - 1),
                        )
                    })
                    .collect(),
            ),
        }
    }

    /// `value` as JSON text with its object keys in a random order, random
    /// whitespace, and each number in a random spelling of the same value.
    fn scrambled(rng: &mut Rng, value: &Value) -> String {
        let space = |rng: &mut Rng| [" ", "", "\n\t", "  "][rng.index(4)].to_owned();
        match value {
            Value::Number(n) => {
                let f = n.as_f64().unwrap();
                if f.fract() == 0.0 {
                    #[allow(clippy::cast_possible_truncation)]
                    let i = f as i64;
                    match rng.below(4) {
                        0 => format!("{i}"),
                        1 => format!("{i}.0"),
                        2 => format!("{i}e0"),
                        _ if i != 0 => format!("{i}0e-1"),
                        _ => "-0.0".to_owned(),
                    }
                } else if rng.below(2) == 0 {
                    format!("{f}")
                } else {
                    format!("{}e-1", f * 10.0)
                }
            }
            Value::Array(items) => {
                let parts: Vec<String> = items.iter().map(|v| scrambled(rng, v)).collect();
                format!(
                    "[{}{}]",
                    parts.join(&format!(",{}", space(rng))),
                    space(rng)
                )
            }
            Value::Object(map) => {
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                for i in (1..entries.len()).rev() {
                    entries.swap(i, rng.index(i + 1));
                }
                let parts: Vec<String> = entries
                    .into_iter()
                    .map(|(k, v)| {
                        let key = serde_json::to_string(k).unwrap();
                        format!(
                            "{}{key}{}:{}{}",
                            space(rng),
                            space(rng),
                            space(rng),
                            scrambled(rng, v)
                        )
                    })
                    .collect();
                format!("{{{}{}}}", parts.join(","), space(rng))
            }
            other => other.to_string(),
        }
    }

    #[test]
    fn randomized_spellings_of_one_body_give_one_key_and_changes_give_another() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for case in 0..500 {
            let mut body = Map::new();
            body.insert("model".into(), Value::from("m"));
            body.insert("temperature".into(), Value::from(0));
            for i in 0..rng.below(5) {
                body.insert(format!("f{i}"), random_value(&mut rng, 3));
            }
            let body = Value::Object(body);
            let expected = key(&body.to_string());
            for _ in 0..4 {
                let text = scrambled(&mut rng, &body);
                assert_eq!(key(&text), expected, "case {case}: {text}");
            }
            // Any change of a value changes the key.
            let mut changed = body.clone();
            changed["model"] = Value::from("m2");
            assert_ne!(key(&changed.to_string()), expected, "case {case}");
            let mut added = body.clone();
            added["extra"] = random_value(&mut rng, 2);
            assert_ne!(key(&added.to_string()), expected, "case {case}");
        }
    }
}
