//! The token side of the limits (`tpm`): once an answer has ended, its tokens (read by
//! [`crate::usage`]) are added to its client's and tenant's token counters and to its key's; a
//! key whose tokens reached its `tpm` is then marked cooling in its pool, as a 429 marks it (so,
//! on a shared store, every instance skips it) until enough of its tokens have slid out of the
//! minute. A WebSocket session's tokens are added message by message as the provider reports
//! them ([`Count`], fed by `crate::websocket`). With no store they are added where the answer
//! ends. On a store they are gathered and added by one task every [`FLUSH_EVERY`], all answers'
//! in one script call, so Redis sees one call per instance per tenth of a second, not one per
//! answer. Nothing of this runs, and nothing is allocated, for a request no `tpm` applies to.

use super::limits::{add_to, now, over, wait, Limits, NameHasher, Remote, WINDOW_MS};
use crate::config::Config;
use crate::routes::Provider;
use crate::usage::{Format, Meter};
use http::HeaderMap;
use keyrelay_pool::Mark;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

/// How often gathered tokens are added in Redis: how late, at most, another instance sees them
/// (they are already late by the length of the answer they came with).
pub(super) const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// The token counters of a request's client and tenant, for those that have a `tpm`.
#[derive(Debug)]
pub struct Tally {
    pub(super) counters: Vec<Arc<str>>,
}

/// Tokens gathered for Redis since the last call: how many to add to each counter, the key
/// behind each key counter among them (to mark one that reached its `tpm`), and the sum.
#[derive(Default)]
pub(super) struct Pending {
    counters: HashMap<Arc<str>, u64, BuildHasherDefault<NameHasher>>,
    keys: Vec<KeyUse>,
    tokens: u64,
}

impl Pending {
    /// Each counter with the tokens to add to it.
    fn items(&self) -> Vec<(&str, u64)> {
        self.counters
            .iter()
            .map(|(n, &t)| (n.as_ref(), t))
            .collect()
    }
}

/// The key an answer came from, when it has a `tpm`: its pool, place there, limit and counter.
#[derive(Clone)]
struct KeyUse {
    provider: Arc<Provider>,
    index: usize,
    limit: u32,
    counter: Arc<str>,
}

/// A pool's keys' token counter names, by key fingerprint: each made once, on the key's first
/// metered answer (keys registered at run time included), not formatted for every answer.
#[derive(Default)]
pub struct KeyCounters(Mutex<HashMap<String, Arc<str>, BuildHasherDefault<NameHasher>>>);

impl KeyCounters {
    fn name(&self, pool: &str, fingerprint: &str) -> Arc<str> {
        let mut names = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(name) = names.get(fingerprint) {
            return name.clone();
        }
        let name: Arc<str> = format!("keyrelay:{{tpm.{pool}}}:key:{fingerprint}").into();
        names.insert(fingerprint.to_owned(), name.clone());
        name
    }
}

/// Adds each counter's tokens to its current window and answers every counter's current and
/// previous window after it. KEYS: current and previous window of each counter; ARGV: window
/// ms, then each counter's tokens.
pub(super) const ADD: &str = r"
local w = tonumber(ARGV[1])
local out = {}
for i = 1, #KEYS / 2 do
  out[2 * i - 1] = redis.call('INCRBY', KEYS[2 * i - 1], tonumber(ARGV[1 + i]))
  redis.call('PEXPIRE', KEYS[2 * i - 1], 2 * w + 1000)
  out[2 * i] = tonumber(redis.call('GET', KEYS[2 * i]) or '0')
end
return out
";

/// Whether a key may have a `tpm`: one in the file has, or keys are registered at run time.
pub(super) fn keys_limited(config: &Config) -> bool {
    let tenants = config
        .tenants
        .iter()
        .flat_map(|t| t.pools.iter().flat_map(|p| &p.keys));
    config.registry.is_some()
        || config
            .providers
            .iter()
            .flat_map(|p| &p.keys)
            .chain(tenants)
            .any(|k| k.tpm.is_some())
}

/// Whether a request's tokens may be counted: its client or tenant has a `tpm`, or a key of
/// its pool, or of the pool it may fall back to.
pub fn may_count(tally: Option<&Tally>, provider: &Provider) -> bool {
    let keys = provider.tpm_keys || provider.fallback.as_ref().is_some_and(|f| f.tpm_keys);
    tally.is_some() || keys
}

/// Ask for an uncompressed answer where its tokens may be counted: the usage report is read as
/// the answer passes, and a compressed one could not be.
pub fn uncompressed(tally: Option<&Tally>, provider: &Provider, headers: &mut HeaderMap) {
    if may_count(tally, provider) {
        headers.remove(http::header::ACCEPT_ENCODING);
    }
}

/// Where an answer's tokens go (a WebSocket session's, each message's that reports usage): the
/// request's client and tenant counters, and its key's when the key has a `tpm`.
pub struct Count {
    limits: Arc<Limits>,
    tally: Option<Box<Tally>>,
    key: Option<KeyUse>,
}

