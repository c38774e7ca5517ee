//! Carrying out the machine's actions: the one function that turns each
//! [`Action`] into work for the runtime (spawn a preparation, an upstream, a
//! claim; stop a task; queue an owner's write; wake a reader; drop a flight's
//! data), in the machine's order and under the lock, deciding nothing. What
//! must not happen under the lock (notifying tasks, dropping the user's values)
//! is collected in [`After`] and done by `Shared::with` once the lock is
//! released. See the [module docs](super) for who may touch what.

use std::any::Any;
use std::sync::Arc;

use super::remote::PublishOp;
use super::shared::{Shared, State};
use super::signal::Signal;
use super::Runtime;
use crate::{Action, Failure, FlightId, Role, Time};

/// What is done after the lock is released.
#[derive(Default)]
pub(super) struct After {
    /// Stop signals set under the lock, to notify.
    pub(super) stop: Vec<Arc<Signal>>,
    /// The user's values to drop (their `Drop` may be slow or take locks).
    pub(super) drop: Vec<Box<dyn Any + Send>>,
    /// Reader signals set under the lock, to notify.
    pub(super) wake: Vec<Arc<Signal>>,
    /// The timer's target moved earlier.
    pub(super) timer: bool,
}

impl<P: Send + 'static, R: Runtime> Shared<P, R> {
    /// Carries out the machine's actions, in order, deciding nothing.
    pub(super) fn dispatch(&self, g: &mut State<P>, now: Time, after: &mut After) {
        while let Some(action) = g.machine.poll_action() {
            match action {
                Action::StartPreparation { flight, .. } => {
                    let data = g.flights.get_mut(&flight);
                    match data.and_then(|d| d.payload.take().map(|p| (d, p))) {
                        Some((data, payload)) => {
                            let work = (self.prepare)(payload);
                            data.stop = Some(self.start_preparation(flight, work));
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
                            data.stop = Some(self.start_stream(flight, opener));
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
                    if let Some(signal) = g.readers.get(&request) {
                        if signal.set() {
                            after.wake.push(Arc::clone(signal));
                        }
                    }
                }
                Action::Claim { flight, key } => {
                    // A re-claim: the follow task that reported the lost owner is over.
                    if let Some(stop) = g.flights.get_mut(&flight).and_then(|d| d.stop.take()) {
                        stop_task(stop, after);
                    }
                    if !self.start_claim(flight, key) {
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
