//! Random walks through the two-instance cluster world, beyond what the
//! exhaustive bound can reach (contract rules 25-29, invariant 9): four
//! requests over both instances, two chunks per upstream, four generations,
//! one crash. Each walk takes random enabled ops with every check after every
//! step, then runs to rest, where every surviving client must have its terminal
//! item and every surviving machine must be empty.

use std::cell::Cell;

use flightdeck_tests::cluster_world::{ClusterBound, ClusterWorld};
use proptest::prelude::*;
use proptest::test_runner::{Config as PtConfig, TestRunner};

/// Walks per run (each up to `MAX_OPS` ops): a few seconds in release.
const WALKS: u32 = 20_000;
const MAX_OPS: usize = 160;

fn bound() -> ClusterBound {
    ClusterBound {
        requests: 4,
        chunks: 2,
        generations: 4,
        crashes: 1,
        ..ClusterBound::small()
    }
}

#[test]
fn random_walks_through_two_instances_keep_every_cluster_rule() {
    let bound = bound();
    let mut runner = TestRunner::new(PtConfig {
        cases: WALKS,
        failure_persistence: None,
        ..PtConfig::default()
    });
    let steps = Cell::new(0usize);
    let ended = Cell::new(0usize);
    let strategy = prop::collection::vec(any::<u16>(), 1..MAX_OPS);
    let result = runner.run(&strategy, |choices| {
        let mut world = ClusterWorld::new(&bound.config).expect("valid config");
        let mut path = Vec::new();
        for choice in choices {
            let ops = world.enabled(&bound);
            let Some(op) = ops.get(usize::from(choice) % ops.len().max(1)).cloned() else {
                break;
            };
            path.push(op.clone());
            world
                .apply(&op)
                .map_err(|v| TestCaseError::fail(format!("{v}\npath: {path:?}")))?;
        }
        world
            .finish(&bound)
            .map_err(|v| TestCaseError::fail(format!("at rest: {v}\npath: {path:?}")))?;
        steps.set(steps.get() + path.len());
        ended.set(ended.get() + world.clients.iter().filter(|c| !c.gone).count());
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let (steps, ended) = (steps.get(), ended.get());
    flightdeck_tests::report!(
        "cluster walks: {WALKS} walks, {steps} steps, {ended} clients ended at rest"
    );
    assert!(ended > 0 && steps > usize::try_from(WALKS).unwrap_or(0));
}
