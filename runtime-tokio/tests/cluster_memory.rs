//! Cluster mode's driver wiring on tokio, without Redis: three managers in one
//! process share one [`MemoryCoordinator`] (the same seam the Redis coordinator
//! plugs into). `runtime-smol/tests/cluster_memory.rs` runs the herd on smol.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flightdeck_tokio::driver::BoxFuture;
use flightdeck_tokio::{
    Bytes, Claim, Config, Coordinator, Failure, Item, Key, Lost, Manager, MemoryCoordinator,
    Outcome, Preparation, Publisher, ResultStream,
};

/// Fails the test if `test` takes more than 30 s.
async fn bounded<T>(test: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), test)
        .await
        .expect("test took more than 30 s")
}

const CHUNKS: usize = 20;

fn expected() -> Vec<Bytes> {
    (0..CHUNKS)
        .map(|i| Bytes::from(format!("chunk {i} ")))
        .collect()
}

/// A manager whose upstream counts its calls and streams [`CHUNKS`] chunks,
/// `pause` apart.
fn manager(
    coordinator: &Arc<MemoryCoordinator>,
    calls: &Arc<AtomicUsize>,
    pause: Duration,
) -> Manager<()> {
    let calls = Arc::clone(calls);
    let upstream = move |(): ()| {
        calls.fetch_add(1, Ordering::SeqCst);
        async move {
            let chunks = futures_lite::stream::iter(expected()).then(move |chunk| async move {
                tokio::time::sleep(pause).await;
                Ok::<_, std::io::Error>(chunk)
            });
            Ok::<_, std::io::Error>(chunks)
        }
    };
    let prepare = |(): ()| async { Ok::<_, std::io::Error>(Preparation::cacheable(())) };
    let coordinator: Arc<dyn Coordinator> = Arc::clone(coordinator) as _;
    Manager::new_clustered(Config::default(), prepare, upstream, coordinator).expect("manager")
}

use futures_lite::StreamExt as _;

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

