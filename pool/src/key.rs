//! A provider API key: its secret (which never prints), its name and its stable fingerprint.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;

/// A secret string. `Debug` and `Display` print `*****`; only [`Secret::expose`] reveals it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself: call only where it is put on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("*****")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("*****")
    }
}

/// The domain key of the fingerprint hash. Fixed, so every instance derives the same fingerprint
/// for the same secret and a shared store can name keys without ever holding them.
const FINGERPRINT_KEY: &[u8] = b"keyrelay key fingerprint v1";

/// First 12 hex digits of HMAC-SHA256(domain key, secret): stable across instances, and
/// reveals nothing usable about the secret.
pub fn fingerprint(secret: &str) -> String {
    #[allow(clippy::expect_used, reason = "HMAC accepts keys of any length")]
    let mut mac =
        Hmac::<Sha256>::new_from_slice(FINGERPRINT_KEY).expect("hmac takes any key length");
    mac.update(secret.as_bytes());
    let digest = mac.finalize().into_bytes();
    hex::encode(&digest[..6])
}

/// One key of a provider's pool.
#[derive(Clone, Debug)]
pub struct Key {
    pub name: String,
    pub secret: Secret,
    pub fingerprint: String,
    /// Requests allowed in any sliding minute.
    pub rpm: u32,
    /// Share of traffic under the weighted strategy.
    pub weight: u32,
    /// The OpenAI organization and project this key bills, sent with it (never taken from
    /// the client).
    pub account: Account,
}

/// Which OpenAI organization and project a key bills, when its config names them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Account {
    pub organization: Option<String>,
    pub project: Option<String>,
}

impl Key {
    pub fn new(name: impl Into<String>, secret: Secret, rpm: u32, weight: u32) -> Self {
        let fingerprint = fingerprint(secret.expose());
        Key {
            name: name.into(),
            secret,
            fingerprint,
            rpm,
            weight,
            account: Account::default(),
        }
    }

    /// The same key, billing `account`.
    pub fn with_account(mut self, account: Account) -> Self {
        self.account = account;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("sk-very-secret-value");
        assert_eq!(format!("{s:?}"), "*****");
        assert_eq!(format!("{s}"), "*****");
        let k = Key::new("k1", s, 10, 1);
        let dbg = format!("{k:?}");
        assert!(!dbg.contains("very-secret"), "{dbg}");
    }

    #[test]
    fn fingerprint_is_stable_short_and_distinct() {
        let a = fingerprint("sk-aaaa");
        assert_eq!(a, fingerprint("sk-aaaa"));
        assert_eq!(a.len(), 12);
        assert_ne!(a, fingerprint("sk-aaab"));
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
