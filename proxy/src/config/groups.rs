//! Client default key groups (`group = "..."` on a client), checked against the keys that can
//! serve that client: a group no such key is in would refuse every request of the client with
//! 400, so it is a typo to report at load. A tenant's client is checked against its tenant's
//! keys (and the shared ones when the tenant falls back to them); not at all with `[registry]`,
//! where keys of any group may be registered later.

use super::problems::Problems;
use super::{ClientConfig, ProviderConfig, TenantConfig};
use keyrelay_pool::Key;

pub(super) fn client_groups(
    clients: &[ClientConfig],
    providers: &[ProviderConfig],
    tenants: &[TenantConfig],
    registry: bool,
    p: &mut Problems,
) {
    let shared: Vec<&Key> = providers.iter().flat_map(|pc| pc.keys.iter()).collect();
    for (i, c) in clients.iter().enumerate() {
        unserved(c, &shared, &format!("clients[{i}].group"), p);
    }
    if registry {
        return;
    }
    for (t, tc) in tenants.iter().enumerate() {
        let mut keys: Vec<&Key> = tc.pools.iter().flat_map(|tp| tp.keys.iter()).collect();
        if tc.fallback_shared {
            keys.extend(&shared);
        }
        for (i, c) in tc.clients.iter().enumerate() {
            unserved(c, &keys, &format!("tenants[{t}].clients[{i}].group"), p);
        }
    }
}

/// Note a problem when `c` names a default group none of `keys` is in.
fn unserved(c: &ClientConfig, keys: &[&Key], path: &str, p: &mut Problems) {
    let Some(group) = c.group.as_deref() else {
        return;
    };
    if !keys.iter().any(|k| k.group.as_deref() == Some(group)) {
        p.add(
            path,
            format!("no key this client can use is in group \"{group}\""),
        );
    }
}
