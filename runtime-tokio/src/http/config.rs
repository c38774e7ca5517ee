//! The gateway's configuration, and the `flightdeck` binary's flags that build it.
//!
//! [`GatewayConfig`] is what a [`Gateway`](super::Gateway) is built from; an
//! embedder fills it in code. [`Args`] is the same thing as command-line flags and
//! environment variables (clap): every [`Config`] limit and deadline, the
//! upstreams, the OpenAI coalescing policy, the body limit. Bad values are clear
//! errors at start ([`Args::into_config`]), never panics.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use reqwest::Url;

use super::simulated::SimulatedModel;
use crate::Config;

/// An OpenAI-compatible upstream: base URL (e.g. `https://api.openai.com/v1`) and
/// the API key the gateway sends to it.
#[derive(Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// The base URL; `chat/completions` and `models` are joined to it.
    pub base_url: Url,
    /// Sent as `Authorization: Bearer <key>` when set.
    pub api_key: Option<String>,
}

impl core::fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("base_url", &self.base_url.as_str())
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Which chat completions the OpenAI proxy coalesces and caches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, ValueEnum)]
pub enum CoalesceRule {
    /// Only requests deterministic by contract: an explicit `temperature` of 0 and
    /// one choice.
    #[default]
    Deterministic,
    /// Also requests with a `seed` (best-effort determinism upstream).
    Seeded,
    /// Every request (identical requests get one answer even when sampling).
    All,
    /// None: every request gets its own upstream call.
    Never,
}

/// The OpenAI proxy's coalescing and tenant policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenAiPolicy {
    /// Which requests are coalesced and cached.
    pub coalesce: CoalesceRule,
    /// A tenant namespace shared by every caller. `None` (the default): the
    /// namespace derives from each caller's credentials, so tenants never share
    /// answers.
    pub shared_namespace: Option<String>,
}

/// Everything a [`Gateway`](super::Gateway) is built from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayConfig {
    /// The manager's limits and deadlines (shared by every API).
    pub manager: Config,
    /// The OpenAI-compatible upstream; `None`: the built-in simulated model answers.
    pub upstream: Option<UpstreamConfig>,
    /// The seeds' API upstream: the payload is POSTed there as JSON and the
    /// response body's bytes are the chunks. `None`: the simulated model answers.
    pub seeds_upstream: Option<UpstreamConfig>,
    /// The OpenAI proxy's coalescing and tenant policy.
    pub openai: OpenAiPolicy,
    /// The built-in simulated model (used where no upstream is configured).
    pub simulated: SimulatedModel,
    /// Largest request body accepted, in bytes (`413` beyond).
    pub body_limit: usize,
    /// The `Retry-After` sent with `429` when the queue is full.
    pub retry_after: Duration,
    /// Interval of SSE keep-alive comments on open streams.
    pub sse_keep_alive: Duration,
    /// Longest time to establish a connection to an upstream.
    pub upstream_connect_timeout: Duration,
    /// Cluster mode (feature `cluster`): the Redis shared by several instances.
    /// `None` (the default): this instance runs alone, exactly as without the
    /// feature. A gateway with `Some` is built by
    /// [`Gateway::connect`](super::Gateway::connect).
    #[cfg(feature = "cluster")]
    pub cluster: Option<ClusterSettings>,
}

/// What an instance configured for cluster mode does when Redis is unreachable at
/// start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, ValueEnum)]
pub enum ClusterFallback {
    /// Refuse to start, with an error naming the Redis URL (the binary exits 1).
    #[default]
    Fail,
    /// Run alone (no cross-instance coalescing, cache, cancel or status) and say so
    /// in `/healthz` and `/v1/stats`.
    Single,
}

