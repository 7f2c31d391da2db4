//! Turning the raw config into a [`Config`], collecting every problem with its path.

use super::duration::parse_duration;
use super::raw::{RawConfig, RawProvider};
use super::secrets::{resolve, Env};
use super::*;
use std::collections::HashSet;

/// Defaults, documented in the example `config.toml`.
pub(super) mod defaults {
    pub const LISTEN: &str = "127.0.0.1:8080";
    pub const MAX_BODY_BYTES: i64 = 10 * 1024 * 1024;
    pub const HEADER_READ_TIMEOUT: &str = "10s";
    pub const SHUTDOWN_GRACE: &str = "30s";
    pub const ADMIN_LISTEN: &str = "127.0.0.1:9091";
    pub const CONNECT_TIMEOUT: &str = "5s";
    pub const FIRST_BYTE_TIMEOUT: &str = "300s";
    pub const IDLE_TIMEOUT: &str = "120s";
    pub const RPM: i64 = 10_000;
    pub const WEIGHT: i64 = 1;
    pub const COOLDOWN: &str = "60s";
    pub const QUARANTINE: &str = "10m";
    pub const MAX_COOLDOWN: &str = "1h";
    pub const MAX_ATTEMPTS: i64 = 3;
    pub const MAX_WAIT: &str = "0s";
}

#[derive(Default)]
pub(super) struct Problems(Vec<Problem>);

impl Problems {
    pub(super) fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    pub(super) fn duration(&mut self, path: &str, value: Option<&str>, default: &str) -> Duration {
        match parse_duration(value.unwrap_or(default)) {
            Ok(d) => d,
            Err(e) => {
                self.add(path, e);
                Duration::ZERO
            }
        }
    }

    /// A positive integer that fits in u32.
    pub(super) fn positive(&mut self, path: &str, value: Option<i64>, default: i64) -> u32 {
        let v = value.unwrap_or(default);
        match u32::try_from(v) {
            Ok(n) if n > 0 => n,
            _ => {
                self.add(
                    path,
                    format!("must be a whole number from 1 to {}, got {v}", u32::MAX),
                );
                1
            }
        }
    }
}

pub(super) fn validate(
    raw: RawConfig,
    unknown: Vec<String>,
    env: &dyn Env,
) -> Result<Config, ConfigErrors> {
    let mut p = Problems::default();
    for path in unknown {
        p.add(path, "unknown field");
    }
    let mut server = server(&raw, &mut p);
    server.tls = super::tls::tls(
        raw.server.tls_cert.as_deref(),
        raw.server.tls_key.as_deref(),
        env,
        &mut p,
    );
    let upstream = UpstreamConfig {
        connect_timeout: p.duration(
            "upstream.connect_timeout",
            raw.upstream.connect_timeout.as_deref(),
            defaults::CONNECT_TIMEOUT,
        ),
        first_byte_timeout: p.duration(
            "upstream.first_byte_timeout",
            raw.upstream.first_byte_timeout.as_deref(),
            defaults::FIRST_BYTE_TIMEOUT,
        ),
        idle_timeout: p.duration(
            "upstream.idle_timeout",
            raw.upstream.idle_timeout.as_deref(),
            defaults::IDLE_TIMEOUT,
        ),
    };
    let clients = clients(&raw, env, &server, &mut p);
    let mut providers = Vec::new();
    let mut names = HashSet::new();
    let mut routes = HashSet::new();
    if raw.providers.is_empty() {
        p.add(
            "providers",
            "no providers configured; add at least one [[providers]]",
        );
    }
    for (i, rp) in raw.providers.iter().enumerate() {
        let path = format!("providers[{i}]");
        if let Some(pc) = provider(rp, &path, env, &mut p) {
            if !names.insert(pc.name.clone()) {
                p.add(
                    format!("{path}.name"),
                    format!("duplicate provider name \"{}\"", pc.name),
                );
            }
            if !routes.insert(pc.route.clone()) {
                p.add(
                    format!("{path}.route"),
                    format!("duplicate route \"{}\"", pc.route),
                );
            }
            providers.push(pc);
        }
    }
    let store = raw
        .store
        .as_ref()
        .and_then(|s| super::store::store(s, env, &mut p));
    let admin = admin(&raw, env, &mut p);
    if p.0.is_empty() {
        Ok(Config {
            server,
            upstream,
            clients,
            providers,
            store,
            admin,
        })
    } else {
        Err(ConfigErrors(p.0))
    }
}

