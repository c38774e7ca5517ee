//! The exhaustive explorer over the CI bound (and a larger one on demand).
//!
//! `FLIGHTDECK_EXPLORE=large` switches the main test to the larger bound; the
//! `#[ignore]`d test always runs the larger one.

use flightdeck_tests::explore::{explore, Bound};

fn run(bound: &Bound) {
    match explore(bound) {
        Ok(r) => {
            println!(
                "explored {} states in {:.2} s ({} transitions, max depth {})",
                r.states,
                r.elapsed.as_secs_f64(),
                r.transitions,
                r.max_depth
            );
            assert!(r.states > 1000, "the bound explores a real state space");
        }
        Err(cx) => panic!("explorer found a violation:\n{cx}"),
    }
}

#[test]
fn every_interleaving_of_the_ci_bound_keeps_every_invariant() {
    let large = std::env::var("FLIGHTDECK_EXPLORE").is_ok_and(|v| v == "large");
    run(&if large {
        Bound::large()
    } else {
        Bound::small()
    });
}

#[test]
#[ignore = "minutes: the larger bound (or set FLIGHTDECK_EXPLORE=large)"]
fn every_interleaving_of_the_large_bound_keeps_every_invariant() {
    run(&Bound::large());
}
