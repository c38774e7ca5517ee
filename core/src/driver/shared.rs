//! The one place where the machine meets real tasks: the lock around the machine
//! and the adapter's per-flight data, the action dispatch, the user's tasks (with
//! panic catching), the timer task, and the task accounting.

use core::future::{poll_fn, Future};
use core::panic::AssertUnwindSafe;
use core::task::{Poll, Waker};
use std::any::Any;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use bytes::Bytes;
use futures_lite::future::{poll_once, FutureExt as _};
use futures_lite::StreamExt as _;

use super::stream::{Read, Signal};
use super::user::{ChunkStream, Opener, PrepareFn};
use super::{BoxFuture, Runtime, TaskCounts};
use crate::idmap::IdMap;
use crate::{Action, Failure, FlightId, Item, Machine, Readiness, RequestId, Time, Work};

/// Chunks an upstream has ready at once are reported under one lock, up to this many.
const MAX_BATCH: usize = 64;

/// What the adapter holds for one live flight; dropped on `FlightEnded`.
struct FlightData<P, H> {
    /// The payload of the submit that created the flight, until preparation starts.
    payload: Option<P>,
    /// The prepared value (inside the opener), until the stream starts.
    opener: Option<Opener>,
    /// The running preparation or upstream task.
    task: Option<H>,
}

/// The timer task's view: the deadline it sleeps until, and how to wake it.
#[derive(Default)]
struct TimerState {
    /// What the timer task sleeps until. Never later than the machine's next
    /// deadline: it is lowered at once, and raised only after the timer fires
    /// (a deadline moving later costs at most one early, harmless wake).
    target: Option<Time>,
    waker: Option<Waker>,
    /// Set by shutdown: the timer task exits.
    closed: bool,
}

pub(crate) struct State<P, H> {
    pub(crate) machine: Machine,
    flights: BTreeMap<FlightId, FlightData<P, H>>,
    /// The wake signal of every attached result stream, until it is dropped.
    readers: IdMap<RequestId, Arc<Signal>>,
    timer: TimerState,
}

impl<P, H> State<P, H> {
    /// Registers the wake signal of a result stream just attached to `request`.
    pub(crate) fn add_reader(&mut self, request: RequestId, signal: Arc<Signal>) {
        self.readers.insert(request, signal);
    }
}

impl<P, H> State<P, H> {
    /// Stores the payload of a new flight before its `StartPreparation` is carried out.
    pub(crate) fn store_payload(&mut self, flight: FlightId, payload: P) {
        self.flights.insert(
            flight,
            FlightData {
                payload: Some(payload),
                opener: None,
                task: None,
            },
        );
    }
}

/// Work to finish after the lock is released: nothing foreign runs under it.
struct After<H> {
    wake: Vec<Waker>,
    abort: Vec<H>,
    detach: Vec<H>,
    drop: Vec<Box<dyn Any + Send>>,
}

impl<H> Default for After<H> {
    fn default() -> Self {
        After {
            wake: Vec::new(),
            abort: Vec::new(),
            detach: Vec::new(),
            drop: Vec::new(),
        }
    }
}

