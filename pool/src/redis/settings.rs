//! The shared store's timeouts and outage behaviour, as configured.

use std::time::Duration;

/// Timeouts and outage behaviour of the shared store.
#[derive(Clone, Debug)]
pub struct RedisSettings {
    /// Opening one connection (TCP, TLS, AUTH).
    pub connect_timeout: Duration,
    /// Waiting for a pooled connection.
    pub wait_timeout: Duration,
    /// One command, from send to answer. The most a request ever waits on Redis.
    pub command_timeout: Duration,
    /// First probe delay after Redis is lost; doubles up to `probe_max_interval`.
    pub probe_interval: Duration,
    pub probe_max_interval: Duration,
    /// Instances sharing the pool; each enforces `1/instances` of a limit while degraded.
    pub instances: u32,
    /// The pools this store will serve, so the health probe checks their slots from the start
    /// (it adds every pool it has served since). Not a config field: filled from the providers.
    pub pools: Vec<String>,
    /// How long after "redis is back" is logged a flap stays unlogged, so a flapping Redis
    /// logs one line when it goes and one when it is back. Not a config field.
    pub recovery_settle: Duration,
    /// While shared, how often this process's memory is brought in line with the disables in
    /// Redis, so that in an outage it honours those taken on other instances. Not a config
    /// field.
    pub sync_interval: Duration,
    /// How long an instance may spend a leased share of a key's minute locally (see
    /// `shares.rs`); zero takes no leases: one script call per attempt.
    pub lease_time: Duration,
    /// The most requests one lease takes (besides 1% of the key's rpm, and what is left of the
    /// Redis second it is counted in).
    pub lease_max: u32,
}

impl Default for RedisSettings {
    fn default() -> Self {
        RedisSettings {
            connect_timeout: Duration::from_millis(50),
            wait_timeout: Duration::from_millis(20),
            command_timeout: Duration::from_millis(50),
            probe_interval: Duration::from_millis(100),
            probe_max_interval: Duration::from_secs(2),
            instances: 1,
            pools: Vec::new(),
            recovery_settle: Duration::from_secs(1),
            sync_interval: Duration::from_secs(2),
            lease_time: Duration::ZERO,
            lease_max: 64,
        }
    }
}
