//! The shared store: pool state in Redis (or Redis Cluster), so many instances act as one pool,
//! with this process's memory as the fallback whenever Redis is away.
//!
//! # Data model
//! Every key lives under `keyrelay:{<pool>}:`; the braces are a Cluster hash tag, so one pool's
//! keys share a slot and each script touches a single node. Every key but the operator hash
//! carries a TTL.
//!
//! | key                   | type | holds                                                     | TTL   |
//! |-----------------------|------|-----------------------------------------------------------|-------|
//! | `keyrelay:{p}:state`  | hash | `rr`: the shared round-robin cursor; `x`: the lowest score in the due set (the next second a sweep has work); `mk`: no mark ends later than this (ms; a disable counts as never), so the marks are read only while one may be in force; `op`: the operator hash's disables are mirrored here (absent in a new hash: the first acquire that finds no key counted restores them); per key `<fp>` (fingerprint): `m:<fp>` its mark, `<until_ms>\|<cooling\|quarantined\|disabled>\|<since_ms>\|<reason>` (a disable is the mirror `0\|disabled\|<at_ms>\|manual`); `n:<fp>` requests in its live buckets; `o:<fp>` its oldest live bucket's second; `f:<fp>` when, being full, it frees up (ms) (`n`, `o`, `f` are removed once nothing of the key is live); `t:<fp>` requests counted before the live buckets (the total is `t + n`; kept, so a key added back keeps its total); `_`: a fixed text over 64 bytes, so Redis keeps the hash a hash table (see below) | 1 day (`STATE_TTL_MS`), refreshed by each new bucket (longer if a mark needs it) |
//! | `keyrelay:{p}:b`      | hash | `<fp>:<second>`: requests given to that key in that second (Redis time); `_` as in `state` | 125 s (`BUCKET_TTL_MS`), renewed by each new bucket |
//! | `keyrelay:{p}:due`    | sorted set | per key with live buckets (of any key set) or a mark in force, its fingerprint, scored by the second it is next due: its oldest bucket leaves the window, or its mark ends | 1 day, renewed by each sweep and each key's first bucket |
//! | `keyrelay:{p}:ops`    | hash | per key an operator acted on, `<fp>` = `<at_ms>\|disabled` or `<at_ms>\|enabled`: the latest disable or enable, stamped with the acting instance's wall clock (Unix ms). The truth for disables: status reads it, acquire restores the state hash's mirror from it | none: a disable never expires |
//! | `keyrelay:{p}:ev`     | pub/sub channel | a key's fingerprint, published by `mark.lua` (every mark) and `act.lua` (a disable): instances leasing (`shares.rs`) drop their lease on that key | none: nothing stored |
//! | `keyrelay:{p}:id:<id>` | string | `[affinity] mode = "map"`: the fingerprint of the key that answered with resource id `<id>` (`ids.rs`) | `map_ttl` |
//! | `keyrelay:{p}:alive`  | string | written by the health probe, one per pool (configured or served), so with Cluster it checks each pool's own slot (`keyrelay:{probe}:alive` only while no pool is known) | 10 s |
//!
//! # Operator actions
//! A disable, enable or reset is applied to this process's memory at once, then written with
//! `act.lua`, stamped with this instance's wall clock: the newest action on a key wins, ties
//! going to the later write, so an action queued during an outage never undoes a newer one
//! taken elsewhere (instances' clocks are assumed to agree to well under the time between two
//! operators' actions on one key). A reset clears only a cooldown or quarantine set before it
//! (`since_ms` in the mark). The latest disable or enable per key that this instance took is
//! kept (`actions.rs`) and written again each time Redis comes back, so a Redis that returns
//! without its data gets it back from any instance that took it; a reset that did not reach
//! Redis is written once when it returns. `Store::act` answers `Shared` once Redis has it,
//! `Degraded` while it waits. While Redis serves, each instance reads the operator hash every
//! `sync_interval` (2 s; one HGETALL per pool) into its own memory, so in a later outage it
//! keeps honouring the disables taken on other instances.
//!
//! # Other key sets on one pool name
//! Instances with different keys may share a pool name (a rolling reload, two deployments on
//! one Redis). Each key's window is swept by whichever instance runs: when `x` is due, an
//! acquire looks at its own keys and at up to 16 (`SWEEP_MAX`) other keys from the due set,
//! moves their expired buckets out of their counts, removes what is no longer live (counts,
//! buckets, ended marks; never a disable or a total) and scores them again. Work per call is
//! bounded by the spec's keys plus 16, each at most 61 bucket names.
//!
//! A key's window is its buckets of the last 61 whole seconds (`BUCKETS` in `common.lua`): a
//! bucket counts until all of its second has left the minute, so no key takes more than its rpm
//! in any 60 s (and at least 60/61 of it). A mark whose `until_ms` has passed is read as no
//! mark; a disable has no end until enabled.
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
//! `acquire` is one `EVALSHA` of `acquire.lua` (skip, pick, count, answer); with
//! `lease_time` set, one such call takes a few requests at once and most attempts make none
//! (`shares.rs`). A success needs
//! nothing more; a 429 or 401/403 adds one `EVALSHA` of `mark.lua`; an operator's action is
//! one `EVALSHA` of `act.lua`; the status page is one `EVALSHA` of `status.lua`. Each script is built once, with `common.lua` (the constants
//! above, Redis time in ms, bucket names, which buckets have left the window, reading a mark)
//! in front of it; each draws its KEYS and ARGV at its top. Scripts are loaded on every
//! (re)connect and reloaded on `NOSCRIPT`.
//!
//! # Outage
//! A command that errors or outlives `command_timeout` flips the store to degraded: requests
//! are then served from local memory, each instance enforcing `1/instances` of each limit,
//! while a background probe retries Redis with growing backoff (writing each pool's `alive`
//! key) and flips back when the writes succeed, then writes the journalled operator actions.
//! No request ever waits on Redis longer than `command_timeout`. An outage is logged as one
//! warning when it starts and one line when Redis answers again; for `recovery_settle` (1 s)
//! after that, a flap is not logged (unless Redis is still away when the time is up: then it
//! is a new outage, logged as such), so a flapping Redis logs one pair. Warnings are held to
//! one a second per kind of error.
//!
//! With one Redis the degraded state is the store's. With Redis Cluster it is per pool
//! (`outages.rs`): a failed command marks only its pool degraded (served on local state, as
//! the whole store is in an outage) while the pools whose slots live on the other masters stay
//! shared (with `cluster-require-full-coverage no` on the servers, which keeps the other
//! masters answering); the probe then writes every known pool's `alive` key each round, sharing
//! again each pool that answers (its journalled operator actions written first). When no pool
//! answers the outage is the store's: the connection is dropped, one "unavailable" line is
//! logged and the store's probe opens a fresh connection; at start, or when it returns, the
//! store is shared once any pool's slot answers, and the others are marked degraded.
//! `Store::state` says Degraded while the store or any pool is; [`RedisStore::pool_state`]
//! answers per pool. The hot path reads the set of degraded pools only while it is not empty
//! (a counter). On Cluster, SCRIPT LOAD goes to every master and fails while one is down, so
//! a call a master answers NOSCRIPT (a restarted master) runs again as EVAL there, which
//! caches the script on it.
//!
//! # Layout
//! - `settings.rs`: [`RedisSettings`], the timeouts and outage behaviour.
//! - `conn.rs`: where connections come from ([`RedisTarget`], deadpool, Cluster).
//! - `command.rs`: the scripts (`common.lua` + `acquire.lua`, `mark.lua`, `act.lua`,
//!   `status.lua`) and, per pool spec, their prepared calls.
//! - `health.rs`: the degraded flag, the probe, and the bounded run of one command.
//! - `outages.rs`: on Cluster, the pools degraded while the rest stay shared, and their probe.
//! - `ops.rs`: the store operations (`impl Store`), each with its local fallback.
//! - `actions.rs`: the operator actions kept to write (again) when Redis is back.
//! - `shares.rs`: leased shares of a key's minute, spent locally (`lease_time`), and
//!   `events.rs`: the subscription that drops them when a key is marked or disabled.
//! - `ids.rs`: resource ids mapped to their key (`[affinity] mode = "map"`).
//! - `marks.rs`: reading a stored mark into a [`KeyMode`](crate::KeyMode).
//! - `error.rs`: [`StoreError`], with no URL or password in any message.
//! - Tests: `command_tests.rs` (the argument layouts) and `lua_tests.rs` (the scripts in a
//!   `redis-server` of their own); the store itself in `pool/tests/` (the contract, durable
//!   actions and mixed key sets, outage logs) and through the proxy (`proxy/tests/redis.rs`,
//!   `proxy/tests/redis_faults.rs`).

