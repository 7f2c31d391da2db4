//! The shared store: pool state in Redis (or Redis Cluster), so many instances act as one pool,
//! with this process's memory as the fallback whenever Redis is away.
//!
//! # Data model
//! Every key lives under `keyrelay:{<pool>}:`; the braces are a Cluster hash tag, so one pool's
//! keys share a slot and each script touches a single node. Every key carries a TTL.
//!
//! | key                   | type | holds                                                     | TTL   |
//! |-----------------------|------|-----------------------------------------------------------|-------|
//! | `keyrelay:{p}:state`  | hash | `rr`: the shared round-robin cursor; `x`: the second when the next bucket leaves the window; `mk`: no mark ends later than this (ms; a disable counts as never), so the marks are read only while one may be in force; per key `<fp>` (fingerprint): `m:<fp>` its mark, `<until_ms>\|<cooling\|quarantined\|disabled>\|<reason>`; `n:<fp>` requests in its live buckets; `o:<fp>` its oldest live bucket's second; `f:<fp>` when, being full, it frees up (ms); `t:<fp>` requests counted before the live buckets (the total is `t + n`); `_`: a fixed text over 64 bytes, so Redis keeps the hash a hash table (see below) | 1 day, refreshed by use (longer if a mark needs it) |
//! | `keyrelay:{p}:b`      | hash | `<fp>:<second>`: requests given to that key in that second (Redis time); `_` as in `state` | 125 s, renewed by each new bucket |
//! | `keyrelay:{probe}:alive` | string | written by the health probe                           | 10 s  |
//!
//! A key's window is its buckets of the last 61 whole seconds: a bucket counts until all of its
//! second has left the minute, so no key takes more than its rpm in any 60 s (and at least
//! 60/61 of it). A mark whose `until_ms` has passed is read as no mark; a disable has no end
//! until enabled.
//!
//! Redis stores a small hash as a listpack and finds a field by walking it; with a minute of
//! buckets per key that walk costs microseconds per lookup. One value longer than 64 bytes
//! (`hash-max-listpack-value`) converts a hash to a hash table for good, with constant-time
//! lookups, so the script writes field `_` into both hashes.
//!
//! Keys are named by fingerprint only: no secret, and nothing derived from one beyond the
//! 12-hex-digit keyed fingerprint, is ever sent to Redis.
//!
//! # Round trips
//! `acquire` is one `EVALSHA` of `acquire.lua` (skip, pick, count, answer). A success needs
//! nothing more; a 429 or 401/403 adds one `EVALSHA` of `mark.lua`. Scripts are loaded on
//! every (re)connect and reloaded on `NOSCRIPT`.
//!
//! # Outage
//! A command that errors or outlives `command_timeout` flips the store to degraded (logged
//! once): requests are then served from local memory, each instance enforcing `1/instances` of
//! each limit, while a background probe retries Redis with growing backoff and flips back
//! when a write succeeds. No request ever waits on Redis longer than `command_timeout`.

mod conn;

use crate::memory::MemoryStore;
use crate::select::Strategy;
use crate::store::{
    Acquire, KeyAction, KeyMode, KeyStatus, Mark, PoolSpec, Report, Store, StoreFuture, StoreState,
};
use conn::{Conn, Pools};
use deadpool_redis::redis::{self, Cmd, Script};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::Duration;
use tokio::sync::Notify;

pub use conn::RedisTarget;

/// Timeouts and outage behaviour of the shared store.
#[derive(Clone, Debug)]
pub struct RedisSettings {
    /// Opening one connection (TCP, TLS, AUTH).
    pub connect_timeout: Duration,
    /// Waiting for a pooled connection.
    pub wait_timeout: Duration,
    /// One command, from send to answer. The most a request ever waits on Redis.
    pub command_timeout: Duration,
    /// First probe delay after Redis is lost; doubles up to `probe_max_interval`.
    pub probe_interval: Duration,
    pub probe_max_interval: Duration,
    /// Instances sharing the pool; each enforces `1/instances` of a limit while degraded.
    pub instances: u32,
}

impl Default for RedisSettings {
    fn default() -> Self {
        RedisSettings {
            connect_timeout: Duration::from_millis(50),
            wait_timeout: Duration::from_millis(20),
            command_timeout: Duration::from_millis(50),
            probe_interval: Duration::from_millis(100),
            probe_max_interval: Duration::from_secs(2),
            instances: 1,
        }
    }
}

/// A pool's Redis keys and the fixed part of its script calls, built once per spec.
struct Prepared {
    /// EVALSHA acquire with its keys and strategy; the per-attempt parts follow.
    acquire_head: Cmd,
    /// The state fields acquire.lua reads (`x`, `mk`, `rr` under round-robin, each key's
    /// `n:<fp>`), each key's rpm, then (weighted only) each key's weight.
    acquire_tail: Vec<String>,
    status: Cmd,
    state: String,
    fingerprints: Vec<String>,
}

