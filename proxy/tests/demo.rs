//! `keyrelay demo` starts with no keys and no internet and answers a chat completion.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod support;

use std::process::Command;
use std::time::Duration;
use support::process::Proc;
use support::*;

#[tokio::test]
async fn demo_starts_and_answers_a_chat_completion() {
    let mut demo = Proc::spawn(
        Command::new(env!("CARGO_BIN_EXE_keyrelay"))
            .args(["demo", "--listen", "127.0.0.1:0"])
            .env("KEYRELAY_LOG", "warn"),
        "cargo builds it",
    );
    let within = Duration::from_secs(20);
    let base = demo
        .wait_line(within, |l| {
            l.trim()
                .strip_prefix("export OPENAI_BASE_URL=")
                .map(str::to_owned)
        })
        .await;
    let key = demo
        .wait_line(within, |l| {
            l.trim()
                .strip_prefix("export OPENAI_API_KEY=")
                .map(str::to_owned)
        })
        .await;
    let lines = demo.stdout();
    assert!(lines.contains("curl"), "{lines}");
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
    const TEST_COMMAND: &str = "./install-test-deps.sh && cargo nextest run --workspace";
    assert!(
        readme.contains(&format!("\n    {TEST_COMMAND}\n")),
        "README's test command"
    );
    let ci = std::fs::read_to_string(format!("{root}/.ci/run")).unwrap();
    assert!(
        ci.lines().any(|l| l == TEST_COMMAND),
        ".ci/run must call the README's test command"
    );
    let script = std::fs::read_to_string(format!("{root}/install-test-deps.sh")).unwrap();
    assert!(
        script.contains("cargo install cargo-nextest --locked"),
        "the install half must bring cargo-nextest"
    );
}
