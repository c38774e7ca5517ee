//! The exhaustive explorer of [`crate::cluster_world`]: every interleaving of
//! two instances over one key and a simulated Redis, within a
//! [`ClusterBound`], with every check after every transition and a run to rest
//! in every state without running user work. Its report counts how often the
//! situations the bound exists for ([`CLUSTER_MUST_SEE`]) were reached, so a
//! bound that stops reaching them fails instead of passing for nothing.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use flightdeck_core::{Failure, Item, Outcome, Phase, Route};

use crate::cluster_world::{
    chunks_of, fingerprint, Client, ClusterBound, ClusterOp, ClusterWorld, Source,
};

/// The situations a cluster exploration must reach for its pass to mean
/// something (see [`ClusterReport::coverage`]).
pub const CLUSTER_MUST_SEE: &[&str] = &[
    "an instance crashed",
    "a follower completed with its owner's log",
    "a follower failed: owner lost after chunks",
    "a follower re-claimed after losing its owner",
    "an owner was fenced",
    "a claim answered from the cluster's cache",
    "a claim timed out",
];

/// Notes which of [`CLUSTER_MUST_SEE`] `world` shows.
fn cover(world: &ClusterWorld, coverage: &mut BTreeMap<&'static str, usize>) {
    let mut see = |what: &'static str, seen: bool| {
        if seen {
            *coverage.entry(what).or_default() += 1;
        }
    };
    let ended = |c: &Client, want: &dyn Fn(&Outcome) -> bool| matches!(c.items.last(), Some(Item::End(o)) if want(o));
    see(CLUSTER_MUST_SEE[0], world.crashes > 0);
    see(
        CLUSTER_MUST_SEE[1],
        world.clients.iter().any(|c| {
            let follower = matches!(c.route, Route::NewFlight(f) | Route::Joined(f)
                if matches!(world.sources.get(&(c.inst, f)), Some(Source::Generation(_))));
            follower && ended(c, &|o| *o == Outcome::Completed) && chunks_of(&c.items).count() > 0
        }),
    );
    see(
        CLUSTER_MUST_SEE[2],
        world.clients.iter().any(|c| {
            ended(c, &|o| *o == Outcome::Failed(Failure::OwnerLost))
                && chunks_of(&c.items).count() > 0
        }),
    );
    let totals = world
        .alive()
        .map(|(_, inst)| inst.driver.machine.stats().totals)
        .collect::<Vec<_>>();
    see(
        CLUSTER_MUST_SEE[3],
        totals.iter().any(|t| t.claims > t.flights),
    );
    see(
        CLUSTER_MUST_SEE[4],
        world
            .clients
            .iter()
            .any(|c| ended(c, &|o| matches!(o, Outcome::Failed(Failure::Cluster(_))))),
    );
    see(
        CLUSTER_MUST_SEE[5],
        totals.iter().any(|t| t.remote_cache_hits > 0),
    );
    see(
        CLUSTER_MUST_SEE[6],
        world
            .clients
            .iter()
            .any(|c| ended(c, &|o| *o == Outcome::TimedOut(Phase::Queue))),
    );
}

/// What a cluster exploration did.
#[derive(Clone, Debug)]
pub struct ClusterReport {
    /// Distinct states visited.
    pub states: usize,
    /// Transitions taken.
    pub transitions: usize,
    /// Longest path.
    pub max_depth: usize,
    /// States run to rest (no user work running in them).
    pub rested: usize,
    /// For each situation of [`CLUSTER_MUST_SEE`], how many states showed it.
    pub coverage: BTreeMap<&'static str, usize>,
    /// Wall time.
    pub elapsed: Duration,
}

/// A violation found by [`explore_cluster`]: the ops from the start, and why.
#[derive(Clone, Debug)]
pub struct ClusterCounterexample {
    /// The path of ops.
    pub path: Vec<ClusterOp>,
    /// The violation.
    pub message: String,
}

impl std::fmt::Display for ClusterCounterexample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "VIOLATION: {}", self.message)?;
        for (n, op) in self.path.iter().enumerate() {
            writeln!(f, "  {n:2}: {op:?}")?;
        }
        Ok(())
    }
}

/// Explores every interleaving of the cluster world within `bound`,
/// depth-first, deduplicating states by a 128-bit fingerprint, with every
/// check after every transition and a run to rest in every state without
/// running user work (see the module docs).
///
/// # Errors
/// The first violation, with the path that reached it.
pub fn explore_cluster(bound: &ClusterBound) -> Result<ClusterReport, Box<ClusterCounterexample>> {
    let started = Instant::now();
    let fail = |path: &[ClusterOp], message: String| {
        Box::new(ClusterCounterexample {
            path: path.to_vec(),
            message,
        })
    };
    let root = ClusterWorld::new(&bound.config).map_err(|e| fail(&[], e.to_string()))?;
    let mut report = ClusterReport {
        states: 1,
        transitions: 0,
        max_depth: 0,
        rested: 0,
        coverage: BTreeMap::new(),
        elapsed: Duration::ZERO,
    };
    let mut seen: HashSet<u128> = HashSet::new();
    seen.insert(fingerprint(&root));
    let mut rested: HashSet<u128> = HashSet::new();
    let mut path: Vec<ClusterOp> = Vec::new();
    let ops = root.enabled(bound);
    let mut stack = vec![(root, ops, 0usize)];
    while let Some((world, ops, next)) = stack.last_mut() {
        let Some(op) = ops.get(*next).cloned() else {
            stack.pop();
            path.pop();
            continue;
        };
        *next += 1;
        let mut child = world.clone();
        report.transitions += 1;
        path.push(op.clone());
        if let Err(v) = child.apply(&op) {
            return Err(fail(&path, v.0));
        }
        if !seen.insert(fingerprint(&child)) {
            path.pop();
            continue;
        }
        report.states += 1;
        report.max_depth = report.max_depth.max(path.len());
        cover(&child, &mut report.coverage);
        if !child.work_running() {
            report.rested += 1;
            let mut copy = child.clone();
            if let Err(v) = copy.finish_known(bound, &mut rested) {
                return Err(fail(&path, format!("at rest: {v}")));
            }
        }
        let ops = child.enabled(bound);
        stack.push((child, ops, 0));
    }
    report.elapsed = started.elapsed();
    Ok(report)
}
