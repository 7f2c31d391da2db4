//! What `keyrelay check` prints of tenants (each one's fallback, limits, clients and pools) and
//! of every key, shared or a tenant's: names, fingerprints, limits and key groups only. (A
//! variable a tenant names and the environment lacks never gets this far: loading refuses the
//! file and names it by its path.)

use crate::config::{pool_name, Config};
use keyrelay_pool::Key;

/// One key's line, indented by `indent`: name, fingerprint, rpm and weight, then its `tpm` and
/// key group where it has them. Never its secret.
pub fn key_line(indent: &str, k: &Key) -> String {
    format!(
        "{indent}key {:<24} fp {}  rpm {:<6} weight {}{}{}",
        k.name,
        k.fingerprint,
        k.rpm,
        k.weight,
        k.tpm.map(|t| format!("  tpm {t}")).unwrap_or_default(),
        k.group
            .as_deref()
            .map(|g| format!("  group {g}"))
            .unwrap_or_default()
    )
}

/// One line per tenant, client list and pool, then one per key.
pub fn lines(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if config.tenants.is_empty() {
        out.push("tenants: none".to_owned());
    }
    out.push(match &config.registry {
        None => {
            "registry: off (no [registry] master_key: runtime registration is refused)".to_owned()
        }
        Some(r) => format!(
            "registry: on, keys sealed in {}{}",
            if config.store.is_some() {
                "the store's Redis".to_owned()
            } else {
                r.file.display().to_string()
            },
            if r.previous.is_some() {
                ", previous master key read (run `keyrelay rekey`)"
            } else {
                ""
            }
        ),
    });
    for t in &config.tenants {
        let limit = |rpm: Option<u32>| rpm.map_or_else(|| "none".to_owned(), |r| r.to_string());
        // A token limit is shown only where one is set.
        let tpm = |tpm: Option<u32>| tpm.map(|t| format!(", tpm {t}")).unwrap_or_default();
        out.push(format!(
            "tenant {} (fallback {}, rpm {}{})",
            t.name,
            if t.fallback_shared { "shared" } else { "none" },
            limit(t.rpm),
            tpm(t.tpm)
        ));
        let clients: Vec<String> = t
            .clients
            .iter()
            .map(|c| format!("{} (rpm {}{})", c.name, limit(c.rpm), tpm(c.tpm)))
            .collect();
        out.push(format!("  clients: {}", clients.join(", ")));
        for p in &t.pools {
            out.push(format!(
                "  pool {} ({} keys)",
                pool_name(&t.name, &p.provider),
                p.keys.len()
            ));
            out.extend(p.keys.iter().map(|k| key_line("    ", k)));
        }
    }
    out
}
