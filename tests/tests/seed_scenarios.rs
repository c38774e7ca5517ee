//! The scenarios of the seed posts, on the pure core, with exact expectations.
//!
//! Each test drives [`Machine`] directly in virtual time and asserts the exact
//! actions every input produces (one `poll_action` drain per input), the exact
//! states, counts and queue positions, the exact items every reader reads, and
//! the exact time of every deadline (`poll_timeout`). The machine's invariants
//! are checked after every step by the shared driver
//! ([`flightdeck_tests::driver::Driver`]), which also checks that no action names a
//! flight after its `FlightEnded`.
//!
//! The seed posts (under `shared/seeds/`): "Superior Event-Driven" (000),
//! "Concurrent & Parallel" (001), "Implicit Decoupling" (002), "For The Greater
//! Good" (003), "A War Against Race Conditions" (004).

use std::time::Duration;

use flightdeck_core::{
    Action, Bytes, Config, Failure, FlightId, Item, Key, Outcome, Phase, Prepared, Readiness,
    RequestError, RequestId, RequestState, Route, StaleFlight, Time, Work,
};
use flightdeck_tests::driver::Driver;

fn f(n: u64) -> FlightId {
    FlightId::from_raw(n)
}

fn r(n: u64) -> RequestId {
    RequestId::from_raw(n)
}

fn ms(n: u64) -> Time {
    Time::from_millis(n)
}

fn chunk(s: &'static str) -> Item {
    Item::Chunk(Bytes::from_static(s.as_bytes()))
}

fn end(outcome: Outcome) -> Item {
    Item::End(outcome)
}

fn start_prep(flight: FlightId, key: &str) -> Action {
    Action::StartPreparation {
        flight,
        key: Key::from(key.to_owned()),
    }
}

fn start_stream(flight: FlightId) -> Action {
    Action::StartStream { flight }
}

fn abort(flight: FlightId, work: Work) -> Action {
    Action::Abort { flight, work }
}

fn ended(flight: FlightId) -> Action {
    Action::FlightEnded { flight }
}

fn wake(request: RequestId) -> Action {
    Action::Wake { request }
}

/// Every timeout 1000 s, so that only the ones a test shortens can fire.
fn slow() -> Config {
    let long = Duration::from_secs(1000);
    Config {
        cache_ttl: long,
        queue_timeout: long,
        preparation_timeout: long,
        stream_slot_timeout: long,
        stream_timeout: long,
        idle_timeout: long,
        attach_timeout: long,
        cancelled_retention: long,
        finished_retention: long,
        ..Config::default()
    }
}

/// (queued, preparing, waiting for a stream slot, streaming).
fn phases(rig: &Driver) -> (usize, usize, usize, usize) {
    let s = rig.stats();
    (s.queued, s.preparing, s.waiting_for_stream, s.streaming)
}

// ----- Implicit Decoupling --------------------------------------------------

