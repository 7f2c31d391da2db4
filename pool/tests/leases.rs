//! Leased shares on the Redis store (`lease_time`): instances spend a few requests of a key's
//! minute locally, so there are fewer script calls than requests, while the shared limit,
//! marks and operator actions stay shared across instances.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests panic on what they did not expect"
)]

mod support;

use keyrelay_pool::{
    Acquire, KeyAction, PoolSpec, RedisStore, Report, Store, StoreState, Strategy,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use support::{cool, keys, redis_store, RedisServer};
use tokio::time::{Duration, Instant};

/// A store on `server` taking leases of up to `lease_ms`, once its subscription is live.
async fn leasing(server: &RedisServer, lease_ms: u64) -> Arc<RedisStore> {
    let store = redis_store(server, |s| {
        s.lease_time = Duration::from_millis(lease_ms);
        s.lease_max = 64;
    })
    .await;
    until("the lease subscription is live", || store.leasing_live()).await;
    store
}

/// Poll `done` until it holds, for at most 10 s.
async fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within 10 s");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Script calls (EVALSHA) the server ran since its stats were reset.
fn script_calls(server: &RedisServer) -> u64 {
    let info = server.cli(&["INFO", "commandstats"]);
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

/// Redis's clock: (second, millisecond within it).
fn redis_time(server: &RedisServer) -> (u64, u64) {
    let out = server.cli(&["TIME"]);
    let mut parts = out.split_whitespace().map(|p| p.parse::<u64>().unwrap());
    (parts.next().unwrap(), parts.next().unwrap() / 1000)
}

/// Attempts `store` is given on `spec` by `tasks` concurrent loops, each stopping at its first
/// refusal.
async fn hammer(store: &Arc<RedisStore>, spec: &Arc<PoolSpec>, tasks: usize) -> u64 {
    let admitted = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (store, spec, admitted) = (store.clone(), spec.clone(), admitted.clone());
        handles.push(tokio::spawn(async move {
            while let Acquire::Key(_) = store.acquire(&spec, &[]).await {
                admitted.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    admitted.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_hammering_one_key_keep_its_limit() {
    let server = RedisServer::start().await;
    let (a, b) = (leasing(&server, 250).await, leasing(&server, 250).await);
    let spec = Arc::new(PoolSpec::new(
        "hammer",
        keys(&[(600, 1)]),
        Strategy::LeastLoaded,
    ));
    server.cli(&["CONFIG", "RESETSTAT"]);
    let (ta, tb) = tokio::join!(hammer(&a, &spec, 8), hammer(&b, &spec, 8));
    let total = ta + tb;
    assert!(
        (570..=600).contains(&total),
        "600 rpm across two instances admitted {total} ({ta} + {tb})"
    );
    assert!(ta > 0 && tb > 0, "both instances served: {ta} + {tb}");
    let calls = script_calls(&server);
    assert!(calls < total, "{calls} script calls for {total} requests");
    // What the leases left unused goes back: Redis's count is then what was admitted.
    a.return_shares().await;
    b.return_shares().await;
    let used = a.status(&spec).await[0].used_this_minute;
    assert_eq!(used, total, "counted in redis after giving back");
    for store in [&a, &b] {
        assert_eq!(store.state(), StoreState::Shared);
        assert_eq!(store.errors(), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_traffic_makes_fewer_script_calls_than_requests() {
    let server = RedisServer::start().await;
    let store = leasing(&server, 250).await;
    let spec = Arc::new(PoolSpec::new(
        "steady",
        keys(&[(1_000_000, 1); 3]),
        Strategy::LeastLoaded,
    ));
    store.acquire(&spec, &[]).await; // loads the script, names the pool
    server.cli(&["CONFIG", "RESETSTAT"]);
    let requests = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for _ in 0..8 {
        let (store, spec, requests) = (store.clone(), spec.clone(), requests.clone());
        handles.push(tokio::spawn(async move {
            for _ in 0..500 {
                let Acquire::Key(i) = store.acquire(&spec, &[]).await else {
                    panic!("refused under the limit");
                };
                let ok = Report {
                    status: Some(200),
                    mark: None,
                };
                store.report(&spec, i, ok).await;
                requests.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let (calls, requests) = (script_calls(&server), requests.load(Ordering::Relaxed));
    assert_eq!(requests, 4000);
    assert!(
        calls * 4 < requests,
        "{calls} script calls for {requests} requests: want under 1 in 4"
    );
    store.return_shares().await;
    let used: u64 = store
        .status(&spec)
        .await
        .iter()
        .map(|k| k.used_this_minute)
        .sum();
    assert_eq!(
        used,
        requests + 1,
        "every request counted once, nothing leased left"
    );
}

/// B holds a lease on the pool's one key; A then does `to_key` to it. Once B has the message
/// (while B's lease would still run: the same Redis second), B's next acquire must not spend
/// it. Run again on a fresh pool when a second boundary made a run inconclusive.
async fn a_holds_b(
    server: &RedisServer,
    name: &str,
    to_key: impl AsyncFn(&RedisStore, &PoolSpec),
) -> Acquire {
    let (a, b) = (leasing(server, 5_000).await, leasing(server, 5_000).await);
    for round in 0..10 {
        let spec = PoolSpec::new(
            format!("{name}{round}"),
            keys(&[(6000, 1)]),
            Strategy::LeastLoaded,
        );
        // Early in a Redis second, so B's lease (which ends with the second) runs long enough.
        until("an early millisecond", || redis_time(server).1 < 200).await;
        let (second, _) = redis_time(server);
        for _ in 0..3 {
            assert_eq!(b.acquire(&spec, &[]).await, Acquire::Key(0));
        }
        assert!(
            b.leased(&spec)[0] > 0,
            "B holds a lease: {:?}",
            b.leased(&spec)
        );
        let seen = b.lease_messages();
        to_key(&a, &spec).await;
        until("B has the message", || b.lease_messages() > seen).await;
        let (now, ms) = redis_time(server);
        if now != second || ms > 900 {
            continue; // B's lease may have ended by itself: inconclusive
        }
        assert_eq!(b.leased(&spec), [0], "the lease is dropped");
        return b.acquire(&spec, &[]).await;
    }
    panic!("every run crossed a second boundary before B had the message");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_seen_by_one_instance_stops_the_others_lease() {
    let server = RedisServer::start().await;
    let got = a_holds_b(&server, "cool", async |a: &RedisStore, spec: &PoolSpec| {
        let report = Report {
            status: Some(429),
            mark: cool(Duration::from_secs(5)),
        };
        a.report(spec, 0, report).await;
    })
    .await;
    assert!(matches!(got, Acquire::Wait(_)), "B after A's 429: {got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disable_on_one_instance_stops_the_others_lease() {
    let server = RedisServer::start().await;
    let got = a_holds_b(&server, "off", async |a: &RedisStore, spec: &PoolSpec| {
        assert_eq!(a.act(spec, 0, KeyAction::Disable).await, StoreState::Shared);
    })
    .await;
    assert_eq!(got, Acquire::Exhausted, "B after A's disable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_stop_when_redis_goes_and_serving_goes_on_locally() {
    let mut server = RedisServer::start().await;
    let store = leasing(&server, 5_000).await;
    let spec = PoolSpec::new("away", keys(&[(6000, 1)]), Strategy::LeastLoaded);
    for _ in 0..3 {
        assert_eq!(store.acquire(&spec, &[]).await, Acquire::Key(0));
    }
    server.kill();
    until("leasing stops", || !store.leasing_live()).await;
    assert_eq!(store.leased(&spec), [0]);
    // The next attempt finds Redis away and is served on local state, as without leases.
    assert_eq!(store.acquire(&spec, &[]).await, Acquire::Key(0));
    assert_eq!(store.state(), StoreState::Degraded);
    server.restart().await;
    until("shared again", || store.state() == StoreState::Shared).await;
    until("leasing again", || store.leasing_live()).await;
    assert_eq!(store.acquire(&spec, &[]).await, Acquire::Key(0));
}
