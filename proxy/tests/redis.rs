//! Shared pool state in Redis: several instances act as one pool, and a Redis outage of any
//! kind fails no request and slows none past the command timeout.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod support;

use keyrelay::config::Config;
use keyrelay::Running;
use keyrelay_mock::MockUpstream;
use keyrelay_mock::Reply as Script;
use keyrelay_pool::{fingerprint, StoreState};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::ports::ClosedPort;
use support::redis::{RedisCluster, RedisServer};
use support::*;

/// The store's command (and connect) timeout in the outage tests, whose point it is.
const COMMAND_TIMEOUT_MS: u64 = 50;
/// The same timeouts everywhere else: far above any stall a busy machine causes, so the
/// store never degrades behind the back of a test about shared state.
const CALM_TIMEOUT_MS: u64 = 2_000;

struct Fleet {
    mock: MockUpstream,
    instances: Vec<Running>,
}

impl Fleet {
    async fn start(n: usize, store: &str, provider_extra: &str) -> Fleet {
        Fleet::start_keys(n, store, provider_extra, ALL_KEYS).await
    }

    /// As `start`, with `keys` in place of the provider's `keys = "env:KR_KEY_*"` line.
    async fn start_keys(n: usize, store: &str, provider_extra: &str, keys: &str) -> Fleet {
        Fleet::start_timed(n, store, provider_extra, keys, CALM_TIMEOUT_MS).await
    }

    /// As `start`, with the short store timeouts the outage tests measure against.
    async fn start_strict(n: usize, store: &str) -> Fleet {
        Fleet::start_timed(n, store, "", ALL_KEYS, COMMAND_TIMEOUT_MS).await
    }

    async fn start_timed(
        n: usize,
        store: &str,
        provider_extra: &str,
        keys: &str,
        timeout_ms: u64,
    ) -> Fleet {
        let mock = MockUpstream::start().await.unwrap();
        let mut instances = Vec::new();
        for _ in 0..n {
            let text = format!(
                "{}\n[store]\n{store}\ncommand_timeout = \"{timeout_ms}ms\"\nconnect_timeout = \"{timeout_ms}ms\"\nprobe_interval = \"50ms\"\nprobe_max_interval = \"400ms\"\n",
                config_text(&mock.url(), provider_extra, "")
                    .replace(ALL_KEYS, keys)
            );
            let config = Config::from_toml_str(&text, &env()).unwrap_or_else(|e| panic!("{e}"));
            instances.push(keyrelay::start(config).await.unwrap());
        }
        Fleet { mock, instances }
    }

    fn url(&self, i: usize) -> String {
        format!(
            "http://{}/v1/chat/completions",
            self.instances[i % self.instances.len()].addr()
        )
    }

    async fn chat(&self, i: usize) -> Reply {
        chat_at(&http_client(), &self.url(i)).await
    }

    fn state(&self, i: usize) -> StoreState {
        self.instances[i].app().store_state()
    }

    async fn wait_state(&self, want: StoreState, within: Duration) -> bool {
        eventually(within, || {
            self.instances.iter().all(|r| r.app().store_state() == want)
        })
        .await
    }
}

const ALL_KEYS: &str = r#"keys = "env:KR_KEY_*""#;
const STATE: &str = "keyrelay:{openai}:state";

/// Milliseconds left on a key's mark, read from the state hash on `node` against Redis time.
fn mark_left_ms(node: &RedisServer, secret: &str) -> i64 {
    let mark = node.cli(&["HGET", STATE, &format!("m:{}", fingerprint(secret))]);
    let until: i64 = mark
        .split('|')
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no mark: {mark:?}"));
    let time = node.cli(&["TIME"]);
    let mut t = time.lines().map(|l| l.trim().parse::<i64>().unwrap());
    let now = t.next().unwrap() * 1000 + t.next().unwrap() / 1000;
    until - now
}

fn assert_no_secret_in(dump: &str) {
    assert!(!dump.is_empty(), "nothing in redis at all");
    assert_no_secret(dump, "redis");
}

