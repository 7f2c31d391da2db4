//! The store contract: one table of scenarios, run against the embedded [`MemoryStore`] (in
//! tokio's paused time, so every time is exact) and against the [`RedisStore`] (on a
//! `redis-server` of the test's own, in real time, with periods of a few hundred ms), both
//! driven through the [`Store`] trait only.
//!
//! # Where the two stores differ
//! This table is the one place the differences are written down; each row is tested below as
//! a difference, in the section after the shared scenarios.
//!
//! | aspect | `MemoryStore` | `RedisStore` | tests |
//! |--------|---------------|--------------|-------|
//! | clock and window seconds | tokio's clock, so paused time drives it; whole seconds counted from the store's creation | Redis's `TIME`; whole Unix seconds | `window_seconds_*` |
//! | precision of a `Wait` | exact | whole milliseconds (a mark's period is truncated to whole ms), at least 1 ms | `wait_precision_*` |
//! | share of each limit | `with_share(n)` enforces `rpm / n` (at least 1): an instance's part while a shared store is away | the whole `rpm`, one count for every instance; `instances` applies only to its local fallback while Redis is away | `limit_share_*` |
//! | a key a reload removed, added back by a later one | starts afresh: the store keeps only the current spec's keys | keeps its mark, its total, and its count while its requests are in the window: state is stored by fingerprint (what has left the window is swept by any instance, whatever its keys: `pool/tests/durable.rs`) | `readded_key_*` |
//! | a mark's reason in `status` | as given | one of `rate_limited`, `unauthorized`, `manual`; any other reads back as `other` | `mark_reason_*` |
//!
//! The same in both, and tested by the shared scenarios: the window (per-second buckets; a
//! bucket counts until all of its second has left the minute, so a full key waits 60-61 s),
//! the state machine (a shorter mark never shortens a penalty, a disable outlives marks and
//! resets), the tie rules of `keyrelay_pool`'s `select` module (round-robin from a cursor kept
//! across reloads; the lowest index under equal limits or weights; `call % n` otherwise, `call`
//! counting the store's acquires), and state kept by fingerprint across a reload. `last_status`
//! is this instance's own in both (the Redis store keeps it in local memory).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests panic on what they did not expect"
)]

mod support;

use keyrelay_pool::{Acquire, Key, KeyAction, KeyMode, KeyStatus, Mark, PoolSpec, Strategy};
use support::{cool, keys, ms, quarantine, remaining, Env};
use tokio::time::{Duration, Instant};

// ---------------------------------------------------------------- the scenario table

/// Each scenario runs twice: `memory::<name>` in paused time, `redis::<name>` on a fresh
/// redis-server, which must still be the shared store, with no command failed, at the end.
macro_rules! contract {
    ($($scenario:ident),+ $(,)?) => {
        mod memory {
            $(
                #[tokio::test(start_paused = true)]
                async fn $scenario() {
                    super::$scenario(&super::Env::memory()).await;
                }
            )+
        }
        mod redis {
            $(
                #[tokio::test]
                async fn $scenario() {
                    let env = super::Env::redis(1).await;
                    super::$scenario(&env).await;
                    env.assert_shared();
                }
            )+
        }
    };
}

contract! {
    round_robin_rotates_from_a_cursor,
    least_loaded_spreads_by_limits,
    weighted_spreads_by_weights,
    equal_limits_tie_to_the_lowest_index,
    equal_weights_tie_to_the_lowest_index,
    mixed_limit_ties_start_at_call_modulo_n,
    rpm_limit_makes_the_next_acquire_wait,
    cooldown_with_a_hint_then_back,
    quarantine_then_back,
    disable_enable_reset,
    tried_keys_are_skipped,
    all_cooling_waits_for_the_first_key_back,
    reload_keeps_state_by_fingerprint,
}

// ---------------------------------------------------------------- shared scenarios

async fn round_robin_rotates_from_a_cursor(env: &Env) {
    let s = env.spec("rr", keys(&[(100, 1); 3]), Strategy::RoundRobin);
    assert_eq!(env.takes(&s, 7).await, [0, 1, 2, 0, 1, 2, 0]);
    // The cursor is at key 1: a tried key 1 is passed over, and the cursor moves past key 2.
    assert_eq!(env.take(&s, &[1]).await, 2);
    assert_eq!(env.take(&s, &[]).await, 0);
    assert_eq!(env.used(&s).await, [4, 2, 3]);
}