/// Cluster mode's settings (feature `cluster`).
#[cfg(feature = "cluster")]
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// The Redis every instance of the cluster shares (`redis://host:port/db` or
    /// `redis+unix:///path`). It may hold a password: `Debug` and error messages
    /// show it redacted.
    pub redis_url: String,
    /// What to do when Redis is unreachable at start.
    pub fallback: ClusterFallback,
    /// The Redis layer's settings: [`instance`](crate::cluster::ClusterConfig::instance)
    /// is this instance's id (letters, digits, `-` and `_`; it is part of every
    /// request id this instance hands out), and the prefix, lease, log retention,
    /// follow poll and response timeout. Its `cache_ttl` and `cache_capacity` are
    /// replaced by the manager's (one cache policy for the local and the shared cache).
    pub redis: crate::cluster::ClusterConfig,
    /// How long a cancel or status sent to another instance waits for its answer
    /// before answering `504`.
    pub control_timeout: Duration,
}

#[cfg(feature = "cluster")]
impl ClusterSettings {
    /// Settings for `redis_url` with every other value at its default (a random
    /// instance id, `fallback` [`ClusterFallback::Fail`]).
    #[must_use]
    pub fn new(redis_url: impl Into<String>) -> Self {
        ClusterSettings {
            redis_url: redis_url.into(),
            fallback: ClusterFallback::Fail,
            redis: crate::cluster::ClusterConfig {
                instance: random_instance_id(),
                ..crate::cluster::ClusterConfig::default()
            },
            control_timeout: Duration::from_secs(2),
        }
    }

    /// The Redis URL with its password (if any) replaced by `***`, for messages.
    #[must_use]
    pub fn redacted_url(&self) -> String {
        redact_url(&self.redis_url)
    }
}

#[cfg(feature = "cluster")]
impl core::fmt::Debug for ClusterSettings {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ClusterSettings")
            .field("redis_url", &self.redacted_url())
            .field("fallback", &self.fallback)
            .field("redis", &self.redis)
            .field("control_timeout", &self.control_timeout)
            .finish()
    }
}

/// `url` with its password (if any) replaced by `***`.
#[cfg_attr(not(feature = "cluster"), allow(dead_code))]
pub(crate) fn redact_url(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            if parsed.set_password(Some("***")).is_ok() {
                parsed.to_string()
            } else {
                "<redis url>".to_owned()
            }
        }
        Ok(_) => url.to_owned(),
        // Unparsable: it may still hold a secret; name it without its text.
        Err(_) => "<unparsable redis url>".to_owned(),
    }
}

/// Longest instance id, in bytes.
pub const MAX_INSTANCE_ID_BYTES: usize = 64;

/// Whether `id` can name an instance: 1 to [`MAX_INSTANCE_ID_BYTES`] ASCII letters,
/// digits, `-` and `_` (so that a request id `<instance>.<number>` splits at its
/// last dot, and a Redis key or channel holds it as it is).
#[must_use]
pub fn is_valid_instance_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_INSTANCE_ID_BYTES
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A random instance id: `fd-` and 12 hex digits (from the standard library's
/// randomly seeded hasher, the process id and the clock).
#[must_use]
pub fn random_instance_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(now);
    format!("fd-{:012x}", hasher.finish() & 0xffff_ffff_ffff)
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            manager: Config::default(),
            upstream: None,
            seeds_upstream: None,
            openai: OpenAiPolicy::default(),
            simulated: SimulatedModel::default(),
            body_limit: 1024 * 1024,
            retry_after: Duration::from_secs(1),
            sse_keep_alive: Duration::from_secs(15),
            upstream_connect_timeout: Duration::from_secs(10),
            #[cfg(feature = "cluster")]
            cluster: None,
        }
    }
}

fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (examples: 500ms, 30s, 5m)"))
}

fn url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| e.to_string())?;
    match url.scheme() {
        "http" => Ok(url),
        "https" if cfg!(feature = "tls") => Ok(url),
        "https" => Err("https needs flightdeck built with the feature `tls`".to_owned()),
        other => Err(format!("scheme `{other}` is not http or https")),
    }
}

