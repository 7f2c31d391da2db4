//! The official Python SDKs (openai, anthropic, google-genai) through keyrelay, in front of a
//! mock where each key is its own project: files (30 MB), batches and the output download, a
//! 25 MB audio transcription sent chunked (spooled by keyrelay, the mock checks its SHA-256),
//! stored, chained and background responses streamed with `starting_after`, a vector store
//! with a file, Anthropic message batches, Gemini files (the SDK's resumable `files.upload`, whose second
//! step carries no key, then get, list and delete). Twice, each from another starting
//! key, every call succeeding. The SDKs come from `install-test-deps.sh` (a venv under the
//! target directory); without them this test fails, naming the fix.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod support;

use keyrelay::config::Config;
use keyrelay_mock::MockUpstream;
use std::path::PathBuf;
use support::*;

fn venv_python() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    let python = target.join("sdk-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run ./install-test-deps.sh (it installs the Python SDKs there)",
        python.display()
    );
    python
}

fn config(mock: &str) -> String {
    let provider = |name: &str, auth: &str, base: &str| {
        format!(
            "[[providers]]\nname = \"{name}\"\nauth = \"{auth}\"\nbase_url = \"{base}\"\n\
             keys = \"env:KR_KEY_*\"\nstrategy = \"round-robin\"\n"
        )
    };
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nmax_body_bytes = 67108864\n\
         [upstream]\nfirst_byte_timeout = \"60s\"\nidle_timeout = \"60s\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [[clients]]\nname = \"sdk\"\ntoken = \"env:KR_TOKEN\"\n\
         [affinity]\nsecret = \"env:KR_AFFINITY\"\n{}{}{}",
        provider("openai", "bearer", &format!("{mock}/v1")),
        provider("anthropic", "x-api-key", mock),
        provider("gemini", "x-goog-api-key", mock),
    )
}

/// The SDK's token-less Gemini upload step reached the key that started the upload.
fn assert_upload_step_on_its_key(seen: &[keyrelay_mock::Seen]) {
    let step = seen
        .iter()
        .position(|s| s.uri.starts_with("/upload/v1beta/files?upload_id=up"))
        .expect("the SDK's upload step reached the mock");
    let start = seen[..step]
        .iter()
        .rposition(|s| s.uri == "/upload/v1beta/files")
        .expect("the upload's start reached the mock");
    assert_eq!(seen[step].key, seen[start].key);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_sdks_find_every_resource_again_whatever_key_rotation_starts_from() {
    let python = venv_python();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/flows.py");
    let mock = MockUpstream::start().await.unwrap();
    let env = env().with("KR_AFFINITY", "sdk-test-affinity-secret-0123456789");
    let text = config(&mock.url());
    let proxy =
        keyrelay::start(Config::from_toml_str(&text, &env).unwrap_or_else(|e| panic!("{e}")))
            .await
            .unwrap();
    let url = format!("http://{}", proxy.addr());
    let client = http_client();
    let mut upload_keys = Vec::new();
    for run in 0..2 {
        let before = mock.seen().len();
        let out = tokio::process::Command::new(&python)
            .arg(&script)
            .arg(&url)
            .arg(TOKEN)
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "run {run}:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("gemini files ok"), "{stdout}");
        assert!(stdout.contains("openai transcription ok"), "{stdout}");
        let seen = mock.seen();
        let upload = seen[before..]
            .iter()
            .find(|s| s.method == "POST" && s.uri == "/v1/files" && s.body.len() > 30_000_000)
            .expect("the 30 MB upload reached the mock whole");
        upload_keys.push(upload.key.clone());
        assert_upload_step_on_its_key(&seen[before..]);
        assert!(
            seen[before..].iter().all(|s| !s.uri.contains("kr1_")
                && !String::from_utf8_lossy(&s.body[..s.body.len().min(4096)]).contains("kr1_")),
            "a keyrelay id reached the provider"
        );
        // Move the round-robin start on until the next run starts from another key.
        loop {
            let r = chat_at(&client, &format!("{url}/v1/chat/completions")).await;
            assert_eq!(r.status, 200);
            let last = mock.seen().last().unwrap().key.clone().unwrap();
            let at = KEYS.iter().position(|k| *k == last).unwrap();
            if Some(KEYS[(at + 1) % 3].to_owned()) != upload_keys[0] {
                break;
            }
        }
    }
    assert_ne!(
        upload_keys[0], upload_keys[1],
        "both runs started from the same key"
    );
}
