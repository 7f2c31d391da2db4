//! Leased shares: an instance takes a few requests of a key's minute from Redis in one script
//! call and spends them locally, so most attempts make no Redis call at all.
//!
//! # Why
//! Redis's own CPU per acquire script call (15-33 µs measured) is about what a plain reverse
//! proxy spends on a whole request, on the same cores. Fewer calls than requests is the only
//! way the shared store gets near it.
//!
//! # How
//! With `lease_time` above zero (`[store] lease_time`, off by default), a first attempt that
//! finds no lease here runs `acquire.lua` as a lease: the script picks a key exactly as for one
//! request (same strategy, same skips, marks and limits) and counts up to `want` requests on it
//! at once in this second's bucket. This instance spends the rest locally, without Redis, until
//! they run out or the lease ends. What a lease may take:
//! - `want`: sized by this instance's recent traffic on the pool: twice what the leases since
//!   the last call served when they ran out, what they served when some went unused (so it
//!   grows while traffic outruns it and shrinks when it does not); at least the number of
//!   attempts waiting for the lease (concurrent attempts share one call: the call is gated per
//!   pool, and the attempts that waited find the lease when they pass); at most `lease_max`;
//! - at most 1% of the key's rpm (at least 1), and never past the rpm: with N instances each
//!   holding a lease, the requests counted but not yet used are at most N% of a limit, and they
//!   are given back (below);
//! - only what is left of the Redis second the requests are counted in: a lease ends with its
//!   bucket's second (from the moment the call was sent), so every request is spent within the
//!   second it is counted in and the window's guarantee (no key over its rpm in any minute)
//!   holds as before.
//!
//! The shared limit therefore never gives more than the rpm: every request is counted in
//! Redis before it is spent. What a lease did not use is given back on this instance's next
//! call (the same script call: `<fp>:<second>:<count>` taken off that bucket and the count),
//! or, for a pool gone quiet, by the sync tick of the probe loop (every `sync_interval`); an
//! embedder may call [`RedisStore::return_shares`] at shutdown (the proxy does not yet: what an
//! exiting instance held, at most `lease_max` per key, stays counted until it leaves the
//! minute).
//!
//! # What stays shared at once
//! Marks and disables are written to Redis at once as before (`mark.lua`, `act.lua`), and those
//! scripts publish the key's fingerprint on `keyrelay:{<pool>}:ev`. Every instance subscribes
//! (`PSUBSCRIBE keyrelay:*:ev`, `events.rs`) and drops its lease on that key when the message
//! arrives (a loopback round of well under a millisecond), so a 429 seen by one instance stops
//! the others' next attempts on the key, not a lease later. An instance drops its own lease
//! before it writes the mark. A lease answered while a message was arriving is not kept (the
//! epoch below), so a lease never outlives a mark it raced with. Leases are taken only while
//! the subscription is live: when it is lost, every lease is dropped and attempts go back to one
//! script call each until it is back. Enables and resets need no message (they only add keys).
//!
//! # What does not change
//! Degraded mode: while the store (or on Cluster, the pool) is degraded no lease is spent and
//! attempts are served on local state exactly as before. Cluster takes no leases (its pub/sub
//! runs on other nodes than its slots): one script call per attempt there. Retries (an attempt
//! with keys tried or refused) spend a lease on an untried key if one is held, else make the
//! plain call. At most one Redis round trip per attempt, fewer on average.
//!
//! # What an operator sees differently
//! With leases, a key's count in Redis (`used_this_minute`) includes requests leased and not
//! yet used (at most `lease_time` old); the shared round-robin order advances per lease, not
//! per request; least-loaded compares counts per lease.

use super::RedisStore;
use crate::store::PoolSpec;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;
use tokio::time::Instant;

/// Every pool's leases on this instance, and whether they may be taken.
#[derive(Default)]
pub(super) struct Shares {
    pools: RwLock<HashMap<String, Arc<PoolShares>>>,
    /// The invalidation subscription is live: only then are leases taken and spent.
    listening: AtomicBool,
    /// Bumped by every invalidation received and every subscription lost or won.
    epoch: AtomicU64,
    /// Invalidation messages received.
    received: AtomicU64,
}

