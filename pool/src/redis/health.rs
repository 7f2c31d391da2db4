//! Health of the shared store: the degraded flag, the probe that finds Redis again (writing to
//! the pools' own slots), the outage log lines, and the bounded run of one command, whose
//! failure flips the store to degraded.
//!
//! An outage logs one warning when the store goes and one line when it is back; a flap within
//! `recovery_settle` of that line is not logged (if the store is still away when that time
//! is up, the probe logs a new outage), so a flapping Redis logs one pair. Warnings are also
//! held to one a second per kind of error.

use super::command::eval_cmd;
use super::conn::Conn;
use super::{RedisStore, StoreError};
use crate::store::StoreState;
use deadpool_redis::redis::{self, Cmd, Script};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Written by the probe when no pool is known yet (none in the settings, none served).
const FALLBACK_PROBE_KEY: &str = "keyrelay:{probe}:alive";
const PROBE_TTL_MS: u64 = 10_000;
/// The least time between two warnings of one kind.
const WARN_EVERY: Duration = Duration::from_secs(1);

/// When each kind of warning was last written.
#[derive(Default)]
pub(super) struct Throttle(Mutex<HashMap<&'static str, Instant>>);

impl Throttle {
    /// Whether a warning of `kind` may be written now (and, if so, that it was).
    pub(super) fn allow(&self, kind: &'static str) -> bool {
        let mut last = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        match last.get(kind) {
            Some(t) if now.duration_since(*t) < WARN_EVERY => false,
            _ => {
                last.insert(kind, now);
                true
            }
        }
    }
}

/// The probe's key for `pool`: under the pool's hash tag, so with Cluster the probe writes to
/// the slot that pool's state lives in.
fn probe_key(pool: &str) -> String {
    format!("keyrelay:{{{pool}}}:alive")
}

impl RedisStore {
    /// Commands that failed or timed out since start.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    pub fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Acquire)
    }

    /// Check that Redis answers a write, once, within the connect and command timeouts.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.probe_once().await
    }

    /// Open a connection, write the probe keys and load the scripts, each within its timeout;
    /// on success it becomes the live connection, the store leaves degraded, and the operator
    /// actions journalled meanwhile are written. On Cluster it succeeds when any pool's slot
    /// answers: the pools whose slots do not are marked down (see `outages.rs`).
    pub(super) async fn probe_once(&self) -> Result<(), StoreError> {
        let (conn, down) = if self.pools.is_cluster() {
            self.open().await?
        } else {
            // One Redis: the whole probe within the sum of its timeouts, as before.
            let limit = self.settings.connect_timeout
                + self.settings.wait_timeout
                + self.settings.command_timeout;
            tokio::time::timeout(limit, self.open())
                .await
                .map_err(|_| StoreError::Timeout(limit))??
        };
        // The journal is written before the store says "shared", so a shared store has
        // every action this instance answered; one answered meanwhile is written just after.
        let mut written = None;
        if self.is_degraded() {
            let keep = |p: &str| !down.iter().any(|(d, _)| d == p);
            written = Some(self.write_journal(&conn, &keep).await?);
        }
        for (pool, why) in &down {
            self.fail_pool(pool, why);
        }
        *self.conn.write().unwrap_or_else(PoisonError::into_inner) = Some(conn);
        if self.degraded.swap(false, Ordering::AcqRel) {
            let first = !self.connected_before.swap(true, Ordering::AcqRel);
            if self.reported_down.swap(false, Ordering::AcqRel) {
                tracing::info!("redis is back; pool state shared again");
                *self
                    .settling_until
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) =
                    Some(Instant::now() + self.settings.recovery_settle);
            } else if first {
                tracing::info!("pool state shared through redis");
            }
        }
        if written.is_some_and(|version| self.journal.changed_since(version)) {
            self.replay_actions().await;
        }
        Ok(())
    }

    /// The pools the probe checks: every one configured or served, sorted.
    pub(super) fn known_pools(&self) -> Vec<String> {
        let mut pools = self.prepared.pools();
        pools.extend(self.settings.pools.iter().cloned());
        pools.sort_unstable();
        pools.dedup();
        pools
    }

    /// Write `pool`'s probe key on `conn` within the command timeout.
    pub(super) async fn write_probe(&self, conn: &Conn, pool: &str) -> Result<(), StoreError> {
        self.write_probe_key(conn, probe_key(pool)).await
    }

    async fn write_probe_key(&self, conn: &Conn, key: String) -> Result<(), StoreError> {
        let mut probe = redis::cmd("SET");
        probe.arg(key).arg(1).arg("PX").arg(PROBE_TTL_MS);
        let limit = self.settings.command_timeout;
        let mut conn = conn.clone();
        match tokio::time::timeout(limit, conn.query::<()>(&probe)).await {
            Ok(result) => result.map_err(StoreError::Command),
            Err(_) => Err(StoreError::Timeout(limit)),
        }
    }

    /// A fresh connection with every pool's probe key written (the fallback key while no pool
    /// is known) and the scripts loaded. With one Redis any failure fails it; on Cluster it
    /// fails only when no pool's slot answers, and answers the pools whose slots did not.
    async fn open(&self) -> Result<(Conn, Vec<(String, StoreError)>), StoreError> {
        let limit = self.settings.connect_timeout + self.settings.wait_timeout;
        let mut conn = tokio::time::timeout(limit, self.pools.fresh())
            .await
            .map_err(|_| StoreError::Timeout(limit))??;
        let cluster = self.pools.is_cluster();
        let pools = self.known_pools();
        if pools.is_empty() {
            self.write_probe_key(&conn, FALLBACK_PROBE_KEY.to_owned())
                .await?;
        }
        let mut down = Vec::new();
        for pool in &pools {
            match self.write_probe(&conn, pool).await {
                Ok(()) => {}
                Err(e) if cluster => down.push((pool.clone(), e)),
                Err(e) => return Err(e),
            }
        }
        if !pools.is_empty() && down.len() == pools.len() {
            return Err(down.swap_remove(0).1);
        }
        // Load the scripts now, so the hot path never meets NOSCRIPT on a fresh server. On
        // Cluster SCRIPT LOAD goes to every master, so with one down it fails: the hot path
        // loads them on NOSCRIPT later.
        let limit = self.settings.command_timeout;
        for script in self.scripts.all() {
            let loaded = match tokio::time::timeout(limit, conn.load(script)).await {
                Ok(r) => r.map_err(StoreError::Command),
                Err(_) => Err(StoreError::Timeout(limit)),
            };
            match loaded {
                Ok(_) => {}
                Err(e) if cluster => {
                    tracing::debug!(error = %e, "scripts not loaded on every master")
                }
                Err(e) => return Err(e),
            }
        }
        Ok((conn, down))
    }

    /// Write `message` as a warning about `why`, at most once a second per kind of error.
    pub(super) fn warn(&self, why: &StoreError, message: &'static str) {
        if self.throttle.allow(why.kind()) {
            tracing::warn!(error = %why, "{message}");
        } else {
            tracing::debug!(error = %why, "{message} (warning held back: one a second)");
        }
    }

    /// Whether "back" was logged less than `recovery_settle` ago.
    fn settling(&self) -> bool {
        let until = self
            .settling_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        until.is_some_and(|t| Instant::now() < t)
    }

    /// The store is away: log it, unless this outage is logged already or is a flap within
    /// the settle time (which the probe logs if it outlasts that time).
    fn log_gone(&self, why: &StoreError) {
        if self.settling() || self.reported_down.swap(true, Ordering::AcqRel) {
            tracing::debug!(error = %why, "redis store unavailable (outage logged already)");
        } else {
            self.warn(why, "redis store unavailable; serving on local state");
        }
    }

    /// The live connection, unless the store is degraded.
    pub(super) fn live_conn(&self) -> Option<Conn> {
        if self.is_degraded() {
            return None;
        }
        self.conn
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The live connection for `pool`, unless the store or (on Cluster) the pool is degraded.
    pub(super) fn live(&self, pool: &str) -> Option<Conn> {
        if self.outages.is_down(pool) {
            return None;
        }
        self.live_conn()
    }

    /// Run `cmd` (an EVALSHA of `script` on `pool`'s keys) within the command timeout,
    /// loading the script on NOSCRIPT. Any failure degrades the store (on Cluster, the pool)
    /// and returns None.
    pub(super) async fn run<T: redis::FromRedisValue>(
        &self,
        pool: &str,
        cmd: &Cmd,
        script: &Script,
    ) -> Option<T> {
        let conn = self.live(pool)?;
        match self.run_on(conn, cmd, script).await {
            Ok(v) => Some(v),
            Err(e) => {
                self.fail(pool, &e);
                None
            }
        }
    }

    /// Run `cmd` on `conn` within the command timeout, loading `script` on NOSCRIPT.
    pub(super) async fn run_on<T: redis::FromRedisValue>(
        &self,
        mut conn: Conn,
        cmd: &Cmd,
        script: &Script,
    ) -> Result<T, StoreError> {
        let call = async {
            match conn.query::<T>(cmd).await {
                Err(e)
                    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    match (&conn, self.scripts.source(script)) {
                        // SCRIPT LOAD goes to every master: run it as EVAL on this one.
                        (Conn::Cluster(_), Some(code)) => {
                            conn.query::<T>(&eval_cmd(cmd, code)).await
                        }
                        _ => {
                            conn.load(script).await?;
                            conn.query::<T>(cmd).await
                        }
                    }
                }
                other => other,
            }
        };
        let limit = self.settings.command_timeout;
        match tokio::time::timeout(limit, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(StoreError::Command(e)),
            Err(_) => Err(StoreError::Timeout(limit)),
        }
    }

    /// Count a failed command of `pool`; on Cluster it marks the pool down (`outages.rs`),
    /// else the first failure while shared degrades the store.
    pub(super) fn fail(&self, pool: &str, why: &StoreError) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if self.pools.is_cluster() {
            if !self.is_degraded() {
                self.fail_pool(pool, why);
            }
        } else {
            self.fail_store(why);
        }
    }

    /// The store is away: the first call while shared degrades it (taking over any pool's
    /// outage), logs it (see `log_gone`) and wakes the probe.
    pub(super) fn fail_store(&self, why: &StoreError) {
        if !self.degraded.swap(true, Ordering::AcqRel) {
            *self.conn.write().unwrap_or_else(PoisonError::into_inner) = None;
            self.outages.clear_all();
            self.log_gone(why);
            self.wake.notify_one();
        }
    }

    /// Whether `pool`'s state is shared: the store is, and (on Cluster) the pool's slot too.
    pub fn pool_state(&self, pool: &str) -> StoreState {
        if self.is_degraded() || self.outages.is_down(pool) {
            StoreState::Degraded
        } else {
            StoreState::Shared
        }
    }
}

