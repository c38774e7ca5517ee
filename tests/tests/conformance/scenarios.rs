//! The conformance scenarios, each written once and run on every runtime in
//! `flightdeck_tests::runtimes`. Real tasks, real timers, short (ms) durations.

#![allow(unreachable_pub)]

use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;

use flightdeck_tokio::{
    Config, ConfigError, Failure, Outcome, Phase, RequestError, RequestId, RequestState, Route,
    SubmitError, Work,
};

use crate::kit::*;
use crate::rt::{TestRt, DELIBERATE};

/// N identical requests make one preparation and one upstream call; every client
/// reads the whole answer (contract rules 2, 7, 8).
pub async fn coalescing<T: TestRt>() {
    const N: usize = 20;
    let probe = Arc::new(Probe::default());
    let m = manager::<T>(config(), &probe);
    let plan = Plan::chunks(5).prep(Prep::Ok, ms(20)).every(ms(2));
    let mut clients = Vec::new();
    for _ in 0..N {
        let mut s = m.submit_and_stream("same", plan.clone()).unwrap();
        clients.push(T::spawn(async move { read_all::<T>(&mut s).await }));
    }
    for c in clients {
        assert_eq!(c.await, (text(5), Outcome::Completed), "{}", T::NAME);
    }
    assert_eq!(probe.get(|p| &p.prepares), 1, "{}", T::NAME);
    assert_eq!(probe.get(|p| &p.opens), 1, "{}: upstream calls", T::NAME);
    let totals = m.stats().totals;
    assert_eq!(totals.coalesced, N as u64 - 1);
    assert_eq!(totals.streams_started, 1);
    assert_eq!(totals.completed, N as u64);
    finish::<T>(&m).await;
}

/// A stream read to its end and dropped leaves no record behind: its request
/// is not found afterwards, nor counted (contract rule 15), whether or not the
/// client read the terminal item before dropping it; a stream dropped while its
/// request is live still cancels it.
pub async fn finished_stream_dropped_leaves_no_record<T: TestRt>() {
    let probe = Arc::new(Probe::default());
    let m = manager::<T>(config(), &probe);
    let plan = Plan::chunks(3).every(ms(1));
    let mut s = m
        .submit_and_stream("read to the end", plan.clone())
        .unwrap();
    let id = s.id();
    assert_eq!(
        read_all::<T>(&mut s).await,
        (text(3), Outcome::Completed),
        "{}",
        T::NAME
    );
    assert!(
        m.status(id).is_some(),
        "{}: kept for its retention while streamed",
        T::NAME
    );
    drop(s);
    assert_eq!(
        m.status(id),
        None,
        "{}: the dropped stream's record is gone",
        T::NAME
    );
    assert!(
        matches!(m.stream(id), Err(RequestError::NotFound)),
        "{}",
        T::NAME
    );
    assert_eq!(m.stats().requests, 0, "{}", T::NAME);

    // Ended but its end not read yet: the drop removes the record too.
    let s = m.submit_and_stream("not read", plan.clone()).unwrap();
    let id = s.id();
    m.cancel(id).unwrap();
    drop(s);
    assert_eq!(m.status(id), None, "{}", T::NAME);
    assert_eq!(m.stats().requests, 0, "{}", T::NAME);

    // Live: the drop cancels it.
    let mut s = m
        .submit_and_stream("live", Plan::chunks(3).every(ms(50)))
        .unwrap();
    let _ = within::<T, _>("the first chunk", s.next_item()).await;
    let id = s.id();
    drop(s);
    assert_eq!(m.status(id), None, "{}", T::NAME);
    let stats = m.stats();
    assert_eq!(
        (stats.requests, stats.totals.cancelled),
        (0, 2),
        "{}",
        T::NAME
    );
    finish::<T>(&m).await;
}

