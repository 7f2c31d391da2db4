//! `redis-server` processes started per test on free ports: single nodes and a 3-master
//! cluster, which tests can kill, freeze (SIGSTOP), pause and restart.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test support"
)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port that is free now, and whose cluster bus port (+10000) is free too.
pub fn free_port() -> u16 {
    for _ in 0..200 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
    panic!("no free port pair found");
}

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: PathBuf,
    cluster: bool,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        Self::start_on(free_port(), false)
    }

    pub fn start_on(port: u16, cluster: bool) -> RedisServer {
        let dir =
            std::env::temp_dir().join(format!("keyrelay-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut s = RedisServer {
            port,
            child: None,
            dir,
            cluster,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
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
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        if self.cluster {
            cmd.args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
                .args([
                    "--cluster-config-file",
                    &format!("nodes-{}.conf", self.port),
                ]);
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("redis-server could not start (is it installed? .ci/run installs it): {e}")
        });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.cli(&["PING"]).trim() != "PONG" {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "redis-server on port {} exited at start: {status}",
                    self.port
                );
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
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

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
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
    pub fn start() -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| RedisServer::start_on(free_port(), true))
            .collect();
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
            std::thread::sleep(Duration::from_millis(50));
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
