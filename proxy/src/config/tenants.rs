//! The `[[tenants]]` list: each tenant's own clients (tokens) and its own keys per configured
//! provider, whether it may fall back to the shared pools, and its request limit. Names are
//! checked across the whole file: no client name or token twice, no secret in two pools.

use super::problems::Problems;
use super::secrets::Env;
use super::{defaults, ClientConfig, Config, ProviderConfig};
use keyrelay_pool::{Fingerprinter, Key, Secret};
use serde::Deserialize;

/// A tenant as written.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawTenant {
    pub name: Option<String>,
    pub fallback: Option<String>,
    pub rpm: Option<i64>,
    pub tpm: Option<i64>,
    pub admin_token: Option<String>,
    pub clients: Vec<RawTenantClient>,
    pub providers: Vec<RawTenantPool>,
}

pub(super) type RawTenantClient = super::raw::RawClient;

/// A tenant's keys for one configured provider.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawTenantPool {
    pub name: Option<String>,
    pub rpm: Option<i64>,
    pub tpm: Option<i64>,
    pub weight: Option<i64>,
    pub keys: Option<toml::Value>,
}

/// A validated tenant.
#[derive(Clone, Debug)]
pub struct TenantConfig {
    pub name: String,
    /// Whether a request may go to the shared pool when none of the tenant's keys is ready.
    pub fallback_shared: bool,
    /// Requests per sliding minute over all the tenant's clients; `None`: no limit.
    pub rpm: Option<u32>,
    /// Tokens per sliding minute over all the tenant's clients; `None`: no limit.
    pub tpm: Option<u32>,
    pub clients: Vec<ClientConfig>,
    pub pools: Vec<TenantPool>,
    /// The tenant's own admin token: it sees and changes this tenant's registered keys only.
    pub admin_token: Option<Secret>,
}

/// `[registry]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawRegistry {
    pub master_key: Option<String>,
    pub previous_master_key: Option<String>,
    pub file: Option<String>,
    /// Kept for configs written before `[admin] audit_file`; see `admin::audit_file`.
    pub audit_file: Option<String>,
}

/// Runtime key registration: keys sealed under `master`, kept in the store's Redis or, with no
/// `[store]`, in `file`.
#[derive(Clone)]
pub struct RegistryConfig {
    pub master: [u8; 32],
    pub previous: Option<[u8; 32]>,
    pub file: std::path::PathBuf,
    /// The deployment's fingerprinter, so registered keys fingerprint like configured ones.
    pub fingerprinter: Fingerprinter,
}

impl std::fmt::Debug for RegistryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryConfig")
            .field("master", &"*****")
            .field("previous", &self.previous.map(|_| "*****"))
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

/// `[registry]`: a master key of 64 hex digits, by reference like every secret.
pub(super) fn registry(
    raw: &RawRegistry,
    fingerprinter: &Fingerprinter,
    env: &dyn Env,
    p: &mut Problems,
) -> Option<RegistryConfig> {
    let mut master = |field: &str, reference: &str| {
        let path = format!("registry.{field}");
        let secret = p.secret(&path, reference, env)?;
        let key = crate::tenants::seal::parse_master(secret.expose());
        if key.is_none() {
            p.add(
                path,
                "must be 64 hex digits (32 bytes), e.g. `openssl rand -hex 32`",
            );
        }
        key
    };
    let Some(reference) = raw.master_key.as_deref() else {
        p.add(
            "registry.master_key",
            "missing; runtime registration needs a master key (\"env:NAME\" or \"file:PATH\")",
        );
        return None;
    };
    let current = master("master_key", reference);
    let previous = raw
        .previous_master_key
        .as_deref()
        .and_then(|r| master("previous_master_key", r));
    Some(RegistryConfig {
        master: current?,
        previous,
        file: raw
            .file
            .as_deref()
            .unwrap_or(defaults::REGISTRY_FILE)
            .into(),
        fingerprinter: fingerprinter.clone(),
    })
}

/// A tenant's keys for the provider named `provider` (route, address and settings are its).
#[derive(Clone, Debug)]
pub struct TenantPool {
    pub provider: String,
    pub keys: Vec<Key>,
}

/// The label every runtime-registered tenant shares in metrics, so a label set stays bounded;
/// no tenant may have this name.
pub const RUNTIME_LABEL: &str = keyrelay_metrics::Tenant::RUNTIME;

