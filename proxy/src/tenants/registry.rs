//! Keys registered at run time: sealed into the records store, and served from pools rebuilt
//! whenever the records change (each instance polls the store's version every 250 ms, so a key
//! registered on one serves on all within a second). A tenant's runtime pool for a provider
//! holds its configured keys for that provider plus its registered ones.

use super::records::{Records, Stored, TenantRecord};
use super::seal::Masters;
use crate::config::{pool_name, Config, ProviderConfig, RegistryConfig};
use crate::routes::Provider;
use crate::service::Shared;
use keyrelay_metrics::Tenant;
use keyrelay_pool::{Fingerprinter, Key, Secret};
use sha2::Digest;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::Duration;
use subtle::ConstantTimeEq;

const POLL: Duration = Duration::from_millis(250);

/// The registry of one config: its store, master keys, and the pools built from it.
pub struct Registry {
    pub(super) masters: Masters,
    pub(super) records: Records,
    pub(super) audit_file: Option<std::path::PathBuf>,
    pub(super) fingerprinter: Fingerprinter,
    pub(super) config: Config,
    shared: Shared,
    bases: Vec<Arc<Provider>>,
    pools: RwLock<HashMap<String, Arc<Provider>>>,
    /// Tenants created at run time.
    runtime: RwLock<Vec<TenantRecord>>,
    seen: Mutex<Option<String>>,
    pub(super) clients: crate::upstream::Clients,
}

/// The records store `config` asks for: the store's Redis, else the local file.
pub fn records(config: &Config, rc: &RegistryConfig) -> Records {
    match &config.store {
        Some(s) => Records::Redis(super::conn::Link::new(s)),
        None => Records::File {
            path: rc.file.clone(),
            lock: tokio::sync::Mutex::new(()),
        },
    }
}

impl Registry {
    /// The registry, polling its store, when `[registry]` is configured.
    pub fn start(
        config: &Config,
        shared: &Shared,
        bases: &[Arc<Provider>],
    ) -> Option<Arc<Registry>> {
        let rc = config.registry.as_ref()?;
        let registry = Arc::new(Registry {
            masters: Masters::new(&rc.master, rc.previous.as_ref()),
            records: records(config, rc),
            audit_file: config.admin.audit_file.clone(),
            fingerprinter: rc.fingerprinter.clone(),
            config: config.clone(),
            shared: shared.clone(),
            bases: bases.to_vec(),
            pools: RwLock::default(),
            runtime: RwLock::default(),
            seen: Mutex::default(),
            clients: crate::upstream::Clients::speaking(config, crate::upstream::Protocols::Any),
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(poll(Arc::downgrade(&registry)));
        }
        Some(registry)
    }

    /// The runtime pool named `name` (`tenant.provider`), if keys are registered for it.
    pub fn pool(&self, name: &str) -> Option<Arc<Provider>> {
        self.pools
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    /// Every runtime pool, for status and metrics.
    pub fn pools(&self) -> Vec<Arc<Provider>> {
        let pools = self.pools.read().unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<_> = pools.values().cloned().collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Re-read the records if their version moved (or `force`), and rebuild the pools.
    pub async fn refresh(&self, force: bool) {
        let version = match self.records.version().await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "registered keys: cannot read the store's version");
                return;
            }
        };
        let unchanged = self
            .seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            == Some(&version);
        if unchanged && !force {
            return;
        }
        match self.records.everything().await {
            Ok(stored) => {
                self.apply(&stored);
                *self.seen.lock().unwrap_or_else(PoisonError::into_inner) = Some(version);
            }
            Err(e) => tracing::warn!(error = %e, "registered keys: cannot read the store"),
        }
    }

    /// Build every pool that has registered keys: the tenant's configured keys for that
    /// provider, then its registered ones (a registered key replaces a configured one of its
    /// name).
    fn apply(&self, stored: &Stored) {
        *self.runtime.write().unwrap_or_else(PoisonError::into_inner) = stored.tenants.clone();
        let mut groups: HashMap<(String, String), Vec<Key>> = HashMap::new();
        for r in &stored.keys {
            match self
                .masters
                .open(&r.tenant, &r.name, r.group.as_deref(), &r.sealed)
            {
                Ok(secret) => groups
                    .entry((r.tenant.clone(), r.provider.clone()))
                    .or_default()
                    .push(
                        self.key(&r.name, secret, r.rpm)
                            .with_tpm(r.tpm)
                            .with_group(r.group.clone()),
                    ),
                Err(e) => {
                    tracing::warn!(tenant = %r.tenant, key = %r.name, error = %e, "a registered key does not open; not served")
                }
            }
        }
        let mut pools = HashMap::new();
        for ((tenant, provider), registered) in groups {
            match self.build(&tenant, &provider, registered) {
                Some(p) => {
                    pools.insert(p.name.clone(), Arc::new(p));
                }
                None => {
                    tracing::warn!(%tenant, %provider, "registered keys for an unknown tenant or provider; not served")
                }
            }
        }
        *self.pools.write().unwrap_or_else(PoisonError::into_inner) = pools;
    }

