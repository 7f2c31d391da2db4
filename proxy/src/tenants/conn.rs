//! A connection to the store's Redis for the tenants' own data (limit counters, registered
//! keys): one multiplexed connection, opened on first use and again after a failure.

use crate::config::StoreConfig;
use deadpool_redis::redis;
use keyrelay_pool::RedisTarget;
use std::time::Duration;

#[derive(Clone)]
pub enum Conn {
    Single(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl Conn {
    pub async fn query<T: redis::FromRedisValue>(
        &mut self,
        cmd: &redis::Cmd,
    ) -> redis::RedisResult<T> {
        match self {
            Conn::Single(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => cmd.query_async(c).await,
        }
    }

    pub async fn pipe<T: redis::FromRedisValue>(
        &mut self,
        p: &redis::Pipeline,
    ) -> redis::RedisResult<T> {
        match self {
            Conn::Single(c) => p.query_async(c).await,
            Conn::Cluster(c) => p.query_async(c).await,
        }
    }
}

/// Where to connect, and the connection once open.
pub struct Link {
    target: RedisTarget,
    connect_timeout: Duration,
    conn: tokio::sync::Mutex<Option<Conn>>,
}

impl Link {
    pub fn new(s: &StoreConfig) -> Link {
        Link {
            target: s.target.clone(),
            connect_timeout: s.settings.connect_timeout.max(Duration::from_millis(500)),
            conn: tokio::sync::Mutex::new(None),
        }
    }

    /// The open connection, or a new one; `None` when Redis cannot be reached in time.
    pub async fn get(&self) -> Option<Conn> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Some(c.clone());
        }
        let open = async {
            match &self.target {
                RedisTarget::Single(url) => {
                    let client = redis::Client::open(url.as_str())?;
                    client
                        .get_multiplexed_async_connection()
                        .await
                        .map(Conn::Single)
                }
                RedisTarget::Cluster(urls) => {
                    let client = redis::cluster::ClusterClient::new(urls.clone())?;
                    client.get_async_connection().await.map(Conn::Cluster)
                }
            }
        };
        match tokio::time::timeout(self.connect_timeout, open).await {
            Ok(Ok(c)) => {
                *slot = Some(c.clone());
                Some(c)
            }
            Ok(Err(e)) => {
                tracing::warn!(error = ?e.kind(), "cannot reach Redis for tenant data");
                None
            }
            Err(_) => None,
        }
    }

    /// Drop the connection after a failure; the next call opens another.
    pub async fn reset(&self) {
        *self.conn.lock().await = None;
    }
}
