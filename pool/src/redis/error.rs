//! What can go wrong between the shared store and Redis, with no URL or password in any message.

use deadpool_redis::redis::RedisError;
use std::time::Duration;

/// A failure of the shared store.
///
/// No message carries a Redis URL or its password: where a library's text could echo the URL
/// (parsing it, opening a connection), only that text with anything URL-like cut is kept. A
/// command's error is kept whole as the source: it is Redis's answer or an I/O failure on an
/// open connection, neither of which names the URL.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The target cannot make a connection: a malformed URL or an unusable setting.
    #[error("redis store: bad configuration: {0}")]
    Config(String),
    /// No connection could be opened or taken from the pool (refused, TLS, AUTH, pool closed).
    #[error("redis store: cannot connect: {0}")]
    Connect(String),
    /// Redis answered a command with an error, or the connection broke during it.
    #[error("redis store: command failed: {}", describe(&.0.to_string()))]
    Command(#[source] RedisError),
    /// Redis did not answer within this bound.
    #[error("redis store: no answer within {0:?}")]
    Timeout(Duration),
}

impl StoreError {
    /// The kind of failure, as a fixed word (for holding back repeated warnings).
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Config(_) => "config",
            StoreError::Connect(_) => "connect",
            StoreError::Command(_) => "command",
            StoreError::Timeout(_) => "timeout",
        }
    }

    /// A configuration error from a library's error, its text described.
    pub(super) fn config(e: &impl std::fmt::Display) -> StoreError {
        StoreError::Config(describe(&e.to_string()))
    }

    /// A connection error from a library's error, its text described.
    pub(super) fn connect(e: &impl std::fmt::Display) -> StoreError {
        StoreError::Connect(describe(&e.to_string()))
    }
}

/// An error text with anything URL-like cut, in case a library echoes the URL (and password).
fn describe(text: &str) -> String {
    if text.contains("://") || text.contains('@') {
        "invalid redis URL".to_owned()
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_never_carry_a_url_or_password() {
        let leaky = "cannot parse redis://user:hunter2@db.internal:6379/0";
        for e in [StoreError::config(&leaky), StoreError::connect(&leaky)] {
            let text = e.to_string();
            assert!(!text.contains("hunter2"), "{text}");
            assert!(!text.contains("db.internal"), "{text}");
            assert!(text.contains("invalid redis URL"), "{text}");
        }
        let plain = StoreError::connect(&"Connection refused (os error 111)");
        assert_eq!(
            plain.to_string(),
            "redis store: cannot connect: Connection refused (os error 111)"
        );
    }

    #[test]
    fn a_command_error_keeps_its_cause() {
        let cause = RedisError::from((deadpool_redis::redis::ErrorKind::Io, "connection closed"));
        let e = StoreError::Command(cause);
        let source = std::error::Error::source(&e).map(ToString::to_string);
        assert!(source.is_some_and(|s| s.contains("connection closed")));
        assert!(e.to_string().contains("connection closed"), "{e}");
    }
}
