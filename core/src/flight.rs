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
    /// Cluster mode: waiting for the coordinator's answer to its claim. Holds
    /// no slot and no queue place; its deadline is its queue deadline.
    Claiming,
    /// Cluster mode: following another machine's log. Holds no slot; its
    /// deadlines are a stream's (`ends_by` total, and idle between chunks).
    Following { ends_by: Time },
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
    /// While streaming, the idle deadline set by the last chunk
    /// (`min(ends_by, chunk time + idle_timeout)`); [`Time::ZERO`] before the
    /// first chunk. A chunk only writes this: the flight's entry in the deadline
    /// set stays where it is until it is due ([`Flight::due`], the lazy idle
    /// deadline of [`crate::deadline`]).
    pub(crate) idle_until: Time,
}

#[derive(Clone, Debug)]
pub(crate) struct Flight {
    pub(crate) key: Key,
    pub(crate) phase: FlightPhase,
    /// Requests sharing this flight, in id order.
    pub(crate) members: Members,
    /// How many members have a client attached.
    pub(crate) attached: usize,
    /// The time of the flight's entry in the deadline set, or, while queued, its
    /// deadline implied by the queue. Always set. While streaming, chunks may
    /// have moved the real deadline later ([`Flight::due`]).
    pub(crate) deadline: Time,
    /// `None` until a reader parks or a chunk arrives.
    tail: Option<Box<Tail>>,
}

const EMPTY_TAIL: &Tail = &Tail {
    log: Vec::new(),
    bytes: 0,
    parked: Vec::new(),
    idle_until: Time::ZERO,
};

