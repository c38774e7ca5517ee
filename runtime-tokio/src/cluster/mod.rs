//! Cluster mode on Redis (feature `cluster`): the Redis layer that lets several
//! gateway instances coalesce one key into one upstream call and share one result
//! cache. See `docs/cluster.md` for the design and its failure cases.
//!
//! This module is the typed API over Redis only; it decides nothing about requests.
//! The core decides (a claim's answer, a remote chunk, a remote end are its inputs);
//! a driver calls this layer to carry out the core's actions.
//!
//! # Why these mechanisms
//! - **One owner per key**: a [`Cluster::claim`] is one Lua script (one round trip)
//!   that answers from the cache, or finds the live owner, or takes the lease
//!   (`SET NX PX`) for a new **generation** (`INCR`). The lease lapses by itself if
//!   the owner dies; the owner keeps it with [`Cluster::renew`].
//! - **Fencing**: every write by an owner ([`Cluster::append`], [`Cluster::finish`])
//!   is a script that first checks that the lease still names this owner and this
//!   generation. A dead or partitioned owner's late writes change nothing: the
//!   cross-machine form of the core's [rule 16](flightdeck_core::contract#rule-16).
//! - **The log**: one Redis Stream per flight generation; followers read it from the
//!   start (late joiners replay it) with `XREAD BLOCK` on a connection of their own
//!   ([`Cluster::follow`]), never on the shared command connection, so a blocked read
//!   never delays another instance's claim.
//! - **The cache**: a list per key (outcome, then chunks) with a time to live, and a
//!   sorted-set index trimmed to the capacity by the same script that writes.
//!
//! # Key layout
//! With the configured [`ClusterConfig::prefix`] `P` (default `fd:`) and `H` the
//! flight key's bytes in lower-case hex:
//!
//! | key | type | holds | expiry |
//! |---|---|---|---|
//! | `P{H}:owner` | string | `"<generation>/<instance>"` of the live owner | the lease; deleted by `finish` |
//! | `P{H}:gen` | string | the key's generation counter (seeded from the server clock in µs) | lease + retention after the last claim, renewal or finish |
//! | `P{H}:log:<generation>` | stream | entries with field `c` repeated (a batch of chunks, in order), the last with field `end` (the outcome) | lease + retention while live, the retention after `finish` |
//! | `P{H}:cache` | list | the outcome, then every chunk | the cache time to live |
//! | `Pcache` | sorted set | the cache keys, scored by expiry time (ms) | as long as its longest-lived entry |
//!
//! The braces are a Redis Cluster hash tag, so one flight's keys share a slot; the
//! index `Pcache` does not, so this layer targets one Redis server (or a replicated
//! primary), not a sharded Redis Cluster.
//!
//! # Example
//! ```no_run
//! use flightdeck_tokio::cluster::{Claim, Cluster, ClusterConfig, LogEntry, LogPosition};
//! use flightdeck_tokio::Bytes;
//!
//! # async fn run() -> Result<(), flightdeck_tokio::cluster::ClusterError> {
//! let config = ClusterConfig { instance: "gw-a".to_owned(), ..ClusterConfig::default() };
//! let cluster = Cluster::connect("redis://127.0.0.1:6379", config).await?;
//! match cluster.claim(b"key").await? {
//!     Claim::Owner { generation } => {
//!         // Run the upstream; publish each batch, renew every lease / 3, then end.
//!         cluster.append(b"key", generation, &[Bytes::from_static(b"hello")]).await?;
//!         cluster.finish(b"key", generation, b"completed", true).await?;
//!     }
//!     Claim::Follower { generation, .. } => {
//!         let mut follower = cluster.follow(b"key", generation, LogPosition::START).await?;
//!         while let Some(entry) = follower.next_entry().await? {
//!             if let LogEntry::Chunks(chunks) = entry {
//!                 println!("{} chunks", chunks.len());
//!             }
//!         }
//!     }
//!     Claim::Cached(result) => println!("cached: {} chunks", result.chunks.len()),
//! }
//! # Ok(())
//! # }
//! ```

mod coordinator;
mod scripts;

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flightdeck_core::Bytes;
use futures_lite::Stream;
pub use redis;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Value};

pub use coordinator::RedisCoordinator;
use scripts::Scripts;

