//! Tests of the embedded store, in paused time.

use super::*;
use crate::key::{Key, Secret};
use crate::select::Strategy;
use crate::store::{KeyMode, Mark};

fn spec(strategy: Strategy, rpms: &[u32]) -> PoolSpec {
    let keys = rpms
        .iter()
        .enumerate()
        .map(|(i, rpm)| Key::new(format!("k{i}"), Secret::new(format!("secret-{i}")), *rpm, 1))
        .collect();
    PoolSpec::new("p", keys, strategy)
}

fn cool(secs: u64) -> Report {
    Report {
        status: Some(429),
        mark: Some(Mark::Cool {
            period: Duration::from_secs(secs),
            reason: "rate_limited",
        }),
    }
}

#[tokio::test(start_paused = true)]
async fn cooling_key_is_skipped_until_its_time() {
    let store = MemoryStore::new();
    let s = spec(Strategy::RoundRobin, &[100, 100]);
    assert_eq!(store.acquire_now(&s, &[]), Acquire::Key(0));
    store.report_now(&s, 0, cool(30));
    for _ in 0..5 {
        assert_eq!(store.acquire_now(&s, &[]), Acquire::Key(1));
    }
    assert_eq!(
        store.acquire_now(&s, &[1]),
        Acquire::Wait(Duration::from_secs(30))
    );
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(store.acquire_now(&s, &[1]), Acquire::Key(0));
}

#[tokio::test(start_paused = true)]
async fn all_cooling_reports_first_ready_time() {
    let store = MemoryStore::new();
    let s = spec(Strategy::LeastLoaded, &[100, 100, 100]);
    store.report_now(&s, 0, cool(30));
    store.report_now(&s, 1, cool(12));
    store.report_now(&s, 2, cool(45));
    assert_eq!(
        store.acquire_now(&s, &[]),
        Acquire::Wait(Duration::from_secs(12))
    );
    assert_eq!(store.acquire_now(&s, &[0, 1, 2]), Acquire::Exhausted);
    let status = store.status_now(&s);
    assert_eq!(
        status[1].mode,
        KeyMode::Cooling {
            remaining: Duration::from_secs(12),
            reason: "rate_limited"
        }
    );
}

#[tokio::test(start_paused = true)]
async fn rpm_limit_holds_in_per_second_buckets() {
    let store = MemoryStore::new();
    let s = spec(Strategy::LeastLoaded, &[3]);
    for _ in 0..3 {
        assert_eq!(store.acquire_now(&s, &[]), Acquire::Key(0));
        tokio::time::advance(Duration::from_secs(10)).await;
    }
    // Requests in seconds 0, 10 and 20; now t=30: second 0's bucket leaves when second 61
    // starts, once all of second 0 is more than a minute old.
    assert_eq!(
        store.acquire_now(&s, &[]),
        Acquire::Wait(Duration::from_secs(31))
    );
    tokio::time::advance(Duration::from_millis(30_999)).await;
    assert_eq!(
        store.acquire_now(&s, &[]),
        Acquire::Wait(Duration::from_millis(1))
    );
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(store.acquire_now(&s, &[]), Acquire::Key(0));
    let status = &store.status_now(&s)[0];
    assert_eq!((status.used_this_minute, status.total), (3, 4));
}

#[tokio::test(start_paused = true)]
async fn least_loaded_spreads_evenly() {
    let store = MemoryStore::new();
    let s = spec(Strategy::LeastLoaded, &[1000, 1000, 1000]);
    let mut counts = [0usize; 3];
    for _ in 0..300 {
        match store.acquire_now(&s, &[]) {
            Acquire::Key(i) => counts[i] += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(counts, [100, 100, 100]);
}

#[tokio::test(start_paused = true)]
async fn weighted_follows_weight() {
    let store = MemoryStore::new();
    let keys = vec![
        Key::new("a", Secret::new("sa"), 1000, 1),
        Key::new("b", Secret::new("sb"), 1000, 3),
    ];
    let s = PoolSpec::new("w", keys, Strategy::Weighted);
    let mut counts = [0usize; 2];
    for _ in 0..400 {
        if let Acquire::Key(i) = store.acquire_now(&s, &[]) {
            counts[i] += 1;
        }
    }
    assert_eq!(counts, [100, 300]);
}

#[tokio::test(start_paused = true)]
async fn reload_keeps_state_of_kept_keys() {
    let store = MemoryStore::new();
    let s1 = spec(Strategy::RoundRobin, &[100, 100]);
    store.report_now(&s1, 1, cool(60));
    let mut keys = s1.keys.clone();
    keys.reverse();
    let s2 = PoolSpec::new("p", keys, Strategy::RoundRobin);
    let status = store.status_now(&s2);
    assert_eq!(status[0].name, "k1");
    assert_eq!(status[0].mode.label(), "cooling");
    assert_eq!(status[1].mode.label(), "ready");
}

#[tokio::test(start_paused = true)]
async fn a_spec_finds_its_pools_state_in_each_store_it_is_used_with() {
    let (a, b) = (MemoryStore::new(), MemoryStore::new());
    let s = spec(Strategy::RoundRobin, &[100, 100]);
    a.report_now(&s, 0, cool(30));
    // Store b's state is its own, though the spec now keeps a's.
    assert_eq!(b.acquire_now(&s, &[1]), Acquire::Key(0));
    b.report_now(&s, 1, cool(30));
    assert_eq!(a.acquire_now(&s, &[]), Acquire::Key(1));
    assert_eq!(b.acquire_now(&s, &[]), Acquire::Key(0));
    // A reloaded spec (same name, new generation) finds the same state in each store.
    let reloaded = spec(Strategy::RoundRobin, &[100, 100]);
    assert_eq!(a.acquire_now(&reloaded, &[]), Acquire::Key(1));
    assert_eq!(b.acquire_now(&reloaded, &[]), Acquire::Key(0));
}
