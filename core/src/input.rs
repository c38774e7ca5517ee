//! Every input as one serialisable enum, for recording and replaying runs.
//!
//! The typed methods on [`Machine`](crate::Machine) are what drivers call; this enum
//! is the same set of inputs as data. [`Machine::handle`](crate::Machine::handle)
//! applies one, so a run recorded as `(Time, Input)` pairs (a postcard trace) replays
//! exactly.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::{
    Failure, FlightId, Item, Key, Outcome, Prepared, Readiness, RequestError, RequestId, Role,
    StaleFlight, Submission, SubmitError,
};

/// One input to the machine.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Input {
    /// A client submits a request.
    Submit {
        /// The coalescing/cache key.
        key: Key,
    },
    /// A client attaches to a request's result stream.
    Attach {
        /// The request.
        request: RequestId,
    },
    /// The attached client reads what is available.
    Read {
        /// The request.
        request: RequestId,
    },
    /// A client cancels a request by id.
    Cancel {
        /// The request.
        request: RequestId,
    },
    /// The attached client dropped its stream.
    Detach {
        /// The request.
        request: RequestId,
    },
    /// A preparation finished.
    Prepared {
        /// The flight.
        flight: FlightId,
        /// What it reported.
        result: Result<Prepared, Failure>,
    },
    /// The upstream produced a chunk.
    Chunk {
        /// The flight.
        flight: FlightId,
        /// The data.
        data: Bytes,
    },
    /// The upstream ended.
    UpstreamEnded {
        /// The flight.
        flight: FlightId,
        /// How it ended.
        result: Result<(), Failure>,
    },
    /// Cluster mode: the coordinator answered a flight's claim
    /// ([`Machine::handle_claimed`](crate::Machine::handle_claimed)).
    Claimed {
        /// The claiming flight.
        flight: FlightId,
        /// The answer.
        role: Role,
    },
    /// Cluster mode: a follower's owner ended its flight
    /// ([`Machine::handle_remote_end`](crate::Machine::handle_remote_end)).
    RemoteEnded {
        /// The following flight.
        flight: FlightId,
        /// How the owner's flight ended.
        outcome: Outcome,
    },
    /// Cluster mode: a follower's owner is gone, its lease lapsed
    /// ([`Machine::handle_owner_lost`](crate::Machine::handle_owner_lost)).
    OwnerLost {
        /// The following flight.
        flight: FlightId,
    },
    /// Cluster mode: an owner's publish, renewal or release was refused
    /// ([`Machine::handle_fenced`](crate::Machine::handle_fenced)).
    Fenced {
        /// The owner flight.
        flight: FlightId,
        /// Why, as the coordinator said.
        reason: String,
    },
    /// The driver's timer fired.
    Timeout,
    /// Stop admission and end every request.
    Shutdown,
}

/// What [`Machine::handle`](crate::Machine::handle) returns for an [`Input`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Reply {
    /// For [`Input::Submit`].
    Submit(Result<Submission, SubmitError>),
    /// For [`Input::Attach`], [`Input::Cancel`] and [`Input::Detach`].
    Request(Result<(), RequestError>),
    /// For [`Input::Read`]: the readiness and the items read.
    Read(Result<Readiness, RequestError>, Vec<Item>),
    /// For [`Input::Prepared`], [`Input::Chunk`], [`Input::UpstreamEnded`],
    /// and the cluster inputs ([`Input::Claimed`], [`Input::RemoteEnded`],
    /// [`Input::OwnerLost`], [`Input::Fenced`]).
    Flight(Result<(), StaleFlight>),
    /// For [`Input::Timeout`] and [`Input::Shutdown`].
    Done,
}