async fn least_loaded_spreads_by_limits(env: &Env) {
    let s = env.spec(
        "ll",
        keys(&[(100, 1), (200, 1), (300, 1)]),
        Strategy::LeastLoaded,
    );
    let mut counts = [0u64; 3];
    for i in env.takes(&s, 60).await {
        counts[i] += 1;
    }
    assert_eq!(counts, [10, 20, 30], "least share of its own rpm");
    assert_eq!(env.used(&s).await, counts);
}

async fn weighted_spreads_by_weights(env: &Env) {
    let s = env.spec(
        "w",
        keys(&[(1000, 1), (1000, 2), (1000, 3)]),
        Strategy::Weighted,
    );
    let mut counts = [0u64; 3];
    for i in env.takes(&s, 60).await {
        counts[i] += 1;
    }
    assert_eq!(counts, [10, 20, 30], "least share of its weight");
    let status = env.status(&s).await;
    let totals: Vec<u64> = status.iter().map(|k| k.total).collect();
    assert_eq!(totals, counts);
}

/// Under equal limits (or weights) the least share is the least count: a tie goes to the
/// lowest index, and the count a pick adds breaks the next one.
async fn tie_to_the_lowest_index(env: &Env, s: &PoolSpec) {
    let mut got = env.takes(s, 3).await;
    // Counts 1,1,1: with key 0 tried, keys 1 and 2 tie and key 1 wins.
    got.push(env.take(s, &[0]).await);
    // Counts 1,2,1: keys 0 and 2 tie and key 0 wins (a cursor would have said 2).
    got.push(env.take(s, &[]).await);
    got.push(env.take(s, &[]).await);
    assert_eq!(got, [0, 1, 2, 1, 0, 2], "{:?}", s.strategy);
}

async fn equal_limits_tie_to_the_lowest_index(env: &Env) {
    let s = env.spec("ll-eq", keys(&[(100, 1); 3]), Strategy::LeastLoaded);
    tie_to_the_lowest_index(env, &s).await;
}

async fn equal_weights_tie_to_the_lowest_index(env: &Env) {
    // Equal weights, unequal limits: the weighted share is the count too.
    let s = env.spec(
        "w-eq",
        keys(&[(100, 5), (200, 5), (300, 5)]),
        Strategy::Weighted,
    );
    tie_to_the_lowest_index(env, &s).await;
}

async fn mixed_limit_ties_start_at_call_modulo_n(env: &Env) {
    // The store is fresh: its calls are numbered from 0 here.
    let s = env.spec(
        "ll-mixed",
        keys(&[(100, 1), (100, 1), (200, 1)]),
        Strategy::LeastLoaded,
    );
    // Shares after each pick (in hundredths of rpm): call 0 from key 0 (0,0,0 -> 0); call 1
    // from key 1 (1,0,0 -> 1); call 2 from key 2 (1,1,0 -> 2); call 3 from key 0 (1,1,.5 ->
    // 2); call 4 from key 1 (1,1,1 -> 1); call 5 from key 2 (1,2,1 -> 2).
    assert_eq!(env.takes(&s, 6).await, [0, 1, 2, 2, 1, 2]);
}

async fn rpm_limit_makes_the_next_acquire_wait(env: &Env) {
    let s = env.spec("rpm", keys(&[(3, 1), (1, 1)]), Strategy::RoundRobin);
    let start = Instant::now();
    // Key 1 is full after one request and passed over; key 0 after three.
    assert_eq!(env.takes(&s, 4).await, [0, 1, 0, 0]);
    let got = env.acquire(&s, &[]).await;
    let Acquire::Wait(wait) = got else {
        panic!("both keys are full: expected a wait, got {got:?}");
    };
    // The first bucket leaves once all of its second has left the minute: 60 to 61 s after
    // the first request.
    assert!(
        wait <= Duration::from_secs(61) && wait + start.elapsed() >= Duration::from_secs(60),
        "waited {wait:?}"
    );
    let status = env.status(&s).await;
    let seen: Vec<(u64, u64, &str)> = status
        .iter()
        .map(|k| (k.used_this_minute, k.total, k.mode.label()))
        .collect();
    assert_eq!(
        seen,
        [(3, 3, "ready"), (1, 1, "ready")],
        "full is not a mode"
    );
    if env.paused() {
        // Every request fell in second 0: it leaves when second 61 starts.
        assert_eq!(wait, Duration::from_secs(61));
        tokio::time::sleep(wait - ms(1)).await;
        assert_eq!(env.acquire(&s, &[]).await, Acquire::Wait(ms(1)));
        assert_eq!(env.take_after(ms(1), &s, &[]).await, 1);
        assert_eq!(env.used(&s).await, [0, 1]);
    }
}

