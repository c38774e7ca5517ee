//! Cluster mode's seam: what the driver needs from a cluster coordinator
//! (Redis in `flightdeck_tokio::cluster::RedisCoordinator`, or the in-process
//! [`MemoryCoordinator`] for tests), and nothing more.
//!
//! The core decides ([`crate::cluster`]): with
//! [`Config::cluster`](crate::Config::cluster) a new flight first **claims** its
//! key ([`Action::Claim`](crate::Action::Claim)). The driver asks the
//! [`Coordinator`] and reports its [`Claim`] as a [`Role`](crate::Role):
//!
//! - [`Claim::Owner`]: this instance runs the upstream. The driver keeps the
//!   [`Publisher`] with the flight and, in one task per owner flight, appends
//!   every batch the core accepted ([`Action::Publish`](crate::Action::Publish)),
//!   renews the lease every [`Publisher::renew_every`], and finishes the log on
//!   [`Action::Release`](crate::Action::Release), strictly in that order. A
//!   refused write ([`Lost`]) is reported with
//!   [`Machine::handle_fenced`](crate::Machine::handle_fenced).
//! - [`Claim::Follower`]: another instance runs it. The driver reads the
//!   [`RemoteLog`] in a task of its own and reports each [`RemoteEvent`] as an
//!   input (chunks, the remote end, the owner lost, a failure).
//! - [`Claim::Cached`]: the cluster's cache held the result.
//! - [`Claim::Unavailable`]: the coordinator could not answer.
//!
//! Why a trait and not Redis calls in the driver: the driver is runtime- and
//! transport-independent (the core's `driver` feature pulls no Redis client),
//! and the same wiring is tested on both runtimes with [`MemoryCoordinator`],
//! without a Redis server.

use core::pin::Pin;
use core::time::Duration;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use event_listener::Event;
use futures_core::Stream;

use super::BoxFuture;
use crate::{Key, Outcome};

/// Who runs a key across instances: claims a key for a flight on this instance.
///
/// One coordinator is shared (as an `Arc`) by every flight of a manager; in the
/// tests, one [`MemoryCoordinator`] is shared by several managers.
pub trait Coordinator: Send + Sync + 'static {
    /// Claims `key` for a flight on this instance: one round trip. The future
    /// never fails: a coordinator that cannot answer returns
    /// [`Claim::Unavailable`] with its reason.
    fn claim(&self, key: Key) -> BoxFuture<Claim>;
}

/// A coordinator's answer to [`Coordinator::claim`].
pub enum Claim {
    /// This instance holds the key's lease: it runs the upstream and publishes
    /// through this publisher. Dropping the publisher without
    /// [`Publisher::finish`] leaves the lease to lapse (followers elsewhere see
    /// the owner lost).
    Owner(Box<dyn Publisher>),
    /// Another instance owns the key: its log, from the first chunk.
    Follower(RemoteLog),
    /// The cluster's cache holds the completed result: these chunks, in order.
    Cached(Vec<Bytes>),
    /// The coordinator could not answer (unreachable, refused); the reason is
    /// what the flight's members read in
    /// [`Failure::Cluster`](crate::Failure::Cluster).
    Unavailable(String),
}

impl core::fmt::Debug for Claim {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Claim::Owner(_) => f.write_str("Owner"),
            Claim::Follower(_) => f.write_str("Follower"),
            Claim::Cached(chunks) => f.debug_tuple("Cached").field(&chunks.len()).finish(),
            Claim::Unavailable(reason) => f.debug_tuple("Unavailable").field(reason).finish(),
        }
    }
}

/// A follower's view of the owner's log: every event from the log's start, in
/// order. It should end after [`RemoteEvent::End`], [`RemoteEvent::OwnerLost`]
/// or [`RemoteEvent::Failed`]; the driver stops reading there anyway (and treats
/// a log that ends without one of them as failed).
pub type RemoteLog = Pin<Box<dyn Stream<Item = RemoteEvent> + Send>>;

/// What an owner instance does with its claim. Every write is fenced: once the
/// lease is not this owner's any more, it is refused with [`Lost`] and changes
/// nothing.
///
/// The driver calls these from one task per owner flight, one at a time and in
/// the order the core decided (never two at once).
pub trait Publisher: Send + Sync + 'static {
    /// Appends a batch of chunks to the shared log, after those appended before.
    fn append(&self, chunks: Vec<Bytes>) -> BoxFuture<Result<(), Lost>>;
    /// Extends the lease.
    fn renew(&self) -> BoxFuture<Result<(), Lost>>;
    /// How often the driver calls [`Publisher::renew`] while the flight lives
    /// (a lease's third, so one lost renewal does not lose the lease).
    fn renew_every(&self) -> Duration;
    /// Ends the shared log with `outcome`, stores the result in the shared
    /// cache if `cacheable`, and gives the lease back.
    fn finish(&self, outcome: Outcome, cacheable: bool) -> BoxFuture<Result<(), Lost>>;
}

