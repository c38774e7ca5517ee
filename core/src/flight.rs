//! A flight: one unit of upstream work for one key, shared by its members.
//!
//! No member is special. The flight lives while it has members and ends, in the
//! same step, when the last one leaves. Its log is append-only; readers hold
//! cursors into it and never block it.
//!
//! Most flights wait in the queue with one member and no reader, so that case is
//! kept small: one member is stored inline, and the log and the parked readers
//! live in a [`Tail`] allocated only when the first reader parks or the first
//! chunk arrives.

use core::hash::{Hash, Hasher};
use std::collections::BTreeSet;

use bytes::Bytes;

use crate::{Key, RequestId, Time};

/// Where a flight is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum FlightPhase {
    /// In the admission queue.
    Queued,
    /// Holding a preparation slot.
    Preparing,
    /// Prepared; waits for a stream slot. `seq` orders the wait (FIFO).
    Prepared { cacheable: bool, seq: u64 },
    /// Holding a stream slot. `ends_by` is the total stream deadline.
    Streaming { cacheable: bool, ends_by: Time },
}

/// A flight's members, in id order. Two or more are kept in a set; one inline.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Members {
    Empty,
    One(RequestId),
    /// Always at least two. Boxed so that `Members` takes 16 bytes, not 32: the
    /// one-member case is by far the most common and should stay small.
    #[allow(clippy::box_collection)]
    Many(Box<BTreeSet<RequestId>>),
}

impl Members {
    pub(crate) fn insert(&mut self, id: RequestId) {
        match self {
            Members::Empty => *self = Members::One(id),
            Members::One(first) => {
                if *first != id {
                    *self = Members::Many(Box::new(BTreeSet::from([*first, id])));
                }
            }
            Members::Many(set) => {
                set.insert(id);
            }
        }
    }

    pub(crate) fn remove(&mut self, id: RequestId) {
        match self {
            Members::Empty => {}
            Members::One(only) => {
                if *only == id {
                    *self = Members::Empty;
                }
            }
            Members::Many(set) => {
                set.remove(&id);
                if set.len() == 1 {
                    if let Some(last) = set.first().copied() {
                        *self = Members::One(last);
                    }
                }
            }
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        matches!(self, Members::Empty)
    }

    pub(crate) fn contains(&self, id: RequestId) -> bool {
        match self {
            Members::Empty => false,
            Members::One(only) => *only == id,
            Members::Many(set) => set.contains(&id),
        }
    }

    /// The members in id order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = RequestId> + '_ {
        let (one, many) = match self {
            Members::Empty => (None, None),
            Members::One(only) => (Some(*only), None),
            Members::Many(set) => (None, Some(set.iter().copied())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }
}

/// What a flight accumulates once someone reads or the upstream produces.
#[derive(Clone, Debug, Default)]
pub(crate) struct Tail {
    /// Every chunk so far, in order.
    pub(crate) log: Vec<Bytes>,
    /// Sum of chunk lengths.
    pub(crate) bytes: u64,
    /// Readers that read everything so far; woken on the next append.
    pub(crate) parked: Vec<RequestId>,
}

#[derive(Clone, Debug)]
pub(crate) struct Flight {
    pub(crate) key: Key,
    pub(crate) phase: FlightPhase,
    /// Requests sharing this flight, in id order.
    pub(crate) members: Members,
    /// How many members have a client attached.
    pub(crate) attached: usize,
    /// The current phase's deadline. Always set: armed in the deadline set, or,
    /// while queued, implied by the queue.
    pub(crate) deadline: Time,
    /// `None` until a reader parks or a chunk arrives.
    tail: Option<Box<Tail>>,
}

const EMPTY_TAIL: &Tail = &Tail {
    log: Vec::new(),
    bytes: 0,
    parked: Vec::new(),
};

impl Flight {
    pub(crate) fn new(key: Key, deadline: Time) -> Self {
        Flight {
            key,
            phase: FlightPhase::Queued,
            members: Members::Empty,
            attached: 0,
            deadline,
            tail: None,
        }
    }

    /// The log, parked readers and byte count (empty until allocated).
    pub(crate) fn tail(&self) -> &Tail {
        self.tail.as_deref().unwrap_or(EMPTY_TAIL)
    }

    /// The same, allocated on first use.
    pub(crate) fn tail_mut(&mut self) -> &mut Tail {
        self.tail.get_or_insert_with(Box::default)
    }

    /// Takes the log (the flight is ending).
    pub(crate) fn take_log(&mut self) -> Vec<Bytes> {
        self.tail
            .as_mut()
            .map(|t| std::mem::take(&mut t.log))
            .unwrap_or_default()
    }
}

// Equality and hashing see the tail's content, not whether it was allocated.
impl PartialEq for Flight {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (self.tail(), other.tail());
        self.key == other.key
            && self.phase == other.phase
            && self.members == other.members
            && self.attached == other.attached
            && self.deadline == other.deadline
            && a.log == b.log
            && a.bytes == b.bytes
            && a.parked == b.parked
    }
}

impl Eq for Flight {}

impl Hash for Flight {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key.hash(state);
        self.phase.hash(state);
        self.members.hash(state);
        self.attached.hash(state);
        self.deadline.hash(state);
        let t = self.tail();
        t.log.hash(state);
        t.bytes.hash(state);
        t.parked.hash(state);
    }
}