/// Contract rules 3, 4, 5, 6, 8 (seed 002 "Implicit Decoupling"): 100 distinct requests,
/// limits 10/5, instant preparation. Preparation never waits for a stream slot:
/// all 100 get prepared while exactly 5 stream and the other 95 wait, FIFO, and
/// each finished stream hands its slot to the next waiter in the same step.
#[test]
fn seed002_hundred_requests_prepare_while_five_stream() {
    let mut rig = Driver::new(Config {
        max_concurrent_requests: 10,
        max_concurrent_streams: 5,
        ..Config::default()
    });
    let key = |i: u64| format!("q{i}");

    // 100 submits at t=0: the first 10 start preparing at once, 90 queue FIFO.
    for i in 0..100 {
        let s = rig.submit(key(i));
        assert_eq!(s.request, r(i));
        assert_eq!(s.route, Route::NewFlight(f(i)));
        let expected = if i < 10 {
            vec![start_prep(f(i), &key(i))]
        } else {
            vec![]
        };
        assert_eq!(rig.take(), expected, "submit {i}");
    }
    assert_eq!(phases(&rig), (90, 10, 0, 0));
    for i in 0..100 {
        if i < 10 {
            assert_eq!(rig.state(r(i)), Some(RequestState::Preparing));
            assert_eq!(rig.position(r(i)), None);
        } else {
            assert_eq!(rig.state(r(i)), Some(RequestState::Queued));
            assert_eq!(rig.position(r(i)), Some(usize::try_from(i - 10).unwrap()));
        }
    }
    for i in 0..100 {
        rig.try_attach(r(i)).unwrap();
        assert_eq!(rig.take(), vec![], "attach {i}");
    }

    // Preparations finish one by one, in order, instantly. Each frees its slot
    // for the next queued flight in the same step; only the first 5 stream.
    for i in 0..100u64 {
        rig.try_prepared(f(i), Ok(Prepared::CACHEABLE)).unwrap();
        let mut expected = Vec::new();
        if i + 10 < 100 {
            expected.push(start_prep(f(i + 10), &key(i + 10)));
        }
        if i < 5 {
            expected.push(start_stream(f(i)));
        }
        assert_eq!(rig.take(), expected, "prepared {i}");
        let done = usize::try_from(i + 1).unwrap();
        let started = (done + 10).min(100);
        let streaming = done.min(5);
        assert_eq!(
            phases(&rig),
            (100 - started, started - done, done - streaming, streaming),
            "after {done} preparations"
        );
        match done {
            5 => assert_eq!(phases(&rig), (85, 10, 0, 5)),
            50 => {
                // Half prepared: preparation runs at full capacity (10) while
                // the 5 streams are busy and 45 prepared flights wait.
                assert_eq!(phases(&rig), (40, 10, 45, 5));
                assert_eq!(rig.position(r(60)), Some(0));
                assert_eq!(rig.position(r(99)), Some(39));
                assert_eq!(rig.state(r(4)), Some(RequestState::Streaming));
                assert_eq!(rig.state(r(5)), Some(RequestState::WaitingForStream));
                assert_eq!(rig.state(r(59)), Some(RequestState::Preparing));
            }
            _ => {}
        }
    }
    // All 100 prepared; not one stream finished yet.
    assert_eq!(phases(&rig), (0, 0, 95, 5));
    let s = rig.stats();
    assert_eq!(s.totals.preparations_started, 100);
    assert_eq!(s.totals.streams_started, 5);
    assert_eq!(s.stream_slots_in_use, 5);
    assert_eq!(s.preparation_slots_in_use, 0);

    // Streams finish in order; each slot goes to the next waiter, FIFO, in the
    // same step (contract rule 8).
    for j in 0..100u64 {
        rig.try_chunk(f(j), format!("answer {j}")).unwrap();
        assert_eq!(rig.take(), vec![]);
        rig.try_end(f(j), Ok(())).unwrap();
        let mut expected = vec![ended(f(j))];
        if j + 5 < 100 {
            expected.push(start_stream(f(j + 5)));
        }
        assert_eq!(rig.take(), expected, "stream {j} ended");
        let (ready, items) = rig.read_with_readiness(r(j));
        assert_eq!(ready, Readiness::Ready);
        assert_eq!(
            items,
            vec![
                Item::Chunk(Bytes::from(format!("answer {j}"))),
                end(Outcome::Completed)
            ]
        );
        rig.try_detach(r(j)).unwrap();
        assert_eq!(rig.take(), vec![]);
        let left = usize::try_from(99 - j).unwrap();
        assert_eq!(phases(&rig), (0, 0, left.saturating_sub(5), left.min(5)));
    }
    let s = rig.stats();
    assert_eq!(s.totals.streams_started, 100);
    assert_eq!(s.totals.completed, 100);
    assert_eq!(s.cache_entries, 100);
    // Contract rule 21: once the cache entries expire (cache_ttl after t=0), nothing is left.
    assert_eq!(rig.machine.poll_timeout(), Some(ms(600_000)));
    rig.at(600_000).timeout();
    assert!(rig.machine.is_empty(), "{:?}", rig.stats());
}

// ----- Concurrent & Parallel: the thundering herd ---------------------------

