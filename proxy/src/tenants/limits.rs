//! Per-client and per-tenant request limits (`rpm`): a sliding minute, counted over every
//! instance in Redis when a store is configured (one script call, one round trip, only for a
//! client that has a limit), else in this process.
//!
//! The minute slides as two fixed windows weighted by how far the current one has run (the
//! previous window's count counts for the part of it still inside the last 60 s), so instances
//! that agree on the wall clock agree on the windows with no coordination. A request is counted
//! against both its client's and its tenant's limit only when it is under both. Should Redis
//! fail or be slower than `store.command_timeout`, the limit is counted here, each instance
//! allowing `1/store.instances` of it, as the pools do.

use super::conn::Conn;
use crate::config::{Config, StoreConfig};
use crate::error::ProxyError;
use deadpool_redis::redis::Script;
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const WINDOW_MS: u64 = 60_000;

/// What limits one client's requests.
#[derive(Clone, Debug)]
struct Rule {
    client: Option<u32>,
    /// The tenant's name and limit.
    tenant: Option<(String, u32)>,
    /// The Cluster hash tag of its counters: the tenant's name, or the client's for a client
    /// of no tenant.
    tag: String,
}

/// One limit to check: its counter's name, its limit, and what it is.
struct Check {
    name: String,
    limit: u32,
    scope: &'static str,
}

/// Every configured client and tenant limit, and where they are counted.
pub struct Limits {
    rules: HashMap<String, Rule>,
    local: Mutex<HashMap<String, Counter>>,
    redis: Option<Remote>,
}

/// A counter's two windows, as kept in this process.
#[derive(Clone, Copy, Default)]
struct Counter {
    window: u64,
    current: u64,
    previous: u64,
}

impl Limits {
    pub fn new(config: &Config) -> Limits {
        let mut rules = HashMap::new();
        for c in config.clients.iter().filter(|c| c.rpm.is_some()) {
            let rule = Rule {
                client: c.rpm,
                tenant: None,
                tag: c.name.clone(),
            };
            rules.insert(c.name.clone(), rule);
        }
        for t in &config.tenants {
            for c in &t.clients {
                if c.rpm.is_some() || t.rpm.is_some() {
                    let tenant = t.rpm.map(|r| (t.name.clone(), r));
                    let rule = Rule {
                        client: c.rpm,
                        tenant,
                        tag: t.name.clone(),
                    };
                    rules.insert(c.name.clone(), rule);
                }
            }
        }
        let redis = match (&config.store, rules.is_empty()) {
            (Some(s), false) => Some(Remote::new(s)),
            _ => None,
        };
        Limits {
            rules,
            local: Mutex::default(),
            redis,
        }
    }

