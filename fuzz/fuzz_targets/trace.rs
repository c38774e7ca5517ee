//! Bytes -> postcard trace -> replay. Decoding must never panic; a decoded trace
//! is an arbitrary input sequence, so every invariant must hold while replaying
//! (recorded actions, if any, are arbitrary too and only compared, never trusted).
#![no_main]

use flightdeck_tests::trace::{ReplayError, Trace};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(mut trace) = Trace::decode(data) else {
        return;
    };
    // Fuzzed action and reply lists are garbage; replay without them.
    trace.actions = None;
    trace.replies = None;
    if trace.steps.len() > 4096 {
        trace.steps.truncate(4096);
    }
    match trace.replay() {
        Ok(_) | Err(ReplayError::Config(_)) => {}
        Err(e) => panic!("replay violated an invariant: {e:?}"),
    }
});
