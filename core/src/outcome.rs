//! What a request ends with, and what a reader reads.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The phase whose deadline expired, carried by [`Outcome::TimedOut`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Phase {
    /// The flight waited in the admission queue too long.
    Queue,
    /// The preparation ran too long.
    Preparation,
    /// The prepared flight waited for a stream slot too long.
    StreamSlot,
    /// The upstream stream ran too long in total.
    Stream,
    /// The upstream went silent between chunks for too long.
    Idle,
    /// No client attached to the request in time.
    Attach,
}

/// Which piece of user work a failure or an abort concerns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Work {
    /// The preparation future.
    Preparation,
    /// The upstream stream future.
    Stream,
}

/// Why a flight failed.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Failure {
    /// The preparation returned an error.
    Preparation(String),
    /// The upstream returned an error.
    Upstream(String),
    /// The user's future panicked; the driver caught it.
    Panicked {
        /// Which future panicked.
        work: Work,
        /// The panic message, when it was a string.
        message: String,
    },
    /// The response grew past `max_response_bytes`.
    ResponseTooLarge {
        /// The configured limit.
        limit: u64,
    },
    /// The machine was shut down before the request ended.
    Shutdown,
    /// Cluster mode: the owner instance was lost after its flight had produced
    /// chunks, so no other instance can continue it token for token
    /// ([rule 28](crate::contract#rule-28)).
    OwnerLost,
    /// Cluster mode: the coordinator failed or refused (unreachable, or this
    /// owner's lease was lost and its writes fenced), with its reason
    /// ([rule 29](crate::contract#rule-29), [rule 26](crate::contract#rule-26)).
    Cluster(String),
}

impl core::fmt::Display for Failure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Failure::Preparation(m) => write!(f, "preparation failed: {m}"),
            Failure::Upstream(m) => write!(f, "upstream failed: {m}"),
            Failure::Panicked { work, message } => write!(f, "{work:?} panicked: {message}"),
            Failure::ResponseTooLarge { limit } => {
                write!(f, "response exceeded max_response_bytes ({limit} bytes)")
            }
            Failure::Shutdown => f.write_str("shut down"),
            Failure::OwnerLost => f.write_str("the owner instance was lost mid-stream"),
            Failure::Cluster(m) => write!(f, "cluster unavailable: {m}"),
        }
    }
}

/// How a request ended. A reader gets exactly one, as its last item
/// ([rule 19](crate::contract#rule-19)).
///
/// Exhaustive by contract: these four are the only ways a request can end.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Outcome {
    /// The upstream finished (or the cache served the result).
    Completed,
    /// The request was cancelled.
    Cancelled,
    /// The preparation or the upstream failed.
    Failed(Failure),
    /// A deadline expired in the named phase.
    TimedOut(Phase),
}

impl core::fmt::Display for Outcome {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Outcome::Completed => f.write_str("completed"),
            Outcome::Cancelled => f.write_str("cancelled"),
            Outcome::Failed(why) => write!(f, "failed ({why})"),
            Outcome::TimedOut(phase) => write!(f, "timed out ({phase:?})"),
        }
    }
}

/// One item of a request's result stream: chunks, then exactly one end.
///
/// Exhaustive by contract ([rule 19](crate::contract#rule-19)): a stream is chunks followed
/// by one end.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Item {
    /// A chunk of the upstream's output. Cloning it does not copy the data.
    Chunk(Bytes),
    /// The terminal item; nothing follows it.
    End(Outcome),
}

/// What a preparation reports when it succeeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Prepared {
    /// Whether the flight's result may be stored in the cache.
    pub cacheable: bool,
}

impl Prepared {
    /// A preparation whose result may be cached.
    pub const CACHEABLE: Prepared = Prepared { cacheable: true };
    /// A preparation whose result must not be cached.
    pub const UNCACHEABLE: Prepared = Prepared { cacheable: false };
}