/// The `flightdeck` binary's flags; each also reads an environment variable.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "flightdeck",
    version,
    about = "The flightdeck gateway: an HTTP/SSE API over flightdeck's coalescing \
             request manager, and an OpenAI-compatible coalescing proxy.",
    long_about = None
)]
#[allow(clippy::struct_excessive_bools)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, env = "FLIGHTDECK_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Run the demo instead of serving: start on a loopback port, run a burst of
    /// clients over HTTP, print their timeline and a summary, shut down, exit.
    #[arg(long)]
    pub demo: bool,

    /// OpenAI-compatible upstream base URL (e.g. `https://api.openai.com/v1`; https
    /// needs the build feature `tls`). Without it, the built-in simulated model answers.
    #[arg(long, env = "FLIGHTDECK_UPSTREAM_URL", value_parser = url)]
    pub upstream_url: Option<Url>,

    /// API key sent to the OpenAI-compatible upstream (Authorization: Bearer).
    #[arg(long, env = "FLIGHTDECK_UPSTREAM_API_KEY", hide_env_values = true)]
    pub upstream_api_key: Option<String>,

    /// Upstream of the seeds' API: the payload is POSTed there as JSON and the
    /// response body streams back as chunks. Without it, the simulated model answers.
    #[arg(long, env = "FLIGHTDECK_SEEDS_UPSTREAM_URL", value_parser = url)]
    pub seeds_upstream_url: Option<Url>,

    /// API key sent to the seeds' upstream (Authorization: Bearer).
    #[arg(
        long,
        env = "FLIGHTDECK_SEEDS_UPSTREAM_API_KEY",
        hide_env_values = true
    )]
    pub seeds_upstream_api_key: Option<String>,

    /// Which chat completions are coalesced and cached.
    #[arg(long, env = "FLIGHTDECK_OPENAI_COALESCE", value_enum, default_value_t = CoalesceRule::Deterministic)]
    pub openai_coalesce: CoalesceRule,

    /// A tenant namespace shared by every caller of the OpenAI proxy (callers then
    /// share answers). Default: one namespace per caller credential.
    #[arg(long, env = "FLIGHTDECK_OPENAI_SHARED_NAMESPACE")]
    pub openai_shared_namespace: Option<String>,

    /// Flights that may wait in the admission queue (429 beyond).
    #[arg(long, env = "FLIGHTDECK_QUEUE_CAPACITY", default_value_t = Config::default().queue_capacity)]
    pub queue_capacity: usize,

    /// Preparations that may run at once.
    #[arg(long, env = "FLIGHTDECK_MAX_CONCURRENT_REQUESTS", default_value_t = Config::default().max_concurrent_requests)]
    pub max_concurrent_requests: usize,

    /// Upstream streams that may run at once.
    #[arg(long, env = "FLIGHTDECK_MAX_CONCURRENT_STREAMS", default_value_t = Config::default().max_concurrent_streams)]
    pub max_concurrent_streams: usize,

    /// Bytes one response may reach; beyond, its flight fails.
    #[arg(long, env = "FLIGHTDECK_MAX_RESPONSE_BYTES", default_value_t = Config::default().max_response_bytes)]
    pub max_response_bytes: u64,

    /// Completed results kept in the cache (0 disables the cache).
    #[arg(long, env = "FLIGHTDECK_CACHE_CAPACITY", default_value_t = Config::default().cache_capacity)]
    pub cache_capacity: usize,

    /// How long a cached result may be served.
    #[arg(long, env = "FLIGHTDECK_CACHE_TTL", value_parser = duration, default_value = "10m")]
    pub cache_ttl: Duration,

    /// Longest time a flight may wait in the queue.
    #[arg(long, env = "FLIGHTDECK_QUEUE_TIMEOUT", value_parser = duration, default_value = "60s")]
    pub queue_timeout: Duration,

    /// Longest time a preparation may run.
    #[arg(long, env = "FLIGHTDECK_PREPARATION_TIMEOUT", value_parser = duration, default_value = "30s")]
    pub preparation_timeout: Duration,

    /// Longest time a prepared flight may wait for a stream slot.
    #[arg(long, env = "FLIGHTDECK_STREAM_SLOT_TIMEOUT", value_parser = duration, default_value = "60s")]
    pub stream_slot_timeout: Duration,

    /// Longest total time of one upstream stream.
    #[arg(long, env = "FLIGHTDECK_STREAM_TIMEOUT", value_parser = duration, default_value = "5m")]
    pub stream_timeout: Duration,

    /// Longest silence between two upstream chunks (and before the first).
    #[arg(long, env = "FLIGHTDECK_IDLE_TIMEOUT", value_parser = duration, default_value = "30s")]
    pub idle_timeout: Duration,

    /// Longest time a request may wait for its client to open its stream.
    #[arg(long, env = "FLIGHTDECK_ATTACH_TIMEOUT", value_parser = duration, default_value = "30s")]
    pub attach_timeout: Duration,

    /// How long a cancelled request stays readable (its stream says `cancelled`).
    #[arg(long, env = "FLIGHTDECK_CANCELLED_RETENTION", value_parser = duration, default_value = "30s")]
    pub cancelled_retention: Duration,

    /// How long a finished request stays readable.
    #[arg(long, env = "FLIGHTDECK_FINISHED_RETENTION", value_parser = duration, default_value = "60s")]
    pub finished_retention: Duration,

    /// Largest request body accepted, in bytes (413 beyond).
    #[arg(long, env = "FLIGHTDECK_BODY_LIMIT", default_value_t = 1024 * 1024)]
    pub body_limit: usize,

    /// Retry-After sent with 429 when the queue is full.
    #[arg(long, env = "FLIGHTDECK_RETRY_AFTER", value_parser = duration, default_value = "1s")]
    pub retry_after: Duration,

    /// Interval of SSE keep-alive comments.
    #[arg(long, env = "FLIGHTDECK_SSE_KEEP_ALIVE", value_parser = duration, default_value = "15s")]
    pub sse_keep_alive: Duration,

    /// Longest time to connect to an upstream.
    #[arg(long, env = "FLIGHTDECK_UPSTREAM_CONNECT_TIMEOUT", value_parser = duration, default_value = "10s")]
    pub upstream_connect_timeout: Duration,

    /// Simulated model: tokens per answer (when no upstream is configured).
    #[arg(long, env = "FLIGHTDECK_SIM_TOKENS", default_value_t = SimulatedModel::default().tokens)]
    pub sim_tokens: usize,

    /// Simulated model: delay before each token.
    #[arg(long, env = "FLIGHTDECK_SIM_TOKEN_DELAY", value_parser = duration, default_value = "25ms")]
    pub sim_token_delay: Duration,

    /// Cluster mode: the Redis shared by several instances (e.g.
    /// `redis://127.0.0.1:6379`). Needs flightdeck built with the feature `cluster`.
    #[arg(long, env = "FLIGHTDECK_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Cluster mode: this instance's id (letters, digits, `-`, `_`; at most 64),
    /// unique in the cluster; request ids carry it. Default: a random id.
    #[arg(long, env = "FLIGHTDECK_INSTANCE_ID")]
    pub instance_id: Option<String>,

    /// Cluster mode: when Redis is unreachable at start, `fail` (exit 1) or run
    /// `single` (alone; `/healthz` says so).
    #[arg(long, env = "FLIGHTDECK_CLUSTER_FALLBACK", value_enum, default_value_t = ClusterFallback::Fail)]
    pub cluster_fallback: ClusterFallback,

    /// Cluster mode: how long an owner's claim on a key lives without renewal.
    #[arg(long, env = "FLIGHTDECK_CLUSTER_LEASE", value_parser = duration, default_value = "3s")]
    pub cluster_lease: Duration,

    /// Cluster mode: how long a finished flight's log stays readable in Redis.
    #[arg(long, env = "FLIGHTDECK_CLUSTER_LOG_RETENTION", value_parser = duration, default_value = "5s")]
    pub cluster_log_retention: Duration,

    /// Cluster mode: how long a follower's blocking read waits before it checks
    /// that the owner is alive (shorter than --cluster-timeout).
    #[arg(long, env = "FLIGHTDECK_CLUSTER_FOLLOW_POLL", value_parser = duration, default_value = "1s")]
    pub cluster_follow_poll: Duration,

    /// Cluster mode: longest time of one Redis command, and of a cancel or status
    /// sent to another instance (504 beyond).
    #[arg(long, env = "FLIGHTDECK_CLUSTER_TIMEOUT", value_parser = duration, default_value = "2s")]
    pub cluster_timeout: Duration,

    /// Cluster mode: the prefix of every Redis key and channel (instances of one
    /// cluster share it).
    #[arg(long, env = "FLIGHTDECK_CLUSTER_PREFIX", default_value = "fd:")]
    pub cluster_prefix: String,

    /// Log filter (tracing's EnvFilter syntax), e.g. `info` or
    /// `flightdeck_tokio=debug`. Default: `info`, or `warn` with --demo.
    #[arg(long, env = "FLIGHTDECK_LOG")]
    pub log: Option<String>,
}

