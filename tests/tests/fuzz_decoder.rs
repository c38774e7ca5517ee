//! The scenario decoder on stable: seeded random byte strings decoded to
//! scenarios and run in the simulated world with every check on.

use flightdeck_tests::scenario::Scenario;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// How many random scenarios run (override with `FLIGHTDECK_FUZZ_CASES`).
fn cases() -> usize {
    std::env::var("FLIGHTDECK_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000)
}

#[test]
fn seeded_random_scenarios_keep_every_invariant() {
    let mut rng = SmallRng::seed_from_u64(0x00f1_16d7_dec4);
    let n = cases();
    let mut steps = 0usize;
    for case in 0..n {
        let len = rng.gen_range(0..400);
        let bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        let scenario = Scenario::decode(&bytes);
        steps += scenario.ops.len();
        if let Err(v) = scenario.run() {
            panic!("case {case} violated: {v}\nbytes: {bytes:?}\nscenario: {scenario:#?}");
        }
    }
    flightdeck_tests::report!("ran {n} decoded scenarios ({steps} ops)");
}

#[test]
fn every_short_byte_string_decodes_and_runs() {
    // Exhaustive over all 1- and 2-byte inputs after a fixed config prefix.
    for a in 0..=255u8 {
        for b in [0u8, 1, 7, 13, 255] {
            let s = Scenario::decode(&[1, 1, 1, 1, 1, 1, a, b, a, b]);
            s.run().unwrap_or_else(|v| panic!("[{a},{b}]: {v}"));
        }
    }
    assert!(Scenario::decode(&[]).run().is_ok());
}