impl Prepared {
    fn new(spec: &PoolSpec, scripts: &Scripts) -> Prepared {
        let base = format!("keyrelay:{{{}}}:", spec.name);
        let n = spec.keys.len();
        let state = format!("{base}state");
        let keys = [state.clone(), format!("{base}b")];
        // Where every key has the same limit (least-loaded) or weight (weighted), the least
        // share is the least count: the script compares counts and never converts the limits.
        let same = |f: fn(&crate::key::Key) -> u32| {
            spec.keys.windows(2).all(|pair| f(&pair[0]) == f(&pair[1]))
        };
        let strategy = match spec.strategy {
            Strategy::RoundRobin => "rr",
            Strategy::LeastLoaded if same(|k| k.rpm) => "lc",
            Strategy::Weighted if same(|k| k.weight) => "lc",
            Strategy::LeastLoaded => "ll",
            Strategy::Weighted => "w",
        };
        let mut acquire_head = redis::cmd("EVALSHA");
        acquire_head
            .arg(scripts.acquire.get_hash())
            .arg(keys.len())
            .arg(&keys)
            .arg(strategy);
        // The state fields the script reads, then the limits (see acquire.lua).
        let mut acquire_tail: Vec<String> = vec!["x".into(), "mk".into()];
        if spec.strategy == Strategy::RoundRobin {
            acquire_tail.push("rr".into());
        }
        acquire_tail.extend(spec.keys.iter().map(|k| format!("n:{}", k.fingerprint)));
        acquire_tail.extend(spec.keys.iter().map(|k| k.rpm.to_string()));
        if spec.strategy == Strategy::Weighted {
            acquire_tail.extend(spec.keys.iter().map(|k| k.weight.to_string()));
        }
        let mut status = redis::cmd("EVALSHA");
        status
            .arg(scripts.status.get_hash())
            .arg(keys.len())
            .arg(&keys)
            .arg(n);
        for k in &spec.keys {
            status.arg(&k.fingerprint);
        }
        Prepared {
            acquire_head,
            acquire_tail,
            status,
            state,
            fingerprints: spec.keys.iter().map(|k| k.fingerprint.clone()).collect(),
        }
    }
}

struct Scripts {
    acquire: Script,
    mark: Script,
    status: Script,
}

/// Redis-backed pool state with local fallback. Create with [`RedisStore::connect`].
pub struct RedisStore {
    pools: Pools,
    conn: RwLock<Option<Conn>>,
    local: MemoryStore,
    degraded: AtomicBool,
    wake: Arc<Notify>,
    settings: RedisSettings,
    scripts: Scripts,
    prepared: Mutex<HashMap<u64, Arc<Prepared>>>,
    errors: AtomicU64,
    /// Acquire calls made, for tie rotation and housekeeping.
    calls: AtomicU64,
    /// Whether Redis has ever answered, so the first connect is not logged as a recovery.
    connected_before: AtomicBool,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("degraded", &self.degraded.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Build the store and try Redis once (bounded by the connect timeout). Starts degraded,
    /// and probing, if Redis does not answer: keyrelay starts while Redis is down.
    pub async fn connect(
        target: &RedisTarget,
        settings: RedisSettings,
    ) -> Result<Arc<RedisStore>, String> {
        let pools = Pools::new(target, &settings)?;
        let store = Arc::new(RedisStore {
            pools,
            conn: RwLock::new(None),
            local: MemoryStore::with_share(settings.instances),
            degraded: AtomicBool::new(true),
            wake: Arc::new(Notify::new()),
            scripts: Scripts {
                acquire: Script::new(include_str!("acquire.lua")),
                mark: Script::new(include_str!("mark.lua")),
                status: Script::new(include_str!("status.lua")),
            },
            settings,
            prepared: Mutex::new(HashMap::new()),
            errors: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            connected_before: AtomicBool::new(false),
        });
        if let Err(e) = store.probe_once().await {
            tracing::warn!(error = %e, "redis unavailable at start; serving on local state until it answers");
        }
        tokio::spawn(probe_loop(Arc::downgrade(&store), store.wake.clone()));
        Ok(store)
    }

    /// Commands that failed or timed out since start.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    pub fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Acquire)
    }

    /// Check that Redis answers a write, once, within the connect and command timeouts.
    pub async fn ping(&self) -> Result<(), String> {
        self.probe_once().await
    }