    pub(super) fn key(&self, name: &str, secret: Secret, rpm: u32) -> Key {
        Key::fingerprinted(name, secret, rpm, 1, &self.fingerprinter)
    }

    /// The runtime tenant a presented credential is the client token of.
    pub fn runtime_client(&self, presented: &[&[u8]]) -> Option<String> {
        let runtime = self.runtime.read().unwrap_or_else(PoisonError::into_inner);
        presented.iter().find_map(|p| {
            let digest = hex::encode(sha2::Sha256::digest(p));
            runtime
                .iter()
                .find(|t| bool::from(t.client_digest.as_bytes().ct_eq(digest.as_bytes())))
                .map(|t| t.name.clone())
        })
    }

    /// The runtime tenant whose admin token has this digest (hex).
    pub fn runtime_admin(&self, digest: &str) -> Option<String> {
        let runtime = self.runtime.read().unwrap_or_else(PoisonError::into_inner);
        runtime
            .iter()
            .find(|t| bool::from(t.admin_digest.as_bytes().ct_eq(digest.as_bytes())))
            .map(|t| t.name.clone())
    }

    /// Whether `tenant` exists: configured, or created at run time.
    pub fn has_tenant(&self, tenant: &str) -> bool {
        self.config.tenants.iter().any(|t| t.name == tenant)
            || self
                .runtime
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .any(|t| t.name == tenant)
    }

    fn build(&self, tenant: &str, provider: &str, registered: Vec<Key>) -> Option<Provider> {
        let tc = self.config.tenants.iter().find(|t| t.name == tenant);
        if tc.is_none() && !self.has_tenant(tenant) {
            return None;
        }
        let pc = self.config.providers.iter().find(|p| p.name == provider)?;
        let base = self.bases.iter().find(|p| p.name == provider)?;
        let mut keys: Vec<Key> = tc
            .iter()
            .flat_map(|tc| tc.pools.iter())
            .filter(|p| p.provider == provider)
            .flat_map(|p| p.keys.iter().cloned())
            .filter(|k| registered.iter().all(|r| r.name != k.name))
            .collect();
        keys.extend(registered);
        let pc = ProviderConfig {
            name: pool_name(tenant, provider),
            keys,
            ..pc.clone()
        };
        // Runtime tenants share one metrics label unless the operator opted in to their
        // names, so by default the label set stays bounded by the config file.
        let label = match tc {
            None if !self.config.metrics.runtime_tenant_labels => Tenant::Runtime,
            _ => Tenant::Named(tenant),
        };
        let codec = crate::affinity::Affinity::codec(&self.config.affinity);
        let affinity = (&self.config.affinity, codec.as_ref());
        let mut p = Provider::new(&pc, &self.shared, affinity, (label, provider)).ok()?;
        p.tenant = Some(tenant.to_owned());
        p.fallback = tc.and_then(|tc| tc.fallback_shared.then(|| base.clone()));
        Some(p)
    }
}

/// Refresh every `POLL` while the registry lives.
async fn poll(registry: Weak<Registry>) {
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(r) = registry.upgrade() else { return };
        r.refresh(false).await;
    }
}

/// `keyrelay rekey`: seal every record under the current master key (reading those under the
/// previous one); how many were sealed again.
pub async fn rekey(config: &Config) -> Result<usize, String> {
    let rc = config
        .registry
        .as_ref()
        .ok_or("no [registry] configured: runtime registration is off")?;
    let masters = Masters::new(&rc.master, rc.previous.as_ref());
    let records = records(config, rc);
    let mut done = 0;
    for mut r in records.all().await? {
        if !masters.is_stale(&r.sealed) {
            continue;
        }
        let secret = masters
            .open(&r.tenant, &r.name, r.group.as_deref(), &r.sealed)
            .map_err(|e| format!("{}/{}: {e}", r.tenant, r.name))?;
        let group = r.group.as_deref();
        r.sealed = masters.seal(&r.tenant, &r.name, group, secret.expose().as_bytes());
        records.put(&r).await?;
        done += 1;
    }
    Ok(done)
}
