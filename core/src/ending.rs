//! How a request ended, shared by every record it ended with and by the cache.
//!
//! Its own module so that the cache and the request records both depend on it
//! and not on each other.

use std::sync::Arc;

use bytes::Bytes;

use crate::Outcome;

/// A completed response, shared between the cache and the records that read it.
pub(crate) type Log = Arc<Vec<Bytes>>;

/// How a request ended and what its reader may still read.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Ending {
    pub(crate) outcome: Outcome,
    /// The chunks the reader may still read from its cursor on (`None`: nothing
    /// more, as after a cancel).
    pub(crate) log: Option<Log>,
}