/// Settings of the Redis layer. Every instance of a cluster must use the same
/// [`prefix`](Self::prefix), cache settings and lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// This instance's name, unique in the cluster (it is written into the lease, so
    /// followers know the owner). Default: `"<process id>-<start time in µs, hex>"`;
    /// set it to something meaningful (a host name) in production.
    pub instance: String,
    /// Prefix of every Redis key this layer writes. Default `fd:`.
    pub prefix: String,
    /// How long an owner's claim lives without a renewal. Renew every `lease / 3`.
    /// Default 3 s.
    pub lease: Duration,
    /// How long a finished log stays readable for late followers. Default 5 s.
    pub log_retention: Duration,
    /// Time to live of a cache entry (the local cache's `cache_ttl`). Default 10 min.
    pub cache_ttl: Duration,
    /// Most cache entries kept (the local cache's `cache_capacity`); 0 disables the
    /// cache. Default 1024.
    pub cache_capacity: usize,
    /// How long a follower's `XREAD` blocks before it checks that the owner is still
    /// alive. Default 1 s.
    pub follow_poll: Duration,
    /// How long any command may take before it fails (connection lost, server
    /// stalled). Default 2 s.
    pub response_timeout: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros());
        ClusterConfig {
            instance: format!("{}-{started:x}", std::process::id()),
            prefix: "fd:".to_owned(),
            lease: Duration::from_secs(3),
            log_retention: Duration::from_secs(5),
            cache_ttl: Duration::from_secs(600),
            cache_capacity: 1024,
            follow_poll: Duration::from_secs(1),
            response_timeout: Duration::from_secs(2),
        }
    }
}

/// What went wrong in a cluster operation.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The write was refused: this instance no longer holds the lease for this
    /// generation (it lapsed, or Redis lost it). Nothing was written.
    #[error("fenced: the lease for generation {generation} is no longer held by this instance; nothing was written")]
    Fenced {
        /// The generation the write was for.
        generation: u64,
    },
    /// A follower found the owner gone (its lease lapsed) before the end of the log.
    #[error(
        "the owner of generation {generation} is gone (its lease lapsed) before the end of its log"
    )]
    OwnerLost {
        /// The generation being followed.
        generation: u64,
    },
    /// Redis failed: unreachable, connection lost (for example a restart), timeout,
    /// or an error reply.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis answered something this layer does not expect (a foreign writer on its
    /// keys, or a version mismatch between instances).
    #[error("unexpected reply from redis: {0}")]
    Protocol(String),
    /// The configuration cannot work.
    #[error("invalid cluster config: {0}")]
    Config(String),
}

/// A finished result as the cache holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedResult {
    /// Every chunk, in order.
    pub chunks: Vec<Bytes>,
    /// The outcome as the owner encoded it (opaque to this layer).
    pub outcome: Bytes,
}

/// The answer to [`Cluster::claim`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// This instance now owns the key for `generation`: it runs the upstream,
    /// [`append`](Cluster::append)s, [`renew`](Cluster::renew)s and
    /// [`finish`](Cluster::finish)es.
    Owner {
        /// The new generation (the fencing token).
        generation: u64,
    },
    /// Another claim owns the key: [`follow`](Cluster::follow) its log.
    Follower {
        /// The live owner's generation.
        generation: u64,
        /// The owner's instance name.
        owner: String,
    },
    /// The cache holds a finished result for the key.
    Cached(CachedResult),
}

/// One entry of a flight's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogEntry {
    /// A batch of chunks, in order, as one [`append`](Cluster::append) wrote it
    /// (a batch above 1000 chunks is split into several entries).
    Chunks(Vec<Bytes>),
    /// The end of the log, with the outcome the owner passed to
    /// [`finish`](Cluster::finish). Nothing follows it.
    End(Bytes),
}

/// A place in a flight's log: [`LogPosition::START`], or just after an entry read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogPosition(String);

impl LogPosition {
    /// Before the first entry: a follower from here replays the whole log.
    pub const START: LogPosition = LogPosition(String::new());

    fn stream_id(&self) -> &str {
        if self.0.is_empty() {
            "0-0"
        } else {
            &self.0
        }
    }
}

/// A handle on the cluster's Redis: cheap to clone, shared by every flight of an
/// instance. Commands go over one multiplexed connection that reconnects by itself
/// after a Redis restart; each [`follow`](Cluster::follow) opens its own connection.
#[derive(Clone)]
pub struct Cluster {
    client: redis::Client,
    commands: ConnectionManager,
    config: Arc<ClusterConfig>,
    scripts: Arc<Scripts>,
    round_trips: Arc<AtomicU64>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("config", &self.config)
            .field("round_trips", &self.round_trips())
            .finish_non_exhaustive()
    }
}

