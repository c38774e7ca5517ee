//! The one place where the machine meets real tasks: the lock around the machine
//! and the adapter's per-flight data, the action dispatch, spawning the user's
//! tasks with their stop signals (the tasks themselves are in `work.rs`), the
//! timer task, and the task accounting.
//! See the [module docs](super) for who may touch what.

use core::future::Future;
use std::any::Any;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use event_listener::Event;
use futures_lite::future::FutureExt as _;

use super::cluster::Coordinator;
use super::remote::{PublishOp, PublishQueue};
use super::signal::Signal;
use super::user::{Opener, PrepareFn};
use super::{Runtime, TaskCounts};
use crate::idmap::IdMap;
use crate::{Action, Failure, FlightId, Item, Machine, Readiness, RequestId, Role, Time};

/// What one read under the manager's lock gave.
pub(crate) enum Read {
    /// Nothing new; the reader is parked until the machine's next `Wake`.
    Parked,
    /// Items were appended; the reader is parked as well.
    ItemsParked,
    /// The terminal item was appended (or read before): the stream is over.
    Over,
}

/// What the adapter holds for one live flight; dropped on `FlightEnded`.
struct FlightData<P> {
    /// The payload of the submit that created the flight, until preparation starts.
    payload: Option<P>,
    /// The prepared value (inside the opener), until the stream starts.
    opener: Option<Opener>,
    /// The stop signal of the running preparation or upstream task (or, for a
    /// follower flight in cluster mode, of its follow task).
    stop: Option<Arc<Signal>>,
    /// Cluster mode, owner flights: the queue of their publisher task. Dropped
    /// (outside the lock) on `FlightEnded`, which ends the task once it has
    /// written what is queued.
    publish: Option<PublishQueue>,
}

impl<P> FlightData<P> {
    fn empty() -> Self {
        FlightData {
            payload: None,
            opener: None,
            stop: None,
            publish: None,
        }
    }
}

/// The timer task's view of the machine's next deadline.
#[derive(Default)]
struct TimerState {
    /// What the timer task sleeps until. Never later than the machine's next
    /// deadline: it is lowered at once, and raised only after the timer fires
    /// (a deadline moving later costs at most one early, harmless wake).
    target: Option<Time>,
    /// Set by shutdown: the timer task exits.
    closed: bool,
}

/// Everything the manager's lock protects.
pub(crate) struct State<P> {
    pub(crate) machine: Machine,
    flights: BTreeMap<FlightId, FlightData<P>>,
    /// The wake signal of every attached result stream, until it is dropped.
    readers: IdMap<RequestId, Arc<Signal>>,
    timer: TimerState,
}

impl<P> State<P> {
    /// Keeps the opener a finished preparation produced until the flight's
    /// `StartStream`; gives it back if the flight is gone (stale: dropped by the
    /// caller, outside the lock).
    pub(crate) fn keep_opener(&mut self, flight: FlightId, opener: Opener) -> Option<Opener> {
        match self.flights.get_mut(&flight) {
            Some(data) => {
                data.opener = Some(opener);
                None
            }
            None => Some(opener),
        }
    }

    /// Registers the wake signal of a result stream just attached to `request`.
    pub(crate) fn add_reader(&mut self, request: RequestId, signal: Arc<Signal>) {
        self.readers.insert(request, signal);
    }

    /// Stores the payload of a new flight before its `StartPreparation` is carried out.
    pub(crate) fn store_payload(&mut self, flight: FlightId, payload: P) {
        self.flights.insert(
            flight,
            FlightData {
                payload: Some(payload),
                ..FlightData::empty()
            },
        );
    }

    /// Keeps the publish queue of a flight that just became a key's owner.
    pub(super) fn set_publish_queue(&mut self, flight: FlightId, queue: PublishQueue) {
        self.flights
            .entry(flight)
            .or_insert_with(FlightData::empty)
            .publish = Some(queue);
    }

    /// Keeps the stop signal of a follower flight's follow task.
    pub(super) fn set_stop(&mut self, flight: FlightId, stop: Arc<Signal>) {
        self.flights
            .entry(flight)
            .or_insert_with(FlightData::empty)
            .stop = Some(stop);
    }
}

