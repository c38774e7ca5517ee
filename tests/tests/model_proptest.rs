//! The core against the naive reference model (`flightdeck_tests::model`), over
//! random input sequences and random small configurations: the CI run of
//! [`flightdeck_tests::model_check`], whose module docs list everything compared
//! after every step.
//!
//! `CASES` cases per run (printed); failures persist to
//! `tests/proptest-regressions/model_proptest.txt`, which is committed.

use flightdeck_tests::model_check::{check_configs, random_configs, Options};

/// Cases per run: about 7 s of test time in `cargo test --release` on two shared
/// cores (the run prints its time and coverage).
const CASES: u32 = 8192;
/// Ops per case, at most (exclusive).
const MAX_OPS: usize = 150;

/// Where failures persist (committed): `tests/proptest-regressions/model_proptest.txt`.
const REGRESSIONS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/proptest-regressions/model_proptest.txt"
);

#[test]
fn core_matches_the_reference_model() {
    let options = Options {
        cases: CASES,
        max_ops: MAX_OPS,
        regressions: Some(REGRESSIONS),
    };
    let report = match check_configs(random_configs(), &options) {
        Ok(report) => report,
        Err(counterexample) => panic!("{counterexample}"),
    };
    flightdeck_tests::report!(
        "model_proptest: {CASES} cases of up to {MAX_OPS} ops in {:.1?}; coverage {:?}",
        report.elapsed,
        report.coverage
    );
    // A strategy that never reaches a phase proves nothing about it.
    assert_eq!(
        report.unreached(),
        Vec::<&str>::new(),
        "the random runs never reached these: the strategy lost coverage"
    );
}
