//! Unit tests of the conductor: state equality and hashing over every field
//! (what the explorer relies on to recognise states), the order of expiries due
//! at the same instant, and the invariant check wired to every sub-state.

use core::time::Duration;

use bytes::Bytes;

use super::Machine;
use crate::testing::{assert_differs, assert_same};
use crate::{
    Action, Config, Item, Key, Outcome, Phase, Prepared, RequestId, RequestState, Time, Totals,
};

/// A step of any duration, to change a timeout by.
const MS: Duration = Duration::from_millis(1);

fn config() -> Config {
    Config {
        max_concurrent_requests: 1,
        max_concurrent_streams: 1,
        ..Config::default()
    }
}

/// A machine with something in every sub-state: a streaming flight with a
/// chunk and an attached reader, a queued flight, a cached result, an ended
/// record, and pending actions.
fn busy() -> Machine {
    let mut m = Machine::new(config()).unwrap();
    let t = Time::from_millis(1);
    let a = m.submit(t, Key::from("a")).unwrap().request;
    m.attach(t, a).unwrap();
    let fa = m.status(a).unwrap().flight.unwrap();
    m.handle_prepared(t, fa, Ok(Prepared::CACHEABLE)).unwrap();
    m.handle_chunk(t, fa, Bytes::from_static(b"x")).unwrap();
    m.handle_upstream_end(t, fa, Ok(())).unwrap(); // cached
    let b = m.submit(t, Key::from("b")).unwrap().request;
    m.attach(t, b).unwrap();
    let fb = m.status(b).unwrap().flight.unwrap();
    m.handle_prepared(t, fb, Ok(Prepared::CACHEABLE)).unwrap();
    m.handle_chunk(t, fb, Bytes::from_static(b"y")).unwrap();
    m.submit(t, Key::from("c")).unwrap(); // preparing
    m.submit(t, Key::from("d")).unwrap(); // queued
    m.submit(t, Key::from("a")).unwrap(); // a cache hit
    m.check_invariants().unwrap();
    m
}

#[test]
fn machines_differing_in_any_one_field_are_unequal_and_hash_apart() {
    let base = busy();
    assert_same(&base, &base.clone(), "a clone");
    let variants: Vec<crate::testing::Change<Machine>> = vec![
        ("config", |m| m.config.queue_capacity += 1),
        ("now", |m| m.now = Time::from_millis(2)),
        ("flights", |m| {
            let id = m.flights.ids().last().unwrap();
            m.flights.get_mut(id).unwrap().attached += 1;
        }),
        ("queue", |m| m.queue.push(crate::FlightId::from_raw(99))),
        ("slots", |m| m.slots.start_stream()),
        ("records", |m| {
            m.records.allocate();
        }),
        ("deadlines", |m| {
            m.deadlines
                .arm(&mut None, Time::MAX, crate::deadline::Timer::Cache(99));
        }),
        ("cache", |m| {
            let ending = m.cache.get(&Key::from("a")).unwrap().clone();
            let mut d = m.deadlines.clone();
            m.cache.insert(&mut d, 8, Key::from("z"), ending, Time::MAX);
        }),
        ("actions", |m| {
            m.actions.pop_back();
        }),
        ("totals", |m| m.totals.submitted += 1),
        ("remote", |m| {
            m.remote.claim(crate::FlightId::from_raw(99));
        }),
        ("shutting_down", |m| m.shutting_down = true),
    ];
    for (field, change) in variants {
        let mut other = base.clone();
        change(&mut other);
        assert_differs(&base, &other, field);
    }
}

#[test]
fn every_config_and_totals_field_counts() {
    let base = busy();
    let configs: Vec<crate::testing::Change<Config>> = vec![
        ("queue_capacity", |c| c.queue_capacity += 1),
        ("max_concurrent_requests", |c| {
            c.max_concurrent_requests += 1;
        }),
        ("max_concurrent_streams", |c| {
            c.max_concurrent_streams += 1;
        }),
        ("max_response_bytes", |c| c.max_response_bytes += 1),
        ("cache_capacity", |c| c.cache_capacity += 1),
        ("cache_ttl", |c| c.cache_ttl += Duration::from_millis(1)),
        ("queue_timeout", |c| c.queue_timeout += MS),
        ("preparation_timeout", |c| c.preparation_timeout += MS),
        ("stream_slot_timeout", |c| c.stream_slot_timeout += MS),
        ("stream_timeout", |c| c.stream_timeout += MS),
        ("idle_timeout", |c| c.idle_timeout += MS),
        ("attach_timeout", |c| c.attach_timeout += MS),
        ("cancelled_retention", |c| c.cancelled_retention += MS),
        ("finished_retention", |c| c.finished_retention += MS),
    ];
    for (field, change) in configs {
        let mut other = base.clone();
        change(&mut other.config);
        assert_differs(&base, &other, field);
    }
    let totals: Vec<crate::testing::Change<Totals>> = vec![
        ("submitted", |t| t.submitted += 1),
        ("coalesced", |t| t.coalesced += 1),
        ("cache_hits", |t| t.cache_hits += 1),
        ("flights", |t| t.flights += 1),
        ("preparations_started", |t| t.preparations_started += 1),
        ("streams_started", |t| t.streams_started += 1),
        ("completed", |t| t.completed += 1),
        ("cancelled", |t| t.cancelled += 1),
        ("failed", |t| t.failed += 1),
        ("timed_out", |t| t.timed_out += 1),
    ];
    for (field, change) in totals {
        let mut other = base.clone();
        change(&mut other.totals);
        assert_differs(&base, &other, field);
    }
}

