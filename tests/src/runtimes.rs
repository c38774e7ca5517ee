//! The three runtimes the conformance suite and the stress test run on, behind one
//! small trait, so every scenario is written once.

#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Once;
use std::time::Duration;

use flightdeck_tokio::driver::Runtime;

/// A boxed future, as the scenarios spawn them.
pub type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// One async runtime under test.
pub trait TestRt: 'static {
    /// The flightdeck runtime.
    type R: Runtime;
    /// For messages.
    const NAME: &'static str;
    /// Runs `f` to completion on a fresh runtime.
    fn block_on(f: impl Future<Output = ()> + Send + 'static);
    /// Spawns a client task; the returned future yields its output.
    fn spawn<T: Send + 'static>(f: impl Future<Output = T> + Send + 'static) -> BoxFut<T>;
    /// Sleeps on the runtime's timer.
    fn sleep(d: Duration) -> BoxFut<()>;
}

/// smol (global executor; the scenario runs in `smol::block_on`).
pub struct Smol;

impl TestRt for Smol {
    type R = flightdeck_smol::SmolRuntime;
    const NAME: &'static str = "smol";

    fn block_on(f: impl Future<Output = ()> + Send + 'static) {
        smol::block_on(f);
    }

    fn spawn<T: Send + 'static>(f: impl Future<Output = T> + Send + 'static) -> BoxFut<T> {
        Box::pin(smol::spawn(f))
    }

    fn sleep(d: Duration) -> BoxFut<()> {
        Box::pin(async move {
            smol::Timer::after(d).await;
        })
    }
}

/// tokio, current-thread scheduler.
pub struct TokioCurrent;

impl TestRt for TokioCurrent {
    type R = flightdeck_tokio::TokioRuntime;
    const NAME: &'static str = "tokio-current-thread";

    fn block_on(f: impl Future<Output = ()> + Send + 'static) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(f);
    }

    fn spawn<T: Send + 'static>(f: impl Future<Output = T> + Send + 'static) -> BoxFut<T> {
        let h = tokio::spawn(f);
        Box::pin(async move { h.await.expect("client task") })
    }

    fn sleep(d: Duration) -> BoxFut<()> {
        Box::pin(tokio::time::sleep(d))
    }
}

/// tokio, multi-thread scheduler with two workers.
pub struct TokioMulti;

impl TestRt for TokioMulti {
    type R = flightdeck_tokio::TokioRuntime;
    const NAME: &'static str = "tokio-multi-thread";

    fn block_on(f: impl Future<Output = ()> + Send + 'static) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        // Run the scenario itself on a worker, as a server's request handler would.
        rt.block_on(async move { tokio::spawn(f).await.expect("scenario") });
    }

    fn spawn<T: Send + 'static>(f: impl Future<Output = T> + Send + 'static) -> BoxFut<T> {
        TokioCurrent::spawn(f)
    }

    fn sleep(d: Duration) -> BoxFut<()> {
        TokioCurrent::sleep(d)
    }
}

/// Deliberate panics in user futures (the scenarios' preparers and upstreams)
/// carry this marker; the panic hook keeps them off the test output.
pub const DELIBERATE: &str = "deliberate panic";

/// Silences deliberate panics; every other panic is reported as usual.
pub fn quiet_deliberate_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let text = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_default();
            if !text.contains(DELIBERATE) {
                default(info);
            }
        }));
    });
}
