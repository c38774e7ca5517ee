//! What a caller can observe about one request.

use serde::{Deserialize, Serialize};

use crate::{FlightId, Outcome, RequestId};

/// How a submitted request was placed ([rule 2](crate::contract#rule-2)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Route {
    /// No live flight and no cached result: a new flight was created and queued.
    NewFlight(FlightId),
    /// A live flight for the key existed; the request joined it.
    Joined(FlightId),
    /// The cache held a completed result; the request is already done.
    Cached,
}

/// The answer to an accepted submit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Submission {
    /// The new request's id.
    pub request: RequestId,
    /// Where it went.
    pub route: Route,
}

/// What a read found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Readiness {
    /// Items were appended to the output. Unless the last of them is the
    /// terminal [`Item::End`](crate::Item::End), the reader is parked as after
    /// `Pending`: it will get an [`Action::Wake`](crate::Action::Wake) when more
    /// is available.
    Ready,
    /// Nothing to read yet; the reader will get an [`Action::Wake`](crate::Action::Wake)
    /// when there is.
    Pending,
    /// The terminal item was already read; nothing will ever follow.
    Closed,
}

/// A request's state. A member's state follows its flight's phase until the
/// request ends.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RequestState {
    /// Its flight waits in the admission queue.
    Queued,
    /// Its flight is being prepared.
    Preparing,
    /// Its flight is prepared and waits for a stream slot (or for a client).
    WaitingForStream,
    /// Its flight's upstream is streaming.
    Streaming,
    /// Cluster mode: its flight waits for the answer to its claim.
    Claiming,
    /// Cluster mode: its flight follows another instance's stream.
    Following,
    /// It was cancelled.
    Cancelled,
    /// It ended otherwise; never carries [`Outcome::Cancelled`].
    Done(Outcome),
}

/// A snapshot of one request.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RequestStatus {
    /// Its state.
    pub state: RequestState,
    /// Its flight's place in the admission queue (0 = next), while queued.
    pub queue_position: Option<usize>,
    /// The flight it belongs to, while live.
    pub flight: Option<FlightId>,
    /// Whether a client is attached.
    pub attached: bool,
}

impl RequestState {
    /// How the request ended ([`Outcome::Cancelled`] for a cancelled one), or
    /// `None` while it is live.
    #[must_use]
    pub fn outcome(&self) -> Option<Outcome> {
        match self {
            RequestState::Cancelled => Some(Outcome::Cancelled),
            RequestState::Done(outcome) => Some(outcome.clone()),
            RequestState::Queued
            | RequestState::Preparing
            | RequestState::WaitingForStream
            | RequestState::Streaming
            | RequestState::Claiming
            | RequestState::Following => None,
        }
    }

    /// Whether the request has ended (cancelled, completed, failed or timed out).
    #[must_use]
    pub fn is_finished(&self) -> bool {
        matches!(self, RequestState::Cancelled | RequestState::Done(_))
    }
}

impl RequestStatus {
    /// How the request ended, or `None` while it is live. See
    /// [`RequestState::outcome`].
    #[must_use]
    pub fn outcome(&self) -> Option<Outcome> {
        self.state.outcome()
    }

    /// Whether the request has ended.
    #[must_use]
    pub fn is_finished(&self) -> bool {
        self.state.is_finished()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Failure, Phase};

    #[test]
    fn outcome_and_is_finished_tell_whether_and_how_a_request_ended() {
        for live in [
            RequestState::Queued,
            RequestState::Preparing,
            RequestState::WaitingForStream,
            RequestState::Streaming,
            RequestState::Claiming,
            RequestState::Following,
        ] {
            assert_eq!(live.outcome(), None, "{live:?}");
            assert!(!live.is_finished(), "{live:?}");
        }
        let ended = [
            (RequestState::Cancelled, Outcome::Cancelled),
            (RequestState::Done(Outcome::Completed), Outcome::Completed),
            (
                RequestState::Done(Outcome::TimedOut(Phase::Idle)),
                Outcome::TimedOut(Phase::Idle),
            ),
            (
                RequestState::Done(Outcome::Failed(Failure::Shutdown)),
                Outcome::Failed(Failure::Shutdown),
            ),
        ];
        for (state, outcome) in ended {
            let status = RequestStatus {
                state,
                queue_position: None,
                flight: None,
                attached: false,
            };
            assert_eq!(status.outcome(), Some(outcome), "{status:?}");
            assert!(status.is_finished(), "{status:?}");
        }
    }
}
