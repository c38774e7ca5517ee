//! The flightdeck gateway (feature `http`): the seeds' HTTP/SSE API and an
//! OpenAI-compatible coalescing proxy, built on [`Manager`] so that every decision
//! stays in the core.
//!
//! An embedder builds a [`Gateway`] from a [`GatewayConfig`] and mounts
//! [`router`] in its own axum app, or calls [`serve`]. The `flightdeck` binary
//! does exactly that with a configuration from its flags.
//!
//! ```
//! use flightdeck_tokio::http::{router, Gateway, GatewayConfig};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let gateway = Gateway::new(GatewayConfig::default())?;
//! let app = axum::Router::new().nest("/flightdeck", router(gateway.clone()));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let address = listener.local_addr()?;
//! let server = tokio::spawn(async move { axum::serve(listener, app).await });
//!
//! let health = reqwest::get(format!("http://{address}/flightdeck/healthz")).await?;
//! assert_eq!(health.text().await?, r#"{"status":"ok"}"#);
//!
//! gateway.shutdown().await;
//! server.abort();
//! # Ok(())
//! # }
//! ```
//!
//! # The shared state and the `Job` contract (for every API on the gateway)
//!
//! - **One manager for the whole service.** [`Gateway`] (the axum state, cheap to
//!   clone) holds ONE [`Manager<Job>`](Manager), so every [`Config`](crate::Config) limit (queue,
//!   preparations, streams, response size, deadlines) applies to the seeds' API and
//!   the OpenAI proxy together. Get it with [`Gateway::manager`].
//! - **A job says how to open its upstream.** [`Job::Seeds`] is a seeds'-API request
//!   (the gateway opens it: simulated model or the seeds upstream URL).
//!   [`Job::Chat`] carries its own opener ([`ChatJob::open`], a boxed `FnOnce`
//!   given the [`UpstreamContext`]: the shared `reqwest::Client` and the config),
//!   so the gateway's single preparer/upstream dispatch without knowing the OpenAI
//!   wire format. [`ChatJob::cacheable`] becomes the preparation's cacheability.
//!   An opener's error strings become [`Failure::Upstream`](crate::Failure::Upstream)
//!   unchanged (no prefix is added), before or after the first chunk.
//! - **Keys never collide across APIs.** Build keys with [`KeySpace::key`]:
//!   `KeySpace::Seeds` and `KeySpace::Chat` prefix different namespaces.
//! - **Routes.** [`router`] merges the seeds' routes ([`seeds::routes`]) and
//!   `openai::routes()` (a `Router<Gateway>` the OpenAI module provides).
//! - **Configuration.** [`GatewayConfig::upstream`] is the OpenAI-compatible
//!   upstream (base URL, API key; `None` = the built-in [`simulated`] model), and
//!   [`GatewayConfig::openai`] the coalescing rule and shared tenant namespace.
//! - **Shutdown.** While [`Gateway::is_admitting`] is false, answer `503`; the
//!   manager's shutdown ends every open stream with a terminal item.
//! - **Metrics.** Wrap a result stream in [`Gateway::observe`] to record time to
//!   first chunk and stream duration for an API label.

pub mod config;
pub mod demo;
pub mod metrics;
pub mod openai;
pub mod seeds;
pub mod simulated;
pub mod sse;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::serve::ListenerExt;
use axum::Router;
use futures_lite::Stream;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

use crate::{Bytes, ConfigError, Key, Manager, Preparation, ResultStream};

pub use config::{CoalesceRule, GatewayConfig, OpenAiPolicy, UpstreamConfig};
pub use metrics::{GatewayMetrics, Observed};
pub use simulated::SimulatedModel;

/// A boxed, sendable future (what an opener returns).
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// An upstream stream of chunks; an error ends the flight with
/// [`Failure::Upstream`](crate::Failure::Upstream) carrying the string as is.
pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<Bytes, String>> + Send + 'static>>;

/// One unit of upstream work on the gateway's single manager.
pub enum Job {
    /// A seeds'-API request.
    Seeds(SeedsJob),
    /// Work that opens its own upstream stream (the OpenAI proxy's chat completions).
    Chat(ChatJob),
}