/// The largest expiry this layer passes to Redis, in ms (about 2,000 years).
const MAX_MS: u64 = 1 << 46;

/// `d` in whole milliseconds for `PX`/`PEXPIRE`: at least 1, at most [`MAX_MS`].
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis())
        .unwrap_or(MAX_MS)
        .clamp(1, MAX_MS)
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The Redis key names of one flight key.
struct Keys {
    base: String,
}

impl Keys {
    fn owner(&self) -> String {
        format!("{}:owner", self.base)
    }
    fn gen(&self) -> String {
        format!("{}:gen", self.base)
    }
    fn log(&self, generation: u64) -> String {
        format!("{}:log:{generation}", self.base)
    }
    fn cache(&self) -> String {
        format!("{}:cache", self.base)
    }
}

fn bulk(value: &Value) -> Option<Bytes> {
    match value {
        Value::BulkString(b) => Some(Bytes::copy_from_slice(b)),
        Value::SimpleString(s) => Some(Bytes::copy_from_slice(s.as_bytes())),
        Value::Int(i) => Some(Bytes::from(i.to_string())),
        _ => None,
    }
}

fn text(value: &Value) -> Option<String> {
    bulk(value).and_then(|b| String::from_utf8(b.to_vec()).ok())
}

fn protocol(what: &str, value: &Value) -> ClusterError {
    ClusterError::Protocol(format!("{what}: {value:?}"))
}

/// A cache list (outcome first, then chunks) as a [`CachedResult`].
fn cached_result(items: &[Value]) -> Result<CachedResult, ClusterError> {
    let mut values = items
        .iter()
        .map(|v| bulk(v).ok_or_else(|| protocol("cache entry", v)));
    let outcome = values
        .next()
        .ok_or_else(|| ClusterError::Protocol("empty cache entry".to_owned()))??;
    let chunks = values.collect::<Result<Vec<_>, _>>()?;
    Ok(CachedResult { chunks, outcome })
}

fn integer(value: &Value) -> Option<i64> {
    match value {
        Value::Int(i) => Some(*i),
        other => text(other).and_then(|t| t.parse().ok()),
    }
}

