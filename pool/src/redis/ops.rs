//! The store operations on Redis (`impl Store`): one script call each, falling back to this
//! process's memory whenever the store is degraded or a call fails.

use super::actions::Action;
use super::command::{act_cmd, MarkAction};
use super::conn::Conn;
use super::marks::mode_of;
use super::shares::{Leased, PoolShares};
use super::{RedisStore, StoreError};
use crate::store::{
    Acquire, KeyAction, KeyMode, KeyStatus, Mark, PoolSpec, Report, Store, StoreFuture, StoreState,
};
use deadpool_redis::redis;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::Instant;

impl RedisStore {
    /// Every key's state in this process's memory: what this instance serves from while
    /// Redis is away.
    pub fn fallback_status(&self, spec: &PoolSpec) -> Vec<KeyStatus> {
        self.local.status_now(spec)
    }

    /// A key from this instance's leased share, if there is one to spend: answered here, with
    /// no round trip.
    fn spend_leased(&self, spec: &PoolSpec, tried: &[usize]) -> Option<usize> {
        if !self.leasing(&spec.name) {
            return None;
        }
        self.shares.pool(&spec.name).spend(spec, tried)
    }

    /// An acquire [`RedisStore::spend_leased`] could not answer: a first attempt takes a
    /// lease; a retry, or a pool not leasing, makes the plain call.
    async fn acquire_shared(&self, spec: &PoolSpec, tried: &[usize]) -> Acquire {
        if tried.is_empty() && self.leasing(&spec.name) {
            let shares = self.shares.pool(&spec.name);
            return self.acquire_leased(spec, &shares).await;
        }
        self.acquire_once(spec, tried).await
    }

    /// Whether leases may be taken and spent for `pool` now: the invalidations live (never
    /// on Cluster, never without `lease_time`), and the pool shared.
    fn leasing(&self, pool: &str) -> bool {
        self.shares.listening() && self.pool_state(pool) == StoreState::Shared
    }

    /// A first attempt with no lease here: one call per pool at a time takes a lease sized for
    /// this instance's traffic; the attempts that waited for it spend it.
    async fn acquire_leased(&self, spec: &PoolSpec, shares: &PoolShares) -> Acquire {
        shares.waiting.fetch_add(1, Ordering::AcqRel);
        let gate = shares.gate.lock().await;
        shares.waiting.fetch_sub(1, Ordering::AcqRel);
        if !self.leasing(&spec.name) {
            drop(gate);
            return self.acquire_once(spec, &[]).await;
        }
        if let Some(index) = shares.spend(spec, &[]) {
            return Acquire::Key(index);
        }
        let lease_time = self.settings.lease_time;
        let ask = shares.ask(spec, self.settings.lease_max);
        let prepared = self.prepared.get(spec, &self.scripts);
        let call = self.calls.fetch_add(1, Ordering::Relaxed);
        let cmd = prepared.lease(call, &[], ask.want, lease_time, &ask.back);
        let epoch = self.shares.epoch();
        let sent = Instant::now();
        let answer = self
            .run::<redis::Value>(&spec.name, &cmd, &self.scripts.acquire)
            .await;
        let Some(answer) = answer else {
            return self.local.acquire_now(spec, &[]);
        };
        match lease_answer(&answer, sent) {
            Some(Ok(lease)) => {
                // A mark that arrived while the call was out may concern this key: keep
                // nothing of a lease that raced with one.
                let fresh = self.shares.epoch() == epoch && self.shares.listening();
                shares.keep(spec, lease, fresh);
                Acquire::Key(lease.index)
            }
            Some(Err(other)) => other,
            None => Acquire::Exhausted,
        }
    }

    async fn acquire_once(&self, spec: &PoolSpec, tried: &[usize]) -> Acquire {
        let prepared = self.prepared.get(spec, &self.scripts);
        let call = self.calls.fetch_add(1, Ordering::Relaxed);
        let cmd = prepared.acquire(call, tried);
        // index + 1 for a counted key, -wait_ms when none is ready yet, 0 when none can serve.
        match self
            .run::<i64>(&spec.name, &cmd, &self.scripts.acquire)
            .await
        {
            Some(i) if i > 0 => Acquire::Key(usize::try_from(i - 1).unwrap_or(0)),
            Some(i) if i < 0 => Acquire::Wait(Duration::from_millis(i.unsigned_abs())),
            Some(_) => Acquire::Exhausted,
            None => self.local.acquire_now(spec, tried),
        }
    }