async fn cooldown_with_a_hint_then_back(env: &Env) {
    let s = env.spec("cool", keys(&[(100, 1); 3]), Strategy::RoundRobin);
    assert_eq!(env.take(&s, &[]).await, 0);
    let hint = ms(400);
    let since = Instant::now();
    env.report(&s, 0, 429, cool(hint)).await;
    assert_eq!(env.takes(&s, 4).await, [1, 2, 1, 2], "key 0 is out");
    let wait = env.assert_wait(env.acquire(&s, &[1, 2]).await, hint, since);
    let status = env.status(&s).await;
    assert!(
        matches!(
            status[0].mode,
            KeyMode::Cooling {
                reason: "rate_limited",
                ..
            }
        ),
        "{:?}",
        status[0].mode
    );
    assert!(remaining(&status[0].mode).unwrap() <= hint);
    assert_eq!(status[0].last_status, Some(429));
    assert_eq!(
        env.take_after(wait, &s, &[1, 2]).await,
        0,
        "back when the hint ends"
    );
    assert_eq!(env.labels(&s).await, ["ready"; 3]);
}

async fn quarantine_then_back(env: &Env) {
    let s = env.spec("quarantine", keys(&[(100, 1); 3]), Strategy::RoundRobin);
    let period = ms(500);
    let since = Instant::now();
    env.report(&s, 1, 401, quarantine(period)).await;
    // A shorter mark does not shorten the penalty, nor turn it into a cooldown.
    env.report(&s, 1, 429, cool(ms(50))).await;
    let status = env.status(&s).await;
    assert!(
        matches!(
            status[1].mode,
            KeyMode::Quarantined {
                reason: "unauthorized",
                ..
            }
        ),
        "{:?}",
        status[1].mode
    );
    assert!(remaining(&status[1].mode).unwrap() + since.elapsed() + ms(1) >= period);
    assert_eq!(env.takes(&s, 4).await, [0, 2, 0, 2], "key 1 is out");
    let wait = env.assert_wait(env.acquire(&s, &[0, 2]).await, period, since);
    assert_eq!(env.take_after(wait, &s, &[0, 2]).await, 1);
    assert_eq!(env.labels(&s).await, ["ready"; 3]);
}

async fn disable_enable_reset(env: &Env) {
    let s = env.spec("operator", keys(&[(100, 1); 2]), Strategy::RoundRobin);
    env.act(&s, 0, KeyAction::Disable).await;
    assert_eq!(env.labels(&s).await, ["disabled", "ready"]);
    assert_eq!(env.takes(&s, 3).await, [1, 1, 1]);
    assert_eq!(
        env.acquire(&s, &[1]).await,
        Acquire::Exhausted,
        "a disabled key never serves: nothing to wait for"
    );
    // Neither a mark nor a reset undoes a disable.
    env.report(&s, 0, 429, cool(ms(300))).await;
    env.act(&s, 0, KeyAction::Reset).await;
    assert_eq!(env.labels(&s).await, ["disabled", "ready"]);
    env.act(&s, 0, KeyAction::Enable).await;
    assert_eq!(env.labels(&s).await, ["ready", "ready"]);
    assert_eq!(env.take(&s, &[1]).await, 0);
    // A reset ends a cooldown (or quarantine) at once.
    env.report(&s, 1, 429, cool(Duration::from_secs(30))).await;
    env.report(&s, 0, 401, quarantine(Duration::from_secs(30)))
        .await;
    assert_eq!(env.labels(&s).await, ["quarantined", "cooling"]);
    env.act(&s, 1, KeyAction::Reset).await;
    env.act(&s, 0, KeyAction::Reset).await;
    assert_eq!(env.labels(&s).await, ["ready", "ready"]);
    assert_eq!(env.take(&s, &[0]).await, 1);
    // A disable replaces a cooldown; an enable then leaves the key ready.
    env.report(&s, 0, 429, cool(Duration::from_secs(30))).await;
    env.act(&s, 0, KeyAction::Disable).await;
    env.act(&s, 0, KeyAction::Enable).await;
    assert_eq!(env.labels(&s).await, ["ready", "ready"]);
    // An index past the keys is ignored.
    env.act(&s, 7, KeyAction::Disable).await;
    env.report(&s, 7, 429, cool(ms(300))).await;
    assert_eq!(env.labels(&s).await, ["ready", "ready"]);
}

async fn tried_keys_are_skipped(env: &Env) {
    let s = env.spec("tried", keys(&[(100, 1); 3]), Strategy::LeastLoaded);
    for _ in 0..4 {
        let got = env.take(&s, &[0]).await;
        assert_ne!(got, 0, "key 0 was tried");
    }
    assert_eq!(env.take(&s, &[0, 1]).await, 2);
    assert_eq!(env.acquire(&s, &[0, 1, 2]).await, Acquire::Exhausted);
    assert_eq!(env.acquire(&s, &[2, 0, 1]).await, Acquire::Exhausted);
    assert_eq!(env.used(&s).await, [0, 2, 3]);
}

