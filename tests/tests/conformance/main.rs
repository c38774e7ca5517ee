//! The conformance suite (issue 4): one set of end-to-end scenarios, written once
//! in `scenarios.rs`, run with real tasks and timers on smol, tokio's
//! current-thread scheduler and tokio's multi-thread scheduler.

mod scenarios;

use flightdeck_tests::{conformance_kit as kit, runtimes as rt};

macro_rules! conformance {
    ($($scenario:ident),* $(,)?) => {
        conformance!(@on smol, crate::rt::Smol, $($scenario),*);
        conformance!(@on tokio_current_thread, crate::rt::TokioCurrent, $($scenario),*);
        conformance!(@on tokio_multi_thread, crate::rt::TokioMulti, $($scenario),*);
    };
    (@on $runtime:ident, $rt:ty, $($scenario:ident),*) => {
        mod $runtime {
            use crate::rt::TestRt as _;
            $(
                #[test]
                fn $scenario() {
                    <$rt>::block_on(crate::scenarios::$scenario::<$rt>());
                }
            )*
        }
    };
}

conformance!(
    coalescing,
    finished_stream_dropped_leaves_no_record,
    late_join_replay,
    slow_reader_blocks_nobody,
    cache_hit,
    cancel_then_stream,
    cancel_mid_stream,
    last_member_leaving_aborts_upstream,
    stream_waits_for_a_client,
    deadline_queue,
    deadline_preparation,
    deadline_stream_slot,
    deadline_stream,
    deadline_idle,
    deadline_attach,
    deadline_retention_and_cache_ttl,
    panic_in_preparer,
    panic_in_upstream,
    user_errors,
    response_too_large,
    errors_are_values,
    shutdown,
);
