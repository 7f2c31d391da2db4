//! Token limits (`tpm`), counted from the provider's own usage reports: a client, a tenant
//! (over all its clients) and two instances on one Redis are refused with 429 once their tokens
//! in the minute reach the limit, with no upstream call; streamed usage counts; a key that used
//! its tokens is skipped for the next one; registration takes and lists a key's `tpm`.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod support;

use keyrelay::config::{Config, MapEnv};
use keyrelay::Running;
use keyrelay_mock::MockUpstream;
use std::time::Duration;
use support::redis::RedisServer;
use support::*;

/// What the mock's chat completion reports using.
const CHAT_TOKENS: u64 = 12;
/// A stream of 5 chunks with OpenAI's usage chunk: 5 prompt + 5 completion tokens.
const STREAM_USAGE: &str = r#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#;
const STREAM_TOKENS: u64 = 10;

const TENANT_KEY: &str = "sk-tenant0-key-Q7wzLm9pR00001";
const TENANT_TOKENS: [&str; 2] = ["kr-tenant0-a-Zt8vHq2n0001", "kr-tenant0-b-Zt8vHq2n0002"];

fn tokens_env() -> MapEnv {
    env()
        .with("TK_0", TENANT_KEY)
        .with("TT_A", TENANT_TOKENS[0])
        .with("TT_B", TENANT_TOKENS[1])
}

/// The shared client `tests` with a `tpm`.
fn client_tpm(text: &str, tpm: u64) -> String {
    text.replace(
        "token = \"env:KR_TOKEN\"\n",
        &format!("token = \"env:KR_TOKEN\"\ntpm = {tpm}\n"),
    )
}

/// A `[store]` section on `redis` with generous timeouts, and `extra` lines.
fn store(redis: &RedisServer, extra: &str) -> String {
    format!(
        "\n[store]\nurl = \"{}\"\n{extra}\ncommand_timeout = \"10s\"\nconnect_timeout = \"10s\"\n",
        redis.url()
    )
}

async fn start(text: &str) -> Running {
    let config = Config::from_toml_str(text, &tokens_env()).unwrap_or_else(|e| panic!("{e}"));
    keyrelay::start(config).await.unwrap()
}

async fn mock() -> MockUpstream {
    let mock = MockUpstream::start().await.unwrap();
    mock.set_recording(true);
    mock
}

/// `body` to `proxy`'s chat route with `token`, read to its end.
async fn ask(proxy: &Running, token: &str, body: &str) -> Reply {
    let url = format!("http://{}/v1/chat/completions", proxy.addr());
    let auth = format!("Bearer {token}");
    send(
        &http_client(),
        post(&url, &[("authorization", &auth)], body),
    )
    .await
}

/// Wait until `proxies` have counted `tokens` in all (the count lands once a body has ended).
async fn counted(proxies: &[&Running], tokens: u64) {
    let sum = || {
        proxies
            .iter()
            .map(|p| p.app().limits().counted())
            .sum::<u64>()
    };
    let landed = eventually(Duration::from_secs(5), || sum() == tokens).await;
    assert!(landed, "counted {} tokens, expected {tokens}", sum());
}

/// keyrelay's own 429 naming `scope`'s token limit, with Retry-After.
fn refused(r: &Reply, scope: &str) {
    assert_eq!(r.status, 429, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["code"], "client_rate_limit_exceeded");
    let message = v["error"]["message"].as_str().unwrap();
    let named = format!("the {scope}'s token limit (tpm) is reached");
    assert!(message.contains(&named), "{message}");
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=120).contains(&retry), "{retry}");
}

#[tokio::test]
async fn a_client_is_served_until_its_tokens_reach_its_tpm_then_refused_without_an_upstream_call() {
    let mock = mock().await;
    let proxy = start(&client_tpm(&config_text(&mock.url(), "", ""), 30)).await;
    // 12 tokens an answer: served at 0, 12 and 24; refused at 36.
    for i in 1..=3 {
        assert_eq!(ask(&proxy, TOKEN, CHAT).await.status, 200);
        counted(&[&proxy], CHAT_TOKENS * i).await;
    }
    for _ in 0..2 {
        refused(&ask(&proxy, TOKEN, CHAT).await, "client");
    }
    assert_eq!(
        mock.seen().len(),
        3,
        "a refused request reached the provider"
    );
}

