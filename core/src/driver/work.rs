//! The user's work as tasks: a preparation and an upstream run here, outside the
//! manager's lock, and report back through [`Shared::with`] (one input each).
//! The dispatch in `dispatch.rs` starts them with [`Shared::start_preparation`] and
//! [`Shared::start_stream`] (defined here, so this module depends on `shared`
//! and not the other way round).
//! A panic in either is caught and reported as a failure of that flight
//! ([rule 23](crate::contract#rule-23)), so its slot is released.

use core::panic::AssertUnwindSafe;
use core::task::{Context, Poll};
use std::any::Any;
use std::sync::Arc;

use bytes::Bytes;
use futures_lite::future::{poll_fn, FutureExt as _};

use super::dispatch::After;
use super::shared::Shared;
use super::signal::Signal;
use super::user::{ChunkStream, Opener};
use super::{BoxFuture, Runtime};
use crate::{Failure, FlightId, Work};

impl<P: Send + 'static, R: Runtime> Shared<P, R> {
    /// Starts the preparation of `flight` (spawned once the lock is
    /// released); returns its stop signal.
    pub(super) fn start_preparation(
        &self,
        flight: FlightId,
        work: BoxFuture<Result<(crate::Prepared, Opener), String>>,
        after: &mut After,
    ) -> Arc<Signal> {
        let stop = Arc::new(Signal::default());
        let task = run_preparation(self.arc(), flight, work);
        after
            .spawn
            .push(self.counted(Self::stoppable(Arc::clone(&stop), task)));
        stop
    }

    /// Starts the upstream of `flight` (spawned once the lock is released);
    /// returns its stop signal.
    pub(super) fn start_stream(
        &self,
        flight: FlightId,
        opener: Opener,
        after: &mut After,
    ) -> Arc<Signal> {
        let stop = Arc::new(Signal::default());
        let task = run_stream(self.arc(), flight, opener, Arc::clone(&stop));
        after
            .spawn
            .push(self.counted(Self::stoppable(Arc::clone(&stop), task)));
        stop
    }
}

/// Chunks an upstream has ready at once are reported under one lock, up to this
/// many (and never past `max_response_bytes`, nor after a stop).
const MAX_BATCH: usize = 64;

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

/// Runs the user's preparation and reports its result ([rule 23](crate::contract#rule-23): a panic too).
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
            let leftover = g.keep_opener(flight, opener);
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

/// Polls the user's upstream once, catching a panic
/// ([rule 23](crate::contract#rule-23)). A plain poll, not a future per pull:
/// the upstream task pulls every chunk through here.
fn poll_step(stream: &mut ChunkStream, cx: &mut Context<'_>) -> Poll<Step> {
    let polled = std::panic::catch_unwind(AssertUnwindSafe(|| stream.as_mut().poll_next(cx)));
    Poll::Ready(match polled {
        Ok(Poll::Pending) => return Poll::Pending,
        Ok(Poll::Ready(Some(Ok(data)))) => Step::Chunk(data),
        Ok(Poll::Ready(Some(Err(message)))) => Step::End(Err(Failure::Upstream(message))),
        Ok(Poll::Ready(None)) => Step::End(Ok(())),
        Err(panic) => Step::End(Err(Failure::Panicked {
            work: Work::Stream,
            message: panic_message(&*panic),
        })),
    })
}

/// Opens the user's upstream and reports its chunks and its end ([rule 23](crate::contract#rule-23): a
/// panic too). Stops as soon as the machine calls the flight stale.
///
/// Flow control: the upstream is pulled only while the core would still accept
/// what the driver holds. Before every pull the stop signal is checked (set
/// under the lock by the machine's `Abort`: a cancel, a deadline, a shutdown),
/// and a batch of ready chunks ends as soon as its bytes would take the response
/// past `max_response_bytes`. So the driver holds at most one chunk the core
/// refuses, and a backend billed by the token is not asked for more.
async fn run_stream<P: Send + 'static, R: Runtime>(
    shared: Arc<Shared<P, R>>,
    flight: FlightId,
    opener: Opener,
    stop: Arc<Signal>,
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
    let limit = shared.max_response_bytes;
    // Bytes the core accepted so far, plus those in the batch.
    let mut bytes: u64 = 0;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        if stop.is_set() {
            return;
        }
        let mut end = match poll_fn(|cx| poll_step(&mut stream, cx)).await {
            Step::Chunk(data) => {
                bytes = bytes.saturating_add(data.len() as u64);
                batch.push(data);
                None
            }
            Step::End(result) => Some(result),
        };
        // Report every chunk that is ready already under one lock, as long as
        // the core would accept it: pulled in one poll of this task.
        let full = poll_fn(|cx| {
            while end.is_none() && batch.len() < MAX_BATCH {
                if bytes > limit || stop.is_set() {
                    return Poll::Ready(false);
                }
                match poll_step(&mut stream, cx) {
                    Poll::Ready(Step::Chunk(data)) => {
                        bytes = bytes.saturating_add(data.len() as u64);
                        batch.push(data);
                    }
                    Poll::Ready(Step::End(result)) => end = Some(result),
                    Poll::Pending => return Poll::Ready(false),
                }
            }
            Poll::Ready(true)
        })
        .await;
        let over = shared.with(|g, now| {
            let offered = batch.len();
            match g.deliver_chunks(now, flight, batch.drain(..)) {
                Ok(accepted) if accepted == offered => {}
                // Aborted, ended, or over max_response_bytes.
                Ok(_) | Err(_) => return true,
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