impl core::fmt::Debug for Job {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Job::Seeds(job) => f.debug_tuple("Seeds").field(job).finish(),
            Job::Chat(job) => f.debug_tuple("Chat").field(job).finish(),
        }
    }
}

/// A seeds'-API request: its payload, for the simulated model or the seeds upstream.
#[derive(Clone, Debug)]
pub struct SeedsJob {
    /// The request's payload, as submitted.
    pub payload: serde_json::Value,
    /// A short hash of the request's key, for logs.
    pub key_hash: String,
}

/// How a [`ChatJob`] opens its upstream stream.
pub type Opener = Box<dyn FnOnce(UpstreamContext) -> BoxFuture<Result<ChunkStream, String>> + Send>;

/// A job that opens its own upstream stream.
pub struct ChatJob {
    /// Whether the flight's result may be stored in the cache.
    pub cacheable: bool,
    /// A short label for logs and spans (e.g. a hash of the key).
    pub label: String,
    /// Opens the upstream stream. Called at most once, when the flight gets a
    /// stream slot; dropped unopened if the flight ends before.
    pub open: Opener,
}

impl core::fmt::Debug for ChatJob {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ChatJob")
            .field("cacheable", &self.cacheable)
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

/// What an opener gets: the shared HTTP client and the gateway's configuration.
/// It holds no manager, so a job never keeps its gateway alive.
#[derive(Clone, Debug)]
pub struct UpstreamContext {
    /// The gateway's HTTP client (one connection pool for the whole service).
    pub client: reqwest::Client,
    /// The gateway's configuration.
    pub config: Arc<GatewayConfig>,
}

/// The namespaces of coalescing keys: keys from different APIs never collide.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeySpace {
    /// The seeds' API (`POST /v1/requests`).
    Seeds,
    /// The OpenAI proxy (`POST /v1/chat/completions`).
    Chat,
}

impl KeySpace {
    /// The manager key for `bytes` in this namespace.
    #[must_use]
    pub fn key(self, bytes: &[u8]) -> Key {
        let prefix: &[u8] = match self {
            KeySpace::Seeds => b"seeds\n",
            KeySpace::Chat => b"chat\n",
        };
        let mut key = Vec::with_capacity(prefix.len() + bytes.len());
        key.extend_from_slice(prefix);
        key.extend_from_slice(bytes);
        Key::from(key)
    }
}

/// The first 16 hex digits of the SHA-256 of `bytes`: a key's name in logs and
/// spans that never reveals the key itself.
#[must_use]
pub fn short_hash(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Why a gateway could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// The manager's configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// The gateway: one manager, one HTTP client, the configuration and the metrics.
/// It is the axum state of every route; clones share one gateway.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    manager: Manager<Job>,
    context: UpstreamContext,
    metrics: GatewayMetrics,
    admitting: AtomicBool,
}