async fn rotation_and_cooldown_across_instances(fleet: &Fleet, state_node: &RedisServer) {
    let before = fleet.mock.calls(KEYS[0]);
    fleet
        .mock
        .set(KEYS[0], Script::rate_limited(&[("retry-after", "30")]));
    // Under any strategy key 0 comes up within a few requests; stop when it has.
    for i in 0..10 {
        assert_eq!(fleet.chat(i).await.status, 200);
        if fleet.mock.calls(KEYS[0]) > before {
            break;
        }
    }
    assert_eq!(fleet.mock.calls(KEYS[0]), before + 1);
    // The cooldown instance 0 learned is honoured by the others on their next request.
    fleet.mock.set(KEYS[0], Script::Normal);
    for i in 0..12 {
        assert_eq!(fleet.chat(i).await.status, 200);
    }
    assert_eq!(
        fleet.mock.calls(KEYS[0]),
        before + 1,
        "an instance used a key another instance saw cooling"
    );
    let left = mark_left_ms(state_node, KEYS[0]);
    assert!((28_000..=30_000).contains(&left), "mark has {left} ms left");
}

#[tokio::test]
async fn instances_share_rotation_cooldowns_and_round_robin() {
    let redis = RedisServer::start().await;
    let fleet = Fleet::start(
        3,
        &format!("url = \"{}/0\"", redis.url()),
        r#"strategy = "round-robin""#,
    )
    .await;
    assert_eq!(fleet.state(0), StoreState::Shared);
    // Round-robin order is one order for all instances.
    for i in 0..9 {
        assert_eq!(fleet.chat(i).await.status, 200);
    }
    let order: Vec<String> = fleet
        .mock
        .seen()
        .iter()
        .map(|s| s.key.clone().unwrap())
        .collect();
    for (i, key) in order.iter().enumerate() {
        assert_eq!(key, KEYS[i % 3], "shared rotation broken at {i}: {order:?}");
    }
    rotation_and_cooldown_across_instances(&fleet, &redis).await;
    assert_no_secret_in(&redis.dump());
    // Every key keyrelay wrote carries a TTL.
    for key in redis
        .cli(&["--scan", "--pattern", "keyrelay:*"])
        .lines()
        .filter(|l| !l.is_empty())
    {
        let ttl: i64 = redis.cli(&["PTTL", key]).trim().parse().unwrap();
        assert!(ttl > 0, "{key} has no TTL");
    }
}

/// Sends `count` requests one after another, alternating over the fleet's instances, and
/// returns how many each key served.
async fn sequential_spread(fleet: &Fleet, count: usize) -> [usize; 3] {
    for i in 0..count {
        assert_eq!(fleet.chat(i).await.status, 200);
    }
    assert_eq!(fleet.mock.total_calls(), count);
    [
        fleet.mock.calls(KEYS[0]),
        fleet.mock.calls(KEYS[1]),
        fleet.mock.calls(KEYS[2]),
    ]
}

#[tokio::test]
async fn least_loaded_on_redis_balances_across_instances() {
    let redis = RedisServer::start().await;
    let fleet = Fleet::start(2, &format!("url = \"{}\"", redis.url()), "").await;
    assert_eq!(fleet.state(0), StoreState::Shared);
    // Each pick goes to a key with the fewest requests this minute, counted in Redis.
    assert_eq!(sequential_spread(&fleet, 30).await, [10, 10, 10]);
    let counts: Vec<i64> = KEYS
        .iter()
        .map(|k| {
            let v = redis.cli(&["HGET", STATE, &format!("n:{}", fingerprint(k))]);
            v.trim()
                .parse()
                .unwrap_or_else(|_| panic!("n: field {v:?}"))
        })
        .collect();
    assert_eq!(counts, [10, 10, 10]);
    // Both hashes are hash tables (constant-time lookups), not listpacks searched field by field.
    for key in [STATE, BUCKETS] {
        assert_eq!(
            redis.cli(&["OBJECT", "ENCODING", key]).trim(),
            "hashtable",
            "{key}"
        );
    }
}

