//! Carrying out the machine's actions: the one function that turns each
//! [`Action`] into work for the runtime (spawn a preparation, an upstream, a
//! claim; stop a task; queue an owner's write; read for a woken result
//! stream; drop a flight's data), in the machine's order and under the lock, deciding nothing. What
//! must not happen under the lock (notifying tasks, dropping the user's values)
//! is collected in [`After`] and done by `Shared::with` once the lock is
//! released. See the [module docs](super) for who may touch what.

use std::any::Any;
use std::sync::Arc;
use std::task::Waker;

use bytes::Bytes;

use super::inbox::Inbox;
use super::remote::PublishOp;
use super::shared::{Shared, State};
use super::signal::Signal;
use super::traced::TracedMachine;
use super::{BoxFuture, Runtime};
use crate::{Action, Borrowed, Failure, FlightId, Readiness, RequestId, Role, StaleFlight, Time};

/// What is done after the lock is released.
#[derive(Default)]
pub(super) struct After {
    /// Tasks counted under the lock, to spawn.
    pub(super) spawn: Vec<BoxFuture<()>>,
    /// Stop signals set under the lock, to notify.
    pub(super) stop: Vec<Arc<Signal>>,
    /// The user's values to drop (their `Drop` may be slow or take locks).
    pub(super) drop: Vec<Box<dyn Any + Send>>,
    /// Result streams with new deliveries in their inbox, to wake.
    pub(super) wake: Vec<Waker>,
    /// The timer's target moved earlier.
    pub(super) timer: bool,
}

impl<P: Send + 'static, R: Runtime> Shared<P, R> {
    /// Carries out the machine's actions, in order, deciding nothing.
    pub(super) fn dispatch(&self, g: &mut State<P>, now: Time, after: &mut After) {
        let mut lent = Lent::default();
        while let Some(action) = g.machine.poll_action() {
            if !matches!(action, Action::Wake { .. }) {
                lent.forget();
            }
            match action {
                Action::StartPreparation { flight, .. } => {
                    let data = g.flights.get_mut(&flight);
                    match data.and_then(|d| d.payload.take().map(|p| (d, p))) {
                        Some((data, payload)) => {
                            let work = (self.prepare)(payload);
                            data.stop = Some(self.start_preparation(flight, work, after));
                        }
                        None => {
                            // Unreachable: a new flight's payload is stored with it.
                            let failure = Failure::Preparation("no payload".to_owned());
                            let _ = g.machine.handle_prepared(now, flight, Err(failure));
                        }
                    }
                }
                Action::StartStream { flight } => {
                    let data = g.flights.get_mut(&flight);
                    match data.and_then(|d| d.opener.take().map(|o| (d, o))) {
                        Some((data, opener)) => {
                            // The preparation's task reported already: its signal goes.
                            data.stop = Some(self.start_stream(flight, opener, after));
                        }
                        None => {
                            // Unreachable: a prepared flight's opener is stored with it.
                            let failure = Failure::Upstream("no prepared value".to_owned());
                            let _ = g.machine.handle_upstream_end(now, flight, Err(failure));
                        }
                    }
                }
                Action::Abort { flight, .. } => {
                    if let Some(stop) = g.flights.get_mut(&flight).and_then(|d| d.stop.take()) {
                        stop_task(stop, after);
                    }
                }
                Action::FlightEnded { flight } => {
                    if let Some(mut data) = g.flights.remove(&flight) {
                        if let Some(stop) = data.stop.take() {
                            stop_task(stop, after);
                        }
                        if let Some(payload) = data.payload.take() {
                            after.drop.push(Box::new(payload));
                        }
                        if let Some(opener) = data.opener.take() {
                            after.drop.push(Box::new(opener));
                        }
                        if let Some(queue) = data.publish.take() {
                            after.drop.push(Box::new(queue));
                        }
                    }
                }
                Action::Wake { request } => {
                    // The reader's read, done here under the lock where the
                    // machine decided it (see `inbox.rs`).
                    if let Some(inbox) = g.readers.get(&request) {
                        let (waker, last) = read_for(&mut g.machine, request, inbox, &mut lent);
                        after.wake.extend(waker);
                        if last {
                            g.readers.remove(&request);
                        }
                    }
                }
                Action::Claim { flight, key } => {
                    // A re-claim: the follow task that reported the lost owner is over.
                    if let Some(stop) = g.flights.get_mut(&flight).and_then(|d| d.stop.take()) {
                        stop_task(stop, after);
                    }
                    if !self.start_claim(flight, key, after) {
                        let reason = "cluster mode without a coordinator \
                                      (use Manager::with_coordinator)"
                            .to_owned();
                        let _ = g
                            .machine
                            .handle_claimed(now, flight, Role::Unavailable(reason));
                    }
                }
                Action::Publish { flight, chunks } => {
                    publish(g, flight, PublishOp::Append(chunks));
                }
                Action::Release {
                    flight,
                    outcome,
                    cacheable,
                } => publish(g, flight, PublishOp::Finish { outcome, cacheable }),
            }
        }
        let next = g.machine.poll_timeout();
        let earlier = match (next, g.timer.target) {
            (Some(n), Some(t)) => n < t,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if earlier {
            g.timer.target = next;
            after.timer = true;
        }
    }
}

