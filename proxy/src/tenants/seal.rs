//! Registered keys at rest: each sealed with AES-256-GCM under the master key, with a fresh
//! random nonce per record and the record's tenant, name and key group as associated data, so a
//! record copied under another tenant's (or key's) name, or moved to another group, does not open. A previous master key is kept
//! for reading while `keyrelay rekey` seals every record again under the current one.

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use keyrelay_pool::Secret;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A sealed secret as stored: which master key sealed it, the nonce and the ciphertext (with
/// its tag), hex-encoded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    pub key_id: String,
    pub nonce: String,
    pub data: String,
}

/// Why a sealed secret did not open.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("sealed under a master key this instance does not have")]
    UnknownKey,
    /// Tampered, moved to another tenant or name, or not ours: AES-GCM says no more.
    #[error("does not open (moved, altered, or sealed under another key)")]
    Rejected,
}

/// One master key, ready to use, with its public id.
struct Master {
    id: String,
    cipher: Aes256Gcm,
}

impl Master {
    fn new(bytes: &[u8; 32]) -> Master {
        // The id names the key in records without telling anything about it.
        let mut h = Sha256::new();
        h.update(b"keyrelay master key id\0");
        h.update(bytes);
        Master {
            id: hex::encode(&h.finalize()[..6]),
            cipher: Aes256Gcm::new(bytes.into()),
        }
    }
}

/// The current master key and, during a rotation, the previous one.
pub struct Masters {
    current: Master,
    previous: Option<Master>,
}

impl Masters {
    pub fn new(current: &[u8; 32], previous: Option<&[u8; 32]>) -> Masters {
        Masters {
            current: Master::new(current),
            previous: previous.map(Master::new),
        }
    }

    /// Seal `plain` for `tenant`'s key `name` (in `group`) under the current master key.
    pub fn seal(&self, tenant: &str, name: &str, group: Option<&str>, plain: &[u8]) -> Sealed {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let aad = associated(tenant, name, group);
        let payload = Payload {
            msg: plain,
            aad: &aad,
        };
        // Encryption only fails for inputs past 64 GiB; a key is a few hundred bytes.
        let data = self
            .current
            .cipher
            .encrypt(&nonce, payload)
            .unwrap_or_default();
        Sealed {
            key_id: self.current.id.clone(),
            nonce: hex::encode(nonce),
            data: hex::encode(data),
        }
    }

    /// Open `sealed` as `tenant`'s key `name` in `group`.
    pub fn open(
        &self,
        tenant: &str,
        name: &str,
        group: Option<&str>,
        sealed: &Sealed,
    ) -> Result<Secret, SealError> {
        let master = [Some(&self.current), self.previous.as_ref()]
            .into_iter()
            .flatten()
            .find(|m| m.id == sealed.key_id)
            .ok_or(SealError::UnknownKey)?;
        let nonce = hex::decode(&sealed.nonce).map_err(|_| SealError::Rejected)?;
        let data = hex::decode(&sealed.data).map_err(|_| SealError::Rejected)?;
        if nonce.len() != 12 {
            return Err(SealError::Rejected);
        }
        let aad = associated(tenant, name, group);
        let plain = master
            .cipher
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &data,
                    aad: &aad,
                },
            )
            .map_err(|_| SealError::Rejected)?;
        let text = String::from_utf8(plain).map_err(|_| SealError::Rejected)?;
        Ok(Secret::new(text))
    }

    /// Whether `sealed` is under an older master key (for `rekey`).
    pub fn is_stale(&self, sealed: &Sealed) -> bool {
        sealed.key_id != self.current.id
    }
}

/// The associated data binding a record to its place: a version, the tenant and the name,
/// and the group when there is one, NUL-separated (none may hold a NUL). A record with no
/// group binds what records did before groups existed, so those still open.
fn associated(tenant: &str, name: &str, group: Option<&str>) -> Vec<u8> {
    let mut out = b"keyrelay key record v1\0".to_vec();
    out.extend_from_slice(tenant.as_bytes());
    out.push(0);
    out.extend_from_slice(name.as_bytes());
    if let Some(group) = group {
        out.extend_from_slice(b"\0group\0");
        out.extend_from_slice(group.as_bytes());
    }
    out
}

/// A master key as configured: 64 hex digits (32 bytes), e.g. from `openssl rand -hex 32`.
pub fn parse_master(text: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(text.trim()).ok()?;
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "sk-live-0123456789abcdefghijklmnop";

    #[test]
    fn a_record_opens_only_where_it_was_sealed() {
        let m = Masters::new(&[7; 32], None);
        let a = m.seal("acme", "main", None, SECRET.as_bytes());
        let b = m.seal("acme", "main", None, SECRET.as_bytes());
        assert_ne!(a.nonce, b.nonce, "a fresh nonce per record");
        assert_eq!(m.open("acme", "main", None, &a).unwrap().expose(), SECRET);
        // Moved to another tenant or name: refused.
        assert_eq!(m.open("other", "main", None, &a), Err(SealError::Rejected));
        assert_eq!(m.open("acme", "spare", None, &a), Err(SealError::Rejected));
        // Altered: refused.
        let mut bad = a.clone();
        bad.data
            .replace_range(0..2, if &bad.data[0..2] == "00" { "01" } else { "00" });
        assert_eq!(m.open("acme", "main", None, &bad), Err(SealError::Rejected));
        // Sealed in a group: opens in that group only (and a record of none in none).
        let g = m.seal("acme", "main", Some("batch"), SECRET.as_bytes());
        assert!(m.open("acme", "main", Some("batch"), &g).is_ok());
        assert_eq!(m.open("acme", "main", None, &g), Err(SealError::Rejected));
        assert_eq!(
            m.open("acme", "main", Some("live"), &g),
            Err(SealError::Rejected)
        );
        assert_eq!(
            m.open("acme", "main", Some("batch"), &a),
            Err(SealError::Rejected)
        );
        // No fragment of the secret in what is stored.
        let stored = serde_json::to_string(&a).unwrap();
        for f in SECRET.as_bytes().windows(12) {
            assert!(!stored.contains(std::str::from_utf8(f).unwrap()));
        }
    }

    #[test]
    fn the_previous_master_key_reads_until_rekeyed() {
        let old = Masters::new(&[1; 32], None);
        let sealed = old.seal("t", "k", None, SECRET.as_bytes());
        let rotating = Masters::new(&[2; 32], Some(&[1; 32]));
        assert!(rotating.is_stale(&sealed));
        let opened = rotating.open("t", "k", None, &sealed).unwrap();
        let resealed = rotating.seal("t", "k", None, opened.expose().as_bytes());
        assert!(!rotating.is_stale(&resealed));
        let after = Masters::new(&[2; 32], None);
        assert_eq!(
            after.open("t", "k", None, &sealed),
            Err(SealError::UnknownKey)
        );
        assert_eq!(
            after.open("t", "k", None, &resealed).unwrap().expose(),
            SECRET
        );
        assert_eq!(parse_master(&"ab".repeat(32)), Some([0xab; 32]));
        assert_eq!(parse_master("abc"), None);
    }
}
