//! Recorded runs replay exactly (issue 11 §6): a manager on each runtime, with
//! real tasks and timers, records its run (cancels, a dropped stream, an attach
//! and an idle timeout, a cache hit, failed upstreams, shutdown); the trace
//! replays through the core with every invariant, reply and action as
//! recorded, and ends in the live manager's stats. A tampered trace diverges
//! at the tampered step; a truncated one is reported, its prefix replays;
//! `verify replay` says all of this with its exit status.

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};

use flightdeck_core::driver::trace::TraceReadError;
use flightdeck_core::{Input, Key, Reply, RequestError, Route, Submission};
use flightdeck_tests::recorded_run::{recorded_run, RecordedRun};
use flightdeck_tests::runtimes::{Smol, TestRt, TokioCurrent, TokioMulti};
use flightdeck_tests::trace::{ReplayError, Trace};

fn record<T: TestRt>() -> RecordedRun {
    let out = Arc::new(Mutex::new(None));
    let slot = Arc::clone(&out);
    T::block_on(async move {
        let run = recorded_run::<T>().await;
        *slot.lock().unwrap() = Some(run);
    });
    let run = out.lock().unwrap().take();
    run.expect("the run finished")
}

fn submission(reply: Option<&Reply>) -> Option<Submission> {
    match reply {
        Some(Reply::Submit(Ok(s))) => Some(*s),
        _ => None,
    }
}

/// The recorded trace holds every kind of input the run made, replays with
/// every invariant, reply and action as recorded, and ends where the live
/// manager ended.
fn replays_exactly<T: TestRt>() -> Trace {
    let run = record::<T>();
    let trace = Trace::decode(&run.trace).unwrap_or_else(|e| panic!("{}: {e}", T::NAME));
    assert_eq!(
        run.summary.records,
        trace.steps.len() as u64 + 1,
        "header + steps"
    );
    assert_eq!(run.summary.bytes, run.trace.len() as u64);
    let replies = trace.replies.clone().expect("replies recorded");
    assert!(trace.actions.is_some(), "actions recorded");
    let has = |what: &str, f: &dyn Fn(&Input) -> bool| {
        assert!(
            trace.steps.iter().any(|(_, i)| f(i)),
            "{}: no {what}",
            T::NAME
        );
    };
    has("cancel", &|i| matches!(i, Input::Cancel { .. }));
    has("detach", &|i| matches!(i, Input::Detach { .. }));
    has("read", &|i| matches!(i, Input::Read { .. }));
    has("chunk", &|i| matches!(i, Input::Chunk { .. }));
    has("timeout", &|i| matches!(i, Input::Timeout));
    has("shutdown", &|i| matches!(i, Input::Shutdown));
    has("preparation", &|i| {
        matches!(i, Input::Prepared { result: Ok(_), .. })
    });
    has("completed upstream", &|i| {
        matches!(i, Input::UpstreamEnded { result: Ok(()), .. })
    });
    has("failed upstream", &|i| {
        matches!(i, Input::UpstreamEnded { result: Err(_), .. })
    });
    assert!(
        replies
            .iter()
            .any(|r| submission(r.as_ref()).is_some_and(|s| s.route == Route::Cached)),
        "no cache hit"
    );
    let machine = trace
        .replay()
        .unwrap_or_else(|e| panic!("{}: {e}", T::NAME));
    assert_eq!(machine.stats(), run.stats, "{}: replayed stats", T::NAME);
    assert!(run.stats.totals.timed_out >= 2, "{:?}", run.stats);
    assert!(run.stats.totals.cancelled >= 2, "{:?}", run.stats);
    tampered_traces_diverge_at_the_tampered_step(&trace);
    truncated_traces_are_reported_and_their_prefix_replays(&run.trace);
    damaged_bytes_never_panic_nor_break_an_invariant(&run.trace);
    trace
}

/// Bytes flipped anywhere in a recorded trace: decoding and replaying never
/// panic; a replay may diverge from what was recorded (the inputs changed) but
/// every invariant holds, since the core keeps them for any input sequence.
fn damaged_bytes_never_panic_nor_break_an_invariant(bytes: &[u8]) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::SmallRng::seed_from_u64(11);
    let (mut decoded, mut diverged) = (0, 0);
    for _ in 0..300 {
        let mut damaged = bytes.to_vec();
        for _ in 0..rng.gen_range(1..4) {
            let at = rng.gen_range(0..damaged.len());
            damaged[at] = rng.gen();
        }
        let Ok((trace, _)) = Trace::read_prefix(&damaged[..]) else {
            continue;
        };
        decoded += 1;
        match trace.replay() {
            Ok(_) | Err(ReplayError::Config(_)) => {}
            Err(ReplayError::Diverged { .. } | ReplayError::ReplyDiverged { .. }) => diverged += 1,
            Err(e @ ReplayError::Invariant { .. }) => {
                panic!("a damaged trace broke an invariant: {e}")
            }
        }
    }
    assert!(
        decoded > 100 && diverged > 0,
        "decoded {decoded}, diverged {diverged}"
    );
}