/// What is done after the lock is released.
#[derive(Default)]
struct After {
    /// Stop signals set under the lock, to notify.
    stop: Vec<Arc<Signal>>,
    /// The user's values to drop (their `Drop` may be slow or take locks).
    drop: Vec<Box<dyn Any + Send>>,
    /// Reader signals set under the lock, to notify.
    wake: Vec<Arc<Signal>>,
    /// The timer's target moved earlier.
    timer: bool,
}

/// Counts spawned and finished tasks, and lets `shutdown` wait for all of them.
#[derive(Default)]
pub(crate) struct Tasks {
    spawned: AtomicU64,
    finished: AtomicU64,
    /// Notified when the last running task finishes.
    idle: Event,
}

impl Tasks {
    pub(crate) fn counts(&self) -> TaskCounts {
        // Read `finished` first: both only grow, so `finished <= spawned` holds.
        let finished = self.finished.load(Ordering::SeqCst);
        let spawned = self.spawned.load(Ordering::SeqCst);
        TaskCounts { spawned, finished }
    }

    /// Waits until every spawned task has finished.
    pub(crate) async fn all_finished(&self) {
        loop {
            if self.counts().running() == 0 {
                return;
            }
            let listener = self.idle.listen();
            // Re-check: the last task may have finished before the listener existed.
            if self.counts().running() == 0 {
                return;
            }
            listener.await;
        }
    }
}

/// Dropped with the task's future, however it ends.
struct TaskGuard(Arc<Tasks>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        let tasks = &self.0;
        let finished = tasks.finished.fetch_add(1, Ordering::SeqCst) + 1;
        if finished == tasks.spawned.load(Ordering::SeqCst) {
            tasks.idle.notify(usize::MAX);
        }
    }
}

/// Everything a manager, its tasks and its result streams share.
pub(crate) struct Shared<P, R: Runtime> {
    me: Weak<Self>,
    pub(crate) runtime: R,
    prepare: PrepareFn<P>,
    /// Cluster mode: who runs a key across instances (`None`: a single instance).
    pub(super) coordinator: Option<Arc<dyn Coordinator>>,
    /// Set by shutdown: unanswered claims are dropped.
    pub(super) closing: Signal,
    /// The configured response limit, for the upstream's flow control: the
    /// driver stops pulling once the chunks it holds would be refused.
    pub(super) max_response_bytes: u64,
    state: Mutex<State<P>>,
    /// Notified when the timer's target moves earlier, or on shutdown.
    timer_changed: Event,
    pub(crate) tasks: Arc<Tasks>,
}

