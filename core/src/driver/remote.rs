//! Cluster mode's tasks (see [`super::cluster`] for the seam and the
//! [module docs](super) for the concurrency): a claim task per
//! [`Action::Claim`](crate::Action::Claim), a follow task per follower flight,
//! and a publisher task per owner flight. Each runs outside the manager's lock
//! and reports back through [`Shared::with`], one input at a time, exactly as
//! the preparation and upstream tasks in `work.rs` do.
//!
//! The publisher task is fed by the dispatch through an `async-channel` queue:
//! `Publish` and `Release` are pushed under the lock, in the order the machine
//! emitted them (so two inputs on two threads cannot swap them), and the task
//! carries them out strictly in that order, one write at a time, renewing the
//! lease between them. The queue is unbounded on purpose: what it can hold is
//! bounded by the core (at most `max_response_bytes` of chunks, one release),
//! and a push must never wait under the lock.

use core::panic::AssertUnwindSafe;
use std::sync::Arc;

use bytes::Bytes;
use futures_lite::future::{poll_once, FutureExt as _};
use futures_lite::StreamExt as _;

use super::cluster::{Claim, Coordinator, Publisher, RemoteEvent, RemoteLog};
use super::dispatch::After;
use super::shared::Shared;
use super::signal::Signal;
use super::Runtime;
use crate::{Failure, FlightId, Key, Outcome, Role};

/// One write of an owner flight, queued for its publisher task.
pub(super) enum PublishOp {
    /// `Action::Publish`: append these chunks.
    Append(Vec<Bytes>),
    /// `Action::Release`: end the log and give the lease back.
    Finish {
        /// How the flight ended.
        outcome: Outcome,
        /// Whether the result may go in the shared cache.
        cacheable: bool,
    },
}

/// The sending side of an owner flight's publish queue, kept with the flight.
pub(super) type PublishQueue = async_channel::Sender<PublishOp>;

/// Appends queued at once are sent as one write, and remote chunks ready at
/// once are reported as one input, up to this many chunks.
const MAX_APPEND: usize = 1024;

impl<P: Send + 'static, R: Runtime> Shared<P, R> {
    /// Carries out `Action::Claim`: starts the claim task (spawned once the
    /// lock is released). `false` if this manager has no coordinator (cluster
    /// mode set without one).
    pub(super) fn start_claim(&self, flight: FlightId, key: Key, after: &mut After) -> bool {
        let Some(coordinator) = self.coordinator.clone() else {
            return false;
        };
        let shared = self.arc();
        let task = async move { run_claim(shared, coordinator, flight, key).await };
        after.spawn.push(self.counted(task));
        true
    }
}

/// Asks the coordinator and reports its answer with `handle_claimed`; starts the
/// owner's publisher task or the follower's follow task.
async fn run_claim<P: Send + 'static, R: Runtime>(
    shared: Arc<Shared<P, R>>,
    coordinator: Arc<dyn Coordinator>,
    flight: FlightId,
    key: Key,
) {
    // A coordinator that panics is one that cannot answer. At shutdown the
    // claim is dropped unanswered (the machine ended the flight already; a
    // lease won meanwhile lapses by itself).
    let claim = async move {
        let answer = AssertUnwindSafe(async move { coordinator.claim(key).await })
            .catch_unwind()
            .await;
        Some(answer.unwrap_or_else(|_| Claim::Unavailable("the coordinator panicked".into())))
    }
    .or(async {
        shared.closing.wait().await;
        None
    })
    .await;
    let Some(claim) = claim else {
        return;
    };
    match claim {
        Claim::Owner(publisher) => {
            let publisher: Arc<dyn Publisher> = Arc::from(publisher);
            let (queue, writes) = async_channel::unbounded();
            let owner = shared.with(|g, now| {
                let owner = g.machine.handle_claimed(now, flight, Role::Owner).is_ok();
                if owner {
                    g.set_publish_queue(flight, queue);
                }
                owner
            });
            if owner {
                let task = run_publisher(Arc::clone(&shared), flight, publisher, writes);
                shared.spawn(task);
            } else {
                // The flight ended while claiming: give the lease back unused
                // (a refusal means it is gone already).
                let _ = publisher.finish(Outcome::Cancelled, false).await;
            }
        }
        Claim::Follower(log) => {
            let stop = Arc::new(Signal::default());
            let follower = shared.with(|g, now| {
                let follower = g
                    .machine
                    .handle_claimed(now, flight, Role::Follower)
                    .is_ok();
                if follower {
                    g.set_stop(flight, Arc::clone(&stop));
                }
                follower
            });
            if follower {
                let task = run_follower(Arc::clone(&shared), flight, log, Arc::clone(&stop));
                shared.spawn(Shared::<P, R>::stoppable(stop, task));
            }
        }
        Claim::Cached(chunks) => shared.with(|g, now| {
            let _ = g.machine.handle_claimed(now, flight, Role::Cached(chunks));
        }),
        Claim::Unavailable(reason) => shared.with(|g, now| {
            let _ = g
                .machine
                .handle_claimed(now, flight, Role::Unavailable(reason));
        }),
    }
}