    /// Count one request of `client`, or refuse it (429 naming the limit, with the wait until
    /// one more would fit). Costs nothing for a client with no limit.
    pub async fn check(&self, client: &str) -> Result<(), ProxyError> {
        if self.rules.is_empty() {
            return Ok(());
        }
        let Some(rule) = self.rules.get(client) else {
            return Ok(());
        };
        let checks = checks(client, rule);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        let (window, elapsed) = (now / WINDOW_MS, now % WINDOW_MS);
        let refused = match &self.redis {
            // Boxed: the Redis call's future is large, and only limited clients need it; every
            // request's future would otherwise carry its size (and copy it).
            Some(remote) => match Box::pin(remote.count(&checks, window, elapsed)).await {
                Some(answer) => answer,
                None => self.count_here(&checks, window, elapsed, remote.instances),
            },
            None => self.count_here(&checks, window, elapsed, 1),
        };
        match refused {
            None => Ok(()),
            Some((i, current, previous)) => Err(ProxyError::ClientLimited {
                scope: checks[i].scope,
                retry_after: wait(checks[i].limit, current, previous, elapsed),
            }),
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
        let mut seen = Vec::with_capacity(checks.len());
        for (i, c) in checks.iter().enumerate() {
            let counter = counters.entry(c.name.clone()).or_default();
            roll(counter, window);
            let limit = (c.limit / instances.max(1)).max(1);
            if over(limit, counter.current, counter.previous, elapsed) {
                return Some((i, counter.current, counter.previous));
            }
            seen.push(c.name.clone());
        }
        for name in seen {
            if let Some(c) = counters.get_mut(&name) {
                c.current += 1;
            }
        }
        None
    }
}

/// The counters of `client`'s limits. Both share a Cluster hash tag (the tenant's, or the
/// client's for a client of no tenant), so one script reads and writes them.
fn checks(client: &str, rule: &Rule) -> Vec<Check> {
    let tag = &rule.tag;
    let mut out = Vec::with_capacity(2);
    if let Some(limit) = rule.client {
        out.push(Check {
            name: format!("keyrelay:{{limit.{tag}}}:client:{client}"),
            limit,
            scope: "client",
        });
    }
    if let Some((tenant, limit)) = &rule.tenant {
        out.push(Check {
            name: format!("keyrelay:{{limit.{tag}}}:tenant:{tenant}"),
            limit: *limit,
            scope: "tenant",
        });
    }
    out
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

/// Whether one more request would pass `limit`.
fn over(limit: u32, current: u64, previous: u64, elapsed: u64) -> bool {
    weighted(current, previous, elapsed) + 1.0 > f64::from(limit)
}

/// How long until one more request fits: while the previous window's share slides out of this
/// one, or, when the current window alone is full, into the next.
fn wait(limit: u32, current: u64, previous: u64, elapsed: u64) -> Duration {
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

/// Reads each limit's two windows and, when every one has room, counts the request in each;
/// else answers which limit (1-based) is full and its counts. KEYS: current and previous
/// window of each limit; ARGV: ms into the window, window ms, each limit.
const SCRIPT: &str = r"
local e = tonumber(ARGV[1])
local w = tonumber(ARGV[2])
local n = #KEYS / 2
for i = 1, n do
  local cur = tonumber(redis.call('GET', KEYS[2 * i - 1]) or '0')
  local prev = tonumber(redis.call('GET', KEYS[2 * i]) or '0')
  if prev * (w - e) / w + cur + 1 > tonumber(ARGV[2 + i]) then
    return {i, cur, prev}
  end
end
for i = 1, n do
  redis.call('INCR', KEYS[2 * i - 1])
  redis.call('PEXPIRE', KEYS[2 * i - 1], 2 * w + 1000)
end
return {0, 0, 0}
";

/// The store's Redis for the limit script.
struct Remote {
    link: std::sync::Arc<super::conn::Link>,
    timeout: Duration,
    instances: u32,
    script: Script,
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
            script: Script::new(SCRIPT),
        }
    }

    /// The script's answer (`Some(None)`: counted), or `None` when Redis did not answer in
    /// time.
    async fn count(
        &self,
        checks: &[Check],
        window: u64,
        elapsed: u64,
    ) -> Option<Option<(usize, u64, u64)>> {
        let mut conn = self.link.get().await?;
        let mut call = self.script.prepare_invoke();
        for c in checks {
            call.key(format!("{}:{window}", c.name)).key(format!(
                "{}:{}",
                c.name,
                window.saturating_sub(1)
            ));
        }
        call.arg(elapsed).arg(WINDOW_MS);
        for c in checks {
            call.arg(c.limit);
        }
        let run = async {
            match &mut conn {
                Conn::Single(c) => call.invoke_async::<(usize, u64, u64)>(c).await,
                Conn::Cluster(c) => call.invoke_async::<(usize, u64, u64)>(c).await,
            }
        };
        match tokio::time::timeout(self.timeout, run).await {
            Ok(Ok((0, _, _))) => Some(None),
            Ok(Ok((i, cur, prev))) => Some(Some((i - 1, cur, prev))),
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_minute_slides_and_the_wait_is_when_one_more_fits() {
        // 10 a minute; 14 in the last window, none yet in this one, a quarter into it.
        assert!(over(10, 0, 14, 15_000));
        // 10.5 of the 14 still count; one more fits once 9 or fewer do, 21.43 s in.
        assert_eq!(wait(10, 0, 14, 15_000), Duration::from_millis(6_429));
        assert!(!over(10, 0, 14, 21_429));
        assert!(!over(10, 0, 14, 60_000 - 6_000));
        // A full current window waits for the next one and its share to slide.
        assert!(over(10, 10, 0, 1_000));
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
