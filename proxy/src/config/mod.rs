//! keyrelay's configuration: the TOML shape users write, and the validated form the proxy runs.
//!
//! Loading happens once: [`Config::from_toml_str`] parses, resolves secrets and validates, and
//! either returns a [`Config`] or a [`ConfigError`] listing every problem found, each named by
//! its path in the file. Defaults live in `defaults.rs` only; each section has its own checker
//! (`server.rs`, `clients.rs`, `providers.rs` and `keys.rs`, `store.rs`, `admin.rs`), and all of
//! them note problems in one [`Problems`] list.

mod admin;
mod affinity;
mod base_url;
mod clients;
mod defaults;
mod duration;
mod error;
mod groups;
mod keys;
mod metrics;
mod problems;
mod providers;
mod raw;
mod secrets;
mod server;
mod store;
mod tenants;
mod tls;
mod upstream_tls;
mod validate;
mod websocket;

use keyrelay_pool::{Key, PoolSettings, Secret, Strategy};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

pub use duration::parse_duration;
pub use error::ConfigError;
pub use problems::{Problem, Problems};
pub use secrets::{Env, MapEnv, ProcessEnv, ALLOW_READABLE_SECRETS};
pub use tenants::{
    pool_name, RegistryConfig, TenantConfig, TenantPool, RUNTIME_LABEL, SHARED_LABEL,
};
pub use upstream_tls::{ClientIdentity, Egress, EgressSource, ProviderTls};

/// How a provider expects its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthStyle {
    /// `Authorization: Bearer KEY` (OpenAI and compatibles).
    Bearer,
    /// `x-api-key: KEY` (Anthropic).
    XApiKey,
    /// `x-goog-api-key: KEY` (Gemini).
    XGoogApiKey,
    /// `api-key: KEY` (Azure OpenAI).
    ApiKey,
}

impl AuthStyle {
    pub fn parse(s: &str) -> Option<AuthStyle> {
        match s {
            "bearer" => Some(AuthStyle::Bearer),
            "x-api-key" => Some(AuthStyle::XApiKey),
            "x-goog-api-key" => Some(AuthStyle::XGoogApiKey),
            "api-key" => Some(AuthStyle::ApiKey),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    /// The most request-body bytes buffered at once over all requests.
    pub max_buffered_bytes: usize,
    /// The most of one request body held in memory; a larger one is spilled to disk.
    pub replay_memory_bytes: usize,
    /// The most spill-file bytes at once over all requests; past it, bodies go without replay.
    pub max_spill_bytes: usize,
    /// Where spill files are created (a private directory).
    pub spill_dir: std::path::PathBuf,
    /// Longest pause between two chunks of a request body.
    pub body_read_timeout: Duration,
    /// From accept to the first request's head (TLS handshake and protocol detection
    /// included), and for each later HTTP/1 request head.
    pub header_read_timeout: Duration,
    /// How long a connection with no request in flight stays open.
    pub keepalive_timeout: Duration,
    /// Client connections open at once on the proxy listener; more are closed at accept.
    pub max_connections: u32,
    /// Threads serving client connections, each its own single-threaded runtime (read at
    /// start); 0 serves them on the main runtime's shared threads.
    pub workers: usize,
    pub allow_unauthenticated: bool,
    /// How long in-flight requests and streams may run on after SIGTERM.
    pub shutdown_grace: Duration,
    /// TLS for the proxy listener, when `tls_cert` and `tls_key` are set.
    pub tls: Option<std::sync::Arc<rustls::ServerConfig>>,
}

/// The admin listener: health, readiness, metrics; `/admin/*` only with a token.
#[derive(Clone, Debug)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub token: Option<Secret>,
    /// Host names (`name` or `name:port`) the admin listener answers besides its own address
    /// and localhost; any other `Host` gets 421, so a DNS-rebinding page cannot read it.
    pub allowed_hosts: Vec<String>,
    /// Where every audit line (operator actions, reloads, registrations) is appended, besides
    /// the log: `[admin] audit_file`, or `[registry] audit_file` where only that is set.
    pub audit_file: Option<std::path::PathBuf>,
}

#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub idle_timeout: Duration,
    /// Client headers forwarded beyond the built-in allow-list (names, or `prefix*`).
    pub pass_headers: Vec<String>,
    /// Whether keyrelay sets `X-Forwarded-For` to the client's address.
    pub forwarded_for: bool,
    /// CAs (`ca_file`) every provider is trusted by, beyond the system and bundled roots.
    pub ca: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// The egress proxy, if any.
    pub egress: Egress,
}

