//! Tenants at run time: which tenant a client belongs to, and the pool its request uses. A
//! tenant's request is only ever given a key of that tenant's own pool for the provider (or,
//! when the tenant allows it, the shared pool once none of its keys is ready); the choice is
//! made per request from the authenticated client, never kept anywhere a concurrent request
//! could see it.

pub mod admin;
pub mod audit;
pub mod check;
pub mod conn;
mod leases;
pub mod limits;
pub mod records;
pub mod registry;
pub mod runtime;
pub mod seal;
pub mod tokens;
pub mod validate;

use crate::config::{pool_name, Config, ProviderConfig};
use crate::error::ProxyError;
use crate::routes::{Provider, Routes};
use crate::service::{App, Shared};
use keyrelay_metrics::Tenant as Label;
use keyrelay_pool::PoolError;
use std::collections::HashMap;
use std::sync::Arc;

/// The prefix of a runtime tenant's client name (no configured client may start with it).
pub const RUNTIME_CLIENT: &str = "runtime:";

/// One tenant: its pools, one per provider it has keys for.
pub struct Tenant {
    pub name: String,
    /// Each with `tenant` set and, when the tenant allows it, `fallback` to the shared pool.
    pools: Vec<Arc<Provider>>,
    fallback_shared: bool,
}

impl Tenant {
    /// The pool a request of this tenant to `shared`'s route uses.
    fn pool_for(&self, shared: &Arc<Provider>) -> Option<&Arc<Provider>> {
        self.pools.iter().find(|p| p.fallback_name() == shared.name)
    }

    pub fn pools(&self) -> &[Arc<Provider>] {
        &self.pools
    }
}

/// Every configured tenant, and each tenant client's tenant.
#[derive(Default)]
pub struct Tenants {
    tenants: Vec<Tenant>,
    /// Client name to index in `tenants`; client names are unique over the whole config.
    by_client: HashMap<String, usize>,
    /// Keys registered at run time, when `[registry]` is configured.
    registry: Option<Arc<registry::Registry>>,
}

impl Tenants {
    /// Build every tenant's pools from the shared provider each one names.
    pub fn new(config: &Config, shared: &Shared, routes: &Routes) -> Result<Tenants, PoolError> {
        let mut out = Tenants {
            registry: registry::Registry::start(config, shared, routes.providers()),
            ..Tenants::default()
        };
        let codec = crate::affinity::Affinity::codec(&config.affinity);
        for tc in &config.tenants {
            let mut pools = Vec::new();
            for tp in &tc.pools {
                let (Some(pc), Some(base)) = (
                    config.providers.iter().find(|p| p.name == tp.provider),
                    routes.providers().iter().find(|p| p.name == tp.provider),
                ) else {
                    continue;
                };
                let labels = (Label::Named(&tc.name), pc.name.as_str());
                let pc = ProviderConfig {
                    name: pool_name(&tc.name, &pc.name),
                    keys: tp.keys.clone(),
                    ..pc.clone()
                };
                let affinity = (&config.affinity, codec.as_ref());
                let mut pool = Provider::new(&pc, shared, affinity, labels)?;
                pool.tenant = Some(tc.name.clone());
                pool.fallback = tc.fallback_shared.then(|| base.clone());
                pools.push(Arc::new(pool));
            }
            let index = out.tenants.len();
            for c in &tc.clients {
                out.by_client.insert(c.name.clone(), index);
            }
            out.tenants.push(Tenant {
                name: tc.name.clone(),
                pools,
                fallback_shared: tc.fallback_shared,
            });
        }
        Ok(out)
    }

    /// The tenant `client` belongs to, if any.
    pub fn of(&self, client: &str) -> Option<&Tenant> {
        self.by_client.get(client).map(|&i| &self.tenants[i])
    }

    /// The pool `client`'s request to `shared`'s route uses: its tenant's own, the shared one
    /// for a client of no tenant (or of a tenant that falls back and has no keys for this
    /// provider); a tenant with neither gets 404, as for a route that does not exist.
    pub fn route(&self, client: &str, shared: &Arc<Provider>) -> Result<Arc<Provider>, ProxyError> {
        let Some(tenant) = self.of(client) else {
            if let Some(name) = client.strip_prefix(RUNTIME_CLIENT) {
                // A runtime tenant has only the keys registered for it.
                let pool = self
                    .registry
                    .as_ref()
                    .and_then(|r| r.pool(&pool_name(name, &shared.name)));
                return pool.ok_or(ProxyError::UnknownRoute);
            }
            return Ok(shared.clone());
        };
        if let Some(r) = &self.registry {
            if let Some(p) = r.pool(&pool_name(&tenant.name, &shared.name)) {
                return Ok(p);
            }
        }
        match tenant.pool_for(shared) {
            Some(own) => Ok(own.clone()),
            None if tenant.fallback_shared => Ok(shared.clone()),
            None => Err(ProxyError::UnknownRoute),
        }
    }

    /// The client name of a runtime tenant's client who presented one of `presented`.
    pub fn runtime_client(&self, presented: &[&[u8]]) -> Option<String> {
        let tenant = self.registry.as_ref()?.runtime_client(presented)?;
        Some(format!("{RUNTIME_CLIENT}{tenant}"))
    }

    /// Every pool on `shared`'s route: the shared one, each configured tenant's, each
    /// registered at run time (a sealed Gemini upload link names one of them).
    pub fn pools_on(&self, shared: &Arc<Provider>) -> Vec<Arc<Provider>> {
        let runtime = self
            .registry
            .as_ref()
            .map(|r| r.pools())
            .unwrap_or_default();
        let configured = self
            .tenants
            .iter()
            .filter_map(|t| t.pool_for(shared).cloned());
        std::iter::once(shared.clone())
            .chain(configured)
            .chain(
                runtime
                    .into_iter()
                    .filter(|p| p.fallback_name() == shared.name),
            )
            .collect()
    }

    pub fn registry(&self) -> Option<&Arc<registry::Registry>> {
        self.registry.as_ref()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Tenant> {
        self.tenants.iter()
    }
}

impl Provider {
    /// The shared provider's name this pool serves: its own for a shared pool, the part after
    /// `tenant.` for a tenant's.
    pub fn fallback_name(&self) -> &str {
        match &self.tenant {
            Some(t) => self
                .name
                .strip_prefix(t.as_str())
                .and_then(|r| r.strip_prefix('.'))
                .unwrap_or(&self.name),
            None => &self.name,
        }
    }
}

impl App {
    /// Every pool: the shared ones, then each tenant's, for status, actions and metrics.
    pub fn pools(&self) -> Vec<Arc<Provider>> {
        let tenants = self.tenants().iter().flat_map(|t| t.pools.iter().cloned());
        let registered = self
            .tenants()
            .registry()
            .map(|r| r.pools())
            .unwrap_or_default();
        let mut out: Vec<Arc<Provider>> = self
            .routes()
            .providers()
            .iter()
            .cloned()
            .chain(tenants)
            .collect();
        // A runtime pool stands for its tenant's configured one of the same name.
        out.retain(|p| registered.iter().all(|r| r.name != p.name));
        out.extend(registered);
        out
    }
}