/// A flag whose value cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid value for --{flag}: {reason}")]
pub struct ArgError {
    /// The flag, without its dashes.
    pub flag: String,
    /// Why.
    pub reason: String,
}

impl Args {
    /// The gateway configuration these flags describe.
    ///
    /// # Errors
    /// The first flag whose value the gateway cannot use (a zero limit or
    /// deadline, a zero body limit, an API key without its URL).
    pub fn into_config(self) -> Result<GatewayConfig, ArgError> {
        let manager = Config {
            queue_capacity: self.queue_capacity,
            max_concurrent_requests: self.max_concurrent_requests,
            max_concurrent_streams: self.max_concurrent_streams,
            max_response_bytes: self.max_response_bytes,
            cache_capacity: self.cache_capacity,
            cache_ttl: self.cache_ttl,
            queue_timeout: self.queue_timeout,
            preparation_timeout: self.preparation_timeout,
            stream_slot_timeout: self.stream_slot_timeout,
            stream_timeout: self.stream_timeout,
            idle_timeout: self.idle_timeout,
            attach_timeout: self.attach_timeout,
            cancelled_retention: self.cancelled_retention,
            finished_retention: self.finished_retention,
            cluster: false,
        };
        if let Err(e) = manager.validate() {
            let field = match &e {
                crate::ConfigError::ZeroLimit { field }
                | crate::ConfigError::ZeroTimeout { field } => field,
                _ => "config",
            };
            return Err(ArgError {
                flag: field.replace('_', "-"),
                reason: e.to_string(),
            });
        }
        let positive = [
            ("body-limit", self.body_limit == 0),
            ("sim-tokens", self.sim_tokens == 0),
            ("sse-keep-alive", self.sse_keep_alive.is_zero()),
            (
                "upstream-connect-timeout",
                self.upstream_connect_timeout.is_zero(),
            ),
        ];
        if let Some((flag, _)) = positive.iter().find(|(_, zero)| *zero) {
            return Err(ArgError {
                flag: (*flag).to_owned(),
                reason: "must be greater than zero".to_owned(),
            });
        }
        #[cfg(feature = "cluster")]
        let cluster = self.cluster_settings(&manager)?;
        #[cfg(not(feature = "cluster"))]
        self.no_cluster_flags()?;
        let upstream =
            upstream_config(self.upstream_url, self.upstream_api_key, "upstream-api-key")?;
        let seeds_upstream = upstream_config(
            self.seeds_upstream_url,
            self.seeds_upstream_api_key,
            "seeds-upstream-api-key",
        )?;
        Ok(GatewayConfig {
            manager,
            upstream,
            seeds_upstream,
            openai: OpenAiPolicy {
                coalesce: self.openai_coalesce,
                shared_namespace: self.openai_shared_namespace,
            },
            simulated: SimulatedModel {
                tokens: self.sim_tokens,
                token_delay: self.sim_token_delay,
            },
            body_limit: self.body_limit,
            retry_after: self.retry_after,
            sse_keep_alive: self.sse_keep_alive,
            upstream_connect_timeout: self.upstream_connect_timeout,
            #[cfg(feature = "cluster")]
            cluster,
        })
    }