/// Reads for `request`'s result stream (under the lock) and delivers what the
/// read gave to its inbox. Returns the stream's waker if it has news, and
/// whether this was its last delivery.
pub(super) fn read_for(
    machine: &mut TracedMachine,
    request: RequestId,
    inbox: &Inbox,
    lent: &mut Lent,
) -> (Option<Waker>, bool) {
    deliver(machine.read_borrowed(request).ok(), inbox, lent)
}

/// Delivers what a read gave (or, for `None`, that the request is gone) to a
/// stream's inbox. Returns the stream's waker if it has news, and whether this
/// was its last delivery.
pub(super) fn deliver(
    read: Option<Borrowed<'_>>,
    inbox: &Inbox,
    lent: &mut Lent,
) -> (Option<Waker>, bool) {
    let (chunks, end, last) = match read {
        Some(read) => {
            let chunks = (!read.chunks.is_empty()).then(|| lent.share(read.chunks));
            let end = read.end.cloned();
            let last = end.is_some() || read.readiness == Readiness::Closed;
            (chunks, end, last)
        }
        // The request is gone: the stream ends.
        None => (None, None, true),
    };
    (inbox.deliver(chunks, end, last), last)
}

/// One shared copy of the chunks a run of readers read: readers woken by the
/// same chunks are at the same place in the same log, so their reads lend the
/// same slice, and the `Bytes` handles are copied out of the log once for all
/// of them. Valid only while the logs do not change: the dispatch forgets it
/// at every action that is not a `Wake`.
#[derive(Default)]
pub(super) struct Lent(Option<Copied>);

/// A slice's identity (where it starts in its log, its length) and its copy.
struct Copied {
    slice: (usize, usize),
    copy: Arc<[Bytes]>,
}

impl Lent {
    fn share(&mut self, chunks: &[Bytes]) -> Arc<[Bytes]> {
        // The slice's identity: where it starts in the log, and its length.
        let id = (chunks.as_ptr() as usize, chunks.len());
        match &self.0 {
            Some(seen) if seen.slice == id => Arc::clone(&seen.copy),
            _ => {
                let copy: Arc<[Bytes]> = chunks.into();
                self.0 = Some(Copied {
                    slice: id,
                    copy: Arc::clone(&copy),
                });
                copy
            }
        }
    }

    fn forget(&mut self) {
        self.0 = None;
    }
}

impl<P> State<P> {
    /// An upstream's ready chunks, with the reads of the readers they wake
    /// done at once ([`Machine::handle_chunks_delivering`](crate::Machine::handle_chunks_delivering)):
    /// each woken stream gets its chunks in its inbox, its waker is kept for
    /// after the lock, and no `Wake` goes through the dispatch.
    pub(super) fn deliver_chunks(
        &mut self,
        now: Time,
        flight: FlightId,
        chunks: impl IntoIterator<Item = Bytes>,
    ) -> Result<usize, StaleFlight> {
        let State {
            machine,
            readers,
            woken,
            ..
        } = self;
        let mut lent = Lent::default();
        // Readers whose delivery was their last (the batch ended the flight).
        let mut over = Vec::new();
        let result = machine.handle_chunks_delivering(now, flight, chunks, |request, read| {
            if let Some(inbox) = readers.get(&request) {
                let (waker, last) = deliver(Some(read), inbox, &mut lent);
                woken.extend(waker);
                if last {
                    over.push(request);
                }
            }
        });
        for request in over {
            readers.remove(&request);
        }
        result
    }
}

/// Sets a task's stop signal under the lock (the upstream stops pulling at
/// once) and queues its notification (the task drops the user's future).
pub(super) fn stop_task(stop: Arc<Signal>, after: &mut After) {
    stop.set();
    after.stop.push(stop);
}

/// Queues an owner flight's write for its publisher task, under the lock, so
/// writes keep the machine's order. A flight without a queue (not an owner,
/// which the machine never asks to publish) has nothing to do.
fn publish<P>(g: &State<P>, flight: FlightId, op: PublishOp) {
    if let Some(queue) = g.flights.get(&flight).and_then(|d| d.publish.as_ref()) {
        // Unbounded: never waits; it fails only once the task is gone (fenced).
        let _ = queue.try_send(op);
    }
}
