//! The flightdeck verification harness.
