//! The OpenAI-compatible proxy: `POST /v1/chat/completions` and `GET /v1/models`.

/// The OpenAI routes, merged by [`router`](super::router). Empty until the
/// proxy's handlers land.
pub fn routes() -> axum::Router<super::Gateway> {
    axum::Router::new()
}
