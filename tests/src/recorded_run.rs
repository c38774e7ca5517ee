//! Recorded runs on real runtimes (issue 11 §6): a manager with real tasks and
//! timers records its run ([`Manager::record_to`](flightdeck_core::driver::Manager::record_to)),
//! written once here for every runtime in [`crate::runtimes`], like the
//! conformance scenarios. `tests/tests/recorded_runs.rs` replays the traces.

#![allow(dead_code, unreachable_pub)]

use std::io::{self, Write};
use std::sync::{Arc, Mutex, PoisonError};

use flightdeck_tokio::driver::{RecordError, RecordingSummary};
use flightdeck_tokio::{Config, Failure, Item, Outcome, Phase, RequestState, Route, Stats};

use crate::conformance_kit::{
    config, eventually, manager, manager_in, ms, read_all, read_chunks, text, Open, Plan, Probe,
    Then,
};
use crate::runtimes::{TestRt, DELIBERATE};

/// An in-memory trace file the test can read while the manager writes it.
#[derive(Clone, Debug, Default)]
pub struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl SharedBuf {
    /// What was written so far.
    #[must_use]
    pub fn bytes(&self) -> Vec<u8> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A writer that takes `left` bytes, then fails every write (a full disk),
/// or panics if `panics`.
#[derive(Debug)]
pub struct FailingWriter {
    /// Bytes it still accepts.
    pub left: usize,
    /// Panic instead of returning an error.
    pub panics: bool,
}

impl Write for FailingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.left == 0 {
            assert!(!self.panics, "{DELIBERATE} in a trace writer");
            return Err(io::Error::other("disk full"));
        }
        let n = buf.len().min(self.left);
        self.left -= n;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What a recorded run leaves.
#[derive(Debug)]
pub struct RecordedRun {
    /// The trace file's bytes.
    pub trace: Vec<u8>,
    /// The live manager's stats when recording stopped.
    pub stats: Stats,
    /// What the recorder reported.
    pub summary: RecordingSummary,
}

/// The deadlines the run exercises, short; the rest long.
#[must_use]
pub fn run_config() -> Config {
    Config {
        attach_timeout: ms(60),
        idle_timeout: ms(100),
        ..config()
    }
}

/// A run that records every kind of input: a completed stream, a cache hit, a
/// cancel mid-stream, a dropped result stream, an attach timeout, an idle
/// timeout, a failed upstream (opening and mid-stream), and shutdown.
///
/// # Panics
/// If the manager does not behave as the contract says (a test failure).
pub async fn recorded_run<T: TestRt>() -> RecordedRun {
    let probe = Arc::new(Probe::default());
    let m = manager::<T>(run_config(), &probe);
    let file = SharedBuf::default();
    m.record_to(file.clone()).expect("a new manager records");
    let name = T::NAME;

    // Completed, then served from the cache.
    let mut s = m.submit_and_stream("a", Plan::chunks(3)).unwrap();
    assert_eq!(read_all::<T>(&mut s).await, (text(3), Outcome::Completed));
    drop(s);
    let placed = m.submit("a", Plan::chunks(3)).unwrap();
    assert_eq!(placed.route, Route::Cached, "{name}");
    let mut s = m.stream(placed.id).unwrap();
    assert_eq!(read_all::<T>(&mut s).await, (text(3), Outcome::Completed));
    drop(s);

    // Cancelled mid-stream.
    let mut s = m
        .submit_and_stream("b", Plan::chunks(2).then(Then::Hang))
        .unwrap();
    assert_eq!(read_chunks::<T>(&mut s, 1).await, text(1));
    m.cancel(s.id()).unwrap();
    let (_, outcome) = read_all::<T>(&mut s).await;
    assert_eq!(outcome, Outcome::Cancelled, "{name}");
    drop(s);

    // A result stream dropped mid-stream: the upstream is stopped.
    let streams_dropped = probe.get(|p| &p.streams_dropped);
    let mut s = m
        .submit_and_stream("c", Plan::chunks(2).then(Then::Hang))
        .unwrap();
    assert_eq!(read_chunks::<T>(&mut s, 1).await, text(1));
    drop(s);
    eventually::<T>("the dropped stream's upstream stopped", || {
        probe.get(|p| &p.streams_dropped) > streams_dropped
    })
    .await;

    // Nobody attaches in time.
    let id = m.submit("d", Plan::default()).unwrap().id;
    eventually::<T>("the attach timeout", || {
        m.status(id)
            .is_some_and(|s| s.state == RequestState::Done(Outcome::TimedOut(Phase::Attach)))
    })
    .await;
    let mut s = m.stream(id).unwrap();
    let (_, outcome) = read_all::<T>(&mut s).await;
    assert_eq!(outcome, Outcome::TimedOut(Phase::Attach), "{name}");
    drop(s);

    // The upstream goes silent: the idle timeout ends it.
    let mut s = m
        .submit_and_stream("e", Plan::chunks(1).then(Then::Hang))
        .unwrap();
    let (_, outcome) = read_all::<T>(&mut s).await;
    assert_eq!(outcome, Outcome::TimedOut(Phase::Idle), "{name}");
    drop(s);

    // The upstream fails mid-stream, and at opening.
    let mut s = m
        .submit_and_stream("f", Plan::chunks(1).then(Then::Fail))
        .unwrap();
    let (got, outcome) = read_all::<T>(&mut s).await;
    assert_eq!(got, text(1), "{name}");
    assert!(
        matches!(outcome, Outcome::Failed(Failure::Upstream(_))),
        "{name}: {outcome:?}"
    );
    drop(s);
    let mut s = m
        .submit_and_stream("g", Plan::chunks(1).open(Open::Fail))
        .unwrap();
    let (_, outcome) = read_all::<T>(&mut s).await;
    assert!(
        matches!(outcome, Outcome::Failed(Failure::Upstream(_))),
        "{name}: {outcome:?}"
    );
    drop(s);

    // Shut down with a request still live: its reader reads the shutdown.
    let mut s = m
        .submit_and_stream("h", Plan::chunks(1).then(Then::Hang))
        .unwrap();
    assert_eq!(read_chunks::<T>(&mut s, 1).await, text(1));
    m.shutdown().await;
    assert!(matches!(
        s.next_item().await,
        Some(Item::End(Outcome::Failed(Failure::Shutdown)))
    ));
    drop(s);

    let status = m.recording_status();
    assert!(
        status.recording && status.error.is_none(),
        "{name}: {status:?}"
    );
    let stats = m.stats();
    let summary = m.stop_recording().expect("the recording finishes");
    assert!(matches!(m.stop_recording(), Err(RecordError::NotRecording)));
    RecordedRun {
        trace: file.bytes(),
        stats,
        summary,
    }
}

/// Recording errors never break serving: a writer that fails stops the
/// recording, the manager reports why and keeps serving. Also the refusals of
/// [`Manager::record_to`](flightdeck_core::driver::Manager::record_to).
///
/// # Panics
/// If the manager does not behave so (a test failure).
pub async fn failing_writer<T: TestRt>() {
    for panics in [false, true] {
        fails_while_serving::<T>(FailingWriter { left: 200, panics }).await;
    }
}

async fn fails_while_serving<T: TestRt>(writer: FailingWriter) {
    let name = T::NAME;
    let probe = Arc::new(Probe::default());
    let m = manager::<T>(config(), &probe);
    m.record_to(writer).expect("records");
    assert!(matches!(
        m.record_to(SharedBuf::default()),
        Err(RecordError::AlreadyRecording)
    ));
    // The writer fails after its first records; serving goes on meanwhile.
    for i in 0..500 {
        let mut s = m
            .submit_and_stream(format!("k{i}"), Plan::chunks(2).uncacheable())
            .unwrap();
        assert_eq!(read_all::<T>(&mut s).await, (text(2), Outcome::Completed));
        drop(s);
        if m.recording_status().error.is_some() {
            break;
        }
        T::sleep(ms(1)).await;
    }
    let status = m.recording_status();
    assert!(!status.recording, "{name}: {status:?}");
    assert!(
        matches!(status.error, Some(RecordError::Write { .. })),
        "{name}"
    );
    assert!(matches!(m.stop_recording(), Err(RecordError::Write { .. })));
    let mut s = m.submit_and_stream("after", Plan::chunks(2)).unwrap();
    assert_eq!(read_all::<T>(&mut s).await, (text(2), Outcome::Completed));
    drop(s);
    // A trace starts from a new machine.
    assert!(matches!(
        m.record_to(SharedBuf::default()),
        Err(RecordError::NotFresh)
    ));
    m.shutdown().await;
}

/// A manager dropped while recording (no `stop_recording`) still leaves a
/// complete trace: the writer thread writes and flushes what is left.
/// Returns the trace's bytes.
///
/// # Panics
/// If the trace is not complete within the wait (a test failure).
pub async fn dropped_while_recording<T: TestRt>() -> Vec<u8> {
    let probe = Arc::new(Probe::default());
    let m = manager::<T>(config(), &probe);
    let file = SharedBuf::default();
    m.record_to(file.clone()).expect("records");
    let mut s = m.submit_and_stream("k", Plan::chunks(3)).unwrap();
    assert_eq!(read_all::<T>(&mut s).await, (text(3), Outcome::Completed));
    drop(s);
    m.shutdown().await;
    drop(m);
    eventually::<T>(
        "the dropped manager's trace ending with its shutdown",
        || {
            crate::trace::Trace::decode(&file.bytes()).is_ok_and(|t| {
                t.steps
                    .iter()
                    .filter(|(_, i)| *i == flightdeck_core::Input::Shutdown)
                    .count()
                    == 2
            })
        },
    )
    .await;
    file.bytes()
}

/// Cluster mode, recorded: two managers (two instances) share one in-process
/// coordinator and each records its run. Both submit the same key: one owns
/// the flight and runs the upstream once, the other follows its log; both read
/// it in full. Then the owner's last member cancels mid-stream on a key whose
/// follower has read nothing: the follower re-claims and completes as owner.
/// Returns both runs (owner instance first).
///
/// # Panics
/// If the managers do not behave as the contract says (a test failure).
pub async fn recorded_cluster_run<T: TestRt>() -> [RecordedRun; 2] {
    use flightdeck_core::driver::MemoryCoordinator;
    let name = T::NAME;
    let coordinator = Arc::new(MemoryCoordinator::new());
    let probe = Arc::new(Probe::default());
    let files = [SharedBuf::default(), SharedBuf::default()];
    let [a, b] = [0, 1].map(|i| {
        let m = manager_in::<T>(config(), &probe, Some(coordinator.clone() as _));
        m.record_to(files[i].clone())
            .expect("a new manager records");
        m
    });

    // One key on both instances: one upstream call, two complete streams.
    let herd = || Plan::chunks(4).every(ms(20));
    let mut on_a = a.submit_and_stream("herd", herd()).unwrap();
    let first = read_chunks::<T>(&mut on_a, 1).await;
    let mut on_b = b.submit_and_stream("herd", herd()).unwrap();
    let (rest, outcome) = read_all::<T>(&mut on_a).await;
    assert_eq!((first + &rest, outcome), (text(4), Outcome::Completed));
    assert_eq!(
        read_all::<T>(&mut on_b).await,
        (text(4), Outcome::Completed)
    );
    drop((on_a, on_b));
    assert_eq!(probe.get(|p| &p.opens), 1, "{name}: one upstream call");

    // The owner's only member leaves before its first chunk: the follower,
    // which has read nothing, claims again and completes as the new owner.
    let mut owner = a
        .submit_and_stream("again", Plan::chunks(2).open(Open::Hang))
        .unwrap();
    eventually::<T>("a owns the key", || {
        a.status(owner.id())
            .is_some_and(|s| s.state != RequestState::Claiming)
    })
    .await;
    let mut follower = b.submit_and_stream("again", Plan::chunks(2)).unwrap();
    eventually::<T>("b follows", || {
        b.status(follower.id())
            .is_some_and(|s| s.state == RequestState::Following)
    })
    .await;
    a.cancel(owner.id()).unwrap();
    assert_eq!(read_all::<T>(&mut owner).await.1, Outcome::Cancelled);
    assert_eq!(
        read_all::<T>(&mut follower).await,
        (text(2), Outcome::Completed),
        "{name}: the follower re-claimed and completed"
    );
    drop((owner, follower));

    let mut runs = Vec::new();
    for (m, file) in [(a, &files[0]), (b, &files[1])] {
        m.shutdown().await;
        let stats = m.stats();
        let summary = m.stop_recording().expect("the recording finishes");
        runs.push(RecordedRun {
            trace: file.bytes(),
            stats,
            summary,
        });
    }
    let [a, b]: [RecordedRun; 2] = runs.try_into().expect("two runs");
    [a, b]
}