/// One event of a followed log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemoteEvent {
    /// A batch of chunks, in log order.
    Chunks(Vec<Bytes>),
    /// The owner ended its flight with this outcome; nothing follows.
    End(Outcome),
    /// The owner is gone (its lease lapsed) before the end of the log.
    OwnerLost,
    /// The log could not be read any more (the coordinator failed), with the
    /// reason members read in [`Failure::Cluster`](crate::Failure::Cluster).
    Failed(String),
}

/// An owner's write was refused: its lease is lost (it lapsed, or the
/// coordinator lost it, or the coordinator cannot be reached), with the reason.
#[derive(Clone, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[error("lease lost: {0}")]
pub struct Lost(pub String);

/// An in-process [`Coordinator`]: several managers in one process that share
/// one (behind an `Arc`) coalesce and cache across each other exactly as
/// instances on Redis do, without a server. For tests and examples.
///
/// - One owner per key: the first claim of a key with no live owner and no
///   cached result becomes the owner (a new generation); later claims follow it.
/// - Followers read the owner's log from its first event, then live.
/// - The lease is the owner's [`Publisher`]: it is held until
///   [`Publisher::finish`], and lost when the publisher is dropped without it
///   (its manager's runtime went away) or [`MemoryCoordinator::revoke`]d:
///   followers then read [`RemoteEvent::OwnerLost`] after what they read, and
///   the old owner's writes are refused with [`Lost`]. Time plays no part: a
///   renewal succeeds while the lease is held.
/// - A completed, cacheable result is cached (no expiry, at most
///   `cache_capacity` keys, the oldest evicted first).
#[derive(Debug, Default)]
pub struct MemoryCoordinator {
    inner: Arc<Memory>,
}

#[derive(Debug, Default)]
struct Memory {
    state: Mutex<MemoryState>,
}

#[derive(Debug, Default)]
struct MemoryState {
    /// The live owner's log of each key.
    live: BTreeMap<Key, Arc<MemoryLog>>,
    /// Cached results, with the order they were stored in.
    cache: BTreeMap<Key, (u64, Vec<Bytes>)>,
    cache_capacity: usize,
    stored: u64,
    generations: u64,
}

/// One generation's log.
#[derive(Debug, Default)]
struct MemoryLog {
    generation: u64,
    state: Mutex<LogState>,
    /// Notified on every change of `state`.
    changed: Event,
}