/// Contract rules 2, 7, 8, 19, 24 (seed 001 "Concurrent & Parallel", the thundering
/// herd): ten identical requests make one flight, one preparation and exactly
/// one upstream stream; a late joiner replays from the first chunk; every
/// member reads every chunk once, in order, then one `End(Completed)`; the
/// next identical request is a cache hit.
#[test]
fn seed001_thundering_herd_makes_one_upstream_stream() {
    let mut rig = Driver::new(Config::default());
    let s = rig.submit("same");
    assert_eq!(s.route, Route::NewFlight(f(0)));
    assert_eq!(rig.take(), vec![start_prep(f(0), "same")]);
    for i in 1..10 {
        let s = rig.submit("same");
        assert_eq!(s.request, r(i));
        assert_eq!(s.route, Route::Joined(f(0)));
        assert_eq!(rig.take(), vec![], "a joiner starts nothing");
        assert_eq!(rig.state(r(i)), Some(RequestState::Preparing));
    }
    // Contract rule 2: joiners take no queue place and no preparation slot.
    assert_eq!(phases(&rig), (0, 1, 0, 0));
    assert_eq!(rig.stats().totals.coalesced, 9);
    for i in 0..10 {
        rig.try_attach(r(i)).unwrap();
    }
    // Five members read before anything exists: they park.
    for i in 0..5 {
        assert_eq!(rig.read_with_readiness(r(i)), (Readiness::Pending, vec![]));
    }

    rig.at(5).prepared(f(0));
    assert_eq!(rig.take(), vec![start_stream(f(0))]);
    rig.at(6).chunk(f(0), "The ");
    assert_eq!(
        rig.take(),
        (0..5).map(|i| wake(r(i))).collect::<Vec<_>>(),
        "every parked reader is woken once"
    );
    assert_eq!(
        rig.read_with_readiness(r(0)),
        (Readiness::Ready, vec![chunk("The ")])
    );
    rig.at(7).chunk(f(0), "quick ");
    // Read-and-park: r0's read parked it again; the others were woken and have
    // not read since.
    assert_eq!(rig.take(), vec![wake(r(0))], "only r0 is parked");

    // A late joiner replays from the first chunk.
    rig.at(8);
    let late = rig.submit("same");
    assert_eq!(late.request, r(10));
    assert_eq!(late.route, Route::Joined(f(0)));
    assert_eq!(rig.state(r(10)), Some(RequestState::Streaming));
    rig.try_attach(r(10)).unwrap();
    assert_eq!(
        rig.read_with_readiness(r(10)),
        (Readiness::Ready, vec![chunk("The "), chunk("quick ")])
    );
    rig.at(9).chunk(f(0), "fox");
    assert_eq!(
        rig.take(),
        vec![wake(r(10))],
        "the late joiner's read parked it"
    );
    assert_eq!(
        rig.read_with_readiness(r(3)),
        (
            Readiness::Ready,
            vec![chunk("The "), chunk("quick "), chunk("fox")]
        )
    );
    assert_eq!(rig.read_with_readiness(r(3)), (Readiness::Pending, vec![]));

    rig.at(10).end(f(0));
    assert_eq!(rig.take(), vec![wake(r(3)), ended(f(0))]);

    let all = vec![
        chunk("The "),
        chunk("quick "),
        chunk("fox"),
        end(Outcome::Completed),
    ];
    for i in 0..11 {
        // One read returns the rest of the log and the end, the next is closed.
        let (ready, rest) = rig.read_with_readiness(r(i));
        assert_eq!(ready, Readiness::Ready);
        assert_eq!(rest.last(), Some(&end(Outcome::Completed)));
        assert_eq!(rig.read_with_readiness(r(i)), (Readiness::Closed, vec![]));
        // Across the whole run: every chunk once, in order, then one end.
        assert_eq!(rig.reads(r(i)), all, "request {i}");
        assert_eq!(
            rig.state(r(i)),
            Some(RequestState::Done(Outcome::Completed))
        );
    }
    let t = rig.stats().totals;
    assert_eq!(
        (t.flights, t.preparations_started, t.streams_started),
        (1, 1, 1)
    );
    assert_eq!((t.coalesced, t.completed), (10, 11));

    // The next identical request is served from the cache: no new stream.
    rig.at(11);
    let hit = rig.submit("same");
    assert_eq!(hit.route, Route::Cached);
    assert_eq!(rig.take(), vec![]);
    rig.try_attach(hit.request).unwrap();
    assert_eq!(
        rig.read_with_readiness(hit.request),
        (Readiness::Ready, all.clone())
    );
    let t = rig.stats().totals;
    assert_eq!((t.streams_started, t.cache_hits), (1, 1));
}

// ----- A War Against Race Conditions ----------------------------------------

/// Contract rules 9, 10, 13 (seed 004 "A War Against Race Conditions" problem #2, the
/// pre-emptive cleanup; seed 003): cancel a request nobody reads yet, then
/// attach: the stream yields `End(Cancelled)`, never "not found". Cancelling
/// again is idempotent. A cancelled queued flight starts no work.
#[test]
fn seed004_cancel_then_stream_reads_cancelled_not_not_found() {
    let mut rig = Driver::new(Config {
        max_concurrent_requests: 1,
        ..Config::default()
    });
    let a = rig.submit("a").request;
    assert_eq!(rig.take(), vec![start_prep(f(0), "a")]);
    let b = rig.submit("b").request;
    assert_eq!(rig.take(), vec![]);
    assert_eq!(rig.position(b), Some(0));

    // The queued one first (contract rule 10): it leaves the queue, no work ever starts.
    rig.at(4).cancel(b);
    assert_eq!(rig.take(), vec![ended(f(1))]);
    assert_eq!(phases(&rig), (0, 1, 0, 0));
    // The preparing one: aborted in the same step.
    rig.at(5).cancel(a);
    assert_eq!(
        rig.take(),
        vec![abort(f(0), Work::Preparation), ended(f(0))]
    );
    assert_eq!(rig.state(a), Some(RequestState::Cancelled));
    assert_eq!(rig.state(b), Some(RequestState::Cancelled));
    // Contract rule 9: idempotent, still nothing to do.
    assert_eq!(rig.try_cancel(a), Ok(()));
    assert_eq!(rig.try_cancel(b), Ok(()));
    assert_eq!(rig.take(), vec![]);
    assert_eq!(rig.stats().totals.preparations_started, 1);

    // The records stay for cancelled_retention (30 s by default).
    assert_eq!(rig.machine.poll_timeout(), Some(ms(30_004)));
    rig.at(30_003).timeout();
    assert_eq!(rig.take(), vec![]);
    for req in [a, b] {
        assert_eq!(
            rig.try_attach(req),
            Ok(()),
            "never NotFound within retention"
        );
        assert_eq!(
            rig.read_with_readiness(req),
            (Readiness::Ready, vec![end(Outcome::Cancelled)])
        );
        assert_eq!(rig.read_with_readiness(req), (Readiness::Closed, vec![]));
        rig.try_detach(req).unwrap();
        assert_eq!(rig.state(req), None);
    }
    assert_eq!(rig.machine.poll_timeout(), None);
    assert!(rig.machine.is_empty(), "{:?}", rig.stats());
}

