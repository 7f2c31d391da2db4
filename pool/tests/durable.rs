//! The Redis store through outages and beside other key sets: operator actions that hold on
//! every instance (queued while Redis is away, the newest winning, never expiring with the
//! state hash), and two instances with different keys on one pool name, both served and each
//! other's stale entries swept. Each test runs its own `redis-server` and two `RedisStore`s
//! on it, as two keyrelay instances would.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests panic on what they did not expect"
)]

mod support;

use keyrelay_pool::{
    fingerprint, Acquire, KeyAction, KeyMode, PoolSpec, RedisStore, Store, StoreState, Strategy,
};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use support::{keys, ms, redis_store, RedisServer};
use tokio::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(15);

fn spec(name: &str, n: usize) -> PoolSpec {
    PoolSpec::new(name, keys(&vec![(1000, 1); n]), Strategy::RoundRobin)
}

fn modes(status: &[keyrelay_pool::KeyStatus]) -> Vec<&'static str> {
    status.iter().map(|k| k.mode.label()).collect()
}

/// Drive both stores (a command is how a store notices Redis went or came back) until both
/// are shared again and `check` holds on both; fails at the deadline.
async fn until_shared_and(
    stores: &[&Arc<RedisStore>],
    spec: &PoolSpec,
    what: &str,
    check: impl Fn(&[keyrelay_pool::KeyStatus]) -> bool,
) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut ok = true;
        for s in stores {
            let _ = s.acquire(spec, &[]).await;
            ok &= s.state() == StoreState::Shared && check(&s.status(spec).await);
        }
        if ok {
            return;
        }
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(ms(20)).await;
    }
}

/// `n` acquires on each store; the keys they got.
async fn picks(stores: &[&Arc<RedisStore>], spec: &PoolSpec, n: usize) -> Vec<usize> {
    let mut got = Vec::new();
    for _ in 0..n {
        for s in stores {
            match s.acquire(spec, &[]).await {
                Acquire::Key(i) => got.push(i),
                other => panic!("expected a key, got {other:?}"),
            }
        }
    }
    got
}

fn ops_field(redis: &RedisServer, pool: &str, secret: &str) -> String {
    redis.cli(&[
        "HGET",
        &format!("keyrelay:{{{pool}}}:ops"),
        &fingerprint(secret),
    ])
}

#[tokio::test]
async fn a_disable_during_an_outage_reaches_every_instance() {
    let mut redis = RedisServer::start().await;
    let a = redis_store(&redis, |_| {}).await;
    let b = redis_store(&redis, |_| {}).await;
    let s = spec("outage", 3);
    picks(&[&a, &b], &s, 1).await;

    redis.kill();
    let kept = a.act(&s, 0, KeyAction::Disable).await;
    assert_eq!(kept, StoreState::Degraded, "answered as not shared yet");
    // Applied on this instance at once.
    assert_eq!(modes(&a.status(&s).await), ["disabled", "ready", "ready"]);
    assert!(!picks(&[&a], &s, 6).await.contains(&0));

    // Redis comes back empty: the queued disable is written, and every instance sees it.
    redis.restart().await;
    until_shared_and(&[&a, &b], &s, "both shared, key 0 disabled", |st| {
        st[0].mode == KeyMode::Disabled
    })
    .await;
    assert!(!picks(&[&a, &b], &s, 10).await.contains(&0));
    assert!(ops_field(&redis, &s.name, "sk-contract-0").ends_with("|disabled"));
    let ops = format!("keyrelay:{{{}}}:ops", s.name);
    assert_eq!(
        redis.cli(&["PTTL", &ops]),
        "-1",
        "the operator hash never expires"
    );

    // Redis is lost again, data and all: the disable is written again when it is back.
    redis.restart().await;
    until_shared_and(&[&a, &b], &s, "disable written again", |st| {
        st[0].mode == KeyMode::Disabled
    })
    .await;
    assert!(!picks(&[&a, &b], &s, 10).await.contains(&0));
    // An enable, shared at once, brings the key back everywhere.
    assert_eq!(b.act(&s, 0, KeyAction::Enable).await, StoreState::Shared);
    until_shared_and(&[&a, &b], &s, "key 0 enabled", |st| {
        st[0].mode == KeyMode::Ready
    })
    .await;
    assert!(picks(&[&a, &b], &s, 3).await.contains(&0));
}