#[test]
fn the_same_state_reached_by_different_paths_is_one_state() {
    // Attach then submit, or submit then attach: the same state either way.
    let t = Time::from_millis(1);
    let mut a = Machine::new(config()).unwrap();
    let mut b = a.clone();
    let r0 = a.submit(t, Key::from("k")).unwrap().request;
    let r1 = a.submit(t, Key::from("k")).unwrap().request;
    a.attach(t, r0).unwrap();
    b.submit(t, Key::from("k")).unwrap();
    b.attach(t, r0).unwrap();
    b.submit(t, Key::from("k")).unwrap();
    assert_eq!(r1, RequestId::from_raw(1));
    assert_same(&a, &b, "the same state by two paths");
}

#[test]
fn check_invariants_reports_each_sub_state() {
    let base = busy();
    let corruptions: Vec<crate::testing::Change<Machine>> = vec![
        ("has no members", |m| {
            let id = m.flights.ids().last().unwrap();
            let members: Vec<_> = m.flights.get(id).unwrap().members.iter().collect();
            for r in members {
                m.flights.get_mut(id).unwrap().members.remove(r);
            }
        }),
        ("queue over capacity", |m| m.config.queue_capacity = 0),
        ("stream slots", |m| m.slots.start_stream()),
        ("does not point back", |m| {
            let id = m.flights.ids().last().unwrap();
            m.flights
                .get_mut(id)
                .unwrap()
                .members
                .insert(RequestId::from_raw(0));
        }),
        ("cache entry", |m| {
            let mut d = m.deadlines.clone();
            let ending = m.cache.get(&Key::from("a")).unwrap().clone();
            m.cache.insert(&mut d, 8, Key::from("z"), ending, Time::MAX);
        }),
        ("second deadline", |m| {
            let id = m.flights.ids().next().unwrap();
            let timer = crate::deadline::Timer::Flight(id);
            m.deadlines.arm(&mut None, Time::MAX, timer);
        }),
        ("deadlines for", |m| {
            m.deadlines
                .arm(&mut None, Time::MAX, crate::deadline::Timer::Cache(99));
        }),
    ];
    for (needle, corrupt) in corruptions {
        let mut m = base.clone();
        corrupt(&mut m);
        let err = m.check_invariants().unwrap_err().0;
        assert!(err.contains(needle), "{err:?} should mention {needle:?}");
    }
}

/// The documented order ([`super::time`]): of a flight's deadline and a member's
/// attach deadline due at the same instant, the flight's is handled first, so
/// the member ends with the flight's phase.
#[test]
fn a_flight_deadline_is_handled_before_an_attach_deadline_due_with_it() {
    let same = Duration::from_millis(10);
    for (queued, phase) in [(true, Phase::Queue), (false, Phase::Preparation)] {
        let mut m = Machine::new(Config {
            queue_timeout: same,
            preparation_timeout: same,
            attach_timeout: same,
            ..config()
        })
        .unwrap();
        if queued {
            // Fill the one preparation slot so the next flight stays queued.
            let first = m.submit(Time::ZERO, Key::from("busy")).unwrap().request;
            m.attach(Time::ZERO, first).unwrap();
        }
        let r = m.submit(Time::ZERO, Key::from("k")).unwrap().request;
        let expected = if queued {
            RequestState::Queued
        } else {
            RequestState::Preparing
        };
        assert_eq!(m.status(r).unwrap().state, expected);
        while m.poll_action().is_some() {}
        let due = Time::ZERO + same;
        assert_eq!(m.poll_timeout(), Some(due));
        m.handle_timeout(due);
        assert_eq!(
            m.status(r).unwrap().state,
            RequestState::Done(Outcome::TimedOut(phase)),
            "the flight's {phase:?} deadline fires first, not the attach deadline"
        );
        m.check_invariants().unwrap();
    }
}

