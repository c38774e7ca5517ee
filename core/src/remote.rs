//! The remote side of flights in cluster mode: which flights own their key in
//! the cluster, which follow another machine, which wait for a claim's answer
//! (rules [25](crate::contract#rule-25)-[29](crate::contract#rule-29), and
//! [invariant 8](crate::contract#invariant-8)).
//!
//! A flight's phase says where it is (`Claiming`, `Following`, or a local
//! phase); this sub-state keeps what the phase does not: whether a flight in a
//! local phase is a cluster **owner** (so its chunks are published and its end
//! released), and each follower's queue deadline, fixed when its flight was
//! created, which a re-claim after a lost owner goes back to (see
//! [`crate::cluster`] for why). It also counts the claiming and following
//! flights, so that the stats stay O(1); [`Remote::check`] recounts them from
//! the phases. With cluster mode off it stays empty.

use std::collections::{BTreeMap, BTreeSet};

use crate::flight::FlightPhase;
use crate::flights::Flights;
use crate::{FlightId, Time};

/// Owners, followers and claiming flights.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct Remote {
    /// Flights of this machine that own their key in the cluster, in id order.
    owners: BTreeSet<FlightId>,
    /// Following flights, with the queue deadline a re-claim goes back to.
    followers: BTreeMap<FlightId, Time>,
    /// Flights in the claiming phase.
    claiming: usize,
}

impl Remote {
    /// Flights waiting for a claim's answer.
    pub(crate) fn claiming(&self) -> usize {
        self.claiming
    }

    /// Flights following another machine's log.
    pub(crate) fn following(&self) -> usize {
        self.followers.len()
    }

    /// Whether `flight` owns its key in the cluster.
    pub(crate) fn is_owner(&self, flight: FlightId) -> bool {
        self.owners.contains(&flight)
    }

    /// A flight starts claiming (created, or re-claiming after its owner was lost:
    /// then it stops following and its queue deadline is returned).
    pub(crate) fn claim(&mut self, flight: FlightId) -> Option<Time> {
        self.claiming += 1;
        self.followers.remove(&flight)
    }

    /// A claiming flight became its key's owner.
    pub(crate) fn owned(&mut self, flight: FlightId) {
        self.claiming -= 1;
        self.owners.insert(flight);
    }

    /// A claiming flight follows another machine; `queue_by` is its queue deadline.
    pub(crate) fn followed(&mut self, flight: FlightId, queue_by: Time) {
        self.claiming -= 1;
        self.followers.insert(flight, queue_by);
    }

    /// An owner lost its lease (fenced): it is no owner any more, so its end
    /// releases nothing. Returns whether it was an owner.
    pub(crate) fn disown(&mut self, flight: FlightId) -> bool {
        self.owners.remove(&flight)
    }

    /// A flight in `phase` ends: it is forgotten here. Returns whether it was
    /// an owner (its end is to be released).
    pub(crate) fn end(&mut self, flight: FlightId, phase: FlightPhase) -> bool {
        match phase {
            FlightPhase::Claiming => {
                self.claiming -= 1;
                false
            }
            FlightPhase::Following { .. } => {
                self.followers.remove(&flight);
                false
            }
            _ => self.owners.remove(&flight),
        }
    }

    /// Nothing held.
    pub(crate) fn is_empty(&self) -> bool {
        self.owners.is_empty() && self.followers.is_empty() && self.claiming == 0
    }

