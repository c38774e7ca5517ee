//! Request records from submit to removal: the lifecycle and its retention.
//!
//! A record is live while its request is a member of a flight, and ended after.
//! Removal has exactly two causes: its client detaches
//! ([rule 15](crate::contract#rule-15)), or its retention deadline passes
//! ([rule 13](crate::contract#rule-13), [rule 17](crate::contract#rule-17)). The
//! retention runs while no client is attached, and also once the attached client
//! has read its terminal item ([rule 21](crate::contract#rule-21)). So a record
//! has one deadline armed (attach, or retention) unless a client that still reads
//! holds it: nothing is held forever and no janitor is needed.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::deadline::{Deadlines, Timer};
use crate::ending::Ending;
use crate::flights::Flights;
use crate::idmap::IdMap;
use crate::request::{Life, Reader, Request};
use crate::{reading, Action, Config, FlightId, RequestId, Time};

/// Every request record held, with the counts the stats report in O(1).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct Records {
    table: IdMap<RequestId, Request>,
    /// The id of the next request submitted.
    next_id: u64,
    /// Records with a client attached.
    readers: usize,
    /// Records whose request is live.
    live: usize,
}

impl Records {
    /// Hands out the next request id.
    pub(crate) fn allocate(&mut self) -> RequestId {
        let id = RequestId::from_raw(self.next_id);
        self.next_id += 1;
        id
    }

    /// Records `id` as a live member of `flight`, with its attach deadline.
    pub(crate) fn insert_member(
        &mut self,
        deadlines: &mut Deadlines,
        id: RequestId,
        flight: FlightId,
        attach_by: Time,
    ) {
        let mut request = Request {
            life: Life::Live(flight),
            reader: None,
            deadline: None,
        };
        deadlines.arm(&mut request.deadline, attach_by, Timer::Request(id));
        self.table.insert(id, request);
        self.live += 1;
    }

    /// Records `id` as already ended (a cache hit), retained until `until`.
    pub(crate) fn insert_ended(
        &mut self,
        deadlines: &mut Deadlines,
        id: RequestId,
        ending: Arc<Ending>,
        until: Time,
    ) {
        let mut request = Request {
            life: Life::Ended(ending),
            reader: None,
            deadline: None,
        };
        deadlines.arm(&mut request.deadline, until, Timer::Request(id));
        self.table.insert(id, request);
    }

    pub(crate) fn get(&self, id: RequestId) -> Option<&Request> {
        self.table.get(&id)
    }

    pub(crate) fn get_mut(&mut self, id: RequestId) -> Option<&mut Request> {
        self.table.get_mut(&id)
    }

    /// Attaches a client to `id` (which exists and has none): its deadline is
    /// disarmed, since a client now holds it. Returns its flight if it is live.
    pub(crate) fn attach(&mut self, deadlines: &mut Deadlines, id: RequestId) -> Option<FlightId> {
        let req = self.table.get_mut(&id)?;
        deadlines.disarm(&mut req.deadline, Timer::Request(id));
        req.reader = Some(Reader {
            cursor: 0,
            parked: false,
            finished: false,
        });
        self.readers += 1;
        match req.life {
            Life::Live(flight) => Some(flight),
            Life::Ended(_) => None,
        }
    }

    /// Ends the live request `id` with `ending`. An attached client is woken if
    /// it waits; an unattached record starts its retention so that a late client
    /// can still read it. Returns whether the request was live (and so ended now).
    pub(crate) fn finish(
        &mut self,
        deadlines: &mut Deadlines,
        actions: &mut VecDeque<Action>,
        config: &Config,
        now: Time,
        id: RequestId,
        ending: Arc<Ending>,
    ) -> bool {
        let Some(req) = self.table.get_mut(&id) else {
            return false;
        };
        if !matches!(req.life, Life::Live(_)) {
            return false;
        }
        self.live -= 1;
        deadlines.disarm(&mut req.deadline, Timer::Request(id));
        let retention = config.retention(&ending.outcome);
        req.life = Life::Ended(ending);
        match req.reader.as_mut() {
            Some(reader) => {
                if reader.parked {
                    reader.parked = false;
                    actions.push_back(Action::Wake { request: id });
                }
            }
            None => deadlines.arm(&mut req.deadline, now + retention, Timer::Request(id)),
        }
        true
    }

