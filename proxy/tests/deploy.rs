//! The docker-compose topology as plain processes: two keyrelay binaries on one Redis, scraped
//! by a real Prometheus, queried through its HTTP API. Plus the compose configs themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]
#![allow(
    clippy::too_many_lines,
    reason = "each test is one scenario, read top to bottom"
)]

mod support;

use http::Request;
use http_body_util::Full;
use keyrelay::config::{Config, MapEnv};
use serde_json::Value;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};
use support::process::{spawn_keyrelay, Proc};
use support::redis::RedisServer;
use support::*;

#[test]
fn deploy_configs_are_valid() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy");
    let live = std::fs::read_to_string(format!("{root}/keyrelay.toml")).unwrap();
    let env = MapEnv::default()
        .with("KEYRELAY_TOKEN_MY_APP", "t")
        .with("KEYRELAY_ADMIN_TOKEN", "a")
        .with("OPENAI_API_KEY_1", "k1");
    let c = Config::from_toml_str(&live, &env).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.store.unwrap().display, "redis:6379");
    let demo = std::fs::read_to_string(format!("{root}/demo.toml")).unwrap();
    let env = MapEnv::default()
        .with("KEYRELAY_DEMO_TOKEN", "t")
        .with("KEYRELAY_ADMIN_TOKEN", "a")
        .with("DEMO_KEY_1", "demo-key-1")
        .with("DEMO_KEY_2", "demo-key-2")
        .with("DEMO_KEY_3", "demo-key-3");
    let c = Config::from_toml_str(&demo, &env).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.providers[0].keys.len(), 3);
}