/// One pool's leases on this instance.
#[derive(Default)]
pub(super) struct PoolShares {
    held: Mutex<Held>,
    /// One lease call per pool at a time; the attempts behind it use what it brings.
    pub(super) gate: tokio::sync::Mutex<()>,
    /// Attempts waiting at the gate, so the call takes enough for them.
    pub(super) waiting: AtomicUsize,
}

#[derive(Default)]
struct Held {
    generation: u64,
    grants: Vec<Grant>,
    /// Unused requests to give back: (fingerprint, second, count).
    back: Vec<(String, u64, u32)>,
    /// Attempts served from this pool's leases since the last lease call.
    served: u32,
    /// Requests of this pool's leases that went unused since the last lease call.
    unused: u32,
}

/// Requests of one key counted in Redis and not used yet.
struct Grant {
    index: usize,
    fingerprint: String,
    left: u32,
    second: u64,
    until: Instant,
}

/// A lease call's arguments: how many to take, and what to give back.
pub(super) struct Ask {
    pub(super) want: u32,
    pub(super) back: String,
}

impl Shares {
    pub(super) fn listening(&self) -> bool {
        self.listening.load(Ordering::Acquire)
    }

    pub(super) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The subscription is live (or lost): either way, leases held may have missed a message.
    pub(super) fn set_listening(&self, on: bool) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.drop_all();
        self.listening.store(on, Ordering::Release);
    }

    pub(super) fn pool(&self, name: &str) -> Arc<PoolShares> {
        crate::named::entry(&self.pools, name)
    }

    /// A message from another instance (or this one): key `fingerprint` of `pool` was marked.
    pub(super) fn received(&self, pool: &str, fingerprint: &str) {
        self.drop_key(pool, fingerprint);
        self.received.fetch_add(1, Ordering::AcqRel);
    }

    /// A mark or disable on key `fingerprint` of `pool`: no lease on it is spent from now on.
    pub(super) fn drop_key(&self, pool: &str, fingerprint: &str) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        let found = self
            .pools
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(pool)
            .cloned();
        if let Some(p) = found {
            p.lock().drop_where(|g| g.fingerprint == fingerprint);
        }
    }

    fn drop_all(&self) {
        let pools: Vec<_> = self
            .pools
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        for p in pools {
            p.lock().drop_where(|_| true);
        }
    }

    /// Every pool with something to give back: expired leases' rest (all leases' with `all`).
    pub(super) fn to_return(&self, all: bool) -> Vec<(String, String)> {
        let now = Instant::now();
        let pools = self.pools.read().unwrap_or_else(PoisonError::into_inner);
        pools
            .iter()
            .filter_map(|(name, p)| {
                let mut held = p.lock();
                held.expire(now);
                if all {
                    held.drop_where(|_| true);
                }
                let back = held.take_back();
                (!back.is_empty()).then(|| (name.clone(), back))
            })
            .collect()
    }
}

impl PoolShares {
    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Spend one request of a lease on a key not in `skip`.
    pub(super) fn spend(&self, spec: &PoolSpec, skip: &[usize]) -> Option<usize> {
        let mut held = self.lock();
        held.align(spec);
        if held.grants.is_empty() {
            return None;
        }
        held.expire(Instant::now());
        let at = held.grants.iter().position(|g| !skip.contains(&g.index))?;
        let grant = &mut held.grants[at];
        let index = grant.index;
        grant.left -= 1;
        if grant.left == 0 {
            held.grants.swap_remove(at);
        }
        held.served += 1;
        Some(index)
    }

    /// The next lease call's arguments, sized by this instance's recent traffic on the pool:
    /// what the leases since the last call served, this attempt included (`used`), doubled
    /// when they ran out, as it is when some of them went unused; at least one per attempt
    /// waiting at the gate; at most `lease_max`.
    pub(super) fn ask(&self, spec: &PoolSpec, lease_max: u32) -> Ask {
        let waiting = u32::try_from(self.waiting.load(Ordering::Acquire)).unwrap_or(u32::MAX);
        let mut held = self.lock();
        held.align(spec);
        held.expire(Instant::now());
        let used = held.served.saturating_add(1);
        let by_traffic = if held.unused == 0 {
            used.saturating_mul(2)
        } else {
            used
        };
        held.served = 0;
        held.unused = 0;
        let want = by_traffic
            .max(waiting.saturating_add(1))
            .clamp(1, lease_max.max(1));
        Ask {
            want,
            back: held.take_back(),
        }
    }