/// Two flights due at the same instant end in id order (older first).
#[test]
fn flights_due_together_end_oldest_first() {
    let mut m = Machine::new(Config {
        max_concurrent_requests: 2,
        ..config()
    })
    .unwrap();
    for key in ["a", "b"] {
        let r = m.submit(Time::ZERO, Key::from(key)).unwrap().request;
        m.attach(Time::ZERO, r).unwrap();
    }
    while m.poll_action().is_some() {}
    m.handle_timeout(Time::ZERO + m.config.preparation_timeout);
    let ended: Vec<_> = std::iter::from_fn(|| m.poll_action())
        .filter_map(|a| match a {
            Action::FlightEnded { flight } => Some(flight.raw()),
            _ => None,
        })
        .collect();
    assert_eq!(ended, [0, 1]);
}

/// Runs one uncacheable flight for `key` to completion with one attached reader
/// and returns the request; everything at `t`.
fn completed_and_attached(m: &mut Machine, t: Time, key: &str) -> RequestId {
    let r = m.submit(t, Key::from(key)).unwrap().request;
    m.attach(t, r).unwrap();
    let f = m.status(r).unwrap().flight.unwrap();
    m.handle_prepared(t, f, Ok(Prepared { cacheable: false }))
        .unwrap();
    m.handle_chunk(t, f, Bytes::from_static(b"x")).unwrap();
    m.handle_upstream_end(t, f, Ok(())).unwrap();
    while m.poll_action().is_some() {}
    r
}

/// Contract rule 21: a client that keeps its finished stream does not keep the
/// record. It is retained for `finished_retention` from the read of its end.
#[test]
fn a_record_whose_end_was_read_is_dropped_after_its_retention() {
    let mut m = Machine::new(config()).unwrap();
    let t = Time::from_millis(1);
    let r = completed_and_attached(&mut m, t, "k");
    // Ended but unread: the client still has something to read, no deadline.
    assert_eq!(m.poll_timeout(), None);
    let mut items = Vec::new();
    let later = Time::from_millis(50);
    m.handle_timeout(later); // the machine's time moves on
    m.read(r, &mut items).unwrap();
    assert_eq!(items.last(), Some(&Item::End(Outcome::Completed)));
    let until = later + m.config.finished_retention;
    assert_eq!(m.poll_timeout(), Some(until), "retention from the read");
    m.check_invariants().unwrap();
    m.handle_timeout(Time::from_nanos(until.as_nanos() - 1));
    assert_eq!(m.read(r, &mut items), Ok(crate::Readiness::Closed));
    m.handle_timeout(until);
    assert_eq!(m.status(r), None);
    assert_eq!(m.read(r, &mut items), Err(crate::RequestError::NotFound));
    assert_eq!(m.detach(until, r), Err(crate::RequestError::NotFound));
    m.check_invariants().unwrap();
    assert!(
        m.is_empty(),
        "nothing held though the client never detached"
    );
}

#[test]
fn a_cancelled_reader_is_retained_for_the_cancelled_retention() {
    let mut m = Machine::new(Config {
        cancelled_retention: Duration::from_secs(3),
        ..config()
    })
    .unwrap();
    let t = Time::from_millis(1);
    let r = m.submit(t, Key::from("k")).unwrap().request;
    m.attach(t, r).unwrap();
    m.cancel(t, r).unwrap();
    let mut items = Vec::new();
    m.read(r, &mut items).unwrap();
    assert_eq!(items, [Item::End(Outcome::Cancelled)]);
    assert_eq!(m.poll_timeout(), Some(t + Duration::from_secs(3)));
    // A detach before the retention passes still removes the record at once.
    m.detach(t, r).unwrap();
    assert_eq!(m.poll_timeout(), None, "its retention went with it");
    m.check_invariants().unwrap();
    while m.poll_action().is_some() {}
    assert!(m.is_empty());
}

#[test]
fn check_fires_on_a_finished_reader_without_retention() {
    let mut m = Machine::new(config()).unwrap();
    let t = Time::from_millis(1);
    let r = completed_and_attached(&mut m, t, "k");
    m.read(r, &mut Vec::new()).unwrap();
    m.check_invariants().unwrap();
    let at = m.records.get(r).unwrap().deadline.unwrap();
    m.deadlines.remove(at, crate::deadline::Timer::Request(r));
    m.records.get_mut(r).unwrap().deadline = None;
    let err = m.check_invariants().unwrap_err().0;
    assert!(
        err.contains("finished reading without a retention deadline"),
        "{err}"
    );
}
