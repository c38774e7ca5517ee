//! The verification API a user points at their own configuration
//! (`flightdeck_tests::explore` builder and `flightdeck_tests::model_check`):
//! it runs a bound to completion with exactly the states of the CI test, it
//! reports a counterexample for a property that is violated on purpose, and the
//! model check runs against a fixed configuration.

use flightdeck_core::Config;
use flightdeck_tests::explore::{config, explore_with, Bound};
use flightdeck_tests::model_check;
use flightdeck_tests::world::{Op, World};

/// The builder reproduces `Bound::small_reading` and visits exactly the states
/// the CI explorer test reports for it (tests/tests/explorer.rs).
#[test]
fn builder_bound_explores_exactly_the_ci_state_count() {
    let bound = Bound::new(config(1, 1))
        .requests(2)
        .keys(2)
        .chunks(2)
        .uncacheable(true)
        .reads(true);
    let mut calls = 0;
    let report = explore_with(&bound, 50_000, |r, _depth| {
        calls += 1;
        assert_eq!(r.states, calls * 50_000, "progress every 50,000 states");
    })
    .unwrap_or_else(|cx| panic!("{cx}"));
    // 110,455 states before a read of the end armed the record's retention
    // (contract rule 21): that deadline can now fire, so more states exist.
    assert_eq!(report.states, 225_807);
    assert_eq!(report.transitions, 1_072_638);
    assert_eq!(calls, 4);
}

fn nobody_cancels(world: &World) -> Result<(), String> {
    match world.clients.iter().position(|c| c.cancelled_at.is_some()) {
        Some(i) => Err(format!("client {i} cancelled")),
        None => Ok(()),
    }
}

/// A property that fails on purpose yields a shrunk counterexample: the
/// shortest path to a cancel, with its trace.
#[test]
fn violated_property_gives_a_shrunk_counterexample() {
    let bound = Bound::new(config(1, 1))
        .requests(2)
        .keys(1)
        .property(nobody_cancels);
    let cx = explore_with(&bound, 0, |_, _| {}).expect_err("a cancel is reachable");
    assert_eq!(cx.message, "property: client 0 cancelled");
    assert_eq!(cx.path, vec![Op::Submit { key: 0 }, Op::Cancel(0)]);
    assert!(cx.found_len >= cx.path.len());
    assert_eq!(cx.trace.steps.len(), 2, "{cx}");
}

/// An invalid configuration is reported, not a panic.
#[test]
fn invalid_configuration_is_reported() {
    let zero = Config {
        max_concurrent_streams: 0,
        ..config(1, 1)
    };
    let cx = explore_with(&Bound::new(zero.clone()), 0, |_, _| {}).expect_err("invalid");
    assert!(cx.message.starts_with("invalid configuration"), "{cx}");
    let cx = model_check::check(zero, 1, 10).expect_err("invalid");
    assert!(cx.message.starts_with("invalid configuration"), "{cx}");
}

/// The model check runs against a fixed configuration and counts its cases.
#[test]
fn model_check_runs_a_fixed_configuration() {
    let report = model_check::check(config(1, 1), 64, 60).unwrap_or_else(|cx| panic!("{cx}"));
    assert_eq!(report.cases, 64);
    assert!(
        report.coverage.get("route joined").copied().unwrap_or(0) > 0,
        "{:?}",
        report.coverage
    );
}