impl Tail {
    /// Appends `chunks` in order while the log stays within `limit` bytes.
    /// Returns how many were appended and whether one was refused for the
    /// limit (it and the chunks after it are dropped).
    pub(crate) fn append(
        &mut self,
        chunks: impl IntoIterator<Item = Bytes>,
        limit: u64,
    ) -> (usize, bool) {
        let chunks = chunks.into_iter();
        // Room for the whole batch at once (at least what the iterator
        // promises), rather than a growth check and possibly several
        // reallocations as it is pushed chunk by chunk.
        self.log.reserve(chunks.size_hint().0);
        let mut accepted = 0;
        for data in chunks {
            let bytes = self.bytes.saturating_add(data.len() as u64);
            if bytes > limit {
                return (accepted, true);
            }
            self.bytes = bytes;
            self.log.push(data);
            accepted += 1;
        }
        (accepted, false)
    }
}

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

    /// The current phase's deadline: the armed (or queue-implied) one, or,
    /// while streaming, later if a chunk has moved the idle deadline since it
    /// was armed.
    pub(crate) fn due(&self) -> Time {
        match self.phase {
            FlightPhase::Streaming { .. } | FlightPhase::Following { .. } => {
                self.deadline.max(self.tail().idle_until)
            }
            _ => self.deadline,
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

// Equality and hashing see the tail's content, not whether it was allocated, and
// the flight's deadline as `due()`: where its entry in the deadline set sits is
// not observable (the deadline set's equality ignores flight entries too).
impl PartialEq for Flight {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (self.tail(), other.tail());
        self.key == other.key
            && self.phase == other.phase
            && self.members == other.members
            && self.attached == other.attached
            && self.due() == other.due()
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
        self.due().hash(state);
        let t = self.tail();
        t.log.hash(state);
        t.bytes.hash(state);
        t.parked.hash(state);
    }
}

#[cfg(test)]
mod tests {
    use super::{Flight, FlightPhase, Members};
    use crate::{Key, RequestId, Time};
    use bytes::Bytes;
    use core::hash::{Hash, Hasher};
    use std::hash::DefaultHasher;

    fn id(n: u64) -> RequestId {
        RequestId::from_raw(n)
    }

    fn hash_of(value: &impl Hash) -> u64 {
        let mut h = DefaultHasher::new();
        value.hash(&mut h);
        h.finish()
    }

    #[test]
    fn members_answer_membership_through_every_shape() {
        let mut m = Members::Empty;
        assert!(m.is_empty() && !m.contains(id(1)));
        m.insert(id(3));
        assert_eq!(m, Members::One(id(3)));
        m.insert(id(3)); // a second insert of the same id keeps one
        assert_eq!(m, Members::One(id(3)));
        assert!(m.contains(id(3)) && !m.contains(id(1)) && !m.is_empty());
        m.insert(id(1));
        assert!(matches!(m, Members::Many(_)));
        assert!(m.contains(id(1)) && m.contains(id(3)) && !m.contains(id(2)));
        m.insert(id(2));
        assert_eq!(
            m.iter().collect::<Vec<_>>(),
            [id(1), id(2), id(3)],
            "id order"
        );
        m.remove(id(9)); // not a member: nothing changes
        assert_eq!(m.iter().count(), 3);
        m.remove(id(2));
        m.remove(id(1));
        assert_eq!(m, Members::One(id(3)), "two down to one goes inline");
        m.remove(id(1));
        assert_eq!(
            m,
            Members::One(id(3)),
            "removing a non-member keeps the one"
        );
        m.remove(id(3));
        assert!(m.is_empty() && m.iter().next().is_none());
        m.remove(id(3));
        assert!(m.is_empty());
    }

    fn flight() -> Flight {
        let mut f = Flight::new(Key::from("k"), Time::from_millis(5));
        f.members.insert(id(0));
        f
    }

    #[test]
    fn flights_differing_in_any_one_field_are_unequal_and_hash_apart() {
        let base = flight();
        let variants: Vec<crate::testing::Change<Flight>> = vec![
            ("key", |f| f.key = Key::from("other")),
            ("phase", |f| f.phase = FlightPhase::Preparing),
            ("phase cacheable", |f| {
                f.phase = FlightPhase::Prepared {
                    cacheable: false,
                    seq: 0,
                };
            }),
            ("members", |f| f.members.insert(id(1))),
            ("attached", |f| f.attached = 1),
            ("deadline", |f| f.deadline = Time::from_millis(6)),
            ("log", |f| f.tail_mut().log.push(Bytes::new())),
            ("bytes", |f| f.tail_mut().bytes = 1),
            ("parked", |f| f.tail_mut().parked.push(id(0))),
        ];
        let mut prepared = base.clone();
        prepared.phase = FlightPhase::Prepared {
            cacheable: true,
            seq: 0,
        };
        for (field, change) in variants {
            let mut other = base.clone();
            change(&mut other);
            let (a, b) = if field == "phase cacheable" {
                (&prepared, &other)
            } else {
                (&base, &other)
            };
            assert_ne!(a, b, "{field} must count for equality");
            assert_ne!(hash_of(a), hash_of(b), "{field} must count for hashing");
        }
    }

    /// Equality sees when the flight is due, not where its entry is armed: an
    /// entry at 5 ms with a chunk's idle deadline at 9 ms is the same flight as
    /// one re-armed at 9 ms.
    #[test]
    fn equality_sees_the_due_time_not_the_armed_one() {
        let streaming = |f: &mut Flight| {
            f.phase = FlightPhase::Streaming {
                cacheable: true,
                ends_by: Time::MAX,
            };
        };
        let mut lazy = flight();
        streaming(&mut lazy);
        lazy.tail_mut().idle_until = Time::from_millis(9);
        let mut rearmed = flight();
        streaming(&mut rearmed);
        rearmed.deadline = Time::from_millis(9);
        assert_eq!(lazy.due(), Time::from_millis(9));
        assert_eq!(lazy, rearmed);
        assert_eq!(hash_of(&lazy), hash_of(&rearmed));
        rearmed.tail_mut().idle_until = Time::from_millis(9);
        assert_eq!(lazy, rearmed, "re-arming leaves the idle deadline in place");
        // A later idle deadline is a different flight.
        rearmed.tail_mut().idle_until = Time::from_millis(10);
        assert_ne!(lazy, rearmed);
        assert_ne!(hash_of(&lazy), hash_of(&rearmed));
        // Outside streaming the idle deadline does not count (it is never set).
        let mut queued = flight();
        queued.tail_mut().idle_until = Time::from_millis(9);
        assert_eq!(queued.due(), Time::from_millis(5), "only streaming has one");
        assert_eq!(
            flight().due(),
            Time::from_millis(5),
            "no chunk: the armed one"
        );
    }

    #[test]
    fn an_allocated_empty_tail_equals_no_tail() {
        let a = flight();
        let mut b = flight();
        let _ = b.tail_mut();
        assert_eq!(a, b);
        assert_eq!(hash_of(&a), hash_of(&b));
        b.tail_mut().log.push(Bytes::from_static(b"x"));
        assert_eq!(b.take_log(), vec![Bytes::from_static(b"x")]);
        assert!(b.tail().log.is_empty());
        assert!(flight().take_log().is_empty());
    }
}