impl Count {
    /// Add `tokens`: gathered for the next call on a store, else counted here at once (a task
    /// only to mark a key that reached its `tpm`).
    pub fn add(&self, tokens: u64) {
        if tokens == 0 {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let limits = &self.limits;
        let key = self.key.clone();
        if limits.redis.is_some() {
            limits.gather(self.tally.as_deref(), key, tokens);
            limits.flusher.call_once(|| {
                rt.spawn(flush_every(Arc::downgrade(limits)));
            });
            return;
        }
        let names = names(self.tally.as_deref(), key.as_ref());
        let (window, elapsed) = now();
        let counts = limits.add_here(names.iter().map(|&n| (n, tokens)), window);
        match key.and_then(|k| reached(k, counts.last(), 1, elapsed)) {
            Some((key, mark)) => {
                let limits = limits.clone();
                rt.spawn(async move {
                    key.provider.pool.mark(key.index, mark).await;
                    limits.counted.fetch_add(tokens, Ordering::Relaxed);
                });
            }
            None => {
                limits.counted.fetch_add(tokens, Ordering::Relaxed);
            }
        }
    }
}

/// Whether an answer can be read for its usage: a success, not compressed.
pub fn readable(parts: &http::response::Parts) -> bool {
    let encoded = parts
        .headers
        .get(http::header::CONTENT_ENCODING)
        .is_some_and(|v| v != "identity");
    parts.status.is_success() && !encoded
}

impl Limits {
    /// The meter of an answer from `provider`'s key `index` to a request with `tally`; `None`
    /// (no scanning, no allocation) when neither has a `tpm`. It reads JSON until the body says
    /// it is an event stream.
    pub fn meter(
        self: &Arc<Self>,
        tally: Option<Box<Tally>>,
        provider: &Arc<Provider>,
        index: usize,
    ) -> Option<Box<Meter>> {
        let count = self.count(tally, provider, index)?;
        Some(Box::new(Meter::new(
            Format::Json,
            Box::new(move |tokens| count.add(tokens)),
        )))
    }

    /// Where the tokens of what `provider`'s key `index` answers a request with `tally` go;
    /// `None` when neither has a `tpm`.
    pub fn count(
        self: &Arc<Self>,
        tally: Option<Box<Tally>>,
        provider: &Arc<Provider>,
        index: usize,
    ) -> Option<Count> {
        let key = provider.pool.spec().keys.get(index);
        let limit = key.and_then(|k| k.tpm);
        if tally.is_none() && limit.is_none() {
            return None;
        }
        let key = key.zip(limit).map(|(k, limit)| KeyUse {
            provider: provider.clone(),
            index,
            limit,
            counter: provider.tpm_counters.name(&provider.name, &k.fingerprint),
        });
        Some(Count {
            limits: self.clone(),
            tally,
            key,
        })
    }

    /// Gather an answer's tokens for the next call to Redis.
    fn gather(&self, tally: Option<&Tally>, key: Option<KeyUse>, tokens: u64) {
        let mut p = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let p = &mut *p;
        for name in tally.iter().flat_map(|t| &t.counters) {
            *p.counters.entry(name.clone()).or_default() += tokens;
        }
        if let Some(key) = key {
            match p.counters.get_mut(&key.counter) {
                Some(n) => *n += tokens,
                None => {
                    p.counters.insert(key.counter.clone(), tokens);
                    p.keys.push(key);
                }
            }
        }
        p.tokens += tokens;
    }

    /// Add the gathered tokens in Redis (here when Redis failed), in one call; mark each key
    /// that reached its `tpm`.
    pub(super) async fn flush(&self) {
        let mut batch =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        if batch.tokens == 0 {
            return;
        }
        let keys = std::mem::take(&mut batch.keys);
        let items = batch.items();
        let (window, elapsed) = now();
        let (counts, instances) = match &self.redis {
            Some(remote) => match remote.add_tokens(&items, window).await {
                Some(counts) => (counts, 1),
                None => (
                    self.add_here(items.iter().copied(), window),
                    remote.instances,
                ),
            },
            None => (self.add_here(items.iter().copied(), window), 1),
        };
        for key in keys {
            let at = items.iter().position(|(n, _)| *n == &*key.counter);
            let counts = at.and_then(|i| counts.get(i));
            if let Some((key, mark)) = reached(key, counts, instances, elapsed) {
                key.provider.pool.mark(key.index, mark).await;
            }
        }
        // Last, so that once it shows, the keys are marked too.
        self.counted.fetch_add(batch.tokens, Ordering::Relaxed);
    }

