//! The flightdeck verification harness.
//!
//! The core is sans-IO so that every race the Go original fought can be explored
//! here exhaustively and replayed exactly. The modules:
//!
//! - [`world`]: a simulated world (clients, upstream, virtual time) driving the core,
//!   checking every invariant after every step;
//! - [`scenario`]: the scenario decoder shared by tests, proptest and cargo-fuzz;
//! - [`trace`]: postcard traces of `(Time, Input)` pairs, recorded and replayed;
//! - [`explore`]: the exhaustive explorer (model checker) with state hashing;
//! - [`model`]: a deliberately naive reference model of the contract.

pub mod explore;
pub mod model;
pub mod scenario;
pub mod trace;
pub mod world;

/// The usage examples in README.md, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeExamples;