impl core::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Gateway")
            .field("manager", &self.inner.manager)
            .field("admitting", &self.is_admitting())
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// A gateway on the tokio runtime of the calling context.
    ///
    /// # Errors
    /// An invalid manager configuration, or an HTTP client that cannot be built.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn new(config: GatewayConfig) -> Result<Self, GatewayError> {
        let client = reqwest::Client::builder()
            .connect_timeout(config.upstream_connect_timeout)
            .build()?;
        let config = Arc::new(config);
        let context = UpstreamContext {
            client,
            config: Arc::clone(&config),
        };
        let metrics = GatewayMetrics::new();
        let simulated_preparation = config.seeds_upstream.is_none();
        let preparer = move |job: Job| async move {
            if let (Job::Seeds(seeds), true) = (&job, simulated_preparation) {
                // The simulated model's preparation (e.g. tokenising) takes what
                // the payload asks for, if anything.
                let delay = simulated::preparation_delay(&seeds.payload);
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
            }
            Ok::<_, core::convert::Infallible>(match &job {
                Job::Seeds(_) => Preparation::cacheable(job),
                Job::Chat(chat) if chat.cacheable => Preparation::cacheable(job),
                Job::Chat(_) => Preparation::uncacheable(job),
            })
        };
        let upstream_context = context.clone();
        let upstream_metrics = metrics.clone();
        let upstream = move |job: Job| {
            let context = upstream_context.clone();
            let metrics = upstream_metrics.clone();
            async move {
                let (kind, label) = match &job {
                    Job::Seeds(seeds) => ("seeds", seeds.key_hash.clone()),
                    Job::Chat(chat) => ("chat", chat.label.clone()),
                };
                let span = tracing::info_span!("flight", kind, key_hash = %label);
                let opened = match job {
                    Job::Seeds(seeds) => seeds::open_upstream(&context, seeds).await,
                    Job::Chat(chat) => (chat.open)(context).await,
                };
                match opened {
                    Ok(stream) => Ok(metrics.watch_upstream(kind, span, stream)),
                    Err(e) => {
                        span.in_scope(|| tracing::warn!(error = %e, "upstream did not open"));
                        Err(e)
                    }
                }
            }
        };
        let manager = Manager::new(config.manager.clone(), preparer, upstream)?;
        Ok(Gateway {
            inner: Arc::new(Inner {
                manager,
                context,
                metrics,
                admitting: AtomicBool::new(true),
            }),
        })
    }

    /// The one manager behind every API of this gateway.
    #[must_use]
    pub fn manager(&self) -> &Manager<Job> {
        &self.inner.manager
    }

    /// The gateway's configuration.
    #[must_use]
    pub fn config(&self) -> &GatewayConfig {
        &self.inner.context.config
    }

    /// The shared HTTP client.
    #[must_use]
    pub fn client(&self) -> &reqwest::Client {
        &self.inner.context.client
    }

    /// What openers get: the HTTP client and the configuration.
    #[must_use]
    pub fn upstream_context(&self) -> UpstreamContext {
        self.inner.context.clone()
    }

    /// The gateway's Prometheus metrics.
    #[must_use]
    pub fn metrics(&self) -> &GatewayMetrics {
        &self.inner.metrics
    }

    /// Whether new requests are admitted (false once shutdown began: answer `503`).
    #[must_use]
    pub fn is_admitting(&self) -> bool {
        self.inner.admitting.load(Ordering::SeqCst)
    }

    /// Wraps a result stream so that its time to first chunk and its duration,
    /// counted from `started`, are recorded under the label `api`.
    pub fn observe(&self, api: &'static str, started: Instant, stream: ResultStream) -> Observed {
        self.inner.metrics.observe(api, started, stream)
    }

    /// The Prometheus text of this gateway's metrics (gauges and totals read from
    /// the manager now).
    #[must_use]
    pub fn render_metrics(&self) -> String {
        self.inner.metrics.render(&self.inner.manager.stats())
    }

    /// Shuts down gracefully: stops admitting, then shuts the manager down (every
    /// open stream reads a terminal item, all work is aborted) and waits for every
    /// task it spawned. Idempotent.
    pub async fn shutdown(&self) {
        self.inner.admitting.store(false, Ordering::SeqCst);
        tracing::info!("shutting down: admission stopped, ending open streams");
        self.inner.manager.shutdown().await;
    }
}

/// The gateway's routes: the seeds' API, the OpenAI proxy, `/healthz` and
/// `/metrics`, with the configured body size limit. Merge it into an axum app or
/// serve it with [`serve`].
pub fn router(gateway: Gateway) -> Router {
    let body_limit = gateway.config().body_limit;
    Router::new()
        .merge(seeds::routes())
        .merge(openai::routes())
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .with_state(gateway)
}

/// Serves `gateway` on `listener` until `signal` completes, then shuts down
/// gracefully: admission stops, every open stream ends with a terminal event, the
/// manager shuts down, and the server finishes its connections.
///
/// # Errors
/// An I/O error of the server.
pub async fn serve(
    listener: TcpListener,
    gateway: Gateway,
    signal: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(gateway.clone());
    // Streams are many small writes: send each event at once (no Nagle delay).
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            signal.await;
            gateway.shutdown().await;
        })
        .await;
    tracing::info!("server stopped");
    result
}

/// A future that completes on SIGINT (Ctrl-C) or, on Unix, SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}
