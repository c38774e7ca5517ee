//! Replays every recorded trace under `tests/traces/`: invariants hold at every
//! step and the replayed actions equal the recorded ones. The `#[ignore]`d test
//! regenerates the seed traces.

use std::path::PathBuf;

use flightdeck_tests::scenario::Scenario;
use flightdeck_tests::trace::Trace;
use flightdeck_tests::world::{Op, World};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("traces")
}

fn seeds() -> Vec<(&'static str, Scenario)> {
    let mut cfg = flightdeck_tests::explore::config(10, 5);
    cfg.queue_capacity = 128;
    let mut distinct = Vec::new();
    for k in 0..100u8 {
        distinct.push(Op::Submit { key: k });
        distinct.push(Op::Attach(k));
    }
    for _ in 0..100 {
        distinct.push(Op::PrepareOk {
            which: 0,
            cacheable: true,
        });
    }
    for _ in 0..100 {
        distinct.push(Op::Chunk(0));
        distinct.push(Op::UpstreamOk(0));
    }
    let mut same = Vec::new();
    for i in 0..20u8 {
        same.push(Op::Submit { key: 0 });
        same.push(Op::Attach(i));
    }
    same.extend([
        Op::PrepareOk {
            which: 0,
            cacheable: true,
        },
        Op::Chunk(0),
        Op::Chunk(0),
        Op::UpstreamOk(0),
    ]);
    let cancel_attach = vec![
        Op::Submit { key: 0 },
        Op::Cancel(0),
        Op::Attach(0),
        Op::Read(0),
    ];
    let cancel_mid = vec![
        Op::Submit { key: 0 },
        Op::Attach(0),
        Op::PrepareOk {
            which: 0,
            cacheable: true,
        },
        Op::Chunk(0),
        Op::Read(0),
        Op::Read(0),
        Op::Cancel(0),
        Op::Read(0),
        Op::Late(0),
    ];
    let last_leaves = vec![
        Op::Submit { key: 0 },
        Op::Submit { key: 0 },
        Op::Attach(0),
        Op::Attach(1),
        Op::PrepareOk {
            which: 0,
            cacheable: true,
        },
        Op::Chunk(0),
        Op::Cancel(0),
        Op::Detach(1),
        Op::Submit { key: 1 },
        Op::Attach(2),
    ];
    let c = |ops| Scenario {
        config: flightdeck_tests::explore::config(1, 1),
        ops,
    };
    vec![
        (
            "distinct_100_limits_10_5",
            Scenario {
                config: cfg.clone(),
                ops: distinct,
            },
        ),
        (
            "identical_20_one_stream",
            Scenario {
                config: cfg,
                ops: same,
            },
        ),
        ("cancel_then_attach", c(cancel_attach)),
        ("cancel_mid_stream", c(cancel_mid)),
        ("last_member_leaves", c(last_leaves)),
    ]
}

fn record(s: &Scenario) -> Trace {
    let world = World::new(s.config.clone()).unwrap().recording();
    let world = s
        .run_in(world)
        .unwrap_or_else(|v| panic!("seed violated: {v}"));
    Trace::from_world(&world)
}

#[test]
#[ignore = "regenerates tests/traces/*.trace"]
fn regenerate_seed_traces() {
    std::fs::create_dir_all(dir()).unwrap();
    for (name, s) in seeds() {
        record(&s)
            .save(&dir().join(format!("{name}.trace")))
            .unwrap();
    }
}

#[test]
fn seed_scenarios_hold_and_record_what_is_committed() {
    for (name, s) in seeds() {
        let fresh = record(&s);
        let path = dir().join(format!("{name}.trace"));
        let committed = Trace::decode(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(
            fresh, committed,
            "{name}: the recording changed (regenerate if intended)"
        );
    }
}

#[test]
fn identical_requests_share_one_upstream_stream() {
    let (_, s) = seeds().swap_remove(1);
    let t = record(&s);
    let starts = t
        .actions
        .unwrap()
        .iter()
        .flatten()
        .filter(|a| matches!(a, flightdeck_core::Action::StartStream { .. }))
        .count();
    assert_eq!(starts, 1);
}

#[test]
fn every_committed_trace_replays_with_invariants_and_same_actions() {
    let mut n = 0;
    for entry in std::fs::read_dir(dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "trace") {
            let trace = Trace::decode(&std::fs::read(&path).unwrap()).unwrap();
            assert!(trace.actions.is_some());
            let machine = trace
                .replay()
                .unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
            assert!(machine.check_invariants().is_ok());
            n += 1;
        }
    }
    assert!(n >= 5, "only {n} traces found");
}

#[test]
fn garbage_bytes_never_panic_the_trace_decoder() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    for _ in 0..5000 {
        let len = rng.gen_range(0..200);
        let bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        if let Ok(t) = Trace::decode(&bytes) {
            let _ = t.replay();
        }
    }
}
