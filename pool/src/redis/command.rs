//! The store's Redis commands: the four scripts, each built once with `common.lua` in front,
//! and per pool spec the fixed part of every script call, so an attempt only appends its own
//! arguments. The argument layouts are drawn at the top of each script.

use crate::key::Key;
use crate::select::Strategy;
use crate::store::{KeyAction, PoolSpec};
use deadpool_redis::redis::{self, Cmd, Script};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Constants and arithmetic every script shares; put in front of each one.
const COMMON: &str = include_str!("common.lua");

/// The store's scripts, loaded on every (re)connect and again on `NOSCRIPT`.
pub(super) struct Scripts {
    pub(super) acquire: Script,
    pub(super) mark: Script,
    pub(super) act: Script,
    pub(super) status: Script,
    /// Each script's source by its hash, for EVAL where SCRIPT LOAD cannot reach every master.
    sources: HashMap<String, String>,
}

impl Scripts {
    pub(super) fn new() -> Scripts {
        let mut sources = HashMap::new();
        let mut build = |body: &str| {
            let code = format!("{COMMON}{body}");
            let script = Script::new(&code);
            sources.insert(script.get_hash().to_owned(), code);
            script
        };
        Scripts {
            acquire: build(include_str!("acquire.lua")),
            mark: build(include_str!("mark.lua")),
            act: build(include_str!("act.lua")),
            status: build(include_str!("status.lua")),
            sources,
        }
    }

    /// `script`'s source.
    pub(super) fn source(&self, script: &Script) -> Option<&str> {
        self.sources.get(script.get_hash()).map(String::as_str)
    }

    pub(super) fn all(&self) -> [&Script; 4] {
        [&self.acquire, &self.mark, &self.act, &self.status]
    }
}

/// The mark mark.lua puts on a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum MarkAction {
    Cooling,
    Quarantined,
}

impl MarkAction {
    fn as_str(self) -> &'static str {
        match self {
            MarkAction::Cooling => "cooling",
            MarkAction::Quarantined => "quarantined",
        }
    }
}

/// An operator's action as act.lua names it.
pub(super) fn act_name(action: KeyAction) -> &'static str {
    match action {
        KeyAction::Disable => "disable",
        KeyAction::Enable => "enable",
        KeyAction::Reset => "reset",
    }
}

/// A pool's Redis keys, all under its hash tag (one Cluster slot).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct PoolKeys {
    /// The pool's name (its hash tag).
    pub(super) pool: String,
    pub(super) state: String,
    pub(super) buckets: String,
    pub(super) due: String,
    pub(super) ops: String,
}

impl PoolKeys {
    pub(super) fn new(pool: &str) -> PoolKeys {
        let base = format!("keyrelay:{{{pool}}}:");
        PoolKeys {
            pool: pool.to_owned(),
            state: format!("{base}state"),
            buckets: format!("{base}b"),
            due: format!("{base}due"),
            ops: format!("{base}ops"),
        }
    }
}

/// The act.lua call applying `action` to the key with fingerprint `fp`, taken at `at_ms`
/// (Unix ms on this instance's clock).
pub(super) fn act_cmd(
    script: &Script,
    keys: &PoolKeys,
    fp: &str,
    action: KeyAction,
    at_ms: u64,
) -> Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash())
        .arg(2)
        .arg(&keys.state)
        .arg(&keys.ops)
        .arg(fp)
        .arg(act_name(action))
        .arg(at_ms);
    cmd
}

/// `evalsha` (an EVALSHA call) as an EVAL of `code`: on Cluster it goes to the master of its
/// keys, runs there and leaves the script cached there, where SCRIPT LOAD would go to every
/// master and fail while one is down.
pub(super) fn eval_cmd(evalsha: &Cmd, code: &str) -> Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(code);
    for arg in evalsha.args_iter().skip(2) {
        if let redis::Arg::Simple(bytes) = arg {
            cmd.arg(bytes);
        }
    }
    cmd
}

/// A pool's Redis keys and the fixed part of its script calls, built once per spec.
pub(super) struct Prepared {
    /// EVALSHA acquire with its keys and strategy; the per-attempt arguments follow it.
    acquire_head: Cmd,
    /// After the per-attempt arguments: the fingerprints, the rpm limits, (`w` only) the
    /// weights, then the state fields acquire.lua reads.
    acquire_tail: Vec<String>,
    status: Cmd,
    pub(super) pool: String,
    pub(super) keys: PoolKeys,
    fingerprints: Vec<String>,
    /// A copy of the spec, for work done outside a caller's call (syncing disables).
    pub(super) spec: PoolSpec,
}

impl Prepared {
    pub(super) fn new(spec: &PoolSpec, scripts: &Scripts) -> Prepared {
        let keys = PoolKeys::new(&spec.name);
        let fingerprints: Vec<String> = spec.keys.iter().map(|k| k.fingerprint.clone()).collect();
        let mut acquire_head = redis::cmd("EVALSHA");
        acquire_head
            .arg(scripts.acquire.get_hash())
            .arg(4)
            .arg(&keys.state)
            .arg(&keys.buckets)
            .arg(&keys.due)
            .arg(&keys.ops)
            .arg(strategy_code(spec));
        let mut status = redis::cmd("EVALSHA");
        status
            .arg(scripts.status.get_hash())
            .arg(3)
            .arg(&keys.state)
            .arg(&keys.buckets)
            .arg(&keys.ops)
            .arg(&fingerprints);
        Prepared {
            acquire_head,
            acquire_tail: acquire_tail(spec),
            status,
            pool: spec.name.clone(),
            keys,
            fingerprints,
            spec: PoolSpec {
                name: spec.name.clone(),
                keys: spec.keys.clone(),
                strategy: spec.strategy,
                generation: spec.generation,
                found: crate::memory::Found::new(),
            },
        }
    }