    /// Add in this process (no store, or the store failed): each counter's counts after.
    fn add_here<'a>(
        &self,
        items: impl Iterator<Item = (&'a str, u64)>,
        window: u64,
    ) -> Vec<(u64, u64)> {
        let mut counters = self.local.lock().unwrap_or_else(PoisonError::into_inner);
        items
            // Made on its first tokens; found, not made (no allocation), after.
            .map(|(n, tokens)| match counters.get_mut(n) {
                Some(counter) => add_to(counter, window, tokens),
                None => add_to(counters.entry(Arc::from(n)).or_default(), window, tokens),
            })
            .collect()
    }
}

/// Add `limits`' gathered tokens every [`FLUSH_EVERY`] while it is in use; what it gathered
/// since the last call is added as it goes (see `Drop for Limits`).
async fn flush_every(limits: Weak<Limits>) {
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(limits) = limits.upgrade() else {
            return;
        };
        limits.flush().await;
    }
}

impl Drop for Limits {
    /// A config replaced (or the process ending) still adds the tokens it gathered, in Redis.
    fn drop(&mut self) {
        let batch = std::mem::take(
            self.pending
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let (Some(remote), Ok(rt)) = (self.redis.clone(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        if batch.tokens > 0 {
            rt.spawn(async move {
                let items = batch.items();
                remote.add_tokens(&items, now().0).await;
            });
        }
    }
}

impl Remote {
    /// Add `tokens` to each counter in Redis: one call (on a Cluster, one per hash tag among
    /// them); each counter's counts after, or `None` when Redis failed.
    async fn add_tokens(&self, items: &[(&str, u64)], window: u64) -> Option<Vec<(u64, u64)>> {
        let (mut conn, cluster) = self.conn().await?;
        let names: Vec<&str> = items.iter().map(|(n, _)| *n).collect();
        let mut out = vec![(0, 0); names.len()];
        for group in groups(&names, cluster) {
            let mut call = self.add.prepare_invoke();
            for &i in &group {
                let previous = window.saturating_sub(1);
                call.key(format!("{}:{window}", names[i]))
                    .key(format!("{}:{previous}", names[i]));
            }
            call.arg(WINDOW_MS);
            for &i in &group {
                call.arg(items[i].1);
            }
            let counts: Vec<u64> = self.run(&mut conn, &call).await?;
            for (j, &i) in group.iter().enumerate() {
                let at = |k: usize| counts.get(k).copied().unwrap_or(0);
                out[i] = (at(2 * j), at(2 * j + 1));
            }
        }
        Some(out)
    }
}

/// The counters an answer's tokens go to: its client's and tenant's, then its key's.
fn names<'a>(tally: Option<&'a Tally>, key: Option<&'a KeyUse>) -> Vec<&'a str> {
    let mut names: Vec<&str> = tally
        .iter()
        .flat_map(|t| t.counters.iter().map(AsRef::as_ref))
        .collect();
    if let Some(k) = key {
        names.push(&k.counter);
    }
    names
}

/// Whether `key`, its counter now at `counts`, reached its `tpm` (each of `instances` allowing
/// its share): then the mark to cool it with, counted in its metrics.
fn reached(
    key: KeyUse,
    counts: Option<&(u64, u64)>,
    instances: u32,
    elapsed: u64,
) -> Option<(KeyUse, Mark)> {
    let &(cur, prev) = counts?;
    let limit = (key.limit / instances.max(1)).max(1);
    if !over(limit, cur, prev, elapsed, true) {
        return None;
    }
    let period = wait(limit, cur, prev, elapsed);
    tracing::debug!(pool = %key.provider.name, index = key.index, ?period, "a key reached its tpm; cooling");
    let mark = Mark::Cool {
        period,
        reason: "tpm",
    };
    key.provider.metrics.marked(&mark);
    Some((key, mark))
}

/// Which counters one script call may touch together: all of them on one Redis; on a Cluster,
/// those of one hash tag (a tenant's clients' counters and its pools' keys' have different ones).
fn groups(names: &[&str], cluster: bool) -> Vec<Vec<usize>> {
    if !cluster {
        return vec![(0..names.len()).collect()];
    }
    let tag = |n: &str| {
        n.split_once('{')
            .and_then(|(_, r)| r.split_once('}'))
            .map(|(t, _)| t.to_owned())
    };
    let mut out: Vec<(Option<String>, Vec<usize>)> = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let t = tag(n);
        match out.iter_mut().find(|(o, _)| *o == t) {
            Some((_, g)) => g.push(i),
            None => out.push((t, vec![i])),
        }
    }
    out.into_iter().map(|(_, g)| g).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_call_touches_one_hash_tag() {
        let names = [
            "keyrelay:{limit.t0}:client-tpm:a",
            "keyrelay:{limit.t0}:tenant-tpm:t0",
            "keyrelay:{tpm.t0.openai}:key:fp",
        ];
        assert_eq!(groups(&names, false), [vec![0, 1, 2]]);
        assert_eq!(groups(&names, true), [vec![0, 1], vec![2]]);
    }
}