/// The shared pools' `tenant` label in metrics and status; no tenant may have this name.
pub const SHARED_LABEL: &str = keyrelay_metrics::Tenant::SHARED;

/// The prefix of a runtime tenant's client name, which no configured client may use.
const RUNTIME_CLIENT: &str = "runtime:";

impl Config {
    /// Every client that may present a token: shared ones first, then each tenant's.
    pub fn all_clients(&self) -> Vec<ClientConfig> {
        let tenants = self.tenants.iter().flat_map(|t| t.clients.iter().cloned());
        self.clients.iter().cloned().chain(tenants).collect()
    }

    /// The store's name of every pool: `provider` for the shared ones, `tenant.provider` for a
    /// tenant's (a provider name holds no '.', so neither can collide).
    pub fn pool_names(&self) -> Vec<String> {
        let tenants = self
            .tenants
            .iter()
            .flat_map(|t| t.pools.iter().map(|p| pool_name(&t.name, &p.provider)));
        self.providers
            .iter()
            .map(|p| p.name.clone())
            .chain(tenants)
            .collect()
    }
}

/// The store's name of `tenant`'s pool for `provider` (also how key actions name it; metrics and
/// status show tenant and provider apart).
pub fn pool_name(tenant: &str, provider: &str) -> String {
    format!("{tenant}.{provider}")
}

/// What the tenant checker needs from the rest of the file.
pub(super) struct Context<'a> {
    pub clients: &'a [ClientConfig],
    pub providers: &'a [ProviderConfig],
    pub fingerprinter: &'a Fingerprinter,
    pub env: &'a dyn Env,
}

pub(super) fn tenants(raw: &[RawTenant], cx: &Context<'_>, p: &mut Problems) -> Vec<TenantConfig> {
    let mut out: Vec<TenantConfig> = Vec::new();
    let mut clients: Vec<ClientConfig> = cx.clients.to_vec();
    let mut keys: Vec<(String, Key)> = cx
        .providers
        .iter()
        .flat_map(|pc| {
            pc.keys
                .iter()
                .map(|k| (format!("providers \"{}\"", pc.name), k.clone()))
        })
        .collect();
    for (i, c) in cx.clients.iter().enumerate() {
        if c.name.starts_with(RUNTIME_CLIENT) {
            p.add(
                format!("clients[{i}].name"),
                format!("\"{RUNTIME_CLIENT}\" is reserved"),
            );
        }
    }
    for (i, rt) in raw.iter().enumerate() {
        let path = format!("tenants[{i}]");
        let Some(t) = tenant(rt, &path, cx, &mut clients, p) else {
            continue;
        };
        if out.iter().any(|o| o.name == t.name) {
            p.add(
                format!("{path}.name"),
                format!("duplicate tenant name \"{}\"", t.name),
            );
        }
        for (j, pool) in t.pools.iter().enumerate() {
            let at = format!("{path}.providers[{j}].keys");
            for k in &pool.keys {
                if let Some((owner, _)) = keys.iter().find(|(_, o)| o.secret == k.secret) {
                    let message =
                        format!("key \"{}\" has the same secret as a key of {owner}", k.name);
                    p.add(&at, message);
                }
            }
            let owner = format!("tenants \"{}\"", t.name);
            keys.extend(pool.keys.iter().map(|k| (owner.clone(), k.clone())));
        }
        out.push(t);
    }
    out
}

fn tenant(
    rt: &RawTenant,
    path: &str,
    cx: &Context<'_>,
    clients: &mut Vec<ClientConfig>,
    p: &mut Problems,
) -> Option<TenantConfig> {
    let name = name(rt.name.as_deref(), &format!("{path}.name"), p)?;
    let fallback_shared = match rt.fallback.as_deref().unwrap_or(defaults::TENANT_FALLBACK) {
        "none" => false,
        "shared" => true,
        other => {
            let message = format!("\"{other}\" is not one of none, shared");
            p.add(format!("{path}.fallback"), message);
            false
        }
    };
    let rpm = rt
        .rpm
        .map(|v| p.positive(&format!("{path}.rpm"), Some(v), 1));
    let tpm = rt
        .tpm
        .map(|v| p.positive(&format!("{path}.tpm"), Some(v), 1));
    let mut own = Vec::new();
    for (j, c) in rt.clients.iter().enumerate() {
        if let Some(c) = client(c, &format!("{path}.clients[{j}]"), clients, cx.env, p) {
            clients.push(c.clone());
            own.push(c);
        }
    }
    if rt.clients.is_empty() {
        p.add(
            format!("{path}.clients"),
            "no clients; a tenant needs at least one [[tenants.clients]]",
        );
    }
    let pools = pools(&rt.providers, path, cx, p);
    let admin_token = rt
        .admin_token
        .as_deref()
        .and_then(|r| p.secret(&format!("{path}.admin_token"), r, cx.env));
    Some(TenantConfig {
        admin_token,
        name,
        fallback_shared,
        rpm,
        tpm,
        clients: own,
        pools,
    })
}