    /// Without the feature `cluster`: cluster flags are an error, never ignored (an
    /// instance meant to share its work must not silently run alone).
    #[cfg(not(feature = "cluster"))]
    fn no_cluster_flags(&self) -> Result<(), ArgError> {
        let given = [
            ("redis-url", self.redis_url.is_some()),
            ("instance-id", self.instance_id.is_some()),
        ];
        match given.iter().find(|(_, given)| *given) {
            Some((flag, _)) => Err(ArgError {
                flag: (*flag).to_owned(),
                reason: "cluster mode needs flightdeck built with the feature `cluster`".to_owned(),
            }),
            None => Ok(()),
        }
    }

    /// The cluster settings these flags describe (`None` without `--redis-url`).
    #[cfg(feature = "cluster")]
    fn cluster_settings(&self, manager: &Config) -> Result<Option<ClusterSettings>, ArgError> {
        let Some(redis_url) = self.redis_url.clone() else {
            if self.instance_id.is_some() {
                return Err(ArgError {
                    flag: "instance-id".to_owned(),
                    reason: "an instance id needs --redis-url (cluster mode)".to_owned(),
                });
            }
            return Ok(None);
        };
        if let Err(e) = crate::cluster::redis::Client::open(redis_url.as_str()) {
            return Err(ArgError {
                flag: "redis-url".to_owned(),
                reason: format!(
                    "{} is not a usable Redis URL (e.g. redis://127.0.0.1:6379): {e}",
                    redact_url(&redis_url)
                ),
            });
        }
        let instance = match &self.instance_id {
            Some(id) if is_valid_instance_id(id) => id.clone(),
            Some(_) => {
                return Err(ArgError {
                    flag: "instance-id".to_owned(),
                    reason: format!(
                        "use 1 to {MAX_INSTANCE_ID_BYTES} ASCII letters, digits, `-` and `_`"
                    ),
                })
            }
            None => random_instance_id(),
        };
        let durations = [
            ("cluster-lease", self.cluster_lease),
            ("cluster-log-retention", self.cluster_log_retention),
            ("cluster-follow-poll", self.cluster_follow_poll),
            ("cluster-timeout", self.cluster_timeout),
        ];
        if let Some((flag, _)) = durations.iter().find(|(_, d)| d.is_zero()) {
            return Err(ArgError {
                flag: (*flag).to_owned(),
                reason: "must be greater than zero".to_owned(),
            });
        }
        if self.cluster_follow_poll >= self.cluster_timeout {
            return Err(ArgError {
                flag: "cluster-follow-poll".to_owned(),
                reason: "must be shorter than --cluster-timeout".to_owned(),
            });
        }
        if self.cluster_prefix.is_empty() {
            return Err(ArgError {
                flag: "cluster-prefix".to_owned(),
                reason: "must not be empty".to_owned(),
            });
        }
        Ok(Some(ClusterSettings {
            redis_url,
            fallback: self.cluster_fallback,
            redis: crate::cluster::ClusterConfig {
                instance,
                prefix: self.cluster_prefix.clone(),
                lease: self.cluster_lease,
                log_retention: self.cluster_log_retention,
                cache_ttl: manager.cache_ttl,
                cache_capacity: manager.cache_capacity,
                follow_poll: self.cluster_follow_poll,
                response_timeout: self.cluster_timeout,
            },
            control_timeout: self.cluster_timeout,
        }))
    }
}

