//! What the machine asks its driver to do.

use serde::{Deserialize, Serialize};

use bytes::Bytes;

use crate::{FlightId, Key, Outcome, RequestId, Work};

/// An instruction for the driver, drained with
/// [`Machine::poll_action`](crate::Machine::poll_action).
///
/// The driver carries actions out in order and decides nothing. For every flight
/// the last action is [`Action::FlightEnded`]; no action names a flight after it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Action {
    /// Run the user's preparation for this flight (with the payload of the submit
    /// that created it). Report back with `handle_prepared`.
    StartPreparation {
        /// The flight.
        flight: FlightId,
        /// Its key.
        key: Key,
    },
    /// Run the user's upstream for this flight with what its preparation produced.
    /// Report chunks with `handle_chunk` and the end with `handle_upstream_end`.
    StartStream {
        /// The flight.
        flight: FlightId,
    },
    /// Stop the running preparation or upstream of this flight now (for a
    /// follower flight in cluster mode, `Work::Stream`: stop following the
    /// remote log). Its slot is already free; anything it still reports is
    /// ignored.
    Abort {
        /// The flight.
        flight: FlightId,
        /// Which future to stop.
        work: Work,
    },
    /// The flight is over: drop everything held for it (its payload, its prepared
    /// value, its task handle). Emitted exactly once per flight, always last.
    FlightEnded {
        /// The flight.
        flight: FlightId,
    },
    /// The client reading this request asked for items and got none; now some
    /// exist. Wake it so it reads again.
    Wake {
        /// The request whose reader to wake.
        request: RequestId,
    },
    /// Cluster mode: ask the coordinator who runs `key` for this new (or
    /// re-claiming) flight, and report the answer with `handle_claimed`
    /// ([rule 25](crate::contract#rule-25)). If the flight ends first (its
    /// `FlightEnded` comes, or `handle_claimed` answers `StaleFlight`) and the
    /// answer was `Owner`, the driver gives the lease back with nothing
    /// published.
    Claim {
        /// The flight.
        flight: FlightId,
        /// Its key.
        key: Key,
    },
    /// Cluster mode, owner flights only: append these chunks, which the flight
    /// just accepted into its log, to the key's shared log, in order
    /// ([rule 26](crate::contract#rule-26)). A refused append is reported with
    /// `handle_fenced`.
    Publish {
        /// The owner flight.
        flight: FlightId,
        /// The chunks, in log order, following those published before.
        chunks: Vec<Bytes>,
    },
    /// Cluster mode, owner flights only: the flight ended; write its end to the
    /// shared log and give the lease back. Emitted once, right before the
    /// flight's `FlightEnded`; never for an owner that was fenced
    /// ([rule 26](crate::contract#rule-26)).
    Release {
        /// The owner flight.
        flight: FlightId,
        /// How it ended.
        outcome: Outcome,
        /// Whether the result may be stored in a (shared) cache: it completed
        /// and its preparation said it is cacheable.
        cacheable: bool,
    },
}
