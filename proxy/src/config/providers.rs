//! The `[[providers]]` list: each upstream's address, auth style, route, strategy and limits
//! (its keys are checked in `keys.rs`), and no two sharing a name or a route.

use super::problems::Problems;
use super::raw::RawProvider;
use super::secrets::Env;
use super::{defaults, AuthStyle, ProviderConfig};
use keyrelay_pool::{Fingerprinter, PoolSettings, Strategy};
use std::collections::HashSet;

pub(super) fn providers(
    raw: &[RawProvider],
    fingerprinter: &Fingerprinter,
    env: &dyn Env,
    p: &mut Problems,
) -> Vec<ProviderConfig> {
    if raw.is_empty() {
        p.add(
            "providers",
            "no providers configured; add at least one [[providers]]",
        );
    }
    let mut out = Vec::new();
    let mut names = HashSet::new();
    let mut routes = HashSet::new();
    for (i, rp) in raw.iter().enumerate() {
        let path = format!("providers[{i}]");
        let Some(pc) = provider(rp, &path, fingerprinter, env, p) else {
            continue;
        };
        if !names.insert(pc.name.clone()) {
            let message = format!("duplicate provider name \"{}\"", pc.name);
            p.add(format!("{path}.name"), message);
        }
        if !routes.insert(pc.route.clone()) {
            let message = format!("duplicate route \"{}\"", pc.route);
            p.add(format!("{path}.route"), message);
        }
        out.push(pc);
    }
    out
}

/// One provider; `None` when it has no usable name (nothing else about it can be named).
fn provider(
    rp: &RawProvider,
    path: &str,
    fingerprinter: &Fingerprinter,
    env: &dyn Env,
    p: &mut Problems,
) -> Option<ProviderConfig> {
    let name = name(rp.name.as_deref(), path, p)?;
    let base_url = base_url(rp, path, p);
    let auth = auth(rp.auth.as_deref(), path, p);
    let route = route(rp.route.as_deref(), &name, path, p);
    let strategy = strategy(rp.strategy.as_deref(), path, p);
    let at = |field: &str| format!("{path}.{field}");
    let rpm = p.positive(&at("rpm"), rp.rpm, defaults::RPM);
    let weight = p.positive(&at("weight"), rp.weight, defaults::WEIGHT);
    let tpm = rp.tpm.map(|v| p.positive(&at("tpm"), Some(v), 1));
    let settings = pool_settings(rp, path, p);
    let max_attempts = p.positive(&at("max_attempts"), rp.max_attempts, defaults::MAX_ATTEMPTS);
    let max_wait = p.duration(&at("max_wait"), rp.max_wait.as_deref(), defaults::MAX_WAIT);
    let deadline = p.period(&at("deadline"), rp.deadline.as_deref(), defaults::DEADLINE);
    let retry_after_send = rp.retry_after_send.unwrap_or(defaults::RETRY_AFTER_SEND);
    let keys = super::keys::Keys {
        rpm,
        tpm,
        weight,
        fingerprinter,
        env,
    }
    .list(rp.keys.as_ref(), path, p);
    Some(ProviderConfig {
        name,
        base_url,
        auth,
        route,
        strategy,
        settings,
        max_attempts,
        max_wait,
        deadline,
        retry_after_send,
        allow_link_local_base_url: allow_link_local(rp),
        websocket: rp.websocket.unwrap_or(defaults::WEBSOCKET),
        tls: super::upstream_tls::provider(rp, path, env, p),
        keys,
    })
}

fn name(value: Option<&str>, path: &str, p: &mut Problems) -> Option<String> {
    let path = format!("{path}.name");
    match value.map(str::trim) {
        Some(n) if valid_name(n) => Some(n.to_owned()),
        Some(n) => {
            p.add(path, format!("\"{n}\" must be letters, digits, '-' or '_'"));
            None
        }
        None => {
            p.add(path, "missing; every provider needs a name");
            None
        }
    }
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn base_url(rp: &RawProvider, path: &str, p: &mut Problems) -> String {
    let path = format!("{path}.base_url");
    let Some(u) = rp.base_url.as_deref() else {
        p.add(path, "missing; e.g. \"https://api.openai.com/v1\"");
        return String::new();
    };
    let allow_link_local = allow_link_local(rp);
    super::base_url::check(u, allow_link_local).unwrap_or_else(|e| {
        p.add(path, e);
        String::new()
    })
}

fn allow_link_local(rp: &RawProvider) -> bool {
    rp.allow_link_local_base_url
        .unwrap_or(defaults::ALLOW_LINK_LOCAL_BASE_URL)
}

fn auth(value: Option<&str>, path: &str, p: &mut Problems) -> AuthStyle {
    let Some(text) = value else {
        return defaults::AUTH;
    };
    AuthStyle::parse(text).unwrap_or_else(|| {
        p.add(
            format!("{path}.auth"),
            format!("\"{text}\" is not one of bearer, x-api-key, x-goog-api-key, api-key"),
        );
        defaults::AUTH
    })
}

fn route(value: Option<&str>, name: &str, path: &str, p: &mut Problems) -> String {
    let route = value.map_or_else(|| defaults::route(name), str::to_owned);
    check_route(&route).unwrap_or_else(|e| {
        p.add(format!("{path}.route"), e);
        String::new()
    })
}

fn check_route(r: &str) -> Result<String, String> {
    if !r.starts_with('/') {
        return Err(format!("\"{r}\" must start with '/'"));
    }
    if r.contains(['?', '#', ' ']) {
        return Err(format!("\"{r}\" must be a plain path prefix"));
    }
    let trimmed = r.trim_end_matches('/');
    Ok(if trimmed.is_empty() {
        "/".to_owned()
    } else {
        trimmed.to_owned()
    })
}

fn strategy(value: Option<&str>, path: &str, p: &mut Problems) -> Strategy {
    let Some(text) = value else {
        return defaults::STRATEGY;
    };
    Strategy::parse(text).unwrap_or_else(|| {
        p.add(
            format!("{path}.strategy"),
            format!("\"{text}\" is not one of least-loaded, round-robin, weighted"),
        );
        defaults::STRATEGY
    })
}

/// Cooldown, quarantine and hint cap; each absent one is the pool's default.
fn pool_settings(rp: &RawProvider, path: &str, p: &mut Problems) -> PoolSettings {
    let mut s = defaults::pool();
    let mut field = |field: &str, value: &Option<String>, default| {
        p.duration(&format!("{path}.{field}"), value.as_deref(), default)
    };
    s.cooldown = field("cooldown", &rp.cooldown, s.cooldown);
    s.quarantine = field("quarantine", &rp.quarantine, s.quarantine);
    s.max_cooldown = field("max_cooldown", &rp.max_cooldown, s.max_cooldown);
    s.refusal_memory = field("refusal_memory", &rp.refusal_memory, s.refusal_memory);
    let percent = (s.budget.ratio * 100.0).round() as u32;
    let at = |field: &str| format!("{path}.{field}");
    let ratio = p.whole(
        &at("retry_budget_percent"),
        rp.retry_budget_percent,
        percent,
        1000,
    );
    s.budget.ratio = f64::from(ratio) / 100.0;
    let floor = s.budget.min_per_second;
    let floor = p.whole(
        &at("retry_budget_min_per_second"),
        rp.retry_budget_min_per_second,
        floor,
        100_000,
    );
    s.budget.min_per_second = floor;
    s
}
