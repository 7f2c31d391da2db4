//! The embedded store: pool state in this process's memory, one lock per pool.

use crate::idmap::IdMap;
use crate::select::{choose, scan_start, uniform, Candidate, Strategy};
use crate::state::{Clock, KeyState, Now};
use crate::store::{
    Acquire, KeyAction, KeyStatus, PoolSpec, Report, Store, StoreFuture, StoreState,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use tokio::time::Duration;

/// Where a [`PoolSpec`] keeps the state a memory store found for it, with that store's id.
pub(crate) type Found = OnceLock<(u64, Arc<Mutex<PoolState>>)>;

/// Tells memory stores apart, for [`Found`].
static STORES: AtomicU64 = AtomicU64::new(1);

#[derive(Debug, Default)]
pub(crate) struct PoolState {
    generation: u64,
    keys: Vec<KeyState>,
    /// The round-robin key to try first (the last chosen + 1); kept across reloads, as the
    /// Redis store keeps its shared cursor.
    cursor: usize,
    /// Every key has the same limit (least-loaded) or weight (weighted): ties go to key 0.
    uniform: bool,
}

impl PoolState {
    /// Line the state up with `spec`'s keys; a reloaded spec keeps the state of keys it kept.
    fn align(&mut self, spec: &PoolSpec) {
        if self.generation == spec.generation {
            return;
        }
        let mut old: HashMap<String, KeyState> = self
            .keys
            .drain(..)
            .map(|k| (k.fingerprint.clone(), k))
            .collect();
        self.keys = spec
            .keys
            .iter()
            .map(|k| {
                old.remove(&k.fingerprint)
                    .unwrap_or_else(|| KeyState::new(k.fingerprint.clone()))
            })
            .collect();
        self.generation = spec.generation;
        self.uniform = uniform(spec.strategy, &spec.keys);
    }

    /// Pick a ready key not in `tried`, count it and answer; else the shortest wait.
    fn acquire(&mut self, spec: &PoolSpec, tried: &[usize], pick: Pick) -> Acquire {
        let Pick { share, call, now } = pick;
        self.align(spec);
        let mut candidates = Vec::with_capacity(spec.keys.len());
        let mut wait: Option<Duration> = None;
        for (index, (state, key)) in self.keys.iter_mut().zip(&spec.keys).enumerate() {
            if tried.contains(&index) {
                continue;
            }
            state.advance(now);
            let rpm = (key.rpm / share).max(1);
            let Some(ready_in) = state.ready_in(rpm, now) else {
                continue;
            };
            if ready_in.is_zero() {
                candidates.push(Candidate {
                    index,
                    used: state.used(),
                    rpm: u64::from(rpm),
                    weight: u64::from(key.weight),
                });
            } else {
                wait = Some(wait.map_or(ready_in, |w| w.min(ready_in)));
            }
        }
        let n = spec.keys.len();
        let start = scan_start(spec.strategy, self.uniform, self.cursor, call, n);
        match choose(spec.strategy, &candidates, start) {
            Some(index) => {
                self.keys[index].count(now);
                if spec.strategy == Strategy::RoundRobin {
                    self.cursor = (index + 1) % n;
                }
                Acquire::Key(index)
            }
            None => wait.map_or(Acquire::Exhausted, Acquire::Wait),
        }
    }
}

/// What one acquire needs besides the pool: the limit share, the call number, the time.
#[derive(Clone, Copy, Debug)]
struct Pick {
    share: u32,
    call: u64,
    now: Now,
}

/// Pool state in memory, in the Redis store's shape: per-second buckets of the last 61 seconds
/// per key (61 counters, however much traffic), the same selection rules. Time from tokio's
/// clock, so paused-time tests drive it. Where it differs from the Redis store, and why:
/// `pool/tests/contract.rs`.
#[derive(Debug)]
pub struct MemoryStore {
    /// Unique per store (see [`Found`]).
    id: u64,
    pools: RwLock<HashMap<String, Arc<Mutex<PoolState>>>>,
    /// Each key's limit is divided by this: an instance serving on local state while a shared
    /// store is away enforces only its share of the limit.
    share: u32,
    clock: Clock,
    /// Acquire calls made, so ties under least share start at `call % n` as in Redis.
    calls: AtomicU64,
    /// Resource ids and their keys (`[affinity] mode = "map"`).
    ids: Mutex<IdMap>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::with_share(1)
    }

    /// A store enforcing `1/share` of every key's limit.
    pub fn with_share(share: u32) -> Self {
        MemoryStore {
            id: STORES.fetch_add(1, Ordering::Relaxed),
            pools: RwLock::default(),
            share: share.max(1),
            clock: Clock::new(),
            calls: AtomicU64::new(0),
            ids: Mutex::default(),
        }
    }

    fn pool(&self, name: &str) -> Arc<Mutex<PoolState>> {
        crate::named::entry(&self.pools, name)
    }

    fn with_pool<T>(&self, spec: &PoolSpec, f: impl FnOnce(&mut PoolState) -> T) -> T {
        // Found by name once per spec (pools are never removed, so what was found stays the
        // pool's state), not on every acquire and report: the map's lock, a SipHash of the
        // name and an Arc's count were about 500 instructions a request (callgrind). A spec
        // that another store found first is looked up by name, as before.
        let (by, found) = spec.found.get_or_init(|| (self.id, self.pool(&spec.name)));
        let looked_up;
        let pool = if *by == self.id {
            found
        } else {
            looked_up = self.pool(&spec.name);
            &looked_up
        };
        let mut guard = pool.lock().unwrap_or_else(PoisonError::into_inner);
        guard.align(spec);
        f(&mut guard)
    }

    /// The synchronous core of [`Store::acquire`], for callers that hold no runtime context.
    pub fn acquire_now(&self, spec: &PoolSpec, tried: &[usize]) -> Acquire {
        let pick = Pick {
            share: self.share,
            call: self.calls.fetch_add(1, Ordering::Relaxed),
            now: self.clock.now(),
        };
        self.with_pool(spec, |p| p.acquire(spec, tried, pick))
    }

    pub fn report_now(&self, spec: &PoolSpec, index: usize, report: Report) {
        let now = self.clock.now();
        self.with_pool(spec, |p| {
            if let Some(state) = p.keys.get_mut(index) {
                state.last_status = report.status.or(state.last_status);
                if let Some(mark) = report.mark {
                    state.mark(mark, now.at);
                }
            }
        });
    }

    /// An operator's action on one key.
    pub fn act_now(&self, spec: &PoolSpec, index: usize, action: KeyAction) {
        self.with_pool(spec, |p| {
            if let Some(state) = p.keys.get_mut(index) {
                match action {
                    KeyAction::Disable => state.disable(),
                    KeyAction::Enable => state.enable(),
                    KeyAction::Reset => state.reset(),
                }
            }
        });
    }

    pub fn remember_now(&self, pool: &str, ids: &[String], fingerprint: &str, ttl: Duration) {
        self.ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remember(pool, ids, fingerprint, ttl);
    }

    pub fn recall_now(&self, pool: &str, ids: &[String]) -> Vec<Option<String>> {
        self.ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .recall(pool, ids)
    }

    pub fn status_now(&self, spec: &PoolSpec) -> Vec<KeyStatus> {
        let now = self.clock.now();
        self.with_pool(spec, |p| {
            p.keys
                .iter_mut()
                .zip(&spec.keys)
                .enumerate()
                .map(|(index, (state, key))| {
                    state.advance(now);
                    KeyStatus {
                        index,
                        name: key.name.clone(),
                        fingerprint: key.fingerprint.clone(),
                        mode: state.public_mode(now.at),
                        used_this_minute: state.used(),
                        rpm: key.rpm,
                        total: state.total,
                        last_status: state.last_status,
                    }
                })
                .collect()
        })
    }
}

