//! Cluster mode's driver wiring on smol, without Redis: three managers in one
//! process share one [`MemoryCoordinator`]; a herd spread over them makes one
//! upstream call (the tokio twin is `runtime-tokio/tests/cluster_memory.rs`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flightdeck_smol::{
    Bytes, Config, Coordinator, Item, Key, Manager, MemoryCoordinator, Outcome, Preparation,
    ResultStream,
};
use futures_lite::{FutureExt as _, StreamExt as _};

const CHUNKS: usize = 20;

fn expected() -> Vec<Bytes> {
    (0..CHUNKS)
        .map(|i| Bytes::from(format!("chunk {i} ")))
        .collect()
}

fn manager(coordinator: &Arc<MemoryCoordinator>, calls: &Arc<AtomicUsize>) -> Manager<()> {
    let calls = Arc::clone(calls);
    let upstream = move |(): ()| {
        calls.fetch_add(1, Ordering::SeqCst);
        async move {
            let chunks = futures_lite::stream::iter(expected()).then(|chunk| async move {
                smol::Timer::after(Duration::from_millis(2)).await;
                Ok::<_, std::io::Error>(chunk)
            });
            Ok::<_, std::io::Error>(chunks)
        }
    };
    let prepare = |(): ()| async { Ok::<_, std::io::Error>(Preparation::cacheable(())) };
    let coordinator: Arc<dyn Coordinator> = Arc::clone(coordinator) as _;
    Manager::new_clustered(Config::default(), prepare, upstream, coordinator).expect("manager")
}

async fn read_all(mut stream: ResultStream) -> (Vec<Bytes>, Outcome) {
    let mut chunks = Vec::new();
    while let Some(item) = stream.next_item().await {
        match item {
            Item::Chunk(chunk) => chunks.push(chunk),
            Item::End(outcome) => return (chunks, outcome),
        }
    }
    panic!("stream ended without an end item");
}

#[test]
fn herd_of_60_over_three_managers_makes_one_upstream_call() {
    let test = async {
        let coordinator = Arc::new(MemoryCoordinator::new());
        let calls = Arc::new(AtomicUsize::new(0));
        let managers: Vec<Manager<()>> = (0..3).map(|_| manager(&coordinator, &calls)).collect();
        let readers: Vec<_> = (0..60)
            .map(|i| {
                let stream = managers[i % 3]
                    .submit_and_stream("herd", ())
                    .expect("submit");
                smol::spawn(read_all(stream))
            })
            .collect();
        for reader in readers {
            let (chunks, outcome) = reader.await;
            assert_eq!(outcome, Outcome::Completed);
            assert_eq!(chunks, expected());
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one upstream call");
        let followed: u64 = managers.iter().map(|m| m.stats().totals.followed).sum();
        assert_eq!(followed, 2);
        // Every flight task ends with its flight: only the timers run.
        for _ in 0..500 {
            if managers.iter().all(|m| m.tasks_running() == 1) {
                break;
            }
            smol::Timer::after(Duration::from_millis(2)).await;
        }
        assert!(managers.iter().all(|m| m.tasks_running() == 1));
        assert!(coordinator.live_keys().is_empty());
        assert_eq!(coordinator.cached(&Key::from("herd")), Some(expected()));
        for m in &managers {
            m.check_invariants().expect("invariants");
            m.shutdown().await;
            assert_eq!(m.tasks_running(), 0);
        }
    };
    let timeout = async {
        smol::Timer::after(Duration::from_secs(30)).await;
        panic!("test took more than 30 s");
    };
    smol::block_on(test.or(timeout));
}
