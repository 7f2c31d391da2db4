//! The `[[clients]]` list: who may use the proxy, each with its own token; and the loopback-only
//! escape hatch for running without any.

use super::problems::Problems;
use super::raw::RawClient;
use super::secrets::Env;
use super::{ClientConfig, ServerConfig};

pub(super) fn clients(
    raw: &[RawClient],
    server: &ServerConfig,
    tenant_clients: bool,
    env: &dyn Env,
    p: &mut Problems,
) -> Vec<ClientConfig> {
    let mut out: Vec<ClientConfig> = Vec::new();
    for (i, c) in raw.iter().enumerate() {
        if let Some(client) = client(c, &format!("clients[{i}]"), &out, env, p) {
            out.push(client);
        }
    }
    if raw.is_empty() && !tenant_clients {
        unauthenticated(server, p);
    }
    out
}

/// One client, checked against those already accepted (`seen`) for reused names and tokens.
pub(super) fn client(
    c: &RawClient,
    path: &str,
    seen: &[ClientConfig],
    env: &dyn Env,
    p: &mut Problems,
) -> Option<ClientConfig> {
    let name = match c.name.as_deref().map(str::trim) {
        Some(n) if !n.is_empty() => n.to_owned(),
        _ => {
            p.add(format!("{path}.name"), "missing; every client needs a name");
            return None;
        }
    };
    if seen.iter().any(|o| o.name == name) {
        let message = format!("duplicate client name \"{name}\"");
        p.add(format!("{path}.name"), message);
    }
    let token_path = format!("{path}.token");
    let Some(reference) = c.token.as_deref() else {
        p.add(token_path, "missing; use \"env:NAME\" or \"file:PATH\"");
        return None;
    };
    let token = p.secret(&token_path, reference, env)?;
    if seen.iter().any(|o| o.token == token) {
        p.add(token_path, "the same token is given to another client");
    }
    let rpm = c
        .rpm
        .map(|v| p.positive(&format!("{path}.rpm"), Some(v), 1));
    let tpm = c
        .tpm
        .map(|v| p.positive(&format!("{path}.tpm"), Some(v), 1));
    let group = c.group.clone().map(toml::Value::String);
    let group = super::keys::group(group.as_ref(), &format!("{path}.group"), p);
    Some(ClientConfig {
        name,
        token,
        rpm,
        tpm,
        group,
    })
}

/// With no clients, the proxy is open: only when asked for, and only on loopback.
fn unauthenticated(server: &ServerConfig, p: &mut Problems) {
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