/// A tenant's name: like a provider's, and never the shared pools' or the runtime tenants'
/// label.
fn name(value: Option<&str>, path: &str, p: &mut Problems) -> Option<String> {
    match value.map(str::trim) {
        Some(reserved @ (RUNTIME_LABEL | SHARED_LABEL)) => {
            p.add(path, format!("\"{reserved}\" is reserved"));
            None
        }
        Some(n)
            if !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') =>
        {
            Some(n.to_owned())
        }
        Some(n) => {
            p.add(path, format!("\"{n}\" must be letters, digits, '-' or '_'"));
            None
        }
        None => {
            p.add(path, "missing; every tenant needs a name");
            None
        }
    }
}

/// One tenant client, checked as a shared one against every client accepted so far (shared
/// ones included), and kept out of the runtime tenants' reserved names.
fn client(
    c: &RawTenantClient,
    path: &str,
    seen: &[ClientConfig],
    env: &dyn Env,
    p: &mut Problems,
) -> Option<ClientConfig> {
    let client = super::clients::client(c, path, seen, env, p)?;
    if client.name.starts_with(RUNTIME_CLIENT) {
        p.add(
            format!("{path}.name"),
            format!("\"{RUNTIME_CLIENT}\" is reserved"),
        );
    }
    Some(client)
}

/// A tenant's pools, each for a configured provider, at most one per provider.
fn pools(raw: &[RawTenantPool], path: &str, cx: &Context<'_>, p: &mut Problems) -> Vec<TenantPool> {
    if raw.is_empty() {
        p.add(
            format!("{path}.providers"),
            "no providers; a tenant needs its own keys for at least one provider",
        );
    }
    let mut out: Vec<TenantPool> = Vec::new();
    for (j, rp) in raw.iter().enumerate() {
        let at = format!("{path}.providers[{j}]");
        let Some(provider) = rp.name.as_deref().map(str::trim) else {
            p.add(
                format!("{at}.name"),
                "missing; the name of a configured [[providers]]",
            );
            continue;
        };
        let Some(pc) = cx.providers.iter().find(|pc| pc.name == provider) else {
            let message = format!("\"{provider}\" is not a configured provider");
            p.add(format!("{at}.name"), message);
            continue;
        };
        if out.iter().any(|o| o.provider == provider) {
            p.add(
                format!("{at}.name"),
                format!("duplicate provider \"{provider}\""),
            );
        }
        let rpm = p.positive(&format!("{at}.rpm"), rp.rpm, defaults::RPM);
        let weight = p.positive(&format!("{at}.weight"), rp.weight, defaults::WEIGHT);
        let tpm = rp.tpm.map(|v| p.positive(&format!("{at}.tpm"), Some(v), 1));
        let keys = super::keys::Keys {
            rpm,
            tpm,
            weight,
            fingerprinter: cx.fingerprinter,
            env: cx.env,
        }
        .list(rp.keys.as_ref(), &at, p);
        out.push(TenantPool {
            provider: pc.name.clone(),
            keys,
        });
    }
    out
}

/// No tenant admin token may be the admin token, another tenant's, or any client's token.
pub(super) fn admin_tokens(tenants: &[TenantConfig], admin: Option<&Secret>, p: &mut Problems) {
    for (i, t) in tenants.iter().enumerate() {
        let Some(own) = &t.admin_token else { continue };
        let clients = tenants.iter().flat_map(|o| o.clients.iter());
        let reused = admin == Some(own)
            || tenants[..i]
                .iter()
                .any(|o| o.admin_token.as_ref() == Some(own))
            || clients.into_iter().any(|c| c.token == *own);
        if reused {
            p.add(
                format!("tenants[{i}].admin_token"),
                "must differ from the admin token and every other token",
            );
        }
    }
}
