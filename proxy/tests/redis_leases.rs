//! Leased shares through the whole proxy (`[store] lease_time`): instances on one Redis make
//! fewer script calls than requests, and the shared per-key limit still holds across them; a
//! limited client's requests are leased too, and its limit holds the same way.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod support;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use keyrelay::config::Config;
use keyrelay::Running;
use keyrelay_mock::MockUpstream;
use keyrelay_pool::StoreState;
use std::time::Duration;
use support::redis::RedisServer;
use support::*;

/// `n` instances on `redis` leasing for 250 ms, with `provider_extra` in the provider; once
/// every instance's lease subscription is live on the server.
async fn fleet(
    n: usize,
    redis: &RedisServer,
    provider_extra: &str,
) -> (MockUpstream, Vec<Running>) {
    fleet_with(n, redis, provider_extra, "").await
}

/// As [`fleet`], the client `tests` with `client_extra` (its limits).
async fn fleet_with(
    n: usize,
    redis: &RedisServer,
    provider_extra: &str,
    client_extra: &str,
) -> (MockUpstream, Vec<Running>) {
    let mock = MockUpstream::start().await.unwrap();
    let mut instances = Vec::new();
    for _ in 0..n {
        let store = "command_timeout = \"2s\"\nconnect_timeout = \"2s\"\nlease_time = \"250ms\"";
        instances.push(instance(&mock, redis, provider_extra, client_extra, store).await);
    }
    let subscribed = || {
        redis
            .cli(&["CLIENT", "LIST"])
            .lines()
            .filter(|l| l.contains(" psub=1 "))
            .count()
    };
    assert!(
        eventually(Duration::from_secs(10), || subscribed() == n).await,
        "{} of {n} instances subscribed",
        subscribed()
    );
    (mock, instances)
}

/// One instance in front of `mock` on `redis`: `provider_extra` in the provider, the client
/// `tests` with `client_extra`, and `store` (TOML lines) in `[store]`.
async fn instance(
    mock: &MockUpstream,
    redis: &RedisServer,
    provider_extra: &str,
    client_extra: &str,
    store: &str,
) -> Running {
    let text = format!(
        "{}\n[store]\nurl = \"{}\"\n{store}\n",
        config_text(&mock.url(), provider_extra, "").replace(
            "token = \"env:KR_TOKEN\"\n",
            &format!("token = \"env:KR_TOKEN\"\n{client_extra}\n")
        ),
        redis.url()
    );
    let config = Config::from_toml_str(&text, &env()).unwrap_or_else(|e| panic!("{e}"));
    keyrelay::start(config).await.unwrap()
}

fn chat_url(instances: &[Running], i: usize) -> String {
    format!(
        "http://{}/v1/chat/completions",
        instances[i % instances.len()].addr()
    )
}

#[tokio::test]
async fn concurrent_traffic_makes_fewer_script_calls_than_requests() {
    let redis = RedisServer::start().await;
    let (mock, instances) = fleet(2, &redis, "rpm = 1000000").await;
    let calls = calls_for_800(&redis, &mock, &instances).await;
    assert!(calls * 2 < 800, "{calls} script calls for 800 requests");
    for r in &instances {
        assert_eq!(r.app().store_state(), StoreState::Shared);
    }
}

#[tokio::test]
async fn the_shared_limit_holds_across_leasing_instances() {
    let redis = RedisServer::start().await;
    // 3 keys x 200 rpm: leases of up to 2 (1% of the rpm), 600 requests a minute in all.
    let (mock, instances) = fleet(2, &redis, "rpm = 200").await;
    let ok = hammer(&instances).await;
    assert_eq!(ok, mock.total_calls());
    for k in KEYS {
        assert!(
            mock.calls(k) <= 200,
            "{k}: {} calls at rpm 200",
            mock.calls(k)
        );
    }
    assert!(
        (570..=600).contains(&ok),
        "{ok} served of a shared 600 a minute, 800 asked"
    );
}

