//! The `tenant` label: a configured tenant's requests count under its name and the provider's,
//! the shared pools under `shared`, and every tenant created at run time under one `runtime`
//! label (their own names only with `[metrics] runtime_tenant_labels`); status shows tenant and
//! provider apart; no secret reaches either.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod support;

use keyrelay::config::{Config, MapEnv};
use keyrelay::Running;
use keyrelay_mock::MockUpstream;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::*;

const ACME_TOKEN: &str = "kr-acme-client-Vq8Lz3Wn6Tb1Xp";
const ACME_KEY: &str = "sk-acme-own-key-Hd4Rk9Mf2Jc7Ys";
/// Keys registered at run time for the runtime tenants `blue` and `green`.
const RUNTIME_KEYS: [(&str, &str, &str); 2] = [
    ("blue", "blue-key", "sk-blue-runtime-Gt5Nq8Wz1Lx4Pv"),
    ("green", "green-key", "sk-green-runtime-Bm3Hs6Kd9Rf2Tc"),
];

/// One keyrelay with the shared pool, the configured tenant `acme` and runtime registration;
/// `extra` is appended to the config (`[metrics]`).
async fn start(mock: &MockUpstream, dir: &std::path::Path, extra: &str) -> Running {
    let text = format!(
        "{}\n[[tenants]]\nname = \"acme\"\n[[tenants.clients]]\nname = \"acme-app\"\n\
         token = \"env:ACME_TOKEN\"\n[[tenants.providers]]\nname = \"openai\"\n\
         keys = \"env:ACME_KEY\"\n\n[registry]\nmaster_key = \"env:KR_MASTER\"\nfile = \"{}\"\n{extra}",
        config_text(&mock.url(), "", ""),
        dir.join("keys.json").display()
    );
    let env: MapEnv = env()
        .with("ACME_TOKEN", ACME_TOKEN)
        .with("ACME_KEY", ACME_KEY);
    let config = Config::from_toml_str(&text, &env).unwrap_or_else(|e| panic!("{e}"));
    keyrelay::start(config).await.unwrap()
}

/// A fresh directory for one test's files.
fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("keyrelay-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn admin_call(p: &Running, method: &str, path: &str, token: &str, body: Value) -> Reply {
    let req = http::Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", p.admin_addr().unwrap()))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_string(),
        )))
        .unwrap();
    send(&http_client(), req).await
}

async fn chat(p: &Running, token: &str) -> Reply {
    let url = format!("http://{}/v1/chat/completions", p.addr());
    let auth = format!("Bearer {token}");
    send(
        &http_client(),
        post(&url, &[("authorization", &auth)], CHAT),
    )
    .await
}