/// A client that joins a flight mid-stream replays it from the first chunk (contract rule 7).
pub async fn late_join_replay<T: TestRt>() {
    let probe = Arc::new(Probe::default());
    let m = manager::<T>(config(), &probe);
    let plan = Plan::chunks(6).every(ms(15));
    let mut a = m.submit_and_stream("q", plan.clone()).unwrap();
    assert_eq!(read_chunks::<T>(&mut a, 3).await, text(3));
    let mut b = m.submit_and_stream("q", plan).unwrap();
    assert_eq!(
        m.stats().totals.coalesced,
        1,
        "{}: b joined the live flight",
        T::NAME
    );
    assert_eq!(read_all::<T>(&mut b).await, (text(6), Outcome::Completed));
    let (rest, outcome) = read_all::<T>(&mut a).await;
    assert_eq!(
        (format!("{}{rest}", text(3)), outcome),
        (text(6), Outcome::Completed)
    );
    assert_eq!(probe.get(|p| &p.opens), 1, "{}", T::NAME);
    finish::<T>(&m).await;
}

/// A slow reader blocks nobody and loses nothing: the upstream and a fast reader
/// finish while it sleeps; it then reads every chunk in order (contract rule 7).
pub async fn slow_reader_blocks_nobody<T: TestRt>() {
    let probe = Arc::new(Probe::default());
    let m = manager::<T>(config(), &probe);
    let plan = Plan::chunks(20).every(ms(1));
    let mut fast = m.submit_and_stream("k", plan.clone()).unwrap();
    let mut slow = m.submit_and_stream("k", plan).unwrap();
    assert_eq!(read_chunks::<T>(&mut slow, 1).await, text(1));
    assert_eq!(
        read_all::<T>(&mut fast).await,
        (text(20), Outcome::Completed)
    );
    eventually::<T>("upstream finished", || {
        probe.get(|p| &p.streams_dropped) == 1
    })
    .await;
    assert_eq!(m.stats().stream_slots_in_use, 0);
    let (rest, outcome) = read_all::<T>(&mut slow).await;
    assert_eq!(format!("{}{rest}", text(1)), text(20), "{}", T::NAME);
    assert_eq!(outcome, Outcome::Completed);
    finish::<T>(&m).await;
}

/// A completed cacheable result serves the next identical request without any
/// work; an uncacheable one does not (contract rules 2, 8).
pub async fn cache_hit<T: TestRt>() {
    let probe = Arc::new(Probe::default());
    let m = manager::<T>(config(), &probe);
    let mut a = m.submit_and_stream("cached", Plan::chunks(3)).unwrap();
    assert_eq!(read_all::<T>(&mut a).await, (text(3), Outcome::Completed));
    let mut b = m.submit_and_stream("cached", Plan::chunks(3)).unwrap();
    assert_eq!(read_all::<T>(&mut b).await, (text(3), Outcome::Completed));
    assert_eq!(m.stats().totals.cache_hits, 1);
    assert_eq!(probe.get(|p| &p.opens), 1, "{}", T::NAME);

    let mut c = m
        .submit_and_stream("fresh", Plan::chunks(2).uncacheable())
        .unwrap();
    assert_eq!(read_all::<T>(&mut c).await, (text(2), Outcome::Completed));
    let mut d = m
        .submit_and_stream("fresh", Plan::chunks(2).uncacheable())
        .unwrap();
    assert_eq!(read_all::<T>(&mut d).await, (text(2), Outcome::Completed));
    assert_eq!(probe.get(|p| &p.opens), 3, "{}", T::NAME);
    finish::<T>(&m).await;
}