fn server(raw: &RawConfig, p: &mut Problems) -> ServerConfig {
    let s = &raw.server;
    let listen_text = s.listen.as_deref().unwrap_or(defaults::LISTEN);
    let listen = listen_text.parse().unwrap_or_else(|_| {
        p.add(
            "server.listen",
            format!("\"{listen_text}\" is not an address like \"127.0.0.1:8080\""),
        );
        SocketAddr::from(([127, 0, 0, 1], 0))
    });
    let max_body = s.max_body_bytes.unwrap_or(defaults::MAX_BODY_BYTES);
    let max_body_bytes = usize::try_from(max_body)
        .ok()
        .filter(|n| *n > 0)
        .unwrap_or_else(|| {
            p.add(
                "server.max_body_bytes",
                format!("must be a positive size in bytes, got {max_body}"),
            );
            0
        });
    ServerConfig {
        listen,
        max_body_bytes,
        header_read_timeout: p.duration(
            "server.header_read_timeout",
            s.header_read_timeout.as_deref(),
            defaults::HEADER_READ_TIMEOUT,
        ),
        allow_unauthenticated: s.allow_unauthenticated.unwrap_or(false),
        shutdown_grace: p.duration(
            "server.shutdown_grace",
            s.shutdown_grace.as_deref(),
            defaults::SHUTDOWN_GRACE,
        ),
        tls: None,
    }
}

fn admin(raw: &RawConfig, env: &dyn Env, p: &mut Problems) -> AdminConfig {
    let text = raw
        .admin
        .listen
        .as_deref()
        .unwrap_or(defaults::ADMIN_LISTEN);
    let listen = text.parse().unwrap_or_else(|_| {
        p.add(
            "admin.listen",
            format!("\"{text}\" is not an address like \"127.0.0.1:9091\""),
        );
        SocketAddr::from(([127, 0, 0, 1], 0))
    });
    let token = raw
        .admin
        .token
        .as_deref()
        .and_then(|r| p.secret("admin.token", r, env));
    AdminConfig { listen, token }
}

fn clients(
    raw: &RawConfig,
    env: &dyn Env,
    server: &ServerConfig,
    p: &mut Problems,
) -> Vec<ClientConfig> {
    let mut out: Vec<ClientConfig> = Vec::new();
    for (i, c) in raw.clients.iter().enumerate() {
        let path = format!("clients[{i}]");
        let name = match c.name.as_deref().map(str::trim) {
            Some(n) if !n.is_empty() => n.to_owned(),
            _ => {
                p.add(format!("{path}.name"), "missing; every client needs a name");
                continue;
            }
        };
        if out.iter().any(|o| o.name == name) {
            p.add(
                format!("{path}.name"),
                format!("duplicate client name \"{name}\""),
            );
        }
        let Some(reference) = c.token.as_deref() else {
            p.add(
                format!("{path}.token"),
                "missing; use \"env:NAME\" or \"file:PATH\"",
            );
            continue;
        };
        if let Some(token) = p.secret(&format!("{path}.token"), reference, env) {
            if out.iter().any(|o| o.token == token) {
                p.add(
                    format!("{path}.token"),
                    "the same token is given to another client",
                );
            }
            out.push(ClientConfig { name, token });
        }
    }
    if raw.clients.is_empty() {
        if !server.allow_unauthenticated {
            p.add(
                "clients",
                "no clients configured; add a [[clients]] entry with a token, or set server.allow_unauthenticated = true for local use",
            );
        } else if !server.listen.ip().is_loopback() {
            p.add(
                "server.allow_unauthenticated",
                format!(
                    "refused on the non-loopback listener {}; configure [[clients]]",
                    server.listen
                ),
            );
        }
    }
    out
}