fn tampered_traces_diverge_at_the_tampered_step(trace: &Trace) {
    let replies = trace.replies.as_ref().expect("replies");
    // One input changed: the cache hit asks for a key nobody asked for.
    let hit = (0..trace.steps.len())
        .find(|&k| submission(replies[k].as_ref()).is_some_and(|s| s.route == Route::Cached))
        .expect("a cache hit");
    let mut changed = trace.clone();
    changed.steps[hit].1 = Input::Submit {
        key: Key::from("never asked"),
    };
    match changed.replay() {
        Err(ReplayError::ReplyDiverged { step, replayed, .. }) => {
            assert_eq!(step, hit);
            let route = submission(Some(&replayed)).map(|s| s.route);
            assert!(matches!(route, Some(Route::NewFlight(_))), "{replayed:?}");
        }
        other => panic!("changed step {hit}: {other:?}"),
    }
    // One input removed: a submit whose attach follows; the attach then
    // names a request that does not exist.
    let submit = (0..trace.steps.len() - 1)
        .find(|&k| {
            submission(replies[k].as_ref()).is_some_and(|s| {
                matches!(s.route, Route::NewFlight(_))
                    && trace.steps[k + 1].1 == Input::Attach { request: s.request }
            })
        })
        .expect("a submit and its attach");
    let mut removed = trace.clone();
    removed.steps.remove(submit);
    if let Some(a) = removed.actions.as_mut() {
        a.remove(submit);
    }
    if let Some(r) = removed.replies.as_mut() {
        r.remove(submit);
    }
    assert_eq!(
        removed.replay().err(),
        Some(ReplayError::ReplyDiverged {
            step: submit,
            recorded: Reply::Request(Ok(())),
            replayed: Reply::Request(Err(RequestError::NotFound)),
        })
    );
}

fn truncated_traces_are_reported_and_their_prefix_replays(bytes: &[u8]) {
    let total = Trace::decode(bytes).expect("complete").steps.len();
    let mut last = 0;
    for tenth in 1..10 {
        let cut = bytes.len() * tenth / 10;
        match Trace::decode(&bytes[..cut]) {
            Err(TraceReadError::Truncated { steps }) => {
                let (prefix, stopped) = Trace::read_prefix(&bytes[..cut]).expect("header");
                assert!(matches!(stopped, Some(TraceReadError::Truncated { .. })));
                assert_eq!(prefix.steps.len(), steps);
                assert!(
                    steps >= last && steps < total,
                    "cut {cut}: {steps} of {total}"
                );
                last = steps;
                prefix.replay().expect("a prefix replays");
            }
            // A cut that falls between records reads as a shorter trace.
            Ok(prefix) => assert!(prefix.steps.len() < total),
            Err(e) => panic!("cut {cut}: {e}"),
        }
    }
}

/// Two instances in cluster mode, each recording: both traces hold the
/// cluster inputs and replay exactly, ending in each live manager's stats.
fn cluster_runs_replay_exactly<T: TestRt>() {
    let out = Arc::new(Mutex::new(None));
    let slot = Arc::clone(&out);
    T::block_on(async move {
        let runs = flightdeck_tests::recorded_run::recorded_cluster_run::<T>().await;
        *slot.lock().unwrap() = Some(runs);
    });
    let runs = out.lock().unwrap().take().expect("the runs finished");
    let mut claims = [0, 0];
    for (i, run) in runs.iter().enumerate() {
        let trace = Trace::decode(&run.trace).unwrap_or_else(|e| panic!("{}: {e}", T::NAME));
        assert!(trace.config.cluster, "{}: cluster mode recorded", T::NAME);
        claims[i] = trace
            .steps
            .iter()
            .filter(|(_, input)| matches!(input, Input::Claimed { .. }))
            .count();
        let machine = trace
            .replay()
            .unwrap_or_else(|e| panic!("{} instance {i}: {e}", T::NAME));
        assert_eq!(machine.stats(), run.stats, "{}: replayed stats", T::NAME);
        // Tampered: the first claim's answer removed. The flight stays
        // claiming, so what the recording did next for it (start its
        // preparation, follow, read its chunks) diverges; not before.
        let first = trace
            .steps
            .iter()
            .position(|(_, input)| matches!(input, Input::Claimed { .. }))
            .expect("a claim answered");
        let mut removed = trace.clone();
        removed.steps.remove(first);
        removed.actions.as_mut().expect("actions").remove(first);
        removed.replies.as_mut().expect("replies").remove(first);
        match removed.replay() {
            Err(ReplayError::ReplyDiverged { step, .. } | ReplayError::Diverged { step, .. }) => {
                assert!(
                    step >= first,
                    "diverged at {step}, before the removed {first}"
                );
            }
            other => panic!("{}: removed claim {first}: {other:?}", T::NAME),
        }
    }
    // a: two owned flights; b: a follower, then a follower that re-claimed.
    assert_eq!(claims, [2, 3], "{}: claims answered per instance", T::NAME);
    assert!(runs[1].stats.totals.followed >= 2, "{:?}", runs[1].stats);
}