/// Waits until each manager runs only its timer (every flight task ended).
async fn settled(managers: &[Manager<()>]) {
    for _ in 0..500 {
        if managers.iter().all(|m| m.tasks_running() == 1) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let running: Vec<u64> = managers.iter().map(Manager::tasks_running).collect();
    panic!("tasks still running after the flights ended: {running:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herd_of_60_over_three_managers_makes_one_upstream_call() {
    bounded(async {
        let coordinator = Arc::new(MemoryCoordinator::new());
        let calls = Arc::new(AtomicUsize::new(0));
        let managers: Vec<Manager<()>> = (0..3)
            .map(|_| manager(&coordinator, &calls, Duration::from_millis(2)))
            .collect();
        let readers: Vec<_> = (0..60)
            .map(|i| {
                let stream = managers[i % 3]
                    .submit_and_stream("herd", ())
                    .expect("submit");
                tokio::spawn(read_all(stream))
            })
            .collect();
        for reader in readers {
            let (chunks, outcome) = reader.await.expect("reader");
            assert_eq!(outcome, Outcome::Completed);
            assert_eq!(chunks, expected());
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one upstream call");
        let started: u64 = managers
            .iter()
            .map(|m| m.stats().totals.streams_started)
            .sum();
        let followed: u64 = managers.iter().map(|m| m.stats().totals.followed).sum();
        assert_eq!((started, followed), (1, 2));
        settled(&managers).await;
        assert!(coordinator.live_keys().is_empty());
        assert_eq!(coordinator.cached(&Key::from("herd")), Some(expected()));
        for m in &managers {
            m.check_invariants().expect("invariants");
            m.shutdown().await;
            assert_eq!(m.tasks_running(), 0);
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_cached_via_one_manager_is_a_hit_on_another() {
    bounded(async {
        let coordinator = Arc::new(MemoryCoordinator::new());
        let calls = Arc::new(AtomicUsize::new(0));
        let a = manager(&coordinator, &calls, Duration::ZERO);
        let b = manager(&coordinator, &calls, Duration::ZERO);
        let (chunks, outcome) = read_all(a.submit_and_stream("k", ()).expect("submit")).await;
        assert_eq!((chunks, outcome), (expected(), Outcome::Completed));
        settled(std::slice::from_ref(&a)).await;
        let (chunks, outcome) = read_all(b.submit_and_stream("k", ()).expect("submit")).await;
        assert_eq!((chunks, outcome), (expected(), Outcome::Completed));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(b.stats().totals.remote_cache_hits, 1);
        for m in [a, b] {
            m.shutdown().await;
            assert_eq!(m.tasks_running(), 0);
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_lease_fences_the_owner_and_fails_followers_that_read() {
    bounded(async {
        let coordinator = Arc::new(MemoryCoordinator::new());
        let calls = Arc::new(AtomicUsize::new(0));
        let a = manager(&coordinator, &calls, Duration::from_millis(20));
        let b = manager(&coordinator, &calls, Duration::from_millis(20));
        let mut owner = a.submit_and_stream("k", ()).expect("submit");
        assert!(matches!(owner.next_item().await, Some(Item::Chunk(_))));
        let mut follower = b.submit_and_stream("k", ()).expect("submit");
        assert!(matches!(follower.next_item().await, Some(Item::Chunk(_))));
        assert!(coordinator.revoke(&Key::from("k")));
        // The owner's next append is refused: its members fail with the reason.
        let (_, outcome) = read_all(owner).await;
        assert!(
            matches!(&outcome, Outcome::Failed(Failure::Cluster(reason)) if reason.contains("lease")),
            "{outcome:?}"
        );
        let (_, outcome) = read_all(follower).await;
        assert_eq!(outcome, Outcome::Failed(Failure::OwnerLost));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        settled(&[a.clone(), b.clone()]).await;
        for m in [a, b] {
            m.check_invariants().expect("invariants");
            m.shutdown().await;
            assert_eq!(m.tasks_running(), 0);
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_read_nothing_claims_again_when_the_owner_is_lost() {
    bounded(async {
        let coordinator = Arc::new(MemoryCoordinator::new());
        let calls = Arc::new(AtomicUsize::new(0));
        // A's upstream takes long for its first chunk; B's is quick.
        let a = manager(&coordinator, &calls, Duration::from_secs(20));
        let b = manager(&coordinator, &calls, Duration::ZERO);
        let owner = a.submit_and_stream("k", ()).expect("submit");
        while calls.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let follower = b.submit_and_stream("k", ()).expect("submit");
        while b.stats().following == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(coordinator.revoke(&Key::from("k")));
        let (chunks, outcome) = read_all(follower).await;
        assert_eq!((chunks, outcome), (expected(), Outcome::Completed));
        assert_eq!(calls.load(Ordering::SeqCst), 2, "B re-claimed and ran it");
        drop(owner);
        for m in [a, b] {
            m.shutdown().await;
            assert_eq!(m.tasks_running(), 0);
        }
    })
    .await;
}

/// A coordinator whose claims take `delay` (a slow network), and which records
/// the outcomes its owners finish with.
struct Slow {
    inner: Arc<MemoryCoordinator>,
    delay: Duration,
    finished: Arc<Mutex<Vec<Outcome>>>,
}

impl Coordinator for Slow {
    fn claim(&self, key: Key) -> BoxFuture<Claim> {
        let (inner, delay) = (Arc::clone(&self.inner), self.delay);
        let finished = Arc::clone(&self.finished);
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            match inner.claim(key).await {
                Claim::Owner(inner) => Claim::Owner(Box::new(Recording { inner, finished })),
                other => other,
            }
        })
    }
}

struct Recording {
    inner: Box<dyn Publisher>,
    finished: Arc<Mutex<Vec<Outcome>>>,
}

impl Publisher for Recording {
    fn append(&self, chunks: Vec<Bytes>) -> BoxFuture<Result<(), Lost>> {
        self.inner.append(chunks)
    }
    fn renew(&self) -> BoxFuture<Result<(), Lost>> {
        self.inner.renew()
    }
    fn renew_every(&self) -> Duration {
        self.inner.renew_every()
    }
    fn finish(&self, outcome: Outcome, cacheable: bool) -> BoxFuture<Result<(), Lost>> {
        self.finished.lock().unwrap().push(outcome.clone());
        self.inner.finish(outcome, cacheable)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_won_after_its_flight_ended_is_given_back() {
    bounded(async {
        let memory = Arc::new(MemoryCoordinator::new());
        let finished = Arc::new(Mutex::new(Vec::new()));
        let slow: Arc<dyn Coordinator> = Arc::new(Slow {
            inner: Arc::clone(&memory),
            delay: Duration::from_millis(50),
            finished: Arc::clone(&finished),
        });
        let prepare = |(): ()| async { Ok::<_, std::io::Error>(Preparation::cacheable(())) };
        let upstream = |(): ()| async {
            Ok::<_, std::io::Error>(futures_lite::stream::iter(Vec::<
                Result<Bytes, std::io::Error>,
            >::new()))
        };
        let m: Manager<()> =
            Manager::new_clustered(Config::default(), prepare, upstream, slow).expect("manager");
        let stream = m.submit_and_stream("k", ()).expect("submit");
        assert_eq!(m.stats().claiming, 1);
        drop(stream); // the flight ends while its claim is under way
        assert_eq!(m.stats().claiming, 0);
        settled(std::slice::from_ref(&m)).await; // the claim task answered and gave the lease back
        assert_eq!(
            *finished.lock().unwrap(),
            vec![Outcome::Cancelled],
            "given back"
        );
        assert!(memory.live_keys().is_empty(), "no lease left behind");
        assert_eq!(m.stats().totals.streams_started, 0);
        m.shutdown().await;
        assert_eq!(m.tasks_running(), 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_whose_members_leave_stops_following_and_the_owner_goes_on() {
    bounded(async {
        let coordinator = Arc::new(MemoryCoordinator::new());
        let calls = Arc::new(AtomicUsize::new(0));
        let a = manager(&coordinator, &calls, Duration::from_millis(5));
        let b = manager(&coordinator, &calls, Duration::from_millis(5));
        let mut owner = a.submit_and_stream("k", ()).expect("submit");
        assert!(matches!(owner.next_item().await, Some(Item::Chunk(_))));
        let mut follower = b.submit_and_stream("k", ()).expect("submit");
        assert!(matches!(follower.next_item().await, Some(Item::Chunk(_))));
        assert_eq!(b.tasks_running(), 2, "the timer and the follow task");
        drop(follower); // B's last member leaves: Abort stops the follow task
        settled(std::slice::from_ref(&b)).await;
        assert_eq!(b.stats().following, 0);
        let (mut chunks, outcome) = read_all(owner).await;
        chunks.insert(0, expected()[0].clone());
        assert_eq!((chunks, outcome), (expected(), Outcome::Completed));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        for m in [a, b] {
            m.shutdown().await;
            assert_eq!(m.tasks_running(), 0);
        }
    })
    .await;
}

/// An owner instance shut down gracefully releases `Failed(Shutdown)`; that is
/// no answer for other instances: a follower that read ends `Failed(OwnerLost)`,
/// one that read nothing claims again and completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_shut_down_gracefully_is_an_owner_lost_elsewhere() {
    bounded(async {
        let coordinator = Arc::new(MemoryCoordinator::new());
        let calls = Arc::new(AtomicUsize::new(0));
        let a = manager(&coordinator, &calls, Duration::from_millis(20));
        let b = manager(&coordinator, &calls, Duration::from_millis(20));
        let mut on_a = a.submit_and_stream("read", ()).expect("submit");
        assert!(matches!(on_a.next_item().await, Some(Item::Chunk(_))));
        let mut read = b.submit_and_stream("read", ()).expect("submit");
        assert!(matches!(read.next_item().await, Some(Item::Chunk(_))));
        let slow = manager(&coordinator, &calls, Duration::from_secs(20));
        let _on_slow = slow.submit_and_stream("unread", ()).expect("submit");
        while calls.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let unread = b.submit_and_stream("unread", ()).expect("submit");
        while b.stats().following < 2 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        a.shutdown().await;
        slow.shutdown().await;
        assert_eq!((a.tasks_running(), slow.tasks_running()), (0, 0));
        let (_, outcome) = read_all(read).await;
        assert_eq!(outcome, Outcome::Failed(Failure::OwnerLost));
        let (chunks, outcome) = read_all(unread).await;
        assert_eq!((chunks, outcome), (expected(), Outcome::Completed));
        assert_eq!(calls.load(Ordering::SeqCst), 3, "B ran \"unread\" itself");
        b.shutdown().await;
        assert_eq!(b.tasks_running(), 0);
    })
    .await;
}
