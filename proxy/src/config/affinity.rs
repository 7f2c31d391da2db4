//! The `[affinity]` section: the secret that seals resource ids to the key that created them,
//! what to do with ids keyrelay did not seal, and how much of a JSON answer is rewritten.

use super::problems::Problems;
use super::raw::RawAffinity;
use super::secrets::Env;
use super::{defaults, AffinityConfig, AffinityMode, UnknownIds};

pub(super) fn affinity(a: &RawAffinity, env: &dyn Env, p: &mut Problems) -> AffinityConfig {
    let secret = a
        .secret
        .as_deref()
        .and_then(|r| p.secret("affinity.secret", r, env));
    if secret.as_ref().is_some_and(|s| s.expose().len() < 16) {
        p.add(
            "affinity.secret",
            "too short: use at least 16 random characters (e.g. `openssl rand -hex 32`)",
        );
    }
    let unknown_ids = match a.unknown_ids.as_deref() {
        None => defaults::UNKNOWN_IDS,
        Some("pass") => UnknownIds::Pass,
        Some("refuse") => UnknownIds::Refuse,
        Some(other) => {
            p.add(
                "affinity.unknown_ids",
                format!("\"{other}\" is not one of \"pass\", \"refuse\""),
            );
            defaults::UNKNOWN_IDS
        }
    };
    let max_rewrite_bytes = match a.max_rewrite_bytes {
        None => defaults::MAX_REWRITE_BYTES,
        Some(n) if n > 0 => usize::try_from(n).unwrap_or(usize::MAX),
        Some(_) => {
            p.add("affinity.max_rewrite_bytes", "must be a positive number");
            defaults::MAX_REWRITE_BYTES
        }
    };
    let mode = match a.mode.as_deref() {
        None => defaults::AFFINITY_MODE,
        Some("seal") => AffinityMode::Seal,
        Some("map") => AffinityMode::Map,
        Some(other) => {
            p.add(
                "affinity.mode",
                format!("\"{other}\" is not one of \"seal\", \"map\""),
            );
            defaults::AFFINITY_MODE
        }
    };
    let map_ttl = p.duration("affinity.map_ttl", a.map_ttl.as_deref(), defaults::MAP_TTL);
    if map_ttl.is_zero() {
        p.add("affinity.map_ttl", "must be longer than zero");
    }
    AffinityConfig {
        secret,
        unknown_ids,
        max_rewrite_bytes,
        mode,
        map_ttl,
    }
}
