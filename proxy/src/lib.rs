//! keyrelay: an LLM reverse proxy that rotates provider API keys from a shared pool.

pub mod admin;
pub mod auth;
pub mod body;
pub mod config;
pub mod demo;
pub mod error;
pub mod headers;
pub mod log;
pub mod routes;
pub mod server;
pub mod service;
pub mod upstream;

use config::Config;
use keyrelay_metrics::Metrics;
use keyrelay_pool::{MemoryStore, RedisStore, Store};
use server::Live;
use std::path::PathBuf;
use std::sync::Arc;

pub use server::Running;
pub use service::App;

/// Why keyrelay could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Setup(String),
}

/// Start keyrelay with `config`: on Redis when `[store]` is configured (even if Redis is down
/// right now), else on the embedded store.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let store = build_store(&config).await?;
    start_with(config, store, None).await
}

/// Start from a config file; `/admin/reload` and [`reload_from`] re-read it.
pub async fn start_from_file(path: PathBuf) -> Result<Running, StartError> {
    let config =
        Config::load(&path).map_err(|e| StartError::Setup(format!("{}: {e}", path.display())))?;
    let store = build_store(&config).await?;
    start_with(config, store, Some(path)).await
}

/// Re-read `path` and swap the new config in; the old one keeps serving if it is invalid.
pub fn reload_from(live: &Live, path: &std::path::Path) -> Result<(), String> {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            live.app()
                .metrics()
                .reloads
                .with_label_values(&["failure"])
                .inc();
            return Err(format!("{}: {e}", path.display()));
        }
    };
    live.reload(&config)
}

/// The pool store `config` asks for.
pub async fn build_store(config: &Config) -> Result<Arc<dyn Store>, StartError> {
    Ok(match &config.store {
        None => Arc::new(MemoryStore::new()),
        Some(s) => {
            let store = RedisStore::connect(&s.target, s.settings.clone())
                .await
                .map_err(|e| StartError::Setup(e.to_string()))?;
            store
        }
    })
}

async fn start_with(
    config: Config,
    store: Arc<dyn Store>,
    path: Option<PathBuf>,
) -> Result<Running, StartError> {
    let app = Arc::new(App::new(&config, store, Metrics::new()).map_err(StartError::Setup)?);
    let live = Live::new(app);
    let addr = config.server.listen;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Listen { addr, source })?;
    let running = server::serve(
        listener,
        live.clone(),
        config.server.header_read_timeout,
        config.server.shutdown_grace,
    )
    .map_err(|source| StartError::Listen { addr, source })?;
    let admin_addr = config.admin.listen;
    let admin_listener = tokio::net::TcpListener::bind(admin_addr)
        .await
        .map_err(|source| StartError::Listen {
            addr: admin_addr,
            source,
        })?;
    let bound = admin_listener
        .local_addr()
        .map_err(|source| StartError::Listen {
            addr: admin_addr,
            source,
        })?;
    let reloader: Option<admin::Reloader> = path.map(|path| {
        let live = live.clone();
        let reload: admin::Reloader = Arc::new(move || {
            let (live, path) = (live.clone(), path.clone());
            Box::pin(async move { reload_from(&live, &path) })
        });
        reload
    });
    let admin = Arc::new(admin::Admin::new(
        live,
        config.admin.token.as_ref(),
        reloader,
    ));
    let task = server::serve_admin(admin_listener, admin);
    Ok(running.with_admin(bound, task))
}
