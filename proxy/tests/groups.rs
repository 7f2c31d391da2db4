//! Key groups: a request naming a group (`x-keyrelay-group`, or its client's `group`) is served
//! by that group's keys only, in turn, and gets 429 when they all cool even though other keys
//! are ready; an unknown group is refused with 400 before any upstream call; the header never
//! reaches the provider; groups come from key tables (tenant and shared pools) and from keys
//! registered at run time, and show in the listing and the status.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod support;

use keyrelay::config::{Config, MapEnv};
use keyrelay::Running;
use keyrelay_mock::{MockUpstream, Reply as Script};
use support::*;

const B1: &str = "sk-grp-batch1-Hq7Lz2Xw9Pm4Tc";
const B2: &str = "sk-grp-batch2-Vn3Kd8Ry1Fs6Jb";
const I1: &str = "sk-grp-inter1-Wm5Qa4Ze7Gt2Lx";
const U1: &str = "sk-grp-plain1-Pk9Cv6Nh3Ud8Ys";
const ANY: &str = "kr-grp-client-any-4Rt7Yu1Io3";
const BATCH: &str = "kr-grp-client-batch-8Ji2Hg5Fd";
/// A key registered at run time, in group `batch`.
const REGISTERED: &str = "sk-grp-registered-2Bn6Mx9Lq4Wz";

/// Tenant `t0` (falling back to the shared pool, which a grouped request must never do) with
/// keys b1, b2 in `batch`, i1 in `interactive`, u1 in none; its client `t0-any` names no
/// group, `t0-batch` defaults to `batch`.
const TENANT: &str = r#"
[[tenants]]
name = "t0"
fallback = "shared"
[[tenants.clients]]
name = "t0-any"
token = "env:G_ANY"
[[tenants.clients]]
name = "t0-batch"
token = "env:G_BATCH"
group = "batch"
[[tenants.providers]]
name = "openai"
keys = [
  { name = "b1", secret = "env:G_B1", group = "batch" },
  { name = "b2", secret = "env:G_B2", group = "batch" },
  { name = "i1", secret = "env:G_I1", group = "interactive" },
  { name = "u1", secret = "env:G_U1" },
]
"#;

fn group_env() -> MapEnv {
    env()
        .with("G_ANY", ANY)
        .with("G_BATCH", BATCH)
        .with("G_B1", B1)
        .with("G_B2", B2)
        .with("G_I1", I1)
        .with("G_U1", U1)
}

/// The config text: one round-robin OpenAI provider (shared keys KR_KEY_*), tenant `t0`, and
/// `extra`, passed through `edit`.
fn text(mock: &MockUpstream, extra: &str) -> String {
    let base = config_text(&mock.url(), "strategy = \"round-robin\"", "");
    format!("{base}{TENANT}{extra}")
}

async fn start(extra: &str) -> (MockUpstream, Running) {
    let mock = MockUpstream::start().await.unwrap();
    let config = Config::from_toml_str(&text(&mock, extra), &group_env()).unwrap();
    let proxy = keyrelay::start(config).await.unwrap();
    (mock, proxy)
}

/// A chat completion with `token`, naming `group` in the header when given.
async fn ask(proxy: &Running, token: &str, group: Option<&str>) -> Reply {
    let url = format!("http://{}/v1/chat/completions", proxy.addr());
    let auth = format!("Bearer {token}");
    let mut headers = vec![("authorization", auth.as_str())];
    if let Some(g) = group {
        headers.push(("x-keyrelay-group", g));
    }
    send(&http_client(), post(&url, &headers, CHAT)).await
}

fn calls(mock: &MockUpstream, keys: &[&str]) -> Vec<usize> {
    keys.iter().map(|k| mock.calls(k)).collect()
}