    /// Key `index`'s fingerprint.
    pub(super) fn fingerprint(&self, index: usize) -> Option<&str> {
        self.fingerprints.get(index).map(String::as_str)
    }

    /// One attempt's acquire call: the `call`-th of this store, skipping the `tried` keys.
    pub(super) fn acquire(&self, call: u64, tried: &[usize]) -> Cmd {
        // The fixed head is cloned (one buffer copy); the per-attempt parts are appended.
        let mut cmd = self.acquire_head.clone();
        // Ties under least-loaded and weighted by share (which need no shared cursor) start
        // at call % n; sent as that, a small number.
        cmd.arg(call % self.fingerprints.len().max(1) as u64);
        cmd.arg(tried_list(tried));
        cmd.arg(&self.acquire_tail);
        cmd
    }

    /// One attempt's acquire call as a lease (see `shares.rs`): take up to `want` requests of
    /// the key picked, for up to `lease_time`, and first give `back` the unused requests of
    /// earlier leases (want 0: only give back).
    pub(super) fn lease(
        &self,
        call: u64,
        tried: &[usize],
        want: u32,
        lease_time: Duration,
        back: &str,
    ) -> Cmd {
        let mut cmd = self.acquire_head.clone();
        cmd.arg(call % self.fingerprints.len().max(1) as u64);
        let ms = lease_time.as_millis().max(1);
        cmd.arg(format!("{}|{want}|{ms}|{back}", tried_list(tried)));
        cmd.arg(&self.acquire_tail);
        cmd
    }

    /// The mark.lua call that applies `action` to key `index` (none for an unknown index).
    pub(super) fn mark(
        &self,
        script: &Script,
        index: usize,
        action: MarkAction,
        reason: &str,
        period: Duration,
    ) -> Option<Cmd> {
        let fp = self.fingerprints.get(index)?;
        let ms = u64::try_from(period.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(script.get_hash())
            .arg(1)
            .arg(&self.keys.state)
            .arg(fp)
            .arg(action.as_str())
            .arg(reason)
            .arg(ms);
        Some(cmd)
    }

    /// The status.lua call for every key.
    pub(super) fn status(&self) -> &Cmd {
        &self.status
    }
}

/// The strategy as acquire.lua names it. Where every key has the same limit (least-loaded)
/// or weight (weighted), the least share is the least count: `lc` compares counts and never
/// converts the limits.
fn strategy_code(spec: &PoolSpec) -> &'static str {
    let same = |f: fn(&Key) -> u32| spec.keys.windows(2).all(|pair| f(&pair[0]) == f(&pair[1]));
    match spec.strategy {
        Strategy::RoundRobin => "rr",
        Strategy::LeastLoaded if same(|k| k.rpm) => "lc",
        Strategy::Weighted if same(|k| k.weight) => "lc",
        Strategy::LeastLoaded => "ll",
        Strategy::Weighted => "w",
    }
}

/// acquire.lua's arguments after the per-attempt ones (see its layout).
fn acquire_tail(spec: &PoolSpec) -> Vec<String> {
    let keys = &spec.keys;
    let mut tail: Vec<String> = keys.iter().map(|k| k.fingerprint.clone()).collect();
    tail.extend(keys.iter().map(|k| k.rpm.to_string()));
    // Weights only where the script compares by them: equal weights run as `lc`, whose layout
    // has none.
    if strategy_code(spec) == "w" {
        tail.extend(keys.iter().map(|k| k.weight.to_string()));
    }
    // The state fields read in one HMGET, ready-made.
    tail.extend(["x".to_owned(), "mk".to_owned()]);
    if spec.strategy == Strategy::RoundRobin {
        tail.push("rr".into());
    }
    tail.extend(keys.iter().map(|k| format!("n:{}", k.fingerprint)));
    tail
}

/// The tried keys as acquire.lua finds them: `,0,2,`, or `,` for none.
fn tried_list(tried: &[usize]) -> String {
    let mut list = String::with_capacity(1 + tried.len() * 3);
    list.push(',');
    for i in tried {
        list.push_str(&i.to_string());
        list.push(',');
    }
    list
}

/// Prepared commands by spec generation.
#[derive(Default)]
pub(super) struct PreparedCache(Mutex<HashMap<u64, Arc<Prepared>>>);

impl PreparedCache {
    pub(super) fn get(&self, spec: &PoolSpec, scripts: &Scripts) -> Arc<Prepared> {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(p) = map.get(&spec.generation) {
            return p.clone();
        }
        // Specs of a reloaded config replace older ones; keep the map from growing.
        if map.len() > 64 {
            map.clear();
        }
        let p = Arc::new(Prepared::new(spec, scripts));
        map.insert(spec.generation, p.clone());
        p
    }

    /// The newest spec served of each pool.
    pub(super) fn latest(&self) -> Vec<Arc<Prepared>> {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let mut newest: HashMap<&str, &Arc<Prepared>> = HashMap::new();
        for p in map.values() {
            let slot = newest.entry(p.pool.as_str()).or_insert(p);
            if slot.spec.generation < p.spec.generation {
                *slot = p;
            }
        }
        newest.into_values().cloned().collect()
    }

    /// The names of the pools served lately (the specs in the cache), each once.
    pub(super) fn pools(&self) -> Vec<String> {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let mut names: Vec<String> = map.values().map(|p| p.pool.clone()).collect();
        names.sort_unstable();
        names.dedup();
        names
    }
}

#[cfg(test)]
#[path = "command_tests.rs"]
mod tests;
