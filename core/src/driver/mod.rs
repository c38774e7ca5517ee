//! The runtime-independent half of the adapters (feature `driver`).
//!
//! `flightdeck-tokio` and `flightdeck-smol` are this module plus a [`Runtime`]:
//! spawn a detached task, a clock, and a sleep. Everything else lives here, once:
//!
//! - a [`Manager`] holds the [`Machine`] behind a mutex, together with what the
//!   adapter keeps per flight (the payload until preparation starts, the prepared
//!   value until the stream starts, the running task's stop signal), dropped on
//!   [`Action::FlightEnded`](crate::Action::FlightEnded);
//! - after every input it carries out the machine's actions in order and decides
//!   nothing: it spawns the user's [`Preparer`] and [`Upstream`] futures, reports
//!   their results back, stops them when told, wakes readers;
//! - one timer task sleeps until the machine's next deadline
//!   ([`Machine::poll_timeout`]) and is re-armed only when that deadline moves
//!   earlier (a deadline moving later costs one harmless early wake-up);
//! - a panicking preparation or upstream is caught and reported as
//!   [`Failure::Panicked`](crate::Failure::Panicked), so its slot is released and
//!   nothing leaks ([rule 23](crate::contract#rule-23));
//! - a [`ResultStream`] hands out what the manager read for it: when the
//!   machine wakes a reader, the dispatch reads for it at once, under the lock,
//!   into the stream's inbox, and wakes its task; dropping it detaches ([rule 15](crate::contract#rule-15));
//! - every spawned task is counted until its future is dropped
//!   ([`Manager::tasks`]), and [`Manager::shutdown`] waits for all of them;
//! - on request ([`Manager::record_to`]) it records every input it feeds the
//!   machine to a [trace file](trace), which `verify replay` re-runs;
//! - in cluster mode ([`Manager::with_coordinator`]) it carries out the
//!   machine's `Claim`, `Publish` and `Release` through a [`Coordinator`] (see
//!   [Cluster mode](#cluster-mode) below).
//!
//! The core's default build has none of this and no async dependency.
//!
//! # Concurrency
//!
//! The machine is single-threaded by design: it takes one input at a time and
//! decides everything within it. The driver keeps it that way with one owner:
//!
//! - **Who owns the machine.** The manager's `Shared` state holds the machine
//!   and the per-flight data in one `std::sync::Mutex`. Every input (submit,
//!   attach, read, cancel, detach, a preparation's result, a batch of chunks,
//!   an upstream's end, a timeout, shutdown) goes through one function,
//!   `Shared::with`, which takes the lock, stamps the time, applies the input,
//!   drains the machine's actions, and releases the lock. Nothing under the
//!   lock awaits, spawns a task, or runs user code: the lock is held for the
//!   machine's own O(1)-to-O(log n) work per input, plus the reads below.
//! - **Who may touch the log.** Only the machine, under the lock: the
//!   upstream task appends a batch of ready chunks and, in the same input,
//!   the machine reads for every reader those chunks wake
//!   ([`Machine::handle_chunks_delivering`]: no `Wake` per reader, the reader
//!   stays parked with its cursor moved); any other `Wake` (an end, a
//!   follower's chunks, a recorded run) is read for by the dispatch, and a
//!   new stream once at attach, for its replay. Each read lends the new
//!   chunks; they are copied (`Bytes` handles, no data) into one
//!   `Arc<[Bytes]>`, shared by every reader at the same place in the log, and
//!   put in each stream's inbox. A result stream never takes the manager's
//!   lock to read; its task takes only its inbox's lock, to swap out what was
//!   delivered. The driver keeps no copy of the log beyond those deliveries.
//! - **What happens outside the lock.** Everything that is not the machine's
//!   state: spawning the tasks the machine asked for (counted under the lock,
//!   started after it), polling the user's upstream and preparation, dropping
//!   the user's payloads and prepared values, waking the streams that got a
//!   delivery and notifying the tasks the machine stopped, handing items from
//!   a stream's deliveries to its client.
//! - **How tasks learn what the machine decided.** A result stream through its
//!   inbox, which holds its `Waker`: the dispatch pushes a delivery and takes
//!   the waker under the lock, and wakes it after. A preparation or upstream
//!   task through a `Signal`: a flag set under the lock where the machine
//!   decided (its `Abort`) and an `event-listener`
//!   [`Event`](event_listener::Event) notified after the lock is released; the
//!   task is raced against it, so the machine's `Abort` drops the user's future
//!   at the task's next poll without any task handle. The upstream also checks
//!   the flag before every pull, and ends a batch of ready chunks before it
//!   would cross `max_response_bytes`, so it never pulls more than one chunk the
//!   core refuses. The timer and [`Manager::shutdown`] wait on events too.
//! - **Why no `async-lock`, and `async-channel` only for cluster writes.** An
//!   async lock is for a lock held across an await; this one never is, and the
//!   manager's methods are synchronous (`submit`, `cancel`, `status` return at
//!   once, with the machine's answer), so they could not await an async lock
//!   anyway. A queue of inputs to a task that owns the machine would make those
//!   methods wait for that task and add a task hop to every chunk on its way to
//!   the machine. BENCHMARKS.md gives the measurements. The one queue the
//!   driver has goes the other way, out of the machine: an owner flight's
//!   writes to the cluster (below).
//!
//! # Cluster mode
//!
//! With a [`Coordinator`] (Redis, or the in-process [`MemoryCoordinator`]),
//! the machine decides as always and the driver runs three more kinds of task,
//! all outside the lock, all counted, each reporting one input at a time
//! through `Shared::with` (the code is in `remote.rs`):
//!
//! - **a claim task** per [`Action::Claim`](crate::Action::Claim): it awaits
//!   [`Coordinator::claim`] and reports the answer with
//!   [`Machine::handle_claimed`]. An owner whose flight ended while it claimed
//!   (the machine answers `StaleFlight`) gives the lease straight back with
//!   [`Publisher::finish`]. At shutdown an unanswered claim is dropped.
//! - **a follow task** per follower flight: it reads the [`RemoteLog`] and
//!   reports chunks (`handle_chunks`, ready batches merged), the remote end,
//!   a lost owner, or a failed log (as `Failed(Cluster(reason))`). It is
//!   stopped by the flight's `Abort { work: Work::Stream }` through the same
//!   stop signal an upstream task has.
//! - **a publisher task** per owner flight, fed by an `async-channel` queue:
//!   the dispatch pushes every `Publish` and the `Release` under the lock, in
//!   the machine's order (a push never waits: the queue is unbounded, and what
//!   it can hold is bounded by the core, at most `max_response_bytes` of
//!   chunks and one release), and the task carries them out strictly in that
//!   order, one write at a time, merging appends that are already queued, and
//!   renews the lease every [`Publisher::renew_every`] in between. A refused
//!   write ([`Lost`]) is reported with [`Machine::handle_fenced`] and ends the
//!   task. The flight's `FlightEnded` drops the sending side (outside the
//!   lock), so the task ends once the release is written: nothing outlives
//!   its flight but that last write.
//!
//! Why a channel here and not the lock: the writes are I/O that must keep
//! their order across inputs made on different threads, and must not hold up
//! the machine; pushing under the lock fixes the order, the task does the
//! waiting.

