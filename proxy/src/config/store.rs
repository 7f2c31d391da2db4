//! The `[store]` section: Redis or Redis Cluster for shared pool state, and its timeouts.

use super::problems::Problems;
use super::raw::RawStore;
use super::secrets::Env;
use super::{defaults, StoreConfig};
use keyrelay_pool::{RedisSettings, RedisTarget};

pub(super) fn store(raw: &RawStore, env: &dyn Env, p: &mut Problems) -> Option<StoreConfig> {
    let settings = settings(raw, p);
    let password = raw
        .password
        .as_deref()
        .and_then(|r| p.secret("store.password", r, env));
    let password = password.as_ref().map(|s| s.expose());
    let (target, display) = target(raw, password, env, p)?;
    Some(StoreConfig {
        target,
        settings,
        display,
    })
}

/// Timeouts and instance count; each absent one is the Redis store's default.
fn settings(raw: &RawStore, p: &mut Problems) -> RedisSettings {
    let mut s = defaults::redis();
    let mut field = |field: &str, value: &Option<String>, default| {
        p.duration(&format!("store.{field}"), value.as_deref(), default)
    };
    s.connect_timeout = field("connect_timeout", &raw.connect_timeout, s.connect_timeout);
    s.wait_timeout = field("wait_timeout", &raw.wait_timeout, s.wait_timeout);
    s.command_timeout = field("command_timeout", &raw.command_timeout, s.command_timeout);
    s.probe_interval = field("probe_interval", &raw.probe_interval, s.probe_interval);
    s.probe_max_interval = field(
        "probe_max_interval",
        &raw.probe_max_interval,
        s.probe_max_interval,
    );
    s.lease_time = field("lease_time", &raw.lease_time, s.lease_time);
    s.instances = p.positive("store.instances", raw.instances, s.instances);
    s.lease_max = p.positive("store.lease_max", raw.lease_max, s.lease_max);
    if s.lease_time > std::time::Duration::from_secs(1) {
        p.add(
            "store.lease_time",
            "must be at most 1s: a lease ends with the second its requests are counted in",
        );
    }
    for (path, v) in [
        ("store.command_timeout", s.command_timeout),
        ("store.connect_timeout", s.connect_timeout),
    ] {
        if v.is_zero() {
            p.add(path, "must be more than zero");
        }
    }
    s
}

/// One Redis or a cluster's seed nodes, with their `host:port`s for display.
fn target(
    raw: &RawStore,
    password: Option<&str>,
    env: &dyn Env,
    p: &mut Problems,
) -> Option<(RedisTarget, String)> {
    match (&raw.url, &raw.cluster) {
        (Some(_), Some(_)) => {
            p.add("store", "give either url or cluster, not both");
            None
        }
        (Some(u), None) => {
            let (url, shown) = url("store.url", u, password, env, p)?;
            Some((RedisTarget::Single(url), shown))
        }
        (None, Some(nodes)) if !nodes.is_empty() => {
            let mut urls = Vec::new();
            let mut shown = Vec::new();
            for (i, n) in nodes.iter().enumerate() {
                if let Some((u, s)) = url(&format!("store.cluster[{i}]"), n, password, env, p) {
                    urls.push(u);
                    shown.push(s);
                }
            }
            let display = format!("cluster {}", shown.join(", "));
            Some((RedisTarget::Cluster(urls), display))
        }
        _ => {
            p.add(
                "store",
                "needs url = \"redis://host:6379/0\" or cluster = [\"redis://host:7000\", ...]",
            );
            None
        }
    }
}

/// Check one Redis URL (literal, or `env:`/`file:` when it holds a password) and splice in the
/// password. Returns the URL and its `host:port` for display.
fn url(
    path: &str,
    text: &str,
    password: Option<&str>,
    env: &dyn Env,
    p: &mut Problems,
) -> Option<(String, String)> {
    let is_ref = text.starts_with("env:") || text.starts_with("file:");
    let resolved = if is_ref {
        p.secret(path, text, env)?.expose().to_owned()
    } else {
        text.to_owned()
    };
    let Some((scheme, rest)) = resolved
        .split_once("://")
        .filter(|(s, _)| *s == "redis" || *s == "rediss")
    else {
        p.add(path, "must be a redis:// or rediss:// URL");
        return None;
    };
    let (userinfo, hostpart) = match rest.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, rest),
    };
    if !is_ref && userinfo.is_some_and(|u| u.contains(':')) {
        p.add(path, "a password in the config is a literal secret; use url = \"env:REDIS_URL\" or password = \"env:REDIS_PASSWORD\"");
        return None;
    }
    let host = hostpart.split('/').next().unwrap_or_default();
    if host.is_empty() {
        p.add(path, "has no host");
        return None;
    }
    let url = match (password, userinfo) {
        (Some(pw), None) => format!("{scheme}://:{}@{rest}", encode(pw)),
        (Some(pw), Some(user)) if !user.contains(':') => {
            format!("{scheme}://{user}:{}@{hostpart}", encode(pw))
        }
        _ => resolved.clone(),
    };
    Some((url, host.to_owned()))
}

/// Percent-encode everything but RFC 3986 unreserved characters.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
