//! Per-client and per-tenant limits: requests (`rpm`) and tokens (`tpm`) in a sliding minute,
//! counted over every instance in Redis when a store is configured (one script call, one round
//! trip, only for a client that has a limit), else in this process.
//!
//! The minute slides as two fixed windows weighted by how far the current one has run (the
//! previous window's count counts for the part of it still inside the last 60 s), so instances
//! that agree on the wall clock agree on the windows with no coordination. A request is counted
//! against both its client's and its tenant's request limit only when it is under every limit;
//! the same call reads the token counters, which the answer's tokens are added to once it ends
//! (`tokens.rs`). With `store.lease_time`, a call takes a few requests at once and this
//! instance spends them without Redis (`leases.rs`). Should Redis fail or be slower than
//! `store.command_timeout`, the limits are counted here, each instance allowing
//! `1/store.instances` of them, as the pools do.

use super::conn::Conn;
use super::leases::Lease;
use super::tokens::Tally;
use crate::config::{Config, StoreConfig};
use crate::error::ProxyError;
use deadpool_redis::redis::{FromRedisValue, Script, ScriptInvocation};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

pub(super) const WINDOW_MS: u64 = 60_000;

/// One client's or tenant's limits.
#[derive(Clone, Copy, Debug, Default)]
struct Caps {
    rpm: Option<u32>,
    tpm: Option<u32>,
}

impl Caps {
    fn any(&self) -> bool {
        self.rpm.is_some() || self.tpm.is_some()
    }
}

/// One limit to check: its counter's name, its limit, what it is, and whether it counts
/// tokens (read only) rather than requests (counted by the check).
struct Check {
    /// Shared (a reference count to copy): the request path keys counters and tallies by it.
    name: Arc<str>,
    limit: u32,
    scope: &'static str,
    tokens: bool,
}

/// A limited client's checks (counter names included, made once per config), its lease of
/// requests on this instance, and the most one lease may take.
struct Rule {
    checks: Vec<Check>,
    lease: Mutex<Lease>,
    cap: u32,
    /// One call for a lease at a time: requests that find none wait for the call in flight
    /// (at most its `command_timeout`) and are served from what it took; how many wait, the
    /// calls made, and whether the last one failed.
    gate: tokio::sync::Mutex<()>,
    waiting: AtomicU32,
    calls: AtomicU64,
    failed: AtomicBool,
}

impl Rule {
    fn new(checks: Vec<Check>, lease_max: u32) -> Rule {
        // At most 1% of the smallest request limit (at least one) and `lease_max`.
        let smallest = checks.iter().filter(|c| !c.tokens).map(|c| c.limit).min();
        let cap = smallest.map_or(lease_max, |l| (l / 100).clamp(1, lease_max.max(1)));
        Rule {
            checks,
            lease: Mutex::default(),
            cap,
            gate: tokio::sync::Mutex::new(()),
            waiting: AtomicU32::new(0),
            calls: AtomicU64::new(0),
            failed: AtomicBool::new(false),
        }
    }

    fn lease(&self) -> std::sync::MutexGuard<'_, Lease> {
        self.lease.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Every configured client and tenant limit, and where they are counted.
pub struct Limits {
    /// Each limited client's rule, by the client's name.
    rules: HashMap<String, Rule>,
    pub(super) local: Mutex<Counters>,
    pub(super) redis: Option<Arc<Remote>>,
    /// Answers' tokens not yet added in Redis, and the task that adds them (tokens.rs).
    pub(super) pending: Mutex<super::tokens::Pending>,
    pub(super) flusher: std::sync::Once,
    /// Tokens this process added to token counters since start.
    pub(super) counted: AtomicU64,
}

/// A counter's two windows, as kept in this process.
#[derive(Clone, Copy, Default)]
pub(super) struct Counter {
    window: u64,
    pub(super) current: u64,
    pub(super) previous: u64,
}

impl Limits {
    pub fn new(config: &Config) -> Limits {
        let mut rules = HashMap::new();
        let caps = |rpm, tpm| Caps { rpm, tpm };
        let lease_max = config.store.as_ref().map_or(1, |s| s.settings.lease_max);
        for c in &config.clients {
            let client = caps(c.rpm, c.tpm);
            if client.any() {
                let checks = checks(&c.name, client, None, &c.name);
                rules.insert(c.name.clone(), Rule::new(checks, lease_max));
            }
        }
        for t in &config.tenants {
            let tenant = caps(t.rpm, t.tpm);
            let of_tenant = tenant.any().then_some((t.name.as_str(), tenant));
            for c in &t.clients {
                let client = caps(c.rpm, c.tpm);
                if client.any() || tenant.any() {
                    let checks = checks(&c.name, client, of_tenant, &t.name);
                    rules.insert(c.name.clone(), Rule::new(checks, lease_max));
                }
            }
        }
        let redis = match &config.store {
            Some(s) if !rules.is_empty() || super::tokens::keys_limited(config) => {
                Some(Arc::new(Remote::new(s)))
            }
            _ => None,
        };
        Limits {
            rules,
            local: Mutex::default(),
            redis,
            pending: Mutex::default(),
            flusher: std::sync::Once::new(),
            counted: AtomicU64::new(0),
        }
    }

