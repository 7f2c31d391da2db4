//! Ports for test servers: a candidate port for a child that cannot report a port-0 bind, and
//! a port held closed (connections refused) for as long as a test needs one.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test support"
)]

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

/// The lowest port the kernel hands out for `bind(0)` and outgoing connections.
fn ephemeral_floor() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// A port for a child that must be told its port (redis-server cannot report a port-0 bind):
/// picked at random below the kernel's ephemeral range, so no `bind(0)` or outgoing connection
/// takes it meanwhile, with its cluster bus port (+10000) below that range too, and both free
/// now. Another test may still pick the same one: starts retry on a fresh port when the child
/// cannot bind.
pub fn candidate_port() -> u16 {
    let top = ephemeral_floor().saturating_sub(10_001).max(10_001);
    for _ in 0..1_000 {
        let random = RandomState::new().build_hasher().finish();
        let port = 10_000 + u16::try_from(random % u64::from(top - 10_000)).unwrap();
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 10_000) {
            return port;
        }
    }
    panic!("no free port pair found");
}

/// A loopback port where nothing listens for as long as this lives: a socket bound to it but
/// never listening, so a connection is refused at once and no other process can take it.
pub struct ClosedPort {
    pub port: u16,
    _socket: tokio::net::TcpSocket,
}

impl ClosedPort {
    pub fn new() -> ClosedPort {
        Self::on(0).expect("binding port 0")
    }

    /// `port` held closed, or `None` when something else has it.
    pub fn on(port: u16) -> Option<ClosedPort> {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(([127, 0, 0, 1], port).into()).ok()?;
        let port = socket.local_addr().unwrap().port();
        Some(ClosedPort {
            port,
            _socket: socket,
        })
    }
}
