//! Cluster mode: flights shared by several machines (gateway instances) through
//! a coordinator such as Redis (rules [25](crate::contract#rule-25)-[29](crate::contract#rule-29)).
//!
//! The core does no I/O here either. With [`Config::cluster`](crate::Config::cluster)
//! set, a submit that creates a flight does not queue it: the flight is
//! **claiming**, and the machine emits [`Action::Claim`](crate::Action::Claim).
//! The driver asks the coordinator who runs the key and reports the answer,
//! a [`Role`], through [`Machine::handle_claimed`](crate::Machine::handle_claimed):
//!
//! - [`Role::Owner`]: this machine runs the upstream. The flight goes on exactly
//!   as a local flight (queue, preparation, stream); every batch of chunks it
//!   accepts is also emitted as [`Action::Publish`](crate::Action::Publish), and
//!   its end as [`Action::Release`](crate::Action::Release) right before its
//!   [`Action::FlightEnded`](crate::Action::FlightEnded).
//! - [`Role::Follower`]: another machine runs it. The flight takes no slot; the
//!   owner's log arrives as chunks (`handle_chunks`) and its end through
//!   [`Machine::handle_remote_end`](crate::Machine::handle_remote_end).
//! - [`Role::Cached`]: the cluster's cache held the result; the flight completes
//!   at once with it.
//! - [`Role::Unavailable`]: the coordinator could not answer; the flight fails
//!   with [`Failure::Cluster`](crate::Failure::Cluster).
//!
//! Why the claim is an input and not a decision of the core: which machine owns a
//! key is decided by the coordinator, atomically, across machines. The core
//! decides everything around it: who joins which flight, what each reader reads,
//! which deadlines run, when to re-claim after an owner is lost
//! ([rule 28](crate::contract#rule-28)). So the explorer and the reference model
//! see the cross-instance cases as ordinary inputs.
//!
//! # Choices the cluster contract leaves to the core
//! - **The claiming phase is queue time.** A flight's queue deadline
//!   (`queue_timeout`) is fixed when it is created and bounds the time from its
//!   first submit until its own preparation starts, claims included: a claiming
//!   flight that gets no answer in time ends
//!   [`TimedOut(Queue)`](crate::Phase::Queue), and a re-claim after a lost owner
//!   does not restart it. (This is also what keeps the queue's deadlines in
//!   flight-id order, which the queue relies on.)
//! - **A claiming flight counts against `queue_capacity`**: it will queue if it
//!   becomes the owner. A submit that would create a flight is refused
//!   (`QueueFull`) when queued plus claiming flights reach the capacity, and a
//!   follower whose owner is lost cannot re-claim then: it fails with
//!   [`Failure::OwnerLost`](crate::Failure::OwnerLost).
//! - **Caches**: an owner's completed cacheable result enters the local cache as
//!   a local flight's does (and `Release` tells the driver it is cacheable, for
//!   the shared cache). A follower's result and a [`Role::Cached`] result do not
//!   enter the local cache: the coordinator's cache is the shared one.
//! - **A remote end that is no answer** (the owner's flight was cancelled,
//!   timed out, or failed [`Failure::Shutdown`](crate::Failure::Shutdown)
//!   because its instance shut down) is handled as a lost owner
//!   ([rule 28](crate::contract#rule-28)).
//! - **A fenced owner releases nothing**: its lease is gone, so its end emits no
//!   `Release`, only the `Abort` of its work and `FlightEnded`.
//! - **Stats**: the gauges `claiming` and `following` count flights in those
//!   phases; the totals `claims`, `followed` and `remote_cache_hits` count
//!   claims made (re-claims included), claims answered as a follower, and
//!   claims answered from the cluster's cache.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The coordinator's answer to [`Action::Claim`](crate::Action::Claim), reported
/// with [`Machine::handle_claimed`](crate::Machine::handle_claimed).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Role {
    /// This machine holds the key's lease: it runs the upstream and publishes
    /// the log ([rule 25](crate::contract#rule-25), [rule 26](crate::contract#rule-26)).
    Owner,
    /// Another machine owns the key: this flight follows its log from the first
    /// chunk ([rule 27](crate::contract#rule-27)).
    Follower,
    /// The cluster's cache holds the completed result: these chunks, in order.
    Cached(Vec<Bytes>),
    /// The coordinator could not be asked (unreachable, refused); the reason is
    /// what members read in [`Failure::Cluster`](crate::Failure::Cluster)
    /// ([rule 29](crate::contract#rule-29)).
    Unavailable(String),
}
