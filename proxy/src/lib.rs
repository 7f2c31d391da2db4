//! keyrelay: an LLM reverse proxy that rotates provider API keys from a shared pool.

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
    start_with_store(config, store).await
}

/// The pool store `config` asks for.
pub async fn build_store(config: &Config) -> Result<Arc<dyn Store>, StartError> {
    Ok(match &config.store {
        None => Arc::new(MemoryStore::new()),
        Some(s) => {
            let store = RedisStore::connect(&s.target, s.settings.clone())
                .await
                .map_err(StartError::Setup)?;
            store
        }
    })
}

/// Start keyrelay with `config` and a given pool store.
pub async fn start_with_store(
    config: Config,
    store: Arc<dyn Store>,
) -> Result<Running, StartError> {
    let app = Arc::new(App::new(&config, store, Metrics::new()).map_err(StartError::Setup)?);
    let addr = config.server.listen;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Listen { addr, source })?;
    server::serve(listener, app, config.server.header_read_timeout)
        .map_err(|source| StartError::Listen { addr, source })
}
