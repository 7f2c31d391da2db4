//! Health of the shared store: the degraded flag, the probe that finds Redis again (writing to
//! the pools' own slots), the outage log lines, and the bounded run of one command, whose
//! failure flips the store to degraded.
//!
//! An outage logs one warning when the store goes and one line when it is back; a flap within
//! `recovery_settle` of that line is not logged (if the store is still away when that time
//! is up, the probe logs a new outage), so a flapping Redis logs one pair. Warnings are also
//! held to one a second per kind of error.

use super::conn::Conn;
use super::{RedisStore, StoreError};
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
    fn allow(&self, kind: &'static str) -> bool {
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

    /// Open a connection, write the probe keys and load the scripts, all within the connect,
    /// wait and command timeouts; on success it becomes the live connection, the store leaves
    /// degraded, and the operator actions journalled meanwhile are written.
    pub(super) async fn probe_once(&self) -> Result<(), StoreError> {
        let limit = self.settings.connect_timeout
            + self.settings.wait_timeout
            + self.settings.command_timeout;
        let conn = tokio::time::timeout(limit, self.open())
            .await
            .map_err(|_| StoreError::Timeout(limit))??;
        // The journal is written before the store says "shared", so a shared store has
        // every action this instance answered; one answered meanwhile is written just after.
        let mut written = None;
        if self.is_degraded() {
            written = Some(self.write_journal(&conn).await?);
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

    /// The keys the probe writes: one per pool (configured or served), else the fallback.
    fn probe_keys(&self) -> Vec<String> {
        let mut pools = self.prepared.pools();
        pools.extend(self.settings.pools.iter().cloned());
        pools.sort_unstable();
        pools.dedup();
        if pools.is_empty() {
            return vec![FALLBACK_PROBE_KEY.to_owned()];
        }
        pools.iter().map(|p| probe_key(p)).collect()
    }

    async fn open(&self) -> Result<Conn, StoreError> {
        let mut conn = self.pools.fresh().await?;
        for key in self.probe_keys() {
            let mut probe = redis::cmd("SET");
            probe.arg(key).arg(1).arg("PX").arg(PROBE_TTL_MS);
            conn.query::<()>(&probe)
                .await
                .map_err(StoreError::Command)?;
        }
        // Load the scripts now, so the hot path never meets NOSCRIPT on a fresh server.
        for script in self.scripts.all() {
            conn.load(script).await.map_err(StoreError::Command)?;
        }
        Ok(conn)
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
    pub(super) async fn run<T: redis::FromRedisValue>(
        &self,
        cmd: &Cmd,
        script: &Script,
    ) -> Option<T> {
        let conn = self.live()?;
        match self.run_on(conn, cmd, script).await {
            Ok(v) => Some(v),
            Err(e) => {
                self.fail(&e);
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
                    conn.load(script).await?;
                    conn.query::<T>(cmd).await
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

    /// Count a failed command; the first failure while shared degrades the store, logs it
    /// (see `log_gone`) and wakes the probe.
    fn fail(&self, why: &StoreError) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if !self.degraded.swap(true, Ordering::AcqRel) {
            *self.conn.write().unwrap_or_else(PoisonError::into_inner) = None;
            self.log_gone(why);
            self.wake.notify_one();
        }
    }
}

/// While the store lives: sleep until it degrades (syncing disables into local memory every
/// sync interval), then probe with growing backoff until Redis answers.
pub(super) async fn probe_loop(store: Weak<RedisStore>, wake: Arc<Notify>) {
    loop {
        let Some(degraded) = store.upgrade().map(|s| s.is_degraded()) else {
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
                }
            }
            continue;
        }
        probe_until_back(&store).await;
    }
}

/// Probe with growing backoff until Redis answers or the store is gone. An outage that began
/// as an unlogged flap is logged once the settle time is up.
async fn probe_until_back(store: &Weak<RedisStore>) {
    let mut delay = store
        .upgrade()
        .map_or(Duration::ZERO, |s| s.settings.probe_interval);
    loop {
        tokio::time::sleep(delay).await;
        let Some(s) = store.upgrade() else { return };
        if !s.is_degraded() {
            return;
        }
        match s.probe_once().await {
            Ok(()) => return,
            Err(e) => s.log_gone(&e),
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
