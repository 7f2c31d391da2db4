//! Child processes a test starts (keyrelay binaries, prometheus, chromedriver): their output
//! read as it comes, so a test can wait (with a deadline) for the line where the child says
//! which port it bound, and killed by their PID when dropped.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test support"
)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A running child; stdout and stderr are collected in the background.
pub struct Proc {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    what: String,
}

fn collect(from: impl Read + Send + 'static, into: Arc<Mutex<String>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            let mut text = into.lock().unwrap();
            text.push_str(&line);
            text.push('\n');
        }
    })
}

impl Proc {
    /// Spawn `cmd` with its output piped to us; `hint` says how to install it when missing.
    pub fn spawn(cmd: &mut Command, hint: &str) -> Proc {
        let what = cmd.get_program().to_string_lossy().into_owned();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{what} could not start ({hint}): {e}"));
        let (stdout, stderr) = (Arc::default(), Arc::default());
        let readers = vec![
            collect(child.stdout.take().unwrap(), Arc::clone(&stdout)),
            collect(child.stderr.take().unwrap(), Arc::clone(&stderr)),
        ];
        Proc {
            child,
            stdout,
            stderr,
            readers,
            what,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Poll stdout and stderr, line by line, until `find` picks something out of a line. Fails
    /// when `within` passes or the child exits first.
    pub async fn wait_line<T>(
        &mut self,
        within: Duration,
        mut find: impl FnMut(&str) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + within;
        loop {
            let (out, err) = (self.stdout(), self.stderr());
            if let Some(found) = out.lines().chain(err.lines()).find_map(&mut find) {
                return found;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "{} exited ({status}) before the line awaited:\n{out}\n{err}",
                    self.what
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} never printed the line awaited within {within:?}:\n{out}\n{err}",
                self.what
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Send `sig` (e.g. `-TERM`) to the child by its PID.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {} failed", self.pid());
    }

    /// Wait until the child exits (failing after `within`), then until its output is read whole.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {within:?}",
                self.what
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        for reader in self.readers.drain(..) {
            reader.join().unwrap();
        }
        status
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The proxy and admin addresses out of keyrelay's start-up line,
/// `keyrelay listening on ADDR, admin on ADDR`.
pub fn keyrelay_addrs(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let rest = line.strip_prefix("keyrelay listening on ")?;
    let (proxy, admin) = rest.split_once(", admin on ")?;
    Some((proxy.trim().parse().ok()?, admin.trim().parse().ok()?))
}

/// A keyrelay binary started on `config` from `dir` (its `listen` and admin `listen` on port
/// 0), with the test secrets in its environment and `KEYRELAY_LOG=log`, and the addresses it
/// says it bound.
pub async fn spawn_keyrelay(
    config: &std::path::Path,
    dir: &std::path::Path,
    extra_args: &[&str],
    log: &str,
) -> (Proc, SocketAddr, SocketAddr) {
    let mut proc = Proc::spawn(
        Command::new(env!("CARGO_BIN_EXE_keyrelay"))
            .args(extra_args)
            .arg("--config")
            .arg(config)
            .current_dir(dir)
            .env("KR_TOKEN", super::TOKEN)
            .env("KR_ADMIN", super::ADMIN_TOKEN)
            .env("KR_KEY_1", super::KEYS[0])
            .env("KR_KEY_2", super::KEYS[1])
            .env("KEYRELAY_LOG", log),
        "cargo builds it",
    );
    let (addr, admin) = proc
        .wait_line(Duration::from_secs(20), keyrelay_addrs)
        .await;
    (proc, addr, admin)
}