    /// This instance's lease on key `index`, if any, is spent no more (given back later).
    fn drop_lease(&self, spec: &PoolSpec, index: usize) {
        if let Some(key) = spec.keys.get(index) {
            self.shares.drop_key(&spec.name, &key.fingerprint);
        }
    }

    /// Run mark.lua for key `index`.
    async fn mark(
        &self,
        spec: &PoolSpec,
        index: usize,
        action: MarkAction,
        reason: &str,
        period: Duration,
    ) {
        let prepared = self.prepared.get(spec, &self.scripts);
        let script = &self.scripts.mark;
        if let Some(cmd) = prepared.mark(script, index, action, reason, period) {
            let _ = self.run::<i64>(&spec.name, &cmd, script).await;
        }
    }

    /// Write a report's mark to Redis (the local state and the lease already know it).
    async fn write_mark(&self, spec: &PoolSpec, index: usize, mark: Mark) {
        let (action, period, reason) = match mark {
            Mark::Cool { period, reason } => (MarkAction::Cooling, period, reason),
            Mark::Quarantine { period, reason } => (MarkAction::Quarantined, period, reason),
        };
        self.mark(spec, index, action, reason, period).await;
    }

    /// Apply an operator's action here at once, then in Redis; while Redis is away the action
    /// waits in the journal (see `actions.rs`) and the answer says so.
    async fn act_shared(&self, spec: &PoolSpec, index: usize, action: KeyAction) -> StoreState {
        self.local.act_now(spec, index, action);
        if action == KeyAction::Disable {
            self.drop_lease(spec, index);
        }
        let prepared = self.prepared.get(spec, &self.scripts);
        let Some(fp) = prepared.fingerprint(index) else {
            return self.pool_state(&spec.name);
        };
        let act = Action::now(prepared.keys.clone(), fp, action);
        self.journal.hold(&act);
        if self.write_action(&act).await {
            StoreState::Shared
        } else {
            if action == KeyAction::Reset {
                self.journal.queue_reset(&act);
            }
            StoreState::Degraded
        }
    }

    /// Run act.lua for `act`; false when Redis is away or the call failed.
    pub(super) async fn write_action(&self, act: &Action) -> bool {
        let script = &self.scripts.act;
        let cmd = act_cmd(script, &act.keys, &act.fingerprint, act.action, act.at_ms);
        match self.run::<i64>(&act.keys.pool, &cmd, script).await {
            Some(applied) => {
                if applied == 0 {
                    tracing::debug!(action = ?act.action, "operator action older than the one in redis; kept the newer");
                }
                self.journal.written(act);
                true
            }
            None => false,
        }
    }

