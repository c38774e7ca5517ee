//! The OpenAI-compatible proxy: `POST /v1/chat/completions` and `GET /v1/models`.
