//! What the machine asks its driver to do.

use serde::{Deserialize, Serialize};

use crate::{FlightId, Key, RequestId, Work};

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
    /// Stop the running preparation or upstream of this flight now. Its slot is
    /// already free; anything it still reports is ignored.
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
}
