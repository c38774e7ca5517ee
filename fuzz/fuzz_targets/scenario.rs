//! Bytes -> scenario -> simulated world with every check on.
#![no_main]

use flightdeck_tests::scenario::Scenario;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let scenario = Scenario::decode(data);
    if let Err(v) = scenario.run() {
        panic!("violation: {v}\nscenario: {scenario:?}");
    }
});