mod cluster;
mod dispatch;
mod inbox;
mod recorder;
mod remote;
mod shared;
mod signal;
mod stream;
pub mod trace;
mod traced;
mod user;
mod work;

use std::sync::Arc;

pub use cluster::{Claim, Coordinator, Lost, MemoryCoordinator, Publisher, RemoteEvent, RemoteLog};
pub use recorder::{
    RecordError, RecordingStatus, RecordingSummary, MAX_PENDING_BYTES, WRITE_DELAY,
};
pub use stream::ResultStream;
pub use user::{BoxFuture, Preparation, Preparer, Upstream};

use inbox::Inbox;
use shared::Shared;

use crate::{
    Config, ConfigError, InvariantViolation, Key, Machine, RequestError, RequestId, RequestStatus,
    Route, Stats, SubmitError, Time,
};

/// What a manager needs from an async runtime: spawn a detached task, a clock,
/// a timer (as small as quinn's `Runtime`). `flightdeck-tokio` and
/// `flightdeck-smol` implement it; nothing else is runtime-specific.
///
/// The driver never aborts a task through the runtime: it stops the user's work
/// itself (see the [module docs](self)), so a runtime needs no task handles.
pub trait Runtime: Send + Sync + Sized + 'static {
    /// The runtime of the calling context, with its clock started now.
    ///
    /// # Panics
    /// May panic when called outside the runtime (tokio does).
    fn current() -> Self;

    /// Spawns a task and lets it run to completion (detached).
    fn spawn(&self, task: BoxFuture<()>);

    /// The current time: nanoseconds since this runtime value was created (the
    /// manager's start). Never goes backwards.
    fn now(&self) -> Time;

    /// A future that completes once [`Runtime::now`] has reached `deadline`.
    fn sleep_until(&self, deadline: Time) -> BoxFuture<()>;
}