async fn get(url: &str) -> Option<Reply> {
    let req = Request::get(url).body(Full::default()).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(2), http_client().request(req))
        .await
        .ok()?
        .ok()?;
    let (parts, body) = resp.into_parts();
    let body = http_body_util::BodyExt::collect(body)
        .await
        .ok()?
        .to_bytes();
    Some(Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// Poll `admin`'s readiness until it names `store` as its store.
async fn wait_store(admin: SocketAddr, store: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let seen = get(&format!("http://{admin}/readyz"))
            .await
            .map(|r| r.json()["store"].clone());
        if seen == Some(Value::from(store)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{admin} never on {store} state: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_ok(url: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        if get(url).await.is_some_and(|r| r.status == 200) {
            return;
        }
        assert!(Instant::now() < deadline, "{url} never answered 200");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn two_instances_on_one_redis_scraped_by_prometheus() {
    let redis = RedisServer::start().await;
    let mock = keyrelay_mock::MockUpstream::start().await.unwrap();
    let dir = std::env::temp_dir().join(format!("keyrelay-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut instances = Vec::new();
    let mut admin_addrs = Vec::new();
    for i in 0..2 {
        // A store timeout far above a busy machine's stalls: every request must count in Redis.
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"env:KR_ADMIN\"\n[[clients]]\nname = \"t\"\ntoken = \"env:KR_TOKEN\"\n[[providers]]\nname = \"openai\"\nbase_url = \"{}/v1\"\nkeys = \"env:KR_KEY_*\"\n[store]\nurl = \"{}\"\ncommand_timeout = \"2s\"\nconnect_timeout = \"2s\"\n",
            mock.url(),
            redis.url()
        );
        let path = dir.join(format!("k{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let (proc, addr, admin) = spawn_keyrelay(&path, &dir, &[], "warn").await;
        instances.push((proc, addr));
        admin_addrs.push(admin);
    }
    for admin in &admin_addrs {
        wait_store(*admin, "shared").await;
    }
    let client = http_client();
    for (i, (_, addr)) in instances.iter().enumerate() {
        for _ in 0..=i {
            let url = format!("http://{addr}/v1/chat/completions");
            assert_eq!(chat_at(&client, &url).await.status, 200);
        }
    }

    let targets: Vec<String> = admin_addrs.iter().map(|a| format!("\"{a}\"")).collect();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: keyrelay\n    static_configs:\n      - targets: [{}]\n", targets.join(", ")),
    )
    .unwrap();
    // Prometheus binds port 0 and logs the port it got.
    let mut prometheus = Proc::spawn(
        Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg("--web.listen-address=127.0.0.1:0"),
        "Debian package prometheus; ./install-test-deps.sh installs it",
    );
    let prom: SocketAddr = prometheus
        .wait_line(Duration::from_secs(30), |l| {
            let (_, rest) = l.split_once(r#"msg="Listening on" address="#)?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .await;
    wait_ok(&format!("http://{prom}/-/ready"), Duration::from_secs(30)).await;

    // {status="2xx",tenant="shared",provider="openai"}: the shared pool's series, by label.
    let query = format!(
        "http://{prom}/api/v1/query?query=keyrelay_requests_total%7Bstatus%3D%222xx%22%2Ctenant%3D%22shared%22%2Cprovider%3D%22openai%22%7D"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let values = loop {
        if let Some(r) = get(&query).await {
            let v = r.json();
            let results = v["data"]["result"].as_array().cloned().unwrap_or_default();
            if results.len() == 2 {
                let mut values: Vec<String> = results
                    .iter()
                    .map(|s| s["value"][1].as_str().unwrap().to_owned())
                    .collect();
                values.sort();
                break values;
            }
        }
        assert!(
            Instant::now() < deadline,
            "prometheus never scraped both instances"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(values, ["1", "2"], "per-instance request counts as scraped");
    // Both instances share one pool: Redis counted all three requests.
    let counted: usize = redis
        .pool_hash("keyrelay:{openai}:b")
        .iter()
        .map(|(_, n)| n.parse::<usize>().unwrap())
        .sum();
    assert_eq!(counted, 3);
    drop(instances);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn binary_reloads_on_sighup_drains_on_sigterm_and_logs_json() {
    let mock = keyrelay_mock::MockUpstream::start().await.unwrap();
    let dir = std::env::temp_dir().join(format!("keyrelay-signals-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = |keys: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_grace = \"10s\"\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"env:KR_ADMIN\"\naudit_file = \"{}\"\n[[clients]]\nname = \"signals-app\"\ntoken = \"env:KR_TOKEN\"\n[[providers]]\nname = \"openai\"\nbase_url = \"{}/v1\"\nkeys = \"{keys}\"\n",
            dir.join("audit.jsonl").display(),
            mock.url()
        )
    };
    let path = dir.join("keyrelay.toml");
    std::fs::write(&path, config("env:KR_KEY_1")).unwrap();
    let (mut proc, addr, admin) = spawn_keyrelay(&path, &dir, &["--log-json"], "info").await;
    wait_ok(&format!("http://{admin}/readyz"), Duration::from_secs(20)).await;
    let status = || async {
        let req = Request::get(format!("http://{admin}/admin/api-keys/status"))
            .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
            .body(Full::default())
            .unwrap();
        send(&http_client(), req).await.json()["pools"][0]["keys"]
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(status().await, 1);
    let url = format!("http://{addr}/v1/chat/completions");
    assert_eq!(chat_at(&http_client(), &url).await.status, 200);

    std::fs::write(&path, config("env:KR_KEY_*")).unwrap();
    proc.signal("-HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while status().await != 2 {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not reload the config"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The reload by signal is one audit line (written just after the swap).
    let audit_file = dir.join("audit.jsonl");
    let written = || std::fs::read_to_string(&audit_file).is_ok_and(|t| t.ends_with('\n'));
    assert!(eventually(Duration::from_secs(10), written).await);
    let audit = std::fs::read_to_string(&audit_file).unwrap();
    let lines: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{audit}");
    assert_eq!(lines[0]["who"], "signal:SIGHUP");
    assert_eq!(lines[0]["action"], "reload");
    assert_eq!(lines[0]["result"], "reloaded");

    // A slow stream is in flight when SIGTERM arrives: it finishes, then the process exits 0.
    let stream = post(
        &url,
        &[
            ("authorization", &format!("Bearer {TOKEN}")),
            ("x-mock-chunks", "3"),
            ("x-mock-delay-ms", "700"),
        ],
        CHAT_STREAM,
    );
    let resp = http_client().request(stream).await.unwrap();
    proc.signal("-TERM");
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert!(
        String::from_utf8_lossy(&body).ends_with("data: [DONE]\n\n"),
        "stream cut by the drain"
    );
    let code = proc.wait_exit(Duration::from_secs(15)).await.code();
    assert_eq!(code, Some(0));

    let stderr = proc.stderr();
    let access: Vec<Value> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "keyrelay::access")
        .collect();
    assert_eq!(access.len(), 2, "one access line per request:\n{stderr}");
    let f = &access[0]["fields"];
    assert_eq!(f["client"], "signals-app");
    assert_eq!(f["provider"], "openai");
    assert_eq!(f["key"], "KR_KEY_1");
    assert_eq!(f["status"], 200);
    assert_eq!(f["attempts"], 1);
    assert!(f["id"].is_string() && f["bytes"].as_u64().unwrap() > 0 && f["upstream_ms"].is_u64());
    assert_no_secret(&stderr, "the logs");
    assert!(stderr.contains("configuration reloaded"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_redis_outage_is_logged_once_not_per_request() {
    let mut redis = RedisServer::start().await;
    let mock = keyrelay_mock::MockUpstream::start().await.unwrap();
    let dir = std::env::temp_dir().join(format!("keyrelay-outage-log-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("k.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[[clients]]\nname = \"t\"\ntoken = \"env:KR_TOKEN\"\n[[providers]]\nname = \"openai\"\nbase_url = \"{}/v1\"\nkeys = \"env:KR_KEY_*\"\n[store]\nurl = \"{}\"\ncommand_timeout = \"2s\"\nconnect_timeout = \"2s\"\nprobe_interval = \"50ms\"\nprobe_max_interval = \"200ms\"\n",
            mock.url(),
            redis.url()
        ),
    )
    .unwrap();
    let (mut proc, addr, admin) = spawn_keyrelay(&path, &dir, &[], "warn,keyrelay_pool=info").await;
    wait_ok(&format!("http://{admin}/readyz"), Duration::from_secs(20)).await;
    let url = format!("http://{addr}/v1/chat/completions");
    let client = http_client();
    let store = || async {
        get(&format!("http://{admin}/readyz"))
            .await
            .map(|r| r.json()["store"].clone())
    };
    // On shared state first (store timeouts far above a busy machine's stalls keep it there),
    // so the outage below is the one and only.
    wait_store(admin, "shared").await;
    redis.kill();
    for _ in 0..30 {
        assert_eq!(chat_at(&client, &url).await.status, 200);
    }
    assert_eq!(store().await, Some(Value::from("degraded")));
    redis.restart().await;
    wait_store(admin, "shared").await;
    assert_eq!(chat_at(&client, &url).await.status, 200);
    proc.signal("-TERM");
    assert_eq!(
        proc.wait_exit(Duration::from_secs(15)).await.code(),
        Some(0)
    );
    let stderr = proc.stderr();
    assert_eq!(
        stderr.matches("redis store unavailable").count(),
        1,
        "{stderr}"
    );
    assert_eq!(stderr.matches("redis is back").count(), 1, "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
