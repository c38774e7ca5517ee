//! Errors a caller can get back. Every one is a value; no input makes the core panic.

use serde::{Deserialize, Serialize};

use crate::Outcome;

/// Why a submit was refused. A refused submit changes nothing ([rule 1](crate::contract#rule-1)).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// The request would need a new flight and the queue holds `capacity` already.
    #[error("queue full ({capacity} flights waiting)")]
    QueueFull {
        /// The configured queue capacity.
        capacity: usize,
    },
    /// The key is empty.
    #[error("the key is empty")]
    EmptyKey,
    /// The machine is shutting down and admits nothing.
    #[error("shutting down")]
    ShuttingDown,
}

/// Why an operation on a request id was refused. Nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// No record exists for this id (never submitted, or its record is gone).
    #[error("request not found")]
    NotFound,
    /// A client is already attached to this request (at most one per request).
    #[error("a client is already attached")]
    AlreadyAttached,
    /// No client is attached to this request.
    #[error("no client is attached")]
    NotAttached,
    /// The request already ended with this outcome, so it cannot be cancelled.
    #[error("request already finished: {0}")]
    AlreadyFinished(Outcome),
}

/// A completion (prepared, chunk, upstream end) named a flight that is not in the
/// phase it reports on: it already ended or was aborted. It was ignored
/// ([rule 16](crate::contract#rule-16)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, thiserror::Error)]
#[error("flight is no longer live in that phase; input ignored")]
pub struct StaleFlight;
