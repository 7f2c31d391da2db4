//! Every default the validator applies, defined once. The example `config.toml` documents each
//! (`Default: value`), and `proxy/tests/config.rs` checks each documented value against what
//! loading applies; the demo gets them by loading its config through the same validator.

use super::{AffinityMode, AuthStyle, UnknownIds};
use keyrelay_pool::{PoolSettings, RedisSettings, Strategy};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

const fn loopback(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}

// [server]
pub(super) const LISTEN: SocketAddr = loopback(8080);
pub(super) const MAX_BODY_BYTES: usize = 512 * 1024 * 1024;
pub(super) const MAX_BUFFERED_BYTES: usize = 256 * 1024 * 1024;
/// Lowered to `max_body_bytes` when that is smaller and this is not set.
pub(super) const REPLAY_MEMORY_BYTES: usize = 4 * 1024 * 1024;
pub(super) const MAX_SPILL_BYTES: usize = 4 * 1024 * 1024 * 1024;
pub(super) const BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);
pub(super) const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
pub(super) const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);
/// Lowered at start to what the open-file limit allows (see `connection.rs`).
pub(super) const MAX_CONNECTIONS: u32 = 10_000;
pub(super) const ALLOW_UNAUTHENTICATED: bool = false;
pub(super) const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

// [admin]
pub(super) const ADMIN_LISTEN: SocketAddr = loopback(9091);

// [affinity]
pub(super) const UNKNOWN_IDS: UnknownIds = UnknownIds::Pass;
pub(super) const MAX_REWRITE_BYTES: usize = 8 * 1024 * 1024;
pub(super) const AFFINITY_MODE: AffinityMode = AffinityMode::Seal;
pub(super) const MAP_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

// [upstream]
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub(super) const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(300);
pub(super) const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
pub(super) const FORWARDED_FOR: bool = false;
pub(super) const USE_ENV_PROXY: bool = true;

// [websocket]
pub(super) const WS_ENABLED: bool = true;
pub(super) const WS_IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);
pub(super) const WS_MAX_DURATION: Duration = Duration::from_secs(2 * 60 * 60);

// [metrics]
pub(super) const RUNTIME_TENANT_LABELS: bool = false;

// [[tenants]]
pub(super) const TENANT_FALLBACK: &str = "none";

// [registry]
pub(super) const REGISTRY_FILE: &str = "keyrelay-keys.json";

// [[providers]]
pub(super) const AUTH: AuthStyle = AuthStyle::Bearer;
pub(super) const STRATEGY: Strategy = Strategy::LeastLoaded;
pub(super) const RPM: u32 = 10_000;
pub(super) const WEIGHT: u32 = 1;
pub(super) const MAX_ATTEMPTS: u32 = 3;
pub(super) const MAX_WAIT: Duration = Duration::ZERO;
pub(super) const DEADLINE: Duration = Duration::from_secs(600);
pub(super) const RETRY_AFTER_SEND: bool = false;
pub(super) const ALLOW_LINK_LOCAL_BASE_URL: bool = false;
pub(super) const WEBSOCKET: bool = true;

/// Where spill files go when `spill_dir` is not set: `keyrelay-spill` in the system's temporary
/// directory (`$TMPDIR`, else `/tmp`).
pub(super) fn spill_dir() -> std::path::PathBuf {
    std::env::temp_dir().join("keyrelay-spill")
}

/// A provider's route when none is given: `/v1` for `openai` (so `OPENAI_BASE_URL` works as
/// is), `/<name>` for any other.
pub(super) fn route(name: &str) -> String {
    if name == "openai" {
        "/v1".to_owned()
    } else {
        format!("/{name}")
    }
}

/// A provider's cooldown, quarantine and hint cap: the pool's own defaults.
pub(super) fn pool() -> PoolSettings {
    PoolSettings::default()
}

/// `[store]` timeouts and instance count: the Redis store's own defaults.
pub(super) fn redis() -> RedisSettings {
    RedisSettings::default()
}