    /// Tokens this process has added to token counters (clients', tenants' and keys') since it
    /// started; each answer's once it ended.
    pub fn counted(&self) -> u64 {
        self.counted.load(Ordering::Relaxed)
    }

    /// Count one request of `client`, or refuse it (429 naming the limit, with the wait until
    /// one more would fit). Costs nothing for a client with no limit. Answers where the
    /// answer's tokens are to be counted, for a client or tenant with a `tpm`.
    pub async fn check(&self, client: &str) -> Result<Option<Box<Tally>>, ProxyError> {
        if self.rules.is_empty() {
            return Ok(None);
        }
        let Some(rule) = self.rules.get(client) else {
            return Ok(None);
        };
        let checks = &rule.checks;
        let (window, elapsed) = now();
        let refused = match &self.redis {
            // A request of this instance's lease: counted in Redis when the lease was taken.
            Some(remote) if remote.leases() && rule.lease().spend(Instant::now(), window) => None,
            // Boxed, as below.
            Some(remote) if remote.leases() => {
                Box::pin(self.lease(remote, rule, window, elapsed)).await
            }
            // Boxed: the Redis call's future is large, and only limited clients need it; every
            // request's future would otherwise carry its size (and copy it).
            Some(remote) => match Box::pin(remote.count(rule, window, elapsed)).await {
                Some(answer) => answer,
                None => self.count_here(checks, window, elapsed, remote.instances),
            },
            None => self.count_here(checks, window, elapsed, 1),
        };
        match refused {
            None => Ok(Tally::of(checks)),
            Some((i, current, previous)) => Err(ProxyError::ClientLimited {
                scope: checks[i].scope,
                limit: if checks[i].tokens { "tpm" } else { "rpm" },
                retry_after: wait(checks[i].limit, current, previous, elapsed),
            }),
        }
    }

    /// A request that found no lease: served from the call in flight if there is one (waiting
    /// for it), else by a call of its own for a lease; counted here when Redis failed.
    async fn lease(
        &self,
        remote: &Remote,
        rule: &Rule,
        window: u64,
        elapsed: u64,
    ) -> Option<(usize, u64, u64)> {
        let seen = rule.calls.load(Ordering::Acquire);
        rule.waiting.fetch_add(1, Ordering::Relaxed);
        let gate = rule.gate.lock().await;
        rule.waiting.fetch_sub(1, Ordering::Relaxed);
        if rule.calls.load(Ordering::Acquire) != seen {
            // A call ended while this one waited: its lease serves this request too, or its
            // failure sends it here at once (not into a call of its own, one after another).
            if rule.lease().spend(Instant::now(), window) {
                return None;
            }
            if rule.failed.load(Ordering::Relaxed) {
                drop(gate);
                return self.count_here(&rule.checks, window, elapsed, remote.instances);
            }
        }
        let answer = remote.count(rule, window, elapsed).await;
        rule.failed.store(answer.is_none(), Ordering::Relaxed);
        rule.calls.fetch_add(1, Ordering::Release);
        drop(gate);
        match answer {
            Some(answer) => answer,
            None => self.count_here(&rule.checks, window, elapsed, remote.instances),
        }
    }