impl Store for MemoryStore {
    fn acquire<'a>(&'a self, pool: &'a PoolSpec, tried: &'a [usize]) -> StoreFuture<'a, Acquire> {
        StoreFuture::ready(self.acquire_now(pool, tried))
    }

    fn report<'a>(
        &'a self,
        pool: &'a PoolSpec,
        index: usize,
        report: Report,
    ) -> StoreFuture<'a, ()> {
        self.report_now(pool, index, report);
        StoreFuture::ready(())
    }

    fn status<'a>(&'a self, pool: &'a PoolSpec) -> StoreFuture<'a, Vec<KeyStatus>> {
        StoreFuture::ready(self.status_now(pool))
    }

    fn act<'a>(
        &'a self,
        pool: &'a PoolSpec,
        index: usize,
        action: KeyAction,
    ) -> StoreFuture<'a, StoreState> {
        self.act_now(pool, index, action);
        StoreFuture::ready(StoreState::Embedded)
    }

    fn remember<'a>(
        &'a self,
        pool: &'a str,
        ids: &'a [String],
        fingerprint: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, ()> {
        self.remember_now(pool, ids, fingerprint, ttl);
        StoreFuture::ready(())
    }

    fn recall<'a>(
        &'a self,
        pool: &'a str,
        ids: &'a [String],
    ) -> StoreFuture<'a, Vec<Option<String>>> {
        StoreFuture::ready(self.recall_now(pool, ids))
    }
}

#[cfg(test)]
#[path = "memory_tests.rs"]
mod tests;
