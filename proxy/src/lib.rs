//! keyrelay: an LLM reverse proxy that rotates provider API keys from a shared pool.

pub mod admin;
pub mod affinity;
pub mod auth;
pub mod body;
pub mod config;
pub mod connection;
pub mod demo;
pub mod error;
pub mod group;
pub mod h1;
pub mod headers;
pub mod log;
pub mod routes;
pub mod server;
pub mod service;
pub mod tenants;
pub mod upstream;
pub mod usage;
pub mod websocket;
mod woken;
pub mod workers;

use config::Config;
use keyrelay_metrics::ReloadResult;
use keyrelay_pool::{MemoryStore, PoolError, RedisStore, Store};
use server::Live;
use std::path::PathBuf;
use std::sync::Arc;

pub use server::Running;
pub use service::{App, Shared};

/// Why keyrelay could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("{path}: {source}", path = .path.display())]
    Config {
        path: PathBuf,
        source: config::ConfigError,
    },
    #[error(transparent)]
    Store(#[from] keyrelay_pool::StoreError),
    #[error(transparent)]
    Build(#[from] PoolError),
    #[error("cannot start the mock upstream: {0}")]
    MockUpstream(#[source] std::io::Error),
    #[error("the demo config is invalid: {0}")]
    DemoConfig(#[source] config::ConfigError),
}

/// Why a reload was refused; the config serving before keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new file is invalid: every problem, by its path.
    #[error("{path}: {source}", path = .path.display())]
    Config {
        path: PathBuf,
        source: config::ConfigError,
    },
    /// The file is valid but its pools could not be built.
    #[error(transparent)]
    Build(#[from] PoolError),
    /// The file changes what only a restart can apply, or would open the bound socket to
    /// clients without a token: each field, and why.
    #[error("reload refused, the running config keeps serving: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Refused(Vec<server::Refusal>),
}

/// Start keyrelay with `config`: on Redis when `[store]` is configured (even if Redis is down
/// right now), else on the embedded store.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let store = build_store(&config).await?;
    start_with(config, store, None).await
}

/// Start from a config file; `/admin/reload` and [`reload_from`] re-read it.
pub async fn start_from_file(path: PathBuf) -> Result<Running, StartError> {
    let config = Config::load(&path).map_err(|source| StartError::Config {
        path: path.clone(),
        source,
    })?;
    let store = build_store(&config).await?;
    start_with(config, store, Some(path)).await
}

/// Re-read `path` and swap the new config in; the old one keeps serving if it is invalid.
/// Audited as `who`'s (to the audit file of the config serving afterwards).
pub fn reload_from(
    live: &Live,
    path: &std::path::Path,
    who: &tenants::audit::Who,
) -> Result<(), ReloadError> {
    let result = match Config::load(path) {
        Ok(config) => live.reload(&config),
        Err(source) => {
            live.app().metrics().reload(ReloadResult::Failure);
            Err(ReloadError::Config {
                path: path.to_owned(),
                source,
            })
        }
    };
    let word = match &result {
        Ok(()) => "reloaded",
        Err(ReloadError::Config { .. }) => "invalid_config",
        Err(ReloadError::Build(_)) => "build_failed",
        Err(ReloadError::Refused(_)) => "refused",
    };
    tenants::audit::reload(live.app().audit_file(), who, word);
    result
}

/// The pool store `config` asks for.
pub async fn build_store(config: &Config) -> Result<Arc<dyn Store>, StartError> {
    Ok(match &config.store {
        None => Arc::new(MemoryStore::new()),
        Some(s) => {
            // The probe checks the pools' own Redis slots from the start.
            let mut settings = s.settings.clone();
            settings.pools = config.pool_names();
            let store = RedisStore::connect(&s.target, settings)
                .await
                .map_err(StartError::Store)?;
            store
        }
    })
}

async fn start_with(
    config: Config,
    store: Arc<dyn Store>,
    path: Option<PathBuf>,
) -> Result<Running, StartError> {
    let app = Arc::new(App::new(&config, Shared::new(store))?);
    let live = Live::new(app, &config);
    let addr = config.server.listen;
    let listener = bind(addr).map_err(|source| StartError::Listen { addr, source })?;
    let limits = connection::Limits::proxy(&config.server);
    let (grace, workers) = (config.server.shutdown_grace, config.server.workers);
    let running = server::serve(listener, live.clone(), limits, grace, workers)
        .map_err(|source| StartError::Listen { addr, source })?;
    let (bound, task) = start_admin(&config, live, path).await?;
    Ok(running.with_admin(bound, task))
}

/// Connections the kernel may hold completed for a listener before keyrelay accepts them
/// (capped by `net.core.somaxconn`). Large, so a burst of connects is not met with dropped
/// SYNs (and one-second retransmits) while the accept loop catches up.
const LISTEN_BACKLOG: u32 = 4096;

/// Bind `addr` for listening (address reuse on, as the standard library sets it).
fn bind(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Bind and serve the admin listener.
async fn start_admin(
    config: &Config,
    live: Arc<Live>,
    path: Option<PathBuf>,
) -> Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>), StartError> {
    let addr = config.admin.listen;
    let listen_error = |source| StartError::Listen { addr, source };
    let listener = bind(addr).map_err(listen_error)?;
    let bound = listener.local_addr().map_err(listen_error)?;
    let reloader: Option<admin::Reloader> = path.map(|path| {
        let live = live.clone();
        let reload: admin::Reloader = Arc::new(move || {
            let (live, path) = (live.clone(), path.clone());
            Box::pin(async move { reload_from(&live, &path, &tenants::audit::Who::Admin) })
        });
        reload
    });
    let metrics = live.app().metrics().clone();
    let admin = Arc::new(admin::Admin::new(
        live,
        admin::AllowedHosts::new(bound, &config.admin.allowed_hosts),
        config.admin.token.as_ref(),
        reloader,
    ));
    let limits = connection::Limits::admin(&config.server);
    Ok((bound, server::serve_admin(listener, admin, limits, metrics)))
}