async fn all_cooling_waits_for_the_first_key_back(env: &Env) {
    let s = env.spec("all-cooling", keys(&[(100, 1); 3]), Strategy::LeastLoaded);
    let since = Instant::now();
    env.report(&s, 0, 429, cool(ms(900))).await;
    env.report(&s, 1, 429, cool(ms(300))).await;
    env.report(&s, 2, 429, cool(ms(600))).await;
    assert_eq!(env.labels(&s).await, ["cooling"; 3]);
    let wait = env.assert_wait(env.acquire(&s, &[]).await, ms(300), since);
    env.assert_wait(env.acquire(&s, &[1]).await, ms(600), since);
    assert_eq!(env.acquire(&s, &[0, 1, 2]).await, Acquire::Exhausted);
    assert_eq!(
        env.take_after(wait, &s, &[]).await,
        1,
        "key 1 is back first"
    );
}

async fn reload_keeps_state_by_fingerprint(env: &Env) {
    let [a, b, c, d]: [Key; 4] = keys(&[(100, 1); 4]).try_into().unwrap();
    let first = env.spec(
        "reload",
        vec![a, b.clone(), c.clone()],
        Strategy::RoundRobin,
    );
    assert_eq!(env.takes(&first, 4).await, [0, 1, 2, 0]);
    env.report(&first, 1, 429, cool(Duration::from_secs(30)))
        .await;
    // Key a removed, d added, the order changed; the same pool.
    let second = PoolSpec::new(
        first.name.clone(),
        vec![c.clone(), b.clone(), d.clone()],
        Strategy::RoundRobin,
    );
    let status = env.status(&second).await;
    let seen: Vec<(&str, &str, u64, u64)> = status
        .iter()
        .map(|k| (k.name.as_str(), k.mode.label(), k.used_this_minute, k.total))
        .collect();
    assert_eq!(
        seen,
        [
            ("k2", "ready", 1, 1),
            ("k1", "cooling", 1, 1),
            ("k3", "ready", 0, 0)
        ]
    );
    let fingerprints: Vec<&str> = status.iter().map(|k| k.fingerprint.as_str()).collect();
    assert_eq!(
        fingerprints,
        [&c.fingerprint, &b.fingerprint, &d.fingerprint]
    );
    // The round-robin cursor (1, after key 0) is kept too: b (now 1) cools, so d (2) serves.
    assert_eq!(env.take(&second, &[]).await, 2);
    let third = PoolSpec::new(first.name.clone(), vec![b, c], Strategy::RoundRobin);
    assert_eq!(env.labels(&third).await, ["cooling", "ready"]);
    assert_eq!(env.used(&third).await, [1, 1]);
}

// ---------------------------------------------------------------- the differences, as such

#[tokio::test(start_paused = true)]
async fn window_seconds_memory_counts_from_the_store_creation() {
    let env = Env::memory();
    let s = env.spec("seconds", keys(&[(1, 1)]), Strategy::RoundRobin);
    tokio::time::sleep(ms(900)).await;
    assert_eq!(env.take(&s, &[]).await, 0);
    // Second 0 of the store's clock leaves when its second 61 starts.
    assert_eq!(
        env.acquire(&s, &[]).await,
        Acquire::Wait(Duration::from_millis(60_100))
    );
}

#[tokio::test]
async fn window_seconds_redis_are_unix_seconds() {
    let env = Env::redis(1).await;
    let s = env.spec("seconds", keys(&[(1, 1)]), Strategy::RoundRobin);
    assert_eq!(env.take(&s, &[]).await, 0);
    let unix_ms = || {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        u64::try_from(since.as_millis()).unwrap()
    };
    let before = unix_ms();
    let got = env.acquire(&s, &[]).await;
    let after = unix_ms();
    let Acquire::Wait(wait) = got else {
        panic!("expected a wait, got {got:?}");
    };
    assert!(wait > Duration::from_secs(59), "waited {wait:?}");
    // The key is ready when a whole Unix second starts (Redis's clock is this host's).
    let wait = u64::try_from(wait.as_millis()).unwrap();
    let (earliest, latest) = (before + wait - 5, after + wait + 5);
    assert!(
        earliest.div_ceil(1000) * 1000 <= latest,
        "ready between {earliest} and {latest} ms: no whole second"
    );
    env.assert_shared();
}

