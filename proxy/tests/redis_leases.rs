//! Leased shares through the whole proxy (`[store] lease_time`): instances on one Redis make
//! fewer script calls than requests, and the shared per-key limit still holds across them.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod support;

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
    let mock = MockUpstream::start().await.unwrap();
    let mut instances = Vec::new();
    for _ in 0..n {
        let text = format!(
            "{}\n[store]\nurl = \"{}\"\ncommand_timeout = \"2s\"\nconnect_timeout = \"2s\"\nlease_time = \"250ms\"\n",
            config_text(&mock.url(), provider_extra, ""),
            redis.url()
        );
        let config = Config::from_toml_str(&text, &env()).unwrap_or_else(|e| panic!("{e}"));
        instances.push(keyrelay::start(config).await.unwrap());
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
    let client = http_client();
    chat_at(&client, &chat_url(&instances, 0)).await; // loads the script
    redis.cli(&["CONFIG", "RESETSTAT"]);
    let mut tasks = Vec::new();
    for t in 0..16 {
        let (client, url) = (client.clone(), chat_url(&instances, t));
        tasks.push(tokio::spawn(async move {
            for _ in 0..50 {
                assert_eq!(chat_at(&client, &url).await.status, 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(mock.total_calls(), 801);
    let calls = redis.calls("evalsha");
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
    let client = http_client();
    let mut tasks = Vec::new();
    for t in 0..16 {
        let (client, url) = (client.clone(), chat_url(&instances, t));
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            for _ in 0..50 {
                match chat_at(&client, &url).await.status.as_u16() {
                    200 => ok += 1,
                    429 => {}
                    other => panic!("unexpected status {other}"),
                }
            }
            ok
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap();
    }
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
