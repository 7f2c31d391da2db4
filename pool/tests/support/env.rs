//! The harness of the store contract (`pool/tests/contract.rs`): one `Env` per test, holding
//! the store under test (and its redis-server), with the calls the scenarios make.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test support")]

use super::RedisServer;
use keyrelay_pool::{
    Acquire, Key, KeyAction, KeyMode, KeyStatus, Mark, MemoryStore, PoolSpec, RedisSettings,
    RedisStore, RedisTarget, Report, Secret, Store, StoreState, Strategy,
};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use tokio::time::{Duration, Instant};

static NEXT_POOL: AtomicU32 = AtomicU32::new(0);

pub struct Env {
    store: Arc<dyn Store>,
    /// Kept alive for the store; dropped (killed) after it.
    redis: Option<RedisServer>,
}

impl Env {
    pub fn memory() -> Env {
        Env {
            store: Arc::new(MemoryStore::new()),
            redis: None,
        }
    }

    pub fn memory_with_share(share: u32) -> Env {
        Env {
            store: Arc::new(MemoryStore::with_share(share)),
            redis: None,
        }
    }

    /// A Redis store on a redis-server of its own, with timeouts a busy machine keeps within.
    pub async fn redis(instances: u32) -> Env {
        let server = RedisServer::start().await;
        let settings = RedisSettings {
            connect_timeout: Duration::from_secs(2),
            wait_timeout: Duration::from_secs(2),
            command_timeout: Duration::from_secs(2),
            instances,
            ..RedisSettings::default()
        };
        let store = RedisStore::connect(&RedisTarget::Single(server.url()), settings)
            .await
            .expect("redis store");
        assert_eq!(store.state(), StoreState::Shared, "redis answered at start");
        Env {
            store,
            redis: Some(server),
        }
    }

    pub fn paused(&self) -> bool {
        self.redis.is_none()
    }

    /// Every command reached Redis: no answer came from the local fallback.
    pub fn assert_shared(&self) {
        assert_eq!(self.store.state(), StoreState::Shared);
        assert_eq!(self.store.errors(), 0, "redis commands failed");
    }

    /// A spec under a pool name no other scenario uses, so Redis state never leaks.
    pub fn spec(&self, name: &str, keys: Vec<Key>, strategy: Strategy) -> PoolSpec {
        let n = NEXT_POOL.fetch_add(1, Ordering::Relaxed);
        PoolSpec::new(format!("{name}-{}-{n}", std::process::id()), keys, strategy)
    }

    pub async fn acquire(&self, spec: &PoolSpec, tried: &[usize]) -> Acquire {
        self.store.acquire(spec, tried).await
    }

    /// Acquire, expecting a key.
    pub async fn take(&self, spec: &PoolSpec, tried: &[usize]) -> usize {
        match self.acquire(spec, tried).await {
            Acquire::Key(i) => i,
            other => panic!("expected a key (tried {tried:?}), got {other:?}"),
        }
    }

    pub async fn takes(&self, spec: &PoolSpec, n: usize) -> Vec<usize> {
        let mut got = Vec::with_capacity(n);
        for _ in 0..n {
            got.push(self.take(spec, &[]).await);
        }
        got
    }

    pub async fn report(&self, spec: &PoolSpec, index: usize, status: u16, mark: Option<Mark>) {
        let report = Report {
            status: Some(status),
            mark,
        };
        self.store.report(spec, index, report).await;
    }

    /// Apply an operator's action; checks the answer says where it is kept: in this process
    /// (memory) or in Redis (shared, as Redis answers throughout the contract).
    pub async fn act(&self, spec: &PoolSpec, index: usize, action: KeyAction) {
        let kept = self.store.act(spec, index, action).await;
        let want = if self.paused() {
            StoreState::Embedded
        } else {
            StoreState::Shared
        };
        assert_eq!(kept, want, "{action:?} on key {index}");
    }

    pub async fn status(&self, spec: &PoolSpec) -> Vec<KeyStatus> {
        self.store.status(spec).await
    }

    pub async fn used(&self, spec: &PoolSpec) -> Vec<u64> {
        let status = self.status(spec).await;
        status.iter().map(|k| k.used_this_minute).collect()
    }

    pub async fn labels(&self, spec: &PoolSpec) -> Vec<&'static str> {
        let status = self.status(spec).await;
        status.iter().map(|k| k.mode.label()).collect()
    }

    /// Check a `Wait` for a penalty of `period` begun at `since`, and return it. Exact in
    /// paused time; Redis may have seen up to the time since then, plus its 1 ms rounding.
    pub fn assert_wait(&self, got: Acquire, period: Duration, since: Instant) -> Duration {
        let Acquire::Wait(d) = got else {
            panic!("expected a wait of about {period:?}, got {got:?}");
        };
        let lag = since.elapsed() + if self.paused() { Duration::ZERO } else { ms(1) };
        assert!(
            d <= period && d + lag >= period,
            "waited {d:?} for a penalty of {period:?} begun {:?} ago",
            since.elapsed()
        );
        d
    }

    /// Sleep out a wait the store answered, then acquire until a key comes: at once in paused
    /// time; within a short grace on Redis, whose clock is not the test's.
    pub async fn take_after(&self, wait: Duration, spec: &PoolSpec, tried: &[usize]) -> usize {
        tokio::time::sleep(wait).await;
        let grace = if self.paused() {
            Duration::ZERO
        } else {
            ms(500)
        };
        let deadline = Instant::now() + grace;
        loop {
            match self.acquire(spec, tried).await {
                Acquire::Key(i) => return i,
                other => assert!(
                    Instant::now() < deadline,
                    "still {other:?} {grace:?} after the wait of {wait:?} ran out"
                ),
            }
            tokio::time::sleep(ms(5)).await;
        }
    }
}

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Keys `k0`, `k1`, ... with these (rpm, weight).
pub fn keys(limits: &[(u32, u32)]) -> Vec<Key> {
    limits
        .iter()
        .enumerate()
        .map(|(i, (rpm, weight))| {
            Key::new(
                format!("k{i}"),
                Secret::new(format!("sk-contract-{i}")),
                *rpm,
                *weight,
            )
        })
        .collect()
}

pub fn cool(period: Duration) -> Option<Mark> {
    Some(Mark::Cool {
        period,
        reason: "rate_limited",
    })
}

pub fn quarantine(period: Duration) -> Option<Mark> {
    Some(Mark::Quarantine {
        period,
        reason: "unauthorized",
    })
}

/// A mode's remaining time, if it has one.
pub fn remaining(mode: &KeyMode) -> Option<Duration> {
    match mode {
        KeyMode::Cooling { remaining, .. } | KeyMode::Quarantined { remaining, .. } => {
            Some(*remaining)
        }
        KeyMode::Ready | KeyMode::Disabled => None,
    }
}
