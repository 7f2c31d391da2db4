//! A provider API key: its secret (which never prints), its name and its stable fingerprint.
//!
//! A fingerprint names a key wherever the secret must not appear: the dashboard, `/metrics`,
//! logs, `keyrelay check` and the Redis store's field names. Anyone who sees one could test a
//! guessed (or leaked) key against it, so it is derived in one of two ways, both 12 hex digits:
//!
//! - **Keyed** (`[server] fingerprint_secret` set): HMAC-SHA256 keyed by that server secret.
//!   Instances sharing the secret agree (and so share Redis state); without the secret a
//!   fingerprint says nothing testable about a key.
//! - **Unkeyed** (no server secret): PBKDF2-HMAC-SHA256 with a fixed salt and
//!   [`FINGERPRINT_ROUNDS`] rounds. Still the same on every instance, but testing one guess
//!   costs about 10 ms of CPU instead of a microsecond. It is computed once per key at start-up
//!   (and remembered for reloads).
//!
//! v2 of the derivation (this one) replaced a fast HMAC under a fixed public key; since Redis
//! names keys by fingerprint, upgrading starts every key afresh in a shared store (the old
//! fields expire), and changing or setting `fingerprint_secret` does the same.

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

/// Salt of the slow derivation: fixed, so every instance derives the same fingerprint.
const FINGERPRINT_SALT: &[u8] = b"keyrelay key fingerprint v2";
/// PBKDF2 rounds of the unkeyed fingerprint: about 10 ms a key in a release build, once per
/// key at start-up (and cached for reloads), so that testing a guessed key against a
/// fingerprint costs as much, instead of a microsecond.
pub const FINGERPRINT_ROUNDS: u32 = 100_000;
/// Domain prefix of the keyed fingerprint, so it can never equal another HMAC of the secret.
const KEYED_DOMAIN: &[u8] = b"keyrelay key fingerprint v2 keyed\0";

/// The unkeyed fingerprint: the first 12 hex digits of PBKDF2-HMAC-SHA256(secret,
/// [`FINGERPRINT_SALT`], [`FINGERPRINT_ROUNDS`]). Stable across instances; see the module doc
/// for why it is slow.
pub fn fingerprint(secret: &str) -> String {
    Fingerprinter::default().fingerprint(secret)
}

/// How a deployment derives its keys' fingerprints: keyed by the server's
/// `fingerprint_secret` when it has one, else the slow unkeyed [`fingerprint`].
#[derive(Clone, Debug, Default)]
pub struct Fingerprinter {
    server: Option<Secret>,
}

impl Fingerprinter {
    /// Fingerprints keyed by `server_secret`: every instance sharing the secret agrees, and
    /// nobody without it can test a guess against one.
    pub fn keyed(server_secret: Secret) -> Self {
        Fingerprinter {
            server: Some(server_secret),
        }
    }

    /// Whether a server secret keys these fingerprints.
    pub fn is_keyed(&self) -> bool {
        self.server.is_some()
    }

    /// 12 hex digits naming `secret`.
    pub fn fingerprint(&self, secret: &str) -> String {
        match &self.server {
            Some(server) => {
                let mut mac = hmac_sha256(server.expose().as_bytes());
                mac.update(KEYED_DOMAIN);
                mac.update(secret.as_bytes());
                hex::encode(&mac.finalize().into_bytes()[..6])
            }
            None => cached_slow(secret),
        }
    }
}

fn hmac_sha256(key: &[u8]) -> Hmac<Sha256> {
    #[allow(clippy::expect_used, reason = "HMAC accepts keys of any length")]
    Hmac::<Sha256>::new_from_slice(key).expect("hmac takes any key length")
}

/// The slow derivation, remembered per secret (by its SHA-256, in this process only) so a
/// reload or a second pool with the same key pays it once.
fn cached_slow(secret: &str) -> String {
    use sha2::Digest;
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static CACHE: OnceLock<Mutex<HashMap<[u8; 32], String>>> = OnceLock::new();
    let id: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(fp) = cache.lock().ok().and_then(|c| c.get(&id).cloned()) {
        return fp;
    }
    let derived = pbkdf2_sha256(secret.as_bytes(), FINGERPRINT_SALT, FINGERPRINT_ROUNDS);
    let fp = hex::encode(&derived[..6]);
    if let Ok(mut c) = cache.lock() {
        if c.len() >= 4096 {
            c.clear();
        }
        c.insert(id, fp.clone());
    }
    fp
}

/// PBKDF2-HMAC-SHA256 (RFC 8018), first 32-byte block only: all a fingerprint needs. The
/// rounds run on SHA-256's compression function from precomputed HMAC pad states, so each
/// round is exactly two compressions (and the optimised `sha2` code does them even in tests).
fn pbkdf2_sha256(password: &[u8], salt: &[u8], rounds: u32) -> [u8; 32] {
    let mut first = hmac_sha256(password);
    first.update(salt);
    first.update(&1u32.to_be_bytes());
    let out: [u8; 32] = first.finalize().into_bytes().into();
    let (inner, outer) = pad_states(password);
    // Each round hashes a 32-byte message after one key block: one padded block, whose
    // padding (0x80, then the length of 96 bytes in bits) never changes.
    let mut message = [0u8; 64];
    message[32] = 0x80;
    message[56..].copy_from_slice(&768u64.to_be_bytes());
    let mut digest = message;
    message[..32].copy_from_slice(&out);
    let mut acc = words(&out);
    for _ in 1..rounds {
        let mut state = inner;
        compress(&mut state, &message);
        put_words(&state, &mut digest);
        let mut state = outer;
        compress(&mut state, &digest);
        put_words(&state, &mut message);
        for (a, s) in acc.iter_mut().zip(state) {
            *a ^= s;
        }
    }
    let mut result = [0u8; 32];
    put_words(&acc, &mut result);
    result
}

