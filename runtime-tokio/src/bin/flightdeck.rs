//! The flightdeck gateway binary.

fn main() {}
