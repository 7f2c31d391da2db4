//! Test support for the store contract: the harness and a redis-server of the test's own.

mod env;
mod redis;

pub use env::*;
pub use redis::RedisServer;
