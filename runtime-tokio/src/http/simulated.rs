//! The built-in simulated model: answers where no upstream is configured, so the
//! service works on a fresh machine with no backend.
//!
//! An answer is deterministic: its words are drawn from a small vocabulary by a
//! generator seeded with the SHA-256 of the prompt, so the same prompt always gets
//! the same answer (which is what makes coalescing and caching visible), and each
//! token comes after a delay, like a model that streams.
//!
//! A seeds'-API payload may shape its own answer (for demos and tests): a JSON
//! object `{"prompt": "...", "tokens": 50, "delay_ms": 10, "fail_after": 3,
//! "prepare_ms": 100}` (every field optional) asks for that many tokens, that
//! delay, an upstream failure after that many tokens, and a preparation that
//! takes that long. Any other payload is the prompt itself.

use std::time::Duration;

use sha2::{Digest, Sha256};

use super::ChunkStream;
use crate::Bytes;

/// Most tokens one simulated answer may have.
pub const MAX_TOKENS: usize = 1_000_000;
/// Longest delay a payload may ask for between tokens.
pub const MAX_TOKEN_DELAY: Duration = Duration::from_secs(60);

const VOCABULARY: [&str; 32] = [
    "the", "flight", "streams", "every", "token", "once", "and", "readers", "pull", "at", "their",
    "own", "pace", "while", "slots", "are", "freed", "in", "the", "same", "step", "so", "nothing",
    "leaks", "a", "late", "joiner", "replays", "from", "zero", "cached", "answers",
];

/// How long the simulated preparation of a seeds'-API payload takes: its
/// `prepare_ms` field (at most [`MAX_TOKEN_DELAY`]), or no time.
#[must_use]
pub fn preparation_delay(payload: &serde_json::Value) -> Duration {
    payload
        .get("prepare_ms")
        .and_then(serde_json::Value::as_u64)
        .map_or(Duration::ZERO, Duration::from_millis)
        .min(MAX_TOKEN_DELAY)
}

/// The simulated model's defaults: tokens per answer and delay before each token.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SimulatedModel {
    /// Tokens per answer, unless the payload asks otherwise.
    pub tokens: usize,
    /// Delay before each token, unless the payload asks otherwise.
    pub token_delay: Duration,
}

impl Default for SimulatedModel {
    fn default() -> Self {
        SimulatedModel {
            tokens: 24,
            token_delay: Duration::from_millis(25),
        }
    }
}

/// One simulated answer to produce.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SimulatedAnswer {
    /// The prompt; it seeds the words.
    pub prompt: String,
    /// How many tokens.
    pub tokens: usize,
    /// Delay before each token.
    pub token_delay: Duration,
    /// Fail (as an upstream error) after this many tokens.
    pub fail_after: Option<usize>,
}

impl SimulatedModel {
    /// The answer a seeds'-API payload asks for (see the module docs).
    #[must_use]
    pub fn answer_for(&self, payload: &serde_json::Value) -> SimulatedAnswer {
        let mut answer = SimulatedAnswer {
            prompt: match payload {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            },
            tokens: self.tokens,
            token_delay: self.token_delay,
            fail_after: None,
        };
        if let serde_json::Value::Object(fields) = payload {
            let number = |name: &str| fields.get(name).and_then(serde_json::Value::as_u64);
            if let Some(prompt) = fields.get("prompt").and_then(serde_json::Value::as_str) {
                prompt.clone_into(&mut answer.prompt);
            }
            if let Some(tokens) = number("tokens") {
                answer.tokens = usize::try_from(tokens).unwrap_or(MAX_TOKENS);
            }
            if let Some(ms) = number("delay_ms") {
                answer.token_delay = Duration::from_millis(ms);
            }
            answer.fail_after =
                number("fail_after").map(|n| usize::try_from(n).unwrap_or(MAX_TOKENS));
        }
        answer.tokens = answer.tokens.min(MAX_TOKENS);
        answer.token_delay = answer.token_delay.min(MAX_TOKEN_DELAY);
        answer
    }