/// Cancel, then attach: the stream yields the cancellation, never "not found"
/// (contract rules 9, 13); the preparation nobody waits for is aborted (contract rule 12). After
/// `cancelled_retention` the record is gone.
pub async fn cancel_then_stream<T: TestRt>() {
    let probe = Arc::new(Probe::default());
    let m = manager::<T>(
        Config {
            cancelled_retention: ms(150),
            ..config()
        },
        &probe,
    );
    let placed = m
        .submit("k", Plan::default().prep(Prep::Ok, ms(300)))
        .unwrap();
    assert!(matches!(placed.route, Route::NewFlight(_)));
    assert_eq!(
        placed.queue_position, None,
        "a free preparation slot takes the flight out of the queue at once"
    );
    let id = placed.id;
    eventually::<T>("preparation started", || probe.get(|p| &p.prepares) == 1).await;
    m.cancel(id).unwrap();
    m.cancel(id).unwrap(); // idempotent
    let mut s = m.stream(id).unwrap();
    assert_eq!(
        read_all::<T>(&mut s).await,
        (String::new(), Outcome::Cancelled)
    );
    drop(s);
    eventually::<T>("preparation aborted", || {
        probe.get(|p| &p.prepares_dropped) == 1
    })
    .await;
    assert_eq!(probe.get(|p| &p.prepares_done), 0, "{}", T::NAME);
    assert_eq!(m.stats().preparation_slots_in_use, 0);

    // Without a client the cancelled record stays for the retention, then goes.
    let id = m.submit("k2", Plan::default()).unwrap().id;
    m.cancel(id).unwrap();
    assert_eq!(m.status(id).map(|s| s.state), Some(RequestState::Cancelled));
    T::sleep(ms(300)).await;
    assert!(
        m.status(id).is_none(),
        "{}: record outlived its retention",
        T::NAME
    );
    assert_eq!(m.stream(id).err(), Some(RequestError::NotFound));
    finish::<T>(&m).await;
}

/// Cancel while reading: the client gets what it was given, then the
/// cancellation as its last item (contract rule 14); the upstream of the flight's last
/// member is dropped (contract rule 12).
pub async fn cancel_mid_stream<T: TestRt>() {
    let probe = Arc::new(Probe::default());
    let m = manager::<T>(config(), &probe);
    let mut s = m
        .submit_and_stream("k", Plan::chunks(0).every(ms(5)).then(Then::Forever))
        .unwrap();
    assert_eq!(read_chunks::<T>(&mut s, 3).await, text(3));
    m.cancel(s.id()).unwrap();
    let (_, outcome) = read_all::<T>(&mut s).await;
    assert_eq!(outcome, Outcome::Cancelled, "{}", T::NAME);
    eventually::<T>("upstream dropped", || {
        probe.get(|p| &p.streams_dropped) == 1
    })
    .await;
    assert_eq!(m.stats().stream_slots_in_use, 0);
    assert_eq!(
        m.status(s.id()).map(|s| s.state),
        Some(RequestState::Cancelled)
    );
    drop(s);
    finish::<T>(&m).await;
}

/// A client that drops its stream cancels its request and its record goes at
/// once (contract rule 15); the flight goes on for the others (contract rule 11) and its upstream
/// is dropped when the last member leaves (contract rule 12).
pub async fn last_member_leaving_aborts_upstream<T: TestRt>() {
    let probe = Arc::new(Probe::default());
    let m = manager::<T>(config(), &probe);
    let plan = Plan::chunks(0).every(ms(5)).then(Then::Forever);
    let mut a = m.submit_and_stream("k", plan.clone()).unwrap();
    let mut b = m.submit_and_stream("k", plan).unwrap();
    read_chunks::<T>(&mut a, 2).await;
    read_chunks::<T>(&mut b, 2).await;
    let a_id = a.id();
    drop(a);
    assert!(
        m.status(a_id).is_none(),
        "{}: dropped client's record kept",
        T::NAME
    );
    assert_eq!(m.stats().totals.cancelled, 1);
    read_chunks::<T>(&mut b, 5).await;
    assert_eq!(probe.get(|p| &p.streams_dropped), 0, "{}", T::NAME);
    m.cancel(b.id()).unwrap();
    eventually::<T>("upstream dropped", || {
        probe.get(|p| &p.streams_dropped) == 1
    })
    .await;
    assert_eq!(m.stats().stream_slots_in_use, 0);
    eventually::<T>("only the timer runs", || m.tasks_running() == 1).await;
    assert_eq!(read_all::<T>(&mut b).await.1, Outcome::Cancelled);
    drop(b);
    finish::<T>(&m).await;
}