/// Counts spawned and finished tasks; a task counts as finished when its future
/// is dropped (completed or aborted).
#[derive(Default)]
pub(crate) struct Tasks {
    spawned: AtomicU64,
    finished: AtomicU64,
    idle: Mutex<Vec<Waker>>,
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
        poll_fn(|cx| {
            if self.counts().running() == 0 {
                return Poll::Ready(());
            }
            self.idle_waiters().push(cx.waker().clone());
            // Re-check: the last task may have finished before the waker was stored.
            if self.counts().running() == 0 {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }

    fn idle_waiters(&self) -> MutexGuard<'_, Vec<Waker>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Dropped with the task's future, however it ends.
struct TaskGuard(Arc<Tasks>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        let tasks = &self.0;
        let finished = tasks.finished.fetch_add(1, Ordering::SeqCst) + 1;
        if finished == tasks.spawned.load(Ordering::SeqCst) {
            let waiters = std::mem::take(&mut *tasks.idle_waiters());
            for w in waiters {
                w.wake();
            }
        }
    }
}

/// Everything a manager, its tasks and its result streams share.
pub(crate) struct Shared<P, R: Runtime> {
    me: Weak<Self>,
    pub(crate) runtime: R,
    prepare: PrepareFn<P>,
    state: Mutex<State<P, R::Handle>>,
    pub(crate) tasks: Arc<Tasks>,
}

impl<P: Send + 'static, R: Runtime> Shared<P, R> {
    pub(crate) fn new(runtime: R, machine: Machine, prepare: PrepareFn<P>) -> Arc<Self> {
        let shared = Arc::new_cyclic(|me| Shared {
            me: me.clone(),
            runtime,
            prepare,
            state: Mutex::new(State {
                machine,
                flights: BTreeMap::new(),
                readers: IdMap::default(),
                timer: TimerState::default(),
            }),
            tasks: Arc::new(Tasks::default()),
        });
        let timer = Arc::clone(&shared);
        let handle = shared.spawn(async move { timer.run_timer().await });
        shared.runtime.detach(handle);
        shared
    }

    fn arc(&self) -> Arc<Self> {
        // `&self` is borrowed from a live `Arc`, so the upgrade cannot fail.
        self.me.upgrade().expect("a shared state in use is alive")
    }

    fn lock(&self) -> MutexGuard<'_, State<P, R::Handle>> {
        // Nothing foreign runs under the lock, so poisoning cannot leave the
        // machine half-updated; recover rather than propagate.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the machine at the current time, carries out every action it
    /// queued, then (unlocked) wakes readers and aborts tasks.
    pub(crate) fn with<T>(&self, f: impl FnOnce(&mut State<P, R::Handle>, Time) -> T) -> T {
        let mut after = After::default();
        let out = {
            let mut g = self.lock();
            let now = self.runtime.now();
            let out = f(&mut g, now);
            self.dispatch(&mut g, now, &mut after);
            out
        };
        for h in after.abort {
            self.runtime.abort(h);
        }
        for h in after.detach {
            self.runtime.detach(h);
        }
        drop(after.drop);
        for w in after.wake {
            w.wake();
        }
        out
    }

    /// Carries out the machine's actions, in order, deciding nothing.
    fn dispatch(&self, g: &mut State<P, R::Handle>, now: Time, after: &mut After<R::Handle>) {
        while let Some(action) = g.machine.poll_action() {
            match action {
                Action::StartPreparation { flight, .. } => {
                    let data = g.flights.get_mut(&flight);
                    match data.and_then(|d| d.payload.take().map(|p| (d, p))) {
                        Some((data, payload)) => {
                            let work = (self.prepare)(payload);
                            let task = self.spawn(run_preparation(self.arc(), flight, work));
                            data.task = Some(task);
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
                            let task = self.spawn(run_stream(self.arc(), flight, opener));
                            if let Some(old) = data.task.replace(task) {
                                after.detach.push(old); // the finished preparation
                            }
                        }
                        None => {
                            // Unreachable: a prepared flight's opener is stored with it.
                            let failure = Failure::Upstream("no prepared value".to_owned());
                            let _ = g.machine.handle_upstream_end(now, flight, Err(failure));
                        }
                    }
                }
                Action::Abort { flight, .. } => {
                    if let Some(task) = g.flights.get_mut(&flight).and_then(|d| d.task.take()) {
                        after.abort.push(task);
                    }
                }
                Action::FlightEnded { flight } => {
                    if let Some(mut data) = g.flights.remove(&flight) {
                        if let Some(task) = data.task.take() {
                            after.abort.push(task);
                        }
                        if let Some(payload) = data.payload.take() {
                            after.drop.push(Box::new(payload));
                        }
                        if let Some(opener) = data.opener.take() {
                            after.drop.push(Box::new(opener));
                        }
                    }
                }
                Action::Wake { request } => {
                    if let Some(w) = g.readers.get(&request).and_then(|s| s.notify()) {
                        after.wake.push(w);
                    }
                }
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
            if let Some(w) = g.timer.waker.take() {
                after.wake.push(w);
            }
        }
    }

    /// Spawns a task, counted until its future is dropped.
    fn spawn(&self, work: impl Future<Output = ()> + Send + 'static) -> R::Handle {
        self.tasks.spawned.fetch_add(1, Ordering::SeqCst);
        let guard = TaskGuard(Arc::clone(&self.tasks));
        self.runtime.spawn(Box::pin(async move {
            let _guard = guard;
            work.await;
        }))
    }

    /// The one timer task: sleeps until the target deadline, handles it, repeats;
    /// exits on shutdown.
    async fn run_timer(&self) {
        let mut armed: Option<(Time, BoxFuture<()>)> = None;
        poll_fn(|cx| loop {
            let target = {
                let mut g = self.lock();
                if g.timer.closed {
                    return Poll::Ready(());
                }
                match &g.timer.waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => g.timer.waker = Some(cx.waker().clone()),
                }
                g.timer.target
            };
            let Some(target) = target else {
                armed = None;
                return Poll::Pending;
            };
            if armed.as_ref().map(|(t, _)| *t) != Some(target) {
                armed = Some((target, self.runtime.sleep_until(target)));
            }
            let Some((_, sleep)) = armed.as_mut() else {
                return Poll::Pending;
            };
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            armed = None;
            self.with(|g, now| {
                g.timer.target = None; // re-armed by dispatch from the machine's next deadline
                g.machine.handle_timeout(now);
            });
        })
        .await;
    }

    /// Stops admission, ends every live request, aborts all work and stops the timer.
    pub(crate) fn close(&self) {
        self.with(|g, now| {
            g.machine.shutdown(now);
            g.timer.closed = true;
            g.timer.target = None;
        });
        let waker = self.lock().timer.waker.take();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Reads for a result stream, under the lock. Unless the read ended the
    /// stream, the machine has parked the reader: its signal is notified on the
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
            Ok(_) | Err(_) => Read::Over,
        }
    }

