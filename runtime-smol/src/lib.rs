//! # flightdeck-smol
//!
//! [flightdeck](flightdeck_core) on smol: a [`Manager`] that coalesces identical
//! streaming requests to an expensive backend, bounds preparation and upstream
//! concurrency, replays live streams to late joiners, caches results, cancels by
//! id with confirmation, enforces a deadline for every phase, and leaks nothing.
//!
//! The adapter is thin: every decision is made by the sans-IO
//! [`Machine`](flightdeck_core::Machine); this crate only supplies smol's tasks,
//! clock and timer ([`SmolRuntime`]) to the shared driver
//! ([`flightdeck_core::driver`]). [`Manager::new`] spawns on smol's global
//! executor; [`Manager::with_runtime`] with [`SmolRuntime::with_executor`] uses
//! your own.
//!
//! ```
//! use std::convert::Infallible;
//! use flightdeck_smol::{Bytes, Config, Item, Manager, Outcome, Preparation};
//!
//! smol::block_on(async {
//!     // Preparation: payload (here the prompt) -> what the upstream needs.
//!     let prepare = |prompt: String| async move {
//!         Ok::<_, Infallible>(Preparation::cacheable(prompt))
//!     };
//!     // Upstream: answers with one chunk per word.
//!     let upstream = |prompt: String| async move {
//!         let words: Vec<Result<Bytes, Infallible>> =
//!             prompt.split(' ').map(|w| Ok(Bytes::from(format!("{w} ")))).collect();
//!         Ok::<_, Infallible>(futures_lite::stream::iter(words))
//!     };
//!     let manager: Manager<String> = Manager::new(Config::default(), prepare, upstream).unwrap();
//!
//!     // Two identical questions share one upstream stream.
//!     let mut a = manager.submit_and_stream("q1", "hello there".to_owned()).unwrap();
//!     let mut b = manager.submit_and_stream("q1", "hello there".to_owned()).unwrap();
//!     let mut text = String::new();
//!     while let Some(item) = a.next_item().await {
//!         match item {
//!             Item::Chunk(chunk) => text.push_str(std::str::from_utf8(&chunk).unwrap()),
//!             Item::End(outcome) => assert_eq!(outcome, Outcome::Completed),
//!         }
//!     }
//!     assert_eq!(text, "hello there ");
//!     while b.next_item().await.is_some() {}
//!     assert_eq!(manager.stats().totals.streams_started, 1);
//!
//!     manager.shutdown().await;
//!     assert_eq!(manager.tasks_running(), 0);
//! });
//! ```

use std::sync::Arc;
use std::time::Instant;

use flightdeck_core::driver::{BoxFuture, Runtime};
use smol::{Executor, Timer};

pub use flightdeck_core::driver::{
    self, Claim, Coordinator, Lost, MemoryCoordinator, Placement, Preparation, Preparer, Publisher,
    RemoteEvent, RemoteLog, ResultStream, TaskCounts, Upstream,
};
pub use flightdeck_core::{
    Bytes, Config, ConfigError, Failure, FlightId, InvariantViolation, Item, Key, Outcome, Phase,
    RequestError, RequestId, RequestState, RequestStatus, Role, Route, Stats, SubmitError, Time,
    Totals, Work,
};

/// The flightdeck manager on smol, for payloads of type `P`. See
/// [`driver::Manager`] for every method.
pub type Manager<P> = driver::Manager<P, SmolRuntime>;

/// smol's tasks, clock and timer, for the shared driver.
#[derive(Clone, Debug)]
pub struct SmolRuntime {
    /// `None`: smol's global executor.
    executor: Option<Arc<Executor<'static>>>,
    start: Instant,
}

impl SmolRuntime {
    /// Spawns on smol's global executor; the clock starts now.
    #[must_use]
    pub fn global() -> Self {
        SmolRuntime {
            executor: None,
            start: Instant::now(),
        }
    }

    /// Spawns on `executor`, which the caller must keep running; the clock starts
    /// now.
    #[must_use]
    pub fn with_executor(executor: Arc<Executor<'static>>) -> Self {
        SmolRuntime {
            executor: Some(executor),
            start: Instant::now(),
        }
    }
}

impl Runtime for SmolRuntime {
    /// smol's global executor ([`SmolRuntime::global`]).
    fn current() -> Self {
        Self::global()
    }

    fn spawn(&self, task: BoxFuture<()>) {
        // A smol task is cancelled when dropped: detach it.
        match &self.executor {
            Some(executor) => executor.spawn(task).detach(),
            None => smol::spawn(task).detach(),
        }
    }

    fn now(&self) -> Time {
        Time::from_duration(self.start.elapsed())
    }

    fn sleep_until(&self, deadline: Time) -> BoxFuture<()> {
        let timer = match self.start.checked_add(deadline.as_duration()) {
            Some(at) => Timer::at(at),
            None => Timer::never(),
        };
        Box::pin(async move {
            timer.await;
        })
    }
}