/// Contract rules 14, 19 (seed 004 problem #3, the muted messenger; seed 003): a client
/// reading mid-stream cancels; it is woken and reads `End(Cancelled)` as its
/// last item, after the chunks it already read. Guaranteed, not a last gasp.
#[test]
fn seed004_cancel_mid_stream_ends_with_cancelled() {
    let mut rig = Driver::new(Config::default());
    let a = rig.submit("k").request;
    rig.try_attach(a).unwrap();
    assert_eq!(rig.take(), vec![start_prep(f(0), "k")]);
    rig.at(1).prepared(f(0));
    assert_eq!(rig.take(), vec![start_stream(f(0))]);
    rig.at(2).chunk(f(0), "one ");
    assert_eq!(rig.take(), vec![]);
    assert_eq!(
        rig.read_with_readiness(a),
        (Readiness::Ready, vec![chunk("one ")])
    );
    assert_eq!(rig.read_with_readiness(a), (Readiness::Pending, vec![]));
    rig.at(3).chunk(f(0), "two ");
    assert_eq!(rig.take(), vec![wake(a)]);
    assert_eq!(
        rig.read_with_readiness(a),
        (Readiness::Ready, vec![chunk("two ")])
    );
    assert_eq!(rig.read_with_readiness(a), (Readiness::Pending, vec![]));

    // Cancel while the reader waits: woken, stream aborted, flight over, all
    // in this one step.
    rig.at(4).cancel(a);
    assert_eq!(
        rig.take(),
        vec![wake(a), abort(f(0), Work::Stream), ended(f(0))]
    );
    assert_eq!(rig.state(a), Some(RequestState::Cancelled));
    assert_eq!(
        rig.read_with_readiness(a),
        (Readiness::Ready, vec![end(Outcome::Cancelled)]),
        "the last item is the cancel confirmation"
    );
    assert_eq!(rig.read_with_readiness(a), (Readiness::Closed, vec![]));
    let s = rig.stats();
    assert_eq!((s.streaming, s.stream_slots_in_use), (0, 0));
    assert_eq!(s.cache_entries, 0, "a cancelled stream is not cached");
    rig.try_detach(a).unwrap();
    assert!(rig.machine.is_empty(), "{:?}", rig.stats());
}

/// Contract rules 11, 7, 8 (seed 001 "Concurrent & Parallel": the leader cancels, the
/// broadcast goes on for the followers; no immortal leader is needed): the
/// first member cancels while the others read; it reads `End(Cancelled)`, the
/// upstream is not aborted and the others read on to `End(Completed)`.
#[test]
fn seed001_first_member_cancels_others_read_on() {
    let mut rig = Driver::new(Config::default());
    let first = rig.submit("k").request;
    assert_eq!(rig.take(), vec![start_prep(f(0), "k")]);
    let second = rig.submit("k").request;
    let third = rig.submit("k").request;
    for req in [first, second, third] {
        rig.try_attach(req).unwrap();
    }
    rig.at(1).prepared(f(0));
    assert_eq!(rig.take(), vec![start_stream(f(0))]);
    rig.at(2).chunk(f(0), "a");
    for req in [first, second, third] {
        assert_eq!(
            rig.read_with_readiness(req),
            (Readiness::Ready, vec![chunk("a")])
        );
    }
    assert_eq!(
        rig.read_with_readiness(second),
        (Readiness::Pending, vec![])
    );

    rig.at(3).cancel(first);
    // Its read parked it, so the cancel wakes it to read the cancellation.
    assert_eq!(rig.take(), vec![wake(first)], "no abort: others still wait");
    assert_eq!(rig.state(first), Some(RequestState::Cancelled));
    assert_eq!(rig.state(second), Some(RequestState::Streaming));
    assert_eq!(phases(&rig), (0, 0, 0, 1));
    assert_eq!(
        rig.read_with_readiness(first),
        (Readiness::Ready, vec![end(Outcome::Cancelled)])
    );

    rig.at(4).chunk(f(0), "b");
    assert_eq!(rig.take(), vec![wake(second), wake(third)]);
    rig.at(5).chunk(f(0), "c");
    assert_eq!(rig.take(), vec![]);
    rig.at(6).end(f(0));
    assert_eq!(rig.take(), vec![ended(f(0))]);
    for req in [second, third] {
        assert_eq!(
            rig.read_with_readiness(req),
            (
                Readiness::Ready,
                vec![chunk("b"), chunk("c"), end(Outcome::Completed)]
            )
        );
        assert_eq!(rig.state(req), Some(RequestState::Done(Outcome::Completed)));
    }
    assert_eq!(rig.read_with_readiness(first), (Readiness::Closed, vec![]));
    let s = rig.stats();
    assert_eq!(
        (
            s.totals.streams_started,
            s.totals.cancelled,
            s.totals.completed
        ),
        (1, 1, 2)
    );
    assert_eq!(s.cache_entries, 1, "the completed answer is cached");
}

// ----- For The Greater Good: no zombie slots --------------------------------

