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
//! - **Cluster mode** (feature `cluster`). With `GatewayConfig::cluster` set,
//!   [`Gateway::connect`] connects to Redis and builds the manager with the Redis
//!   coordinator (coalescing and cache across instances, for both APIs), and starts
//!   the control plane (`cluster` module: cancel and status by id from any
//!   instance). [`Gateway::cluster_mode`] says whether it runs clustered, alone,
//!   or alone after a fallback; use [`Gateway::public_id`] for the ids clients see.

#[cfg(feature = "cluster")]
pub mod cluster;
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

use crate::{Bytes, ConfigError, Key, Manager, Preparation, RequestId, ResultStream};

#[cfg(feature = "cluster")]
pub use config::ClusterSettings;
pub use config::{ClusterFallback, CoalesceRule, GatewayConfig, OpenAiPolicy, UpstreamConfig};
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
    /// Cluster mode is configured: [`Gateway::connect`] builds such a gateway
    /// (it connects to Redis first); [`Gateway::new`] builds single instances only.
    #[error("cluster mode is configured: build the gateway with Gateway::connect")]
    NeedsConnect,
    /// Cluster mode could not start: Redis unreachable or failing, or this
    /// instance's id already in use (with [`ClusterFallback::Fail`]).
    #[cfg(feature = "cluster")]
    #[error("cluster mode cannot start with the Redis at {url}: {source} (--cluster-fallback single would run this instance alone)")]
    Cluster {
        /// The Redis URL, its password redacted.
        url: String,
        /// What failed.
        #[source]
        source: crate::cluster::ClusterError,
    },
}

/// Whether and how this gateway shares its work with other instances.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClusterMode {
    /// No cluster configured: this instance works alone, as a single gateway does.
    Off,
    /// Cluster mode on: coalescing, cache, cancel and status across instances.
    Cluster {
        /// This instance's id (request ids carry it).
        instance: String,
    },
    /// Cluster mode was configured but Redis was unreachable at start and the
    /// fallback is [`ClusterFallback::Single`]: this instance runs alone.
    Single {
        /// This instance's configured id.
        instance: String,
        /// Why it runs alone.
        reason: String,
    },
}

impl ClusterMode {
    /// The JSON `/healthz` and `/v1/stats` add under `"cluster"`; `None` when off
    /// (their answers are then exactly a single gateway's).
    #[must_use]
    pub fn to_json(&self) -> Option<serde_json::Value> {
        match self {
            ClusterMode::Off => None,
            ClusterMode::Cluster { instance } => {
                Some(serde_json::json!({"mode": "cluster", "instance": instance}))
            }
            ClusterMode::Single { instance, reason } => {
                Some(serde_json::json!({"mode": "single", "instance": instance, "reason": reason}))
            }
        }
    }
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
    mode: ClusterMode,
    #[cfg(feature = "cluster")]
    control: Option<cluster::ControlPlane>,
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
    /// A single-instance gateway on the tokio runtime of the calling context.
    ///
    /// # Errors
    /// An invalid manager configuration, or an HTTP client that cannot be built;
    /// [`GatewayError::NeedsConnect`] if the configuration asks for cluster mode
    /// (use [`Gateway::connect`]).
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn new(config: GatewayConfig) -> Result<Self, GatewayError> {
        #[cfg(feature = "cluster")]
        if config.cluster.is_some() {
            return Err(GatewayError::NeedsConnect);
        }
        let parts = gateway_parts(config)?;
        let manager = Manager::new(parts.config.manager.clone(), parts.preparer, parts.upstream)?;
        Ok(Self::assemble(
            manager,
            parts.context,
            parts.metrics,
            ClusterMode::Off,
        ))
    }

