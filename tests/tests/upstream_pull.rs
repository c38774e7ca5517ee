//! The driver pulls from the upstream only what the core accepts (issue 10):
//! an always-ready upstream that counts its pulls is not drained ahead of a
//! `max_response_bytes` refusal or a cancel, on every runtime.
//!
//! Before the fix the driver pulled up to 64 ready chunks before reporting any,
//! so each count below was 64 or 65.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use flightdeck_tokio::driver::{Manager, Preparation};
use flightdeck_tokio::{Bytes, Config, Failure, Item, Outcome, RequestId};

use flightdeck_tests::runtimes::{Smol, TestRt, TokioCurrent, TokioMulti};

const CHUNK: &[u8] = b"0123456789"; // 10 bytes

/// Called by the upstream after it produced chunk `n` (1-based).
type Hook = Arc<Mutex<Option<Box<dyn Fn(usize) + Send>>>>;

/// A manager whose one upstream is always ready, never ends, and counts pulls.
fn counting<T: TestRt>(max_response_bytes: u64) -> (Manager<(), T::R>, Arc<AtomicUsize>, Hook) {
    let pulled = Arc::new(AtomicUsize::new(0));
    let hook: Hook = Arc::new(Mutex::new(None));
    let (p, h) = (Arc::clone(&pulled), Arc::clone(&hook));
    let upstream = move |(): ()| {
        let (p, h) = (Arc::clone(&p), Arc::clone(&h));
        async move {
            let chunks = futures_lite::stream::repeat_with(move || {
                let n = p.fetch_add(1, SeqCst) + 1;
                if let Some(hook) = h.lock().expect("hook").as_ref() {
                    hook(n);
                }
                Ok::<_, Infallible>(Bytes::from_static(CHUNK))
            });
            Ok::<_, Infallible>(chunks)
        }
    };
    let prepare = |(): ()| async { Ok::<_, Infallible>(Preparation::uncacheable(())) };
    let config = Config {
        max_response_bytes,
        ..Config::default()
    };
    let m = Manager::new(config, prepare, upstream).expect("valid config");
    (m, pulled, hook)
}

async fn read_to_end(mut s: flightdeck_tokio::ResultStream) -> (usize, Outcome) {
    let mut chunks = 0;
    while let Some(item) = s.next_item().await {
        match item {
            Item::Chunk(_) => chunks += 1,
            Item::End(outcome) => return (chunks, outcome),
        }
    }
    panic!("stream ended without a terminal item");
}

/// A limit the first chunk already exceeds: exactly one pull.
async fn refused_first_chunk<T: TestRt>() {
    let (m, pulled, _hook) = counting::<T>(5);
    let s = m.submit_and_stream("k", ()).expect("submit");
    let (chunks, outcome) = read_to_end(s).await;
    assert_eq!(chunks, 0, "{}", T::NAME);
    assert_eq!(
        outcome,
        Outcome::Failed(Failure::ResponseTooLarge { limit: 5 }),
        "{}",
        T::NAME
    );
    m.shutdown().await;
    assert_eq!(
        pulled.load(SeqCst),
        1,
        "{}: pulled past a refused chunk",
        T::NAME
    );
}

/// A limit of 3.5 chunks: three accepted, the fourth refused, nothing more pulled.
async fn refused_fourth_chunk<T: TestRt>() {
    let (m, pulled, _hook) = counting::<T>(35);
    let s = m.submit_and_stream("k", ()).expect("submit");
    let (chunks, outcome) = read_to_end(s).await;
    assert_eq!(chunks, 3, "{}", T::NAME);
    assert_eq!(
        outcome,
        Outcome::Failed(Failure::ResponseTooLarge { limit: 35 }),
        "{}",
        T::NAME
    );
    m.shutdown().await;
    assert_eq!(
        pulled.load(SeqCst),
        4,
        "{}: pulled past a refused chunk",
        T::NAME
    );
}

/// The upstream's first chunk triggers a cancel of the only member: the flight
/// is aborted, and the driver pulls nothing more.
async fn cancelled_after_first_chunk<T: TestRt>() {
    let (m, pulled, hook) = counting::<T>(u64::MAX);
    let id: Arc<Mutex<Option<RequestId>>> = Arc::new(Mutex::new(None));
    let canceller = m.clone();
    let target = Arc::clone(&id);
    *hook.lock().expect("hook") = Some(Box::new(move |n| {
        if n == 1 {
            let id = target.lock().expect("id").expect("submitted");
            canceller.cancel(id).expect("cancel");
        }
    }));
    let s = m.submit_and_stream("k", ()).expect("submit");
    *id.lock().expect("id") = Some(s.id());
    let (_, outcome) = read_to_end(s).await;
    assert_eq!(outcome, Outcome::Cancelled, "{}", T::NAME);
    *hook.lock().expect("hook") = None; // drops the manager clone
    m.shutdown().await;
    assert_eq!(
        pulled.load(SeqCst),
        1,
        "{}: pulled after the abort",
        T::NAME
    );
}

macro_rules! on_every_runtime {
    ($($scenario:ident),* $(,)?) => {
        on_every_runtime!(@on smol, Smol, $($scenario),*);
        on_every_runtime!(@on tokio_current_thread, TokioCurrent, $($scenario),*);
        on_every_runtime!(@on tokio_multi_thread, TokioMulti, $($scenario),*);
    };
    (@on $runtime:ident, $rt:ty, $($scenario:ident),*) => {
        mod $runtime {
            use super::*;
            $(
                #[test]
                fn $scenario() {
                    <$rt>::block_on(super::$scenario::<$rt>());
                }
            )*
        }
    };
}

on_every_runtime!(
    refused_first_chunk,
    refused_fourth_chunk,
    cancelled_after_first_chunk
);