#[derive(Debug, Default)]
struct LogState {
    batches: Vec<Vec<Bytes>>,
    /// How it ended: by the owner's finish, or by losing the lease.
    end: Option<RemoteEvent>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics under these locks; recover rather than propagate.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MemoryCoordinator {
    /// A coordinator with an empty cache of at most 1024 keys.
    #[must_use]
    pub fn new() -> Self {
        Self::with_cache_capacity(1024)
    }

    /// A coordinator whose cache keeps at most `capacity` keys (0: no cache).
    #[must_use]
    pub fn with_cache_capacity(capacity: usize) -> Self {
        let coordinator = MemoryCoordinator::default();
        lock(&coordinator.inner.state).cache_capacity = capacity;
        coordinator
    }

    /// Takes the lease of `key`'s live owner away, as a lapsed lease does: its
    /// followers read [`RemoteEvent::OwnerLost`], its next write is refused.
    /// Returns whether there was a live owner.
    pub fn revoke(&self, key: &Key) -> bool {
        let log = lock(&self.inner.state).live.remove(key);
        match log {
            Some(log) => {
                log.lose();
                true
            }
            None => false,
        }
    }

    /// Keys with a live owner right now.
    #[must_use]
    pub fn live_keys(&self) -> Vec<Key> {
        lock(&self.inner.state).live.keys().cloned().collect()
    }

    /// The cached result of `key`, if any.
    #[must_use]
    pub fn cached(&self, key: &Key) -> Option<Vec<Bytes>> {
        lock(&self.inner.state)
            .cache
            .get(key)
            .map(|(_, chunks)| chunks.clone())
    }
}

impl Coordinator for MemoryCoordinator {
    fn claim(&self, key: Key) -> BoxFuture<Claim> {
        let mut state = lock(&self.inner.state);
        let claim = if let Some((_, chunks)) = state.cache.get(&key) {
            Claim::Cached(chunks.clone())
        } else if let Some(log) = state.live.get(&key) {
            Claim::Follower(follow(Arc::clone(log)))
        } else {
            state.generations += 1;
            let log = Arc::new(MemoryLog {
                generation: state.generations,
                ..MemoryLog::default()
            });
            state.live.insert(key.clone(), Arc::clone(&log));
            Claim::Owner(Box::new(MemoryPublisher {
                memory: Arc::clone(&self.inner),
                key,
                log,
            }))
        };
        drop(state);
        Box::pin(core::future::ready(claim))
    }
}

impl MemoryLog {
    /// Ends the log as a lapsed lease does (if it has not ended).
    fn lose(&self) {
        let mut state = lock(&self.state);
        if state.end.is_none() {
            state.end = Some(RemoteEvent::OwnerLost);
        }
        drop(state);
        self.changed.notify(usize::MAX);
    }
}

/// A follower's reader of `log`, from its first batch.
fn follow(log: Arc<MemoryLog>) -> RemoteLog {
    Box::pin(futures_lite::stream::unfold(
        (log, 0_usize, false),
        |(log, next, over)| async move {
            if over {
                return None;
            }
            loop {
                let listener = log.changed.listen();
                {
                    let state = lock(&log.state);
                    if let Some(batch) = state.batches.get(next) {
                        let event = RemoteEvent::Chunks(batch.clone());
                        drop(state);
                        return Some((event, (log, next + 1, false)));
                    }
                    if let Some(end) = &state.end {
                        let event = end.clone();
                        drop(state);
                        return Some((event, (log, next, true)));
                    }
                }
                listener.await;
            }
        },
    ))
}

/// The owner's side of a [`MemoryCoordinator`] claim; the lease is lost when it
/// is dropped without [`Publisher::finish`].
struct MemoryPublisher {
    memory: Arc<Memory>,
    key: Key,
    log: Arc<MemoryLog>,
}

impl MemoryPublisher {
    /// Whether this publisher's generation still holds the key.
    fn holds(&self, state: &MemoryState) -> bool {
        state
            .live
            .get(&self.key)
            .is_some_and(|log| log.generation == self.log.generation)
    }

    fn lost(&self) -> Lost {
        Lost(format!(
            "generation {} no longer holds the lease",
            self.log.generation
        ))
    }
}

impl Publisher for MemoryPublisher {
    fn append(&self, chunks: Vec<Bytes>) -> BoxFuture<Result<(), Lost>> {
        let state = lock(&self.memory.state);
        let result = if self.holds(&state) {
            lock(&self.log.state).batches.push(chunks);
            Ok(())
        } else {
            Err(self.lost())
        };
        drop(state);
        self.log.changed.notify(usize::MAX);
        Box::pin(core::future::ready(result))
    }

    fn renew(&self) -> BoxFuture<Result<(), Lost>> {
        let held = self.holds(&lock(&self.memory.state));
        let result = if held { Ok(()) } else { Err(self.lost()) };
        Box::pin(core::future::ready(result))
    }

    fn renew_every(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn finish(&self, outcome: Outcome, cacheable: bool) -> BoxFuture<Result<(), Lost>> {
        let mut state = lock(&self.memory.state);
        let result = if self.holds(&state) {
            state.live.remove(&self.key);
            let mut log = lock(&self.log.state);
            if cacheable && outcome == Outcome::Completed && state.cache_capacity > 0 {
                let chunks: Vec<Bytes> = log.batches.iter().flatten().cloned().collect();
                state.stored += 1;
                let stored = state.stored;
                state.cache.insert(self.key.clone(), (stored, chunks));
                while state.cache.len() > state.cache_capacity {
                    let oldest = state
                        .cache
                        .iter()
                        .min_by_key(|(_, (stored, _))| *stored)
                        .map(|(key, _)| key.clone());
                    if let Some(oldest) = oldest {
                        state.cache.remove(&oldest);
                    }
                }
            }
            log.end = Some(RemoteEvent::End(outcome));
            Ok(())
        } else {
            Err(self.lost())
        };
        drop(state);
        self.log.changed.notify(usize::MAX);
        Box::pin(core::future::ready(result))
    }
}

impl Drop for MemoryPublisher {
    fn drop(&mut self) {
        let mut state = lock(&self.memory.state);
        if self.holds(&state) {
            state.live.remove(&self.key);
        }
        drop(state);
        // Ends the log as lost unless `finish` ended it.
        self.log.lose();
    }
}

#[cfg(test)]
mod tests {
    use futures_lite::future::block_on;
    use futures_lite::StreamExt as _;

    use super::*;