    /// A gateway on the tokio runtime of the calling context; in cluster mode
    /// (feature `cluster`, `GatewayConfig::cluster` set) it first connects to
    /// Redis and starts answering cancels and statuses from other instances.
    /// Redis unreachable: an error ([`ClusterFallback::Fail`]), or a gateway that
    /// runs alone and says so in [`Gateway::cluster_mode`]
    /// ([`ClusterFallback::Single`]). Without cluster mode, as [`Gateway::new`].
    ///
    /// # Errors
    /// As [`Gateway::new`]; `GatewayError::Cluster` when Redis cannot be used (with
    /// the fallback `Fail`) or the instance id is already in use.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub async fn connect(config: GatewayConfig) -> Result<Self, GatewayError> {
        #[cfg(feature = "cluster")]
        if let Some(settings) = config.cluster.clone() {
            return Self::connect_cluster(config, settings).await;
        }
        Self::new(config)
    }

    #[cfg(feature = "cluster")]
    async fn connect_cluster(
        mut config: GatewayConfig,
        settings: ClusterSettings,
    ) -> Result<Self, GatewayError> {
        use crate::cluster::{Cluster, ClusterConfig, ClusterError};

        let url = settings.redacted_url();
        let instance = settings.redis.instance.clone();
        if !config::is_valid_instance_id(&instance) {
            return Err(GatewayError::Cluster {
                url,
                source: ClusterError::Config(format!(
                    "instance id {instance:?}: use 1 to {} ASCII letters, digits, `-` and `_`",
                    config::MAX_INSTANCE_ID_BYTES
                )),
            });
        }
        // One cache policy: the shared cache keeps what the local one would.
        let redis_config = ClusterConfig {
            cache_ttl: config.manager.cache_ttl,
            cache_capacity: config.manager.cache_capacity,
            ..settings.redis.clone()
        };
        config.cluster = Some(ClusterSettings {
            redis: redis_config.clone(),
            ..settings.clone()
        });
        let parts = gateway_parts(config)?;
        let connected = match Cluster::connect(&settings.redis_url, redis_config).await {
            Ok(cluster) => Ok(cluster),
            Err(e @ ClusterError::Config(_)) => {
                return Err(GatewayError::Cluster { url, source: e })
            }
            Err(e) => Err(e),
        };
        let cluster = match (connected, settings.fallback) {
            (Ok(cluster), _) => cluster,
            (Err(source), ClusterFallback::Fail) => {
                return Err(GatewayError::Cluster { url, source })
            }
            (Err(e), ClusterFallback::Single) => {
                let reason = format!("redis unreachable at start ({url}): {e}");
                tracing::warn!(%instance, %reason, "cluster fallback: this instance runs alone");
                let manager =
                    Manager::new(parts.config.manager.clone(), parts.preparer, parts.upstream)?;
                let mode = ClusterMode::Single { instance, reason };
                return Ok(Self::assemble(manager, parts.context, parts.metrics, mode));
            }
        };
        let manager = clustered_manager(&parts.config, parts.preparer, parts.upstream, &cluster)?;
        let handler = control_handler(manager.clone(), instance.clone());
        let control = cluster::ControlPlane::start(
            &settings.redis_url,
            &instance,
            &settings.redis.prefix,
            settings.control_timeout,
            handler,
        )
        .await;
        let control = match control {
            Ok(control) => control,
            Err(e) => {
                // No request was admitted yet: nothing to end, only tasks to stop.
                manager.shutdown().await;
                let source = match e {
                    cluster::ControlError::Redis(source) => source,
                    other => ClusterError::Protocol(other.to_string()),
                };
                return Err(GatewayError::Cluster { url, source });
            }
        };
        tracing::info!(%instance, redis = %url, "cluster mode on");
        let mut gateway = Self::assemble(
            manager,
            parts.context,
            parts.metrics,
            ClusterMode::Cluster { instance },
        );
        if let Some(inner) = Arc::get_mut(&mut gateway.inner) {
            inner.control = Some(control);
        }
        Ok(gateway)
    }

    fn assemble(
        manager: Manager<Job>,
        context: UpstreamContext,
        metrics: GatewayMetrics,
        mode: ClusterMode,
    ) -> Self {
        Gateway {
            inner: Arc::new(Inner {
                manager,
                context,
                metrics,
                admitting: AtomicBool::new(true),
                mode,
                #[cfg(feature = "cluster")]
                control: None,
            }),
        }
    }

    /// Whether and how this gateway shares its work with other instances.
    #[must_use]
    pub fn cluster_mode(&self) -> &ClusterMode {
        &self.inner.mode
    }

    /// This instance's id in cluster mode (`None` otherwise, also in the
    /// single-instance fallback).
    #[must_use]
    pub fn instance_id(&self) -> Option<&str> {
        match &self.inner.mode {
            ClusterMode::Cluster { instance } => Some(instance),
            _ => None,
        }
    }

    /// The id a client sees for a request of this gateway: in cluster mode
    /// `"<instance>.<number>"`, else the number.
    #[must_use]
    pub fn public_id(&self, id: RequestId) -> serde_json::Value {
        match self.instance_id() {
            Some(instance) => public_id_in(instance, id),
            None => serde_json::Value::from(id.raw()),
        }
    }

    /// [`Gateway::public_id`] as text (for paths and headers).
    #[must_use]
    pub fn public_id_text(&self, id: RequestId) -> String {
        match self.public_id(id) {
            serde_json::Value::String(text) => text,
            other => other.to_string(),
        }
    }

    /// The control plane (cluster mode only).
    #[cfg(feature = "cluster")]
    #[must_use]
    pub fn control_plane(&self) -> Option<&cluster::ControlPlane> {
        self.inner.control.as_ref()
    }

    /// Tasks still running: the manager's, plus the control plane's subscriber in
    /// cluster mode. `0` after [`Gateway::shutdown`] returned.
    #[must_use]
    pub fn tasks_running(&self) -> u64 {
        #[cfg(feature = "cluster")]
        let control = self
            .inner
            .control
            .as_ref()
            .map_or(0, cluster::ControlPlane::tasks_running);
        #[cfg(not(feature = "cluster"))]
        let control = 0;
        self.inner.manager.tasks_running() + control
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
        #[cfg(feature = "cluster")]
        if let Some(control) = &self.inner.control {
            control.stop().await;
        }
    }
}