    /// Count in this process; each of `instances` allows its share of every limit.
    fn count_here(
        &self,
        checks: &[Check],
        window: u64,
        elapsed: u64,
        instances: u32,
    ) -> Option<(usize, u64, u64)> {
        let mut counters = self.local.lock().unwrap_or_else(PoisonError::into_inner);
        for (i, c) in checks.iter().enumerate() {
            let counter = counters.entry(c.name.clone()).or_default();
            roll(counter, window);
            let limit = (c.limit / instances.max(1)).max(1);
            let (cur, prev) = (counter.current, counter.previous);
            if over(limit, cur, prev, elapsed, c.tokens) {
                return Some((i, cur, prev));
            }
        }
        // Under every limit: the request counts in each request limit (all made above).
        for c in checks.iter().filter(|c| !c.tokens) {
            if let Some(counter) = counters.get_mut(&c.name) {
                counter.current += 1;
            }
        }
        None
    }
}

/// The counters kept in this process, by name. The names are the config's (clients', tenants'
/// and keys' counters, never a client's input), so they are hashed for speed, not against
/// collisions forced on purpose: eight bytes at a time, where SipHash was a few percent of a
/// limited request's work.
pub(super) type Counters = HashMap<Arc<str>, Counter, BuildHasherDefault<NameHasher>>;

/// A multiply-rotate hash over eight bytes at a time (as rustc's FxHasher).
#[derive(Default)]
pub(super) struct NameHasher(u64);

impl Hasher for NameHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0xf135_7aea_2e62_a9c5;
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            let w = u64::from_le_bytes(w.try_into().unwrap_or_default());
            self.0 = (self.0 ^ w).wrapping_mul(K).rotate_left(26);
        }
        for &b in words.remainder() {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(K).rotate_left(26);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Which window it is now, and how many ms into it.
pub(super) fn now() -> (u64, u64) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    (now / WINDOW_MS, now % WINDOW_MS)
}

/// The counters of `client`'s limits (its own `caps`, and its tenant's name and limits, if
/// any), made once per config. All share the Cluster hash tag `tag` (the tenant's name, or the
/// client's for a client of no tenant), so one script reads and writes them.
fn checks(client: &str, caps: Caps, tenant: Option<(&str, Caps)>, tag: &str) -> Vec<Check> {
    let mut out = Vec::with_capacity(4);
    let mut add = |caps: Caps, scope: &'static str, name: &str| {
        for (limit, kind, tokens) in [(caps.rpm, "", false), (caps.tpm, "-tpm", true)] {
            if let Some(limit) = limit {
                out.push(Check {
                    name: format!("keyrelay:{{limit.{tag}}}:{scope}{kind}:{name}").into(),
                    limit,
                    scope,
                    tokens,
                });
            }
        }
    };
    add(caps, "client", client);
    if let Some((tenant, caps)) = tenant {
        add(caps, "tenant", tenant);
    }
    out
}

impl Tally {
    /// The token counters among `checks`, if any.
    fn of(checks: &[Check]) -> Option<Box<Tally>> {
        let counters: Vec<Arc<str>> = checks
            .iter()
            .filter(|c| c.tokens)
            .map(|c| c.name.clone())
            .collect();
        (!counters.is_empty()).then(|| Box::new(Tally { counters }))
    }
}

/// Move a counter to `window`: the current count becomes the previous one, or both clear.
fn roll(c: &mut Counter, window: u64) {
    if c.window == window {
        return;
    }
    c.previous = if c.window + 1 == window { c.current } else { 0 };
    c.current = 0;
    c.window = window;
}

/// The sliding minute's count, `elapsed` ms into the current window.
fn weighted(current: u64, previous: u64, elapsed: u64) -> f64 {
    let w = WINDOW_MS as f64;
    previous as f64 * (w - elapsed as f64) / w + current as f64
}

/// Whether one more request would pass `limit`, or (`tokens`) the tokens already reached it.
pub(super) fn over(limit: u32, current: u64, previous: u64, elapsed: u64, tokens: bool) -> bool {
    let used = weighted(current, previous, elapsed);
    if tokens {
        used >= f64::from(limit)
    } else {
        used + 1.0 > f64::from(limit)
    }
}