    fn chunks(words: &[&'static str]) -> Vec<Bytes> {
        words
            .iter()
            .map(|w| Bytes::from_static(w.as_bytes()))
            .collect()
    }

    fn owner(claim: Claim) -> Box<dyn Publisher> {
        match claim {
            Claim::Owner(publisher) => publisher,
            other => panic!("expected Owner, got {other:?}"),
        }
    }

    fn follower(claim: Claim) -> RemoteLog {
        match claim {
            Claim::Follower(log) => log,
            other => panic!("expected Follower, got {other:?}"),
        }
    }

    #[test]
    fn one_owner_per_key_followers_replay_then_the_cache_answers() {
        block_on(async {
            let coordinator = MemoryCoordinator::new();
            let key = Key::from("k");
            let publisher = owner(coordinator.claim(key.clone()).await);
            publisher.append(chunks(&["a", "b"])).await.unwrap();
            // A late follower replays from the first batch.
            let mut log = follower(coordinator.claim(key.clone()).await);
            assert_eq!(
                log.next().await,
                Some(RemoteEvent::Chunks(chunks(&["a", "b"])))
            );
            publisher.append(chunks(&["c"])).await.unwrap();
            publisher.renew().await.unwrap();
            publisher.finish(Outcome::Completed, true).await.unwrap();
            assert_eq!(log.next().await, Some(RemoteEvent::Chunks(chunks(&["c"]))));
            assert_eq!(log.next().await, Some(RemoteEvent::End(Outcome::Completed)));
            assert_eq!(log.next().await, None);
            match coordinator.claim(key.clone()).await {
                Claim::Cached(cached) => assert_eq!(cached, chunks(&["a", "b", "c"])),
                other => panic!("expected Cached, got {other:?}"),
            }
            assert!(coordinator.live_keys().is_empty());
        });
    }

    #[test]
    fn an_uncacheable_or_failed_result_is_not_cached() {
        block_on(async {
            let coordinator = MemoryCoordinator::new();
            for (key, outcome, cacheable) in [
                ("u", Outcome::Completed, false),
                (
                    "f",
                    Outcome::Failed(crate::Failure::Upstream("x".into())),
                    true,
                ),
            ] {
                let publisher = owner(coordinator.claim(Key::from(key)).await);
                publisher.finish(outcome, cacheable).await.unwrap();
                assert_eq!(coordinator.cached(&Key::from(key)), None);
                // The next claim owns a new generation.
                drop(owner(coordinator.claim(Key::from(key)).await));
            }
        });
    }

    #[test]
    fn a_dropped_publisher_loses_the_lease() {
        block_on(async {
            let coordinator = MemoryCoordinator::new();
            let key = Key::from("k");
            let publisher = owner(coordinator.claim(key.clone()).await);
            publisher.append(chunks(&["a"])).await.unwrap();
            let mut log = follower(coordinator.claim(key.clone()).await);
            drop(publisher);
            assert_eq!(log.next().await, Some(RemoteEvent::Chunks(chunks(&["a"]))));
            assert_eq!(log.next().await, Some(RemoteEvent::OwnerLost));
            assert_eq!(log.next().await, None);
            // The key is free again.
            drop(owner(coordinator.claim(key).await));
        });
    }

    #[test]
    fn a_revoked_owner_is_fenced_and_a_new_owner_is_not_disturbed() {
        block_on(async {
            let coordinator = MemoryCoordinator::new();
            let key = Key::from("k");
            let old = owner(coordinator.claim(key.clone()).await);
            let mut log = follower(coordinator.claim(key.clone()).await);
            assert!(coordinator.revoke(&key));
            assert!(!coordinator.revoke(&key));
            assert_eq!(log.next().await, Some(RemoteEvent::OwnerLost));
            let new = owner(coordinator.claim(key.clone()).await);
            assert!(old.append(chunks(&["late"])).await.is_err());
            assert!(old.renew().await.is_err());
            assert!(old.finish(Outcome::Completed, true).await.is_err());
            drop(old); // dropping the fenced publisher leaves the new owner alone
            assert_eq!(coordinator.live_keys(), vec![key.clone()]);
            new.finish(Outcome::Completed, true).await.unwrap();
            assert_eq!(coordinator.cached(&key), Some(Vec::new()));
        });
    }

    #[test]
    fn the_cache_keeps_at_most_its_capacity_oldest_out_first() {
        block_on(async {
            let coordinator = MemoryCoordinator::with_cache_capacity(2);
            for key in ["a", "b", "c"] {
                let publisher = owner(coordinator.claim(Key::from(key)).await);
                publisher.finish(Outcome::Completed, true).await.unwrap();
            }
            assert_eq!(coordinator.cached(&Key::from("a")), None);
            assert!(coordinator.cached(&Key::from("b")).is_some());
            assert!(coordinator.cached(&Key::from("c")).is_some());
        });
    }
}