#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub name: String,
    pub token: Secret,
    /// Requests this client may make in any sliding minute; `None`: no limit of its own.
    pub rpm: Option<u32>,
    /// Tokens this client's answers may use in any sliding minute; `None`: no limit of its own.
    pub tpm: Option<u32>,
    /// The key group serving this client's requests when they name none
    /// (`x-keyrelay-group`); `None`: every key of the pool.
    pub group: Option<String>,
}

#[derive(Clone, Debug)]
pub struct ProviderConfig {
    pub name: String,
    /// Upstream base, without a trailing slash.
    pub base_url: String,
    pub auth: AuthStyle,
    /// Path prefix served for this provider, without a trailing slash.
    pub route: String,
    pub strategy: Strategy,
    pub settings: PoolSettings,
    pub max_attempts: u32,
    pub max_wait: Duration,
    /// The most a request may take to its response head, waits and attempts included.
    pub deadline: Duration,
    /// Whether a request that may have reached the provider is sent again on the next key.
    pub retry_after_send: bool,
    /// Whether `base_url` may be a link-local or cloud metadata address.
    pub allow_link_local_base_url: bool,
    /// Whether WebSocket upgrades are proxied for this provider (else 426).
    pub websocket: bool,
    /// Its own CAs and client certificate; when set, it gets an upstream client of its own.
    pub tls: ProviderTls,
    pub keys: Vec<Key>,
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub clients: Vec<ClientConfig>,
    pub providers: Vec<ProviderConfig>,
    /// The shared store; `None` runs on the embedded in-memory store.
    pub store: Option<StoreConfig>,
    pub admin: AdminConfig,
    pub websocket: WebSocketConfig,
    pub metrics: MetricsConfig,
    /// Resource affinity by sealed ids (off without a secret).
    pub affinity: AffinityConfig,
    /// Tenants, each with its own clients and keys (`[[tenants]]`).
    pub tenants: Vec<TenantConfig>,
    /// Runtime key registration (`[registry]`); `None`: off.
    pub registry: Option<RegistryConfig>,
}

/// `[websocket]`: upgrades proxied or answered 426, and each session's limits.
#[derive(Clone, Debug)]
pub struct WebSocketConfig {
    pub enabled: bool,
    /// No bytes either way for this long ends a session.
    pub idle_timeout: Duration,
    /// The longest a session may last.
    pub max_duration: Duration,
}

/// `[metrics]`: how far the `tenant` label goes.
#[derive(Clone, Debug)]
pub struct MetricsConfig {
    /// Whether each tenant created at run time is labelled by its name; off, they all share
    /// `tenant="runtime"`, so the admin API cannot grow the label set.
    pub runtime_tenant_labels: bool,
}

/// What happens to a resource id keyrelay did not seal (one the client got elsewhere).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnknownIds {
    /// Sent on as it is, to whichever key rotation picks.
    Pass,
    /// Refused with 400.
    Refuse,
}

/// `[affinity]`: ids of stateful resources sealed to the key that created them.
#[derive(Clone, Debug)]
pub struct AffinityConfig {
    /// Seals ids; `None` turns affinity off (ids pass untouched).
    pub secret: Option<Secret>,
    pub unknown_ids: UnknownIds,
    /// The largest JSON answer whose ids are rewritten; a larger one passes as it is.
    pub max_rewrite_bytes: usize,
    /// Seal ids, or keep an id-to-key map in the store.
    pub mode: AffinityMode,
    /// How long a mapped id is remembered (`mode = "map"`).
    pub map_ttl: std::time::Duration,
}

/// How resource ids find their key again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AffinityMode {
    /// Ids sealed in answers (`secret` required); nothing stored.
    Seal,
    /// Ids pass untouched; provider id to key fingerprint kept in the store for `map_ttl`.
    Map,
}

/// Where pool state is shared.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub target: keyrelay_pool::RedisTarget,
    pub settings: keyrelay_pool::RedisSettings,
    /// `host:port` of each node, for messages; never the URL (it may hold a password).
    pub display: String,
}

impl Config {
    /// Parse, resolve secrets through `env`, and validate.
    pub fn from_toml_str(text: &str, env: &dyn Env) -> Result<Config, ConfigError> {
        let (raw, unknown) = raw::parse(text).map_err(ConfigError::Parse)?;
        validate::validate(raw, unknown, env)
    }

    /// Read a file and load it with the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml_str(&text, &ProcessEnv)
    }
}