/// How many tasks a manager has spawned (preparations, upstreams and its timer)
/// and how many have finished. A task has finished when its future was dropped:
/// it completed, or the driver stopped it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TaskCounts {
    /// Tasks spawned.
    pub spawned: u64,
    /// Tasks finished.
    pub finished: u64,
}

impl TaskCounts {
    /// Tasks still running.
    #[must_use]
    pub fn running(&self) -> u64 {
        self.spawned.saturating_sub(self.finished)
    }
}

/// How an accepted [`Manager::submit`] was placed (rules [1](crate::contract#rule-1)-[3](crate::contract#rule-3)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Placement {
    /// The new request's id.
    pub id: RequestId,
    /// Whether it created a flight, joined a live one, or was served from the cache.
    pub route: Route,
    /// Its flight's place in the admission queue (0 = next) right after the
    /// submit, while the flight is queued; `None` once it left the queue (or for
    /// a cache hit).
    pub queue_position: Option<usize>,
}

/// Stops the manager when its last handle is dropped.
struct Owner<P: Send + 'static, R: Runtime> {
    shared: Arc<Shared<P, R>>,
}

impl<P: Send + 'static, R: Runtime> Drop for Owner<P, R> {
    fn drop(&mut self) {
        self.shared.close();
    }
}

/// Manages streaming requests for payloads of type `P` on runtime `R`.
///
/// `flightdeck_tokio::Manager<P>` and `flightdeck_smol::Manager<P>` are this type
/// with their runtime. It is a cheap handle: clones share one manager. When the
/// last clone is dropped the manager shuts down as by [`Manager::shutdown`],
/// without waiting; result streams already handed out still read their ends.
///
/// Every method returns at once; only [`Manager::shutdown`] is async.
pub struct Manager<P: Send + 'static, R: Runtime> {
    owner: Arc<Owner<P, R>>,
}

impl<P: Send + 'static, R: Runtime> Clone for Manager<P, R> {
    fn clone(&self) -> Self {
        Manager {
            owner: Arc::clone(&self.owner),
        }
    }
}

impl<P: Send + 'static, R: Runtime> core::fmt::Debug for Manager<P, R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Manager")
            .field("stats", &self.stats())
            .field("tasks", &self.tasks())
            .finish()
    }
}

