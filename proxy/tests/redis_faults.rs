//! Operator actions and store health through Redis faults, end to end: a disable answered
//! during an outage holds on every instance once Redis is back (the answer says it is not
//! shared yet), a disable outlives the state hash's TTL, and the health probe writes to the
//! pool's own Cluster slot.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod support;

use keyrelay::config::Config;
use keyrelay::Running;
use keyrelay_mock::MockUpstream;
use keyrelay_pool::StoreState;
use std::time::{Duration, Instant};
use support::redis::{RedisCluster, RedisServer};
use support::*;

const STATE: &str = "keyrelay:{openai}:state";

/// Instances of keyrelay sharing one store, round-robin over the three test keys.
struct Fleet {
    mock: MockUpstream,
    instances: Vec<Running>,
}

impl Fleet {
    async fn start(n: usize, store: &str) -> Fleet {
        let mock = MockUpstream::start().await.unwrap();
        let mut instances = Vec::new();
        for _ in 0..n {
            let text = format!(
                "{}\n[store]\n{store}\ncommand_timeout = \"500ms\"\nconnect_timeout = \"500ms\"\nprobe_interval = \"20ms\"\nprobe_max_interval = \"200ms\"\n",
                config_text(&mock.url(), r#"strategy = "round-robin""#, "")
            );
            let config = Config::from_toml_str(&text, &env()).unwrap_or_else(|e| panic!("{e}"));
            instances.push(keyrelay::start(config).await.unwrap());
        }
        Fleet { mock, instances }
    }

    async fn chat(&self, i: usize) -> Reply {
        let addr = self.instances[i % self.instances.len()].addr();
        chat_at(
            &http_client(),
            &format!("http://{addr}/v1/chat/completions"),
        )
        .await
    }

    async fn admin(&self, i: usize, method: &str, path: &str) -> Reply {
        let url = format!("http://{}{path}", self.instances[i].admin_addr().unwrap());
        let req = http::Request::builder()
            .method(method)
            .uri(url)
            .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
            .body(http_body_util::Full::default())
            .unwrap();
        send(&http_client(), req).await
    }

    /// Key 0's state as instance `i` shows it.
    async fn key0(&self, i: usize) -> String {
        let doc = self.admin(i, "GET", "/admin/api-keys/status").await.json();
        doc["pools"][0]["keys"][0]["state"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Requests on every instance until each is shared again and shows key 0 as `want`.
    async fn until_key0(&self, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let mut ok = true;
            for i in 0..self.instances.len() {
                assert_eq!(self.chat(i).await.status, 200);
                ok &= self.instances[i].app().store_state() == StoreState::Shared
                    && self.key0(i).await == want;
            }
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "never: key 0 {want} on every instance"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `n` requests per instance; how many reached key 0.
    async fn calls_to_key0(&self, n: usize) -> usize {
        self.calls_to_key0_on(&(0..self.instances.len()).collect::<Vec<_>>(), n)
            .await
    }

    /// `n` requests on each of `instances`; how many reached key 0.
    async fn calls_to_key0_on(&self, instances: &[usize], n: usize) -> usize {
        let before = self.mock.calls(KEYS[0]);
        for _ in 0..n {
            for &i in instances {
                assert_eq!(self.chat(i).await.status, 200);
            }
        }
        self.mock.calls(KEYS[0]) - before
    }
}

#[tokio::test]
async fn a_disable_answered_during_an_outage_holds_on_every_instance() {
    let mut redis = RedisServer::start().await;
    let fleet = Fleet::start(2, &format!("url = \"{}\"", redis.url())).await;
    assert_eq!(fleet.chat(0).await.status, 200);

    redis.kill();
    let r = fleet
        .admin(0, "POST", "/admin/keys/openai/KR_KEY_1/disable")
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["shared"], false, "{}", r.text());
    assert_eq!(r.json()["state"], "disabled");
    // Applied at once where it was answered (the others cannot hear of it before Redis is
    // back).
    assert_eq!(
        fleet.calls_to_key0_on(&[0], 6).await,
        0,
        "key 0 used after its disable"
    );

    // Redis is back (empty): the disable is written there, and instance 1 obeys it too.
    redis.restart().await;
    fleet.until_key0("disabled").await;
    assert_eq!(fleet.calls_to_key0(4).await, 0);
    let r = fleet
        .admin(1, "POST", "/admin/keys/openai/KR_KEY_1/enable")
        .await;
    assert_eq!(r.json()["shared"], true, "{}", r.text());
    fleet.until_key0("ready").await;
    assert!(fleet.calls_to_key0(3).await > 0);
    assert_no_secret(&redis.dump(), "redis");
}

#[tokio::test]
async fn a_disable_outlives_the_state_hash_ttl() {
    let redis = RedisServer::start().await;
    let fleet = Fleet::start(2, &format!("url = \"{}\"", redis.url())).await;
    assert_eq!(fleet.chat(0).await.status, 200);
    let r = fleet
        .admin(1, "POST", "/admin/keys/openai/KR_KEY_1/disable")
        .await;
    assert_eq!(r.json()["shared"], true, "{}", r.text());
    // The state hash's TTL runs out (a quiet pool), and the buckets with it.
    redis.cli(&["PEXPIRE", STATE, "1"]);
    redis.cli(&["DEL", "keyrelay:{openai}:b"]);
    assert!(
        eventually(Duration::from_secs(5), || redis
            .cli(&["EXISTS", STATE])
            .trim()
            == "0")
        .await
    );
    assert_eq!(fleet.key0(0).await, "disabled");
    assert_eq!(fleet.calls_to_key0(5).await, 0, "the disable expired");
    assert_eq!(fleet.key0(1).await, "disabled");
    assert_eq!(
        redis.cli(&["PTTL", "keyrelay:{openai}:ops"]).trim(),
        "-1",
        "the operator hash never expires"
    );
}

#[tokio::test]
async fn the_probe_writes_to_the_pools_own_cluster_slot() {
    let cluster = RedisCluster::start().await;
    let fleet = Fleet::start(1, &cluster.toml()).await;
    assert!(
        eventually(Duration::from_secs(5), || fleet.instances[0]
            .app()
            .store_state()
            == StoreState::Shared)
        .await
    );
    assert_eq!(fleet.chat(0).await.status, 200);
    let alive = "keyrelay:{openai}:alive";
    let node = cluster.node_for(alive);
    assert_eq!(
        node.port,
        cluster.node_for(STATE).port,
        "probe and pool on different nodes"
    );
    let slot = |key: &str| node.cli(&["CLUSTER", "KEYSLOT", key]).trim().to_owned();
    assert_eq!(slot(alive), slot(STATE));
    assert_ne!(slot(alive), slot("keyrelay:{probe}:alive"));
    assert!(
        cluster
            .nodes
            .iter()
            .all(|n| n.cli(&["EXISTS", "keyrelay:{probe}:alive"]).trim() != "1"),
        "the old probe key is still written"
    );
}