    /// Write every journalled action (oldest first) of the pools `keep` names on `conn`,
    /// before the store (or, on Cluster, a pool) leaves degraded; answers the journal's
    /// version written.
    pub(super) async fn write_journal(
        &self,
        conn: &Conn,
        keep: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<u64, StoreError> {
        let (actions, version) = self.journal.to_write();
        let script = &self.scripts.act;
        for act in actions.into_iter().filter(|a| keep(&a.keys.pool)) {
            let cmd = act_cmd(script, &act.keys, &act.fingerprint, act.action, act.at_ms);
            let _: i64 = self.run_on(conn.clone(), &cmd, script).await?;
            self.journal.written(&act);
        }
        Ok(version)
    }

    /// Write every journalled action (oldest first) on the live connection; one that fails
    /// (its pool, or the store, degraded again) waits for the next return, and with it every
    /// later one of its pool (each then answers at once: its pool is degraded).
    pub(super) async fn replay_actions(&self) {
        for act in self.journal.to_write().0 {
            let _ = self.write_action(&act).await;
        }
    }

    /// Bring this process's memory in line with the disables and enables in Redis (one
    /// HGETALL per pool), so that when Redis goes away this instance keeps honouring the
    /// disables taken on other instances.
    pub(super) async fn sync_disables(&self) {
        for prepared in self.prepared.latest() {
            let mut cmd = redis::cmd("HGETALL");
            cmd.arg(&prepared.keys.ops);
            let Some(ops) = self
                .run::<HashMap<String, String>>(&prepared.pool, &cmd, &self.scripts.status)
                .await
            else {
                continue;
            };
            let spec = &prepared.spec;
            let local = self.local.status_now(spec);
            for (index, key) in spec.keys.iter().enumerate() {
                let here = local.get(index).map(|s| s.mode == KeyMode::Disabled);
                let action = match ops.get(&key.fingerprint).map(String::as_str) {
                    Some(v) if v.ends_with("|disabled") && here == Some(false) => {
                        KeyAction::Disable
                    }
                    Some(v) if v.ends_with("|enabled") && here == Some(true) => KeyAction::Enable,
                    _ => continue,
                };
                self.local.act_now(spec, index, action);
            }
        }
    }

    async fn status_shared(&self, spec: &PoolSpec) -> Vec<KeyStatus> {
        let prepared = self.prepared.get(spec, &self.scripts);
        let rows: Option<Vec<(u64, String, u64, u64)>> = self
            .run(&spec.name, prepared.status(), &self.scripts.status)
            .await;
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

/// A script answer as an acquire: a lease's `{index + 1, taken, span_ms, second}` as a
/// [`Leased`], a single number (none taken, or a lease of one) as an [`Acquire`]; None for an
/// answer of another shape.
fn lease_answer(answer: &redis::Value, sent: Instant) -> Option<Result<Leased, Acquire>> {
    let number = |v: &redis::Value| match v {
        redis::Value::Int(i) => Some(*i),
        _ => None,
    };
    match answer {
        redis::Value::Int(i) if *i > 0 => Some(Err(Acquire::Key(
            usize::try_from(i - 1).unwrap_or(usize::MAX),
        ))),
        redis::Value::Int(i) if *i < 0 => {
            Some(Err(Acquire::Wait(Duration::from_millis(i.unsigned_abs()))))
        }
        redis::Value::Int(_) => Some(Err(Acquire::Exhausted)),
        redis::Value::Array(parts) if parts.len() == 4 => {
            let [index, taken, span, second] = [0, 1, 2, 3].map(|i| number(&parts[i]));
            Some(Ok(Leased {
                index: usize::try_from(index? - 1).ok()?,
                taken: u32::try_from(taken?).ok()?,
                span: Duration::from_millis(u64::try_from(span?).ok()?),
                second: u64::try_from(second?).ok()?,
                sent,
            }))
        }
        _ => None,
    }
}

impl Store for RedisStore {
    fn acquire<'a>(&'a self, pool: &'a PoolSpec, tried: &'a [usize]) -> StoreFuture<'a, Acquire> {
        match self.spend_leased(pool, tried) {
            Some(index) => StoreFuture::ready(Acquire::Key(index)),
            None => StoreFuture::boxed(self.acquire_shared(pool, tried)),
        }
    }

    fn report<'a>(
        &'a self,
        pool: &'a PoolSpec,
        index: usize,
        report: Report,
    ) -> StoreFuture<'a, ()> {
        // Local state learns every mark too, so a fallback starts from what we knew.
        self.local.report_now(pool, index, report);
        let Some(mark) = report.mark else {
            return StoreFuture::ready(());
        };
        self.drop_lease(pool, index);
        StoreFuture::boxed(self.write_mark(pool, index, mark))
    }

    fn status<'a>(&'a self, pool: &'a PoolSpec) -> StoreFuture<'a, Vec<KeyStatus>> {
        StoreFuture::boxed(self.status_shared(pool))
    }

    fn act<'a>(
        &'a self,
        pool: &'a PoolSpec,
        index: usize,
        action: KeyAction,
    ) -> StoreFuture<'a, StoreState> {
        StoreFuture::boxed(self.act_shared(pool, index, action))
    }

    fn remember<'a>(
        &'a self,
        pool: &'a str,
        ids: &'a [String],
        fingerprint: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, ()> {
        StoreFuture::boxed(self.remember_shared(pool, ids, fingerprint, ttl))
    }

    fn recall<'a>(
        &'a self,
        pool: &'a str,
        ids: &'a [String],
    ) -> StoreFuture<'a, Vec<Option<String>>> {
        StoreFuture::boxed(self.recall_shared(pool, ids))
    }

    fn errors(&self) -> u64 {
        RedisStore::errors(self)
    }

    /// Degraded while the store, or (on Cluster) any pool, is.
    fn state(&self) -> StoreState {
        if self.is_degraded() || self.outages.any() {
            StoreState::Degraded
        } else {
            StoreState::Shared
        }
    }
}
