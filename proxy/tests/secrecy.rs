//! Secrecy: no request without a valid token reaches a provider, and no provider key, client
//! token or admin token (nor a 12-character fragment of one) shows anywhere keyrelay writes:
//! logs at trace level, answers and their headers, error bodies, `/metrics`, admin output,
//! `keyrelay check`, or Redis.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::too_many_lines,
    reason = "tests; a sweep reads best whole"
)]

mod support;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::Full;
use keyrelay_mock::{Fault, MockUpstream, Reply};
use std::time::Duration;
use support::process::spawn_keyrelay;
use support::redis::RedisServer;
use support::*;

/// Every way a client can present a credential, each with a wrong one.
fn wrong_credentials(url: &str, i: usize) -> http::Request<Full<Bytes>> {
    let wrong = format!("{TOKEN}{i}");
    let (url, headers): (String, Vec<(&str, String)>) = match i % 6 {
        0 => (
            url.to_owned(),
            vec![("authorization", format!("Bearer {wrong}"))],
        ),
        1 => (url.to_owned(), vec![("x-api-key", wrong)]),
        2 => (url.to_owned(), vec![("x-goog-api-key", wrong)]),
        3 => (url.to_owned(), vec![("api-key", wrong)]),
        4 => (format!("{url}?key={wrong}"), vec![]),
        _ => (url.to_owned(), vec![]),
    };
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    post(&url, &headers, CHAT)
}

#[tokio::test]
async fn ten_thousand_requests_without_a_valid_token_reach_no_provider() {
    let h = Harness::start("").await;
    let url = h.url("/v1/chat/completions");
    let statuses: Vec<http::StatusCode> = futures_util::stream::iter(0..10_000)
        .map(|i| {
            let client = h.client.clone();
            let req = wrong_credentials(&url, i);
            async move { send(&client, req).await.status }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert!(
        statuses.iter().all(|s| *s == 401),
        "a request without a valid token got through"
    );
    assert_eq!(h.mock.total_calls(), 0);
}

/// The admin API, with the admin token.
async fn admin(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
    admin: std::net::SocketAddr,
    method: &str,
    path: &str,
) -> support::Reply {
    let req = http::Request::builder()
        .method(method)
        .uri(format!("http://{admin}{path}"))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    send(client, req).await
}

#[tokio::test]
async fn no_secret_anywhere_keyrelay_writes() {
    let redis = RedisServer::start().await;
    let mock = MockUpstream::start().await.unwrap();
    // Key 0 is refused by the provider with a body that echoes it; key 1 is refused one route
    // with a message; both are the kind of answer that carries a key back.
    mock.set(
        KEYS[0],
        Reply::Fixed {
            status: 401,
            headers: vec![],
            body: format!(r#"{{"error":{{"message":"Incorrect API key provided: {}","code":"invalid_api_key"}}}}"#, KEYS[0]),
        },
    );
    mock.set(
        KEYS[1],
        Reply::Fault(Fault::Forbidden {
            path_prefix: "/v1/fine_tuning".into(),
        }),
    );
    let dir = std::env::temp_dir().join(format!("keyrelay-secrecy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("keyrelay.toml");
    let text = format!(
        "{}\n[store]\nurl = \"{}\"\n",
        config_text(&mock.url(), "", ""),
        redis.url()
    );
    std::fs::write(&config, &text).unwrap();
    let (mut proc, addr, admin_addr) =
        spawn_keyrelay(&config, &dir, &["--log-json"], "trace").await;
    let client = http_client();
    let mut seen = String::new();
    let mut keep = |r: &support::Reply| {
        seen.push_str(&r.text());
        for (k, v) in &r.headers {
            seen.push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
        }
    };
    let url = format!("http://{addr}/v1/chat/completions");
    let bearer = format!("Bearer {TOKEN}");
    for _ in 0..4 {
        keep(&send(&client, post(&url, &[("authorization", &bearer)], CHAT)).await);
        keep(
            &send(
                &client,
                post(&url, &[("authorization", &bearer)], CHAT_STREAM),
            )
            .await,
        );
    }
    let tuning = format!("http://{addr}/v1/fine_tuning/jobs");
    keep(&send(&client, post(&tuning, &[("authorization", &bearer)], CHAT)).await);
    for i in 0..12 {
        keep(&send(&client, wrong_credentials(&url, i)).await);
    }
    for (method, path) in [
        ("GET", "/admin/api-keys/status"),
        ("GET", "/metrics"),
        ("GET", "/readyz"),
        ("POST", "/admin/keys/openai/KR_KEY_2/disable"),
        ("POST", "/admin/keys/openai/KR_KEY_2/enable"),
        ("GET", "/admin"),
    ] {
        keep(&admin(&client, admin_addr, method, path).await);
    }
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_keyrelay"))
        .args(["check", "--config"])
        .arg(&config)
        .current_dir(&dir)
        .env("KR_TOKEN", TOKEN)
        .env("KR_ADMIN", ADMIN_TOKEN)
        .env("KR_KEY_1", KEYS[0])
        .env("KR_KEY_2", KEYS[1])
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    proc.signal("-TERM");
    proc.wait_exit(Duration::from_secs(10)).await;
    let logs = format!("{}{}", proc.stdout(), proc.stderr());
    assert!(
        logs.contains("TRACE") || logs.contains("\"level\":\"TRACE\""),
        "trace logging was on"
    );
    assert!(
        logs.contains("\"status\":401") || logs.contains("status=401"),
        "the log has the refusals"
    );
    assert!(
        mock.calls(KEYS[0]) >= 1,
        "the key-echoing refusal was exercised"
    );
    assert!(
        mock.seen()
            .iter()
            .any(|r| r.uri.starts_with("/v1/fine_tuning")),
        "the refused route was exercised"
    );
    assert_no_secret(&seen, "answers, headers and admin output");
    assert_no_secret(&logs, "keyrelay's log at trace level");
    assert_no_secret(
        &String::from_utf8_lossy(&check.stdout),
        "keyrelay check's output",
    );
    assert_no_secret(
        &String::from_utf8_lossy(&check.stderr),
        "keyrelay check's log",
    );
    let dump = redis.dump();
    assert!(
        dump.contains("keyrelay:{openai}"),
        "the sweep used Redis: {dump}"
    );
    assert_no_secret(&dump, "a full Redis dump");
    let _ = std::fs::remove_dir_all(&dir);
}