#[tokio::test]
async fn a_metered_request_asks_for_an_uncompressed_answer_and_others_are_untouched() {
    let mock = mock().await;
    let text = client_tpm(&config_text(&mock.url(), "", ""), 1000)
        + "\n[[clients]]\nname = \"free\"\ntoken = \"env:TT_A\"\n";
    let proxy = start(&text).await;
    let url = format!("http://{}/v1/chat/completions", proxy.addr());
    for token in [TOKEN, TENANT_TOKENS[0]] {
        let auth = format!("Bearer {token}");
        let headers = [
            ("authorization", auth.as_str()),
            ("accept-encoding", "gzip"),
        ];
        assert_eq!(
            send(&http_client(), post(&url, &headers, CHAT))
                .await
                .status,
            200
        );
    }
    let encodings: Vec<Option<String>> = mock
        .seen()
        .iter()
        .map(|s| {
            let h = s.headers.iter().find(|(k, _)| k == "accept-encoding");
            h.map(|(_, v)| v.clone())
        })
        .collect();
    // The limited client's answer is read for its usage; the other one's is not touched.
    assert_eq!(encodings, [None, Some("gzip".to_owned())]);
}

#[tokio::test]
async fn streamed_usage_counts_and_a_stream_without_it_counts_nothing() {
    let mock = mock().await;
    let proxy = start(&client_tpm(&config_text(&mock.url(), "", ""), 20)).await;
    // No usage asked for: nothing to count.
    let bare = ask(&proxy, TOKEN, CHAT_STREAM).await;
    assert_eq!(bare.status, 200);
    assert!(!bare.text().contains("usage"), "{}", bare.text());
    for i in 1..=2 {
        let r = ask(&proxy, TOKEN, STREAM_USAGE).await;
        assert_eq!(r.status, 200);
        assert!(r.text().contains("\"total_tokens\":10"), "{}", r.text());
        counted(&[&proxy], STREAM_TOKENS * i).await;
    }
    refused(&ask(&proxy, TOKEN, STREAM_USAGE).await, "client");
    assert_eq!(mock.seen().len(), 3);
}