impl<P: Send + 'static, R: Runtime> Manager<P, R> {
    /// A manager on the runtime of the calling context ([`Runtime::current`]).
    ///
    /// `preparer` turns the payload of the submit that creates a flight into what
    /// `upstream` needs; `upstream` opens the stream of chunks. Closures work for
    /// both (see [`Preparer`] and [`Upstream`]).
    ///
    /// # Errors
    /// The config's first invalid field.
    ///
    /// # Panics
    /// If the runtime's [`Runtime::current`] does (tokio: outside a runtime).
    pub fn new<Pr, U>(config: Config, preparer: Pr, upstream: U) -> Result<Self, ConfigError>
    where
        Pr: Preparer<P>,
        U: Upstream<Pr::Output>,
    {
        Self::with_runtime(R::current(), config, preparer, upstream)
    }

    /// A manager on the given runtime value (e.g. a specific tokio handle or smol
    /// executor).
    ///
    /// # Errors
    /// The config's first invalid field.
    pub fn with_runtime<Pr, U>(
        runtime: R,
        config: Config,
        preparer: Pr,
        upstream: U,
    ) -> Result<Self, ConfigError>
    where
        Pr: Preparer<P>,
        U: Upstream<Pr::Output>,
    {
        Self::build(runtime, config, preparer, upstream, None)
    }

    /// A manager in cluster mode on the runtime of the calling context: as
    /// [`Manager::with_coordinator`] with [`Runtime::current`].
    ///
    /// # Errors
    /// The config's first invalid field.
    ///
    /// # Panics
    /// If the runtime's [`Runtime::current`] does (tokio: outside a runtime).
    pub fn new_clustered<Pr, U>(
        config: Config,
        preparer: Pr,
        upstream: U,
        coordinator: Arc<dyn Coordinator>,
    ) -> Result<Self, ConfigError>
    where
        Pr: Preparer<P>,
        U: Upstream<Pr::Output>,
    {
        Self::with_coordinator(R::current(), config, preparer, upstream, coordinator)
    }

    /// A manager in cluster mode ([`crate::cluster`]; `config.cluster` is set
    /// here): every new flight first claims its key from `coordinator`, and
    /// runs the upstream only if this instance becomes the key's owner (it
    /// publishes its log then); otherwise it follows the owner's log or is
    /// served from the cluster's cache. Managers sharing a coordinator (Redis,
    /// or one [`MemoryCoordinator`]) coalesce and cache across each other.
    ///
    /// # Errors
    /// The config's first invalid field.
    pub fn with_coordinator<Pr, U>(
        runtime: R,
        mut config: Config,
        preparer: Pr,
        upstream: U,
        coordinator: Arc<dyn Coordinator>,
    ) -> Result<Self, ConfigError>
    where
        Pr: Preparer<P>,
        U: Upstream<Pr::Output>,
    {
        config.cluster = true;
        Self::build(runtime, config, preparer, upstream, Some(coordinator))
    }

    fn build<Pr, U>(
        runtime: R,
        config: Config,
        preparer: Pr,
        upstream: U,
        coordinator: Option<Arc<dyn Coordinator>>,
    ) -> Result<Self, ConfigError>
    where
        Pr: Preparer<P>,
        U: Upstream<Pr::Output>,
    {
        let machine = Machine::new(config)?;
        let prepare = user::erase(preparer, upstream);
        let shared = Shared::new(runtime, machine, prepare, coordinator);
        Ok(Manager {
            owner: Arc::new(Owner { shared }),
        })
    }

    fn shared(&self) -> &Arc<Shared<P, R>> {
        &self.owner.shared
    }

    /// Submits a request (rules [1](crate::contract#rule-1)-[3](crate::contract#rule-3)) and returns at once how it was placed: its
    /// id, its [`Route`] and its queue position. It joins the key's live flight,
    /// or is served from the cache, or creates a flight; only in the last case is
    /// `payload` kept, for the preparation (otherwise it is dropped).
    ///
    /// The request must be attached with [`Manager::stream`] within
    /// `attach_timeout`, or it times out.
    ///
    /// # Errors
    /// [`SubmitError`]: queue full, empty key, shutting down. Nothing changes.
    pub fn submit(&self, key: impl Into<Key>, payload: P) -> Result<Placement, SubmitError> {
        self.submit_inner(key.into(), payload, None)
            .map(|(placement, _)| placement)
    }

    /// Submits a request and attaches to it in one step: the usual client call.
    /// The stream's [`ResultStream::id`] is the request's id.
    ///
    /// # Errors
    /// As [`Manager::submit`].
    pub fn submit_and_stream(
        &self,
        key: impl Into<Key>,
        payload: P,
    ) -> Result<ResultStream, SubmitError> {
        let inbox = Arc::new(Inbox::new());
        let (placement, attached) = self.submit_inner(key.into(), payload, Some(&inbox))?;
        debug_assert!(attached, "a request just submitted has no reader");
        Ok(self.result_stream(placement.id, inbox))
    }

    /// Submits; with `attach`, also attaches and registers the stream's inbox.
    fn submit_inner(
        &self,
        key: Key,
        payload: P,
        attach: Option<&Arc<Inbox>>,
    ) -> Result<(Placement, bool), SubmitError> {
        let (result, unused) = self
            .shared()
            .with(|g, now| match g.machine.submit(now, key) {
                Ok(submission) => {
                    let unused = match submission.route {
                        Route::NewFlight(flight) => {
                            g.store_payload(flight, payload);
                            None
                        }
                        _ => Some(payload),
                    };
                    // `status` counts the flights ahead in the queue: O(queue
                    // length), under the lock. Only `submit` reports it.
                    let queue_position = match attach {
                        None => g
                            .machine
                            .status(submission.request)
                            .and_then(|status| status.queue_position),
                        Some(_) => None,
                    };
                    let placement = Placement {
                        id: submission.request,
                        route: submission.route,
                        queue_position,
                    };
                    let attached = match attach {
                        Some(inbox) if g.machine.attach(now, submission.request).is_ok() => {
                            g.add_reader(submission.request, Arc::clone(inbox));
                            true
                        }
                        _ => false,
                    };
                    (Ok((placement, attached)), unused)
                }
                Err(e) => (Err(e), Some(payload)),
            });
        drop(unused); // the user's payload is dropped outside the lock
        result
    }

    fn result_stream(&self, id: RequestId, inbox: Arc<Inbox>) -> ResultStream {
        let source: Arc<dyn stream::Source> = Arc::clone(self.shared()) as _;
        ResultStream::new(id, source, inbox)
    }

    /// Attaches to a request's result stream (at most one per request) and returns
    /// at once. The stream replays from the first chunk; a request that already
    /// ended yields its outcome (e.g. [`Outcome::Cancelled`](crate::Outcome::Cancelled)
    /// within `cancelled_retention`, [rule 13](crate::contract#rule-13)).
    ///
    /// # Errors
    /// [`RequestError::NotFound`] or [`RequestError::AlreadyAttached`].
    pub fn stream(&self, id: RequestId) -> Result<ResultStream, RequestError> {
        let inbox = Arc::new(Inbox::new());
        self.shared().with(|g, now| {
            g.machine.attach(now, id)?;
            g.add_reader(id, Arc::clone(&inbox));
            Ok::<_, RequestError>(())
        })?;
        Ok(self.result_stream(id, inbox))
    }

    /// Cancels a request (rules [9](crate::contract#rule-9)-[14](crate::contract#rule-14)). Idempotent. If it was its flight's last
    /// member, the flight's work is aborted at once and its slot handed on.
    ///
    /// # Errors
    /// [`RequestError::NotFound`], or [`RequestError::AlreadyFinished`] if it
    /// ended otherwise.
    pub fn cancel(&self, id: RequestId) -> Result<(), RequestError> {
        self.shared().with(|g, now| g.machine.cancel(now, id))
    }

    /// A snapshot of one request; `None` if no record exists (never submitted, or
    /// its record is gone).
    #[must_use]
    pub fn status(&self, id: RequestId) -> Option<RequestStatus> {
        self.shared().with(|g, _| g.machine.status(id))
    }

    /// Gauges and totals ([rule 24](crate::contract#rule-24)).
    #[must_use]
    pub fn stats(&self) -> Stats {
        self.shared().with(|g, _| g.machine.stats())
    }

    /// Tasks spawned and finished so far (preparations, upstreams and the timer).
    #[must_use]
    pub fn tasks(&self) -> TaskCounts {
        self.shared().tasks.counts()
    }

    /// Tasks still running; `0` after [`Manager::shutdown`] returned.
    #[must_use]
    pub fn tasks_running(&self) -> u64 {
        self.tasks().running()
    }

    /// The time on the manager's clock: nanoseconds since it started.
    #[must_use]
    pub fn now(&self) -> Time {
        self.shared().runtime.now()
    }

    /// Checks the machine's invariants (SPEC.md) in O(n). For tests and diagnostics.
    ///
    /// # Errors
    /// The first invariant that does not hold (a bug in flightdeck).
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        self.shared().with(|g, _| g.machine.check_invariants())
    }

    /// Shuts down gracefully: stops admission (later submits get
    /// [`SubmitError::ShuttingDown`]), ends every live request with
    /// [`Failure::Shutdown`](crate::Failure::Shutdown) (readers read it as their
    /// last item), aborts all running work, stops the timer, and waits until every
    /// task the manager spawned has finished. Idempotent.
    ///
    /// Records of ended requests stay readable; with the timer stopped, they are
    /// dropped when their stream is, or with the manager.
    pub async fn shutdown(&self) {
        self.shared().close();
        self.shared().tasks.all_finished().await;
    }
}