/// Contract rules 12, 15, 5, 8 (seed 003 "For The Greater Good", the zombie holding a
/// semaphore slot; seed 004 problem #1): when the last member leaves, the work
/// is aborted and its slot goes to the next waiter in the same step: one
/// `poll_action` drain holds the `Abort`, the `FlightEnded` and the next
/// flight's `StartStream` (or `StartPreparation`).
#[test]
fn seed003_last_member_leaving_frees_the_slot_in_the_same_step() {
    let mut rig = Driver::new(Config {
        max_concurrent_requests: 1,
        max_concurrent_streams: 1,
        ..Config::default()
    });
    let a = rig.submit("a").request;
    assert_eq!(rig.take(), vec![start_prep(f(0), "a")]);
    let b = rig.submit("b").request;
    assert_eq!(rig.take(), vec![]);
    rig.try_attach(a).unwrap();
    rig.try_attach(b).unwrap();
    rig.at(1).prepared(f(0));
    assert_eq!(rig.take(), vec![start_prep(f(1), "b"), start_stream(f(0))]);
    rig.at(2).prepared(f(1));
    assert_eq!(rig.take(), vec![], "no stream slot free");
    assert_eq!(rig.state(b), Some(RequestState::WaitingForStream));
    rig.at(3).chunk(f(0), "x");
    assert_eq!(rig.take(), vec![]);

    // The stream slot: cancel the only member of the streaming flight.
    rig.at(4).cancel(a);
    assert_eq!(
        rig.take(),
        vec![abort(f(0), Work::Stream), ended(f(0)), start_stream(f(1))]
    );
    assert_eq!(rig.state(b), Some(RequestState::Streaming));
    assert_eq!(phases(&rig), (0, 0, 0, 1));

    // The preparation slot, by dropping the stream (contract rule 15): the record goes too.
    let c = rig.at(5).submit("c").request;
    assert_eq!(rig.take(), vec![start_prep(f(2), "c")]);
    let d = rig.submit("d").request;
    assert_eq!(rig.take(), vec![]);
    rig.try_attach(c).unwrap();
    rig.try_attach(d).unwrap();
    rig.at(6).detach(c);
    assert_eq!(
        rig.take(),
        vec![
            abort(f(2), Work::Preparation),
            ended(f(2)),
            start_prep(f(3), "d")
        ]
    );
    assert_eq!(rig.state(c), None);
    assert_eq!(rig.state(d), Some(RequestState::Preparing));
    let s = rig.stats();
    assert_eq!((s.preparation_slots_in_use, s.stream_slots_in_use), (1, 1));
}

/// Contract rule 16 (seed 004, a worker reporting after its request was cleaned up):
/// results from aborted work are refused and change nothing, even after a new
/// flight started; they never reach the new flight's reader.
#[test]
fn seed004_late_completions_after_abort_are_ignored() {
    let mut rig = Driver::new(Config {
        max_concurrent_requests: 1,
        max_concurrent_streams: 1,
        ..Config::default()
    });
    let a = rig.submit("a").request;
    rig.try_attach(a).unwrap();
    assert_eq!(rig.take(), vec![start_prep(f(0), "a")]);
    rig.at(1).prepared(f(0));
    assert_eq!(rig.take(), vec![start_stream(f(0))]);
    rig.at(2).cancel(a);
    assert_eq!(rig.take(), vec![abort(f(0), Work::Stream), ended(f(0))]);

    let b = rig.at(3).submit("b");
    assert_eq!(
        b.route,
        Route::NewFlight(f(1)),
        "flight ids are never reused"
    );
    rig.try_attach(b.request).unwrap();
    assert_eq!(rig.take(), vec![start_prep(f(1), "b")]);

    // A flight cancelled while still queued.
    let c = rig.submit("c").request;
    assert_eq!(rig.take(), vec![]);
    rig.at(4).cancel(c);
    assert_eq!(rig.take(), vec![ended(f(2))]);

    let before = rig.machine.clone();
    assert_eq!(
        rig.at(5).try_prepared(f(0), Ok(Prepared::CACHEABLE)),
        Err(StaleFlight)
    );
    assert_eq!(rig.try_chunk(f(0), "late"), Err(StaleFlight));
    assert_eq!(rig.try_end(f(0), Ok(())), Err(StaleFlight));
    assert_eq!(
        rig.try_prepared(f(2), Ok(Prepared::CACHEABLE)),
        Err(StaleFlight)
    );
    assert_eq!(
        rig.machine
            .handle_prepared(rig.now, f(0), Err(Failure::Preparation("late".into()))),
        Err(StaleFlight)
    );
    assert_eq!(rig.take(), vec![]);
    assert_eq!(rig.machine, before, "late completions change nothing");

    rig.at(6).prepared(f(1));
    assert_eq!(rig.take(), vec![start_stream(f(1))]);
    assert_eq!(rig.try_chunk(f(0), "late"), Err(StaleFlight));
    assert_eq!(
        rig.read_with_readiness(b.request),
        (Readiness::Pending, vec![])
    );
    rig.at(7).chunk(f(1), "mine");
    assert_eq!(rig.take(), vec![wake(b.request)]);
    assert_eq!(
        rig.read_with_readiness(b.request),
        (Readiness::Ready, vec![chunk("mine")])
    );
}