/// A flight waits for a stream slot until a client attaches (contract rule 6).
pub async fn stream_waits_for_a_client<T: TestRt>() {
    let probe = Arc::new(Probe::default());
    let m = manager::<T>(config(), &probe);
    let id = m.submit("k", Plan::chunks(2)).unwrap().id;
    eventually::<T>("prepared", || {
        m.status(id).map(|s| s.state) == Some(RequestState::WaitingForStream)
    })
    .await;
    T::sleep(ms(30)).await;
    assert_eq!(
        probe.get(|p| &p.opens),
        0,
        "{}: streamed with no client",
        T::NAME
    );
    let mut s = m.stream(id).unwrap();
    assert_eq!(read_all::<T>(&mut s).await, (text(2), Outcome::Completed));
    assert_eq!(probe.get(|p| &p.opens), 1);
    finish::<T>(&m).await;
}

/// Queue deadline: a flight that waits too long for a preparation slot times out
/// (contract rule 17).
pub async fn deadline_queue<T: TestRt>() {
    let probe = Arc::new(Probe::default());
    let m = manager::<T>(
        Config {
            max_concurrent_requests: 1,
            queue_timeout: ms(60),
            ..config()
        },
        &probe,
    );
    let _busy = m
        .submit_and_stream("busy", Plan::default().prep(Prep::Hang, ms(0)))
        .unwrap();
    let mut s = m.submit_and_stream("waits", Plan::default()).unwrap();
    assert_eq!(m.status(s.id()).and_then(|s| s.queue_position), Some(0));
    let start = m.now();
    let (_, outcome) = read_all::<T>(&mut s).await;
    assert_eq!(outcome, Outcome::TimedOut(Phase::Queue), "{}", T::NAME);
    assert!(m.now().saturating_duration_since(start) >= ms(50));
    assert_eq!(probe.get(|p| &p.prepares), 1, "{}", T::NAME);
    finish::<T>(&m).await;
}

/// Preparation deadline: a preparation that runs too long is aborted and its
/// members time out (contract rule 17).
pub async fn deadline_preparation<T: TestRt>() {
    let probe = Arc::new(Probe::default());
    let m = manager::<T>(
        Config {
            preparation_timeout: ms(60),
            ..config()
        },
        &probe,
    );
    let mut s = m
        .submit_and_stream("k", Plan::default().prep(Prep::Hang, ms(0)))
        .unwrap();
    let (_, outcome) = read_all::<T>(&mut s).await;
    assert_eq!(
        outcome,
        Outcome::TimedOut(Phase::Preparation),
        "{}",
        T::NAME
    );
    eventually::<T>("preparation dropped", || {
        probe.get(|p| &p.prepares_dropped) == 1
    })
    .await;
    assert_eq!(m.stats().preparation_slots_in_use, 0);
    finish::<T>(&m).await;
}

/// Stream-slot deadline: a prepared flight that waits too long for a stream slot
/// times out (contract rule 17).
pub async fn deadline_stream_slot<T: TestRt>() {
    let probe = Arc::new(Probe::default());
    let m = manager::<T>(
        Config {
            max_concurrent_streams: 1,
            stream_slot_timeout: ms(60),
            ..config()
        },
        &probe,
    );
    let mut busy = m
        .submit_and_stream("busy", Plan::chunks(0).every(ms(5)).then(Then::Forever))
        .unwrap();
    read_chunks::<T>(&mut busy, 1).await;
    let mut s = m.submit_and_stream("waits", Plan::default()).unwrap();
    let (_, outcome) = read_all::<T>(&mut s).await;
    assert_eq!(outcome, Outcome::TimedOut(Phase::StreamSlot), "{}", T::NAME);
    assert_eq!(probe.get(|p| &p.opens), 1, "{}", T::NAME);
    drop(busy);
    finish::<T>(&m).await;
}