    async fn probe_once(&self) -> Result<(), String> {
        let limit = self.settings.connect_timeout
            + self.settings.wait_timeout
            + self.settings.command_timeout;
        let attempt = async {
            let mut conn = self.pools.fresh().await?;
            let mut probe = redis::cmd("SET");
            probe
                .arg("keyrelay:{probe}:alive")
                .arg(1)
                .arg("PX")
                .arg(10_000);
            conn.query::<()>(&probe).await.map_err(|e| e.to_string())?;
            // Load the scripts now, so the hot path never meets NOSCRIPT on a fresh server.
            for script in [
                &self.scripts.acquire,
                &self.scripts.mark,
                &self.scripts.status,
            ] {
                conn.load(script).await.map_err(|e| e.to_string())?;
            }
            Ok::<Conn, String>(conn)
        };
        let conn = tokio::time::timeout(limit, attempt)
            .await
            .map_err(|_| "timed out".to_owned())??;
        *self.conn.write().unwrap_or_else(PoisonError::into_inner) = Some(conn);
        if self.degraded.swap(false, Ordering::AcqRel) {
            if self.connected_before.swap(true, Ordering::AcqRel) {
                tracing::info!("redis is back; pool state shared again");
            } else {
                tracing::info!("pool state shared through redis");
            }
        }
        Ok(())
    }

    fn prepared(&self, spec: &PoolSpec) -> Arc<Prepared> {
        let mut map = self.prepared.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(p) = map.get(&spec.generation) {
            return p.clone();
        }
        // Specs of a reloaded config replace older ones; keep the map from growing.
        if map.len() > 64 {
            map.clear();
        }
        let p = Arc::new(Prepared::new(spec, &self.scripts));
        map.insert(spec.generation, p.clone());
        p
    }

    /// The live connection, unless degraded.
    fn live(&self) -> Option<Conn> {
        if self.is_degraded() {
            return None;
        }
        self.conn
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Run `cmd` (an EVALSHA of `script`) within the command timeout, loading the script on
    /// NOSCRIPT. Any failure degrades the store and returns None.
    async fn run<T: redis::FromRedisValue>(&self, cmd: &Cmd, script: &Script) -> Option<T> {
        let mut conn = self.live()?;
        let call = async {
            match conn.query::<T>(cmd).await {
                Err(e)
                    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    conn.load(script).await?;
                    conn.query::<T>(cmd).await
                }
                other => other,
            }
        };
        match tokio::time::timeout(self.settings.command_timeout, call).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                self.fail(&e.to_string());
                None
            }
            Err(_) => {
                self.fail("command timed out");
                None
            }
        }
    }

    fn fail(&self, why: &str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if !self.degraded.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                error = why,
                "redis store unavailable; serving on local state"
            );
            *self.conn.write().unwrap_or_else(PoisonError::into_inner) = None;
            self.wake.notify_one();
        }
    }

    async fn acquire_shared(&self, spec: &PoolSpec, tried: &[usize]) -> Acquire {
        let prepared = self.prepared(spec);
        // The fixed head is cloned (one buffer copy); the per-attempt parts are appended.
        let mut cmd = prepared.acquire_head.clone();
        let call = self.calls.fetch_add(1, Ordering::Relaxed);
        // The script starts ties under least-loaded and weighted by share (which need no
        // shared cursor) at call % n; sent as that, a small number.
        cmd.arg(call % spec.keys.len().max(1) as u64);
        if tried.is_empty() {
            cmd.arg(",");
        } else {
            let mut list = String::with_capacity(1 + tried.len() * 3);
            list.push(',');
            for i in tried {
                list.push_str(&i.to_string());
                list.push(',');
            }
            cmd.arg(list);
        }
        cmd.arg(&prepared.acquire_tail);
        // index + 1 for a counted key, -wait_ms when none is ready yet, 0 when none can serve.
        match self.run::<i64>(&cmd, &self.scripts.acquire).await {
            Some(i) if i > 0 => Acquire::Key(usize::try_from(i - 1).unwrap_or(0)),
            Some(i) if i < 0 => Acquire::Wait(Duration::from_millis(i.unsigned_abs())),
            Some(_) => Acquire::Exhausted,
            None => self.local.acquire_now(spec, tried),
        }
    }

    /// Run mark.lua for key `index`: `action` is cooling, quarantined, disabled, enable or reset.
    async fn mark(
        &self,
        spec: &PoolSpec,
        index: usize,
        action: &str,
        reason: &str,
        period: Duration,
    ) {
        let prepared = self.prepared(spec);
        let Some(fp) = prepared.fingerprints.get(index) else {
            return;
        };
        let ms = period.as_millis().clamp(1, u128::from(u64::MAX)) as u64;
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.scripts.mark.get_hash())
            .arg(1)
            .arg(&prepared.state)
            .arg(format!("m:{fp}"))
            .arg(action)
            .arg(reason)
            .arg(ms);
        let _ = self.run::<i64>(&cmd, &self.scripts.mark).await;
    }

    async fn report_shared(&self, spec: &PoolSpec, index: usize, report: Report) {
        // Local state learns every mark too, so a fallback starts from what we knew.
        self.local.report_now(spec, index, report);
        match report.mark {
            Some(Mark::Cool { period, reason }) => {
                self.mark(spec, index, "cooling", reason, period).await
            }
            Some(Mark::Quarantine { period, reason }) => {
                self.mark(spec, index, "quarantined", reason, period).await
            }
            None => {}
        }
    }

    async fn act_shared(&self, spec: &PoolSpec, index: usize, action: KeyAction) {
        self.local.act_now(spec, index, action);
        let action = match action {
            KeyAction::Disable => "disabled",
            KeyAction::Enable => "enable",
            KeyAction::Reset => "reset",
        };
        self.mark(spec, index, action, "manual", Duration::ZERO)
            .await;
    }

    async fn status_shared(&self, spec: &PoolSpec) -> Vec<KeyStatus> {
        let prepared = self.prepared(spec);
        let rows: Option<Vec<(u64, String, u64, u64)>> =
            self.run(&prepared.status, &self.scripts.status).await;
        let local = self.local.status_now(spec);
        let Some(rows) = rows else {
            return local;
        };
        rows.into_iter()
            .zip(spec.keys.iter().enumerate())
            .map(|((used, mark, left, total), (index, key))| KeyStatus {
                index,
                name: key.name.clone(),
                fingerprint: key.fingerprint.clone(),
                mode: mode_of(&mark, left),
                used_this_minute: used,
                rpm: key.rpm,
                total,
                last_status: local.get(index).and_then(|s| s.last_status),
            })
            .collect()
    }
}

