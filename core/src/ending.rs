//! How a request ended, shared by every record it ended with and by the cache.
//!
//! Its own module so that the cache and the request records both depend on it
//! and not on each other.
//!
//! Most endings that are not completions carry nothing to read: a member that
//! leaves its flight (cancel, detach, attach timeout) reads no more, and a flight
//! that ends before its first chunk (cancelled, timed out in the queue or in
//! preparation) ends with an empty log. Those endings are equal values whatever
//! flight they come from, so they are allocated once per process and shared
//! ([`Ending::without_log`], [`Ending::after`]): an ending is never mutated once
//! built, and equality and hashing see only its value.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use crate::{Outcome, Phase};

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

/// The outcomes that carry no payload, each with its place in [`SHARED`].
const SHAREABLE: [Outcome; 8] = [
    Outcome::Completed,
    Outcome::Cancelled,
    Outcome::TimedOut(Phase::Queue),
    Outcome::TimedOut(Phase::Preparation),
    Outcome::TimedOut(Phase::StreamSlot),
    Outcome::TimedOut(Phase::Stream),
    Outcome::TimedOut(Phase::Idle),
    Outcome::TimedOut(Phase::Attach),
];

/// The shared endings: for each of [`SHAREABLE`], without a log and with an
/// empty one.
static SHARED: OnceLock<[[Arc<Ending>; 2]; 8]> = OnceLock::new();

impl Ending {
    /// The place of `outcome` in [`SHAREABLE`], if it carries no payload.
    fn shareable(outcome: &Outcome) -> Option<usize> {
        match outcome {
            Outcome::Completed => Some(0),
            Outcome::Cancelled => Some(1),
            Outcome::TimedOut(phase) => Some(match phase {
                Phase::Queue => 2,
                Phase::Preparation => 3,
                Phase::StreamSlot => 4,
                Phase::Stream => 5,
                Phase::Idle => 6,
                Phase::Attach => 7,
            }),
            Outcome::Failed(_) => None,
        }
    }

    /// The shared ending of `outcome` (without a log, or with an empty one),
    /// if it carries no payload.
    fn shared(outcome: &Outcome, empty_log: bool) -> Option<Arc<Ending>> {
        let at = Self::shareable(outcome)?;
        let table = SHARED.get_or_init(|| {
            let empty: Log = Arc::new(Vec::new());
            SHAREABLE.map(|outcome| {
                [
                    Arc::new(Ending {
                        outcome: outcome.clone(),
                        log: None,
                    }),
                    Arc::new(Ending {
                        outcome,
                        log: Some(Arc::clone(&empty)),
                    }),
                ]
            })
        });
        Some(Arc::clone(&table[at][usize::from(empty_log)]))
    }

    /// `outcome` with nothing more to read (a member that left its flight).
    pub(crate) fn without_log(outcome: Outcome) -> Arc<Ending> {
        Self::shared(&outcome, false).unwrap_or_else(|| Arc::new(Ending { outcome, log: None }))
    }

    /// `outcome` after the chunks of `log` (a flight's members as it ends).
    pub(crate) fn after(outcome: &Outcome, log: Vec<Bytes>) -> Arc<Ending> {
        if log.is_empty() {
            if let Some(shared) = Self::shared(outcome, true) {
                return shared;
            }
        }
        Arc::new(Ending {
            outcome: outcome.clone(),
            log: Some(Arc::new(log)),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::{Ending, SHAREABLE};
    use crate::{Failure, Outcome};

    /// Every shareable outcome is shared, under its own value; the others and
    /// non-empty logs are built fresh, with the same value as before.
    #[test]
    fn payload_free_endings_are_shared_and_equal_to_fresh_ones() {
        for outcome in SHAREABLE {
            let a = Ending::without_log(outcome.clone());
            assert!(Arc::ptr_eq(&a, &Ending::without_log(outcome.clone())));
            assert_eq!(
                *a,
                Ending {
                    outcome: outcome.clone(),
                    log: None
                }
            );
            let b = Ending::after(&outcome, Vec::new());
            assert!(Arc::ptr_eq(&b, &Ending::after(&outcome, Vec::new())));
            assert_eq!(
                *b,
                Ending {
                    outcome: outcome.clone(),
                    log: Some(Arc::new(Vec::new()))
                }
            );
        }
        let failed = Outcome::Failed(Failure::Shutdown);
        let a = Ending::without_log(failed.clone());
        assert!(!Arc::ptr_eq(&a, &Ending::without_log(failed.clone())));
        assert_eq!(a.outcome, failed);
        let chunk = vec![Bytes::from_static(b"x")];
        let c = Ending::after(&Outcome::Completed, chunk.clone());
        assert!(!Arc::ptr_eq(
            &c,
            &Ending::after(&Outcome::Completed, chunk.clone())
        ));
        assert_eq!(c.log.as_deref(), Some(&chunk));
    }
}