fn words(bytes: &[u8; 32]) -> [u32; 8] {
    let mut w = [0u32; 8];
    for (word, chunk) in w.iter_mut().zip(bytes.chunks_exact(4)) {
        *word = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    w
}

/// The 8 words, big-endian, into the first 32 bytes of `out`.
fn put_words(state: &[u32; 8], out: &mut [u8]) {
    for (chunk, word) in out.chunks_exact_mut(4).zip(state) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
}

/// SHA-256's state after the HMAC key block XOR ipad, and after the one XOR opad.
fn pad_states(key: &[u8]) -> ([u32; 8], [u32; 8]) {
    use sha2::Digest;
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let state = |pad: u8| {
        let padded: [u8; 64] = block.map(|b| b ^ pad);
        let mut st = SHA256_IV;
        compress(&mut st, &padded);
        st
    };
    (state(0x36), state(0x5c))
}

fn compress(state: &mut [u32; 8], block: &[u8; 64]) {
    let block = sha2::digest::generic_array::GenericArray::from_slice(block);
    sha2::compress256(state, std::slice::from_ref(block));
}

const SHA256_IV: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

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
    /// Tokens allowed in any sliding minute, as counted from the provider's answers; `None`:
    /// no limit. Counted by the proxy, which marks the key cooling when it is reached.
    pub tpm: Option<u32>,
    /// The OpenAI organization and project this key bills, sent with it (never taken from
    /// the client).
    pub account: Account,
    /// The named subset of its pool's keys this key is in (e.g. "batch"), if any: a request
    /// naming a group is served by that group's keys only.
    pub group: Option<String>,
}

/// Which OpenAI organization and project a key bills, when its config names them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Account {
    pub organization: Option<String>,
    pub project: Option<String>,
}

impl Key {
    /// A key fingerprinted the unkeyed way ([`fingerprint`]).
    pub fn new(name: impl Into<String>, secret: Secret, rpm: u32, weight: u32) -> Self {
        Self::fingerprinted(name, secret, rpm, weight, &Fingerprinter::default())
    }

    /// A key fingerprinted by `fingerprinter` (keyed by the server secret, when there is one).
    pub fn fingerprinted(
        name: impl Into<String>,
        secret: Secret,
        rpm: u32,
        weight: u32,
        fingerprinter: &Fingerprinter,
    ) -> Self {
        let fingerprint = fingerprinter.fingerprint(secret.expose());
        Key {
            name: name.into(),
            secret,
            fingerprint,
            rpm,
            weight,
            tpm: None,
            account: Account::default(),
            group: None,
        }
    }

    /// The same key, limited to `tpm` tokens a minute (`None`: no limit).
    pub fn with_tpm(mut self, tpm: Option<u32>) -> Self {
        self.tpm = tpm;
        self
    }

    /// The same key, billing `account`.
    pub fn with_account(mut self, account: Account) -> Self {
        self.account = account;
        self
    }

    /// The same key, in `group` (or in none).
    pub fn with_group(mut self, group: Option<String>) -> Self {
        self.group = group;
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
    fn pbkdf2_matches_the_published_vectors() {
        // PBKDF2-HMAC-SHA256, P = "password", S = "salt", 32 bytes.
        let one = pbkdf2_sha256(b"password", b"salt", 1);
        assert_eq!(
            hex::encode(one),
            "120fb6cffcf8b32c43e7225256c4f837a86548c92ccc35480805987cb70be17b"
        );
        let many = pbkdf2_sha256(b"password", b"salt", 4096);
        assert_eq!(
            hex::encode(many),
            "c5e478d59288c841aa530db6845c4c8d962893a001ce4e11a4963873aa98134a"
        );
    }

    #[test]
    fn unkeyed_fingerprint_is_the_slow_derivation_not_a_fast_hash() {
        let fp = fingerprint("sk-guessable");
        let slow = pbkdf2_sha256(b"sk-guessable", FINGERPRINT_SALT, FINGERPRINT_ROUNDS);
        assert_eq!(fp, hex::encode(&slow[..6]));
        // One round (what a fast hash would amount to) gives something else.
        let fast = pbkdf2_sha256(b"sk-guessable", FINGERPRINT_SALT, 1);
        assert_ne!(fp, hex::encode(&fast[..6]));
    }

    #[test]
    fn keyed_fingerprints_depend_on_the_server_secret() {
        let a = Fingerprinter::keyed(Secret::new("server-secret-a"));
        let b = Fingerprinter::keyed(Secret::new("server-secret-b"));
        let fa = a.fingerprint("sk-same");
        assert_eq!(fa.len(), 12);
        assert_eq!(fa, a.fingerprint("sk-same"));
        assert_ne!(fa, b.fingerprint("sk-same"));
        assert_ne!(fa, fingerprint("sk-same"));
        let k = Key::fingerprinted("k", Secret::new("sk-same"), 1, 1, &a);
        assert_eq!(k.fingerprint, fa);
        assert!(!format!("{a:?}").contains("server-secret"));
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