// ----- Deadlines: the janitor, done right (seeds 000, 001) ------------------

/// Contract rules 17, 18 (seed 001's janitor "timed out in queue"; seed 000 "Superior
/// Event-Driven": no polling): the queue deadline fires exactly
/// `queue_timeout` after the submit, the flight leaves the queue and no work
/// ever starts for it.
#[test]
fn timeout_queue() {
    let mut rig = Driver::new(Config {
        max_concurrent_requests: 1,
        queue_timeout: Duration::from_millis(40),
        ..slow()
    });
    let a = rig.submit("a").request;
    rig.try_attach(a).unwrap();
    assert_eq!(rig.take(), vec![start_prep(f(0), "a")]);
    let b = rig.at(10).submit("b").request;
    rig.try_attach(b).unwrap();
    assert_eq!(rig.take(), vec![]);
    assert_eq!(rig.machine.poll_timeout(), Some(ms(50)));
    rig.at(49).timeout();
    assert_eq!(rig.take(), vec![]);
    assert_eq!(rig.state(b), Some(RequestState::Queued));
    assert_eq!(rig.position(b), Some(0));

    rig.at(50).timeout();
    assert_eq!(rig.take(), vec![ended(f(1))]);
    assert_eq!(
        rig.state(b),
        Some(RequestState::Done(Outcome::TimedOut(Phase::Queue)))
    );
    assert_eq!(
        rig.read_with_readiness(b),
        (Readiness::Ready, vec![end(Outcome::TimedOut(Phase::Queue))])
    );
    assert_eq!(rig.state(a), Some(RequestState::Preparing));
    assert_eq!(phases(&rig), (0, 1, 0, 0));
    let t = rig.stats().totals;
    assert_eq!((t.preparations_started, t.timed_out), (1, 1));
    // Next: a's preparation deadline, 1000 s after t=0.
    assert_eq!(rig.machine.poll_timeout(), Some(ms(1_000_000)));
}

/// Contract rules 17, 5 (seed 001's janitor "timed out during processing"): the
/// preparation deadline fires exactly `preparation_timeout` after the
/// preparation started; it is aborted and its slot goes to the queued flight
/// in the same step.
#[test]
fn timeout_preparation() {
    let mut rig = Driver::new(Config {
        max_concurrent_requests: 1,
        preparation_timeout: Duration::from_millis(30),
        ..slow()
    });
    let a = rig.at(5).submit("a").request;
    rig.try_attach(a).unwrap();
    assert_eq!(rig.take(), vec![start_prep(f(0), "a")]);
    let b = rig.at(6).submit("b").request;
    rig.try_attach(b).unwrap();
    assert_eq!(rig.machine.poll_timeout(), Some(ms(35)));
    rig.at(34).timeout();
    assert_eq!(rig.take(), vec![]);

    rig.at(35).timeout();
    assert_eq!(
        rig.take(),
        vec![
            abort(f(0), Work::Preparation),
            ended(f(0)),
            start_prep(f(1), "b")
        ]
    );
    assert_eq!(
        rig.read_with_readiness(a),
        (
            Readiness::Ready,
            vec![end(Outcome::TimedOut(Phase::Preparation))]
        )
    );
    assert_eq!(rig.state(b), Some(RequestState::Preparing));
    // b's preparation started at 35: its deadline is 65.
    assert_eq!(rig.machine.poll_timeout(), Some(ms(65)));
    assert_eq!(
        rig.try_prepared(f(0), Ok(Prepared::CACHEABLE)),
        Err(StaleFlight)
    );
}

/// Contract rules 17, 6: a prepared flight waits for a stream slot at most
/// `stream_slot_timeout`, counted from the end of its preparation; nothing
/// ever ran for it, so nothing is aborted.
#[test]
fn timeout_stream_slot() {
    let mut rig = Driver::new(Config {
        max_concurrent_requests: 2,
        max_concurrent_streams: 1,
        stream_slot_timeout: Duration::from_millis(50),
        ..slow()
    });
    let a = rig.submit("a").request;
    let b = rig.submit("b").request;
    rig.try_attach(a).unwrap();
    rig.try_attach(b).unwrap();
    assert_eq!(
        rig.take(),
        vec![start_prep(f(0), "a"), start_prep(f(1), "b")]
    );
    rig.at(1).prepared(f(0));
    assert_eq!(rig.take(), vec![start_stream(f(0))]);
    rig.at(2).prepared(f(1));
    assert_eq!(rig.take(), vec![]);
    assert_eq!(rig.state(b), Some(RequestState::WaitingForStream));
    assert_eq!(rig.machine.poll_timeout(), Some(ms(52)));
    rig.at(51).timeout();
    assert_eq!(rig.take(), vec![]);

    rig.at(52).timeout();
    assert_eq!(rig.take(), vec![ended(f(1))]);
    assert_eq!(
        rig.read_with_readiness(b),
        (
            Readiness::Ready,
            vec![end(Outcome::TimedOut(Phase::StreamSlot))]
        )
    );
    assert_eq!(rig.state(a), Some(RequestState::Streaming));
    assert_eq!(rig.stats().totals.streams_started, 1);
}

