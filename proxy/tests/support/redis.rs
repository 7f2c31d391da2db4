//! `redis-server` processes started per test on free ports: single nodes and a 3-master
//! cluster, which tests can kill, freeze (SIGSTOP), pause and restart. A start whose port was
//! taken meanwhile retries on a fresh port; readiness is polled with a deadline.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test support"
)]

use super::ports::candidate_port;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How many fresh ports a start tries before it gives up.
const START_TRIES: usize = 10;

/// The process id of the redis-server answering on `port`, if one answers at once (callers
/// poll).
async fn answering_pid(port: u16) -> Option<u32> {
    let ask = async {
        let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        conn.write_all(b"INFO server\r\n").await.ok()?;
        let mut seen = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = conn.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            seen.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&seen);
            if let Some((_, rest)) = text.split_once("process_id:") {
                if let Some((pid, _)) = rest.split_once("\r\n") {
                    return pid.trim().parse().ok();
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_millis(250), ask)
        .await
        .ok()
        .flatten()
}

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: PathBuf,
    cluster: bool,
    /// More redis-server options (`--name value` pairs), kept across restarts.
    extra: Vec<String>,
}

impl RedisServer {
    /// A single node on a port of its own.
    pub async fn start() -> RedisServer {
        Self::start_fresh(false, &[]).await
    }

    /// A node on a fresh port, tried again on another port while the chosen one turns out
    /// to be taken.
    async fn start_fresh(cluster: bool, extra: &[&str]) -> RedisServer {
        for _ in 0..START_TRIES {
            if let Some(s) = Self::try_start_with(candidate_port(), cluster, extra).await {
                return s;
            }
        }
        panic!("redis-server did not start on any of {START_TRIES} ports");
    }

    /// A node on `port`, or `None` when it could not bind it (taken by someone else).
    pub async fn try_start_on(port: u16, cluster: bool) -> Option<RedisServer> {
        Self::try_start_with(port, cluster, &[]).await
    }

    /// As `try_start_on`, with more redis-server options (`--name value` pairs).
    async fn try_start_with(port: u16, cluster: bool, extra: &[&str]) -> Option<RedisServer> {
        static STARTS: AtomicUsize = AtomicUsize::new(0);
        let n = STARTS.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("keyrelay-redis-{}-{port}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut s = RedisServer {
            port,
            child: None,
            dir,
            cluster,
            extra: extra.iter().map(|a| (*a).to_owned()).collect(),
        };
        s.spawn().await.then_some(s)
    }

    /// Start redis-server on `self.port` and wait until it answers as itself; false when it
    /// exited at start (its port taken) or another process answers there.
    #[allow(
        clippy::too_many_lines,
        reason = "one redis-server start, its arguments listed"
    )]
    async fn spawn(&mut self) -> bool {
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(&self.dir)
        .args(["--logfile", "redis.log"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        if self.cluster {
            cmd.args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
                .args([
                    "--cluster-config-file",
                    &format!("nodes-{}.conf", self.port),
                ]);
        }
        cmd.args(&self.extra);
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("redis-server could not start (is it installed? ./install-test-deps.sh installs it): {e}")
        });
        let pid = child.id();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                self.child = None;
                eprintln!(
                    "redis-server on port {} exited at start ({status}); its log:\n{}",
                    self.port,
                    self.log()
                );
                return false;
            }
            match answering_pid(self.port).await {
                Some(p) if p == pid => return true,
                Some(other) => {
                    eprintln!(
                        "redis-server pid {other}, not ours, answers on port {}",
                        self.port
                    );
                    self.kill();
                    return false;
                }
                None => {}
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer within 20 s; its log:\n{}",
                self.port,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// What redis-server logged (to its `--logfile`).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// `redis-cli` against this server; stdout as text.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .stderr(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("redis-cli could not run: {e}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Fields and values of hash `key`, without the `_` marker keyrelay writes into every
    /// pool hash to keep it a hash table (see `pool/src/redis`).
    pub fn pool_hash(&self, key: &str) -> Vec<(String, String)> {
        let out = self.cli(&["HGETALL", key]);
        let lines: Vec<&str> = out.lines().filter(|l| !l.is_empty()).collect();
        lines
            .chunks(2)
            .filter(|pair| pair[0] != "_")
            .map(|pair| (pair[0].to_owned(), pair[1].trim().to_owned()))
            .collect()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} failed");
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kill and start again on the same port (clients are configured with it). The port is
    /// below the ephemeral range, so only another test's candidate can take it meanwhile, and
    /// only for as long as that test's own start lasts: try a few times.
    pub async fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.spawn().await {
            assert!(
                Instant::now() < deadline,
                "redis-server could not get port {} back; its log:\n{}",
                self.port,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    /// Every key and its value, as text, for leak scans.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        for key in self.cli(&["--scan"]).lines().filter(|l| !l.is_empty()) {
            let kind = self.cli(&["TYPE", key]);
            let value = match kind.trim() {
                "string" => self.cli(&["GET", key]),
                "zset" => self.cli(&["ZRANGE", key, "0", "-1", "WITHSCORES"]),
                "hash" => self.cli(&["HGETALL", key]),
                "list" => self.cli(&["LRANGE", key, "0", "-1"]),
                "set" => self.cli(&["SMEMBERS", key]),
                other => format!("<{other}>"),
            };
            out.push_str(&format!("{key} => {value}\n"));
        }
        out
    }

    /// Calls of `command` in INFO commandstats.
    pub fn calls(&self, command: &str) -> u64 {
        let info = self.cli(&["INFO", "commandstats"]);
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = Command::new("kill")
                .args(["-CONT", &self.pid().to_string()])
                .status();
        }
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A 3-master Redis Cluster on free ports.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub async fn start() -> RedisCluster {
        Self::start_with(&[]).await
    }

    /// A cluster whose nodes take more redis-server options (`--name value` pairs), such as
    /// `["--cluster-require-full-coverage", "no"]`.
    pub async fn start_with(extra: &[&str]) -> RedisCluster {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            nodes.push(RedisServer::start_fresh(true, extra).await);
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .unwrap_or_else(|e| panic!("redis-cli --cluster create could not run: {e}"));
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while !nodes
            .iter()
            .all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        {
            assert!(Instant::now() < deadline, "cluster never reached state ok");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        RedisCluster { nodes }
    }

    pub fn toml(&self) -> String {
        let urls: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("\"{}\"", n.url()))
            .collect();
        format!("cluster = [{}]", urls.join(", "))
    }

    /// The node holding `key`'s slot, by asking each.
    pub fn node_for(&self, key: &str) -> &RedisServer {
        self.nodes
            .iter()
            .find(|n| n.cli(&["EXISTS", key]).trim() == "1")
            .expect("key on no node")
    }

    pub fn dump(&self) -> String {
        self.nodes.iter().map(|n| n.dump()).collect()
    }
}
