//! A flight: one unit of upstream work for one key, shared by its members.
//!
//! No member is special. The flight lives while it has members and ends, in the
//! same step, when the last one leaves. Its log is append-only; readers hold
//! cursors into it and never block it.

use std::collections::BTreeSet;

use bytes::Bytes;

use crate::{Key, RequestId, Time};

/// Where a flight is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum FlightPhase {
    /// In the admission queue.
    Queued,
    /// Holding a preparation slot.
    Preparing,
    /// Prepared; waits for a stream slot. `seq` orders the wait (FIFO).
    Prepared { cacheable: bool, seq: u64 },
    /// Holding a stream slot. `ends_by` is the total stream deadline.
    Streaming { cacheable: bool, ends_by: Time },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Flight {
    pub(crate) key: Key,
    pub(crate) phase: FlightPhase,
    /// Requests sharing this flight, in id order.
    pub(crate) members: BTreeSet<RequestId>,
    /// How many members have a client attached.
    pub(crate) attached: usize,
    /// Every chunk so far, in order.
    pub(crate) log: Vec<Bytes>,
    /// Sum of chunk lengths.
    pub(crate) bytes: u64,
    /// Readers that found nothing to read; woken on the next append.
    pub(crate) parked: Vec<RequestId>,
    /// The current phase's deadline.
    pub(crate) deadline: Option<Time>,
}

impl Flight {
    pub(crate) fn new(key: Key) -> Self {
        Flight {
            key,
            phase: FlightPhase::Queued,
            members: BTreeSet::new(),
            attached: 0,
            log: Vec::new(),
            bytes: 0,
            parked: Vec::new(),
            deadline: None,
        }
    }
}