/// Stream deadline: an upstream that streams too long in total is cut off after
/// the chunks it produced, and dropped (contract rule 17).
pub async fn deadline_stream<T: TestRt>() {
    let probe = Arc::new(Probe::default());
    let m = manager::<T>(
        Config {
            stream_timeout: ms(100),
            ..config()
        },
        &probe,
    );
    let mut s = m
        .submit_and_stream("k", Plan::chunks(0).every(ms(5)).then(Then::Forever))
        .unwrap();
    let (chunks, outcome) = read_all::<T>(&mut s).await;
    assert_eq!(outcome, Outcome::TimedOut(Phase::Stream), "{}", T::NAME);
    let n = chunks.split_whitespace().count();
    assert!(n >= 1, "{}: no chunk in 100 ms", T::NAME);
    assert_eq!(chunks, text(n), "{}: chunks in order, no gap", T::NAME);
    eventually::<T>("upstream dropped", || {
        probe.get(|p| &p.streams_dropped) == 1
    })
    .await;
    finish::<T>(&m).await;
}

/// Idle deadline: an upstream that goes silent is ended by the core and dropped;
/// the chunks it produced are delivered first (contract rule 17).
pub async fn deadline_idle<T: TestRt>() {
    let probe = Arc::new(Probe::default());
    let m = manager::<T>(
        Config {
            idle_timeout: ms(60),
            ..config()
        },
        &probe,
    );
    let mut s = m
        .submit_and_stream("k", Plan::chunks(2).then(Then::Hang))
        .unwrap();
    assert_eq!(
        read_all::<T>(&mut s).await,
        (text(2), Outcome::TimedOut(Phase::Idle)),
        "{}",
        T::NAME
    );
    eventually::<T>("upstream dropped", || {
        probe.get(|p| &p.streams_dropped) == 1
    })
    .await;
    finish::<T>(&m).await;
}

/// Attach deadline: a request nobody attaches to in time times out; a client
/// that attaches later reads that (contract rules 13, 17). No upstream is opened for it.
pub async fn deadline_attach<T: TestRt>() {
    let probe = Arc::new(Probe::default());
    let m = manager::<T>(
        Config {
            attach_timeout: ms(60),
            ..config()
        },
        &probe,
    );
    let id = m.submit("k", Plan::default()).unwrap().id;
    T::sleep(ms(150)).await;
    let mut s = m.stream(id).unwrap();
    assert_eq!(
        read_all::<T>(&mut s).await,
        (String::new(), Outcome::TimedOut(Phase::Attach)),
        "{}",
        T::NAME
    );
    assert_eq!(probe.get(|p| &p.opens), 0);
    finish::<T>(&m).await;
}

