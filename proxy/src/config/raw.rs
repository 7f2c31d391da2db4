//! The config file as written: every field optional, so validation can report all gaps at once.

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawConfig {
    pub server: RawServer,
    pub upstream: RawUpstream,
    pub clients: Vec<RawClient>,
    pub providers: Vec<RawProvider>,
    pub store: Option<RawStore>,
    pub admin: RawAdmin,
    pub websocket: RawWebSocket,
    pub metrics: RawMetrics,
    pub affinity: RawAffinity,
    pub tenants: Vec<super::tenants::RawTenant>,
    pub registry: Option<super::tenants::RawRegistry>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawWebSocket {
    pub enabled: Option<bool>,
    pub idle_timeout: Option<String>,
    pub max_duration: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawMetrics {
    pub runtime_tenant_labels: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawAffinity {
    pub secret: Option<String>,
    pub unknown_ids: Option<String>,
    pub max_rewrite_bytes: Option<i64>,
    pub mode: Option<String>,
    pub map_ttl: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawAdmin {
    pub listen: Option<String>,
    pub token: Option<String>,
    pub allowed_hosts: Option<Vec<String>>,
    pub audit_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawStore {
    pub url: Option<String>,
    pub cluster: Option<Vec<String>>,
    pub password: Option<String>,
    pub instances: Option<i64>,
    pub connect_timeout: Option<String>,
    pub wait_timeout: Option<String>,
    pub command_timeout: Option<String>,
    pub probe_interval: Option<String>,
    pub probe_max_interval: Option<String>,
    pub lease_time: Option<String>,
    pub lease_max: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawServer {
    pub listen: Option<String>,
    pub max_body_bytes: Option<i64>,
    pub max_buffered_bytes: Option<i64>,
    pub replay_memory_bytes: Option<i64>,
    pub max_spill_bytes: Option<i64>,
    pub spill_dir: Option<String>,
    pub body_read_timeout: Option<String>,
    pub header_read_timeout: Option<String>,
    pub keepalive_timeout: Option<String>,
    pub max_connections: Option<i64>,
    pub workers: Option<i64>,
    pub allow_unauthenticated: Option<bool>,
    pub shutdown_grace: Option<String>,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    pub fingerprint_secret: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawUpstream {
    pub connect_timeout: Option<String>,
    pub first_byte_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub pass_headers: Option<Vec<String>>,
    pub forwarded_for: Option<bool>,
    pub ca_file: Option<String>,
    pub proxy: Option<String>,
    pub proxy_auth: Option<String>,
    pub no_proxy: Option<Vec<String>>,
    pub use_env_proxy: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawClient {
    pub name: Option<String>,
    pub token: Option<String>,
    pub rpm: Option<i64>,
    pub tpm: Option<i64>,
    pub group: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawProvider {
    pub name: Option<String>,
    pub base_url: Option<String>,
    pub auth: Option<String>,
    pub route: Option<String>,
    pub strategy: Option<String>,
    pub rpm: Option<i64>,
    pub tpm: Option<i64>,
    pub weight: Option<i64>,
    pub cooldown: Option<String>,
    pub quarantine: Option<String>,
    pub max_cooldown: Option<String>,
    pub max_attempts: Option<i64>,
    pub max_wait: Option<String>,
    pub deadline: Option<String>,
    pub retry_after_send: Option<bool>,
    pub refusal_memory: Option<String>,
    pub retry_budget_percent: Option<i64>,
    pub retry_budget_min_per_second: Option<i64>,
    pub allow_link_local_base_url: Option<bool>,
    pub websocket: Option<bool>,
    pub ca_file: Option<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
    /// A string reference (`"env:PREFIX_*"`) or an array of key tables; checked by hand so
    /// that each entry's problems carry their own path.
    pub keys: Option<toml::Value>,
}

/// Parse TOML into the raw shape, collecting the path of every field we do not know.
pub(super) fn parse(text: &str) -> Result<(RawConfig, Vec<String>), toml::de::Error> {
    let mut unknown = Vec::new();
    let de = toml::Deserializer::new(text);
    let raw = serde_ignored::deserialize(de, |path| unknown.push(render_path(&path)))?;
    Ok((raw, unknown))
}

/// `providers.1.keys` → `providers[1].keys`
fn render_path(path: &serde_ignored::Path<'_>) -> String {
    let mut out = String::new();
    for part in path
        .to_string()
        .split('.')
        .filter(|p| !p.is_empty() && *p != "?")
    {
        if part.parse::<usize>().is_ok() {
            out.push('[');
            out.push_str(part);
            out.push(']');
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(part);
        }
    }
    out
}