/// Two instances on one Redis, three keys with the given per-key setting `field` of 1:2:3
/// (times `unit`) under `strategy`: 60 sequential requests must split 10:20:30.
async fn spread_follows_one_two_three(strategy: &str, field: &str, unit: u32) {
    let redis = RedisServer::start().await;
    let keys: String = (1..=3)
        .map(|i| {
            format!(
                "  {{ secret = \"env:KR_KEY_{i}\", {field} = {} }},\n",
                i * unit
            )
        })
        .collect();
    let fleet = Fleet::start_keys(
        2,
        &format!("url = \"{}\"", redis.url()),
        &format!("strategy = \"{strategy}\""),
        &format!("keys = [\n{keys}]"),
    )
    .await;
    assert_eq!(fleet.state(0), StoreState::Shared);
    let got = sequential_spread(&fleet, 60).await;
    for (served, want) in got.iter().zip([10, 20, 30]) {
        assert!(
            served.abs_diff(want) <= 1,
            "{strategy} with {field} 1:2:3 over 60 requests: {got:?}"
        );
    }
}

#[tokio::test]
async fn weighted_on_redis_follows_the_weights_across_instances() {
    spread_follows_one_two_three("weighted", "weight", 1).await;
}

#[tokio::test]
async fn least_loaded_on_redis_weighs_each_key_by_its_own_limit() {
    // Least-loaded takes the key with the least share of its own limit.
    spread_follows_one_two_three("least-loaded", "rpm", 100).await;
}

#[tokio::test]
async fn one_script_call_per_attempt() {
    let redis = RedisServer::start().await;
    let fleet = Fleet::start(2, &format!("url = \"{}\"", redis.url()), "").await;
    fleet.chat(0).await; // loads the script
    redis.cli(&["CONFIG", "RESETSTAT"]);
    for i in 0..20 {
        assert_eq!(fleet.chat(i).await.status, 200);
    }
    assert_eq!(redis.calls("evalsha"), 20);
    // commandstats also counts the commands a script runs inside; these never run inside one,
    // so any count here would be an extra round trip (deadpool's recycle PING, a reload).
    for extra in [
        "ping",
        "unwatch",
        "eval",
        "script|load",
        "multi",
        "exec",
        "hello",
        "client|setinfo",
    ] {
        assert_eq!(redis.calls(extra), 0, "{extra} on the hot path");
    }
    // A 429 costs one more call (the mark); a success none.
    fleet
        .mock
        .set(KEYS[0], Script::rate_limited(&[("retry-after", "5")]));
    fleet
        .mock
        .set(KEYS[1], Script::rate_limited(&[("retry-after", "5")]));
    fleet
        .mock
        .set(KEYS[2], Script::rate_limited(&[("retry-after", "5")]));
    redis.cli(&["CONFIG", "RESETSTAT"]);
    assert_eq!(fleet.chat(0).await.status, 429);
    assert_eq!(redis.calls("evalsha"), 6, "3 acquires + 3 marks");
    // Scripts flushed (as after a failover to a fresh replica): NOSCRIPT, load, run again.
    for k in KEYS {
        fleet.mock.set(k, Script::Normal);
    }
    redis.cli(&["SCRIPT", "FLUSH"]);
    redis.cli(&["CONFIG", "RESETSTAT"]);
    let r = admin_call(&fleet, 0, "POST", "/admin/keys/openai/KR_KEY_1/reset").await;
    assert_eq!(r.status, 200);
    for k in ["KR_KEY_2", "KR_KEY_3"] {
        admin_call(&fleet, 0, "POST", &format!("/admin/keys/openai/{k}/reset")).await;
    }
    redis.cli(&["CONFIG", "RESETSTAT"]);
    assert_eq!(fleet.chat(1).await.status, 200);
    assert_eq!(
        fleet.state(1),
        StoreState::Shared,
        "NOSCRIPT must not degrade the store"
    );
    assert_eq!(
        redis.calls("script|load"),
        1,
        "the script is loaded once after NOSCRIPT"
    );
    assert_eq!(fleet.chat(1).await.status, 200);
    assert_eq!(redis.calls("script|load"), 1);
}