fn upstream_config(
    url: Option<Url>,
    api_key: Option<String>,
    key_flag: &str,
) -> Result<Option<UpstreamConfig>, ArgError> {
    match (url, api_key) {
        (Some(base_url), api_key) => Ok(Some(UpstreamConfig { base_url, api_key })),
        (None, None) => Ok(None),
        (None, Some(_)) => Err(ArgError {
            flag: key_flag.to_owned(),
            reason: "an API key needs its upstream URL".to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<GatewayConfig, String> {
        let mut argv = vec!["flightdeck"];
        argv.extend_from_slice(args);
        let args = Args::try_parse_from(argv).map_err(|e| e.to_string())?;
        args.into_config().map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_match_the_library_defaults() {
        let config = parse(&[]).unwrap();
        assert_eq!(config, GatewayConfig::default());
    }

    #[test]
    fn every_limit_and_deadline_is_a_flag() {
        let config = parse(&[
            "--queue-capacity=3",
            "--max-concurrent-requests=4",
            "--max-concurrent-streams=2",
            "--max-response-bytes=1000",
            "--cache-capacity=0",
            "--cache-ttl=2m",
            "--queue-timeout=1s",
            "--preparation-timeout=2s",
            "--stream-slot-timeout=3s",
            "--stream-timeout=4s",
            "--idle-timeout=500ms",
            "--attach-timeout=6s",
            "--cancelled-retention=7s",
            "--finished-retention=8s",
            "--body-limit=10",
            "--openai-coalesce=all",
            "--openai-shared-namespace=team",
            "--upstream-url=http://127.0.0.1:9/v1",
            "--upstream-api-key=sk-test",
        ])
        .unwrap();
        let m = &config.manager;
        assert_eq!(
            (
                m.queue_capacity,
                m.max_concurrent_requests,
                m.max_concurrent_streams
            ),
            (3, 4, 2)
        );
        assert_eq!((m.max_response_bytes, m.cache_capacity), (1000, 0));
        assert_eq!(m.cache_ttl, Duration::from_secs(120));
        assert_eq!(m.idle_timeout, Duration::from_millis(500));
        assert_eq!(m.finished_retention, Duration::from_secs(8));
        assert_eq!(config.body_limit, 10);
        assert_eq!(config.openai.coalesce, CoalesceRule::All);
        assert_eq!(config.openai.shared_namespace.as_deref(), Some("team"));
        let upstream = config.upstream.unwrap();
        assert_eq!(upstream.base_url.as_str(), "http://127.0.0.1:9/v1");
        assert!(
            !format!("{upstream:?}").contains("sk-test"),
            "keys are not logged"
        );
    }

    #[test]
    fn bad_values_are_clear_errors() {
        let zero = parse(&["--max-concurrent-streams=0"]).unwrap_err();
        assert!(zero.contains("--max-concurrent-streams"), "{zero}");
        let zero = parse(&["--idle-timeout=0s"]).unwrap_err();
        assert!(zero.contains("--idle-timeout"), "{zero}");
        let garbage = parse(&["--queue-timeout=soon"]).unwrap_err();
        assert!(garbage.contains("--queue-timeout"), "{garbage}");
        let negative = parse(&["--queue-capacity=-1"]).unwrap_err();
        assert!(negative.contains("--queue-capacity"), "{negative}");
        let scheme = parse(&["--upstream-url=ftp://x"]).unwrap_err();
        assert!(scheme.contains("not http or https"), "{scheme}");
        let orphan = parse(&["--upstream-api-key=k"]).unwrap_err();
        assert!(orphan.contains("--upstream-api-key"), "{orphan}");
        let https = parse(&["--upstream-url=https://api.example.invalid/v1"]);
        if cfg!(feature = "tls") {
            assert!(https.is_ok(), "{https:?}");
        } else {
            assert!(https.unwrap_err().contains("feature `tls`"));
        }
        let body = parse(&["--body-limit=0"]).unwrap_err();
        assert!(body.contains("--body-limit"), "{body}");
    }

    #[cfg(not(feature = "cluster"))]
    #[test]
    fn cluster_flags_need_the_feature() {
        let error = parse(&["--redis-url=redis://127.0.0.1:6379"]).unwrap_err();
        assert!(
            error.contains("--redis-url") && error.contains("feature `cluster`"),
            "{error}"
        );
        let error = parse(&["--instance-id=a"]).unwrap_err();
        assert!(error.contains("--instance-id"), "{error}");
    }

    #[cfg(feature = "cluster")]
    #[test]
    fn cluster_flags_build_the_cluster_settings() {
        assert_eq!(parse(&[]).unwrap().cluster, None, "off without --redis-url");
        let config = parse(&[
            "--redis-url=redis://:secret@127.0.0.1:6379/2",
            "--instance-id=gw-1",
            "--cluster-fallback=single",
            "--cluster-lease=1s",
            "--cluster-log-retention=2s",
            "--cluster-follow-poll=100ms",
            "--cluster-timeout=700ms",
            "--cluster-prefix=team:",
            "--cache-ttl=1m",
            "--cache-capacity=7",
        ])
        .unwrap();
        let cluster = config.cluster.unwrap();
        assert_eq!(cluster.fallback, ClusterFallback::Single);
        assert_eq!(cluster.control_timeout, Duration::from_millis(700));
        let redis = &cluster.redis;
        assert_eq!(
            (redis.instance.as_str(), redis.prefix.as_str()),
            ("gw-1", "team:")
        );
        assert_eq!(
            (
                redis.lease,
                redis.log_retention,
                redis.follow_poll,
                redis.response_timeout
            ),
            (
                Duration::from_secs(1),
                Duration::from_secs(2),
                Duration::from_millis(100),
                Duration::from_millis(700)
            )
        );
        assert_eq!(
            (redis.cache_ttl, redis.cache_capacity),
            (Duration::from_secs(60), 7)
        );
        let shown = format!("{cluster:?}");
        assert!(
            !shown.contains("secret") && shown.contains("***"),
            "{shown}"
        );
        let random = parse(&["--redis-url=redis://127.0.0.1"])
            .unwrap()
            .cluster
            .unwrap();
        assert!(is_valid_instance_id(&random.redis.instance), "{random:?}");
        assert_eq!(
            random.fallback,
            ClusterFallback::Fail,
            "fail is the default"
        );
    }

    #[cfg(feature = "cluster")]
    #[test]
    fn bad_cluster_flags_are_clear_errors() {
        for (args, flag) in [
            (&["--redis-url=http://x"][..], "--redis-url"),
            (
                &["--redis-url=redis://x", "--instance-id=a.b"][..],
                "--instance-id",
            ),
            (
                &["--redis-url=redis://x", "--instance-id="][..],
                "--instance-id",
            ),
            (&["--instance-id=a"][..], "--instance-id"),
            (
                &["--redis-url=redis://x", "--cluster-lease=0s"][..],
                "--cluster-lease",
            ),
            (
                &["--redis-url=redis://x", "--cluster-follow-poll=3s"][..],
                "--cluster-follow-poll",
            ),
            (
                &["--redis-url=redis://x", "--cluster-prefix="][..],
                "--cluster-prefix",
            ),
        ] {
            let error = parse(args).unwrap_err();
            assert!(error.contains(flag), "{args:?}: {error}");
        }
        let long = "x".repeat(MAX_INSTANCE_ID_BYTES + 1);
        assert!(!is_valid_instance_id(&long));
        assert!(is_valid_instance_id(&long[1..]));
        assert_eq!(
            redact_url("redis://user:pw@host:1/0"),
            "redis://user:***@host:1/0"
        );
        assert_eq!(
            redact_url("redis+unix:///tmp/r.sock"),
            "redis+unix:///tmp/r.sock"
        );
    }
}