#[tokio::test(start_paused = true)]
async fn wait_precision_memory_is_exact() {
    let env = Env::memory();
    let s = env.spec("precision", keys(&[(100, 1)]), Strategy::RoundRobin);
    let period = Duration::from_micros(250_500);
    env.report(&s, 0, 429, cool(period)).await;
    assert_eq!(env.acquire(&s, &[]).await, Acquire::Wait(period));
}

#[tokio::test]
async fn wait_precision_redis_is_whole_milliseconds() {
    let env = Env::redis(1).await;
    let s = env.spec("precision", keys(&[(100, 1)]), Strategy::RoundRobin);
    let since = Instant::now();
    env.report(&s, 0, 429, cool(Duration::from_micros(250_500)))
        .await;
    let wait = env.assert_wait(env.acquire(&s, &[]).await, ms(250), since);
    assert_eq!(wait.subsec_nanos() % 1_000_000, 0, "waited {wait:?}");
    env.assert_shared();
}

#[tokio::test(start_paused = true)]
async fn limit_share_memory_enforces_its_part() {
    let env = Env::memory_with_share(2);
    let s = env.spec("share", keys(&[(4, 1)]), Strategy::RoundRobin);
    assert_eq!(env.takes(&s, 2).await, [0, 0]);
    assert!(matches!(env.acquire(&s, &[]).await, Acquire::Wait(_)));
    // A share never brings a limit below one request.
    let env = Env::memory_with_share(8);
    let s = env.spec("share", keys(&[(4, 1)]), Strategy::RoundRobin);
    assert_eq!(env.take(&s, &[]).await, 0);
    assert!(matches!(env.acquire(&s, &[]).await, Acquire::Wait(_)));
}

#[tokio::test]
async fn limit_share_redis_enforces_the_whole_limit() {
    let env = Env::redis(2).await;
    let s = env.spec("share", keys(&[(4, 1)]), Strategy::RoundRobin);
    assert_eq!(env.takes(&s, 4).await, [0, 0, 0, 0]);
    assert!(matches!(env.acquire(&s, &[]).await, Acquire::Wait(_)));
    env.assert_shared();
}

/// Key k0 cools and counts a request; a reload drops it; a later one adds it back.
async fn readded_key(env: &Env) -> KeyStatus {
    let [a, b]: [Key; 2] = keys(&[(100, 1); 2]).try_into().unwrap();
    let both = env.spec("readded", vec![a.clone(), b.clone()], Strategy::RoundRobin);
    assert_eq!(env.take(&both, &[]).await, 0);
    env.report(&both, 0, 429, cool(Duration::from_secs(30)))
        .await;
    let without = PoolSpec::new(both.name.clone(), vec![b.clone()], Strategy::RoundRobin);
    assert_eq!(env.take(&without, &[]).await, 0);
    let again = PoolSpec::new(both.name.clone(), vec![a, b], Strategy::RoundRobin);
    env.status(&again).await.remove(0)
}

#[tokio::test(start_paused = true)]
async fn readded_key_memory_starts_afresh() {
    let k = readded_key(&Env::memory()).await;
    assert_eq!(
        (k.mode, k.used_this_minute, k.total),
        (KeyMode::Ready, 0, 0)
    );
}

#[tokio::test]
async fn readded_key_redis_keeps_its_count_and_mark() {
    let env = Env::redis(1).await;
    let k = readded_key(&env).await;
    assert_eq!(
        (k.mode.label(), k.used_this_minute, k.total),
        ("cooling", 1, 1)
    );
    env.assert_shared();
}

async fn reason_shown(env: &Env) -> KeyMode {
    let s = env.spec("reason", keys(&[(100, 1)]), Strategy::RoundRobin);
    let mark = Mark::Cool {
        period: Duration::from_secs(30),
        reason: "overloaded",
    };
    env.report(&s, 0, 529, Some(mark)).await;
    env.status(&s).await.remove(0).mode
}

#[tokio::test(start_paused = true)]
async fn mark_reason_memory_shows_it_as_given() {
    let mode = reason_shown(&Env::memory()).await;
    assert!(
        matches!(
            mode,
            KeyMode::Cooling {
                reason: "overloaded",
                ..
            }
        ),
        "{mode:?}"
    );
}

#[tokio::test]
async fn mark_reason_redis_reads_an_unknown_one_as_other() {
    let env = Env::redis(1).await;
    let mode = reason_shown(&env).await;
    assert!(
        matches!(
            mode,
            KeyMode::Cooling {
                reason: "other",
                ..
            }
        ),
        "{mode:?}"
    );
    env.assert_shared();
}