    /// Wakes `id`'s reader if it is parked on `flight` (a chunk arrived).
    /// Inlined: it runs once per parked reader per chunk.
    #[inline]
    pub(crate) fn wake(&mut self, actions: &mut VecDeque<Action>, id: RequestId, flight: FlightId) {
        let Some(req) = self.table.get_mut(&id) else {
            return;
        };
        if !matches!(req.life, Life::Live(f) if f == flight) {
            return;
        }
        if let Some(reader) = req.reader.as_mut().filter(|r| r.parked) {
            reader.parked = false;
            actions.push_back(Action::Wake { request: id });
        }
    }

    /// The deadline of `id` fired (it is popped already). Returns whether the
    /// request is live (its attach deadline) rather than ended (its retention).
    pub(crate) fn deadline_fired(&mut self, id: RequestId) -> Option<bool> {
        let req = self.table.get_mut(&id)?;
        req.deadline = None;
        Some(matches!(req.life, Life::Live(_)))
    }

    /// Removes the record of `id` with its deadline.
    pub(crate) fn remove(&mut self, deadlines: &mut Deadlines, id: RequestId) {
        if let Some(mut req) = self.table.remove(&id) {
            deadlines.disarm(&mut req.deadline, Timer::Request(id));
            self.readers -= usize::from(req.reader.is_some());
            self.live -= usize::from(matches!(req.life, Life::Live(_)));
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    /// No record, and the counts agree.
    pub(crate) fn is_empty(&self) -> bool {
        self.table.is_empty() && self.readers == 0 && self.live == 0
    }

    /// Records with a client attached.
    pub(crate) fn readers(&self) -> usize {
        self.readers
    }

    /// Records whose request is live.
    pub(crate) fn live(&self) -> usize {
        self.live
    }

    /// The ids held, in id order.
    pub(crate) fn ids(&self) -> impl Iterator<Item = RequestId> + '_ {
        self.table.keys()
    }

    /// How many records have a deadline armed.
    pub(crate) fn armed(&self) -> usize {
        self.table.values().filter(|r| r.deadline.is_some()).count()
    }

    /// The records' invariants: membership agrees on both sides and each flight
    /// counts its attached members right
    /// ([invariant 2](crate::contract#invariant-2)); every reader is consistent
    /// ([`reading::check`]); a record has an armed deadline exactly when no
    /// client is attached; the counts are right.
    pub(crate) fn check(&self, flights: &Flights, deadlines: &Deadlines) -> Result<(), String> {
        for (fid, f) in flights.iter() {
            let mut attached = 0;
            for member in f.members.iter() {
                let req = self.table.get(&member);
                if !req.is_some_and(|r| r.life == Life::Live(fid)) {
                    return Err(format!("{fid} lists {member} which does not point back"));
                }
                attached += usize::from(req.is_some_and(|r| r.reader.is_some()));
            }
            if attached != f.attached {
                return Err(format!("{fid} attached count {} != {attached}", f.attached));
            }
        }
        let (mut readers, mut live) = (0, 0);
        for (id, r) in self.table.iter() {
            if let Life::Live(fid) = &r.life {
                live += 1;
                if !flights.get(*fid).is_some_and(|f| f.members.contains(id)) {
                    return Err(format!("{id} not in its {fid}"));
                }
            }
            if let Some(reader) = &r.reader {
                readers += 1;
                reading::check(id, reader, &r.life, flights)?;
            }
            // Held by a client that still reads: no deadline. Otherwise (no client,
            // or one that has read its terminal item) exactly one, armed.
            let held = r.reader.as_ref().is_some_and(|reader| !reader.finished);
            match (held, r.deadline) {
                (true, None) => {}
                (true, Some(_)) => return Err(format!("{id} attached but still has a deadline")),
                (false, None) if r.reader.is_some() => {
                    return Err(format!(
                        "{id} finished reading without a retention deadline"
                    ))
                }
                (false, None) => return Err(format!("{id} unattached without a deadline")),
                (false, Some(at)) => {
                    if !deadlines.contains(at, Timer::Request(id)) {
                        return Err(format!("{id} deadline not armed"));
                    }
                }
            }
        }
        if readers != self.readers {
            return Err(format!("reader count {} != {readers}", self.readers));
        }
        if live != self.live {
            return Err(format!("live count {} != {live}", self.live));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Arc;

    use bytes::Bytes;

    use super::Records;
    use crate::deadline::{Deadlines, Timer};
    use crate::ending::Ending;
    use crate::flights::Flights;
    use crate::request::Life;
    use crate::{
        reading, Action, Config, FlightId, Item, Key, Outcome, Readiness, RequestId, Time,
    };

    fn r(n: u64) -> RequestId {
        RequestId::from_raw(n)
    }

    struct World {
        flights: Flights,
        records: Records,
        deadlines: Deadlines,
        actions: VecDeque<Action>,
        flight: FlightId,
    }

    /// One flight with a chunk in its log and two members: r0 unattached, r1
    /// attached and parked. r2 ended (a cache hit), unattached.
    fn world() -> World {
        let mut w = World {
            flights: Flights::default(),
            records: Records::default(),
            deadlines: Deadlines::default(),
            actions: VecDeque::new(),
            flight: FlightId::from_raw(0),
        };
        w.flight = w.flights.create(Key::from("k"), Time::ZERO);
        for _ in 0..2 {
            let id = w.records.allocate();
            w.flights.get_mut(w.flight).unwrap().members.insert(id);
            w.records
                .insert_member(&mut w.deadlines, id, w.flight, Time::from_millis(5));
        }
        let ending = Arc::new(Ending {
            outcome: Outcome::Completed,
            log: Some(Arc::new(vec![Bytes::from_static(b"c")])),
        });
        let id = w.records.allocate();
        w.records
            .insert_ended(&mut w.deadlines, id, ending, Time::from_millis(9));
        assert_eq!(w.records.attach(&mut w.deadlines, r(1)), Some(w.flight));
        w.flights.get_mut(w.flight).unwrap().attached = 1;
        w.flights
            .get_mut(w.flight)
            .unwrap()
            .tail_mut()
            .log
            .push(Bytes::from_static(b"x"));
        w.flights.get_mut(w.flight).unwrap().tail_mut().bytes = 1;
        let mut out = Vec::new();
        let req = w.records.get_mut(r(1)).unwrap();
        let clock = (&mut w.deadlines, &Config::default(), Time::ZERO);
        let ready = reading::read(clock, r(1), req, &mut w.flights, &mut out);
        assert_eq!(ready, Ok(Readiness::Ready));
        assert_eq!(out, vec![Item::Chunk(Bytes::from_static(b"x"))]);
        w
    }

    fn check(w: &World) -> Result<(), String> {
        w.records.check(&w.flights, &w.deadlines)
    }

    fn fails(w: &World, needle: &str) {
        let err = check(w).unwrap_err();
        assert!(err.contains(needle), "{err:?} should mention {needle:?}");
    }

    #[test]
    fn the_lifecycle_keeps_its_counts() {
        let mut w = world();
        assert_eq!(check(&w), Ok(()));
        assert_eq!(
            (w.records.len(), w.records.live(), w.records.readers()),
            (3, 2, 1)
        );
        assert_eq!(w.records.armed(), 2, "r0's attach and r2's retention");
        assert_eq!(w.records.ids().collect::<Vec<_>>(), [r(0), r(1), r(2)]);

        // A chunk wakes the parked reader once.
        w.records.wake(&mut w.actions, r(1), w.flight);
        w.records.wake(&mut w.actions, r(1), w.flight);
        w.records.wake(&mut w.actions, r(0), w.flight); // not attached
        w.records.wake(&mut w.actions, r(1), FlightId::from_raw(7)); // not its flight
        assert_eq!(
            w.actions.drain(..).collect::<Vec<_>>(),
            [Action::Wake { request: r(1) }]
        );

        let config = Config::default();
        let cancelled = Arc::new(Ending {
            outcome: Outcome::Cancelled,
            log: None,
        });
        let now = Time::from_millis(1);
        // Ending an unattached member arms its cancelled retention.
        assert!(w.records.finish(
            &mut w.deadlines,
            &mut w.actions,
            &config,
            now,
            r(0),
            cancelled.clone()
        ));
        let retained = now + config.cancelled_retention;
        assert_eq!(w.records.get(r(0)).unwrap().deadline, Some(retained));
        assert!(w.deadlines.contains(retained, Timer::Request(r(0))));
        // Finishing twice, or an ended or unknown record, does nothing.
        assert!(!w.records.finish(
            &mut w.deadlines,
            &mut w.actions,
            &config,
            now,
            r(0),
            cancelled.clone()
        ));
        assert!(!w.records.finish(
            &mut w.deadlines,
            &mut w.actions,
            &config,
            now,
            r(2),
            cancelled.clone()
        ));
        assert!(!w.records.finish(
            &mut w.deadlines,
            &mut w.actions,
            &config,
            now,
            r(9),
            cancelled
        ));
        assert_eq!(w.records.live(), 1);
        assert!(w.actions.is_empty());

        assert_eq!(w.records.deadline_fired(r(2)), Some(false));
        assert_eq!(w.records.get(r(2)).unwrap().deadline, None);
        assert_eq!(w.records.deadline_fired(r(9)), None);
        w.records.remove(&mut w.deadlines, r(1));
        assert_eq!((w.records.live(), w.records.readers()), (0, 0));
        w.records.remove(&mut w.deadlines, r(0));
        assert_eq!(
            w.deadlines.len(),
            1,
            "r2's popped retention is the caller's"
        );
        w.records.remove(&mut w.deadlines, r(2));
        assert!(w.records.is_empty());
        assert_eq!(w.records.allocate(), r(3), "ids are never reused");
    }

    #[test]
    fn check_fires_on_each_corruption() {
        let w = world();
        assert_eq!(check(&w), Ok(()));

        let mut c = world();
        c.flights.get_mut(c.flight).unwrap().members.insert(r(2));
        fails(&c, "lists r2 which does not point back");

        let mut c = world();
        c.flights.get_mut(c.flight).unwrap().attached = 2;
        fails(&c, "attached count 2 != 1");

        let mut c = world();
        c.flights.get_mut(c.flight).unwrap().members.remove(r(0));
        fails(&c, "r0 not in its");

        let mut c = world();
        c.records.get_mut(r(1)).unwrap().deadline = Some(Time::ZERO);
        fails(&c, "attached but still has a deadline");

        let mut c = world();
        c.records.get_mut(r(0)).unwrap().deadline = None;
        fails(&c, "unattached without a deadline");

        let mut c = world();
        c.records.get_mut(r(2)).unwrap().deadline = Some(Time::from_millis(8));
        fails(&c, "r2 deadline not armed");

        let mut c = world();
        c.records.readers = 0;
        fails(&c, "reader count 0 != 1");

        let mut c = world();
        c.records.live = 3;
        fails(&c, "live count 3 != 2");

        // A reader fault is reported through the records' check.
        let mut c = world();
        c.records
            .get_mut(r(1))
            .unwrap()
            .reader
            .as_mut()
            .unwrap()
            .cursor = 2;
        fails(&c, "r1 cursor past the log");
        assert!(matches!(c.records.get(r(1)).unwrap().life, Life::Live(_)));
    }

    #[test]
    fn every_field_counts_for_equality_and_hashing() {
        use crate::testing::assert_differs;
        let base = world().records;
        let variants: Vec<crate::testing::Change<Records>> = vec![
            ("next_id", |s| {
                s.allocate();
            }),
            ("readers", |s| s.readers += 1),
            ("live", |s| s.live += 1),
            ("life", |s| {
                s.get_mut(r(0)).unwrap().life = Life::Live(FlightId::from_raw(5));
            }),
            ("deadline", |s| {
                s.get_mut(r(0)).unwrap().deadline = Some(Time::MAX);
            }),
            ("reader", |s| {
                s.get_mut(r(0)).unwrap().reader = s.get(r(1)).unwrap().reader.clone();
            }),
            ("cursor", |s| {
                s.get_mut(r(1)).unwrap().reader.as_mut().unwrap().cursor += 1;
            }),
            ("parked", |s| {
                s.get_mut(r(1)).unwrap().reader.as_mut().unwrap().parked ^= true;
            }),
            ("finished", |s| {
                s.get_mut(r(1)).unwrap().reader.as_mut().unwrap().finished ^= true;
            }),
            ("outcome", |s| {
                let Life::Ended(e) = &mut s.get_mut(r(2)).unwrap().life else {
                    unreachable!()
                };
                Arc::make_mut(e).outcome = Outcome::Cancelled;
            }),
            ("log", |s| {
                let Life::Ended(e) = &mut s.get_mut(r(2)).unwrap().life else {
                    unreachable!()
                };
                Arc::make_mut(e).log = None;
            }),
        ];
        for (field, change) in variants {
            let mut other = base.clone();
            change(&mut other);
            assert_differs(&base, &other, field);
        }
    }
}
