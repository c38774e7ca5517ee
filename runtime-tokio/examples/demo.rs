//! The flightdeck demo on tokio (multi-thread scheduler): a simulated LLM, a
//! burst of questions, coalescing, a cancel, a late joiner and a cache hit. The
//! scenario is written once in `flightdeck_tests::demo`; the smol adapter runs
//! the same one (`cargo run --release -p flightdeck-smol --example demo-smol`).
//!
//! `cargo run --release -p flightdeck-tokio --example demo`

fn main() {
    flightdeck_tests::demo::run::<flightdeck_tests::runtimes::TokioMulti>();
}
