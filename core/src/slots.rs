//! The two scarce resources: preparation slots and stream slots
//! ([rule 4](crate::contract#rule-4)), and the line of prepared flights waiting
//! for a stream slot.
//!
//! A slot is a count, not a token: a flight holds one by being in the
//! `Preparing` or `Streaming` phase, and the counts are checked against the
//! phases ([invariant 1](crate::contract#invariant-1)). A prepared flight holds no
//! slot ([rule 5](crate::contract#rule-5)); it stands in the ready line only while
//! a member has a client attached, in preparation order
//! ([rule 6](crate::contract#rule-6)).

use std::collections::BTreeSet;

use crate::flight::FlightPhase;
use crate::flights::Flights;
use crate::FlightId;

/// Slots in use and the ready line.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct Slots {
    preparing: usize,
    streaming: usize,
    /// Prepared flights with a client attached, by preparation order.
    ready: BTreeSet<(u64, FlightId)>,
    /// The preparation order of the next flight to finish preparing.
    next_ready_seq: u64,
}

impl Slots {
    /// Preparation slots in use.
    pub(crate) fn preparing(&self) -> usize {
        self.preparing
    }

    /// Stream slots in use.
    pub(crate) fn streaming(&self) -> usize {
        self.streaming
    }

    /// Whether the ready line is empty.
    pub(crate) fn none_ready(&self) -> bool {
        self.ready.is_empty()
    }

    /// Takes a preparation slot.
    pub(crate) fn start_preparation(&mut self) {
        self.preparing += 1;
    }

    /// A preparation succeeded: its slot is released and the flight gets its
    /// place in the preparation order, returned.
    pub(crate) fn prepared(&mut self) -> u64 {
        let seq = self.next_ready_seq;
        self.next_ready_seq += 1;
        self.preparing -= 1;
        seq
    }

    /// A prepared flight (`seq` from [`Slots::prepared`]) gained its first
    /// attached client: it joins the ready line.
    pub(crate) fn enlist(&mut self, seq: u64, flight: FlightId) {
        self.ready.insert((seq, flight));
    }

    /// A prepared flight lost its last attached client: it leaves the line.
    pub(crate) fn delist(&mut self, seq: u64, flight: FlightId) {
        self.ready.remove(&(seq, flight));
    }

    /// Takes the first flight of the ready line.
    pub(crate) fn next_ready(&mut self) -> Option<FlightId> {
        self.ready.pop_first().map(|(_, flight)| flight)
    }

    /// Takes a stream slot.
    pub(crate) fn start_stream(&mut self) {
        self.streaming += 1;
    }

    /// A flight in `phase` ends: whatever it held (a slot, a place in the line)
    /// is released.
    pub(crate) fn release(&mut self, flight: FlightId, phase: FlightPhase) {
        match phase {
            FlightPhase::Queued | FlightPhase::Claiming | FlightPhase::Following { .. } => {}
            FlightPhase::Preparing => self.preparing -= 1,
            FlightPhase::Prepared { seq, .. } => {
                self.ready.remove(&(seq, flight));
            }
            FlightPhase::Streaming { .. } => self.streaming -= 1,
        }
    }