#[tokio::test]
async fn limit_holds_across_three_instances_at_twice_the_rate() {
    let redis = RedisServer::start().await;
    let fleet = Fleet::start(3, &format!("url = \"{}\"", redis.url()), "rpm = 10").await;
    let client = http_client();
    let mut tasks = Vec::new();
    for i in 0..60 {
        let (client, url) = (client.clone(), fleet.url(i));
        tasks.push(tokio::spawn(async move {
            chat_at(&client, &url).await.status.as_u16()
        }));
    }
    let mut ok = 0;
    for t in tasks {
        let status = t.await.unwrap();
        match status {
            200 => ok += 1,
            429 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    for i in 0..3 {
        assert_eq!(
            fleet.state(i),
            StoreState::Shared,
            "instance {i} fell back to local state under load"
        );
    }
    // 3 keys x 10 rpm = 30 a minute: the bound is 1.05 x the limit per key.
    for k in KEYS {
        let calls = fleet.mock.calls(k);
        assert!(
            calls as f64 <= 10.0 * 1.05,
            "{k}: {calls} calls in one minute at rpm 10"
        );
    }
    assert_eq!(ok, fleet.mock.total_calls());
    assert_eq!(ok, 30, "every request within the shared limit was served");
}

const BUCKETS: &str = "keyrelay:{openai}:b";

/// Move the pool's whole history `secs` seconds into the past, as if that much time had gone
/// by: every bucket, every key's oldest second and freeing time, and the next expiry.
fn age_history(redis: &RedisServer, secs: i64) {
    for (name, count) in redis.pool_hash(BUCKETS) {
        let (fp, sec) = name.rsplit_once(':').unwrap();
        let sec: i64 = sec.parse().unwrap();
        redis.cli(&["HDEL", BUCKETS, &name]);
        redis.cli(&["HSET", BUCKETS, &format!("{fp}:{}", sec - secs), &count]);
    }
    for (field, value) in redis.pool_hash(STATE) {
        let field = field.as_str();
        let shifted = match field.split(':').next().unwrap() {
            "o" | "x" => value.parse::<i64>().unwrap() - secs,
            "f" => value.parse::<i64>().unwrap() - secs * 1000,
            _ => continue,
        };
        redis.cli(&["HSET", STATE, field, &shifted.to_string()]);
    }
}

fn field(redis: &RedisServer, name: &str, secret: &str) -> i64 {
    let v = redis.cli(&["HGET", STATE, &format!("{name}:{}", fingerprint(secret))]);
    v.trim().parse().unwrap_or(0)
}

#[tokio::test]
async fn full_keys_free_up_as_their_requests_leave_the_minute() {
    let redis = RedisServer::start().await;
    let fleet = Fleet::start(2, &format!("url = \"{}\"", redis.url()), "rpm = 2").await;
    // Fill every key, then once more: every key is full for about a minute.
    for i in 0..6 {
        assert_eq!(fleet.chat(i).await.status, 200);
    }
    let full = fleet.chat(0).await;
    assert_eq!(full.status, 429);
    let retry: u64 = full.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((55..=62).contains(&retry), "retry-after {retry}");
    assert_eq!(fleet.mock.total_calls(), 6);

    // 62 s later the first second has left the window: its buckets are read and dropped.
    age_history(&redis, 62);
    for i in 0..6 {
        assert_eq!(
            fleet.chat(i).await.status,
            200,
            "request {i} after a minute"
        );
    }
    assert_eq!(fleet.chat(0).await.status, 429, "full again");
    assert_eq!(fleet.mock.total_calls(), 12);
    for k in &KEYS[..3] {
        assert_eq!(field(&redis, "n", k), 2, "{k}: live count");
        assert_eq!(field(&redis, "t", k), 2, "{k}: requests moved to the total");
        assert_eq!(fleet.mock.calls(k), 4);
    }
    // The expired buckets are gone; only this second's remain.
    let buckets = redis.pool_hash(BUCKETS).len();
    assert!(buckets <= 6, "{buckets} buckets left");

    // Long after every bucket left (and the bucket hash may have expired): counts reset whole.
    age_history(&redis, 200);
    redis.cli(&["DEL", BUCKETS]);
    for i in 0..6 {
        assert_eq!(
            fleet.chat(i).await.status,
            200,
            "request {i} after a long pause"
        );
    }
    for k in &KEYS[..3] {
        assert_eq!(field(&redis, "n", k), 2, "{k}: live count after the pause");
        assert_eq!(field(&redis, "t", k), 4, "{k}: total");
    }
    // The admin view agrees: used this minute and the total, per key.
    let doc = admin_call(&fleet, 1, "GET", "/admin/api-keys/status")
        .await
        .json();
    for key in doc["pools"][0]["keys"].as_array().unwrap() {
        assert_eq!(key["requests_this_minute"], 2, "{key}");
        assert_eq!(key["total_requests"], 6, "{key}");
    }
}

/// Requests every few ms, alternating instances, until stopped: (status, latency) each.
struct Steady {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    handle: tokio::task::JoinHandle<Vec<(u16, Duration)>>,
}

impl Steady {
    fn start(fleet: &Fleet) -> Steady {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let urls: Vec<String> = (0..fleet.instances.len()).map(|i| fleet.url(i)).collect();
        let (flag, count) = (stop.clone(), done.clone());
        let handle = tokio::spawn(async move {
            let client = http_client();
            let mut out = Vec::new();
            while !flag.load(Ordering::SeqCst) {
                let started = Instant::now();
                let r = chat_at(&client, &urls[out.len() % urls.len()]).await;
                out.push((r.status.as_u16(), started.elapsed()));
                count.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            out
        });
        Steady { stop, done, handle }
    }

    /// Wait until `n` more requests have been answered: traffic ran through this phase, and
    /// none of it hung on Redis (a hung request stops the count).
    async fn after(&self, n: usize, phase: &str) {
        let target = self.done.load(Ordering::SeqCst) + n;
        let ran = eventually(Duration::from_secs(10), || {
            self.done.load(Ordering::SeqCst) >= target
        })
        .await;
        assert!(ran, "requests stalled {phase}");
    }

    /// Stop; every request must have succeeded, none slowed past a bound far above the
    /// command timeout (an unbounded wait on Redis lasts as long as the outage, and stalls
    /// [`Steady::after`] first).
    async fn finish(self) {
        self.stop.store(true, Ordering::SeqCst);
        let results = self.handle.await.unwrap();
        assert!(results.len() > 20, "too few requests: {}", results.len());
        let failed: Vec<_> = results.iter().filter(|(s, _)| *s != 200).collect();
        assert!(
            failed.is_empty(),
            "{} of {} requests failed: {failed:?}",
            failed.len(),
            results.len()
        );
        let slowest = results.iter().map(|(_, d)| *d).max().unwrap();
        let bound = Duration::from_millis(10 * COMMAND_TIMEOUT_MS);
        assert!(
            slowest <= bound,
            "slowest request {slowest:?} > ten command timeouts {bound:?}"
        );
    }
}

/// The ways Redis goes away during a steady stream of requests.
#[derive(Clone, Copy)]
enum Outage {
    KillAndRestart,
    Freeze,
    ClientPause,
}

/// Run `outage` under steady traffic on two instances: no request may fail or hang on Redis,
/// and the store must degrade and recover by itself.
async fn outage_fails_nothing(outage: Outage) -> (Fleet, RedisServer) {
    let mut redis = RedisServer::start().await;
    let fleet = Fleet::start_strict(2, &format!("url = \"{}\"", redis.url())).await;
    assert!(
        fleet
            .wait_state(StoreState::Shared, Duration::from_secs(10))
            .await,
        "never on shared state before the outage"
    );
    let steady = Steady::start(&fleet);
    steady.after(20, "before the outage").await;
    match outage {
        Outage::KillAndRestart => redis.kill(),
        Outage::Freeze => redis.freeze(),
        Outage::ClientPause => {
            redis.cli(&["CLIENT", "PAUSE", "1500", "ALL"]);
        }
    }
    assert!(
        fleet
            .wait_state(StoreState::Degraded, Duration::from_secs(5))
            .await,
        "never degraded"
    );
    match outage {
        Outage::KillAndRestart => {
            steady.after(20, "while redis was down").await;
            redis.restart().await;
        }
        Outage::Freeze => {
            steady.after(20, "while redis was frozen").await;
            redis.thaw();
        }
        Outage::ClientPause => steady.after(20, "while redis was paused").await,
    }
    assert!(
        fleet
            .wait_state(StoreState::Shared, Duration::from_secs(10))
            .await,
        "never recovered"
    );
    steady.after(20, "after redis came back").await;
    steady.finish().await;
    (fleet, redis)
}

#[tokio::test]
async fn redis_killed_and_restarted_fails_nothing() {
    let (fleet, redis) = outage_fails_nothing(Outage::KillAndRestart).await;
    // Back on shared state: requests are counted in Redis again (the script was reloaded).
    assert_eq!(fleet.chat(0).await.status, 200);
    assert!(
        redis.cli(&["HLEN", "keyrelay:{openai}:b"]).trim() != "0",
        "request not counted in redis after the restart"
    );
}

#[tokio::test]
async fn redis_frozen_with_sigstop_fails_nothing() {
    outage_fails_nothing(Outage::Freeze).await;
}

#[tokio::test]
async fn redis_client_pause_fails_nothing() {
    outage_fails_nothing(Outage::ClientPause).await;
}

#[tokio::test]
async fn starts_while_redis_is_down_and_joins_when_it_appears() {
    // The port is held closed while keyrelay starts, then handed to redis-server; should
    // another test take it in between, the whole scenario runs again on a fresh port.
    let (fleet, redis) = 'attempt: {
        for _ in 0..5 {
            let Some(closed) = ClosedPort::on(support::ports::candidate_port()) else {
                continue;
            };
            let url = format!("url = \"redis://127.0.0.1:{}\"", closed.port);
            let fleet = Fleet::start(1, &url, "").await;
            assert_eq!(fleet.state(0), StoreState::Degraded);
            for i in 0..3 {
                assert_eq!(fleet.chat(i).await.status, 200);
            }
            let port = closed.port;
            drop(closed);
            if let Some(redis) = RedisServer::try_start_on(port, false).await {
                break 'attempt (fleet, redis);
            }
        }
        panic!("no port could be handed from keyrelay's config to redis-server");
    };
    assert!(
        fleet
            .wait_state(StoreState::Shared, Duration::from_secs(10))
            .await,
        "never joined redis"
    );
    assert_eq!(fleet.chat(0).await.status, 200);
    assert!(
        redis.cli(&["HLEN", "keyrelay:{openai}:b"]).trim() != "0",
        "request not counted in redis after joining"
    );
}

#[tokio::test]
async fn cluster_shares_rotation_cooldowns_and_limits() {
    let cluster = RedisCluster::start().await;
    let fleet = Fleet::start(2, &cluster.toml(), "rpm = 10").await;
    assert!(
        fleet
            .wait_state(StoreState::Shared, Duration::from_secs(5))
            .await,
        "cluster store not shared"
    );
    // One request first, so the pool's state hash exists and its node can be found.
    assert_eq!(fleet.chat(0).await.status, 200);
    rotation_and_cooldown_across_instances(&fleet, cluster.node_for(STATE)).await;
    // Key 0 cools; keys 1 and 2 have 10 rpm each: 20 requests a minute between them, no more.
    let mut i = 0;
    while fleet.chat(i).await.status == 200 {
        i += 1;
        assert!(i < 30, "limit not enforced on the cluster");
    }
    assert_eq!(fleet.mock.calls(KEYS[1]), 10);
    assert_eq!(fleet.mock.calls(KEYS[2]), 10);
    assert_no_secret_in(&cluster.dump());
}

async fn admin_call(fleet: &Fleet, i: usize, method: &str, path: &str) -> Reply {
    let url = format!("http://{}{path}", fleet.instances[i].admin_addr().unwrap());
    let req = http::Request::builder()
        .method(method)
        .uri(url)
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .body(http_body_util::Full::default())
        .unwrap();
    send(&http_client(), req).await
}

#[tokio::test]
async fn admin_status_and_actions_act_on_every_instance() {
    let redis = RedisServer::start().await;
    let fleet = Fleet::start(
        2,
        &format!("url = \"{}\"", redis.url()),
        r#"strategy = "round-robin""#,
    )
    .await;
    fleet
        .mock
        .set(KEYS[0], Script::rate_limited(&[("retry-after", "60")]));
    assert_eq!(fleet.chat(0).await.status, 200);
    // Instance 1 never saw the 429, yet shows the cooldown.
    let doc = admin_call(&fleet, 1, "GET", "/admin/api-keys/status")
        .await
        .json();
    assert_eq!(doc["store"], "shared");
    let k0 = &doc["pools"][0]["keys"][0];
    assert_eq!(k0["state"], "cooling", "{doc}");
    assert_eq!(k0["reason"], "rate_limited");
    assert_eq!(doc["pools"][0]["total_requests_this_minute"], 2);
    // A reset on instance 1 frees the key for instance 0.
    fleet.mock.set(KEYS[0], Script::Normal);
    let r = admin_call(&fleet, 1, "POST", "/admin/keys/openai/KR_KEY_1/reset").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let doc = admin_call(&fleet, 0, "GET", "/admin/api-keys/status")
        .await
        .json();
    assert_eq!(doc["pools"][0]["keys"][0]["state"], "ready", "{doc}");
    let before = fleet.mock.calls(KEYS[0]);
    for _ in 0..3 {
        assert_eq!(fleet.chat(0).await.status, 200);
    }
    assert_eq!(fleet.mock.calls(KEYS[0]), before + 1);
    // Disable on instance 0 holds on instance 1.
    admin_call(&fleet, 0, "POST", "/admin/keys/openai/KR_KEY_2/disable").await;
    let before = fleet.mock.calls(KEYS[1]);
    for _ in 0..6 {
        assert_eq!(fleet.chat(1).await.status, 200);
    }
    assert_eq!(
        fleet.mock.calls(KEYS[1]),
        before,
        "key disabled on instance 0 used by instance 1"
    );
    let doc = admin_call(&fleet, 1, "GET", "/admin/api-keys/status")
        .await
        .json();
    assert_eq!(doc["pools"][0]["keys"][1]["state"], "disabled");
    admin_call(&fleet, 1, "POST", "/admin/keys/openai/KR_KEY_2/enable").await;
    let doc = admin_call(&fleet, 0, "GET", "/admin/api-keys/status")
        .await
        .json();
    assert_eq!(doc["pools"][0]["keys"][1]["state"], "ready");
    let ready = admin_call(&fleet, 0, "GET", "/readyz").await;
    assert_eq!(ready.json()["store"], "shared");
    assert_no_secret_in(&redis.dump());
}

/// `mk` in the state hash: the latest end of any mark (absent: no mark in force).
fn mark_horizon(redis: &RedisServer) -> Option<u64> {
    let v = redis.cli(&["HGET", STATE, "mk"]);
    let v = v.trim();
    (!v.is_empty()).then(|| v.parse().unwrap_or_else(|_| panic!("mk {v:?}")))
}

#[tokio::test]
async fn marks_are_read_only_while_one_is_in_force() {
    let redis = RedisServer::start().await;
    let fleet = Fleet::start(
        2,
        &format!("url = \"{}\"", redis.url()),
        r#"strategy = "round-robin""#,
    )
    .await;
    assert_eq!(fleet.chat(0).await.status, 200);
    assert_eq!(mark_horizon(&redis), None, "no mark yet");
    // A 1 s cooldown on the key next in turn raises the horizon to its end.
    let next = fleet.mock.total_calls() % 3;
    fleet
        .mock
        .set(KEYS[next], Script::rate_limited(&[("retry-after", "1")]));
    assert_eq!(fleet.chat(1).await.status, 200);
    let horizon = mark_horizon(&redis).expect("a cooldown sets mk");
    let left = mark_left_ms(&redis, KEYS[next]);
    assert!((1..=1_000).contains(&left), "mark has {left} ms left");
    fleet.mock.set(KEYS[next], Script::Normal);
    // When it has passed, the key serves again (on either instance) and the horizon is gone.
    let before = fleet.mock.calls(KEYS[next]);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut i = 0;
    while fleet.mock.calls(KEYS[next]) == before {
        assert!(Instant::now() < deadline, "cooled key never came back");
        assert_eq!(fleet.chat(i).await.status, 200);
        i += 1;
    }
    // Redis runs on this host's clock: the key served after the cooldown's end.
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        now_ms + 5 >= horizon,
        "key back {} ms early",
        horizon - now_ms
    );
    assert_eq!(mark_horizon(&redis), None, "mk left after every mark ended");
    // A disable holds the horizon at never until the key is enabled and a request has run.
    admin_call(&fleet, 0, "POST", "/admin/keys/openai/KR_KEY_2/disable").await;
    assert_eq!(mark_horizon(&redis), Some((1 << 53) - 1));
    assert_eq!(fleet.chat(1).await.status, 200);
    assert_eq!(mark_horizon(&redis), Some((1 << 53) - 1));
    admin_call(&fleet, 1, "POST", "/admin/keys/openai/KR_KEY_2/enable").await;
    assert_eq!(fleet.chat(0).await.status, 200);
    assert_eq!(mark_horizon(&redis), None);
}

#[tokio::test]
async fn degraded_shows_on_readiness_and_metrics() {
    let mut redis = RedisServer::start().await;
    let fleet = Fleet::start(1, &format!("url = \"{}\"", redis.url()), "").await;
    assert!(
        fleet
            .wait_state(StoreState::Shared, Duration::from_secs(10))
            .await,
        "never on shared state before the outage"
    );
    redis.kill();
    assert_eq!(fleet.chat(0).await.status, 200);
    assert!(
        fleet
            .wait_state(StoreState::Degraded, Duration::from_secs(5))
            .await
    );
    let ready = admin_call(&fleet, 0, "GET", "/readyz").await;
    assert_eq!(ready.json()["store"], "degraded");
    let metrics = admin_call(&fleet, 0, "GET", "/metrics").await.text();
    assert!(metrics.contains("keyrelay_store_degraded 1"), "{metrics}");
    assert!(
        !metrics.contains("keyrelay_store_errors_total 0"),
        "{metrics}"
    );
    redis.restart().await;
    assert!(
        fleet
            .wait_state(StoreState::Shared, Duration::from_secs(10))
            .await
    );
    let metrics = admin_call(&fleet, 0, "GET", "/metrics").await.text();
    assert!(metrics.contains("keyrelay_store_degraded 0"), "{metrics}");
}

#[tokio::test]
async fn check_says_which_store_and_whether_it_answers() {
    let redis = RedisServer::start().await;
    let dir = std::env::temp_dir().join(format!("keyrelay-check-store-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |url: &str| {
        let text = format!(
            "{}\n[store]\nurl = \"{url}\"\n",
            config_text("http://127.0.0.1:1", "", "")
        );
        let path = dir.join("k.toml");
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_keyrelay"))
            .args(["check", "--config"])
            .arg(&path)
            .current_dir(&dir)
            .env("KR_TOKEN", TOKEN)
            .env("KR_ADMIN", ADMIN_TOKEN)
            .env("KR_KEY_1", KEYS[0])
            .env("KEYRELAY_LOG", "error")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = run(&redis.url());
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(&format!(
            "store: redis at 127.0.0.1:{} (answers)",
            redis.port
        )),
        "{out}"
    );
    let closed = ClosedPort::new();
    let dead = closed.port;
    let (code, out) = run(&format!("redis://127.0.0.1:{dead}"));
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!(
            "store: redis at 127.0.0.1:{dead} (does not answer"
        )),
        "{out}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_redis_start_on_a_taken_port_says_so_and_never_reports_someone_else() {
    // The port is taken by a listener that answers nothing: redis-server cannot bind it, and
    // the start reports that instead of waiting out a deadline or trusting the listener.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    assert!(RedisServer::try_start_on(port, false).await.is_none());
    // Taken by another redis-server: it answers PING, but as another process.
    let other = RedisServer::start().await;
    assert!(RedisServer::try_start_on(other.port, false).await.is_none());
    assert_eq!(
        other.cli(&["PING"]).trim(),
        "PONG",
        "the other server was left alone"
    );
}
