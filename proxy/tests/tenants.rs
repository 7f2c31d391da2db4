//! Tenants: each tenant's clients are served only from that tenant's keys (under load, on two
//! instances sharing Redis, streaming and not), shared clients only from the shared pool; a
//! tenant whose keys are all cooling gets 429 unless it may fall back to the shared pool; the
//! `[[tenants]]` section is checked with every problem named by its path.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod support;

use futures_util::future::join_all;
use keyrelay::config::{Config, MapEnv};
use keyrelay::Running;
use keyrelay_mock::{MockUpstream, Reply as Script};
use std::collections::HashMap;
use support::redis::RedisServer;
use support::*;

/// One tenant of a test world: its name, keys and client tokens.
struct Spec {
    name: String,
    keys: Vec<String>,
    tokens: Vec<String>,
    fallback: bool,
    /// The tenant's `rpm`, and each of its clients'.
    rpm: Option<u32>,
    client_rpm: Option<u32>,
}

const FP_SECRET: &str = "fp-secret-for-tenant-tests-0123456789";

/// `tenants` tenants, each with `clients` clients and `keys` keys of its own.
fn world(tenants: usize, clients: usize, keys: usize) -> Vec<Spec> {
    (0..tenants)
        .map(|t| Spec {
            name: format!("t{t}"),
            keys: (0..keys)
                .map(|k| format!("sk-ten{t}-key{k}-Q7wz{t}x{k}Lm9pR"))
                .collect(),
            tokens: (0..clients)
                .map(|c| format!("kr-ten{t}-client{c}-Zt8v{t}y{c}Hq2n"))
                .collect(),
            fallback: false,
            rpm: None,
            client_rpm: None,
        })
        .collect()
}

fn world_env(specs: &[Spec]) -> MapEnv {
    let mut env = env().with("KR_FP", FP_SECRET);
    for (t, s) in specs.iter().enumerate() {
        for (k, key) in s.keys.iter().enumerate() {
            env = env.with(&format!("TK_{t}_{k}"), key);
        }
        for (c, token) in s.tokens.iter().enumerate() {
            env = env.with(&format!("TT_{t}_{c}"), token);
        }
    }
    env
}

/// The tenants' sections of a config.
fn tenants_toml(specs: &[Spec]) -> String {
    let mut out = String::new();
    for (t, s) in specs.iter().enumerate() {
        let fallback = if s.fallback { "shared" } else { "none" };
        out.push_str(&format!(
            "\n[[tenants]]\nname = \"{}\"\nfallback = \"{fallback}\"\n",
            s.name
        ));
        if let Some(rpm) = s.rpm {
            out.push_str(&format!("rpm = {rpm}\n"));
        }
        for c in 0..s.tokens.len() {
            out.push_str(&format!(
                "[[tenants.clients]]\nname = \"{}-c{c}\"\ntoken = \"env:TT_{t}_{c}\"\n",
                s.name
            ));
            if let Some(rpm) = s.client_rpm {
                out.push_str(&format!("rpm = {rpm}\n"));
            }
        }
        out.push_str(&format!(
            "[[tenants.providers]]\nname = \"openai\"\nkeys = \"env:TK_{t}_*\"\n"
        ));
    }
    out
}

/// Start `n` instances in front of one mock, on `store` (TOML lines of `[store]`) when given.
async fn start(
    specs: &[Spec],
    n: usize,
    store: Option<&str>,
    extra: &str,
) -> (MockUpstream, Vec<Running>) {
    let extra = extra.to_owned();
    start_edit(specs, n, store, &move |t| format!("{t}{extra}")).await
}

/// As `start`, with the config text passed through `edit` before it is loaded.
async fn start_edit(
    specs: &[Spec],
    n: usize,
    store: Option<&str>,
    edit: &dyn Fn(String) -> String,
) -> (MockUpstream, Vec<Running>) {
    let mock = MockUpstream::start().await.unwrap();
    mock.set_recording(true);
    // Generous upstream timeouts: 1,500 requests at once on a busy two-core machine.
    // A slow machine must not time out a connection waiting for its turn.
    let server = "fingerprint_secret = \"env:KR_FP\"\nheader_read_timeout = \"120s\"\nbody_read_timeout = \"120s\"";
    let mut text = config_text(&mock.url(), "", server)
        .replace(
            "first_byte_timeout = \"5s\"",
            "first_byte_timeout = \"120s\"",
        )
        .replace(
            "idle_timeout = \"5s\"",
            "idle_timeout = \"120s\"\nconnect_timeout = \"60s\"",
        );
    text.push_str(&tenants_toml(specs));
    if let Some(store) = store {
        text.push_str(&format!(
            "\n[store]\n{store}\ncommand_timeout = \"10s\"\nconnect_timeout = \"10s\"\n"
        ));
    }
    let text = edit(text);
    let env = world_env(specs);
    let mut instances = Vec::new();
    for _ in 0..n {
        let config = Config::from_toml_str(&text, &env).unwrap_or_else(|e| panic!("{e}"));
        instances.push(keyrelay::start(config).await.unwrap());
    }
    (mock, instances)
}

/// A chat completion (streamed or not) with `token`, marked with `who` for the mock's record;
/// sent on a task of its own, so many run in parallel.
async fn ask(proxy: &Running, token: &str, who: &str, stream: bool) -> Reply {
    let url = format!("http://{}/v1/chat/completions", proxy.addr());
    let body = if stream { CHAT_STREAM } else { CHAT };
    let auth = format!("Bearer {token}");
    let req = post(&url, &[("authorization", &auth), ("x-mock-who", who)], body);
    tokio::spawn(async move {
        let resp = http_client()
            .request(req)
            .await
            .unwrap_or_else(|e| panic!("{e:?}"));
        let (parts, body) = resp.into_parts();
        let body = http_body_util::BodyExt::collect(body)
            .await
            .unwrap()
            .to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    })
    .await
    .unwrap()
}