/// Contract rule 17: the whole stream may last `stream_timeout` from its start, however
/// steadily chunks arrive (each chunk re-arms the idle deadline, capped by the
/// total one). The reader keeps its chunks, then reads the timeout.
#[test]
fn timeout_stream_total() {
    let mut rig = Driver::new(Config {
        stream_timeout: Duration::from_millis(100),
        idle_timeout: Duration::from_millis(35),
        ..slow()
    });
    let a = rig.submit("a").request;
    rig.try_attach(a).unwrap();
    assert_eq!(rig.take(), vec![start_prep(f(0), "a")]);
    rig.at(10).prepared(f(0));
    assert_eq!(rig.take(), vec![start_stream(f(0))]);
    assert_eq!(
        rig.machine.poll_timeout(),
        Some(ms(45)),
        "idle, before the first chunk"
    );
    for (at, data, next) in [(40, "x", 75), (70, "y", 105), (100, "z", 110)] {
        rig.at(at).chunk(f(0), data);
        assert_eq!(
            rig.machine.poll_timeout(),
            Some(ms(next)),
            "after the chunk at {at}"
        );
    }
    rig.at(109).timeout();
    assert_eq!(rig.take(), vec![]);

    rig.at(110).timeout();
    assert_eq!(rig.take(), vec![abort(f(0), Work::Stream), ended(f(0))]);
    assert_eq!(
        rig.read_with_readiness(a),
        (
            Readiness::Ready,
            vec![
                chunk("x"),
                chunk("y"),
                chunk("z"),
                end(Outcome::TimedOut(Phase::Stream))
            ]
        )
    );
    assert_eq!(rig.stats().cache_entries, 0);
}

/// Contract rules 17, 12, 14: an upstream silent for `idle_timeout` is aborted at
/// exactly the last chunk plus `idle_timeout`; its parked reader is woken and
/// reads the timeout after its chunk, and the slot goes to the waiting flight
/// in the same step.
#[test]
fn timeout_idle() {
    let mut rig = Driver::new(Config {
        max_concurrent_requests: 2,
        max_concurrent_streams: 1,
        stream_timeout: Duration::from_millis(100),
        idle_timeout: Duration::from_millis(35),
        ..slow()
    });
    let a = rig.submit("a").request;
    let b = rig.submit("b").request;
    rig.try_attach(a).unwrap();
    rig.try_attach(b).unwrap();
    assert_eq!(
        rig.take(),
        vec![start_prep(f(0), "a"), start_prep(f(1), "b")]
    );
    rig.at(10).prepared(f(0));
    assert_eq!(rig.take(), vec![start_stream(f(0))]);
    rig.at(11).prepared(f(1));
    assert_eq!(rig.take(), vec![]);
    assert_eq!(rig.machine.poll_timeout(), Some(ms(45)));
    rig.at(30).chunk(f(0), "x");
    assert_eq!(rig.machine.poll_timeout(), Some(ms(65)));
    assert_eq!(
        rig.read_with_readiness(a),
        (Readiness::Ready, vec![chunk("x")])
    );
    assert_eq!(rig.read_with_readiness(a), (Readiness::Pending, vec![]));
    rig.at(64).timeout();
    assert_eq!(rig.take(), vec![]);

    rig.at(65).timeout();
    assert_eq!(
        rig.take(),
        vec![
            abort(f(0), Work::Stream),
            wake(a),
            ended(f(0)),
            start_stream(f(1))
        ]
    );
    assert_eq!(
        rig.read_with_readiness(a),
        (Readiness::Ready, vec![end(Outcome::TimedOut(Phase::Idle))])
    );
    assert_eq!(rig.state(b), Some(RequestState::Streaming));
    // b streams from 65: idle deadline 100, which is also 65 + 35.
    assert_eq!(rig.machine.poll_timeout(), Some(ms(100)));
}

/// Contract rules 17, 6, 13 (Go `CLIENT_PICKUP_TIMEOUT`, seed 004): a request nobody
/// attaches to ends `attach_timeout` after its submit. Its prepared flight never
/// took a stream slot (no client), so nothing is aborted; the record then stays
/// for `finished_retention` so a late client reads the timeout.
#[test]
fn timeout_attach() {
    let mut rig = Driver::new(Config {
        attach_timeout: Duration::from_millis(60),
        finished_retention: Duration::from_millis(25),
        ..slow()
    });
    let a = rig.at(7).submit("a").request;
    assert_eq!(rig.take(), vec![start_prep(f(0), "a")]);
    assert_eq!(rig.machine.poll_timeout(), Some(ms(67)));
    rig.at(10).prepared(f(0));
    assert_eq!(rig.take(), vec![], "no client, no stream slot");
    assert_eq!(rig.state(a), Some(RequestState::WaitingForStream));
    assert_eq!(phases(&rig), (0, 0, 1, 0));
    rig.at(66).timeout();
    assert_eq!(rig.take(), vec![]);

    rig.at(67).timeout();
    assert_eq!(rig.take(), vec![ended(f(0))]);
    assert_eq!(
        rig.state(a),
        Some(RequestState::Done(Outcome::TimedOut(Phase::Attach)))
    );
    assert_eq!(
        rig.machine.poll_timeout(),
        Some(ms(92)),
        "finished retention"
    );
    rig.at(80).attach(a);
    assert_eq!(
        rig.read_with_readiness(a),
        (
            Readiness::Ready,
            vec![end(Outcome::TimedOut(Phase::Attach))]
        )
    );
    // Contract rule 21: the end is read, so the record is only retained.
    assert_eq!(
        rig.machine.poll_timeout(),
        Some(ms(105)),
        "retention from the read"
    );
    rig.try_detach(a).unwrap();
    assert!(rig.machine.is_empty(), "{:?}", rig.stats());
}

