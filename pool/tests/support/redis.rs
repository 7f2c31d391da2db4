//! A `redis-server` of the test's own on a free port, for the store contract.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test support")]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Duration, Instant};

/// How long a started `redis-server` has to answer PING.
const READY_DEADLINE: Duration = Duration::from_secs(10);
/// Ports tried before giving up: another process may take a port between our probe and
/// redis-server's bind, and then redis-server exits and the next port is tried.
const ATTEMPTS: usize = 5;

/// A `redis-server` started by a test: loopback only, no persistence, killed by PID on drop.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: PathBuf,
}

impl RedisServer {
    pub async fn start() -> RedisServer {
        for _ in 0..ATTEMPTS {
            if let Some(server) = Self::try_start(free_port()).await {
                return server;
            }
        }
        panic!("redis-server did not start on any of {ATTEMPTS} free ports");
    }

    /// Start on `port` and wait for PING; `None` if it exited first (the port was taken).
    async fn try_start(port: u16) -> Option<RedisServer> {
        let dir =
            std::env::temp_dir().join(format!("keyrelay-contract-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = RedisServer {
            port,
            child: None,
            dir,
        };
        server.spawn().await.then_some(server)
    }

    /// Start redis-server on `self.port` and wait for PING; false if it exited first.
    async fn spawn(&mut self) -> bool {
        let (port, dir) = (self.port, &self.dir);
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("redis-server could not start (is it installed?): {e}"));
        // From here on, dropping the server kills the child.
        self.child = Some(child);
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            let exited = self.child.as_mut().map(|c| c.try_wait().unwrap().is_some());
            if exited != Some(false) {
                self.child = None;
                return false;
            }
            if ping(port).await {
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {port} did not answer PING within {READY_DEADLINE:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL this server (by its PID) and reap it: Redis is gone, with its data.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // Child::kill signals this child's PID only.
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kill and start again, empty, on the same port (the stores are configured with it).
    pub async fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.spawn().await {
            assert!(
                Instant::now() < deadline,
                "redis-server could not get port {} back",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `redis-cli` against this server; its answer as text.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .stderr(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("redis-cli could not run: {e}"));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port nothing listens on right now (it may be taken before it is used: see `ATTEMPTS`).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Whether a Redis on `port` answers PING with PONG.
async fn ping(port: u16) -> bool {
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    if stream.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut answer = [0u8; 7];
    let read = tokio::time::timeout(Duration::from_secs(1), stream.read_exact(&mut answer)).await;
    matches!(read, Ok(Ok(_))) && &answer == b"+PONG\r\n"
}