    /// The answer to `prompt` with the model's defaults.
    #[must_use]
    pub fn answer(&self, prompt: &str) -> SimulatedAnswer {
        SimulatedAnswer {
            prompt: prompt.to_owned(),
            tokens: self.tokens,
            token_delay: self.token_delay,
            fail_after: None,
        }
    }
}

impl SimulatedAnswer {
    /// The answer's tokens: deterministic in the prompt and the count. Every
    /// token but the first starts with a space.
    #[must_use]
    pub fn tokens(&self) -> Vec<String> {
        let digest = Sha256::digest(self.prompt.as_bytes());
        let mut seed_bytes = [0u8; 8];
        seed_bytes.copy_from_slice(&digest[..8]);
        let mut state = u64::from_le_bytes(seed_bytes);
        (0..self.tokens)
            .map(|i| {
                let word = VOCABULARY
                    [usize::from(splitmix64(&mut state).to_le_bytes()[0]) % VOCABULARY.len()];
                if i == 0 {
                    word.to_owned()
                } else {
                    format!(" {word}")
                }
            })
            .collect()
    }

    /// The answer as an upstream stream: each token after `token_delay`.
    #[must_use]
    pub fn stream(&self) -> ChunkStream {
        let tokens = self.tokens().into_iter().enumerate();
        let delay = self.token_delay;
        let fail_after = self.fail_after;
        Box::pin(futures_lite::stream::unfold(
            Some(tokens),
            move |tokens| async move {
                let mut tokens = tokens?;
                if delay.is_zero() {
                    // As fast as possible, but let others run between tokens.
                    tokio::task::yield_now().await;
                } else {
                    tokio::time::sleep(delay).await;
                }
                match tokens.next() {
                    Some((i, _)) if Some(i) == fail_after => {
                        Some((Err(format!("simulated failure after {i} tokens")), None))
                    }
                    Some((_, token)) => Some((Ok(Bytes::from(token)), Some(tokens))),
                    None => None,
                }
            },
        ))
    }
}

/// One step of the SplitMix64 generator (a fixed, documented mixing function:
/// the answers must not change with a dependency's version).
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::StreamExt;

    #[test]
    fn answers_are_deterministic_per_prompt() {
        let model = SimulatedModel::default();
        let a = model.answer("why is the sky blue").tokens();
        assert_eq!(a, model.answer("why is the sky blue").tokens());
        assert_ne!(a, model.answer("why is the sea blue").tokens());
        assert_eq!(a.len(), model.tokens);
        assert!(!a[0].starts_with(' ') && a[1].starts_with(' '));
    }

    #[test]
    fn a_payload_shapes_its_answer_within_bounds() {
        let model = SimulatedModel::default();
        let payload =
            serde_json::json!({"prompt": "p", "tokens": 3, "delay_ms": 1, "fail_after": 2});
        let answer = model.answer_for(&payload);
        assert_eq!(answer.prompt, "p");
        assert_eq!((answer.tokens, answer.fail_after), (3, Some(2)));
        assert_eq!(answer.token_delay, Duration::from_millis(1));
        let huge = model.answer_for(&serde_json::json!({"tokens": u64::MAX, "delay_ms": u64::MAX}));
        assert_eq!(
            (huge.tokens, huge.token_delay),
            (MAX_TOKENS, MAX_TOKEN_DELAY)
        );
        assert_eq!(model.answer_for(&serde_json::json!("hi")).prompt, "hi");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_stream_yields_the_tokens_then_fails_where_asked() {
        let model = SimulatedModel::default();
        let answer =
            model.answer_for(&serde_json::json!({"prompt": "p", "tokens": 4, "delay_ms": 1}));
        let streamed: Vec<_> = answer.stream().collect().await;
        let expected: Vec<_> = answer
            .tokens()
            .into_iter()
            .map(|t| Ok(Bytes::from(t)))
            .collect();
        assert_eq!(streamed, expected);
        let failing = model.answer_for(
            &serde_json::json!({"prompt": "p", "tokens": 4, "delay_ms": 1, "fail_after": 2}),
        );
        let streamed: Vec<_> = failing.stream().collect().await;
        assert_eq!(streamed.len(), 3);
        assert!(streamed[2].is_err());
    }
}
