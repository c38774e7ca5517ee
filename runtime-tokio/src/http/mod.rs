//! The flightdeck gateway (feature `http`): the seeds' HTTP/SSE API and an
//! OpenAI-compatible coalescing proxy, built on [`Manager`](crate::Manager) so that
//! every decision stays in the core.

pub mod openai;