/// How long until one more request fits: while the previous window's share slides out of this
/// one, or, when the current window alone is full, into the next.
pub(super) fn wait(limit: u32, current: u64, previous: u64, elapsed: u64) -> Duration {
    let (w, l, e) = (WINDOW_MS as f64, f64::from(limit), elapsed as f64);
    let (cur, prev) = (current as f64, previous as f64);
    let at = if cur + 1.0 <= l && prev > 0.0 {
        w * (1.0 - (l - cur - 1.0) / prev)
    } else {
        let next = if cur > 0.0 {
            (w * (1.0 - (l - 1.0) / cur)).max(0.0)
        } else {
            0.0
        };
        w + next
    };
    Duration::from_millis((at - e).ceil().max(1.0) as u64)
}

/// First gives back a lease's unspent requests (taken off the window they were counted in,
/// if its counter is still there); then reads each limit's two windows and, when every one has
/// room, counts up to `want` requests in each request limit (as many as every one has room
/// for, at least one; token limits are only read: tokens are added once an answer ends) and
/// answers how many; else which limit (1-based) is full and its counts. KEYS: current and
/// previous window of each limit; ARGV: ms into the window, window ms, want, requests to give
/// back, their window ('c' current, 'p' previous, '' none), each limit, then each limit's kind
/// ('t': tokens, 'r': requests).
const SCRIPT: &str = r"
local e = tonumber(ARGV[1])
local w = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local back = tonumber(ARGV[4])
local n = #KEYS / 2
if back > 0 and ARGV[5] ~= '' then
  local at = ARGV[5] == 'c' and 1 or 0
  for i = 1, n do
    local k = KEYS[2 * i - at]
    if ARGV[5 + n + i] ~= 't' and redis.call('EXISTS', k) == 1 then
      if tonumber(redis.call('DECRBY', k, back)) < 0 then
        redis.call('SET', k, 0, 'KEEPTTL')
      end
    end
  end
end
for i = 1, n do
  local cur = tonumber(redis.call('GET', KEYS[2 * i - 1]) or '0')
  local prev = tonumber(redis.call('GET', KEYS[2 * i]) or '0')
  local used = prev * (w - e) / w + cur
  local limit = tonumber(ARGV[5 + i])
  local tokens = ARGV[5 + n + i] == 't'
  if (tokens and used >= limit) or (not tokens and used + 1 > limit) then
    return {i, cur, prev, 0}
  end
  if not tokens then
    want = math.min(want, math.floor(limit - used))
  end
end
for i = 1, n do
  if ARGV[5 + n + i] ~= 't' then
    redis.call('INCRBY', KEYS[2 * i - 1], want)
    redis.call('PEXPIRE', KEYS[2 * i - 1], 2 * w + 1000)
  end
end
return {0, 0, 0, want}
";

/// The store's Redis for the limit scripts.
pub(super) struct Remote {
    link: std::sync::Arc<super::conn::Link>,
    timeout: Duration,
    pub(super) instances: u32,
    lease_time: Duration,
    script: Script,
    pub(super) add: Script,
}

impl Remote {
    fn new(s: &StoreConfig) -> Remote {
        let link = std::sync::Arc::new(super::conn::Link::new(s));
        // Connect now, so the first limited request does not wait for it.
        if tokio::runtime::Handle::try_current().is_ok() {
            let early = link.clone();
            tokio::spawn(async move { early.get().await });
        }
        Remote {
            link,
            timeout: s.settings.command_timeout,
            instances: s.settings.instances,
            lease_time: s.settings.lease_time,
            script: Script::new(SCRIPT),
            add: Script::new(super::tokens::ADD),
        }
    }

    /// A connection, and whether it is to a Redis Cluster.
    pub(super) async fn conn(&self) -> Option<(Conn, bool)> {
        let conn = self.link.get().await?;
        let cluster = matches!(conn, Conn::Cluster(_));
        Some((conn, cluster))
    }