/// Reads a follower flight's remote log and reports it: chunks with
/// `handle_chunks`, the end with `handle_remote_end`, a lost owner with
/// `handle_owner_lost`, a failed log as a remote `Failed(Cluster(reason))`.
/// Stopped by the flight's `Abort` (its stop signal), like an upstream.
async fn run_follower<P: Send + 'static, R: Runtime>(
    shared: Arc<Shared<P, R>>,
    flight: FlightId,
    mut log: RemoteLog,
    stop: Arc<Signal>,
) {
    // An event read while merging ready chunks, reported next.
    let mut next: Option<RemoteEvent> = None;
    loop {
        if stop.is_set() {
            return;
        }
        let mut event = match next.take() {
            Some(event) => event,
            None => log.next().await.unwrap_or_else(ended_without_end),
        };
        if let RemoteEvent::Chunks(chunks) = &mut event {
            // Chunks that are ready already go to the machine under one lock.
            while chunks.len() < MAX_APPEND {
                match poll_once(log.next()).await {
                    Some(Some(RemoteEvent::Chunks(more))) => chunks.extend(more),
                    Some(other) => {
                        next = Some(other.unwrap_or_else(ended_without_end));
                        break;
                    }
                    None => break,
                }
            }
        }
        let over = shared.with(|g, now| match event {
            RemoteEvent::Chunks(chunks) => {
                let offered = chunks.len();
                // Not all accepted: the flight ended (over the limit) or is stale.
                !matches!(g.machine.handle_chunks(now, flight, chunks), Ok(n) if n == offered)
            }
            RemoteEvent::End(outcome) => {
                let _ = g.machine.handle_remote_end(now, flight, outcome);
                true
            }
            RemoteEvent::OwnerLost => {
                let _ = g.machine.handle_owner_lost(now, flight);
                true
            }
            RemoteEvent::Failed(reason) => {
                let outcome = Outcome::Failed(Failure::Cluster(reason));
                let _ = g.machine.handle_remote_end(now, flight, outcome);
                true
            }
        });
        if over {
            return;
        }
    }
}

fn ended_without_end() -> RemoteEvent {
    RemoteEvent::Failed("the remote log ended without an end".to_owned())
}

/// What the publisher task does next.
enum Step {
    Write(PublishOp),
    Renew,
    /// The flight ended and every queued write is done.
    Closed,
}

/// Carries out an owner flight's writes in order and renews its lease every
/// [`Publisher::renew_every`] meanwhile. A refused append or renewal is
/// reported with `handle_fenced` and ends the task (nothing more is written);
/// the release is the last write. Ends when the flight's queue is closed
/// (`FlightEnded` dropped its sender) and empty.
async fn run_publisher<P: Send + 'static, R: Runtime>(
    shared: Arc<Shared<P, R>>,
    flight: FlightId,
    publisher: Arc<dyn Publisher>,
    writes: async_channel::Receiver<PublishOp>,
) {
    let every = publisher.renew_every();
    let mut renew_at = shared.runtime.now().saturating_add(every);
    // A write taken from the queue while merging appends, done next.
    let mut next: Option<PublishOp> = None;
    loop {
        let step = match next.take() {
            Some(op) => Step::Write(op),
            None => {
                async { writes.recv().await.map_or(Step::Closed, Step::Write) }
                    .or(async {
                        shared.runtime.sleep_until(renew_at).await;
                        Step::Renew
                    })
                    .await
            }
        };
        let written = match step {
            Step::Closed => return,
            Step::Renew => {
                renew_at = shared.runtime.now().saturating_add(every);
                publisher.renew().await
            }
            Step::Write(PublishOp::Append(mut chunks)) => {
                // Appends already queued go out in the same write, in order.
                while chunks.len() < MAX_APPEND {
                    match writes.try_recv() {
                        Ok(PublishOp::Append(more)) => chunks.extend(more),
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                publisher.append(chunks).await
            }
            Step::Write(PublishOp::Finish { outcome, cacheable }) => {
                // The flight has ended: a refused release changes nothing here
                // (followers elsewhere see the lease lapse).
                let _ = publisher.finish(outcome, cacheable).await;
                return;
            }
        };
        if let Err(lost) = written {
            shared.with(|g, now| {
                let _ = g.machine.handle_fenced(now, flight, lost.0);
            });
            return;
        }
    }
}
