//! Health of the shared store: the degraded flag, the probe that finds Redis again, and the
//! bounded run of one command, whose failure flips the store to degraded.

use super::conn::Conn;
use super::{RedisStore, StoreError};
use deadpool_redis::redis::{self, Cmd, Script};
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError, Weak};
use std::time::Duration;
use tokio::sync::Notify;

/// Written by the probe: a write is the test that Redis serves.
const PROBE_KEY: &str = "keyrelay:{probe}:alive";
const PROBE_TTL_MS: u64 = 10_000;

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

    /// Open a connection, write the probe key and load the scripts, all within the connect,
    /// wait and command timeouts; on success it becomes the live connection and the store
    /// leaves degraded.
    pub(super) async fn probe_once(&self) -> Result<(), StoreError> {
        let limit = self.settings.connect_timeout
            + self.settings.wait_timeout
            + self.settings.command_timeout;
        let conn = tokio::time::timeout(limit, self.open())
            .await
            .map_err(|_| StoreError::Timeout(limit))??;
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

    async fn open(&self) -> Result<Conn, StoreError> {
        let mut conn = self.pools.fresh().await?;
        let mut probe = redis::cmd("SET");
        probe.arg(PROBE_KEY).arg(1).arg("PX").arg(PROBE_TTL_MS);
        conn.query::<()>(&probe)
            .await
            .map_err(StoreError::Command)?;
        // Load the scripts now, so the hot path never meets NOSCRIPT on a fresh server.
        for script in self.scripts.all() {
            conn.load(script).await.map_err(StoreError::Command)?;
        }
        Ok(conn)
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
        let limit = self.settings.command_timeout;
        match tokio::time::timeout(limit, call).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                self.fail(&StoreError::Command(e));
                None
            }
            Err(_) => {
                self.fail(&StoreError::Timeout(limit));
                None
            }
        }
    }

    /// Count a failed command; the first failure while shared degrades the store (logged
    /// once) and wakes the probe.
    fn fail(&self, why: &StoreError) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if !self.degraded.swap(true, Ordering::AcqRel) {
            tracing::warn!(error = %why, "redis store unavailable; serving on local state");
            *self.conn.write().unwrap_or_else(PoisonError::into_inner) = None;
            self.wake.notify_one();
        }
    }
}

/// While the store lives: sleep until it degrades, then probe with growing backoff until
/// Redis answers.
pub(super) async fn probe_loop(store: Weak<RedisStore>, wake: Arc<Notify>) {
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