    /// A lease call answered: key `index`, `taken` requests counted in `second`, for `span`
    /// from `sent`. One is this attempt's; the rest is kept only when `keep` (no invalidation
    /// arrived meanwhile), else given back on the next call.
    pub(super) fn keep(&self, spec: &PoolSpec, lease: Leased, keep: bool) {
        let Some(key) = spec.keys.get(lease.index) else {
            return;
        };
        if lease.taken <= 1 {
            return;
        }
        let mut held = self.lock();
        held.align(spec);
        let grant = Grant {
            index: lease.index,
            fingerprint: key.fingerprint.clone(),
            left: lease.taken - 1,
            second: lease.second,
            until: lease.sent + lease.span,
        };
        if keep && grant.until > Instant::now() {
            held.grants.push(grant);
        } else {
            held.give_back(&grant);
        }
    }
}

/// What a lease call brought.
#[derive(Clone, Copy, Debug)]
pub(super) struct Leased {
    pub(super) index: usize,
    pub(super) taken: u32,
    pub(super) span: Duration,
    pub(super) second: u64,
    pub(super) sent: Instant,
}

impl Held {
    /// Leases are kept by index: a new key set gives back every lease of the old one.
    fn align(&mut self, spec: &PoolSpec) {
        if self.generation != spec.generation {
            self.drop_where(|_| true);
            self.generation = spec.generation;
        }
    }

    fn expire(&mut self, now: Instant) {
        self.drop_where(|g| g.until <= now);
    }

    fn drop_where(&mut self, gone: impl Fn(&Grant) -> bool) {
        let mut i = 0;
        while i < self.grants.len() {
            if gone(&self.grants[i]) {
                let g = self.grants.swap_remove(i);
                self.give_back(&g);
            } else {
                i += 1;
            }
        }
    }

    fn give_back(&mut self, g: &Grant) {
        self.unused = self.unused.saturating_add(g.left);
        match self
            .back
            .iter_mut()
            .find(|(fp, s, _)| *s == g.second && *fp == g.fingerprint)
        {
            Some(entry) => entry.2 += g.left,
            None => self.back.push((g.fingerprint.clone(), g.second, g.left)),
        }
    }

    /// What to give back, as acquire.lua reads it: `<fp>:<second>:<count>` joined by `,`.
    fn take_back(&mut self) -> String {
        let mut out = String::new();
        for (fp, second, count) in self.back.drain(..) {
            if !out.is_empty() {
                out.push(',');
            }
            let _ = write!(out, "{fp}:{second}:{count}");
        }
        out
    }
}

impl RedisStore {
    /// Whether leases are taken now: configured, and the invalidation subscription live.
    pub fn leasing_live(&self) -> bool {
        !self.settings.lease_time.is_zero() && self.shares.listening()
    }

    /// Invalidation messages (a key marked or disabled, by any instance) received so far.
    pub fn lease_messages(&self) -> u64 {
        self.shares.received.load(Ordering::Acquire)
    }

    /// Per key of `spec`, the requests this instance holds leased and unused (expired leases
    /// not counted).
    pub fn leased(&self, spec: &PoolSpec) -> Vec<u32> {
        let mut out = vec![0; spec.keys.len()];
        let p = self.shares.pool(&spec.name);
        let mut held = p.lock();
        held.align(spec);
        held.expire(Instant::now());
        for g in &held.grants {
            if let Some(n) = out.get_mut(g.index) {
                *n += g.left;
            }
        }
        out
    }

    /// Give back every lease's unused requests (one script call per pool), e.g. at shutdown.
    pub async fn return_shares(&self) {
        self.give_back(true).await;
    }

    /// Give back what expired leases left (all leases' with `all`), one call per pool.
    pub(super) async fn give_back(&self, all: bool) {
        for (pool, back) in self.shares.to_return(all) {
            let Some(prepared) = self.prepared.latest().into_iter().find(|p| p.pool == pool) else {
                continue;
            };
            let cmd = prepared.lease(0, &[], 0, self.settings.lease_time, &back);
            let _ = self.run::<i64>(&pool, &cmd, &self.scripts.acquire).await;
        }
    }
}

#[cfg(test)]
#[path = "shares_tests.rs"]
mod tests;
