//! The admin listener: health, readiness, metrics, key status and actions, reload and drain.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]
#![allow(
    clippy::too_many_lines,
    reason = "each test is one scenario, read top to bottom"
)]

mod support;

use http::Request;
use http_body_util::{BodyExt, Full};
use keyrelay_mock::Reply as Script;
use std::time::{Duration, Instant};
use support::*;

async fn admin(h: &Harness, method: &str, path: &str, token: Option<&str>) -> Reply {
    h.admin(method, path, token).await
}

async fn status(h: &Harness) -> serde_json::Value {
    let r = admin(h, "GET", "/admin/api-keys/status", Some(ADMIN_TOKEN)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn key_state(doc: &serde_json::Value, index: usize) -> String {
    doc["pools"][0]["keys"][index]["state"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let h = Harness::start("").await;
    assert_eq!(admin(&h, "GET", "/healthz", None).await.status, 200);
    let ready = admin(&h, "GET", "/readyz", None).await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["store"], "embedded");
    h.mock
        .set(KEYS[0], Script::rate_limited(&[("retry-after", "30")]));
    for _ in 0..3 {
        assert_eq!(h.chat(CHAT).await.status, 200);
    }
    assert_eq!(
        h.send(post(
            &h.url("/v1/chat/completions"),
            &[("authorization", "Bearer wrong")],
            CHAT
        ))
        .await
        .status,
        401
    );
    let m = admin(&h, "GET", "/metrics", None).await;
    assert_eq!(m.status, 200);
    assert!(m.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = m.text();
    for expected in [
        r#"keyrelay_requests_total{provider="openai",status="2xx",tenant="shared"} 3"#,
        r#"keyrelay_upstream_attempts_total{key="KR_KEY_1",outcome="rate_limited",provider="openai",tenant="shared"} 1"#,
        r#"keyrelay_retries_total{provider="openai",reason="rate_limited",tenant="shared"} 1"#,
        r#"keyrelay_cooldowns_total{provider="openai",reason="rate_limited",tenant="shared"} 1"#,
        r#"keyrelay_key_state{key="KR_KEY_1",provider="openai",state="cooling",tenant="shared"} 1"#,
        r#"keyrelay_key_rpm_limit{key="KR_KEY_2",provider="openai",tenant="shared"} 10000"#,
        r#"keyrelay_client_auth_failures_total{reason="invalid"} 1"#,
        "keyrelay_store_degraded 0",
        "keyrelay_upstream_ttfb_seconds_bucket",
        "keyrelay_proxy_added_seconds_bucket",
        "keyrelay_store_seconds_bucket",
        "keyrelay_in_flight_requests 0",
    ] {
        assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
    }
    assert_no_secret(&text, "/metrics");
}

#[tokio::test]
async fn admin_routes_need_the_admin_token() {
    let h = Harness::start("").await;
    for (method, path) in [
        ("GET", "/admin/api-keys/status"),
        ("POST", "/admin/keys/openai/KR_KEY_1/disable"),
        ("POST", "/admin/reload"),
    ] {
        assert_eq!(admin(&h, method, path, None).await.status, 401, "{path}");
        assert_eq!(
            admin(&h, method, path, Some("wrong")).await.status,
            401,
            "{path}"
        );
        assert_eq!(
            admin(&h, method, path, Some(TOKEN)).await.status,
            401,
            "client token on {path}"
        );
    }
    assert_eq!(
        key_state(&status(&h).await, 0),
        "ready",
        "nothing was disabled"
    );
    // The dashboard page itself needs no token: it asks for one.
    let page = admin(&h, "GET", "/admin", None).await;
    assert_eq!(page.status, 200);
    assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
    let html = page.text();
    assert!(html.starts_with("<!doctype html>"), "{html}");
    assert!(html.contains("<title>keyrelay · keys</title>"), "{html}");
    assert!(
        html.contains(r#"<input id="token" type="password""#),
        "{html}"
    );
}

#[tokio::test]
async fn admin_routes_are_off_without_a_token() {
    let mock = keyrelay_mock::MockUpstream::start().await.unwrap();
    let text = config_text(&mock.url(), "", "").replace("token = \"env:KR_ADMIN\"\n", "");
    let proxy = keyrelay::start(keyrelay::config::Config::from_toml_str(&text, &env()).unwrap())
        .await
        .unwrap();
    let client = http_client();
    let url = format!(
        "http://{}/admin/api-keys/status",
        proxy.admin_addr().unwrap()
    );
    let r = send(
        &client,
        Request::get(&url)
            .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 404);
    assert!(r.text().contains("admin API is off"), "{}", r.text());
    let health = send(
        &client,
        Request::get(format!("http://{}/healthz", proxy.admin_addr().unwrap()))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(health.status, 200);
}

#[tokio::test]
async fn status_shows_a_cooldown_and_reset_clears_it() {
    let h = Harness::start(r#"strategy = "round-robin""#).await;
    h.mock.set(
        KEYS[0],
        Script::rate_limited(&[
            ("retry-after", "30"),
            ("x-ratelimit-remaining-requests", "0"),
        ]),
    );
    assert_eq!(h.chat(CHAT).await.status, 200);
    let doc = status(&h).await;
    assert!(doc["timestamp"].as_str().unwrap().ends_with('Z'));
    let pool = &doc["pools"][0];
    assert_eq!(pool["provider"], "openai");
    assert_eq!(pool["tenant"], "shared");
    assert_eq!(pool["pool"], "openai");
    assert_eq!(pool["capacity"], 30_000);
    assert_eq!(pool["total_requests_this_minute"], 2);
    let k0 = &pool["keys"][0];
    assert_eq!(k0["name"], "KR_KEY_1");
    assert_eq!(k0["fingerprint"], keyrelay_pool::fingerprint(KEYS[0]));
    assert_eq!(k0["state"], "cooling");
    assert_eq!(k0["reason"], "rate_limited");
    assert!(k0["until"].as_str().unwrap().ends_with('Z'));
    assert_eq!(k0["last_status"], 429);
    assert_eq!(k0["remaining_requests"], 0);
    assert_eq!(k0["requests_this_minute"], 1);
    assert_eq!(pool["keys"][1]["state"], "ready");
    assert_no_secret(&doc.to_string(), "the key status");

    let r = admin(
        &h,
        "POST",
        "/admin/keys/openai/KR_KEY_1/reset",
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["state"], "ready");
    assert_eq!(key_state(&status(&h).await, 0), "ready");
    h.mock.set(KEYS[0], Script::Normal);
    let before = h.mock.calls(KEYS[0]);
    for _ in 0..3 {
        assert_eq!(h.chat(CHAT).await.status, 200);
    }
    assert_eq!(h.mock.calls(KEYS[0]), before + 1, "reset key serves again");
    assert_eq!(
        admin(
            &h,
            "POST",
            "/admin/keys/openai/nope/reset",
            Some(ADMIN_TOKEN)
        )
        .await
        .status,
        404
    );
    assert_eq!(
        admin(
            &h,
            "POST",
            "/admin/keys/nope/KR_KEY_1/reset",
            Some(ADMIN_TOKEN)
        )
        .await
        .status,
        404
    );
}

#[tokio::test]
async fn disable_takes_a_key_out_until_enabled_and_readiness_follows() {
    let h = Harness::start("").await;
    let fp = keyrelay_pool::fingerprint(KEYS[1]);
    assert_eq!(
        admin(
            &h,
            "POST",
            &format!("/admin/keys/openai/{fp}/disable"),
            Some(ADMIN_TOKEN)
        )
        .await
        .json()["state"],
        "disabled"
    );
    for _ in 0..6 {
        assert_eq!(h.chat(CHAT).await.status, 200);
    }
    assert_eq!(h.mock.calls(KEYS[1]), 0, "disabled key used");
    for k in ["0", "2"] {
        admin(
            &h,
            "POST",
            &format!("/admin/keys/openai/{k}/disable"),
            Some(ADMIN_TOKEN),
        )
        .await;
    }
    let ready = admin(&h, "GET", "/readyz", None).await;
    assert_eq!(ready.status, 503, "{}", ready.text());
    assert_eq!(ready.json()["providers"]["openai"]["usable_keys"], 0);
    let r = h.chat(CHAT).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"]["code"], "no_usable_key");
    admin(
        &h,
        "POST",
        "/admin/keys/openai/KR_KEY_2/enable",
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(admin(&h, "GET", "/readyz", None).await.status, 200);
    assert_eq!(h.chat(CHAT).await.status, 200);
    assert_eq!(h.mock.calls(KEYS[1]), 1);
}

#[tokio::test]
async fn drain_lets_a_stream_finish_and_refuses_new_connections() {
    let h = Harness::start("").await;
    let req = post(
        &h.url("/v1/chat/completions"),
        &[
            ("authorization", &format!("Bearer {TOKEN}")),
            ("x-mock-chunks", "5"),
            ("x-mock-delay-ms", "1000"),
        ],
        CHAT_STREAM,
    );
    let resp = h.client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let addr = h.proxy.addr();
    let admin_addr = h.proxy.admin_addr().unwrap();
    let live = h.proxy.live().clone();
    let started = Instant::now();
    let Harness {
        proxy,
        mock,
        client,
    } = h;
    let drain = tokio::spawn(proxy.shutdown(Duration::from_secs(30)));
    assert!(eventually(Duration::from_secs(5), || live.draining()).await);
    let ready = send(
        &client,
        Request::get(format!("http://{admin_addr}/readyz"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(
        ready.status, 503,
        "readiness must fail at once when draining"
    );
    let refused = eventually(Duration::from_secs(10), || {
        std::net::TcpStream::connect(addr).is_err()
    })
    .await;
    assert!(refused, "new connections still accepted while draining");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.ends_with("data: [DONE]\n\n"),
        "stream cut by the drain: {text}"
    );
    assert!(started.elapsed() >= Duration::from_secs(3));
    tokio::time::timeout(Duration::from_secs(5), drain)
        .await
        .expect("drain did not finish")
        .unwrap();
    drop(mock);
}

/// A secret file only its owner may read, as keyrelay requires.
fn write_secret(path: &std::path::Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A config file whose keys are `file:` secrets, so the test needs no process environment.
fn write_config(
    dir: &std::path::Path,
    mock_url: &str,
    keys: &[usize],
    extra: &str,
) -> std::path::PathBuf {
    for (i, k) in KEYS.iter().enumerate() {
        write_secret(&dir.join(format!("key{i}")), k);
    }
    write_secret(&dir.join("token"), TOKEN);
    write_secret(&dir.join("admin"), ADMIN_TOKEN);
    let list: Vec<String> = keys
        .iter()
        .map(|i| {
            format!(
                "{{ name = \"k{i}\", secret = \"file:{}\" }}",
                dir.join(format!("key{i}")).display()
            )
        })
        .collect();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"file:{admin}\"\n[[clients]]\nname = \"t\"\ntoken = \"file:{token}\"\n[[providers]]\nname = \"openai\"\nbase_url = \"{mock_url}/v1\"\nstrategy = \"round-robin\"\nkeys = [{keys}]\n{extra}",
        admin = dir.join("admin").display(),
        token = dir.join("token").display(),
        keys = list.join(", "),
    );
    let path = dir.join("keyrelay.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn reload_adds_and_removes_keys_under_load_without_failures() {
    let dir = std::env::temp_dir().join(format!("keyrelay-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mock = keyrelay_mock::MockUpstream::start().await.unwrap();
    let path = write_config(&dir, &mock.url(), &[0, 1], "");
    let proxy = keyrelay::start_from_file(path.clone()).await.unwrap();
    let url = format!("http://{}/v1/chat/completions", proxy.addr());
    let admin_base = format!("http://{}", proxy.admin_addr().unwrap());

    // Steady traffic for the whole test.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let load = tokio::spawn(async move {
        let client = http_client();
        let mut statuses = Vec::new();
        while !flag.load(std::sync::atomic::Ordering::SeqCst) {
            statuses.push(chat_at(&client, &url).await.status.as_u16());
        }
        statuses
    });
    assert!(
        eventually(Duration::from_secs(10), || mock.calls(KEYS[0]) > 3
            && mock.calls(KEYS[1]) > 3)
        .await
    );

    // Add key 2, remove key 0.
    write_config(&dir, &mock.url(), &[1, 2], "");
    let client = http_client();
    let reload = |token: &str| {
        Request::post(format!("{admin_base}/admin/reload"))
            .header("authorization", format!("Bearer {token}"))
            .body(Full::default())
            .unwrap()
    };
    let r = send(&client, reload(ADMIN_TOKEN)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let k0_at_reload = mock.calls(KEYS[0]);
    assert!(
        eventually(Duration::from_secs(10), || mock.calls(KEYS[2]) > 3).await,
        "added key never served"
    );
    assert!(
        mock.calls(KEYS[0]) <= k0_at_reload + 1,
        "removed key kept getting requests"
    );

    // An invalid config is refused, named, and the running one keeps serving.
    std::fs::write(
        &path,
        std::fs::read_to_string(&path).unwrap().replace(
            "strategy = \"round-robin\"",
            "strategy = \"random\"\nrpm = 0",
        ),
    )
    .unwrap();
    let r = send(&client, reload(ADMIN_TOKEN)).await;
    assert_eq!(r.status, 400);
    assert!(
        r.text().contains("providers[0].strategy") && r.text().contains("providers[0].rpm"),
        "{}",
        r.text()
    );
    let k2 = mock.calls(KEYS[2]);
    assert!(
        eventually(Duration::from_secs(10), || mock.calls(KEYS[2]) > k2 + 3).await,
        "old config stopped serving"
    );

    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let statuses = load.await.unwrap();
    assert!(statuses.len() > 20);
    assert!(
        statuses.iter().all(|s| *s == 200),
        "failed requests during reload: {:?}",
        statuses.iter().filter(|s| **s != 200).collect::<Vec<_>>()
    );
    let metrics = send(
        &client,
        Request::get(format!("{admin_base}/metrics"))
            .body(Full::default())
            .unwrap(),
    )
    .await
    .text();
    assert!(
        metrics.contains(r#"keyrelay_config_reloads_total{result="success"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"keyrelay_config_reloads_total{result="failure"} 1"#),
        "{metrics}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn metrics_exposition_passes_promtool() {
    let h = Harness::start("").await;
    h.mock.set(KEYS[2], Script::status(401));
    for _ in 0..4 {
        h.chat(CHAT).await;
    }
    let text = admin(&h, "GET", "/metrics", None).await.text();
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("promtool could not run (Debian package prometheus; ./install-test-deps.sh installs it): {e}")
        });
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