#[tokio::test]
async fn a_group_is_served_by_its_own_keys_in_turn_and_its_header_stays_here() {
    let (mock, proxy) = start("").await;
    for _ in 0..20 {
        let r = ask(&proxy, ANY, Some("batch")).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(calls(&mock, &[B1, B2, I1, U1]), [10, 10, 0, 0]);
    for _ in 0..6 {
        assert_eq!(ask(&proxy, ANY, Some("interactive")).await.status, 200);
    }
    assert_eq!(calls(&mock, &[B1, B2, I1, U1]), [10, 10, 6, 0]);
    // No group: every key of the pool serves, as without groups.
    for _ in 0..8 {
        assert_eq!(ask(&proxy, ANY, None).await.status, 200);
    }
    assert_eq!(calls(&mock, &[B1, B2, I1, U1]), [12, 12, 8, 2]);
    assert_eq!(calls(&mock, &KEYS), [0, 0, 0], "never the shared pool");
    // keyrelay's header never reached the provider.
    let seen = mock.seen();
    assert_eq!(seen.len(), 34);
    for s in &seen {
        assert!(
            s.headers.iter().all(|(k, _)| !k.starts_with("x-keyrelay")),
            "{:?}",
            s.headers
        );
    }
}

#[tokio::test]
async fn a_group_whose_keys_all_cool_gets_429_while_the_tenants_other_keys_serve() {
    let (mock, proxy) = start("").await;
    for k in [B1, B2] {
        mock.set(k, Script::rate_limited(&[("retry-after", "60")]));
    }
    // The first request meets both 429s and passes the last one on.
    let first = ask(&proxy, ANY, Some("batch")).await;
    assert_eq!(first.status, 429);
    assert_eq!(calls(&mock, &[B1, B2, I1, U1]), [1, 1, 0, 0]);
    // Now no key of the group is ready: keyrelay answers 429 itself, with no upstream call,
    // though i1, u1 and the shared pool (the tenant falls back to it) are ready.
    for _ in 0..10 {
        let r = ask(&proxy, ANY, Some("batch")).await;
        assert_eq!(r.status, 429, "{}", r.text());
        assert!(r.headers.contains_key("retry-after"));
        assert_eq!(r.json()["error"]["code"], "rate_limit_exceeded");
        // The client's default group is held to the same.
        assert_eq!(ask(&proxy, BATCH, None).await.status, 429);
    }
    assert_eq!(mock.total_calls(), 2);
    // Without a group, or in another, the tenant's ready keys serve.
    for _ in 0..4 {
        assert_eq!(ask(&proxy, ANY, None).await.status, 200);
        assert_eq!(ask(&proxy, ANY, Some("interactive")).await.status, 200);
    }
    assert_eq!(calls(&mock, &[B1, B2]), [1, 1]);
    assert_eq!(mock.calls(I1) + mock.calls(U1), 8);
    assert_eq!(calls(&mock, &KEYS), [0, 0, 0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_holds_on_two_instances_sharing_redis() {
    let redis = support::redis::RedisServer::start().await;
    let mock = MockUpstream::start().await.unwrap();
    let store = format!("\n[store]\nurl = \"{}\"\n", redis.url());
    let text = text(&mock, &store);
    let mut instances = Vec::new();
    for _ in 0..2 {
        let config = Config::from_toml_str(&text, &group_env()).unwrap();
        instances.push(keyrelay::start(config).await.unwrap());
    }
    for i in 0..20 {
        let r = ask(&instances[i % 2], ANY, Some("batch")).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(mock.calls(B1) + mock.calls(B2), 20);
    assert!(mock.calls(B1) > 0 && mock.calls(B2) > 0);
    for k in [B1, B2] {
        mock.set(k, Script::rate_limited(&[("retry-after", "60")]));
    }
    assert_eq!(ask(&instances[0], ANY, Some("batch")).await.status, 429);
    let before = mock.total_calls();
    for i in 0..10 {
        let r = ask(&instances[i % 2], BATCH, None).await;
        assert_eq!(r.status, 429, "{}", r.text());
        assert_eq!(r.json()["error"]["code"], "rate_limit_exceeded");
        assert_eq!(ask(&instances[i % 2], ANY, None).await.status, 200);
    }
    assert_eq!(
        mock.total_calls(),
        before + 10,
        "only the ungrouped requests went out"
    );
    assert_eq!(calls(&mock, &[I1, U1]).iter().sum::<usize>(), 10);
    assert_eq!(calls(&mock, &KEYS), [0, 0, 0]);
}

#[tokio::test]
async fn an_unknown_group_is_refused_with_400_and_no_upstream_call() {
    let (mock, proxy) = start("").await;
    let long = "g".repeat(65);
    for group in ["nightly", "Batch", "a b", "", long.as_str()] {
        let r = ask(&proxy, ANY, Some(group)).await;
        assert_eq!(r.status, 400, "{group:?}: {}", r.text());
        let v = r.json();
        assert_eq!(v["error"]["code"], "unknown_key_group");
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }
    // A shared client names a group of the shared pool, which has none here.
    let r = ask(&proxy, TOKEN, Some("batch")).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(mock.total_calls(), 0, "nothing reached the provider");
}

#[tokio::test]
async fn a_clients_default_group_serves_it_and_the_header_overrides_it() {
    let (mock, proxy) = start("").await;
    for _ in 0..10 {
        assert_eq!(ask(&proxy, BATCH, None).await.status, 200);
    }
    assert_eq!(calls(&mock, &[B1, B2, I1, U1]), [5, 5, 0, 0]);
    for _ in 0..3 {
        assert_eq!(ask(&proxy, BATCH, Some("interactive")).await.status, 200);
    }
    assert_eq!(calls(&mock, &[B1, B2, I1, U1]), [5, 5, 3, 0]);
}

#[tokio::test]
async fn shared_pools_take_groups_from_their_key_tables_too() {
    let mock = MockUpstream::start().await.unwrap();
    let tables = r#"keys = [
  { name = "s1", secret = "env:KR_KEY_1", group = "batch" },
  { name = "s2", secret = "env:KR_KEY_2" },
  { name = "s3", secret = "env:KR_KEY_3", group = "batch" },
]"#;
    let text = text(&mock, "").replace("keys = \"env:KR_KEY_*\"", tables);
    let config = Config::from_toml_str(&text, &group_env()).unwrap();
    let proxy = keyrelay::start(config).await.unwrap();
    for _ in 0..6 {
        assert_eq!(ask(&proxy, TOKEN, Some("batch")).await.status, 200);
    }
    assert_eq!(calls(&mock, &KEYS), [3, 0, 3]);
    assert_eq!(ask(&proxy, TOKEN, Some("interactive")).await.status, 400);
    assert_eq!(mock.total_calls(), 6);
}

/// `method path` on the admin listener with the admin token, and a JSON body when given.
async fn admin(
    proxy: &Running,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> Reply {
    let req = http::Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", proxy.admin_addr().unwrap()))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.map(|b| b.to_string()).unwrap_or_default(),
        )))
        .unwrap();
    send(&http_client(), req).await
}

#[tokio::test]
async fn a_key_registered_in_a_group_serves_in_it_and_is_listed_with_it() {
    let dir = std::env::temp_dir().join(format!("keyrelay-groups-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let registry = format!(
        "\n[registry]\nmaster_key = \"env:KR_MASTER\"\nfile = \"{}\"\n",
        dir.join("keys.json").display()
    );
    let (mock, proxy) = start(&registry).await;
    let key = |group: &str| serde_json::json!({"name": "extra", "provider": "openai", "secret": REGISTERED, "group": group});
    let bad = admin(&proxy, "POST", "/admin/tenants/t0/keys", Some(key("a b"))).await;
    assert_eq!(bad.status, 400, "{}", bad.text());
    let added = admin(&proxy, "POST", "/admin/tenants/t0/keys", Some(key("batch"))).await;
    assert_eq!(added.status, 200, "{}", added.text());
    assert_eq!(added.json()["group"], "batch");
    for _ in 0..9 {
        assert_eq!(ask(&proxy, ANY, Some("batch")).await.status, 200);
    }
    assert_eq!(calls(&mock, &[B1, B2, REGISTERED, I1, U1]), [3, 3, 3, 0, 0]);
    let listed = admin(&proxy, "GET", "/admin/tenants/t0/keys", None)
        .await
        .json();
    assert_eq!(listed["keys"][0]["name"], "extra");
    assert_eq!(listed["keys"][0]["group"], "batch");
    // The status shows every key's group (none: null).
    let status = admin(&proxy, "GET", "/admin/api-keys/status", None)
        .await
        .json();
    let pool = status["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pool"] == "t0.openai")
        .unwrap()
        .clone();
    let groups: Vec<(String, serde_json::Value)> = pool["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["name"].as_str().unwrap().to_owned(), k["group"].clone()))
        .collect();
    let group_of = |n: &str| groups.iter().find(|(k, _)| k == n).unwrap().1.clone();
    assert_eq!(group_of("extra"), "batch");
    assert_eq!(group_of("b1"), "batch");
    assert_eq!(group_of("i1"), "interactive");
    assert!(group_of("u1").is_null());
    // The stored record names its group; its secret is sealed.
    let file = std::fs::read_to_string(dir.join("keys.json")).unwrap();
    assert!(file.contains("\"group\": \"batch\""), "{file}");
    assert!(!file.contains(&REGISTERED[..12]), "{file}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn group_problems_are_named_by_their_paths() {
    let mock_url = "http://127.0.0.1:1";
    let base = config_text(mock_url, "", "");
    let bad = TENANT
        .replace("group = \"batch\" }", "group = \"no spaces\" }")
        .replace(
            "group = \"batch\"\n[[tenants.providers]]",
            "group = \"bad!\"\n[[tenants.providers]]",
        );
    let e = Config::from_toml_str(&format!("{base}{bad}"), &group_env())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tenants[0].providers[0].keys[0].group: must be 1-64 letters"),
        "{e}"
    );
    assert!(e.contains("tenants[0].providers[0].keys[1].group"), "{e}");
    assert!(
        e.contains("tenants[0].clients[1].group: must be 1-64 letters"),
        "{e}"
    );
    // A client's default group no key it can use is in: a typo, unless keys may be
    // registered later.
    let nightly = TENANT.replace(
        "group = \"batch\"\n[[tenants.providers]]",
        "group = \"nightly\"\n[[tenants.providers]]",
    );
    let shared = base.replace(
        "token = \"env:KR_TOKEN\"",
        "token = \"env:KR_TOKEN\"\ngroup = \"batch\"",
    );
    let e = Config::from_toml_str(&format!("{shared}{nightly}"), &group_env())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(
            "tenants[0].clients[1].group: no key this client can use is in group \"nightly\""
        ),
        "{e}"
    );
    assert!(
        e.contains("clients[0].group: no key this client can use is in group \"batch\""),
        "{e}"
    );
    let registry = "\n[registry]\nmaster_key = \"env:KR_MASTER\"\n";
    assert!(Config::from_toml_str(&format!("{base}{nightly}{registry}"), &group_env()).is_ok());
    let text = base.replace(
        "pass_headers = [\"x-mock-*\"]",
        "pass_headers = [\"x-mock-*\", \"x-keyrelay-*\"]",
    );
    let e = Config::from_toml_str(&text, &group_env())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("upstream.pass_headers[1]: \"x-keyrelay-*\" may never be forwarded"),
        "{e}"
    );
}
