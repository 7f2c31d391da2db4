//! The keyrelay id form: a provider's resource id sealed with AES-256-GCM together with a
//! reference to the key that created it, so a later request naming the id goes to that key.
//!
//! `<prefix>kr1_<base64url(nonce | ciphertext | tag)>`, where the plaintext is a 6-byte key
//! reference (a hash of the key's fingerprint, never the key) followed by the id without its
//! prefix, and the associated data is the provider's name and the prefix, so an id cannot be
//! moved to another provider or given another prefix. The nonce is derived from the
//! plaintext by HMAC-SHA256 under a second key (a synthetic IV): the same id always seals to
//! the same keyrelay id, so clients comparing ids (`batch.input_file_id == file.id`) still
//! can, and a nonce repeats only with its own plaintext.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// What marks a keyrelay id, after the provider's prefix.
pub const MARK: &str = "kr1_";
/// Bytes of the key reference.
pub const REF_LEN: usize = 6;
/// A key reference: the first bytes of SHA-256 over the key's fingerprint.
pub type KeyRef = [u8; REF_LEN];

const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// The key reference of a key with this fingerprint.
pub fn key_ref(fingerprint: &str) -> KeyRef {
    let digest = Sha256::digest(fingerprint.as_bytes());
    let mut out = [0u8; REF_LEN];
    out.copy_from_slice(&digest[..REF_LEN]);
    out
}

/// Seals and opens keyrelay ids under keys derived from `[affinity] secret`.
pub struct Codec {
    cipher: Aes256Gcm,
    nonce_key: [u8; 32],
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Codec(*****)")
    }
}

/// A keyrelay id that does not open: forged, altered, truncated, or sealed under another
/// secret or for another provider or prefix.
#[derive(Debug, PartialEq, Eq)]
pub struct Tampered;

impl Codec {
    pub fn new(secret: &str) -> Codec {
        let derive = |label: &[u8]| -> [u8; 32] {
            let mut h = Sha256::new();
            h.update(label);
            h.update(secret.as_bytes());
            h.finalize().into()
        };
        let enc = derive(b"keyrelay affinity v1 encryption\0");
        Codec {
            cipher: Aes256Gcm::new(&enc.into()),
            nonce_key: derive(b"keyrelay affinity v1 nonce\0"),
        }
    }

    fn aad(scope: &str, prefix: &str) -> Vec<u8> {
        let mut aad = Vec::with_capacity(scope.len() + 1 + prefix.len());
        aad.extend_from_slice(scope.as_bytes());
        aad.push(0);
        aad.extend_from_slice(prefix.as_bytes());
        aad
    }

    /// `prefix` + `kr1_` + the sealed (`key`, `rest`); `rest` is the id after `prefix`.
    pub fn seal(&self, scope: &str, prefix: &str, key: &KeyRef, rest: &str) -> String {
        let aad = Self::aad(scope, prefix);
        let mut plain = Vec::with_capacity(REF_LEN + rest.len());
        plain.extend_from_slice(key);
        plain.extend_from_slice(rest.as_bytes());
        let nonce = self.nonce(&aad, &plain);
        let payload = Payload {
            msg: &plain,
            aad: &aad,
        };
        // Encryption fails only past GCM's length limit (64 GiB), which no id comes near.
        let sealed = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), payload)
            .unwrap_or_default();
        let mut raw = Vec::with_capacity(NONCE_LEN + sealed.len());
        raw.extend_from_slice(&nonce);
        raw.extend_from_slice(&sealed);
        let mut out = String::with_capacity(prefix.len() + MARK.len() + raw.len() * 4 / 3 + 4);
        out.push_str(prefix);
        out.push_str(MARK);
        URL_SAFE_NO_PAD.encode_string(&raw, &mut out);
        out
    }

    /// The key reference and the id after its prefix, from the base64 after `kr1_`.
    pub fn open(
        &self,
        scope: &str,
        prefix: &str,
        payload: &str,
    ) -> Result<(KeyRef, String), Tampered> {
        let raw = URL_SAFE_NO_PAD.decode(payload).map_err(|_| Tampered)?;
        if raw.len() < NONCE_LEN + REF_LEN + TAG_LEN {
            return Err(Tampered);
        }
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let aad = Self::aad(scope, prefix);
        let plain = self
            .cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: &aad,
                },
            )
            .map_err(|_| Tampered)?;
        let (key, rest) = plain.split_at(REF_LEN);
        let rest = String::from_utf8(rest.to_vec()).map_err(|_| Tampered)?;
        let mut out = [0u8; REF_LEN];
        out.copy_from_slice(key);
        Ok((out, rest))
    }

    fn nonce(&self, aad: &[u8], plain: &[u8]) -> [u8; NONCE_LEN] {
        // HMAC takes a key of any length.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.nonce_key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(&(aad.len() as u64).to_be_bytes());
        mac.update(aad);
        mac.update(plain);
        let tag = mac.finalize().into_bytes();
        let mut out = [0u8; NONCE_LEN];
        out.copy_from_slice(&tag[..NONCE_LEN]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_open_and_are_stable() {
        let c = Codec::new("a test secret of some length");
        let k = key_ref("abc123def456");
        let id = c.seal("openai", "file-", &k, "AbCdEf123456");
        assert!(id.starts_with("file-kr1_"), "{id}");
        assert!(!id.contains("AbCdEf"), "{id}");
        assert_eq!(id, c.seal("openai", "file-", &k, "AbCdEf123456"));
        let payload = id.strip_prefix("file-kr1_").unwrap();
        assert_eq!(
            c.open("openai", "file-", payload).unwrap(),
            (k, "AbCdEf123456".to_owned())
        );
        assert!(id.len() < 100, "{} chars", id.len());
    }

    #[test]
    fn anything_altered_does_not_open() {
        let c = Codec::new("a test secret of some length");
        let k = key_ref("abc123def456");
        let id = c.seal("openai", "file-", &k, "x1");
        let payload = id.strip_prefix("file-kr1_").unwrap();
        assert_eq!(c.open("openai", "batch_", payload), Err(Tampered));
        assert_eq!(c.open("anthropic", "file-", payload), Err(Tampered));
        assert_eq!(
            Codec::new("another secret").open("openai", "file-", payload),
            Err(Tampered)
        );
        let mut bytes = payload.as_bytes().to_vec();
        let last = bytes.len() - 3;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(bytes).unwrap();
        assert_eq!(c.open("openai", "file-", &altered), Err(Tampered));
        assert_eq!(c.open("openai", "file-", "short"), Err(Tampered));
        assert_eq!(c.open("openai", "file-", "!!!"), Err(Tampered));
    }
}
