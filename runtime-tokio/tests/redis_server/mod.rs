//! A `redis-server` of a test's own (the Debian package; `.ci/run` installs it when
//! missing), and the helpers every Redis test shares: shared by every test
//! binary that needs Redis (`mod redis_server;`).

#![allow(dead_code)] // each test binary uses a part of it

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flightdeck_tokio::cluster::{redis, Cluster, ClusterConfig};

/// A `redis-server` of the test's own, on a Unix socket in a temporary directory,
/// with persistence off. Killed on drop; [`restart`](Self::restart) kills it and
/// starts a fresh one (empty) on the same socket.
pub(crate) struct RedisServer {
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisServer {
    pub(crate) fn start() -> RedisServer {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut server = RedisServer { dir, child: None };
        server.spawn();
        server
    }

    pub(crate) fn socket(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    /// The URL for `Cluster::connect` and `redis::Client::open`.
    pub(crate) fn url(&self) -> String {
        format!("redis+unix://{}", self.socket().display())
    }

    fn spawn(&mut self) {
        let _ = std::fs::remove_file(self.socket());
        let log = std::fs::File::create(self.dir.path().join("redis.log")).expect("log file");
        let child = Command::new("redis-server")
            .arg("--port")
            .arg("0")
            .arg("--unixsocket")
            .arg(self.socket())
            .arg("--unixsocketperm")
            .arg("700")
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--save")
            .arg("")
            .arg("--appendonly")
            .arg("no")
            .stdout(Stdio::from(log))
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}); install it (apt-get install -y redis-server; .ci/run does)")
            });
        self.child = Some(child);
        self.wait_until_ready();
    }

    fn wait_until_ready(&mut self) {
        let started = Instant::now();
        loop {
            if let Ok(client) = redis::Client::open(self.url()) {
                if let Ok(mut connection) = client.get_connection() {
                    if redis::cmd("PING")
                        .query::<String>(&mut connection)
                        .as_deref()
                        == Ok("PONG")
                    {
                        return;
                    }
                }
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                let log = std::fs::read_to_string(self.dir.path().join("redis.log"));
                panic!("redis-server exited at start ({status}): {log:?}");
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not answer PING within 10 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server (its data is lost) and starts a fresh one on the same socket.
    pub(crate) fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// A plain synchronous connection for the test's own inspection.
    pub(crate) fn inspect(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .expect("inspection connection")
    }

    /// Every key under `prefix`, sorted.
    pub(crate) fn keys(&self, prefix: &str) -> Vec<String> {
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query(&mut self.inspect())
            .expect("KEYS");
        keys.sort();
        keys
    }

    /// `INFO commandstats` calls of `command` (lower case), 0 if never called.
    pub(crate) fn calls(&self, command: &str) -> u64 {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut self.inspect())
            .expect("INFO");
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse().expect("calls"))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Fails the test if `test` takes more than 30 s (a hang is a failure, not a stall).
pub(crate) async fn bounded<T>(test: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), test)
        .await
        .expect("test took more than 30 s")
}

/// Test settings: short lease, retention and poll, so faults show up quickly.
pub(crate) fn cluster_config(instance: &str, prefix: &str) -> ClusterConfig {
    ClusterConfig {
        instance: instance.to_owned(),
        prefix: prefix.to_owned(),
        lease: Duration::from_millis(400),
        log_retention: Duration::from_millis(200),
        cache_ttl: Duration::from_secs(60),
        cache_capacity: 16,
        follow_poll: Duration::from_millis(100),
        response_timeout: Duration::from_secs(2),
    }
}

/// A cluster handle for `instance` on `server`, with [`cluster_config`].
pub(crate) async fn connect(server: &RedisServer, instance: &str, prefix: &str) -> Cluster {
    Cluster::connect(&server.url(), cluster_config(instance, prefix))
        .await
        .expect("connect")
}

/// After the retention (and lease) of everything finished has passed, only cache
/// entries and the cache index remain under `prefix`.
pub(crate) async fn assert_only_cache_keys(server: &RedisServer, prefix: &str) {
    // The longest expiry of a non-cache key: the generation counter, lease + retention.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let left: Vec<String> = server
        .keys(prefix)
        .into_iter()
        .filter(|k| !k.ends_with(":cache") && *k != format!("{prefix}cache"))
        .collect();
    assert!(left.is_empty(), "keys left behind: {left:?}");
}
