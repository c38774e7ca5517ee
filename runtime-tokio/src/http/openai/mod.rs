//! The OpenAI-compatible proxy: `POST /v1/chat/completions` (with `stream` true
//! or false) and `GET /v1/models`, in front of any OpenAI-compatible upstream
//! (or the built-in simulated model when none is configured).
//!
//! A chat completion is one request on the gateway's single manager, so the core
//! decides everything: identical deterministic requests of one tenant share one
//! upstream stream and a cached answer ([`canonical`] says which are identical and
//! which may share); every member reads the whole stream from the first chunk.
//!
//! - [`canonical`]: the coalescing key and the rule that decides who may share.
//! - [`wire`]: OpenAI's error object, the delivery options, the log's chunk format.
//! - [`upstream`]: the streaming upstream call and its SSE decoding.
//! - [`assemble`]: the `chat.completion` a `stream: false` client gets.
//! - [`simulated`]: the built-in model, in OpenAI's chunk format.
//! - [`handlers`]: the routes ([`routes`]).

pub mod assemble;
pub mod canonical;
pub mod handlers;
pub mod simulated;
pub mod upstream;
pub mod wire;

pub use handlers::routes;

use crate::Phase;

/// A deadline's phase as the error message names it.
pub(crate) fn phase_text(phase: Phase) -> &'static str {
    match phase {
        Phase::Queue => "waiting in the queue",
        Phase::Preparation => "preparing",
        Phase::StreamSlot => "waiting for an upstream slot",
        Phase::Stream => "the upstream stream took longer than the stream timeout",
        Phase::Idle => "the upstream stalled: no chunk within the idle timeout",
        Phase::Attach => "waiting for the client",
        _ => "a deadline",
    }
}
