//! The driver's [`Coordinator`] on Redis: cluster mode for
//! [`Manager::with_coordinator`](flightdeck_core::driver::Manager::with_coordinator)
//! and [`Manager::new_clustered`](flightdeck_core::driver::Manager::new_clustered)
//! over a [`Cluster`] handle.
//!
//! Each driver call is one operation of the Redis layer: a claim is
//! [`Cluster::claim`] (one round trip; a follower then opens its reading
//! connection with [`Cluster::follow`]), an owner's append, renewal and finish
//! are [`Cluster::append`], [`Cluster::renew`] and [`Cluster::finish`] with the
//! claim's generation (fenced by Redis). The outcome at the end of a log is
//! encoded with `postcard` (every instance of a cluster runs the same version).
//!
//! Errors are values: a claim that fails is [`Claim::Unavailable`] with the
//! error's text (a claim that fails on a dropped connection is asked once
//! more, on the reconnected one); a write that fails or is fenced is [`Lost`] (a Redis error
//! counts as lost: a write whose reply was lost cannot be replayed blindly); a
//! follower's read that fails is [`RemoteEvent::Failed`], and a lapsed owner
//! [`RemoteEvent::OwnerLost`].

use std::time::Duration;

use flightdeck_core::driver::{
    BoxFuture, Claim, Coordinator, Lost, Publisher, RemoteEvent, RemoteLog,
};
use flightdeck_core::{Bytes, Key, Outcome};
use futures_lite::StreamExt as _;

use super::{Claim as RedisClaim, Cluster, ClusterError, LogEntry, LogPosition};

/// A [`Coordinator`] on Redis, over a connected [`Cluster`] handle.
///
/// ```no_run
/// use std::sync::Arc;
/// use flightdeck_tokio::cluster::{Cluster, ClusterConfig, RedisCoordinator};
/// use flightdeck_tokio::{Bytes, Config, Manager, Preparation};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let cluster = Cluster::connect("redis://127.0.0.1:6379", ClusterConfig::default()).await?;
/// let manager: Manager<String> = Manager::new_clustered(
///     Config::default(),
///     |prompt: String| async move { Ok::<_, std::io::Error>(Preparation::cacheable(prompt)) },
///     |prompt: String| async move {
///         let chunks = vec![Ok::<_, std::io::Error>(Bytes::from(prompt))];
///         Ok::<_, std::io::Error>(futures_lite::stream::iter(chunks))
///     },
///     Arc::new(RedisCoordinator::new(cluster)),
/// )?;
/// # drop(manager);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct RedisCoordinator {
    cluster: Cluster,
}

impl RedisCoordinator {
    /// A coordinator over `cluster` (shared by every flight of the manager).
    #[must_use]
    pub fn new(cluster: Cluster) -> Self {
        RedisCoordinator { cluster }
    }

    /// The Redis handle (for its [`Cluster::round_trips`] counter and settings).
    #[must_use]
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }
}

/// The outcome as written at the end of a log.
fn encode(outcome: &Outcome) -> Vec<u8> {
    // Serializing a plain enum into a Vec cannot fail; an empty end would
    // decode as a failure on followers rather than panic here.
    postcard::to_allocvec(outcome).unwrap_or_default()
}

/// The outcome at the end of a log; a malformed one is a failure of the log.
fn decode(bytes: &[u8]) -> RemoteEvent {
    match postcard::from_bytes::<Outcome>(bytes) {
        Ok(outcome) => RemoteEvent::End(outcome),
        Err(e) => RemoteEvent::Failed(format!("malformed outcome at the end of the log: {e}")),
    }
}

fn remote_event(entry: Result<LogEntry, ClusterError>) -> RemoteEvent {
    match entry {
        Ok(LogEntry::Chunks(chunks)) => RemoteEvent::Chunks(chunks),
        Ok(LogEntry::End(outcome)) => decode(&outcome),
        Err(ClusterError::OwnerLost { .. }) => RemoteEvent::OwnerLost,
        Err(e) => RemoteEvent::Failed(e.to_string()),
    }
}

impl Coordinator for RedisCoordinator {
    fn claim(&self, key: Key) -> BoxFuture<Claim> {
        let cluster = self.cluster.clone();
        Box::pin(async move {
            let key = Bytes::copy_from_slice(key.as_bytes());
            let mut answer = cluster.claim(&key).await;
            if matches!(&answer, Err(ClusterError::Redis(e)) if e.is_connection_dropped() || e.is_io_error())
            {
                // The command connection reconnects by itself after a drop (a
                // Redis restart), but the first command after it fails. A
                // claim may be asked again: if the lost reply had taken the
                // lease, this claim follows that (silent) generation, sees its
                // owner lost after one lease, and claims again (rule 28).
                answer = cluster.claim(&key).await;
            }
            match answer {
                Ok(RedisClaim::Owner { generation }) => Claim::Owner(Box::new(RedisPublisher {
                    cluster,
                    key,
                    generation,
                })),
                Ok(RedisClaim::Follower { generation, .. }) => {
                    match cluster.follow(&key, generation, LogPosition::START).await {
                        Ok(follower) => {
                            let log: RemoteLog = Box::pin(follower.into_stream().map(remote_event));
                            Claim::Follower(log)
                        }
                        Err(e) => Claim::Unavailable(e.to_string()),
                    }
                }
                Ok(RedisClaim::Cached(result)) => Claim::Cached(result.chunks),
                Err(e) => Claim::Unavailable(e.to_string()),
            }
        })
    }
}

/// An owner's writes for one generation of one key.
struct RedisPublisher {
    cluster: Cluster,
    key: Bytes,
    generation: u64,
}

fn lost(error: &ClusterError) -> Lost {
    Lost(error.to_string())
}

impl Publisher for RedisPublisher {
    fn append(&self, chunks: Vec<Bytes>) -> BoxFuture<Result<(), Lost>> {
        let (cluster, key, generation) = (self.cluster.clone(), self.key.clone(), self.generation);
        Box::pin(async move {
            cluster
                .append(&key, generation, &chunks)
                .await
                .map_err(|e| lost(&e))
        })
    }

    fn renew(&self) -> BoxFuture<Result<(), Lost>> {
        let (cluster, key, generation) = (self.cluster.clone(), self.key.clone(), self.generation);
        Box::pin(async move {
            match cluster.renew(&key, generation).await {
                Ok(true) => Ok(()),
                Ok(false) => Err(lost(&ClusterError::Fenced { generation })),
                Err(e) => Err(lost(&e)),
            }
        })
    }

    fn renew_every(&self) -> Duration {
        self.cluster.config().lease / 3
    }

    fn finish(&self, outcome: Outcome, cacheable: bool) -> BoxFuture<Result<(), Lost>> {
        let (cluster, key, generation) = (self.cluster.clone(), self.key.clone(), self.generation);
        Box::pin(async move {
            cluster
                .finish(&key, generation, &encode(&outcome), cacheable)
                .await
                .map_err(|e| lost(&e))
        })
    }
}