    /// A result stream was dropped (rule 15).
    pub(crate) fn detach(&self, request: RequestId) {
        let signal = self.with(|g, now| {
            let _ = g.machine.detach(now, request);
            g.readers.remove(&request)
        });
        drop(signal);
    }
}

/// The text of a caught panic.
fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// Runs the user's preparation and reports its result (rule 23: a panic too).
async fn run_preparation<P: Send + 'static, R: Runtime>(
    shared: Arc<Shared<P, R>>,
    flight: FlightId,
    work: BoxFuture<Result<(crate::Prepared, Opener), String>>,
) {
    let result = match AssertUnwindSafe(work).catch_unwind().await {
        Ok(Ok(ok)) => Ok(ok),
        Ok(Err(message)) => Err(Failure::Preparation(message)),
        Err(panic) => Err(Failure::Panicked {
            work: Work::Preparation,
            message: panic_message(&*panic),
        }),
    };
    let leftovers = shared.with(|g, now| match result {
        Ok((prepared, opener)) => {
            // Stale (already aborted): no entry, and the opener is dropped below.
            let leftover = match g.flights.get_mut(&flight) {
                Some(data) => {
                    data.opener = Some(opener);
                    None
                }
                None => Some(opener),
            };
            let _ = g.machine.handle_prepared(now, flight, Ok(prepared));
            leftover
        }
        Err(failure) => {
            let _ = g.machine.handle_prepared(now, flight, Err(failure));
            None
        }
    });
    drop(leftovers);
}

/// What one poll of the upstream gave.
enum Step {
    Chunk(Bytes),
    End(Result<(), Failure>),
}

async fn next_step(stream: &mut ChunkStream) -> Step {
    match AssertUnwindSafe(stream.next()).catch_unwind().await {
        Ok(Some(Ok(data))) => Step::Chunk(data),
        Ok(Some(Err(message))) => Step::End(Err(Failure::Upstream(message))),
        Ok(None) => Step::End(Ok(())),
        Err(panic) => Step::End(Err(Failure::Panicked {
            work: Work::Stream,
            message: panic_message(&*panic),
        })),
    }
}

/// Opens the user's upstream and reports its chunks and its end (rule 23: a
/// panic too). Stops as soon as the machine calls the flight stale.
async fn run_stream<P: Send + 'static, R: Runtime>(
    shared: Arc<Shared<P, R>>,
    flight: FlightId,
    opener: Opener,
) {
    let opened = AssertUnwindSafe(async move { opener().await })
        .catch_unwind()
        .await;
    let mut stream = match opened {
        Ok(Ok(stream)) => stream,
        Ok(Err(message)) => {
            report_end(&shared, flight, Err(Failure::Upstream(message)));
            return;
        }
        Err(panic) => {
            let failure = Failure::Panicked {
                work: Work::Stream,
                message: panic_message(&*panic),
            };
            report_end(&shared, flight, Err(failure));
            return;
        }
    };
    let mut batch = Vec::new();
    loop {
        let mut end = match next_step(&mut stream).await {
            Step::Chunk(data) => {
                batch.push(data);
                None
            }
            Step::End(result) => Some(result),
        };
        // Report every chunk that is ready already under one lock.
        let mut full = true;
        while end.is_none() && batch.len() < MAX_BATCH {
            match poll_once(next_step(&mut stream)).await {
                Some(Step::Chunk(data)) => batch.push(data),
                Some(Step::End(result)) => end = Some(result),
                None => {
                    full = false;
                    break;
                }
            }
        }
        let over = shared.with(|g, now| {
            for data in batch.drain(..) {
                if g.machine.handle_chunk(now, flight, data).is_err() {
                    return true; // aborted, ended, or over max_response_bytes
                }
            }
            match end.take() {
                Some(result) => {
                    let _ = g.machine.handle_upstream_end(now, flight, result);
                    true
                }
                None => false,
            }
        });
        if over {
            return;
        }
        if full {
            // An upstream that is always ready must not starve the other tasks.
            futures_lite::future::yield_now().await;
        }
    }
}

fn report_end<P: Send + 'static, R: Runtime>(
    shared: &Shared<P, R>,
    flight: FlightId,
    result: Result<(), Failure>,
) {
    shared.with(|g, now| {
        let _ = g.machine.handle_upstream_end(now, flight, result);
    });
}
