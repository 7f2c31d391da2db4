//! Redis connections: where they come from (deadpool, single node or Cluster) and the
//! multiplexed handle the hot path clones.
//!
//! deadpool checks every checked-out connection with a PING before handing it over. At one
//! round trip per attempt that would double Redis traffic, so the store checks a connection
//! out once, keeps its multiplexed handle (cheap to clone, safe to share) and returns to the
//! pool only to replace a broken one.

use super::{RedisSettings, StoreError};
use deadpool_redis::redis::{self, Cmd, FromRedisValue, RedisResult, Script};
use deadpool_redis::{PoolConfig, Runtime, Timeouts};

/// Where the shared state lives. The URLs may carry a password: never log them.
#[derive(Clone)]
pub enum RedisTarget {
    /// One Redis (`redis://` or `rediss://`).
    Single(String),
    /// Redis Cluster seed nodes.
    Cluster(Vec<String>),
}

impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RedisTarget::Single(_) => f.write_str("RedisTarget::Single(*****)"),
            RedisTarget::Cluster(urls) => write!(f, "RedisTarget::Cluster({} nodes)", urls.len()),
        }
    }
}

#[derive(Clone)]
pub(super) enum Conn {
    Single(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl Conn {
    pub(super) async fn query<T: FromRedisValue>(&mut self, cmd: &Cmd) -> RedisResult<T> {
        match self {
            Conn::Single(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => cmd.query_async(c).await,
        }
    }

    pub(super) async fn query_pipe<T: FromRedisValue>(
        &mut self,
        pipe: &redis::Pipeline,
    ) -> RedisResult<T> {
        match self {
            Conn::Single(c) => pipe.query_async(c).await,
            Conn::Cluster(c) => pipe.query_async(c).await,
        }
    }

    pub(super) async fn load(&mut self, script: &Script) -> RedisResult<String> {
        match self {
            Conn::Single(c) => script.load_async(c).await,
            Conn::Cluster(c) => script.load_async(c).await,
        }
    }
}

pub(super) enum Pools {
    Single(deadpool_redis::Pool),
    Cluster(deadpool_redis::cluster::Pool),
}

fn pool_config(settings: &RedisSettings) -> PoolConfig {
    let mut config = PoolConfig::new(2);
    config.timeouts = Timeouts {
        wait: Some(settings.wait_timeout),
        create: Some(settings.connect_timeout),
        recycle: Some(settings.command_timeout),
    };
    config
}

impl Pools {
    pub(super) fn new(target: &RedisTarget, settings: &RedisSettings) -> Result<Pools, StoreError> {
        match target {
            RedisTarget::Single(url) => {
                // deadpool's own Config resets the TCP settings; build the manager from a
                // ConnectionInfo instead, with TCP_NODELAY: the hot path writes one small
                // command per attempt and must not wait on Nagle for the previous answer.
                let info = redis::IntoConnectionInfo::into_connection_info(url.as_str())
                    .map_err(|e| StoreError::config(&e))?;
                let info =
                    info.set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
                // The store bounds every command itself (`command_timeout`, and NOSCRIPT's reload
                // within it); a second, library-side timer per command would only cost.
                let connection = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(settings.connect_timeout))
                    .set_response_timeout(None);
                let manager = deadpool_redis::Manager::new_with_config(info, connection)
                    .map_err(|e| StoreError::config(&e))?;
                deadpool_redis::Pool::builder(manager)
                    .config(pool_config(settings))
                    .runtime(Runtime::Tokio1)
                    .build()
                    .map(Pools::Single)
                    .map_err(|e| StoreError::config(&e))
            }
            RedisTarget::Cluster(urls) => {
                let mut config = deadpool_redis::cluster::Config::from_urls(urls.clone());
                config.pool = Some(pool_config(settings));
                config
                    .create_pool(Some(Runtime::Tokio1))
                    .map(Pools::Cluster)
                    .map_err(|e| StoreError::config(&e))
            }
        }
    }

    /// Whether the store is on Redis Cluster (where a failure may be one slot's, not all).
    pub(super) fn is_cluster(&self) -> bool {
        matches!(self, Pools::Cluster(_))
    }

    /// A new connection, taken out of the pool for keeps.
    pub(super) async fn fresh(&self) -> Result<Conn, StoreError> {
        match self {
            Pools::Single(p) => {
                let c = p.get().await.map_err(|e| StoreError::connect(&e))?;
                Ok(Conn::Single(deadpool_redis::Connection::take(c)))
            }
            Pools::Cluster(p) => {
                let c = p.get().await.map_err(|e| StoreError::connect(&e))?;
                Ok(Conn::Cluster(deadpool_redis::cluster::Connection::take(c)))
            }
        }
    }
}
