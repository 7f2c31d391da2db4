//! Per-pool outages on Redis Cluster: a pool whose slot fails is served on local state while
//! the pools on the other masters stay shared, and a per-pool probe (writing that pool's
//! `alive` key) brings it back.
//!
//! With one Redis every failure is the whole store's (`health.rs`). With Cluster a failed
//! command marks only its pool; the probe then writes every known pool's probe key each round
//! until none is down: a pool that answers is shared again (its journalled operator actions
//! written first), one that fails is marked. When no pool answers at all, nothing of the
//! cluster does: the outage becomes the store's (one "unavailable" line, the connection
//! dropped, a fresh one opened by the store's probe), and its "back" line ends it for every
//! pool. Each pool's outage logs one warning when it starts and one line when it ends; a flap
//! within `recovery_settle` of a pool's "back" is not logged (unless it outlasts that time).
//! Pool warnings are held to one a second per kind of error, apart from the store's.

use super::conn::Conn;
use super::health::Throttle;
use super::{RedisStore, StoreError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

/// The pools whose Cluster slot is down. The hot path reads only the counter while it is 0.
#[derive(Default)]
pub(super) struct PoolOutages {
    /// How many pools are down (the map's size, updated under its lock).
    count: AtomicUsize,
    /// Per pool down, whether its outage was logged.
    down: Mutex<HashMap<String, bool>>,
    /// Per pool, until when after its "back" line a flap stays silent (`recovery_settle`).
    settling: Mutex<HashMap<String, Instant>>,
    /// At most one pool warning a second per kind of error (apart from the store's, so a
    /// pool's outage that becomes the store's still logs the store's line).
    throttle: Throttle,
}

impl PoolOutages {
    /// Whether any pool is down.
    pub(super) fn any(&self) -> bool {
        self.count.load(Ordering::Acquire) > 0
    }

    /// Whether `pool` is down; no lock while no pool is.
    pub(super) fn is_down(&self, pool: &str) -> bool {
        self.any()
            && self
                .down
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains_key(pool)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, bool>> {
        self.down.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `pool`'s "back" was logged less than `recovery_settle` ago.
    fn settling(&self, pool: &str) -> bool {
        let settling = self.settling.lock().unwrap_or_else(PoisonError::into_inner);
        settling.get(pool).is_some_and(|t| Instant::now() < *t)
    }

    /// Note that `pool`'s outage is logged; true when it was not yet.
    fn report(&self, pool: &str) -> bool {
        self.lock()
            .get_mut(pool)
            .is_some_and(|logged| !std::mem::replace(logged, true))
    }

    /// Mark `pool` down; true when it was not already.
    pub(super) fn mark(&self, pool: &str) -> bool {
        let mut down = self.lock();
        if down.contains_key(pool) {
            return false;
        }
        down.insert(pool.to_owned(), false);
        self.count.store(down.len(), Ordering::Release);
        true
    }

    /// `pool` is back; answers whether it was down and its outage logged.
    pub(super) fn clear(&self, pool: &str) -> Option<bool> {
        let mut down = self.lock();
        let was = down.remove(pool);
        self.count.store(down.len(), Ordering::Release);
        was
    }

    /// Every pool back (the store's own outage takes them over).
    pub(super) fn clear_all(&self) {
        let mut down = self.lock();
        down.clear();
        self.count.store(0, Ordering::Release);
    }
}

impl RedisStore {
    /// A command for `pool` failed on Cluster: mark the pool down, log it once and wake the
    /// probe.
    pub(super) fn fail_pool(&self, pool: &str, why: &StoreError) {
        if self.outages.mark(pool) {
            self.log_pool_gone(pool, why);
            self.wake.notify_one();
        }
    }

    /// `pool`'s slot is away: log it, unless this outage is logged already or is a flap
    /// within the settle time after its "back" (which the probe logs if it outlasts that).
    fn log_pool_gone(&self, pool: &str, why: &StoreError) {
        if self.outages.settling(pool) || !self.outages.report(pool) {
            tracing::debug!(pool, error = %why, "redis unavailable for this pool's cluster slot (outage logged already, or a flap)");
        } else if self.outages.throttle.allow(why.kind()) {
            tracing::warn!(pool, error = %why, "redis unavailable for this pool's cluster slot; serving the pool on local state");
        } else {
            tracing::debug!(pool, error = %why, "redis unavailable for this pool's cluster slot (warning held back: one a second)");
        }
    }

    /// One round of the per-pool probe, while the store is shared and some pool is down:
    /// write every known pool's probe key; bring back the pools that answer (after writing
    /// their journalled actions), mark those that fail. When none answers, the outage becomes
    /// the store's.
    pub(super) async fn probe_pools(&self) {
        let Some(conn) = self.live_conn() else {
            return;
        };
        let mut answered = 0usize;
        let mut last = None;
        for pool in self.known_pools() {
            let result = match self.write_probe(&conn, &pool).await {
                Ok(()) if self.outages.is_down(&pool) => self.restore_pool(&conn, &pool).await,
                other => other,
            };
            match result {
                Ok(()) => answered += 1,
                Err(e) => {
                    tracing::debug!(pool, error = %e, "pool probe failed");
                    self.outages.mark(&pool);
                    self.log_pool_gone(&pool, &e);
                    last = Some(e);
                }
            }
        }
        if let (0, Some(why)) = (answered, last) {
            self.fail_store(&why);
        }
    }

    /// `pool` answers again: write its journalled actions, then share it again.
    async fn restore_pool(&self, conn: &Conn, pool: &str) -> Result<(), StoreError> {
        let version = self.write_journal(conn, &|p| p == pool).await?;
        match self.outages.clear(pool) {
            Some(true) => {
                tracing::info!(
                    pool,
                    "redis answers for this pool's cluster slot again; its state is shared again"
                );
                let until = Instant::now() + self.settings.recovery_settle;
                self.outages
                    .settling
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(pool.to_owned(), until);
            }
            Some(false) => tracing::debug!(pool, "pool's cluster slot back after a flap"),
            None => {}
        }
        if self.journal.changed_since(version) {
            self.replay_actions().await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_pools_down() {
        let o = PoolOutages::default();
        assert!(!o.any());
        assert!(!o.is_down("a"));
        assert!(o.mark("a"));
        assert!(!o.mark("a"), "marked twice");
        assert!(o.mark("b"));
        assert!(o.is_down("a") && o.is_down("b") && !o.is_down("c"));
        assert!(o.report("a"));
        assert!(!o.report("a"), "reported twice");
        assert_eq!(o.clear("a"), Some(true));
        assert_eq!(o.clear("a"), None);
        assert!(o.any());
        o.clear_all();
        assert!(!o.any() && !o.is_down("b"));
    }
}