#[tokio::test]
async fn a_tenant_tpm_holds_over_all_its_clients() {
    let mock = mock().await;
    let tenant = "\n[[tenants]]\nname = \"t0\"\ntpm = 30\n\
        [[tenants.clients]]\nname = \"t0-a\"\ntoken = \"env:TT_A\"\n\
        [[tenants.clients]]\nname = \"t0-b\"\ntoken = \"env:TT_B\"\n\
        [[tenants.providers]]\nname = \"openai\"\nkeys = \"env:TK_0\"\n";
    let proxy = start(&format!("{}{tenant}", config_text(&mock.url(), "", ""))).await;
    let [a, b] = TENANT_TOKENS;
    for (i, token) in [a, b, a].into_iter().enumerate() {
        assert_eq!(ask(&proxy, token, CHAT).await.status, 200);
        counted(&[&proxy], CHAT_TOKENS * (i as u64 + 1)).await;
    }
    refused(&ask(&proxy, b, CHAT).await, "tenant");
    refused(&ask(&proxy, a, CHAT).await, "tenant");
    // The shared client has no limit.
    assert_eq!(ask(&proxy, TOKEN, CHAT).await.status, 200);
    assert_eq!(mock.calls(TENANT_KEY), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_redis_share_the_token_count() {
    let redis = RedisServer::start().await;
    let mock = mock().await;
    let store = store(&redis, "instances = 2");
    let text = client_tpm(&config_text(&mock.url(), "", ""), 30) + &store;
    let (one, two) = (start(&text).await, start(&text).await);
    let both = [&one, &two];
    // Served on each in turn until their tokens together reach 30.
    for (i, proxy) in [&one, &two, &one].into_iter().enumerate() {
        assert_eq!(ask(proxy, TOKEN, CHAT).await.status, 200);
        counted(&both, CHAT_TOKENS * (i as u64 + 1)).await;
    }
    refused(&ask(&two, TOKEN, CHAT).await, "client");
    refused(&ask(&one, TOKEN, CHAT).await, "client");
    assert_eq!(mock.seen().len(), 3);
    let dump = redis.dump();
    assert!(
        dump.contains("keyrelay:{limit.tests}:client-tpm:tests"),
        "{dump}"
    );
    assert_no_secret(&dump, "the Redis dump");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_tokens_reach_redis_gathered_not_one_call_each() {
    let redis = RedisServer::start().await;
    let mock = mock().await;
    let store = store(&redis, "");
    let proxy = start(&(client_tpm(&config_text(&mock.url(), "", ""), 1_000_000) + &store)).await;
    const ANSWERS: u64 = 40;
    // One after another: answers ending together cannot share a call by chance.
    for _ in 0..ANSWERS {
        let r = ask(&proxy, TOKEN, CHAT).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    counted(&[&proxy], CHAT_TOKENS * ANSWERS).await;
    // Every answer's tokens are in the shared counter...
    let dump = redis.dump();
    let total = format!("=> {}", CHAT_TOKENS * ANSWERS);
    assert!(
        dump.lines()
            .any(|l| l.contains("client-tpm:tests:") && l.ends_with(&total)),
        "{dump}"
    );
    // ...added in a few calls. Each request makes two (its key's acquire, with no leases
    // here, and the limit check); the tokens add at most one every tenth of a second, where
    // each answer made its own (three calls a request).
    let calls = redis.calls("evalsha") + redis.calls("eval");
    assert!(
        calls <= 2 * ANSWERS + 5,
        "{calls} script calls for {ANSWERS} requests"
    );
}

#[tokio::test]
async fn a_key_that_used_its_tokens_is_skipped_for_the_next_key() {
    let mock = mock().await;
    let keys = "keys = [{ secret = \"env:KR_KEY_1\", tpm = 10 }, \"env:KR_KEY_2\"]";
    let text = config_text(&mock.url(), "strategy = \"round-robin\"", "")
        .replace("keys = \"env:KR_KEY_*\"", keys);
    let proxy = start(&text).await;
    // Round-robin reaches the limited key within two requests.
    let mut sent = 0;
    while mock.calls(KEYS[0]) == 0 {
        assert!(sent < 2, "the limited key was never chosen");
        assert_eq!(ask(&proxy, TOKEN, CHAT).await.status, 200);
        sent += 1;
    }
    counted(&[&proxy], CHAT_TOKENS * sent).await;
    let openai = proxy.app().routes().providers()[0].clone();
    let status = openai.pool.status().await;
    assert_eq!(
        status[0].mode.label(),
        "cooling",
        "the key at its tpm: {:?}",
        status[0].mode
    );
    // Counted among the pool's cooldowns, by its reason.
    let metrics = proxy.app().metrics().encode();
    assert!(
        metrics.contains(
            r#"keyrelay_cooldowns_total{provider="openai",reason="tpm",tenant="shared"} 1"#
        ),
        "{metrics}"
    );
    // Round-robin would give it every other request; it is skipped while its tokens slide out.
    let before = mock.calls(KEYS[1]);
    for _ in 0..4 {
        assert_eq!(ask(&proxy, TOKEN, CHAT).await.status, 200);
    }
    assert_eq!(mock.calls(KEYS[0]), 1);
    assert_eq!(mock.calls(KEYS[1]), before + 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_at_its_tpm_on_one_instance_is_skipped_by_the_other_sharing_redis() {
    let redis = RedisServer::start().await;
    let mock = mock().await;
    let keys = "keys = [{ secret = \"env:KR_KEY_1\", tpm = 10 }, \"env:KR_KEY_2\"]";
    let store = store(&redis, "instances = 2");
    let text = config_text(&mock.url(), "strategy = \"round-robin\"", "")
        .replace("keys = \"env:KR_KEY_*\"", keys)
        + &store;
    let (one, two) = (start(&text).await, start(&text).await);
    let mut sent = 0;
    while mock.calls(KEYS[0]) == 0 {
        assert!(sent < 2, "the limited key was never chosen");
        assert_eq!(ask(&one, TOKEN, CHAT).await.status, 200);
        sent += 1;
    }
    counted(&[&one, &two], CHAT_TOKENS * sent).await;
    let before = mock.calls(KEYS[1]);
    for _ in 0..4 {
        assert_eq!(ask(&two, TOKEN, CHAT).await.status, 200);
    }
    assert_eq!(mock.calls(KEYS[0]), 1, "the other instance chose the key");
    assert_eq!(mock.calls(KEYS[1]), before + 4);
    // Its token counter is in Redis under the pool's hash tag, named by fingerprint only.
    let dump = redis.dump();
    assert!(dump.contains("keyrelay:{tpm.openai}:key:"), "{dump}");
    assert_no_secret(&dump, "the Redis dump");
}

#[tokio::test]
async fn registration_takes_a_keys_tpm_and_lists_it() {
    let mock = mock().await;
    let dir = std::env::temp_dir().join(format!("keyrelay-tokens-reg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("keys.json");
    let extra = format!(
        "\n[[tenants]]\nname = \"t0\"\n[[tenants.clients]]\nname = \"t0-a\"\ntoken = \"env:TT_A\"\n\
         [[tenants.providers]]\nname = \"openai\"\nkeys = \"env:TK_0\"\n\
         \n[registry]\nmaster_key = \"env:KR_MASTER\"\nfile = \"{}\"\n",
        file.display()
    );
    let proxy = start(&format!("{}{extra}", config_text(&mock.url(), "", ""))).await;
    let admin = proxy.admin_addr().unwrap();
    let secret = "sk-registered-tpm-Xy7Qp3Lm9Zt2";
    let body = serde_json::json!({"name": "r1", "provider": "openai", "secret": secret, "tpm": 10});
    let req = http::Request::post(format!("http://{admin}/admin/tenants/t0/keys"))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_string(),
        )))
        .unwrap();
    let stored = send(&http_client(), req).await;
    assert_eq!(stored.status, 200, "{}", stored.text());
    let req = http::Request::get(format!("http://{admin}/admin/tenants/t0/keys"))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .body(http_body_util::Full::default())
        .unwrap();
    let listed = send(&http_client(), req).await.json();
    assert_eq!(listed["keys"][0]["name"], "r1", "{listed}");
    assert_eq!(listed["keys"][0]["tpm"], 10, "{listed}");
    // Kept in the sealed record, never with the secret in the clear.
    let kept = std::fs::read_to_string(&file).unwrap();
    assert!(kept.contains("\"tpm\": 10"), "{kept}");
    assert!(!kept.contains(secret));
    // The registered key serves with its limit.
    let pool = proxy.app().tenants().registry().unwrap().pool("t0.openai");
    let key = pool
        .as_ref()
        .map(|p| p.pool.spec().keys.iter().find(|k| k.name == "r1"));
    assert_eq!(key.flatten().and_then(|k| k.tpm), Some(10));
}

#[test]
fn every_tpm_problem_is_named_by_its_path() {
    let text = client_tpm(&config_text("http://127.0.0.1:1", "tpm = -5", ""), 0)
        .replace(
            "keys = \"env:KR_KEY_*\"",
            "keys = [{ secret = \"env:KR_KEY_1\", tpm = \"many\" }, { secret = \"env:KR_KEY_2\", tpm = 0 }]",
        )
        + "\n[[tenants]]\nname = \"t0\"\ntpm = 0\n\
           [[tenants.clients]]\nname = \"t0-a\"\ntoken = \"env:TT_A\"\ntpm = 4294967296\n\
           [[tenants.providers]]\nname = \"openai\"\ntpm = 0\nkeys = \"env:TK_0\"\n";
    let e = Config::from_toml_str(&text, &tokens_env())
        .unwrap_err()
        .to_string();
    for expected in [
        "clients[0].tpm: must be a whole number from 1",
        "providers[0].tpm: must be a whole number from 1 to 4294967295, got -5",
        "providers[0].keys[0].tpm: must be a whole number",
        "providers[0].keys[1].tpm: must be a whole number from 1",
        "tenants[0].tpm: must be a whole number from 1",
        "tenants[0].clients[0].tpm: must be a whole number from 1 to 4294967295, got 4294967296",
        "tenants[0].providers[0].tpm: must be a whole number from 1",
    ] {
        assert!(e.contains(expected), "expected `{expected}` in:\n{e}");
    }
    // Valid everywhere: loaded, and each key carries its own or its provider's limit.
    let text = client_tpm(&config_text("http://127.0.0.1:1", "tpm = 500", ""), 100).replace(
        "keys = \"env:KR_KEY_*\"",
        "keys = [{ secret = \"env:KR_KEY_1\", tpm = 50 }, \"env:KR_KEY_2\"]",
    );
    let tenant = "\n[[tenants]]\nname = \"t0\"\ntpm = 900\n\
        [[tenants.clients]]\nname = \"t0-a\"\ntoken = \"env:TT_A\"\ntpm = 90\n\
        [[tenants.providers]]\nname = \"openai\"\ntpm = 9\nkeys = \"env:TK_0\"\n";
    let c =
        Config::from_toml_str(&(text + tenant), &tokens_env()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.clients[0].tpm, Some(100));
    let tpm: Vec<Option<u32>> = c.providers[0].keys.iter().map(|k| k.tpm).collect();
    assert_eq!(tpm, [Some(50), Some(500)]);
    assert_eq!(c.tenants[0].pools[0].keys[0].tpm, Some(9));
    // `keyrelay check` shows each token limit that is set.
    let lines = keyrelay::tenants::check::lines(&c).join("\n");
    assert!(
        lines.contains("tenant t0 (fallback none, rpm none, tpm 900)"),
        "{lines}"
    );
    assert!(
        lines.contains("clients: t0-a (rpm none, tpm 90)"),
        "{lines}"
    );
    assert!(lines.contains("weight 1  tpm 9"), "{lines}");
}
