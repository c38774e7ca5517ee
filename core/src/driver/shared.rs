//! The one place where the machine meets real tasks: the lock around the machine
//! and the adapter's per-flight data, spawning tasks with their stop signals
//! (the user's tasks are in `work.rs`, the cluster's in `remote.rs`), the timer
//! task, and the task accounting. The action dispatch is in `dispatch.rs`.
//! See the [module docs](super) for who may touch what.

use core::future::Future;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::Waker;

use event_listener::Event;
use futures_lite::future::FutureExt as _;

use super::cluster::Coordinator;
use super::dispatch::{read_for, After, Lent};
use super::inbox::Inbox;
use super::remote::PublishQueue;
use super::signal::Signal;
use super::traced::TracedMachine;
use super::user::{Opener, PrepareFn};
use super::{BoxFuture, Runtime, TaskCounts};
use crate::idmap::IdMap;
use crate::{FlightId, Machine, RequestId, Time};

/// What the adapter holds for one live flight; dropped on `FlightEnded`.
pub(super) struct FlightData<P> {
    /// The payload of the submit that created the flight, until preparation starts.
    pub(super) payload: Option<P>,
    /// The prepared value (inside the opener), until the stream starts.
    pub(super) opener: Option<Opener>,
    /// The stop signal of the running preparation or upstream task (or, for a
    /// follower flight in cluster mode, of its follow task).
    pub(super) stop: Option<Arc<Signal>>,
    /// Cluster mode, owner flights: the queue of their publisher task. Dropped
    /// (outside the lock) on `FlightEnded`, which ends the task once it has
    /// written what is queued.
    pub(super) publish: Option<PublishQueue>,
}

impl<P> FlightData<P> {
    pub(super) fn empty() -> Self {
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
pub(super) struct TimerState {
    /// What the timer task sleeps until. Never later than the machine's next
    /// deadline: it is lowered at once, and raised only after the timer fires
    /// (a deadline moving later costs at most one early, harmless wake).
    pub(super) target: Option<Time>,
    /// Set by shutdown: the timer task exits.
    pub(super) closed: bool,
}

/// Everything the manager's lock protects.
pub(crate) struct State<P> {
    /// The machine, with the trace recorder if one is attached.
    pub(crate) machine: TracedMachine,
    pub(super) flights: BTreeMap<FlightId, FlightData<P>>,
    /// The inbox of every attached result stream, until its last delivery
    /// or until it is dropped.
    pub(super) readers: IdMap<RequestId, Arc<Inbox>>,
    pub(super) timer: TimerState,
    /// Streams that got a delivery during an input, outside the dispatch
    /// ([`State::deliver_chunks`]): woken after the lock, with the dispatch's.
    pub(super) woken: Vec<Waker>,
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

    /// Registers the inbox of a result stream just attached to `request`, and
    /// reads for it at once (a late joiner's replay, or the outcome of a
    /// request that already ended). Called inside [`Shared::with`], whose
    /// dispatch lets the timer see a retention the read may have armed.
    pub(crate) fn add_reader(&mut self, request: RequestId, inbox: Arc<Inbox>) {
        let (_, last) = read_for(&mut self.machine, request, &inbox, &mut Lent::default());
        if !last {
            self.readers.insert(request, inbox);
        }
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
    pub(super) prepare: PrepareFn<P>,
    /// Cluster mode: who runs a key across instances (`None`: a single instance).
    pub(super) coordinator: Option<Arc<dyn Coordinator>>,
    /// Set by shutdown: unanswered claims are dropped.
    pub(super) closing: Signal,
    /// The configured response limit, for the upstream's flow control: the
    /// driver stops pulling once the chunks it holds would be refused.
    pub(super) max_response_bytes: u64,
    state: Mutex<State<P>>,
    /// Notified when the timer's target moves earlier, or on shutdown.
    pub(super) timer_changed: Event,
    pub(crate) tasks: Arc<Tasks>,
    /// Detaches of dropped streams whose requests had ended, applied at the
    /// next input ([`Shared::detach`]).
    finished: (
        async_channel::Sender<RequestId>,
        async_channel::Receiver<RequestId>,
    ),
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
                machine: TracedMachine::new(machine),
                flights: BTreeMap::new(),
                readers: IdMap::default(),
                timer: TimerState::default(),
                woken: Vec::new(),
            }),
            timer_changed: Event::new(),
            tasks: Arc::new(Tasks::default()),
            finished: async_channel::unbounded(),
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

    /// Every input to the machine goes through here: runs `f` on the
    /// machine at the current time, carries out every action it queued, then
    /// (unlocked) stops tasks, drops the user's values and wakes readers.
    pub(crate) fn with<T>(&self, f: impl FnOnce(&mut State<P>, Time) -> T) -> T {
        let mut after = After::default();
        let out = {
            let mut g = self.lock();
            let now = self.runtime.now();
            self.remove_finished(&mut g, now);
            let out = f(&mut g, now);
            self.dispatch(&mut g, now, &mut after);
            after.wake.append(&mut g.woken);
            out
        };
        for stop in after.stop {
            stop.notify();
        }
        for task in after.spawn {
            self.runtime.spawn(task);
        }
        drop(after.drop);
        for waker in after.wake {
            waker.wake();
        }
        if after.timer {
            self.timer_changed.notify(1);
        }
        out
    }

    /// Spawns a task, counted until its future is dropped.
    pub(super) fn spawn(&self, work: impl Future<Output = ()> + Send + 'static) {
        self.runtime.spawn(self.counted(work));
    }

    /// A task to spawn, counted from now until its future is dropped. Counted
    /// under the lock (so `shutdown` waits for it), spawned after the lock is
    /// released ([`After::spawn`]): the runtime's spawn allocates and may wake
    /// a worker thread, which the lock need not wait for.
    pub(super) fn counted(&self, work: impl Future<Output = ()> + Send + 'static) -> BoxFuture<()> {
        self.tasks.spawned.fetch_add(1, Ordering::SeqCst);
        let guard = TaskGuard(Arc::clone(&self.tasks));
        Box::pin(async move {
            let _guard = guard;
            work.await;
        })
    }

    /// The user's work, raced against its stop signal: once the machine
    /// aborts the work, the task drops the user's future at its next poll.
    pub(super) async fn stoppable(stop: Arc<Signal>, work: impl Future<Output = ()>) {
        stop.wait().or(work).await;
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

    /// A result stream was dropped ([rule 15](crate::contract#rule-15)).
    ///
    /// A stream that had its last delivery belongs to a request that is no
    /// longer live, whose drop only removes its record: that detach is queued
    /// (`finished`, never waits) and applied at the start of the next input,
    /// before anything can observe the record, instead of taking the lock
    /// now. Every client that reads its answer to the end and drops its
    /// stream would otherwise take the lock once more, for nothing it waits
    /// on.
    pub(crate) fn detach(&self, request: RequestId, over: bool) {
        if over && self.finished.0.try_send(request).is_ok() {
            return;
        }
        let inbox = self.with(|g, now| {
            let _ = g.machine.detach(now, request);
            g.readers.remove(&request)
        });
        drop(inbox);
    }

    /// Applies the queued detaches of finished streams (under the lock, first
    /// in every input, so nothing sees a record its stream's drop removed).
    fn remove_finished(&self, g: &mut State<P>, now: Time) {
        while let Ok(request) = self.finished.1.try_recv() {
            let _ = g.machine.detach(now, request);
        }
    }
}