    /// The slots' invariants: the counts equal the flights in each phase and stay
    /// within the limits ([invariant 1](crate::contract#invariant-1)); the ready
    /// line holds exactly the prepared flights with a client attached; and no slot
    /// is free while a flight waits for it (`queued` flights wait for preparation).
    pub(crate) fn check(
        &self,
        flights: &Flights,
        (max_preparing, max_streaming): (usize, usize),
        queued: usize,
    ) -> Result<(), String> {
        let (mut preparing, mut streaming, mut ready) = (0, 0, 0);
        for (id, f) in flights.iter() {
            match f.phase {
                // Remote phases hold no slot (contract rule 27).
                FlightPhase::Queued | FlightPhase::Claiming | FlightPhase::Following { .. } => {}
                FlightPhase::Preparing => preparing += 1,
                FlightPhase::Prepared { seq, .. } => {
                    let listed = self.ready.contains(&(seq, id));
                    if listed != (f.attached > 0) {
                        return Err(format!("{id} ready listing wrong"));
                    }
                    ready += usize::from(listed);
                }
                FlightPhase::Streaming { .. } => streaming += 1,
            }
        }
        if preparing != self.preparing {
            return Err(format!(
                "preparation slots {} != {preparing}",
                self.preparing
            ));
        }
        if streaming != self.streaming {
            return Err(format!("stream slots {} != {streaming}", self.streaming));
        }
        if preparing > max_preparing {
            return Err("preparation limit exceeded".into());
        }
        if streaming > max_streaming {
            return Err("stream limit exceeded".into());
        }
        if ready != self.ready.len() {
            return Err("ready list holds flights not prepared".into());
        }
        if queued > 0 && self.preparing != max_preparing {
            return Err("a flight is queued while a preparation slot is free".into());
        }
        if !self.ready.is_empty() && self.streaming != max_streaming {
            return Err("a flight waits for a stream slot while one is free".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Slots;
    use crate::flight::FlightPhase;
    use crate::flights::Flights;
    use crate::{FlightId, Key, RequestId, Time};

    const LIMITS: (usize, usize) = (1, 1);

    /// Three flights: one preparing, one streaming, one prepared with a client
    /// waiting for the (full) stream slot. Limits 1 and 1, nothing queued.
    fn world() -> (Flights, Slots) {
        let mut flights = Flights::default();
        let mut slots = Slots::default();
        for n in 0..3u64 {
            let id = flights.create(Key::from(format!("k{n}").as_str()), Time::ZERO);
            flights
                .get_mut(id)
                .unwrap()
                .members
                .insert(RequestId::from_raw(n));
        }
        let [p, s, w] = [0, 1, 2].map(FlightId::from_raw);
        slots.start_preparation();
        slots.start_preparation();
        let seq = slots.prepared();
        assert_eq!(seq, 0);
        slots.start_stream();
        flights.get_mut(s).unwrap().phase = FlightPhase::Streaming {
            cacheable: true,
            ends_by: Time::ZERO,
        };
        let seq = slots.prepared();
        assert_eq!(seq, 1, "preparation order counts up");
        let f = flights.get_mut(w).unwrap();
        f.phase = FlightPhase::Prepared {
            cacheable: true,
            seq,
        };
        f.attached = 1;
        slots.enlist(seq, w);
        slots.start_preparation();
        flights.get_mut(p).unwrap().phase = FlightPhase::Preparing;
        (flights, slots)
    }

    #[test]
    fn slots_count_and_release_by_phase() {
        let (flights, mut slots) = world();
        assert_eq!((slots.preparing(), slots.streaming()), (1, 1));
        assert!(!slots.none_ready());
        assert_eq!(slots.check(&flights, LIMITS, 0), Ok(()));
        for (n, phase) in [
            (0, FlightPhase::Preparing),
            (
                1,
                FlightPhase::Streaming {
                    cacheable: true,
                    ends_by: Time::ZERO,
                },
            ),
        ] {
            slots.release(FlightId::from_raw(n), phase);
        }
        assert_eq!((slots.preparing(), slots.streaming()), (0, 0));
        slots.release(
            FlightId::from_raw(2),
            FlightPhase::Prepared {
                cacheable: true,
                seq: 1,
            },
        );
        assert!(slots.none_ready());
        slots.release(FlightId::from_raw(9), FlightPhase::Queued);
        assert_eq!(
            slots,
            Slots {
                next_ready_seq: 2,
                ..Slots::default()
            }
        );
    }

    #[test]
    fn the_ready_line_is_fifo_by_preparation_order() {
        let mut slots = Slots::default();
        let [a, b, c] = [0, 1, 2].map(FlightId::from_raw);
        slots.enlist(5, c);
        slots.enlist(3, b);
        slots.enlist(4, a);
        slots.delist(4, a);
        assert_eq!(slots.next_ready(), Some(b));
        assert_eq!(slots.next_ready(), Some(c));
        assert_eq!(slots.next_ready(), None);
    }

    #[test]
    fn check_fires_on_each_corruption() {
        let (flights, slots) = world();
        let fails = |s: &Slots, f: &Flights, limits, queued, needle: &str| {
            let err = s.check(f, limits, queued).unwrap_err();
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        };
        let mut s = slots.clone();
        s.preparing = 0;
        fails(&s, &flights, LIMITS, 0, "preparation slots 0 != 1");
        let mut s = slots.clone();
        s.streaming = 2;
        fails(&s, &flights, LIMITS, 0, "stream slots 2 != 1");
        fails(&slots, &flights, (0, 1), 0, "preparation limit exceeded");
        fails(&slots, &flights, (1, 0), 0, "stream limit exceeded");
        let mut s = slots.clone();
        s.delist(1, FlightId::from_raw(2));
        fails(&s, &flights, LIMITS, 0, "ready listing wrong");
        let mut s = slots.clone();
        s.enlist(7, FlightId::from_raw(0));
        fails(
            &s,
            &flights,
            LIMITS,
            0,
            "ready list holds flights not prepared",
        );
        fails(
            &slots,
            &flights,
            (2, 1),
            1,
            "queued while a preparation slot is free",
        );
        fails(
            &slots,
            &flights,
            (1, 2),
            0,
            "waits for a stream slot while one is free",
        );
        // Nothing queued: a free preparation slot is fine.
        assert_eq!(slots.check(&flights, (2, 1), 0), Ok(()));
    }

    #[test]
    fn every_field_counts_for_equality_and_hashing() {
        use crate::testing::assert_differs;
        let (_, base) = world();
        let variants: Vec<crate::testing::Change<Slots>> = vec![
            ("preparing", |s| s.preparing += 1),
            ("streaming", |s| s.streaming += 1),
            ("ready", |s| s.enlist(9, FlightId::from_raw(9))),
            ("next_ready_seq", |s| s.next_ready_seq += 1),
        ];
        for (field, change) in variants {
            let mut other = base.clone();
            change(&mut other);
            assert_differs(&base, &other, field);
        }
    }
}