macro_rules! on_every_runtime {
    ($($runtime:ident: $rt:ty),* $(,)?) => {
        $(
            mod $runtime {
                #[test]
                fn a_recorded_run_replays_exactly() {
                    super::replays_exactly::<$rt>();
                }

                #[test]
                fn two_cluster_instances_record_runs_that_replay_exactly() {
                    super::cluster_runs_replay_exactly::<$rt>();
                }

                #[test]
                fn a_manager_dropped_while_recording_leaves_a_complete_trace() {
                    let out = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
                    let slot = std::sync::Arc::clone(&out);
                    <$rt as flightdeck_tests::runtimes::TestRt>::block_on(async move {
                        let bytes =
                            flightdeck_tests::recorded_run::dropped_while_recording::<$rt>().await;
                        *slot.lock().unwrap() = bytes;
                    });
                    let trace = flightdeck_tests::trace::Trace::decode(&out.lock().unwrap())
                        .expect("complete");
                    trace.replay().expect("replays");
                }

                #[test]
                fn a_failing_writer_stops_the_recording_not_the_manager() {
                    <$rt as flightdeck_tests::runtimes::TestRt>::block_on(
                        flightdeck_tests::recorded_run::failing_writer::<$rt>(),
                    );
                }
            }
        )*
    };
}

on_every_runtime!(smol: super::Smol, tokio_current_thread: super::TokioCurrent, tokio_multi_thread: super::TokioMulti);

/// `verify replay`: 0 and a summary for a good trace, 1 and the step for a
/// tampered one, 2 for a truncated, corrupt or missing file.
#[test]
fn the_verify_command_replays_a_recorded_file() {
    let trace = replays_exactly::<Smol>();
    let dir = std::env::temp_dir().join(format!("flightdeck-recorded-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let verify = |file: &PathBuf, extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_verify"))
            .arg("replay")
            .args(extra)
            .arg(file)
            .output()
            .expect("verify runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code(), text)
    };
    let good = dir.join("good.trace");
    trace.save(&good).unwrap();
    let (code, text) = verify(&good, &[]);
    let n = trace.steps.len();
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains(&format!("replayed {n} inputs, all invariants held")),
        "{text}"
    );

    let mut tampered = trace.clone();
    // The first submit removed: its attach names nobody.
    tampered.steps.remove(0);
    tampered.actions.as_mut().expect("actions").remove(0);
    tampered.replies.as_mut().expect("replies").remove(0);
    let bad = dir.join("tampered.trace");
    tampered.save(&bad).unwrap();
    let (code, text) = verify(&bad, &[]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(&format!("divergence at step 0 of {}", n - 1)),
        "{text}"
    );

    let bytes = trace.encode();
    let cut = dir.join("truncated.trace");
    std::fs::write(&cut, &bytes[..bytes.len() - 3]).unwrap();
    let (code, text) = verify(&cut, &[]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("truncated after"), "{text}");
    let (code, text) = verify(&cut, &["--prefix"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains(&format!("replayed {} inputs", n - 1)),
        "{text}"
    );

    let garbage = dir.join("garbage.trace");
    std::fs::write(&garbage, b"flightdeck? no").unwrap();
    assert_eq!(verify(&garbage, &[]).0, Some(2));
    assert_eq!(verify(&dir.join("missing.trace"), &[]).0, Some(2));
    std::fs::remove_dir_all(&dir).unwrap();
}
