//! `keyrelay demo` starts with no keys and no internet and answers a chat completion.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn demo_starts_and_answers_a_chat_completion() {
    let child = Command::new(env!("CARGO_BIN_EXE_keyrelay"))
        .args(["demo", "--listen", "127.0.0.1:0"])
        .env("KEYRELAY_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Child(child);
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut lines = Vec::new();
    let mut base = None;
    let mut key = None;
    while (base.is_none() || key.is_none()) && Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            if let Some(v) = line.trim().strip_prefix("export OPENAI_BASE_URL=") {
                base = Some(v.to_owned());
            }
            if let Some(v) = line.trim().strip_prefix("export OPENAI_API_KEY=") {
                key = Some(v.to_owned());
            }
            lines.push(line);
        }
    }
    let (base, key) = (
        base.expect("no OPENAI_BASE_URL printed"),
        key.expect("no OPENAI_API_KEY printed"),
    );
    assert!(lines.iter().any(|l| l.contains("curl")), "{lines:?}");
    let client = http_client();
    // Six requests: the 429 key is found, cooled and skipped, and every answer is a success.
    for _ in 0..6 {
        let r = send(
            &client,
            post(
                &format!("{base}/chat/completions"),
                &[("authorization", &format!("Bearer {key}"))],
                CHAT,
            ),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["object"], "chat.completion");
    }
}

#[test]
fn readme_demo_command_picks_the_keyrelay_binary() {
    // `cargo run --release -- demo` at the root needs one default package with one binary.
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let manifest = std::fs::read_to_string(format!("{root}/Cargo.toml")).unwrap();
    assert!(
        manifest.contains("default-members = [\"proxy\"]"),
        "workspace default-members must be the proxy"
    );
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    assert!(readme.contains("cargo run --release -- demo"));
    assert!(
        readme.contains("\n    ./test.sh\n"),
        "README's test command"
    );
    let ci = std::fs::read_to_string(format!("{root}/.ci/run")).unwrap();
    assert!(
        ci.lines().any(|l| l == "./test.sh"),
        ".ci/run must call the README's test command"
    );
    let script = std::fs::read_to_string(format!("{root}/test.sh")).unwrap();
    assert!(
        script.contains("exec cargo nextest run --workspace"),
        "test.sh must run the whole workspace"
    );
}