/// Every upstream call, as (who asked, key it carried).
fn calls(mock: &MockUpstream) -> Vec<(String, String)> {
    mock.seen()
        .into_iter()
        .map(|s| {
            let who = s
                .headers
                .iter()
                .find(|(k, _)| k == "x-mock-who")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            (who, s.key.unwrap_or_default())
        })
        .collect()
}

/// Who may use each key: every tenant's own, and `shared` for the shared pool's.
fn owners(specs: &[Spec]) -> HashMap<String, String> {
    let mut out: HashMap<String, String> = KEYS
        .iter()
        .map(|k| ((*k).to_owned(), "shared".to_owned()))
        .collect();
    for s in specs {
        for k in &s.keys {
            out.insert(k.clone(), s.name.clone());
        }
    }
    out
}

/// Calls whose key belongs to someone other than who asked.
fn crossings(specs: &[Spec], mock: &MockUpstream) -> Vec<(String, String)> {
    let owners = owners(specs);
    calls(mock)
        .into_iter()
        .filter(|(who, key)| owners.get(key) != Some(who))
        .map(|(who, key)| (who, owners.get(&key).cloned().unwrap_or("unknown".into())))
        .collect()
}

/// 500 requests per tenant and 500 shared, all at once, half streamed, spread over `instances`.
async fn mixed_load(specs: &[Spec], instances: &[Running]) {
    let mut jobs = Vec::new();
    for i in 0..500 {
        let stream = i % 2 == 0;
        let proxy = &instances[i % instances.len()];
        for s in specs {
            let token = &s.tokens[i % s.tokens.len()];
            jobs.push(ask(proxy, token, &s.name, stream));
        }
        jobs.push(ask(proxy, TOKEN, "shared", stream));
    }
    let replies = join_all(jobs).await;
    for r in &replies {
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(!r.body.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tenants_under_load_on_two_instances_never_cross() {
    let redis = RedisServer::start().await;
    let specs = world(2, 3, 3);
    let store = format!("url = \"{}\"", redis.url());
    let (mock, instances) = start(&specs, 2, Some(&store), "").await;
    mixed_load(&specs, &instances).await;
    let all = calls(&mock);
    assert_eq!(all.len(), 1500);
    assert_eq!(crossings(&specs, &mock), Vec::<(String, String)>::new());
    // Every key of each pool served: the pools rotate within themselves.
    for s in &specs {
        for k in &s.keys {
            assert!(mock.calls(k) > 0, "{} key never used", s.name);
        }
    }
    // The tenants' pools live under their own names in Redis, with no secret in it.
    let dump = redis.dump();
    assert!(
        dump.contains("t0.openai") && dump.contains("t1.openai"),
        "{dump}"
    );
    let mut secrets: Vec<&str> = specs
        .iter()
        .flat_map(|s| s.keys.iter().chain(&s.tokens))
        .map(String::as_str)
        .collect();
    secrets.extend(KEYS);
    assert_no_fragment(&dump, &secrets, "the Redis dump");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tenants_under_load_on_the_embedded_store_never_cross() {
    let specs = world(2, 3, 3);
    let (mock, instances) = start(&specs, 1, None, "").await;
    mixed_load(&specs, &instances).await;
    assert_eq!(calls(&mock).len(), 1500);
    assert_eq!(crossings(&specs, &mock), Vec::<(String, String)>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_scoped_race_never_lends_another_tenants_key() {
    // 10 tenants of 5 clients, one key each: 1,000 requests at once.
    let specs = world(10, 5, 1);
    let (mock, instances) = start(&specs, 1, None, "").await;
    let proxy = &instances[0];
    let mut jobs = Vec::new();
    for i in 0..1000 {
        let s = &specs[i % 10];
        jobs.push(ask(proxy, &s.tokens[(i / 10) % 5], &s.name, i % 3 == 0));
    }
    for r in join_all(jobs).await {
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(calls(&mock).len(), 1000);
    assert_eq!(crossings(&specs, &mock), Vec::<(String, String)>::new());
    for s in &specs {
        assert_eq!(mock.calls(&s.keys[0]), 100, "{}", s.name);
    }
}

/// Every key of `spec` answers 429 for a minute.
fn cool_all(mock: &MockUpstream, spec: &Spec) {
    for k in &spec.keys {
        mock.set(k, Script::rate_limited(&[("retry-after", "60")]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_with_every_key_cooling_gets_429_and_never_another_key() {
    let redis = RedisServer::start().await;
    let specs = world(2, 2, 3);
    let store = format!("url = \"{}\"", redis.url());
    let (mock, instances) = start(&specs, 2, Some(&store), "").await;
    cool_all(&mock, &specs[0]);
    // The first request meets the 429s on all three keys and passes the last one on.
    let first = ask(&instances[0], &specs[0].tokens[0], "t0", false).await;
    assert_eq!(first.status, 429);
    // Now no key of t0 is ready on either instance: keyrelay answers 429 itself.
    let mut jobs = Vec::new();
    for i in 0..100 {
        jobs.push(ask(
            &instances[i % 2],
            &specs[0].tokens[i % 2],
            "t0",
            i % 2 == 0,
        ));
        jobs.push(ask(&instances[i % 2], &specs[1].tokens[i % 2], "t1", false));
    }
    let replies = join_all(jobs).await;
    for (i, r) in replies.iter().enumerate() {
        if i % 2 == 0 {
            assert_eq!(r.status, 429, "{}", r.text());
            assert!(r.headers.contains_key("retry-after"));
        } else {
            assert_eq!(r.status, 200, "{}", r.text());
        }
    }
    let t0_calls = calls(&mock).iter().filter(|(w, _)| w == "t0").count();
    assert_eq!(t0_calls, 3, "only the first request reached the provider");
    assert_eq!(crossings(&specs, &mock), Vec::<(String, String)>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_that_falls_back_uses_the_shared_pool_once_its_keys_cool() {
    let mut specs = world(2, 1, 2);
    specs[0].fallback = true;
    let (mock, instances) = start(&specs, 1, None, "").await;
    cool_all(&mock, &specs[0]);
    cool_all(&mock, &specs[1]);
    assert_eq!(
        ask(&instances[0], &specs[0].tokens[0], "t0", false)
            .await
            .status,
        429
    );
    assert_eq!(
        ask(&instances[0], &specs[1].tokens[0], "t1", false)
            .await
            .status,
        429
    );
    // t0 now goes to the shared pool; t1, which does not fall back, is refused.
    let fell_back = ask(&instances[0], &specs[0].tokens[0], "t0", true).await;
    assert_eq!(fell_back.status, 200, "{}", fell_back.text());
    assert_eq!(
        ask(&instances[0], &specs[1].tokens[0], "t1", false)
            .await
            .status,
        429
    );
    let last = calls(&mock).pop().unwrap();
    assert_eq!(last.0, "t0");
    assert!(
        KEYS.contains(&last.1.as_str()),
        "a shared key served the fallback"
    );
    // Never the other tenant's key.
    let owners = owners(&specs);
    assert!(calls(&mock)
        .iter()
        .all(|(who, key)| owners[key] == *who || (who == "t0" && owners[key] == "shared")));
}

#[tokio::test]
async fn status_shows_each_tenants_pools_and_no_secret() {
    let specs = world(2, 1, 2);
    let (_mock, instances) = start(&specs, 1, None, "").await;
    assert_eq!(
        ask(&instances[0], &specs[1].tokens[0], "t1", false)
            .await
            .status,
        200
    );
    let client = http_client();
    let admin = instances[0].admin_addr().unwrap();
    let req = http::Request::get(format!("http://{admin}/admin/api-keys/status"))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .body(Default::default())
        .unwrap();
    let reply = send(&client, req).await;
    assert_eq!(reply.status, 200);
    let doc = reply.json();
    let pools = doc["pools"].as_array().unwrap();
    let t1 = pools.iter().find(|p| p["pool"] == "t1.openai").unwrap();
    assert_eq!(
        (&t1["tenant"], &t1["provider"]),
        (&"t1".into(), &"openai".into())
    );
    assert_eq!(t1["keys"].as_array().unwrap().len(), 2);
    assert_eq!(t1["total_requests_this_minute"], 1);
    assert!(pools
        .iter()
        .any(|p| p["provider"] == "openai" && p["tenant"] == "shared"));
    let mut secrets: Vec<&str> = specs
        .iter()
        .flat_map(|s| s.keys.iter().chain(&s.tokens))
        .map(String::as_str)
        .collect();
    secrets.extend(KEYS);
    assert_no_fragment(&reply.text(), &secrets, "the status document");
    let metrics = send(
        &client,
        http::Request::get(format!("http://{admin}/metrics"))
            .body(Default::default())
            .unwrap(),
    )
    .await;
    assert!(
        metrics
            .text()
            .contains("provider=\"openai\",status=\"2xx\",tenant=\"t1\"} 1"),
        "{}",
        metrics.text()
    );
}

/// Fail if `text` holds any of `secrets` or a 12-character fragment of one.
fn assert_no_fragment(text: &str, secrets: &[&str], place: &str) {
    for s in secrets {
        for f in s.as_bytes().windows(12) {
            let f = std::str::from_utf8(f).unwrap();
            assert!(!text.contains(f), "fragment {f:?} of a secret in {place}");
        }
    }
}

/// The problems loading `tenants` (TOML) with the test world's environment.
fn problems(tenants: &str) -> String {
    let specs = world(2, 2, 2);
    let text = format!("{}{tenants}", config_text("http://127.0.0.1:1", "", ""));
    match Config::from_toml_str(&text, &world_env(&specs)) {
        Ok(_) => panic!("loaded:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn every_tenant_problem_is_named_by_its_path() {
    let e = problems(
        r#"
[[tenants]]
name = "t0"
fallback = "everyone"
rpm = 0
colour = "red"
[[tenants.clients]]
name = "tests"
token = "env:TT_0_0"
[[tenants.providers]]
name = "openai"
keys = "env:KR_KEY_1"

[[tenants]]
name = "runtime"

[[tenants]]
name = "shared"

[[tenants]]
name = "t1"
[[tenants.clients]]
name = "t1-c0"
token = "env:NOT_SET_ANYWHERE"
[[tenants.clients]]
name = "t1-c1"
token = "env:KR_TOKEN"
[[tenants.providers]]
name = "anthropic"
keys = "env:TK_1_*"
[[tenants.providers]]
name = "openai"
keys = "env:NOTHING_*"
"#,
    );
    for expected in [
        "tenants[0].fallback: \"everyone\" is not one of none, shared",
        "tenants[0].rpm: must be a whole number",
        "tenants[0].colour: unknown field",
        "tenants[0].clients[0].name: duplicate client name \"tests\"",
        "tenants[0].providers[0].keys: key \"KR_KEY_1\" has the same secret as a key of providers \"openai\"",
        "tenants[1].name: \"runtime\" is reserved",
        "tenants[2].name: \"shared\" is reserved",
        "tenants[3].clients[0].token: env var NOT_SET_ANYWHERE is not set",
        "tenants[3].clients[1].token: the same token is given to another client",
        "tenants[3].providers[0].name: \"anthropic\" is not a configured provider",
        "tenants[3].providers[1].keys: no env var matches NOTHING_*",
    ] {
        assert!(e.contains(expected), "expected `{expected}` in:\n{e}");
    }
}

#[test]
fn a_tenant_needs_clients_and_keys_and_tenant_clients_alone_suffice() {
    let e = problems("[[tenants]]\nname = \"t0\"\n");
    assert!(e.contains("tenants[0].clients: no clients"), "{e}");
    assert!(e.contains("tenants[0].providers: no providers"), "{e}");
    // With tenant clients only, no shared [[clients]] is needed.
    let specs = world(1, 1, 1);
    let text = format!(
        "{}{}",
        config_text("http://127.0.0.1:1", "", "").replace(
            "[[clients]]\nname = \"tests\"\ntoken = \"env:KR_TOKEN\"\n",
            ""
        ),
        tenants_toml(&specs)
    );
    let c = Config::from_toml_str(&text, &world_env(&specs)).unwrap_or_else(|e| panic!("{e}"));
    assert!(c.clients.is_empty());
    assert_eq!(c.tenants[0].pools[0].keys.len(), 1);
    assert!(!c.tenants[0].fallback_shared);
    assert_eq!(c.pool_names(), ["openai", "t0.openai"]);
}

/// The shared client's token line, with a limit of `rpm` added.
fn shared_client_rpm(rpm: u32) -> String {
    format!("rpm = {rpm}")
}

/// How many of `replies` were served; every other one must be keyrelay's own 429 naming
/// `scope`'s limit, with Retry-After.
fn served(replies: &[Reply], scope: &str) -> usize {
    let mut ok = 0;
    for r in replies {
        if r.status == 200 {
            ok += 1;
            continue;
        }
        assert_eq!(r.status, 429, "{}", r.text());
        let v = r.json();
        assert_eq!(v["error"]["code"], "client_rate_limit_exceeded");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("the {scope}'s request limit")),
            "{message}"
        );
        let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=120).contains(&retry), "{retry}");
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_and_tenant_limits_refuse_with_429_and_no_upstream_call() {
    let mut specs = world(2, 2, 1);
    specs[0].rpm = Some(6);
    specs[1].client_rpm = Some(3);
    let (mock, instances) = start_edit(&specs, 1, None, &|t| {
        t.replace(
            "token = \"env:KR_TOKEN\"\n",
            &format!("token = \"env:KR_TOKEN\"\n{}\n", shared_client_rpm(5)),
        )
    })
    .await;
    let p = &instances[0];
    let mut shared = Vec::new();
    for _ in 0..8 {
        shared.push(ask(p, TOKEN, "shared", false).await);
    }
    assert_eq!(served(&shared, "client"), 5);
    // t0: 6 a minute over both its clients.
    let t0 = join_all((0..10).map(|i| ask(p, &specs[0].tokens[i % 2], "t0", i % 2 == 0))).await;
    assert_eq!(served(&t0, "tenant"), 6);
    // t1: 3 a minute for each client, the other client unaffected.
    let t1 = join_all((0..5).map(|_| ask(p, &specs[1].tokens[0], "t1", false))).await;
    assert_eq!(served(&t1, "client"), 3);
    assert_eq!(ask(p, &specs[1].tokens[1], "t1", false).await.status, 200);
    // No refused request reached the provider.
    let by = |who: &str| calls(&mock).iter().filter(|(w, _)| w == who).count();
    assert_eq!((by("shared"), by("t0"), by("t1")), (5, 6, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_limit_holds_within_5_percent_across_two_instances() {
    let redis = RedisServer::start().await;
    let mut specs = world(1, 1, 2);
    specs[0].client_rpm = Some(100);
    let store = format!("url = \"{}\"\ninstances = 2", redis.url());
    let (mock, instances) = start_edit(&specs, 2, Some(&store), &|t| {
        t.replace(
            "token = \"env:KR_TOKEN\"\n",
            &format!("token = \"env:KR_TOKEN\"\n{}\n", shared_client_rpm(60)),
        )
    })
    .await;
    let mut jobs = Vec::new();
    for i in 0..300 {
        jobs.push(ask(
            &instances[i % 2],
            &specs[0].tokens[0],
            "t0",
            i % 2 == 0,
        ));
        if i % 2 == 0 {
            jobs.push(ask(&instances[i / 2 % 2], TOKEN, "shared", false));
        }
    }
    let replies = join_all(jobs).await;
    let (tenant, shared): (Vec<_>, Vec<_>) = replies
        .into_iter()
        .enumerate()
        .partition(|(i, _)| i % 3 != 1);
    let tenant: Vec<Reply> = tenant.into_iter().map(|(_, r)| r).collect();
    let shared: Vec<Reply> = shared.into_iter().map(|(_, r)| r).collect();
    let (t, s) = (served(&tenant, "client"), served(&shared, "client"));
    assert!((95..=105).contains(&t), "{t} of 100 served");
    assert!((57..=63).contains(&s), "{s} of 60 served");
    assert_eq!(
        calls(&mock).len(),
        t + s,
        "a refused request reached the provider"
    );
    // The counters are in Redis, under the tenant's hash tag; no token in them.
    let dump = redis.dump();
    assert!(dump.contains("keyrelay:{limit.t0}:client:t0-c0"), "{dump}");
    assert_no_fragment(&dump, &[TOKEN, &specs[0].tokens[0]], "the Redis dump");
}

#[test]
fn check_shows_tenants_their_pools_and_missing_variables() {
    let mut specs = world(2, 1, 2);
    specs[1].fallback = true;
    specs[1].rpm = Some(30);
    let dir = std::env::temp_dir().join(format!("keyrelay-tenants-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tenants.toml");
    let text = format!(
        "{}{}",
        config_text(
            "http://127.0.0.1:1",
            "",
            "fingerprint_secret = \"env:KR_FP\""
        ),
        tenants_toml(&specs)
    );
    std::fs::write(&path, &text).unwrap();
    let run = |env: &MapEnv| run_check(&path, env);
    let (ok, out) = run(&world_env(&specs));
    assert!(ok, "{out}");
    assert!(out.contains("tenant t0 (fallback none, rpm none)"), "{out}");
    assert!(out.contains("registry: off"), "{out}");
    assert!(out.contains("tenant t1 (fallback shared, rpm 30)"), "{out}");
    assert!(out.contains("  clients: t1-c0 (rpm none)"), "{out}");
    assert!(out.contains("  pool t1.openai (2 keys)"), "{out}");
    assert!(out.contains("    key TK_1_0"), "{out}");
    let secrets: Vec<&str> = specs
        .iter()
        .flat_map(|s| s.keys.iter().chain(&s.tokens))
        .map(String::as_str)
        .collect();
    assert_no_fragment(&out, &secrets, "keyrelay check's output");
    // A tenant's missing variables are named by their paths.
    let mut env = MapEnv::default();
    for (k, v) in keyrelay::config::Env::vars(&world_env(&specs)) {
        if k != "TT_1_0" && !k.starts_with("TK_0_") {
            env = env.with(&k, &v);
        }
    }
    let (ok, out) = run(&env);
    assert!(!ok, "{out}");
    assert!(
        out.contains("tenants[1].clients[0].token: env var TT_1_0 is not set"),
        "{out}"
    );
    assert!(
        out.contains("tenants[0].providers[0].keys: no env var matches TK_0_*"),
        "{out}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `keyrelay check` on `path` with only `env` in the environment: success, and all it wrote.
fn run_check(path: &std::path::Path, env: &MapEnv) -> (bool, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_keyrelay"));
    cmd.args(["check", "--config", path.to_str().unwrap()])
        .env_clear()
        .current_dir(path.parent().unwrap());
    for (k, v) in keyrelay::config::Env::vars(env) {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

// ---- Runtime registration ----

const MASTER_A: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
const MASTER_B: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
const TENANT_ADMIN: [&str; 2] = ["kr-tadm0-9Hq3Zx7Lp2Wm", "kr-tadm1-4Ty8Vb1Nc6Rk"];
/// A key registered at run time (never in any config or environment).
const REGISTERED: &str = "sk-registered-Xy7Qp3Lm9Zt2Vb8Nw4";

/// The `[registry]` section and each tenant's admin token (in the environment as TA_0, TA_1).
fn registry_toml(file: &std::path::Path, audit: &std::path::Path, previous: bool) -> String {
    let previous = if previous {
        "previous_master_key = \"env:KR_MASTER_OLD\"\n"
    } else {
        ""
    };
    format!(
        "\n[registry]\nmaster_key = \"env:KR_MASTER\"\n{previous}file = \"{}\"\naudit_file = \"{}\"\n",
        file.display(),
        audit.display()
    )
}

/// Add `admin_token = "env:TA_<t>"` to each tenant of `text`.
fn with_tenant_admins(text: &str) -> String {
    let mut out = String::new();
    let mut t = 0;
    for line in text.lines() {
        out.push_str(line);
        out.push('\n');
        if line == "[[tenants]]" {
            out.push_str(&format!("admin_token = \"env:TA_{t}\"\n"));
            t += 1;
        }
    }
    out
}

/// A config with tenants `specs`, `[registry]` and tenant admin tokens, and its environment.
fn registry_setup(
    mock: &MockUpstream,
    specs: &[Spec],
    store: Option<&str>,
    dir: &std::path::Path,
    master: &str,
    old: Option<&str>,
) -> (String, MapEnv) {
    let mut text = config_text(&mock.url(), "", "fingerprint_secret = \"env:KR_FP\"");
    text.push_str(&with_tenant_admins(&tenants_toml(specs)));
    text.push_str(&registry_toml(
        &dir.join("keys.json"),
        &dir.join("audit.log"),
        old.is_some(),
    ));
    if let Some(store) = store {
        text.push_str(&format!(
            "\n[store]\n{store}\ncommand_timeout = \"10s\"\nconnect_timeout = \"10s\"\n"
        ));
    }
    let mut env = world_env(specs)
        .with("KR_MASTER", master)
        .with("TA_0", TENANT_ADMIN[0])
        .with("TA_1", TENANT_ADMIN[1]);
    if let Some(old) = old {
        env = env.with("KR_MASTER_OLD", old);
    }
    (text, env)
}

async fn start_text(text: &str, env: &MapEnv) -> Running {
    let config = Config::from_toml_str(text, env).unwrap_or_else(|e| panic!("{e}"));
    keyrelay::start(config).await.unwrap()
}

/// `method path` on `proxy`'s admin listener with `token`, and a JSON body when given.
async fn admin_call(
    proxy: &Running,
    method: &str,
    path: &str,
    token: &str,
    body: Option<serde_json::Value>,
) -> Reply {
    let admin = proxy.admin_addr().unwrap();
    let req = http::Request::builder()
        .method(method)
        .uri(format!("http://{admin}{path}"))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.map(|b| b.to_string()).unwrap_or_default(),
        )))
        .unwrap();
    send(&http_client(), req).await
}

fn new_key(name: &str, secret: &str) -> serde_json::Value {
    serde_json::json!({"name": name, "provider": "openai", "secret": secret, "rpm": 1000})
}

/// A fresh directory for one test's files.
fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("keyrelay-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Ask as `t0` on `proxy` until the registered key carries a request, or `within` passes.
async fn until_registered_serves(
    mock: &MockUpstream,
    proxy: &Running,
    token: &str,
    within: std::time::Duration,
) -> bool {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        ask(proxy, token, "t0", false).await;
        if mock.calls(REGISTERED) > 0 {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn registration_is_off_without_a_master_key() {
    let specs = world(1, 1, 1);
    let (_mock, instances) = start(&specs, 1, None, "").await;
    let r = admin_call(
        &instances[0],
        "GET",
        "/admin/tenants/t0/keys",
        ADMIN_TOKEN,
        None,
    )
    .await;
    assert_eq!(r.status, 404);
    assert!(
        r.text().contains("runtime registration is off"),
        "{}",
        r.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_registered_on_one_instance_serves_on_both_until_removed() {
    let redis = RedisServer::start().await;
    let dir = scratch("registry-redis");
    let specs = world(2, 1, 1);
    let mock = MockUpstream::start().await.unwrap();
    let store = format!("url = \"{}\"", redis.url());
    let (text, env) = registry_setup(&mock, &specs, Some(&store), &dir, MASTER_A, None);
    let a = start_text(&text, &env).await;
    let b = start_text(&text, &env).await;
    let added = admin_call(
        &a,
        "POST",
        "/admin/tenants/t0/keys",
        TENANT_ADMIN[0],
        Some(new_key("extra", REGISTERED)),
    )
    .await;
    assert_eq!(added.status, 200, "{}", added.text());
    let registered_at = std::time::Instant::now();
    // The other instance serves it within a second.
    assert!(
        until_registered_serves(
            &mock,
            &b,
            &specs[0].tokens[0],
            std::time::Duration::from_secs(1)
        )
        .await
    );
    assert!(registered_at.elapsed() < std::time::Duration::from_secs(1));
    // Listed by name and fingerprint, with its state; never the secret.
    let listed = admin_call(&b, "GET", "/admin/tenants/t0/keys", ADMIN_TOKEN, None).await;
    assert_eq!(listed.status, 200);
    let keys = listed.json()["keys"].as_array().unwrap().clone();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["name"], "extra");
    assert_eq!(keys[0]["state"], "ready");
    assert_eq!(keys[0]["fingerprint"].as_str().unwrap().len(), 12);
    tenant_admins_reach_only_their_own(&b).await;
    // No secret or fragment of one in Redis: the record is sealed.
    let dump = redis.dump();
    assert!(dump.contains("keyrelay:{registry}:keys"), "{dump}");
    assert_no_fragment(
        &dump,
        &[
            REGISTERED,
            TENANT_ADMIN[0],
            TENANT_ADMIN[1],
            &specs[0].keys[0],
        ],
        "the Redis dump",
    );
    a_moved_record_does_not_open(&redis, &a, &specs).await;
    removal_stops_it_on_both(&mock, &a, &b, &specs).await;
    let audit = std::fs::read_to_string(dir.join("audit.log")).unwrap();
    assert!(
        audit.contains("\"action\":\"register\"") && audit.contains("\"action\":\"remove\""),
        "{audit}"
    );
    assert!(audit.contains("\"who\":\"tenant-admin:t0\""), "{audit}");
    assert_no_fragment(&audit, &[REGISTERED], "the audit file");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A tenant's admin token reaches its own tenant only; a wrong token nothing.
async fn tenant_admins_reach_only_their_own(b: &Running) {
    // t1's admin can neither see nor change t0.
    for (method, path, body) in [
        ("GET", "/admin/tenants/t0/keys", None),
        (
            "POST",
            "/admin/tenants/t0/keys",
            Some(new_key("sneak", "sk-sneaky-key-000000000000")),
        ),
        ("DELETE", "/admin/tenants/t0/keys/extra", None),
    ] {
        let r = admin_call(b, method, path, TENANT_ADMIN[1], body).await;
        assert_eq!(r.status, 404, "{method} {path}: {}", r.text());
    }
    assert_eq!(
        admin_call(b, "GET", "/admin/tenants/t1/keys", TENANT_ADMIN[1], None)
            .await
            .status,
        200
    );
    assert_eq!(
        admin_call(
            b,
            "GET",
            "/admin/tenants/t0/keys",
            "kr-wrong-token-000000",
            None
        )
        .await
        .status,
        401
    );
}

/// A record copied under another tenant's name does not open there, and is never served.
async fn a_moved_record_does_not_open(redis: &RedisServer, a: &Running, specs: &[Spec]) {
    // A record copied to another tenant's name does not open there.
    let record = redis.cli(&["HGET", "keyrelay:{registry}:keys", "t0/extra"]);
    let moved = record
        .trim()
        .replace("\"tenant\":\"t0\"", "\"tenant\":\"t1\"");
    redis.cli(&["HSET", "keyrelay:{registry}:keys", "t1/extra", &moved]);
    redis.cli(&["INCR", "keyrelay:{registry}:version"]);
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let t1 = admin_call(a, "GET", "/admin/tenants/t1/keys", ADMIN_TOKEN, None)
        .await
        .json();
    assert_eq!(t1["keys"][0]["state"], "not_serving", "{t1}");
    for _ in 0..20 {
        assert_eq!(ask(a, &specs[1].tokens[0], "t1", false).await.status, 200);
    }
}

/// Removed on one instance: no new request on either carries the key.
async fn removal_stops_it_on_both(mock: &MockUpstream, a: &Running, b: &Running, specs: &[Spec]) {
    // Removed on one instance: no new request on either carries it.
    let removed = admin_call(
        b,
        "DELETE",
        "/admin/tenants/t0/keys/extra",
        ADMIN_TOKEN,
        None,
    )
    .await;
    assert_eq!(removed.status, 200, "{}", removed.text());
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    let before = mock.calls(REGISTERED);
    for i in 0..40 {
        let p = if i % 2 == 0 { a } else { b };
        assert_eq!(ask(p, &specs[0].tokens[0], "t0", false).await.status, 200);
    }
    assert_eq!(mock.calls(REGISTERED), before, "a removed key still served");
    assert!(
        calls(mock)
            .iter()
            .all(|(who, key)| who != "t1" || key != REGISTERED),
        "t1 was served t0's key"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_answers_valid_invalid_and_unknown() {
    let dir = scratch("registry-validate");
    let specs = world(1, 1, 1);
    let mock = MockUpstream::start().await.unwrap();
    let (text, env) = registry_setup(&mock, &specs, None, &dir, MASTER_A, None);
    let p = start_text(&text, &env).await;
    let invalid = "sk-invalid-Rt5Yu8Io1Pa4Sd7F";
    let flaky = "sk-flaky-Gh2Jk5Lz8Xc1Vb4N";
    mock.set(invalid, Script::Fixed {
        status: 401,
        headers: vec![],
        body: format!(r#"{{"error":{{"message":"Incorrect API key provided: {invalid}","type":"invalid_request_error","code":"invalid_api_key"}}}}"#),
    });
    mock.set(flaky, Script::status(503));
    let path = "/admin/tenants/t0/keys?validate=true";
    let ok = admin_call(
        &p,
        "POST",
        path,
        ADMIN_TOKEN,
        Some(new_key("good", REGISTERED)),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.json()["validation"]["result"], "valid");
    let bad = admin_call(&p, "POST", path, ADMIN_TOKEN, Some(new_key("bad", invalid))).await;
    assert_eq!(bad.status, 422, "{}", bad.text());
    let v = bad.json();
    assert_eq!(v["validation"]["result"], "invalid");
    assert_eq!(v["stored"], false);
    assert!(
        v["validation"]["reason"].as_str().unwrap().contains("401"),
        "{v}"
    );
    assert_no_fragment(&bad.text(), &[invalid], "the validation answer");
    let forced = admin_call(
        &p,
        "POST",
        "/admin/tenants/t0/keys?validate=true&force=true",
        ADMIN_TOKEN,
        Some(new_key("bad", invalid)),
    )
    .await;
    assert_eq!(forced.status, 200, "{}", forced.text());
    let unknown = admin_call(&p, "POST", path, ADMIN_TOKEN, Some(new_key("flaky", flaky))).await;
    assert_eq!(unknown.status, 200, "{}", unknown.text());
    assert_eq!(unknown.json()["validation"]["result"], "unknown");
    three_stored_none_in_the_clear(&p, &dir, &[REGISTERED, invalid, flaky]).await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rekey_keeps_every_registered_key_serving() {
    let dir = scratch("registry-rekey");
    let specs = world(1, 1, 1);
    let mock = MockUpstream::start().await.unwrap();
    let (text, env) = registry_setup(&mock, &specs, None, &dir, MASTER_A, None);
    let p = start_text(&text, &env).await;
    let added = admin_call(
        &p,
        "POST",
        "/admin/tenants/t0/keys",
        ADMIN_TOKEN,
        Some(new_key("extra", REGISTERED)),
    )
    .await;
    assert_eq!(added.status, 200, "{}", added.text());
    drop(p);
    // Rotating: B is current, A still read.
    let (text, env) = registry_setup(&mock, &specs, None, &dir, MASTER_B, Some(MASTER_A));
    let p = start_text(&text, &env).await;
    assert!(
        until_registered_serves(
            &mock,
            &p,
            &specs[0].tokens[0],
            std::time::Duration::from_secs(5)
        )
        .await
    );
    let path = dir.join("rotating.toml");
    std::fs::write(&path, &text).unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_keyrelay"));
    cmd.args(["rekey", "--config", path.to_str().unwrap()])
        .env_clear()
        .current_dir(&dir);
    for (k, v) in keyrelay::config::Env::vars(&env) {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("rekey: 1 records"), "{stdout}");
    drop(p);
    // A alone is gone: the key still serves under B.
    let (text, env) = registry_setup(&mock, &specs, None, &dir, MASTER_B, None);
    let p = start_text(&text, &env).await;
    let before = mock.calls(REGISTERED);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while mock.calls(REGISTERED) == before && std::time::Instant::now() < deadline {
        ask(&p, &specs[0].tokens[0], "t0", false).await;
    }
    assert!(
        mock.calls(REGISTERED) > before,
        "the rekeyed key does not serve"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Three keys listed; the key file and the audit file hold no secret or fragment of one.
async fn three_stored_none_in_the_clear(p: &Running, dir: &std::path::Path, secrets: &[&str]) {
    // An operator's key action is audited too.
    let act = admin_call(
        p,
        "POST",
        "/admin/keys/openai/KR_KEY_1/disable",
        ADMIN_TOKEN,
        None,
    )
    .await;
    assert_eq!(act.status, 200, "{}", act.text());
    let audit = std::fs::read_to_string(dir.join("audit.log")).unwrap();
    assert!(
        audit.contains(r#""action":"disable","at""#) || audit.contains(r#""action":"disable""#),
        "{audit}"
    );
    assert!(audit.contains(r#""provider":"openai""#), "{audit}");
    let names: Vec<String> = admin_call(p, "GET", "/admin/tenants/t0/keys", ADMIN_TOKEN, None)
        .await
        .json()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    // The local file store holds no secret or fragment of one.
    let file = std::fs::read_to_string(dir.join("keys.json")).unwrap();
    assert!(file.contains("\"tenant\": \"t0\""), "{file}");
    assert_no_fragment(&file, secrets, "the local key file");
    let audit = std::fs::read_to_string(dir.join("audit.log")).unwrap();
    assert_eq!(
        audit.matches("\"action\":\"validate\"").count(),
        4,
        "{audit}"
    );
    assert_no_fragment(&audit, secrets, "the audit file");
}

#[test]
fn registry_problems_are_named_by_their_paths() {
    let e = problems("[registry]\nmaster_key = \"env:KR_TOKEN\"\nprevious_master_key = \"env:NOT_SET_ANYWHERE\"\n");
    assert!(
        e.contains("registry.master_key: must be 64 hex digits"),
        "{e}"
    );
    assert!(
        e.contains("registry.previous_master_key: env var NOT_SET_ANYWHERE is not set"),
        "{e}"
    );
    let e = problems("[[tenants]]\nname = \"t9\"\nadmin_token = \"env:KR_ADMIN\"\n");
    assert!(
        e.contains("tenants[0].admin_token: must differ from the admin token"),
        "{e}"
    );
    let e = problems("[registry]\nfile = \"k.json\"\n");
    assert!(e.contains("registry.master_key: missing"), "{e}");
    // The master key never shows in the config's debug form.
    let specs = world(1, 1, 1);
    let text = format!(
        "{}{}[registry]\nmaster_key = \"env:KR_MASTER\"\n",
        config_text("http://127.0.0.1:1", "", ""),
        tenants_toml(&specs)
    );
    let c = Config::from_toml_str(&text, &world_env(&specs).with("KR_MASTER", MASTER_A)).unwrap();
    let shown = format!("{c:?}");
    assert!(
        shown.contains("RegistryConfig") && !shown.contains(&MASTER_A[..12]),
        "{shown}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_created_at_run_time_serves_on_both_instances_until_deleted() {
    let redis = RedisServer::start().await;
    let dir = scratch("registry-runtime-tenant");
    let specs = world(1, 1, 1);
    let mock = MockUpstream::start().await.unwrap();
    let store = format!("url = \"{}\"", redis.url());
    let (text, env) = registry_setup(&mock, &specs, Some(&store), &dir, MASTER_A, None);
    let (a, b) = (start_text(&text, &env).await, start_text(&text, &env).await);
    let (client, admin) = create_acme(&a).await;
    let added = admin_call(
        &a,
        "POST",
        "/admin/tenants/acme/keys",
        &admin,
        Some(new_key("own", REGISTERED)),
    )
    .await;
    assert_eq!(added.status, 200, "{}", added.text());
    served_within_a_second_from_its_own_key(&mock, &b, &client).await;
    // Its admin reaches only its own tenant; metrics carry the one runtime label.
    assert_eq!(
        admin_call(&b, "GET", "/admin/tenants/t0/keys", &admin, None)
            .await
            .status,
        404
    );
    assert_eq!(
        admin_call(&b, "GET", "/admin/tenants/acme/keys", &admin, None)
            .await
            .status,
        200
    );
    let metrics = send(
        &http_client(),
        http::Request::get(format!("http://{}/metrics", b.admin_addr().unwrap()))
            .body(Default::default())
            .unwrap(),
    )
    .await
    .text();
    assert!(
        metrics.contains("provider=\"openai\",status=\"2xx\",tenant=\"runtime\"}")
            && !metrics.contains("acme"),
        "{metrics}"
    );
    assert_no_fragment(
        &redis.dump(),
        &[REGISTERED, &client, &admin],
        "the Redis dump",
    );
    // Deleted on one instance: its client is refused on both.
    let deleted = admin_call(&b, "DELETE", "/admin/tenants/acme", ADMIN_TOKEN, None).await;
    assert_eq!(deleted.status, 200, "{}", deleted.text());
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    assert_eq!(ask(&a, &client, "acme", false).await.status, 401);
    assert_eq!(ask(&b, &client, "acme", false).await.status, 401);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Create the runtime tenant `acme` on `a` (the admin token only); its client and admin tokens.
async fn create_acme(a: &Running) -> (String, String) {
    let body = serde_json::json!({"name": "acme"});
    // Only the admin token creates tenants.
    let refused = admin_call(
        a,
        "POST",
        "/admin/tenants",
        TENANT_ADMIN[0],
        Some(body.clone()),
    )
    .await;
    assert_eq!(refused.status, 403);
    let created = admin_call(a, "POST", "/admin/tenants", ADMIN_TOKEN, Some(body)).await;
    assert_eq!(created.status, 201, "{}", created.text());
    let v = created.json();
    let (client, admin) = (
        v["client_token"].as_str().unwrap().to_owned(),
        v["admin_token"].as_str().unwrap().to_owned(),
    );
    (client, admin)
}

/// `acme`'s client is served on `b` within a second, from its own registered key only.
async fn served_within_a_second_from_its_own_key(mock: &MockUpstream, b: &Running, client: &str) {
    // Its client is served on the other instance within a second, from its own key only.
    let started = std::time::Instant::now();
    let mut served = false;
    while started.elapsed() < std::time::Duration::from_secs(1) && !served {
        served = ask(b, client, "acme", false).await.status == 200;
    }
    assert!(served, "not served on the second instance within a second");
    for _ in 0..20 {
        assert_eq!(ask(b, client, "acme", true).await.status, 200);
    }
    let acme: Vec<_> = calls(mock)
        .into_iter()
        .filter(|(w, _)| w == "acme")
        .collect();
    assert!(acme.iter().all(|(_, k)| k == REGISTERED), "{acme:?}");
}