mod actions;
mod command;
mod conn;
mod error;
mod events;
mod health;
mod ids;
mod marks;
mod ops;
mod outages;
mod settings;
mod shares;

#[cfg(test)]
mod lua_tests;

use crate::memory::MemoryStore;
use actions::Journal;
use command::{PreparedCache, Scripts};
use conn::{Conn, Pools};
use health::Throttle;
use outages::PoolOutages;
use shares::Shares;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;
use tokio::sync::Notify;

pub use conn::RedisTarget;
pub use error::StoreError;
pub use settings::RedisSettings;

/// Redis-backed pool state with local fallback. Create with [`RedisStore::connect`].
pub struct RedisStore {
    pools: Pools,
    /// The live connection; None while degraded.
    conn: RwLock<Option<Conn>>,
    /// This process's state, kept up to date with every mark, served from while degraded.
    local: MemoryStore,
    /// The whole store is away (one Redis, or no Cluster node answers).
    degraded: AtomicBool,
    /// On Cluster, the pools whose slot is away while the rest stay shared.
    outages: PoolOutages,
    /// Wakes the probe when the store degrades.
    wake: Arc<Notify>,
    settings: RedisSettings,
    scripts: Scripts,
    prepared: PreparedCache,
    /// Commands that failed or timed out.
    errors: AtomicU64,
    /// Acquire calls made, for tie rotation.
    calls: AtomicU64,
    /// Whether Redis has ever answered, so the first connect is not logged as a recovery.
    connected_before: AtomicBool,
    /// Operator actions to write (again) when Redis is back.
    journal: Journal,
    /// An outage was logged and its end not yet: no second "gone" line until "back".
    reported_down: AtomicBool,
    /// Until when, after "back" was logged, a flap stays silent (`recovery_settle`).
    settling_until: Mutex<Option<Instant>>,
    /// At most one warning per second per kind of error.
    throttle: Throttle,
    /// Leased shares of keys' minutes, spent here without a Redis call (`shares.rs`).
    shares: Shares,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("degraded", &self.degraded.load(Ordering::Relaxed))
            .field("pools_degraded", &self.outages.any())
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Build the store and try Redis once (bounded by the connect timeout). Starts degraded,
    /// and probing, if Redis does not answer: keyrelay starts while Redis is down. Fails only
    /// when `target` or `settings` cannot make a connection at all.
    pub async fn connect(
        target: &RedisTarget,
        settings: RedisSettings,
    ) -> Result<Arc<RedisStore>, StoreError> {
        let pools = Pools::new(target, &settings)?;
        let events = if settings.lease_time.is_zero() {
            None
        } else {
            events::client(target)?
        };
        let store = Arc::new(RedisStore {
            pools,
            conn: RwLock::new(None),
            local: MemoryStore::with_share(settings.instances),
            degraded: AtomicBool::new(true),
            outages: PoolOutages::default(),
            wake: Arc::new(Notify::new()),
            scripts: Scripts::new(),
            settings,
            prepared: PreparedCache::default(),
            errors: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            connected_before: AtomicBool::new(false),
            journal: Journal::default(),
            reported_down: AtomicBool::new(false),
            settling_until: Mutex::new(None),
            throttle: Throttle::default(),
            shares: Shares::default(),
        });
        if let Some(client) = events {
            tokio::spawn(events::listen(Arc::downgrade(&store), client));
        }
        if let Err(e) = store.probe_once().await {
            store.reported_down.store(true, Ordering::Release);
            store.warn(
                &e,
                "redis unavailable at start; serving on local state until it answers",
            );
        }
        tokio::spawn(health::probe_loop(
            Arc::downgrade(&store),
            store.wake.clone(),
        ));
        Ok(store)
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        // Let the probe task see the store is gone and end.
        self.wake.notify_one();
    }
}