    /// Run one script call within `store.command_timeout`; `None` (logged) when Redis failed
    /// or was too slow, so the caller counts here.
    pub(super) async fn run<T: FromRedisValue>(
        &self,
        conn: &mut Conn,
        call: &ScriptInvocation<'_>,
    ) -> Option<T> {
        let run = async {
            match conn {
                Conn::Single(c) => call.invoke_async::<T>(c).await,
                Conn::Cluster(c) => call.invoke_async::<T>(c).await,
            }
        };
        match tokio::time::timeout(self.timeout, run).await {
            Ok(Ok(answer)) => Some(answer),
            Ok(Err(e)) => {
                tracing::warn!(error = ?e.kind(), "client limits: Redis failed; counting here");
                self.link.reset().await;
                None
            }
            Err(_) => {
                tracing::warn!(
                    "client limits: Redis slower than store.command_timeout; counting here"
                );
                None
            }
        }
    }

    /// Whether limits are leased (`store.lease_time` above zero).
    pub(super) fn leases(&self) -> bool {
        !self.lease_time.is_zero()
    }

    /// The script's answer (`Some(None)`: counted, and with leases the rest of what it counted
    /// held for this instance), or `None` when Redis did not answer in time.
    async fn count(
        &self,
        rule: &Rule,
        window: u64,
        elapsed: u64,
    ) -> Option<Option<(usize, u64, u64)>> {
        let (want, back) = if self.leases() {
            let waiting = rule.waiting.load(Ordering::Relaxed);
            rule.lease().ask(rule.cap, waiting)
        } else {
            (1, None)
        };
        let asked = Instant::now();
        let answer = self.call(&rule.checks, window, elapsed, want, back).await;
        match answer {
            None => {
                rule.lease().keep_back(back);
                None
            }
            Some((0, _, _, granted)) => {
                if self.leases() {
                    rule.lease().took(granted, window, asked + self.lease_time);
                }
                Some(None)
            }
            Some((i, cur, prev, _)) => Some(Some((i - 1, cur, prev))),
        }
    }

    async fn call(
        &self,
        checks: &[Check],
        window: u64,
        elapsed: u64,
        want: u32,
        back: Option<(u64, u32)>,
    ) -> Option<(usize, u64, u64, u32)> {
        let (mut conn, _) = self.conn().await?;
        let mut call = self.script.prepare_invoke();
        for c in checks {
            call.key(format!("{}:{window}", c.name)).key(format!(
                "{}:{}",
                c.name,
                window.saturating_sub(1)
            ));
        }
        // Given back into the window it was counted in, while a call can still reach it.
        let (back, at) = match back {
            Some((w, n)) if w == window => (n, "c"),
            Some((w, n)) if w + 1 == window => (n, "p"),
            _ => (0, ""),
        };
        call.arg(elapsed).arg(WINDOW_MS).arg(want).arg(back).arg(at);
        for c in checks {
            call.arg(c.limit);
        }
        for c in checks {
            call.arg(if c.tokens { "t" } else { "r" });
        }
        self.run(&mut conn, &call).await
    }
}

/// Move `counter` to `window` and add `n` to it; its counts after.
pub(super) fn add_to(counter: &mut Counter, window: u64, n: u64) -> (u64, u64) {
    roll(counter, window);
    counter.current = counter.current.saturating_add(n);
    (counter.current, counter.previous)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_minute_slides_and_the_wait_is_when_one_more_fits() {
        // 10 a minute; 14 in the last window, none yet in this one, a quarter into it.
        assert!(over(10, 0, 14, 15_000, false));
        // 10.5 of the 14 still count; one more fits once 9 or fewer do, 21.43 s in.
        assert_eq!(wait(10, 0, 14, 15_000), Duration::from_millis(6_429));
        assert!(!over(10, 0, 14, 21_429, false));
        assert!(!over(10, 0, 14, 60_000 - 6_000, false));
        // A full current window waits for the next one and its share to slide.
        assert!(over(10, 10, 0, 1_000, false));
        // Tokens: refused once they reached the limit, not before.
        assert!(!over(100, 99, 0, 1_000, true));
        assert!(over(100, 100, 0, 1_000, true));
        assert!(over(100, 50, 100, 30_000, true));
        assert!(!over(100, 49, 100, 30_000, true));
        assert_eq!(
            wait(10, 10, 0, 1_000),
            Duration::from_millis(59_000 + 6_000)
        );
        let mut c = Counter {
            window: 5,
            current: 3,
            previous: 9,
        };
        roll(&mut c, 6);
        assert_eq!((c.current, c.previous), (0, 3));
        roll(&mut c, 9);
        assert_eq!((c.current, c.previous), (0, 0));
    }
}
