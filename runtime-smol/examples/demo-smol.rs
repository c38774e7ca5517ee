//! The flightdeck demo on smol: a simulated LLM, a burst of questions,
//! coalescing, a cancel, a late joiner and a cache hit. The scenario is written
//! once in `flightdeck_tests::demo`; the tokio adapter runs the same one
//! (`cargo run --release -p flightdeck-tokio --example demo`). Named `demo-smol`
//! so that the two examples' binaries do not collide in the workspace's target
//! directory.
//!
//! `cargo run --release -p flightdeck-smol --example demo-smol`

fn main() {
    flightdeck_tests::demo::run::<flightdeck_tests::runtimes::Smol>();
}