/// Contract rules 13, 17, 21 (seed 004 problem #2; seed 003): a cancelled record stays
/// exactly `cancelled_retention`: a client attaching one millisecond before
/// reads `End(Cancelled)`; at the deadline the unread record is gone (now
/// "not found" is the truth) and the machine is empty.
#[test]
fn timeout_cancelled_retention() {
    let mut rig = Driver::new(Config {
        cancelled_retention: Duration::from_millis(20),
        finished_retention: Duration::from_millis(25),
        ..slow()
    });
    let a = rig.submit("a").request;
    let b = rig.submit("b").request;
    assert_eq!(
        rig.take(),
        vec![start_prep(f(0), "a"), start_prep(f(1), "b")]
    );
    rig.at(3).cancel(a);
    rig.try_cancel(b).unwrap();
    assert_eq!(
        rig.take(),
        vec![
            abort(f(0), Work::Preparation),
            ended(f(0)),
            abort(f(1), Work::Preparation),
            ended(f(1))
        ]
    );
    assert_eq!(rig.machine.poll_timeout(), Some(ms(23)));
    rig.at(22).timeout();
    assert_eq!(rig.try_attach(b), Ok(()));
    assert_eq!(
        rig.read_with_readiness(b),
        (Readiness::Ready, vec![end(Outcome::Cancelled)])
    );
    assert_eq!(rig.state(a), Some(RequestState::Cancelled));

    rig.at(23).timeout();
    assert_eq!(rig.take(), vec![]);
    assert_eq!(rig.state(a), None);
    assert_eq!(rig.try_attach(a), Err(RequestError::NotFound));
    assert_eq!(rig.try_cancel(a), Err(RequestError::NotFound));
    // Contract rule 21: b read its end at 22, so it is retained until 42.
    assert_eq!(rig.machine.poll_timeout(), Some(ms(42)));
    rig.try_detach(b).unwrap();
    assert!(rig.machine.is_empty(), "{:?}", rig.stats());
}

/// Contract rules 13, 17, 2 (seed 001's cache; seed 004): a finished record nobody
/// attached to (here two cache hits) stays exactly `finished_retention` after
/// it ended; then it is gone. The cache entry itself lives `cache_ttl`.
#[test]
fn timeout_finished_retention() {
    let mut rig = Driver::new(Config {
        cancelled_retention: Duration::from_millis(20),
        finished_retention: Duration::from_millis(25),
        ..slow()
    });
    let a = rig.submit("k").request;
    rig.try_attach(a).unwrap();
    rig.at(1).prepared(f(0));
    rig.at(2).chunk(f(0), "x");
    rig.at(10).end(f(0));
    assert_eq!(
        rig.take(),
        vec![start_prep(f(0), "k"), start_stream(f(0)), ended(f(0))]
    );
    assert_eq!(
        rig.read_with_readiness(a),
        (Readiness::Ready, vec![chunk("x"), end(Outcome::Completed)])
    );
    rig.try_detach(a).unwrap();

    let b = rig.at(12).submit("k");
    let c = rig.at(14).submit("k");
    assert_eq!((b.route, c.route), (Route::Cached, Route::Cached));
    assert_eq!(rig.machine.poll_timeout(), Some(ms(37)));
    rig.at(36).timeout();
    assert_eq!(
        rig.state(b.request),
        Some(RequestState::Done(Outcome::Completed))
    );

    rig.at(37).timeout();
    assert_eq!(rig.take(), vec![]);
    assert_eq!(rig.state(b.request), None);
    assert_eq!(rig.try_attach(b.request), Err(RequestError::NotFound));
    assert_eq!(rig.machine.poll_timeout(), Some(ms(39)));
    rig.at(38).attach(c.request);
    assert_eq!(
        rig.read_with_readiness(c.request),
        (Readiness::Ready, vec![chunk("x"), end(Outcome::Completed)])
    );
    rig.try_detach(c.request).unwrap();
    // Only the cache entry is left: 1000 s after the completion at t=10.
    assert_eq!(rig.machine.poll_timeout(), Some(ms(1_000_010)));
    rig.at(1_000_010).timeout();
    assert!(rig.machine.is_empty(), "{:?}", rig.stats());
}
