//! # flightdeck-tokio
//!
//! [flightdeck](flightdeck_core) on tokio: a [`Manager`] that coalesces identical
//! streaming requests to an expensive backend, bounds preparation and upstream
//! concurrency, replays live streams to late joiners, caches results, cancels by
//! id with confirmation, enforces a deadline for every phase, and leaks nothing.
//!
//! The adapter is thin: every decision is made by the sans-IO
//! [`Machine`](flightdeck_core::Machine); this crate only supplies tokio's tasks,
//! clock and timer ([`TokioRuntime`]) to the shared driver
//! ([`flightdeck_core::driver`]). The runtime must have its time driver enabled
//! (`#[tokio::main]` and `Builder::enable_all` do).
//!
//! ```
//! use std::convert::Infallible;
//! use flightdeck_tokio::{Bytes, Config, Item, Manager, Outcome, Preparation};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // Preparation: payload (here the prompt) -> what the upstream needs.
//! let prepare = |prompt: String| async move {
//!     Ok::<_, Infallible>(Preparation::cacheable(prompt))
//! };
//! // Upstream: answers with one chunk per word.
//! let upstream = |prompt: String| async move {
//!     let words: Vec<Result<Bytes, Infallible>> =
//!         prompt.split(' ').map(|w| Ok(Bytes::from(format!("{w} ")))).collect();
//!     Ok::<_, Infallible>(futures_lite::stream::iter(words))
//! };
//! let manager: Manager<String> = Manager::new(Config::default(), prepare, upstream).unwrap();
//!
//! // Two identical questions share one upstream stream.
//! let mut a = manager.submit_and_stream("q1", "hello there".to_owned()).unwrap();
//! let mut b = manager.submit_and_stream("q1", "hello there".to_owned()).unwrap();
//! let mut text = String::new();
//! while let Some(item) = a.next_item().await {
//!     match item {
//!         Item::Chunk(chunk) => text.push_str(std::str::from_utf8(&chunk).unwrap()),
//!         Item::End(outcome) => assert_eq!(outcome, Outcome::Completed),
//!     }
//! }
//! assert_eq!(text, "hello there ");
//! while b.next_item().await.is_some() {}
//! assert_eq!(manager.stats().totals.streams_started, 1);
//!
//! manager.shutdown().await;
//! assert_eq!(manager.tasks_running(), 0);
//! # }
//! ```

#[cfg(feature = "cluster")]
pub mod cluster;
#[cfg(feature = "http")]
pub mod http;

use std::future::pending;

use flightdeck_core::driver::{BoxFuture, Runtime};
use tokio::runtime::Handle;
use tokio::time::Instant;

pub use flightdeck_core::driver::{
    self, Claim, Coordinator, Lost, MemoryCoordinator, Placement, Preparation, Preparer, Publisher,
    RemoteEvent, RemoteLog, ResultStream, TaskCounts, Upstream,
};
pub use flightdeck_core::{
    Bytes, Config, ConfigError, Failure, FlightId, InvariantViolation, Item, Key, Outcome, Phase,
    RequestError, RequestId, RequestState, RequestStatus, Role, Route, Stats, SubmitError, Time,
    Totals, Work,
};

/// The flightdeck manager on tokio, for payloads of type `P`. See
/// [`driver::Manager`] for every method.
pub type Manager<P> = driver::Manager<P, TokioRuntime>;

/// tokio's tasks, clock and timer, for the shared driver.
#[derive(Clone, Debug)]
pub struct TokioRuntime {
    handle: Handle,
    start: Instant,
}

impl TokioRuntime {
    /// Spawns on the runtime behind `handle`; the clock starts now.
    #[must_use]
    pub fn with_handle(handle: Handle) -> Self {
        TokioRuntime {
            handle,
            start: Instant::now(),
        }
    }
}

impl Runtime for TokioRuntime {
    /// The runtime of the calling context.
    ///
    /// # Panics
    /// Outside a tokio runtime, like `tokio::spawn`.
    fn current() -> Self {
        Self::with_handle(Handle::current())
    }

    fn spawn(&self, task: BoxFuture<()>) {
        // Dropping a tokio `JoinHandle` detaches the task.
        drop(self.handle.spawn(task));
    }

    fn now(&self) -> Time {
        Time::from_duration(Instant::now().saturating_duration_since(self.start))
    }

    fn sleep_until(&self, deadline: Time) -> BoxFuture<()> {
        match self.start.checked_add(deadline.as_duration()) {
            Some(at) => Box::pin(tokio::time::sleep_until(at)),
            None => Box::pin(pending()),
        }
    }
}