impl Cluster {
    /// Connects to Redis at `url` (`redis://host:port/db`, or
    /// `redis+unix:///path/to/socket`) and loads the scripts.
    ///
    /// # Errors
    /// [`ClusterError::Config`] for an unusable config, [`ClusterError::Redis`] if
    /// Redis is unreachable or refuses: a clear error at start.
    pub async fn connect(url: &str, config: ClusterConfig) -> Result<Cluster, ClusterError> {
        if config.instance.is_empty() {
            return Err(ClusterError::Config(
                "instance must not be empty".to_owned(),
            ));
        }
        if config.follow_poll >= config.response_timeout {
            return Err(ClusterError::Config(format!(
                "follow_poll ({:?}) must be shorter than response_timeout ({:?})",
                config.follow_poll, config.response_timeout
            )));
        }
        let client = redis::Client::open(url)?;
        let manager_config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(config.response_timeout))
            .set_connection_timeout(Some(config.response_timeout))
            .set_number_of_retries(1);
        let mut commands = client
            .get_connection_manager_with_config(manager_config)
            .await?;
        let scripts = Scripts::new();
        for script in scripts.all() {
            script.load_async(&mut commands).await?;
        }
        Ok(Cluster {
            client,
            commands,
            config: Arc::new(config),
            scripts: Arc::new(scripts),
            round_trips: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The settings this handle runs with.
    #[must_use]
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// How many requests this handle (and its clones, and its followers) sent to
    /// Redis since it connected, counting each operation's script call or command
    /// once (a script reload after a Redis restart is not counted).
    #[must_use]
    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    fn keys(&self, key: &[u8]) -> Keys {
        Keys {
            base: format!("{}{{{}}}", self.config.prefix, hex(key)),
        }
    }

    fn token(&self, generation: u64) -> String {
        format!("{generation}/{}", self.config.instance)
    }

    fn hold_ms(&self) -> u64 {
        millis(self.config.lease.saturating_add(self.config.log_retention))
    }

    fn counted(&self) {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
    }

    /// Claims `key` in one round trip: the cached result if there is one; else the
    /// live owner's generation if there is one; else a new generation owned by this
    /// instance, with a lease of [`ClusterConfig::lease`].
    ///
    /// # Errors
    /// [`ClusterError::Redis`] if Redis fails; [`ClusterError::Protocol`] on a reply
    /// this layer did not write.
    pub async fn claim(&self, key: &[u8]) -> Result<Claim, ClusterError> {
        let keys = self.keys(key);
        self.counted();
        let reply: Value = self
            .scripts
            .claim
            .key(keys.cache())
            .key(keys.owner())
            .key(keys.gen())
            .arg(&self.config.instance)
            .arg(millis(self.config.lease))
            .arg(self.hold_ms())
            .invoke_async(&mut self.commands.clone())
            .await?;
        let Value::Array(parts) = &reply else {
            return Err(protocol("claim", &reply));
        };
        match parts.as_slice() {
            [tag, Value::Array(items)] if integer(tag) == Some(0) => {
                Ok(Claim::Cached(cached_result(items)?))
            }
            [tag, owner] if integer(tag) == Some(1) => {
                let owner = text(owner).ok_or_else(|| protocol("claim owner", owner))?;
                let (generation, instance) = owner
                    .split_once('/')
                    .and_then(|(g, i)| Some((g.parse::<u64>().ok()?, i)))
                    .ok_or_else(|| ClusterError::Protocol(format!("owner value {owner:?}")))?;
                Ok(Claim::Follower {
                    generation,
                    owner: instance.to_owned(),
                })
            }
            [tag, generation] if integer(tag) == Some(2) => {
                let generation = integer(generation)
                    .and_then(|g| u64::try_from(g).ok())
                    .ok_or_else(|| protocol("claim generation", generation))?;
                Ok(Claim::Owner { generation })
            }
            _ => Err(protocol("claim", &reply)),
        }
    }

    /// Extends the lease of `key` for `generation` by [`ClusterConfig::lease`], if
    /// this instance still holds it. `false` means the lease is lost: stop the
    /// upstream; every further write would be [fenced](ClusterError::Fenced).
    ///
    /// # Errors
    /// [`ClusterError::Redis`] if Redis fails (the lease may still be held: retry
    /// within the lease, or treat it as lost).
    pub async fn renew(&self, key: &[u8], generation: u64) -> Result<bool, ClusterError> {
        let keys = self.keys(key);
        self.counted();
        let held: i64 = self
            .scripts
            .renew
            .key(keys.owner())
            .key(keys.gen())
            .key(keys.log(generation))
            .arg(self.token(generation))
            .arg(millis(self.config.lease))
            .arg(self.hold_ms())
            .invoke_async(&mut self.commands.clone())
            .await?;
        Ok(held == 1)
    }

    /// Appends a batch of chunks to the log of `key`'s `generation`, in one round
    /// trip, if this instance still holds its lease (checked and written atomically).
    ///
    /// # Errors
    /// [`ClusterError::Fenced`] if the lease is no longer this instance's (nothing
    /// written); [`ClusterError::Redis`] if Redis fails.
    pub async fn append(
        &self,
        key: &[u8],
        generation: u64,
        chunks: &[Bytes],
    ) -> Result<(), ClusterError> {
        let keys = self.keys(key);
        let mut invocation = self.scripts.append.key(keys.owner());
        invocation
            .key(keys.log(generation))
            .arg(self.token(generation))
            .arg(self.hold_ms());
        for chunk in chunks {
            invocation.arg(chunk.as_ref());
        }
        self.counted();
        let written: i64 = invocation.invoke_async(&mut self.commands.clone()).await?;
        if written == 1 {
            Ok(())
        } else {
            Err(ClusterError::Fenced { generation })
        }
    }

    /// Ends the log of `key`'s `generation` with `outcome`, in one round trip, if
    /// this instance still holds its lease: writes the end entry; if `cacheable`,
    /// writes the cache entry (every chunk of the log and the outcome) with
    /// [`ClusterConfig::cache_ttl`] and trims the cache to
    /// [`ClusterConfig::cache_capacity`]; deletes the lease; lets the log expire after
    /// [`ClusterConfig::log_retention`] (late followers can still replay it until then).
    ///
    /// # Errors
    /// [`ClusterError::Fenced`] if the lease is no longer this instance's (nothing
    /// written, nothing cached); [`ClusterError::Redis`] if Redis fails.
    pub async fn finish(
        &self,
        key: &[u8],
        generation: u64,
        outcome: &[u8],
        cacheable: bool,
    ) -> Result<(), ClusterError> {
        let keys = self.keys(key);
        self.counted();
        let written: i64 = self
            .scripts
            .finish
            .key(keys.owner())
            .key(keys.log(generation))
            .key(keys.gen())
            .key(keys.cache())
            .key(self.cache_index())
            .arg(self.token(generation))
            .arg(outcome)
            .arg(if cacheable { "1" } else { "0" })
            .arg(millis(self.config.cache_ttl))
            .arg(self.config.cache_capacity)
            .arg(millis(self.config.log_retention))
            .arg(self.hold_ms())
            .invoke_async(&mut self.commands.clone())
            .await?;
        if written == 1 {
            Ok(())
        } else {
            Err(ClusterError::Fenced { generation })
        }
    }

    fn cache_index(&self) -> String {
        format!("{}cache", self.config.prefix)
    }

    /// The cached result for `key`, if any (one round trip).
    ///
    /// # Errors
    /// [`ClusterError::Redis`] if Redis fails.
    pub async fn cache_get(&self, key: &[u8]) -> Result<Option<CachedResult>, ClusterError> {
        let keys = self.keys(key);
        self.counted();
        let items: Vec<Value> = redis::cmd("LRANGE")
            .arg(keys.cache())
            .arg(0)
            .arg(-1)
            .query_async(&mut self.commands.clone())
            .await?;
        if items.is_empty() {
            Ok(None)
        } else {
            cached_result(&items).map(Some)
        }
    }

    /// Stores `result` as the cached result for `key` (one round trip), with
    /// [`ClusterConfig::cache_ttl`], evicting the entries closest to expiry beyond
    /// [`ClusterConfig::cache_capacity`]. Owners do not need this: [`finish`](Self::finish)
    /// caches from the log. With a capacity of 0 nothing is stored.
    ///
    /// # Errors
    /// [`ClusterError::Redis`] if Redis fails.
    pub async fn cache_put(&self, key: &[u8], result: &CachedResult) -> Result<(), ClusterError> {
        let keys = self.keys(key);
        let mut invocation = self.scripts.cache_put.key(keys.cache());
        invocation
            .key(self.cache_index())
            .arg(millis(self.config.cache_ttl))
            .arg(self.config.cache_capacity)
            .arg(result.outcome.as_ref());
        for chunk in &result.chunks {
            invocation.arg(chunk.as_ref());
        }
        self.counted();
        let _: i64 = invocation.invoke_async(&mut self.commands.clone()).await?;
        Ok(())
    }

    /// Follows the log of `key`'s `generation` from `from` on a connection of its
    /// own (opened here): see [`Follower`].
    ///
    /// # Errors
    /// [`ClusterError::Redis`] if the connection cannot be opened.
    pub async fn follow(
        &self,
        key: &[u8],
        generation: u64,
        from: LogPosition,
    ) -> Result<Follower, ClusterError> {
        let keys = self.keys(key);
        let connection_config = AsyncConnectionConfig::new()
            .set_response_timeout(Some(self.config.response_timeout))
            .set_connection_timeout(Some(self.config.response_timeout));
        let connection = self
            .client
            .get_multiplexed_async_connection_with_config(&connection_config)
            .await?;
        Ok(Follower {
            cluster: self.clone(),
            connection,
            owner_key: keys.owner(),
            log_key: keys.log(generation),
            generation,
            position: from,
            buffered: VecDeque::new(),
            ended: false,
        })
    }
}

/// A reader of one flight's log on a Redis connection of its own (its `XREAD BLOCK`
/// never holds up anyone else's commands). It yields every entry from its start
/// position, in order, then the [`LogEntry::End`], then nothing.
///
/// While the log is idle it blocks for [`ClusterConfig::follow_poll`], then checks
/// that the owner still holds the lease: if the owner is gone without an end, it
/// fails with [`ClusterError::OwnerLost`]. A lost connection (Redis restarted or
/// unreachable) fails with [`ClusterError::Redis`] within
/// [`ClusterConfig::response_timeout`]. After an error or the end, it yields nothing.
pub struct Follower {
    cluster: Cluster,
    connection: MultiplexedConnection,
    owner_key: String,
    log_key: String,
    generation: u64,
    position: LogPosition,
    buffered: VecDeque<(LogPosition, LogEntry)>,
    ended: bool,
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower")
            .field("log_key", &self.log_key)
            .field("generation", &self.generation)
            .field("position", &self.position)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

/// Entries read per `XREAD`.
const READ_COUNT: usize = 256;

impl Follower {
    /// Just after the last entry this follower returned (a new follower from here
    /// continues where this one stopped).
    #[must_use]
    pub fn position(&self) -> &LogPosition {
        &self.position
    }

    /// The next entry: `Ok(Some(entry))`, `Ok(None)` after the end (or after an
    /// error was returned), or an error.
    ///
    /// # Errors
    /// [`ClusterError::OwnerLost`] if the owner's lease lapsed before the end;
    /// [`ClusterError::Redis`] if the connection failed (for example Redis
    /// restarted); [`ClusterError::Protocol`] on a malformed log entry.
    pub async fn next_entry(&mut self) -> Result<Option<LogEntry>, ClusterError> {
        let result = self.read().await;
        if !matches!(result, Ok(Some(_))) {
            self.ended = true;
        }
        result
    }

    async fn read(&mut self) -> Result<Option<LogEntry>, ClusterError> {
        loop {
            if let Some((position, entry)) = self.buffered.pop_front() {
                self.position = position;
                if matches!(entry, LogEntry::End(_)) {
                    self.buffered.clear();
                    // The next call returns None.
                    self.ended = true;
                }
                return Ok(Some(entry));
            }
            if self.ended {
                return Ok(None);
            }
            self.cluster.counted();
            let reply: Value = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(READ_COUNT)
                .arg("BLOCK")
                .arg(millis(self.cluster.config.follow_poll))
                .arg("STREAMS")
                .arg(&self.log_key)
                .arg(self.position.stream_id())
                .query_async(&mut self.connection)
                .await?;
            if matches!(reply, Value::Nil) {
                if !self.owner_alive_or_more().await? {
                    return Err(ClusterError::OwnerLost {
                        generation: self.generation,
                    });
                }
                continue;
            }
            self.buffer(&reply)?;
        }
    }

    /// After an idle wait: is the owner still there, or has the log grown meanwhile?
    async fn owner_alive_or_more(&mut self) -> Result<bool, ClusterError> {
        self.cluster.counted();
        let alive: i64 = self
            .cluster
            .scripts
            .follow_check
            .key(&self.owner_key)
            .key(&self.log_key)
            .arg(format!("{}/", self.generation))
            .arg(self.position.stream_id())
            .invoke_async(&mut self.connection)
            .await?;
        Ok(alive == 1)
    }

    /// Parses an `XREAD` reply (one stream) into the buffer.
    fn buffer(&mut self, reply: &Value) -> Result<(), ClusterError> {
        let entries = match reply {
            // RESP2: [[stream name, [entry...]]]
            Value::Array(streams) => match streams.as_slice() {
                [Value::Array(stream)] => match stream.as_slice() {
                    [_, Value::Array(entries)] => entries,
                    _ => return Err(protocol("XREAD stream", reply)),
                },
                _ => return Err(protocol("XREAD", reply)),
            },
            // RESP3: {stream name: [entry...]}
            Value::Map(streams) => match streams.as_slice() {
                [(_, Value::Array(entries))] => entries,
                _ => return Err(protocol("XREAD", reply)),
            },
            _ => return Err(protocol("XREAD", reply)),
        };
        for entry in entries {
            let Value::Array(parts) = entry else {
                return Err(protocol("stream entry", entry));
            };
            let [id, Value::Array(fields)] = parts.as_slice() else {
                return Err(protocol("stream entry", entry));
            };
            let id = text(id).ok_or_else(|| protocol("stream entry id", id))?;
            let mut chunks = Vec::with_capacity(fields.len() / 2);
            let mut end = None;
            for pair in fields.chunks(2) {
                let [name, value] = pair else {
                    return Err(protocol("stream entry fields", entry));
                };
                let value = bulk(value).ok_or_else(|| protocol("stream field", value))?;
                match text(name).as_deref() {
                    Some("c") => chunks.push(value),
                    Some("end") => end = Some(value),
                    _ => return Err(protocol("stream field name", name)),
                }
            }
            let entry = match end {
                Some(outcome) if chunks.is_empty() => LogEntry::End(outcome),
                None => LogEntry::Chunks(chunks),
                Some(_) => return Err(protocol("stream entry with chunks and end", entry)),
            };
            self.buffered.push_back((LogPosition(id), entry));
        }
        Ok(())
    }

    /// This follower as a [`Stream`] of entries; it ends after the
    /// [`LogEntry::End`] or after the first error.
    pub fn into_stream(self) -> impl Stream<Item = Result<LogEntry, ClusterError>> + Send {
        futures_lite::stream::unfold(self, |mut follower| async move {
            match follower.next_entry().await {
                Ok(Some(entry)) => Some((Ok(entry), follower)),
                Ok(None) => None,
                Err(error) => Some((Err(error), follower)),
            }
        })
    }
}
