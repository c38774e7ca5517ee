//! Identifiers.
//!
//! Ids are sequential and never reused, which gives two properties for free:
//! runs are deterministic (the n-th submit always gets the same id), and a
//! [`FlightId`] doubles as a generation number: a late completion for a flight
//! that already ended names an id the machine no longer holds and is ignored
//! ([rule 16](crate::contract#rule-16)).

use core::fmt;

use serde::{Deserialize, Serialize};

/// Identifies one client's request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId(u64);

/// Identifies one flight: one unit of upstream work for one key. Never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FlightId(u64);

impl RequestId {
    /// An id from its raw number (for replays, tests and lookups by id).
    #[must_use]
    pub const fn from_raw(raw: u64) -> Self {
        RequestId(raw)
    }

    /// The raw number.
    #[must_use]
    pub const fn raw(self) -> u64 {
        self.0
    }
}

impl FlightId {
    /// An id from its raw number (for replays and tests).
    #[must_use]
    pub const fn from_raw(raw: u64) -> Self {
        FlightId(raw)
    }

    /// The raw number.
    #[must_use]
    pub const fn raw(self) -> u64 {
        self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{}", self.0)
    }
}

impl fmt::Display for FlightId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "f{}", self.0)
    }
}