/// `n` chat requests to `url`, one after another: how many were served (the others got 429;
/// any other status fails the test).
async fn served(client: &Client<HttpConnector, Full<Bytes>>, url: &str, n: usize) -> usize {
    let mut ok = 0;
    for _ in 0..n {
        match chat_at(client, url).await.status.as_u16() {
            200 => ok += 1,
            429 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    ok
}

/// 16 tasks of 50 chat requests, spread over `instances`: how many were served (the others
/// got 429).
async fn hammer(instances: &[Running]) -> usize {
    let client = http_client();
    let mut tasks = Vec::new();
    for t in 0..16 {
        let (client, url) = (client.clone(), chat_url(instances, t));
        tasks.push(tokio::spawn(async move { served(&client, &url, 50).await }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap();
    }
    ok
}

/// The script calls 800 requests (all served) make, once a first request loaded the scripts.
async fn calls_for_800(redis: &RedisServer, mock: &MockUpstream, instances: &[Running]) -> u64 {
    chat_at(&http_client(), &chat_url(instances, 0)).await;
    redis.cli(&["CONFIG", "RESETSTAT"]);
    assert_eq!(hammer(instances).await, 800);
    assert_eq!(mock.total_calls(), 801);
    redis.calls("evalsha")
}

/// The client's request counts in Redis, both windows together.
fn client_counted(redis: &RedisServer) -> u64 {
    let keys = redis.cli(&["KEYS", "keyrelay:{limit.tests}:client:tests:*"]);
    keys.lines()
        .filter(|k| !k.is_empty())
        .map(|k| redis.cli(&["GET", k]).trim().parse::<u64>().unwrap_or(0))
        .sum()
}

#[tokio::test]
async fn a_limited_clients_requests_lease_their_limit_checks_too() {
    let redis = RedisServer::start().await;
    let (mock, instances) = fleet_with(2, &redis, "rpm = 1000000", "rpm = 1000000").await;
    // Each request's limit check was a script call of its own, besides its key's acquire;
    // and requests that found no lease each made their own call, where they now wait for the
    // one in flight.
    let calls = calls_for_800(&redis, &mock, &instances).await;
    assert!(calls * 8 < 800, "{calls} script calls for 800 requests");
}

#[tokio::test]
async fn a_clients_limit_holds_across_leasing_instances() {
    let redis = RedisServer::start().await;
    // 600 a minute for the client: leases of up to 6 (1% of it); keys without a limit to speak of.
    let (mock, instances) = fleet_with(2, &redis, "rpm = 1000000", "rpm = 600").await;
    let ok = hammer(&instances).await;
    assert_eq!(ok, mock.total_calls());
    assert!(
        (570..=600).contains(&ok),
        "{ok} served of the client's 600 a minute, 800 asked"
    );
    assert!(client_counted(&redis) <= 600, "{}", client_counted(&redis));
}

#[tokio::test]
async fn a_lease_not_spent_in_its_time_is_given_back() {
    let redis = RedisServer::start().await;
    let (mock, instances) = fleet_with(1, &redis, "rpm = 1000000", "rpm = 100000").await;
    let (client, url) = (http_client(), chat_url(&instances, 0));
    // Bursts that grow a lease past what they spend, each left to end (250 ms) unspent.
    for _ in 0..4 {
        for _ in 0..40 {
            assert_eq!(chat_at(&client, &url).await.status, 200);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(chat_at(&client, &url).await.status, 200);
    let served = mock.total_calls() as u64;
    assert_eq!(served, 161);
    // Counted: what was served, and at most the one lease taken by the last request (64,
    // the lease_max); each ended lease's rest was taken off again.
    let counted = client_counted(&redis);
    assert!(
        (served..=served + 63).contains(&counted),
        "{counted} counted for {served} served"
    );
}

#[tokio::test]
async fn a_lease_never_takes_past_the_limit() {
    let redis = RedisServer::start().await;
    let mock = MockUpstream::start().await.unwrap();
    let store =
        "command_timeout = \"2s\"\nconnect_timeout = \"2s\"\nlease_time = \"1s\"\nlease_max = 1000";
    let proxy = instance(&mock, &redis, "rpm = 1000000", "rpm = 10000", store).await;
    // 9,900 of the client's 10,000 already counted in this minute's window (one well clear of
    // its end, so the whole test runs in it): leases of 1, 2, 4 ... would reach 127.
    let ms = || {
        let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        since.unwrap().as_millis() as u64
    };
    if ms() % 60_000 > 50_000 {
        tokio::time::sleep(Duration::from_millis(60_000 - ms() % 60_000 + 100)).await;
    }
    let window = ms() / 60_000;
    let key = format!("keyrelay:{{limit.tests}}:client:tests:{window}");
    redis.cli(&["SET", &key, "9900", "PX", "180000"]);
    let (client, url) = (http_client(), chat_url(std::slice::from_ref(&proxy), 0));
    assert_eq!(
        served(&client, &url, 120).await,
        100,
        "the 100 left of the limit, no more"
    );
    assert_eq!(mock.total_calls(), 100);
    assert_eq!(redis.cli(&["GET", &key]).trim(), "10000");
}

#[tokio::test]
async fn a_frozen_redis_slows_a_limited_clients_waiting_requests_by_one_call_at_most() {
    let redis = RedisServer::start().await;
    let mock = MockUpstream::start().await.unwrap();
    let store = "command_timeout = \"100ms\"\nlease_time = \"250ms\"";
    let proxy = instance(&mock, &redis, "rpm = 1000000", "rpm = 1000000", store).await;
    let (client, url) = (http_client(), chat_url(std::slice::from_ref(&proxy), 0));
    assert_eq!(chat_at(&client, &url).await.status, 200);
    redis.freeze();
    // Rounds of 32 at once, each round past the lease of the one before: the requests that
    // find no lease wait for one call, and when it fails they are counted here, not sent one
    // after another into calls that wait out the timeout.
    for round in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let asks = (0..32).map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                let status = chat_at(&client, &url).await.status;
                (status, started.elapsed())
            })
        });
        for ask in futures_util::future::join_all(asks).await {
            let (status, took) = ask.unwrap();
            assert_eq!(status, 200, "round {round}");
            assert!(
                took <= Duration::from_millis(1000),
                "round {round}: a request took {took:?}, ten command timeouts"
            );
        }
    }
    redis.thaw();
}

#[test]
fn a_lease_longer_than_a_second_is_refused_by_its_path() {
    let text = format!(
        "{}\n[store]\nurl = \"redis://127.0.0.1:1\"\nlease_time = \"2s\"\nlease_max = 0\n",
        config_text("http://127.0.0.1:1", "", "")
    );
    let e = Config::from_toml_str(&text, &env())
        .unwrap_err()
        .to_string();
    assert!(e.contains("store.lease_time: must be at most 1s"), "{e}");
    assert!(e.contains("store.lease_max"), "{e}");
}