/// The last two deadlines, with real timers: a finished record nobody reads is
/// dropped after `finished_retention` (contract rules 13, 17, 21), and a cached result
/// expires after `cache_ttl`, so the same question opens the upstream again
/// (contract rules 2, 17).
pub async fn deadline_retention_and_cache_ttl<T: TestRt>() {
    let probe = Arc::new(Probe::default());
    let m = manager::<T>(
        Config {
            finished_retention: ms(80),
            cache_ttl: ms(250),
            ..config()
        },
        &probe,
    );
    let mut first = m.submit_and_stream("k", Plan::chunks(2)).unwrap();
    assert_eq!(
        read_all::<T>(&mut first).await,
        (text(2), Outcome::Completed)
    );
    drop(first);

    // A cache hit nobody attaches to: finished at once, kept for the retention.
    let unread = m.submit("k", Plan::chunks(2)).unwrap().id;
    assert_eq!(
        m.status(unread).map(|s| s.state),
        Some(RequestState::Done(Outcome::Completed)),
        "{}",
        T::NAME
    );
    T::sleep(ms(20)).await;
    assert!(m.status(unread).is_some(), "{}: dropped early", T::NAME);
    eventually::<T>("finished record dropped", || m.status(unread).is_none()).await;
    assert_eq!(m.stream(unread).err(), Some(RequestError::NotFound));
    assert_eq!(m.stats().totals.cache_hits, 1);
    assert_eq!(probe.get(|p| &p.opens), 1, "{}", T::NAME);

    // After the time to live the same key is a miss: a second upstream call.
    T::sleep(ms(300)).await;
    let mut again = m.submit_and_stream("k", Plan::chunks(2)).unwrap();
    assert_eq!(
        read_all::<T>(&mut again).await,
        (text(2), Outcome::Completed)
    );
    assert_eq!(m.stats().totals.cache_hits, 1, "{}", T::NAME);
    assert_eq!(probe.get(|p| &p.opens), 2, "{}", T::NAME);
    finish::<T>(&m).await;
}

/// A panicking preparation fails its flight with `Panicked`; its slot is
/// released and its task finished (contract rule 23).
pub async fn panic_in_preparer<T: TestRt>() {
    let probe = Arc::new(Probe::default());
    let m = manager::<T>(
        Config {
            max_concurrent_requests: 1,
            ..config()
        },
        &probe,
    );
    let mut s = m
        .submit_and_stream("k", Plan::default().prep(Prep::Panic, ms(0)))
        .unwrap();
    let (chunks, outcome) = read_all::<T>(&mut s).await;
    assert_eq!(chunks, "");
    match outcome {
        Outcome::Failed(Failure::Panicked { work, message }) => {
            assert_eq!(work, Work::Preparation);
            assert!(message.contains(DELIBERATE), "{message}");
        }
        other => panic!("{}: {other:?}", T::NAME),
    }
    assert_eq!(m.stats().preparation_slots_in_use, 0);
    // The single preparation slot is free for the next flight.
    let mut next = m.submit_and_stream("k2", Plan::chunks(1)).unwrap();
    assert_eq!(
        read_all::<T>(&mut next).await,
        (text(1), Outcome::Completed)
    );
    eventually::<T>("only the timer runs", || m.tasks_running() == 1).await;
    finish::<T>(&m).await;
}

/// A panicking upstream (on open, or mid-stream after some chunks) fails its
/// flight with `Panicked` after the chunks delivered (contract rules 20, 23).
pub async fn panic_in_upstream<T: TestRt>() {
    let probe = Arc::new(Probe::default());
    let m = manager::<T>(
        Config {
            max_concurrent_streams: 1,
            ..config()
        },
        &probe,
    );
    let mut s = m
        .submit_and_stream("open", Plan::default().open(Open::Panic))
        .unwrap();
    let (chunks, outcome) = read_all::<T>(&mut s).await;
    assert_eq!(chunks, "");
    assert!(
        matches!(&outcome, Outcome::Failed(Failure::Panicked { work: Work::Stream, message }) if message.contains(DELIBERATE)),
        "{}: {outcome:?}",
        T::NAME
    );
    let mut s = m
        .submit_and_stream("mid", Plan::chunks(2).then(Then::Panic))
        .unwrap();
    let (chunks, outcome) = read_all::<T>(&mut s).await;
    assert_eq!(chunks, text(2), "{}", T::NAME);
    assert!(
        matches!(
            &outcome,
            Outcome::Failed(Failure::Panicked {
                work: Work::Stream,
                ..
            })
        ),
        "{}: {outcome:?}",
        T::NAME
    );
    assert_eq!(m.stats().stream_slots_in_use, 0);
    // Nothing was cached: the same key runs again.
    let mut s = m.submit_and_stream("mid", Plan::chunks(2)).unwrap();
    assert_eq!(read_all::<T>(&mut s).await, (text(2), Outcome::Completed));
    assert_eq!(probe.get(|p| &p.opens), 3);
    finish::<T>(&m).await;
}