/// A mark as stored, `<until_ms>|<kind>|<reason>`, with `left_ms` still to run.
fn mode_of(mark: &str, left_ms: u64) -> KeyMode {
    let mut parts = mark.splitn(3, '|');
    let (_, kind, reason) = (parts.next(), parts.next(), parts.next().unwrap_or(""));
    let reason: &'static str = match reason {
        "rate_limited" => "rate_limited",
        "unauthorized" => "unauthorized",
        "manual" => "manual",
        _ => "other",
    };
    let remaining = Duration::from_millis(left_ms);
    match kind {
        Some("disabled") => KeyMode::Disabled,
        Some("cooling") if left_ms > 0 => KeyMode::Cooling { remaining, reason },
        Some("quarantined") if left_ms > 0 => KeyMode::Quarantined { remaining, reason },
        _ => KeyMode::Ready,
    }
}

async fn probe_loop(store: Weak<RedisStore>, wake: Arc<Notify>) {
    loop {
        let Some(degraded) = store.upgrade().map(|s| s.is_degraded()) else {
            return;
        };
        if !degraded {
            // A wake sent before this wait is kept as a permit, so none is lost.
            wake.notified().await;
            continue;
        }
        let mut delay = store
            .upgrade()
            .map_or(Duration::ZERO, |s| s.settings.probe_interval);
        loop {
            tokio::time::sleep(delay).await;
            let Some(s) = store.upgrade() else { return };
            if !s.is_degraded() || s.probe_once().await.is_ok() {
                break;
            }
            delay = (delay * 2).min(s.settings.probe_max_interval);
        }
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        // Let the probe task see the store is gone and end.
        self.wake.notify_one();
    }
}

impl Store for RedisStore {
    fn acquire<'a>(&'a self, pool: &'a PoolSpec, tried: &'a [usize]) -> StoreFuture<'a, Acquire> {
        Box::pin(self.acquire_shared(pool, tried))
    }

    fn report<'a>(
        &'a self,
        pool: &'a PoolSpec,
        index: usize,
        report: Report,
    ) -> StoreFuture<'a, ()> {
        Box::pin(self.report_shared(pool, index, report))
    }

    fn status<'a>(&'a self, pool: &'a PoolSpec) -> StoreFuture<'a, Vec<KeyStatus>> {
        Box::pin(self.status_shared(pool))
    }

    fn act<'a>(
        &'a self,
        pool: &'a PoolSpec,
        index: usize,
        action: KeyAction,
    ) -> StoreFuture<'a, ()> {
        Box::pin(self.act_shared(pool, index, action))
    }

    fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    fn state(&self) -> StoreState {
        if self.is_degraded() {
            StoreState::Degraded
        } else {
            StoreState::Shared
        }
    }
}
