//! The table of live flights and the index that finds a key's live flight.
//!
//! A flight is live from the submit that creates it until it ends; then it is
//! removed here, in the same step, and its id is never handed out again. That is
//! what makes a late report harmless ([rule 16](crate::contract#rule-16)): it names
//! a flight this table no longer holds. The key index is kept in step with the
//! table by construction: [`Flights::create`] and [`Flights::remove`] are the only
//! ways in and out ([rule 2](crate::contract#rule-2): one live flight per key).

use crate::deadline::{Deadlines, Timer};
use crate::flight::{Flight, FlightPhase};
use crate::idmap::IdMap;
use crate::live::LiveKeys;
use crate::{FlightId, Key, Time};

/// The live flights, by id, with their key index.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct Flights {
    /// Boxed: a flight is large and most are looked up rarely, so the dense
    /// window stays small (8 bytes per id).
    table: IdMap<FlightId, Box<Flight>>,
    /// The live flight of each key. Derived from `table`, so equality and
    /// hashing ignore it (see [`LiveKeys`]).
    live: LiveKeys,
    /// The id of the next flight created.
    next_id: u64,
}

impl Flights {
    /// The live flight of `key`, if any.
    pub(crate) fn live_flight(&self, key: &Key) -> Option<FlightId> {
        let table = &self.table;
        self.live
            .get(key, |id| table.get(&id).is_some_and(|f| f.key == *key))
    }

    /// Creates a queued flight for `key`, which has no live flight, with its queue
    /// deadline `deadline`.
    pub(crate) fn create(&mut self, key: Key, deadline: Time) -> FlightId {
        let id = FlightId::from_raw(self.next_id);
        self.next_id += 1;
        let flight = Flight::new(key, deadline);
        self.live.insert(&flight.key, id);
        self.table.insert(id, Box::new(flight));
        id
    }

    /// Forgets a flight that ends, with its key's entry.
    pub(crate) fn remove(&mut self, id: FlightId) -> Option<Box<Flight>> {
        let flight = self.table.remove(&id)?;
        self.live.remove(&flight.key, id);
        Some(flight)
    }

    pub(crate) fn get(&self, id: FlightId) -> Option<&Flight> {
        self.table.get(&id).map(|f| &**f)
    }

    pub(crate) fn get_mut(&mut self, id: FlightId) -> Option<&mut Flight> {
        self.table.get_mut(&id).map(|f| &mut **f)
    }

    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    /// No flight, and no key entry left behind.
    pub(crate) fn is_empty(&self) -> bool {
        self.table.is_empty() && self.live.is_empty()
    }

