//! A snapshot of what the machine holds and what it has done ([rule 24](crate::contract#rule-24)).

use serde::{Deserialize, Serialize};

/// Gauges and totals. Taking a snapshot is O(1): every number is kept up to date
/// as the machine changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Stats {
    /// Request records held (live, or ended and awaiting pickup).
    pub requests: usize,
    /// Live requests (queued, preparing, waiting for a stream slot, streaming).
    pub live_requests: usize,
    /// Flights in the admission queue.
    pub queued: usize,
    /// Flights preparing (= preparation slots in use).
    pub preparing: usize,
    /// Prepared flights waiting for a stream slot.
    pub waiting_for_stream: usize,
    /// Flights streaming (= stream slots in use).
    pub streaming: usize,
    /// Cluster mode: flights waiting for their claim's answer.
    pub claiming: usize,
    /// Cluster mode: flights following another instance's log.
    pub following: usize,
    /// Preparation slots in use.
    pub preparation_slots_in_use: usize,
    /// Stream slots in use.
    pub stream_slots_in_use: usize,
    /// Attached readers.
    pub readers: usize,
    /// Entries in the result cache.
    pub cache_entries: usize,
    /// Pending deadlines.
    pub deadlines: usize,
    /// Totals since the machine was built.
    pub totals: Totals,
}

/// Counters since the machine was built; each counts requests unless it says flights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Totals {
    /// Submits accepted.
    pub submitted: u64,
    /// Requests that joined a live flight.
    pub coalesced: u64,
    /// Requests served from the cache.
    pub cache_hits: u64,
    /// Flights created.
    pub flights: u64,
    /// Preparations started (flights).
    pub preparations_started: u64,
    /// Upstream streams started (flights).
    pub streams_started: u64,
    /// Requests that ended completed (cache hits included).
    pub completed: u64,
    /// Requests that ended cancelled (client drops included).
    pub cancelled: u64,
    /// Requests that ended failed.
    pub failed: u64,
    /// Requests that ended timed out.
    pub timed_out: u64,
    /// Cluster mode: claims made (flights; re-claims after a lost owner included).
    pub claims: u64,
    /// Cluster mode: claims answered as a follower (flights).
    pub followed: u64,
    /// Cluster mode: claims answered from the cluster's cache (flights).
    pub remote_cache_hits: u64,
}