#[tokio::test]
async fn a_disable_outlives_the_state_hash() {
    let redis = RedisServer::start().await;
    let a = redis_store(&redis, |_| {}).await;
    let b = redis_store(&redis, |_| {}).await;
    let s = spec("quiet", 3);
    picks(&[&a, &b], &s, 2).await;
    assert_eq!(a.act(&s, 1, KeyAction::Disable).await, StoreState::Shared);
    // A quiet day: the state hash (and the buckets) expire.
    let state = format!("keyrelay:{{{}}}:state", s.name);
    redis.cli(&["PEXPIRE", &state, "1"]);
    redis.cli(&["DEL", &format!("keyrelay:{{{}}}:b", s.name)]);
    let deadline = Instant::now() + DEADLINE;
    while redis.cli(&["EXISTS", &state]) != "0" {
        assert!(Instant::now() < deadline, "state hash never expired");
        tokio::time::sleep(ms(5)).await;
    }
    // Status reads the disable from the operator hash; acquire restores its mirror first.
    assert_eq!(modes(&b.status(&s).await), ["ready", "disabled", "ready"]);
    assert!(!picks(&[&b, &a], &s, 10).await.contains(&1));
    let fp = fingerprint("sk-contract-1");
    assert!(redis
        .cli(&["HGET", &state, &format!("m:{fp}")])
        .contains("|disabled|"));
    assert_eq!(modes(&a.status(&s).await), ["ready", "disabled", "ready"]);
    assert_eq!((a.errors(), b.errors()), (0, 0));
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// Wait until the wall clock has moved past `ms`.
async fn past(ms_then: u128) {
    while SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
        <= ms_then
    {
        tokio::time::sleep(ms(1)).await;
    }
}

#[tokio::test]
async fn an_older_queued_action_never_overrides_a_newer_one() {
    let mut redis = RedisServer::start().await;
    // Instance a finds Redis again only when told to (its probe waits an hour).
    let a = redis_store(&redis, |s| {
        s.probe_interval = Duration::from_secs(3600);
        s.probe_max_interval = Duration::from_secs(3600);
    })
    .await;
    let b = redis_store(&redis, |_| {}).await;
    let s = spec("lww", 2);
    picks(&[&a, &b], &s, 1).await;

    redis.kill();
    assert_eq!(a.act(&s, 0, KeyAction::Disable).await, StoreState::Degraded);
    // Actions are stamped in whole ms (ties go to the later write): make b's later than a's.
    past(now_ms()).await;
    assert_eq!(b.act(&s, 0, KeyAction::Enable).await, StoreState::Degraded);
    redis.restart().await;
    // b is back first and writes its enable; then a writes its older disable.
    until_shared_and(&[&b], &s, "b shared", |_| true).await;
    assert!(ops_field(&redis, &s.name, "sk-contract-0").ends_with("|enabled"));
    assert_eq!(a.state(), StoreState::Degraded);
    a.ping().await.expect("redis answers");
    assert_eq!(a.state(), StoreState::Shared);
    assert!(
        ops_field(&redis, &s.name, "sk-contract-0").ends_with("|enabled"),
        "the older disable overrode the newer enable"
    );
    until_shared_and(&[&a, &b], &s, "key 0 ready on both", |st| {
        st[0].mode == KeyMode::Ready
    })
    .await;
    assert!(picks(&[&a, &b], &s, 2).await.contains(&0));

    // The other way round: a newer disable queued on a wins over an older enable in Redis.
    assert_eq!(b.act(&s, 1, KeyAction::Enable).await, StoreState::Shared);
    past(now_ms()).await;
    redis.kill();
    assert_eq!(a.act(&s, 1, KeyAction::Disable).await, StoreState::Degraded);
    redis.restart().await;
    a.ping().await.expect("redis answers");
    until_shared_and(&[&a, &b], &s, "key 1 disabled on both", |st| {
        st[1].mode == KeyMode::Disabled
    })
    .await;
}

/// Move the pool's history `secs` seconds into the past, as if that much time had gone by.
fn age(redis: &RedisServer, pool: &str, secs: u64) {
    let script = r"
        local state, buckets, dues, secs = KEYS[1], KEYS[2], KEYS[3], tonumber(ARGV[1])
        local b = redis.call('HGETALL', buckets)
        for i = 1, #b, 2 do
          local fp, s = string.match(b[i], '^(.+):(%d+)$')
          if fp then
            redis.call('HDEL', buckets, b[i])
            redis.call('HSET', buckets, fp .. ':' .. (tonumber(s) - secs), b[i + 1])
          end
        end
        local st = redis.call('HGETALL', state)
        for i = 1, #st, 2 do
          local kind = string.match(st[i], '^(%a+)')
          if kind == 'o' or st[i] == 'x' then
            redis.call('HSET', state, st[i], tonumber(st[i + 1]) - secs)
          elseif kind == 'f' then
            redis.call('HSET', state, st[i], tonumber(st[i + 1]) - secs * 1000)
          end
        end
        local d = redis.call('ZRANGE', dues, 0, -1, 'WITHSCORES')
        for i = 1, #d, 2 do redis.call('ZADD', dues, tonumber(d[i + 1]) - secs, d[i]) end
        return 1
    ";
    let base = format!("keyrelay:{{{pool}}}:");
    let got = redis.cli(&[
        "EVAL",
        script,
        "3",
        &format!("{base}state"),
        &format!("{base}b"),
        &format!("{base}due"),
        &secs.to_string(),
    ]);
    assert_eq!(got, "1", "aging failed: {got}");
}

#[tokio::test]
async fn two_key_sets_on_one_pool_name_both_serve_and_the_stale_entries_go() {
    let redis = RedisServer::start().await;
    let a = redis_store(&redis, |_| {}).await;
    let b = redis_store(&redis, |_| {}).await;
    // A rolling reload (or a second deployment): one pool name, different keys.
    let mine = PoolSpec::new("mixed", keys(&[(100, 1); 2]), Strategy::RoundRobin);
    let theirs_keys: Vec<_> = (0..2)
        .map(|i| {
            keyrelay_pool::Key::new(
                format!("t{i}"),
                keyrelay_pool::Secret::new(format!("sk-theirs-{i}")),
                2,
                1,
            )
        })
        .collect();
    let theirs = PoolSpec::new("mixed", theirs_keys, Strategy::RoundRobin);
    assert_eq!(picks(&[&a], &mine, 3).await.len(), 3);
    // Theirs fill up at 2 rpm each (the round-robin cursor is the pool's, shared by both
    // sets); mine keep serving.
    let mut got = picks(&[&b], &theirs, 4).await;
    got.sort_unstable();
    assert_eq!(got, [0, 0, 1, 1]);
    assert!(matches!(b.acquire(&theirs, &[]).await, Acquire::Wait(_)));
    assert_eq!(picks(&[&a], &mine, 1).await.len(), 1);
    let used = |st: &[keyrelay_pool::KeyStatus]| -> Vec<u64> {
        st.iter().map(|k| k.used_this_minute).collect()
    };
    assert_eq!(used(&a.status(&mine).await).iter().sum::<u64>(), 4);
    assert_eq!(used(&b.status(&theirs).await), [2, 2]);

    // A minute later, with only mine serving, their counts and buckets are swept away.
    age(&redis, "mixed", 62);
    picks(&[&a], &mine, 2).await;
    let state = "keyrelay:{mixed}:state";
    for secret in ["sk-theirs-0", "sk-theirs-1"] {
        let fp = fingerprint(secret);
        assert_eq!(
            redis.cli(&["HGET", state, &format!("n:{fp}")]),
            "",
            "{secret}"
        );
        assert_eq!(
            redis.cli(&["HGET", state, &format!("o:{fp}")]),
            "",
            "{secret}"
        );
        assert_eq!(
            redis.cli(&["HGET", state, &format!("t:{fp}")]),
            "2",
            "{secret}"
        );
        let bucket = redis.cli(&["HKEYS", "keyrelay:{mixed}:b"]);
        assert!(!bucket.contains(&fp), "{secret}'s buckets left: {bucket}");
        let due = redis.cli(&["ZRANGE", "keyrelay:{mixed}:due", "0", "-1"]);
        assert!(!due.contains(&fp), "{secret} still due: {due}");
    }
    // Theirs serve again, counted afresh; mine kept their live counts.
    let mut got = picks(&[&b], &theirs, 2).await;
    got.sort_unstable();
    assert_eq!(got, [0, 1]);
    assert_eq!(used(&b.status(&theirs).await), [1, 1]);
    assert_eq!(used(&a.status(&mine).await), [1, 1]);
    assert_eq!((a.errors(), b.errors()), (0, 0));
}

#[tokio::test]
async fn a_disable_taken_elsewhere_holds_here_through_a_later_outage() {
    let mut redis = RedisServer::start().await;
    let a = redis_store(&redis, |_| {}).await;
    let b = redis_store(&redis, |s| s.sync_interval = ms(50)).await;
    let s = spec("later", 3);
    picks(&[&a, &b], &s, 1).await;
    assert_eq!(a.act(&s, 2, KeyAction::Disable).await, StoreState::Shared);
    // b's memory learns it in the background, while Redis serves.
    let deadline = Instant::now() + DEADLINE;
    while b.fallback_status(&s)[2].mode != KeyMode::Disabled {
        assert!(
            Instant::now() < deadline,
            "b's memory never learnt the disable"
        );
        tokio::time::sleep(ms(10)).await;
    }
    // Redis goes away: b serves from its memory, and still never uses key 2.
    redis.kill();
    assert!(!picks(&[&b], &s, 9).await.contains(&2));
    assert_eq!(b.state(), StoreState::Degraded);
    assert_eq!(modes(&b.status(&s).await), ["ready", "ready", "disabled"]);
    // An enable taken elsewhere reaches b's memory the same way.
    redis.restart().await;
    assert_eq!(a.act(&s, 2, KeyAction::Enable).await, StoreState::Degraded);
    until_shared_and(&[&a, &b], &s, "key 2 enabled", |st| {
        st[2].mode == KeyMode::Ready
    })
    .await;
    let deadline = Instant::now() + DEADLINE;
    while b.fallback_status(&s)[2].mode != KeyMode::Ready {
        assert!(
            Instant::now() < deadline,
            "b's memory never learnt the enable"
        );
        tokio::time::sleep(ms(10)).await;
    }
}
