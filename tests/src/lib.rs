//! The flightdeck verification harness.
//!
//! The core is sans-IO so that every race the Go original fought can be explored
//! here exhaustively and replayed exactly. The modules:
//!
//! - [`driver`]: the one virtual-time test driver (one machine, a clock, the work
//!   that runs, every check after every step) that the rule tests, the seed
//!   scenarios, the world and the model check all drive the core through;
//! - [`world`]: a simulated world (clients and what they read) on top of the
//!   driver, with the checks only clients can make;
//! - [`scenario`]: the scenario decoder shared by tests, proptest and cargo-fuzz;
//! - [`trace`]: postcard traces of `(Time, Input)` pairs, recorded and replayed;
//! - [`explore`]: the exhaustive explorer (model checker) with state hashing;
//! - [`cluster_world`]: two machines in cluster mode over one key with a
//!   simulated Redis, and [`cluster_explore`], its exhaustive explorer (an owner
//!   crash at every point);
//! - [`model`]: a deliberately naive reference model of the contract;
//! - [`model_check`]: the core and the model side by side over random inputs,
//!   for any configuration (the proptest, as a library).
//!
//! With the default feature `runtimes`, the half that runs on real runtimes:
//!
//! - [`runtimes`]: smol, tokio current-thread and tokio multi-thread behind one
//!   small trait, so that a scenario is written once;
//! - [`conformance_kit`]: scriptable user code and checking readers, shared by the
//!   conformance suite and the stress test;
//! - [`demo`]: the demo scenario both adapters' `demo` examples run.

pub mod cluster_explore;
pub mod cluster_world;
#[cfg(feature = "runtimes")]
pub mod conformance_kit;
#[cfg(feature = "runtimes")]
pub mod demo;
pub mod driver;
pub mod explore;
pub mod model;
pub mod model_check;
#[cfg(feature = "runtimes")]
pub mod runtimes;
pub mod scenario;
pub mod trace;
pub mod world;

use std::io::Write as _;

/// Writes one line of a test's summary (states explored, cases run, tasks
/// counted) straight to the process's standard error, past the test harness's
/// output capture, so that `cargo test` shows it in every CI log, not only on
/// failure. Used through [`report!`].
pub fn report_line(line: std::fmt::Arguments<'_>) {
    // A closed stderr is not worth failing a test over.
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// `println!` for test summaries that must reach the CI log: see [`report_line`].
#[macro_export]
macro_rules! report {
    ($($arg:tt)*) => {
        $crate::report_line(format_args!($($arg)*))
    };
}

/// The usage examples in README.md, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeExamples;