fn public_id_in(instance: &str, id: RequestId) -> serde_json::Value {
    #[cfg(feature = "cluster")]
    let text = cluster::format_id(instance, id.raw());
    #[cfg(not(feature = "cluster"))]
    let text = format!("{instance}.{}", id.raw());
    serde_json::Value::from(text)
}

/// The manager of a cluster instance: coalescing and cache across instances through
/// the Redis coordinator.
#[cfg(feature = "cluster")]
fn clustered_manager<Pr, U>(
    config: &GatewayConfig,
    preparer: Pr,
    upstream: U,
    cluster: &crate::cluster::Cluster,
) -> Result<Manager<Job>, GatewayError>
where
    Pr: crate::Preparer<Job>,
    U: crate::Upstream<Pr::Output>,
{
    let coordinator = crate::cluster::RedisCoordinator::new(cluster.clone());
    Ok(Manager::new_clustered(
        config.manager.clone(),
        preparer,
        upstream,
        Arc::new(coordinator),
    )?)
}

/// What the control plane runs for a command about one of this instance's
/// requests: the same answers as the local routes.
#[cfg(feature = "cluster")]
fn control_handler(manager: Manager<Job>, instance: String) -> cluster::ControlHandler {
    Arc::new(move |op, id| {
        let public = public_id_in(&instance, id);
        let (status, body) = match op {
            cluster::ControlOp::Cancel => seeds::cancel_answer(&manager, id),
            cluster::ControlOp::Status => seeds::status_answer(&manager, id, &public),
        };
        cluster::ControlAnswer {
            status: status.as_u16(),
            body,
        }
    })
}

/// The gateway's preparer and upstream, built from its configuration.
struct Parts<Pr, U> {
    config: Arc<GatewayConfig>,
    context: UpstreamContext,
    metrics: GatewayMetrics,
    preparer: Pr,
    upstream: U,
}

/// Builds the HTTP client, the metrics, and the preparer and upstream that
/// dispatch on [`Job`].
fn gateway_parts(
    config: GatewayConfig,
) -> Result<Parts<impl crate::Preparer<Job, Output = Job>, impl crate::Upstream<Job>>, GatewayError>
{
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
    Ok(Parts {
        config,
        context,
        metrics,
        preparer,
        upstream,
    })
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