fn provider(
    rp: &RawProvider,
    path: &str,
    env: &dyn Env,
    p: &mut Problems,
) -> Option<ProviderConfig> {
    let name = match rp.name.as_deref().map(str::trim) {
        Some(n) if valid_name(n) => n.to_owned(),
        Some(n) => {
            p.add(
                format!("{path}.name"),
                format!("\"{n}\" must be letters, digits, '-' or '_'"),
            );
            return None;
        }
        None => {
            p.add(
                format!("{path}.name"),
                "missing; every provider needs a name",
            );
            return None;
        }
    };
    let base_url = match rp.base_url.as_deref() {
        Some(u) => check_url(u).unwrap_or_else(|e| {
            p.add(format!("{path}.base_url"), e);
            String::new()
        }),
        None => {
            p.add(
                format!("{path}.base_url"),
                "missing; e.g. \"https://api.openai.com/v1\"",
            );
            String::new()
        }
    };
    let auth_text = rp.auth.as_deref().unwrap_or("bearer");
    let auth = AuthStyle::parse(auth_text).unwrap_or_else(|| {
        p.add(
            format!("{path}.auth"),
            format!("\"{auth_text}\" is not one of bearer, x-api-key, x-goog-api-key, api-key"),
        );
        AuthStyle::Bearer
    });
    let default_route = if name == "openai" {
        "/v1".to_owned()
    } else {
        format!("/{name}")
    };
    let route = check_route(rp.route.as_deref().unwrap_or(&default_route)).unwrap_or_else(|e| {
        p.add(format!("{path}.route"), e);
        String::new()
    });
    let strategy_text = rp.strategy.as_deref().unwrap_or("least-loaded");
    let strategy = Strategy::parse(strategy_text).unwrap_or_else(|| {
        p.add(
            format!("{path}.strategy"),
            format!("\"{strategy_text}\" is not one of least-loaded, round-robin, weighted"),
        );
        Strategy::LeastLoaded
    });
    let rpm = p.positive(&format!("{path}.rpm"), rp.rpm, defaults::RPM);
    let weight = p.positive(&format!("{path}.weight"), rp.weight, defaults::WEIGHT);
    let settings = PoolSettings {
        cooldown: p.duration(
            &format!("{path}.cooldown"),
            rp.cooldown.as_deref(),
            defaults::COOLDOWN,
        ),
        quarantine: p.duration(
            &format!("{path}.quarantine"),
            rp.quarantine.as_deref(),
            defaults::QUARANTINE,
        ),
        max_cooldown: p.duration(
            &format!("{path}.max_cooldown"),
            rp.max_cooldown.as_deref(),
            defaults::MAX_COOLDOWN,
        ),
    };
    let max_attempts = p.positive(
        &format!("{path}.max_attempts"),
        rp.max_attempts,
        defaults::MAX_ATTEMPTS,
    );
    let max_wait = p.duration(
        &format!("{path}.max_wait"),
        rp.max_wait.as_deref(),
        defaults::MAX_WAIT,
    );
    let keys = super::keys::keys(rp.keys.as_ref(), path, rpm, weight, env, p);
    Some(ProviderConfig {
        name,
        base_url,
        auth,
        route,
        strategy,
        settings,
        max_attempts,
        max_wait,
        keys,
    })
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn check_url(u: &str) -> Result<String, String> {
    let uri: http::Uri = u.parse().map_err(|_| format!("\"{u}\" is not a URL"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(format!("\"{u}\" must start with http:// or https://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("\"{u}\" has no host"));
    }
    if uri.query().is_some() {
        return Err(format!("\"{u}\" must not carry a query"));
    }
    Ok(u.trim_end_matches('/').to_owned())
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

impl Problems {
    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    /// Resolve a reference that must name exactly one secret, noting any problem at `path`.
    pub(super) fn secret(&mut self, path: &str, reference: &str, env: &dyn Env) -> Option<Secret> {
        match resolve(reference, env) {
            Ok(mut v) if v.len() == 1 => Some(v.remove(0).secret),
            Ok(_) => {
                self.add(path, "names one value; a glob is not allowed here");
                None
            }
            Err(e) => {
                self.add(path, e);
                None
            }
        }
    }
}