impl<P: Send + 'static, R: Runtime> Shared<P, R> {
    pub(crate) fn new(
        runtime: R,
        machine: Machine,
        prepare: PrepareFn<P>,
        coordinator: Option<Arc<dyn Coordinator>>,
    ) -> Arc<Self> {
        let max_response_bytes = machine.config().max_response_bytes;
        let shared = Arc::new_cyclic(|me| Shared {
            me: me.clone(),
            runtime,
            prepare,
            coordinator,
            closing: Signal::default(),
            max_response_bytes,
            state: Mutex::new(State {
                machine,
                flights: BTreeMap::new(),
                readers: IdMap::default(),
                timer: TimerState::default(),
            }),
            timer_changed: Event::new(),
            tasks: Arc::new(Tasks::default()),
        });
        let timer = Arc::clone(&shared);
        shared.spawn(async move { timer.run_timer().await });
        shared
    }

    pub(super) fn arc(&self) -> Arc<Self> {
        // `&self` is borrowed from a live `Arc`, so the upgrade cannot fail.
        self.me.upgrade().expect("a shared state in use is alive")
    }

    fn lock(&self) -> MutexGuard<'_, State<P>> {
        // Nothing foreign runs under the lock, so poisoning cannot leave the
        // machine half-updated; recover rather than propagate.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every input to the machine but `read` goes through here: runs `f` on the
    /// machine at the current time, carries out every action it queued, then
    /// (unlocked) stops tasks, drops the user's values and wakes readers.
    pub(crate) fn with<T>(&self, f: impl FnOnce(&mut State<P>, Time) -> T) -> T {
        let mut after = After::default();
        let out = {
            let mut g = self.lock();
            let now = self.runtime.now();
            let out = f(&mut g, now);
            self.dispatch(&mut g, now, &mut after);
            out
        };
        for stop in after.stop {
            stop.notify();
        }
        drop(after.drop);
        for signal in after.wake {
            signal.notify();
        }
        if after.timer {
            self.timer_changed.notify(1);
        }
        out
    }

    /// Carries out the machine's actions, in order, deciding nothing.
    fn dispatch(&self, g: &mut State<P>, now: Time, after: &mut After) {
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

    /// Spawns a task, counted until its future is dropped.
    pub(super) fn spawn(&self, work: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawned.fetch_add(1, Ordering::SeqCst);
        let guard = TaskGuard(Arc::clone(&self.tasks));
        self.runtime.spawn(Box::pin(async move {
            let _guard = guard;
            work.await;
        }));
    }

    /// Spawns the user's work, raced against its stop signal: once the machine
    /// aborts the work, the task drops the user's future at its next poll.
    pub(super) fn spawn_stoppable(
        &self,
        stop: Arc<Signal>,
        work: impl Future<Output = ()> + Send + 'static,
    ) {
        self.spawn(async move { stop.wait().or(work).await });
    }

    /// The one timer task: sleeps until the target deadline (or until the target
    /// moves earlier), handles it, repeats; exits on shutdown.
    async fn run_timer(&self) {
        loop {
            let changed = self.timer_changed.listen();
            let (closed, target) = {
                let g = self.lock();
                (g.timer.closed, g.timer.target)
            };
            if closed {
                return;
            }
            let Some(target) = target else {
                changed.await;
                continue;
            };
            let fired = async {
                self.runtime.sleep_until(target).await;
                true
            }
            .or(async {
                changed.await;
                false
            })
            .await;
            if fired {
                self.with(|g, now| {
                    g.timer.target = None; // re-armed by dispatch from the machine's next deadline
                    g.machine.handle_timeout(now);
                });
            }
        }
    }

    /// Stops admission, ends every live request, aborts all work and stops the timer.
    pub(crate) fn close(&self) {
        self.with(|g, now| {
            g.machine.shutdown(now);
            g.timer.closed = true;
            g.timer.target = None;
        });
        if self.closing.set() {
            self.closing.notify();
        }
        self.timer_changed.notify(usize::MAX);
    }

    /// Reads for a result stream, under the lock. Unless the read ended the
    /// stream, the machine has parked the reader: its signal is set on the
    /// next `Wake`.
    ///
    /// A read takes no time stamp and queues no action, so it skips the clock
    /// and the dispatch that other inputs go through: the lock is held for the
    /// read alone.
    pub(crate) fn read(&self, request: RequestId, out: &mut Vec<Item>) -> Read {
        let result = self.lock().machine.read(request, out);
        match result {
            Ok(Readiness::Pending) => Read::Parked,
            Ok(Readiness::Ready) if !matches!(out.last(), Some(Item::End(_))) => Read::ItemsParked,
            Ok(Readiness::Ready) => {
                // The terminal read armed the record's retention (contract rule
                // 21): once per request, let the timer see the new deadline.
                self.with(|_, _| ());
                Read::Over
            }
            Ok(_) | Err(_) => Read::Over,
        }
    }

    /// A result stream was dropped ([rule 15](crate::contract#rule-15)).
    pub(crate) fn detach(&self, request: RequestId) {
        let signal = self.with(|g, now| {
            let _ = g.machine.detach(now, request);
            g.readers.remove(&request)
        });
        drop(signal);
    }
}

/// Sets a task's stop signal under the lock (the upstream stops pulling at
/// once) and queues its notification (the task drops the user's future).
fn stop_task(stop: Arc<Signal>, after: &mut After) {
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