/// Errors from the user's code fail the flight with their text, after the chunks
/// delivered; nothing is cached (contract rule 20).
pub async fn user_errors<T: TestRt>() {
    let probe = Arc::new(Probe::default());
    let m = manager::<T>(config(), &probe);
    let mut s = m
        .submit_and_stream("p", Plan::default().prep(Prep::Fail, ms(0)))
        .unwrap();
    assert_eq!(
        read_all::<T>(&mut s).await.1,
        Outcome::Failed(Failure::Preparation("no such model".into()))
    );
    let mut s = m
        .submit_and_stream("o", Plan::default().open(Open::Fail))
        .unwrap();
    assert_eq!(
        read_all::<T>(&mut s).await.1,
        Outcome::Failed(Failure::Upstream("connection refused".into()))
    );
    let mut s = m
        .submit_and_stream("u", Plan::chunks(2).then(Then::Fail))
        .unwrap();
    assert_eq!(
        read_all::<T>(&mut s).await,
        (
            text(2),
            Outcome::Failed(Failure::Upstream("upstream reset".into()))
        )
    );
    assert_eq!(m.stats().cache_entries, 0, "{}", T::NAME);
    finish::<T>(&m).await;
}

/// A response past `max_response_bytes` fails the flight and drops its upstream
/// (contract rule 22).
pub async fn response_too_large<T: TestRt>() {
    let probe = Arc::new(Probe::default());
    let m = manager::<T>(
        Config {
            max_response_bytes: 10,
            ..config()
        },
        &probe,
    );
    let mut s = m
        .submit_and_stream("k", Plan::chunks(0).then(Then::Forever))
        .unwrap();
    let (chunks, outcome) = read_all::<T>(&mut s).await;
    assert!(chunks.len() <= 10, "{}", T::NAME);
    assert_eq!(
        outcome,
        Outcome::Failed(Failure::ResponseTooLarge { limit: 10 })
    );
    eventually::<T>("upstream dropped", || {
        probe.get(|p| &p.streams_dropped) == 1
    })
    .await;
    finish::<T>(&m).await;
}