    /// The remote bookkeeping's invariants
    /// ([invariant 8](crate::contract#invariant-8)): the claiming count and the
    /// followers are exactly the flights in those phases; every owner is a live
    /// flight in a local phase; queued plus claiming flights stay within
    /// `capacity`; and with cluster mode off nothing is remote at all.
    pub(crate) fn check(
        &self,
        flights: &Flights,
        cluster: bool,
        queued: usize,
        capacity: usize,
    ) -> Result<(), String> {
        if !cluster && !self.is_empty() {
            return Err("remote flights with cluster mode off".into());
        }
        let mut claiming = 0;
        let mut following = 0;
        for (id, f) in flights.iter() {
            match f.phase {
                FlightPhase::Claiming => claiming += 1,
                FlightPhase::Following { .. } => {
                    following += 1;
                    if !self.followers.contains_key(&id) {
                        return Err(format!("{id} follows but is not listed as a follower"));
                    }
                }
                _ => {}
            }
            let remote = matches!(
                f.phase,
                FlightPhase::Claiming | FlightPhase::Following { .. }
            );
            if remote && self.owners.contains(&id) {
                return Err(format!("{id} is an owner in a remote phase"));
            }
        }
        if claiming != self.claiming {
            return Err(format!("claiming count {} != {claiming}", self.claiming));
        }
        if following != self.followers.len() {
            return Err("a listed follower is not following".into());
        }
        if let Some(id) = self.owners.iter().find(|id| flights.get(**id).is_none()) {
            return Err(format!("owner {id} is not a live flight"));
        }
        if queued + claiming > capacity {
            return Err(format!(
                "{queued} queued and {claiming} claiming flights exceed queue_capacity {capacity}"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Remote;
    use crate::flight::FlightPhase;
    use crate::flights::Flights;
    use crate::{FlightId, Key, RequestId, Time};

    const CAPACITY: usize = 3;

    /// Three flights: f0 claiming, f1 following (queue deadline 40 ms), f2 an
    /// owner streaming. Nothing queued.
    fn world() -> (Flights, Remote) {
        let mut flights = Flights::default();
        let mut remote = Remote::default();
        for n in 0..3u64 {
            let id = flights.create(Key::from(format!("k{n}").as_str()), Time::ZERO);
            let f = flights.get_mut(id).unwrap();
            f.members.insert(RequestId::from_raw(n));
            f.phase = FlightPhase::Claiming;
            assert_eq!(
                remote.claim(id),
                None,
                "a first claim has no queue deadline"
            );
        }
        let [_, f1, f2] = [0, 1, 2].map(FlightId::from_raw);
        remote.followed(f1, Time::from_millis(40));
        flights.get_mut(f1).unwrap().phase = FlightPhase::Following {
            ends_by: Time::from_millis(90),
        };
        remote.owned(f2);
        flights.get_mut(f2).unwrap().phase = FlightPhase::Streaming {
            cacheable: true,
            ends_by: Time::from_millis(90),
        };
        (flights, remote)
    }

    #[test]
    fn roles_move_through_claim_follow_reclaim_own_and_end() {
        let (flights, mut remote) = world();
        let [f0, f1, f2] = [0, 1, 2].map(FlightId::from_raw);
        assert_eq!(remote.check(&flights, true, 0, CAPACITY), Ok(()));
        assert_eq!((remote.claiming(), remote.following()), (1, 1));
        assert!(remote.is_owner(f2) && !remote.is_owner(f0) && !remote.is_owner(f1));
        // The follower's owner is lost: it claims again, back at its queue deadline.
        assert_eq!(remote.claim(f1), Some(Time::from_millis(40)));
        assert_eq!((remote.claiming(), remote.following()), (2, 0));
        remote.owned(f1);
        assert!(remote.is_owner(f1));
        assert!(
            remote.end(f1, FlightPhase::Queued),
            "an owner's end is released"
        );
        assert!(!remote.end(f0, FlightPhase::Claiming));
        assert!(remote.disown(f2), "fenced");
        assert!(!remote.disown(f2));
        assert!(
            !remote.end(f2, FlightPhase::Preparing),
            "a fenced owner releases nothing"
        );
        assert!(remote.is_empty());
    }

    #[test]
    fn check_fires_on_each_corruption() {
        let (flights, remote) = world();
        let [f0, f1, f2] = [0, 1, 2].map(FlightId::from_raw);
        let fails = |r: &Remote, f: &Flights, cluster, queued, needle: &str| {
            let err = r.check(f, cluster, queued, CAPACITY).unwrap_err();
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        };
        fails(&remote, &flights, false, 0, "cluster mode off");
        assert_eq!(
            Remote::default().check(&Flights::default(), false, 0, 1),
            Ok(())
        );
        let mut r = remote.clone();
        r.claiming = 2;
        fails(&r, &flights, true, 0, "claiming count 2 != 1");
        let mut r = remote.clone();
        r.followers.remove(&f1);
        fails(&r, &flights, true, 0, "not listed as a follower");
        let mut r = remote.clone();
        r.followers.insert(f2, Time::ZERO);
        fails(&r, &flights, true, 0, "listed follower is not following");
        let mut r = remote.clone();
        r.owners.insert(f0);
        fails(&r, &flights, true, 0, "owner in a remote phase");
        let mut r = remote.clone();
        r.owners.insert(FlightId::from_raw(9));
        fails(&r, &flights, true, 0, "not a live flight");
        fails(&remote, &flights, true, 3, "exceed queue_capacity");
        assert_eq!(remote.check(&flights, true, 2, CAPACITY), Ok(()));
    }

    #[test]
    fn every_field_counts_for_equality_and_hashing() {
        use crate::testing::assert_differs;
        let (_, base) = world();
        let variants: Vec<crate::testing::Change<Remote>> = vec![
            ("owners", |r| {
                r.owners.insert(FlightId::from_raw(7));
            }),
            ("followers", |r| {
                r.followers.insert(FlightId::from_raw(7), Time::ZERO);
            }),
            ("follower queue deadline", |r| {
                r.followers.insert(FlightId::from_raw(1), Time::ZERO);
            }),
            ("claiming", |r| r.claiming += 1),
        ];
        for (field, change) in variants {
            let mut other = base.clone();
            change(&mut other);
            assert_differs(&base, &other, field);
        }
    }
}
