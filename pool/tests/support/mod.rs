//! Test support for the store tests: the harness, a redis-server of the test's own, and Redis
//! stores on it.
#![allow(
    dead_code,
    reason = "shared by several test binaries; each uses part of it"
)]

mod env;
mod redis;

pub use env::*;
pub use redis::RedisServer;

use keyrelay_pool::{RedisSettings, RedisStore, RedisTarget};
use std::sync::Arc;
use tokio::time::Duration;

/// A Redis store on `server` that notices an outage quickly and finds Redis again within
/// a few hundred ms; `tune` changes any setting.
pub async fn redis_store(
    server: &RedisServer,
    tune: impl FnOnce(&mut RedisSettings),
) -> Arc<RedisStore> {
    let mut settings = RedisSettings {
        connect_timeout: Duration::from_millis(500),
        wait_timeout: Duration::from_millis(500),
        command_timeout: Duration::from_millis(500),
        probe_interval: Duration::from_millis(20),
        probe_max_interval: Duration::from_millis(200),
        ..RedisSettings::default()
    };
    tune(&mut settings);
    match RedisStore::connect(&RedisTarget::Single(server.url()), settings).await {
        Ok(store) => store,
        Err(e) => panic!("redis store: {e}"),
    }
}
