//! Unit tests of cluster mode (rules 25-29 of the contract): each answer to a
//! claim, a follower's chunks, end, deadlines and lost owner, an owner's
//! publishes, release and fencing, stale inputs, and the queue capacity.

use core::time::Duration;

use bytes::Bytes;

use super::Machine;
use crate::{
    Action, Config, Failure, FlightId, Input, Item, Key, Outcome, Phase, Prepared, Readiness,
    Reply, RequestId, RequestState, Role, Route, StaleFlight, Time, Work,
};

const MS: Duration = Duration::from_millis(1);

fn config() -> Config {
    Config {
        queue_capacity: 2,
        max_concurrent_requests: 1,
        max_concurrent_streams: 1,
        queue_timeout: 40 * MS,
        stream_timeout: 100 * MS,
        idle_timeout: 30 * MS,
        cluster: true,
        ..Config::default()
    }
}

fn t(ms: u64) -> Time {
    Time::from_millis(ms)
}

fn chunk(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

fn actions(m: &mut Machine) -> Vec<Action> {
    let out = std::iter::from_fn(|| m.poll_action()).collect();
    m.check_invariants().expect("invariants");
    out
}

/// A cluster machine with one attached request for key "k", its flight claiming.
fn claiming() -> (Machine, RequestId, FlightId) {
    let mut m = Machine::new(config()).unwrap();
    let s = m.submit(t(1), Key::from("k")).unwrap();
    let Route::NewFlight(flight) = s.route else {
        panic!("a new flight")
    };
    m.attach(t(1), s.request).unwrap();
    assert_eq!(
        actions(&mut m),
        [Action::Claim {
            flight,
            key: Key::from("k")
        }]
    );
    assert_eq!(m.status(s.request).unwrap().state, RequestState::Claiming);
    (m, s.request, flight)
}

fn read_all(m: &mut Machine, r: RequestId) -> Vec<Item> {
    let mut items = Vec::new();
    m.read(r, &mut items).unwrap();
    items
}

#[test]
fn rule25_a_new_flight_claims_once_and_joiners_coalesce_on_it() {
    let (mut m, _, flight) = claiming();
    let joined = m.submit(t(2), Key::from("k")).unwrap();
    assert_eq!(joined.route, Route::Joined(flight));
    assert!(actions(&mut m).is_empty(), "a joiner claims nothing");
    let stats = m.stats();
    assert_eq!(
        (stats.claiming, stats.queued, stats.waiting_for_stream),
        (1, 0, 0)
    );
    assert_eq!((stats.totals.claims, stats.totals.coalesced), (1, 1));
    // Off: the same submit queues and prepares, and never claims.
    let mut local = Machine::new(Config {
        cluster: false,
        ..config()
    })
    .unwrap();
    local.submit(t(1), Key::from("k")).unwrap();
    assert!(matches!(
        actions(&mut local)[..],
        [Action::StartPreparation { .. }]
    ));
}

#[test]
fn rule26_an_owner_runs_locally_publishes_in_order_and_releases_last() {
    let (mut m, r, flight) = claiming();
    m.handle_claimed(t(2), flight, Role::Owner).unwrap();
    assert_eq!(
        actions(&mut m),
        [Action::StartPreparation {
            flight,
            key: Key::from("k")
        }]
    );
    m.handle_prepared(t(3), flight, Ok(Prepared::CACHEABLE))
        .unwrap();
    assert_eq!(actions(&mut m), [Action::StartStream { flight }]);
    assert_eq!(read_all(&mut m, r), []);
    m.handle_chunks(t(4), flight, [chunk("a"), chunk("b")])
        .unwrap();
    let published = Action::Publish {
        flight,
        chunks: vec![chunk("a"), chunk("b")],
    };
    assert_eq!(actions(&mut m), [published, Action::Wake { request: r }]);
    m.handle_chunk(t(5), flight, chunk("c")).unwrap();
    m.handle_upstream_end(t(6), flight, Ok(())).unwrap();
    let got = actions(&mut m);
    let n = got.len();
    assert_eq!(
        got[n - 3..],
        [
            Action::Publish {
                flight,
                chunks: vec![chunk("c")]
            },
            Action::Release {
                flight,
                outcome: Outcome::Completed,
                cacheable: true
            },
            Action::FlightEnded { flight }
        ]
    );
    // The owner's result is cached here as a local flight's.
    let hit = m.submit(t(7), Key::from("k")).unwrap();
    assert_eq!(hit.route, Route::Cached);
}

#[test]
fn rule26_an_uncacheable_or_cancelled_owner_releases_uncacheable() {
    let (mut m, _, flight) = claiming();
    m.handle_claimed(t(2), flight, Role::Owner).unwrap();
    m.handle_prepared(t(3), flight, Ok(Prepared::UNCACHEABLE))
        .unwrap();
    m.handle_upstream_end(t(4), flight, Ok(())).unwrap();
    assert!(actions(&mut m).contains(&Action::Release {
        flight,
        outcome: Outcome::Completed,
        cacheable: false
    }));
    let (mut m, r, flight) = claiming();
    m.handle_claimed(t(2), flight, Role::Owner).unwrap();
    let _ = actions(&mut m);
    m.cancel(t(3), r).unwrap();
    assert_eq!(
        actions(&mut m),
        [
            Action::Abort {
                flight,
                work: Work::Preparation
            },
            Action::Release {
                flight,
                outcome: Outcome::Cancelled,
                cacheable: false
            },
            Action::FlightEnded { flight }
        ],
        "the reader never read, so no wake is owed"
    );
}

#[test]
fn rule27_a_follower_takes_no_slot_reads_the_owners_log_and_ends_with_it() {
    let (mut m, r, flight) = claiming();
    m.handle_claimed(t(2), flight, Role::Follower).unwrap();
    assert!(actions(&mut m).is_empty(), "no preparation, no stream");
    assert_eq!(m.status(r).unwrap().state, RequestState::Following);
    // Another key still gets the (only) slots: the follower holds none.
    let other = m.submit(t(2), Key::from("o")).unwrap();
    let Route::NewFlight(of) = other.route else {
        panic!()
    };
    m.handle_claimed(t(2), of, Role::Owner).unwrap();
    assert!(matches!(
        actions(&mut m)[..],
        [Action::Claim { .. }, Action::StartPreparation { .. }]
    ));
    assert_eq!(m.stats().following, 1);
    m.handle_chunks(t(3), flight, [chunk("a")]).unwrap();
    assert!(actions(&mut m).is_empty(), "a follower publishes nothing");
    let late = m.submit(t(4), Key::from("k")).unwrap();
    m.handle_remote_end(t(5), flight, Outcome::Completed)
        .unwrap();
    assert_eq!(
        read_all(&mut m, r),
        [Item::Chunk(chunk("a")), Item::End(Outcome::Completed)]
    );
    m.attach(t(5), late.request).unwrap();
    assert_eq!(
        read_all(&mut m, late.request),
        [Item::Chunk(chunk("a")), Item::End(Outcome::Completed)],
        "a late joiner replays from the first chunk"
    );
    // Not cached here: the next submit claims again.
    let again = m.submit(t(6), Key::from("k")).unwrap();
    assert!(matches!(again.route, Route::NewFlight(_)));
    assert_eq!(m.stats().totals.followed, 1);
}

#[test]
fn rule27_a_follower_has_a_streams_deadlines_and_stops_following_when_left() {
    let (mut m, r, flight) = claiming();
    m.handle_claimed(t(2), flight, Role::Follower).unwrap();
    assert_eq!(m.poll_timeout(), Some(t(32)), "idle before the first chunk");
    m.handle_chunk(t(20), flight, chunk("a")).unwrap();
    assert_eq!(m.poll_timeout(), Some(t(50)), "idle moves with each chunk");
    m.handle_timeout(t(50));
    let abort = Action::Abort {
        flight,
        work: Work::Stream,
    };
    let got = actions(&mut m);
    assert_eq!(got.first(), Some(&abort));
    assert_eq!(
        m.status(r).unwrap().state,
        RequestState::Done(Outcome::TimedOut(Phase::Idle))
    );
    // The last member leaving stops the following too.
    let (mut m, r, flight) = claiming();
    m.handle_claimed(t(2), flight, Role::Follower).unwrap();
    m.detach(t(3), r).unwrap();
    assert_eq!(
        actions(&mut m),
        [
            Action::Abort {
                flight,
                work: Work::Stream
            },
            Action::FlightEnded { flight }
        ]
    );
}

#[test]
fn rule28_an_owner_lost_before_any_chunk_is_reclaimed_after_it_is_a_failure() {
    let (mut m, r, flight) = claiming();
    m.handle_claimed(t(5), flight, Role::Follower).unwrap();
    m.handle_owner_lost(t(10), flight).unwrap();
    assert_eq!(
        actions(&mut m),
        [Action::Claim {
            flight,
            key: Key::from("k")
        }]
    );
    assert_eq!(m.status(r).unwrap().state, RequestState::Claiming);
    assert_eq!(
        m.poll_timeout(),
        Some(t(41)),
        "back under its queue deadline"
    );
    // A remote end that is no result is an owner lost, too.
    m.handle_claimed(t(11), flight, Role::Follower).unwrap();
    m.handle_remote_end(t(12), flight, Outcome::Cancelled)
        .unwrap();
    assert!(matches!(actions(&mut m)[..], [Action::Claim { .. }]));
    // So is an owner that shut down: it gave no answer.
    m.handle_claimed(t(12), flight, Role::Follower).unwrap();
    let shut_down = Outcome::Failed(Failure::Shutdown);
    m.handle_remote_end(t(12), flight, shut_down).unwrap();
    assert!(matches!(actions(&mut m)[..], [Action::Claim { .. }]));
    m.handle_claimed(t(13), flight, Role::Follower).unwrap();
    m.handle_chunk(t(14), flight, chunk("a")).unwrap();
    m.handle_owner_lost(t(15), flight).unwrap();
    assert_eq!(
        read_all(&mut m, r),
        [
            Item::Chunk(chunk("a")),
            Item::End(Outcome::Failed(Failure::OwnerLost))
        ]
    );
    assert_eq!(m.stats().totals.claims, 4);
    // A remote failure is an answer: it ends the members.
    let (mut m, r, flight) = claiming();
    m.handle_claimed(t(2), flight, Role::Follower).unwrap();
    let failed = Outcome::Failed(Failure::Upstream("boom".into()));
    m.handle_remote_end(t(3), flight, failed.clone()).unwrap();
    assert_eq!(read_all(&mut m, r), [Item::End(failed)]);
}

#[test]
fn rule29_cached_completes_at_once_and_unavailable_fails_clearly() {
    let (mut m, r, flight) = claiming();
    let log = vec![chunk("x"), chunk("y")];
    m.handle_claimed(t(2), flight, Role::Cached(log)).unwrap();
    assert_eq!(
        read_all(&mut m, r),
        [
            Item::Chunk(chunk("x")),
            Item::Chunk(chunk("y")),
            Item::End(Outcome::Completed)
        ]
    );
    assert_eq!(m.stats().totals.remote_cache_hits, 1);
    let (mut m, r, flight) = claiming();
    let why = "redis: connection refused".to_owned();
    m.handle_claimed(t(2), flight, Role::Unavailable(why.clone()))
        .unwrap();
    assert_eq!(actions(&mut m), [Action::FlightEnded { flight }]);
    assert_eq!(
        read_all(&mut m, r),
        [Item::End(Outcome::Failed(Failure::Cluster(why)))]
    );
}

#[test]
fn rule26_a_fenced_owner_aborts_its_work_releases_nothing_and_frees_its_slot() {
    let (mut m, r, flight) = claiming();
    m.handle_claimed(t(2), flight, Role::Owner).unwrap();
    m.handle_prepared(t(3), flight, Ok(Prepared::CACHEABLE))
        .unwrap();
    m.handle_chunk(t(4), flight, chunk("a")).unwrap();
    let _ = actions(&mut m);
    m.handle_fenced(t(5), flight, "lease lost".into()).unwrap();
    assert_eq!(
        actions(&mut m),
        [
            Action::Abort {
                flight,
                work: Work::Stream
            },
            Action::FlightEnded { flight }
        ]
    );
    assert_eq!(
        read_all(&mut m, r),
        [
            Item::Chunk(chunk("a")),
            Item::End(Outcome::Failed(Failure::Cluster("lease lost".into())))
        ]
    );
    assert_eq!(m.stats().stream_slots_in_use, 0);
}

#[test]
fn rule16_cluster_inputs_in_the_wrong_phase_are_stale_and_change_nothing() {
    let (mut m, _, flight) = claiming();
    let stale = |m: &mut Machine, input: Input| {
        let before = m.clone();
        assert_eq!(
            m.handle(t(9), input.clone()),
            Reply::Flight(Err(StaleFlight)),
            "{input:?}"
        );
        assert_eq!(*m, before, "{input:?} changed the machine");
    };
    let remote_end = Input::RemoteEnded {
        flight,
        outcome: Outcome::Completed,
    };
    let owner_lost = Input::OwnerLost { flight };
    let fenced = Input::Fenced {
        flight,
        reason: "x".into(),
    };
    let chunk_in = Input::Chunk {
        flight,
        data: chunk("a"),
    };
    // Claiming: only a claim's answer applies.
    for input in [
        remote_end.clone(),
        owner_lost.clone(),
        fenced.clone(),
        chunk_in,
    ] {
        stale(&mut m, input);
    }
    m.handle_claimed(t(2), flight, Role::Follower).unwrap();
    let claimed = Input::Claimed {
        flight,
        role: Role::Owner,
    };
    stale(&mut m, claimed.clone());
    stale(&mut m, fenced.clone());
    m.handle_remote_end(t(3), flight, Outcome::Completed)
        .unwrap();
    for input in [claimed, remote_end, owner_lost, fenced] {
        stale(&mut m, input);
    }
    // Unknown flights too.
    let ghost = FlightId::from_raw(77);
    stale(
        &mut m,
        Input::Claimed {
            flight: ghost,
            role: Role::Owner,
        },
    );
}

#[test]
fn claiming_counts_against_the_queue_and_a_reclaim_needs_room() {
    let (mut m, _, flight) = claiming();
    m.submit(t(2), Key::from("b")).unwrap();
    assert!(
        m.submit(t(2), Key::from("c")).is_err(),
        "two claiming flights fill a queue of two"
    );
    m.handle_claimed(t(3), flight, Role::Follower).unwrap();
    let third = m.submit(t(3), Key::from("c")).unwrap();
    assert!(matches!(third.route, Route::NewFlight(_)));
    // The queue and the claims are full again: the follower cannot re-claim.
    m.handle_owner_lost(t(4), flight).unwrap();
    let _ = actions(&mut m);
    assert_eq!(
        m.stats().totals.failed,
        1,
        "the re-claim had no room: owner lost"
    );
}

#[test]
fn a_claim_unanswered_by_the_queue_deadline_times_out_in_the_queue() {
    let (mut m, r, flight) = claiming();
    assert_eq!(m.poll_timeout(), Some(t(41)));
    m.handle_timeout(t(41));
    assert_eq!(actions(&mut m), [Action::FlightEnded { flight }]);
    assert_eq!(
        m.status(r).unwrap().state,
        RequestState::Done(Outcome::TimedOut(Phase::Queue))
    );
    assert_eq!(
        m.handle_claimed(t(42), flight, Role::Owner),
        Err(StaleFlight)
    );
}

#[test]
fn cluster_inputs_and_actions_round_trip_through_serde_and_handle() {
    let inputs = [
        Input::Claimed {
            flight: FlightId::from_raw(1),
            role: Role::Cached(vec![chunk("a")]),
        },
        Input::RemoteEnded {
            flight: FlightId::from_raw(1),
            outcome: Outcome::Failed(Failure::OwnerLost),
        },
        Input::OwnerLost {
            flight: FlightId::from_raw(2),
        },
        Input::Fenced {
            flight: FlightId::from_raw(3),
            reason: "gone".into(),
        },
    ];
    for input in inputs {
        let bytes = postcard::to_allocvec(&input).unwrap();
        assert_eq!(postcard::from_bytes::<Input>(&bytes).unwrap(), input);
    }
    let release = Action::Release {
        flight: FlightId::from_raw(4),
        outcome: Outcome::Failed(Failure::Cluster("x".into())),
        cacheable: false,
    };
    let bytes = postcard::to_allocvec(&release).unwrap();
    assert_eq!(postcard::from_bytes::<Action>(&bytes).unwrap(), release);
    // `handle` dispatches each to its typed method.
    let (mut a, _, flight) = claiming();
    let mut b = a.clone();
    a.handle_claimed(t(2), flight, Role::Follower).unwrap();
    let reply = b.handle(
        t(2),
        Input::Claimed {
            flight,
            role: Role::Follower,
        },
    );
    assert_eq!((reply, &a), (Reply::Flight(Ok(())), &b));
    a.handle_owner_lost(t(3), flight).unwrap();
    b.handle(t(3), Input::OwnerLost { flight });
    assert_eq!(a, b);
    let mut items = Vec::new();
    assert_eq!(
        a.read(RequestId::from_raw(0), &mut items),
        Ok(Readiness::Pending)
    );
}