/// Bad input gets errors, never panics (contract rules 1, 9, 22).
pub async fn errors_are_values<T: TestRt>() {
    let probe = Arc::new(Probe::default());
    let bad = Config {
        max_concurrent_streams: 0,
        ..config()
    };
    let err = flightdeck_tokio::driver::Manager::<Plan, T::R>::new(
        bad,
        |p: Plan| async move { Ok::<_, String>(flightdeck_tokio::Preparation::cacheable(p)) },
        |_: Plan| async move { Ok::<_, String>(futures_lite::stream::empty()) },
    )
    .err();
    assert_eq!(
        err,
        Some(ConfigError::ZeroLimit {
            field: "max_concurrent_streams"
        })
    );
    let m = manager::<T>(
        Config {
            queue_capacity: 1,
            max_concurrent_requests: 1,
            ..config()
        },
        &probe,
    );
    let unknown = RequestId::from_raw(999);
    assert_eq!(m.cancel(unknown), Err(RequestError::NotFound));
    assert_eq!(m.stream(unknown).err(), Some(RequestError::NotFound));
    assert!(m.status(unknown).is_none());
    assert_eq!(
        m.submit("", Plan::default()).err(),
        Some(SubmitError::EmptyKey)
    );

    let mut done = m.submit_and_stream("done", Plan::chunks(1)).unwrap();
    assert_eq!(
        m.stream(done.id()).err(),
        Some(RequestError::AlreadyAttached)
    );
    assert_eq!(read_all::<T>(&mut done).await.1, Outcome::Completed);
    assert_eq!(
        m.cancel(done.id()),
        Err(RequestError::AlreadyFinished(Outcome::Completed))
    );

    // One flight preparing, one queued: the queue (capacity 1) is full, but a
    // request for a live key still joins (contract rule 2).
    let busy = m
        .submit("busy", Plan::default().prep(Prep::Hang, ms(0)))
        .unwrap()
        .id;
    eventually::<T>("preparing", || probe.get(|p| &p.prepares) == 2).await;
    let queued = m.submit("queued", Plan::default()).unwrap();
    assert_eq!(queued.queue_position, Some(0), "the only queued flight");
    let queued = queued.id;
    let before = m.stats();
    assert_eq!(
        m.submit("third", Plan::default()).err(),
        Some(SubmitError::QueueFull { capacity: 1 })
    );
    assert_eq!(
        m.stats(),
        before,
        "{}: a refused submit changed something",
        T::NAME
    );
    let joined = m.submit("queued", Plan::default()).unwrap();
    assert!(matches!(joined.route, Route::Joined(_)), "{}", T::NAME);
    assert_eq!(joined.queue_position, Some(0), "{}", T::NAME);
    let joined = joined.id;
    assert_eq!(
        m.status(joined).and_then(|s| s.flight),
        m.status(queued).and_then(|s| s.flight)
    );
    for id in [busy, queued, joined] {
        m.cancel(id).unwrap();
    }
    // Both flights ended unstarted or aborted: no upstream was opened for them.
    assert_eq!(probe.opens.load(SeqCst), 1, "{}", T::NAME);
    finish::<T>(&m).await;
}

/// Graceful shutdown: admission stops, every request ends with a status (readers
/// read `Shutdown` last), all work is dropped, and every task has finished when
/// `shutdown` returns.
pub async fn shutdown<T: TestRt>() {
    let probe = Arc::new(Probe::default());
    let m = manager::<T>(
        Config {
            max_concurrent_requests: 1,
            max_concurrent_streams: 1,
            ..config()
        },
        &probe,
    );
    let mut streaming = m
        .submit_and_stream("s", Plan::chunks(0).every(ms(5)).then(Then::Forever))
        .unwrap();
    read_chunks::<T>(&mut streaming, 2).await;
    let mut preparing = m
        .submit_and_stream("p", Plan::default().prep(Prep::Hang, ms(0)))
        .unwrap();
    let mut queued = m.submit_and_stream("q", Plan::default()).unwrap();
    let unattached = m.submit("u", Plan::default()).unwrap().id;
    eventually::<T>("preparing", || probe.get(|p| &p.prepares) == 2).await;
    assert!(m.tasks_running() >= 3, "{}", T::NAME);

    let reader = T::spawn(async move { read_all::<T>(&mut streaming).await });
    m.shutdown().await;
    assert_eq!(m.tasks_running(), 0, "{}", T::NAME);
    assert_eq!(probe.get(|p| &p.streams_dropped), 1);
    let aborted_preparations = probe.get(|p| &p.prepares_dropped) - probe.get(|p| &p.prepares_done);
    assert_eq!(aborted_preparations, 1, "{}", T::NAME);
    let shut = Outcome::Failed(Failure::Shutdown);
    assert_eq!(reader.await.1, shut, "{}", T::NAME);
    assert_eq!(
        read_all::<T>(&mut preparing).await,
        (String::new(), shut.clone())
    );
    assert_eq!(
        read_all::<T>(&mut queued).await,
        (String::new(), shut.clone())
    );
    assert_eq!(
        m.status(unattached).map(|s| s.state),
        Some(RequestState::Done(shut))
    );
    assert_eq!(
        m.submit("late", Plan::default()).err(),
        Some(SubmitError::ShuttingDown)
    );
    m.shutdown().await; // idempotent
    finish::<T>(&m).await;
}