    /// The live flights in id order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (FlightId, &Flight)> + '_ {
        self.table.iter().map(|(id, f)| (id, &**f))
    }

    /// The live flight ids in id order.
    pub(crate) fn ids(&self) -> impl Iterator<Item = FlightId> + '_ {
        self.table.keys()
    }

    /// The flights' own invariants: every flight has a member, is its key's live
    /// flight ([invariant 3](crate::contract#invariant-3)), has its phase deadline
    /// armed unless queued (a queued flight's is implied by the queue), has an
    /// idle deadline only while streaming, and counts its log's bytes right,
    /// within `max_bytes`; the index holds nothing else.
    pub(crate) fn check(&self, deadlines: &Deadlines, max_bytes: u64) -> Result<(), String> {
        for (id, f) in self.iter() {
            if f.members.is_empty() {
                return Err(format!("{id} has no members but is live"));
            }
            if self.live_flight(&f.key) != Some(id) {
                return Err(format!("{id} is not the live flight of its key"));
            }
            let armed = deadlines.contains(f.deadline, Timer::Flight(id));
            match (f.phase == FlightPhase::Queued, armed) {
                (true, true) => return Err(format!("{id} queued with an armed deadline")),
                (false, false) => return Err(format!("{id} deadline not armed")),
                _ => {}
            }
            let streaming = matches!(
                f.phase,
                FlightPhase::Streaming { .. } | FlightPhase::Following { .. }
            );
            if !streaming && f.tail().idle_until != Time::ZERO {
                return Err(format!(
                    "{id} has an idle deadline but is neither streaming nor following"
                ));
            }
            let bytes: u64 = f.tail().log.iter().map(|b| b.len() as u64).sum();
            if bytes != f.tail().bytes || bytes > max_bytes {
                return Err(format!("{id} byte count"));
            }
        }
        if self.live.len() != self.table.len() {
            return Err("a key maps to a flight that is gone".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Flights;
    use crate::deadline::{Deadlines, Timer};
    use crate::flight::FlightPhase;
    use crate::{FlightId, Key, RequestId, Time};
    use bytes::Bytes;

    /// Two flights, the first queued, the second preparing with its deadline armed.
    fn world() -> (Flights, Deadlines) {
        let mut flights = Flights::default();
        let mut deadlines = Deadlines::default();
        for (n, key) in ["a", "b"].into_iter().enumerate() {
            let id = flights.create(Key::from(key), Time::from_millis(10));
            flights
                .get_mut(id)
                .unwrap()
                .members
                .insert(RequestId::from_raw(n as u64));
        }
        let b = flights.ids().nth(1).unwrap();
        let f = flights.get_mut(b).unwrap();
        f.phase = FlightPhase::Preparing;
        deadlines.arm_new(&mut f.deadline, Time::from_millis(20), Timer::Flight(b));
        (flights, deadlines)
    }

    #[test]
    fn the_key_index_follows_create_and_remove() {
        let (mut flights, _) = world();
        let [a, b]: [_; 2] = flights.ids().collect::<Vec<_>>().try_into().unwrap();
        assert_eq!((a.raw(), b.raw()), (0, 1), "ids are sequential");
        assert_eq!(flights.live_flight(&Key::from("a")), Some(a));
        assert_eq!(flights.live_flight(&Key::from("b")), Some(b));
        assert_eq!(flights.live_flight(&Key::from("c")), None);
        assert!(flights.remove(a).is_some());
        assert!(flights.remove(a).is_none(), "removed once");
        assert_eq!(flights.live_flight(&Key::from("a")), None);
        assert!(flights.get(a).is_none() && flights.len() == 1);
        let again = flights.create(Key::from("a"), Time::ZERO);
        assert_eq!(again.raw(), 2, "ids are never reused");
        flights.remove(b);
        flights.remove(again);
        assert!(flights.is_empty());
    }

    #[test]
    fn check_passes_on_a_sound_table() {
        let (flights, deadlines) = world();
        assert_eq!(flights.check(&deadlines, 100), Ok(()));
    }

    fn fails(flights: &Flights, deadlines: &Deadlines, max: u64, needle: &str) {
        let err = flights.check(deadlines, max).unwrap_err();
        assert!(err.contains(needle), "{err:?} should mention {needle:?}");
    }

    #[test]
    fn check_fires_on_each_corruption() {
        let (flights, deadlines) = world();
        let [a, b]: [_; 2] = flights.ids().collect::<Vec<_>>().try_into().unwrap();

        let mut f = flights.clone();
        f.get_mut(a).unwrap().members.remove(RequestId::from_raw(0));
        fails(&f, &deadlines, 100, "no members");

        let mut f = flights.clone();
        f.get_mut(a).unwrap().key = Key::from("renamed");
        fails(&f, &deadlines, 100, "not the live flight of its key");

        let mut d = deadlines.clone();
        d.arm(&mut None, Time::from_millis(10), Timer::Flight(a));
        fails(&flights, &d, 100, "queued with an armed deadline");

        let mut d = deadlines.clone();
        d.remove(Time::from_millis(20), Timer::Flight(b));
        fails(&flights, &d, 100, "deadline not armed");

        let mut f = flights.clone();
        f.get_mut(a)
            .unwrap()
            .tail_mut()
            .log
            .push(Bytes::from_static(b"xy"));
        fails(&f, &deadlines, 100, "byte count");
        f.get_mut(a).unwrap().tail_mut().bytes = 2;
        assert_eq!(f.check(&deadlines, 2), Ok(()));
        fails(&f, &deadlines, 1, "byte count");

        let mut f = flights.clone();
        f.get_mut(b).unwrap().tail_mut().idle_until = Time::from_millis(30);
        fails(
            &f,
            &deadlines,
            100,
            "idle deadline but is neither streaming nor following",
        );

        let mut f = flights.clone();
        f.live.insert(&Key::from("ghost"), a);
        fails(&f, &deadlines, 100, "a key maps to a flight that is gone");
    }

    #[test]
    fn equality_sees_the_flights_and_the_next_id_but_not_the_index_layout() {
        use crate::testing::{assert_differs, assert_same};
        let (base, _) = world();
        let mut other = base.clone();
        let id = other.create(Key::from("c"), Time::ZERO);
        other.remove(id);
        assert_differs(&base, &other, "next_id");
        let mut other = base.clone();
        other.get_mut(FlightId::from_raw(0)).unwrap().attached = 1;
        assert_differs(&base, &other, "table");
        // The index is derived: where a key sits in it does not matter.
        let mut other = base.clone();
        let a = FlightId::from_raw(0);
        other.live.remove(&Key::from("a"), a);
        other.live.insert_collided(&Key::from("a"), a);
        assert_eq!(other.live_flight(&Key::from("a")), Some(a));
        assert_same(&base, &other, "the key index layout");
    }
}