/// Create each runtime tenant with one registered key, and have each client served twice;
/// every token made, for the secrecy check.
async fn two_runtime_tenants_served_twice(p: &Running) -> Vec<String> {
    let mut tokens = Vec::new();
    for (tenant, key, secret) in RUNTIME_KEYS {
        let created = admin_call(
            p,
            "POST",
            "/admin/tenants",
            ADMIN_TOKEN,
            json!({"name": tenant}),
        )
        .await;
        assert_eq!(created.status, 201, "{}", created.text());
        let v = created.json();
        let client = v["client_token"].as_str().unwrap().to_owned();
        let body = json!({"name": key, "provider": "openai", "secret": secret, "rpm": 1000});
        let path = format!("/admin/tenants/{tenant}/keys");
        let added = admin_call(p, "POST", &path, ADMIN_TOKEN, body).await;
        assert_eq!(added.status, 200, "{}", added.text());
        // Served once the pools are rebuilt (at once here; polled with a deadline anyway).
        let deadline = Instant::now() + Duration::from_secs(5);
        while chat(p, &client).await.status != 200 {
            assert!(Instant::now() < deadline, "{tenant} never served");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(chat(p, &client).await.status, 200);
        tokens.push(client);
        tokens.push(v["admin_token"].as_str().unwrap().to_owned());
    }
    tokens
}

async fn metrics(p: &Running) -> String {
    let req = http::Request::get(format!("http://{}/metrics", p.admin_addr().unwrap()))
        .body(Default::default())
        .unwrap();
    send(&http_client(), req).await.text()
}

/// The shared and `acme` clients served once each, the runtime tenants twice each; the
/// exposition, with no secret or fragment of one in it.
async fn served_and_scraped(p: &Running) -> String {
    assert_eq!(chat(p, TOKEN).await.status, 200);
    assert_eq!(chat(p, ACME_TOKEN).await.status, 200);
    let tokens = two_runtime_tenants_served_twice(p).await;
    let text = metrics(p).await;
    assert_no_secret(&text, "/metrics");
    let mut others: Vec<&str> = tokens.iter().map(String::as_str).collect();
    others.extend([ACME_TOKEN, ACME_KEY]);
    others.extend(RUNTIME_KEYS.map(|(_, _, secret)| secret));
    for s in others {
        for f in s
            .as_bytes()
            .windows(12)
            .map(|f| std::str::from_utf8(f).unwrap())
        {
            assert!(!text.contains(f), "fragment {f:?} of a secret in:\n{text}");
        }
    }
    // Tenant and provider never fused into one label any more.
    assert!(
        !text.contains("acme.openai") && !text.contains("runtime.openai"),
        "{text}"
    );
    text
}

fn assert_lines(text: &str, lines: &[&str]) {
    for line in lines {
        assert!(text.contains(line), "missing `{line}` in:\n{text}");
    }
}

#[tokio::test]
async fn tenants_shared_and_runtime_pools_each_have_their_tenant_label() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = scratch("tenant-metrics-default");
    let p = start(&mock, &dir, "").await;
    let text = served_and_scraped(&p).await;
    assert_lines(
        &text,
        &[
            r#"keyrelay_requests_total{provider="openai",status="2xx",tenant="shared"} 1"#,
            r#"keyrelay_requests_total{provider="openai",status="2xx",tenant="acme"} 1"#,
            r#"keyrelay_upstream_attempts_total{key="ACME_KEY",outcome="success",provider="openai",tenant="acme"} 1"#,
            r#"keyrelay_key_state{key="ACME_KEY",provider="openai",state="ready",tenant="acme"} 1"#,
            r#"keyrelay_key_state{key="KR_KEY_1",provider="openai",state="ready",tenant="shared"} 1"#,
            r#"keyrelay_request_duration_seconds_count{provider="openai",tenant="acme"} 1"#,
            // Both runtime tenants add into one series, their keys into one key label.
            r#"keyrelay_requests_total{provider="openai",status="2xx",tenant="runtime"} 4"#,
            r#"keyrelay_upstream_attempts_total{key="runtime",outcome="success",provider="openai",tenant="runtime"} 4"#,
        ],
    );
    // Names chosen at run time (tenants, keys) never become labels, nor per-key gauges.
    for name in ["blue", "green"] {
        assert!(!text.contains(name), "{name} in:\n{text}");
    }
    assert!(
        !text.contains(r#"keyrelay_key_state{key="runtime""#),
        "{text}"
    );

    // Status shows tenant and provider apart, with the pool's name for key actions.
    let status = admin_call(&p, "GET", "/admin/api-keys/status", ADMIN_TOKEN, json!({})).await;
    let doc = status.json();
    let pools = doc["pools"].as_array().unwrap();
    let find = |tenant: &str| {
        pools
            .iter()
            .find(|p| p["tenant"] == tenant)
            .unwrap_or_else(|| panic!("no {tenant} pool in {doc}"))
    };
    for (tenant, pool) in [
        ("shared", "openai"),
        ("acme", "acme.openai"),
        ("blue", "blue.openai"),
    ] {
        let p = find(tenant);
        assert_eq!(
            (&p["provider"], &p["pool"]),
            (&json!("openai"), &json!(pool)),
            "{p}"
        );
    }
    assert_no_secret(&status.text(), "the status document");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn with_the_opt_in_each_runtime_tenant_has_its_own_label() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = scratch("tenant-metrics-opt-in");
    let p = start(&mock, &dir, "\n[metrics]\nruntime_tenant_labels = true\n").await;
    let text = served_and_scraped(&p).await;
    assert_lines(
        &text,
        &[
            r#"keyrelay_requests_total{provider="openai",status="2xx",tenant="shared"} 1"#,
            r#"keyrelay_requests_total{provider="openai",status="2xx",tenant="acme"} 1"#,
            r#"keyrelay_requests_total{provider="openai",status="2xx",tenant="blue"} 2"#,
            r#"keyrelay_requests_total{provider="openai",status="2xx",tenant="green"} 2"#,
            r#"keyrelay_upstream_attempts_total{key="blue-key",outcome="success",provider="openai",tenant="blue"} 2"#,
            r#"keyrelay_key_state{key="green-key",provider="openai",state="ready",tenant="green"} 1"#,
        ],
    );
    assert!(!text.contains(r#"tenant="runtime""#), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn shared_is_reserved_and_the_opt_in_needs_a_registry() {
    let text = |extra: &str| {
        format!(
            "{}\n[[tenants]]\nname = \"shared\"\n[[tenants.clients]]\nname = \"s\"\n\
             token = \"env:ACME_TOKEN\"\n[[tenants.providers]]\nname = \"openai\"\n\
             keys = \"env:ACME_KEY\"\n{extra}",
            config_text("http://127.0.0.1:1", "", "")
        )
    };
    let env = env()
        .with("ACME_TOKEN", ACME_TOKEN)
        .with("ACME_KEY", ACME_KEY);
    let e = Config::from_toml_str(&text("[metrics]\nruntime_tenant_labels = true\n"), &env)
        .unwrap_err()
        .to_string();
    for expected in [
        "tenants[0].name: \"shared\" is reserved",
        "metrics.runtime_tenant_labels: true without [registry]",
    ] {
        assert!(e.contains(expected), "expected `{expected}` in:\n{e}");
    }
    let e = Config::from_toml_str(&text("[metrics]\nruntime_tenant_labels = \"yes\"\n"), &env)
        .unwrap_err()
        .to_string();
    assert!(e.contains("runtime_tenant_labels"), "{e}");
}

#[tokio::test]
async fn no_runtime_tenant_may_be_named_shared_or_runtime() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = scratch("tenant-metrics-reserved");
    let p = start(&mock, &dir, "").await;
    for name in ["shared", "runtime"] {
        let r = admin_call(
            &p,
            "POST",
            "/admin/tenants",
            ADMIN_TOKEN,
            json!({"name": name}),
        )
        .await;
        assert_eq!(r.status, 400, "{name}: {}", r.text());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