/// While the store lives: sleep until it degrades (syncing disables into local memory every
/// sync interval), then probe with growing backoff until Redis answers.
pub(super) async fn probe_loop(store: Weak<RedisStore>, wake: Arc<Notify>) {
    loop {
        let Some(degraded) = store.upgrade().map(|s| s.is_degraded() || s.outages.any()) else {
            return;
        };
        if !degraded {
            // A wake sent before this wait is kept as a permit, so none is lost. Meanwhile,
            // every sync interval, this process's memory learns the shared disables.
            let every = store
                .upgrade()
                .map_or(Duration::from_secs(1), |s| s.settings.sync_interval)
                .max(Duration::from_millis(10));
            tokio::select! {
                () = wake.notified() => {}
                () = tokio::time::sleep(every) => {
                    let Some(s) = store.upgrade() else { return };
                    s.sync_disables().await;
                    // A pool gone quiet gives back what its expired leases left.
                    s.give_back(false).await;
                }
            }
            continue;
        }
        probe_until_back(&store).await;
    }
}

/// Probe with growing backoff until Redis (on Cluster, every pool's slot) answers or the store
/// is gone. An outage that began as an unlogged flap is logged once the settle time is up.
async fn probe_until_back(store: &Weak<RedisStore>) {
    let mut delay = store
        .upgrade()
        .map_or(Duration::ZERO, |s| s.settings.probe_interval);
    loop {
        tokio::time::sleep(delay).await;
        let Some(s) = store.upgrade() else { return };
        if s.is_degraded() {
            if let Err(e) = s.probe_once().await {
                s.log_gone(&e);
            }
        } else if s.outages.any() {
            s.probe_pools().await;
        }
        if !s.is_degraded() && !s.outages.any() {
            return;
        }
        delay = (delay * 2).min(s.settings.probe_max_interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_warning_a_second_per_kind() {
        let t = Throttle::default();
        assert!(t.allow("timeout"));
        assert!(!t.allow("timeout"), "a second timeout warning at once");
        assert!(t.allow("connect"), "another kind has its own second");
        // A second later the kind may warn again.
        t.0.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert("timeout", Instant::now() - WARN_EVERY);
        assert!(t.allow("timeout"));
    }

    #[test]
    fn probe_keys_carry_the_pools_hash_tags() {
        assert_eq!(probe_key("openai"), "keyrelay:{openai}:alive");
    }
}
