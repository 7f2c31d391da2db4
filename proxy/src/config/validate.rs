//! `validate()`: the raw config, section by section, into a [`Config`] or every problem found.

use super::problems::Problems;
use super::raw::RawConfig;
use super::secrets::Env;
use super::{
    admin, affinity, clients, groups, keys, metrics, providers, server, store, tenants, websocket,
    Config, ConfigError,
};

/// Check every section, each problem noted with its path, and build the config only if nothing was wrong.
/// `unknown` holds the path of each field the file has that the config does not know.
pub(super) fn validate(
    raw: RawConfig,
    unknown: Vec<String>,
    env: &dyn Env,
) -> Result<Config, ConfigError> {
    let mut p = Problems::default();
    for path in unknown {
        p.add(path, "unknown field");
    }
    let server = server::server(&raw.server, env, &mut p);
    let upstream = server::upstream(&raw.upstream, env, &mut p);
    let tenant_clients = raw.tenants.iter().any(|t| !t.clients.is_empty());
    let clients = clients::clients(&raw.clients, &server, tenant_clients, env, &mut p);
    let fingerprinter = keys::fingerprinter(raw.server.fingerprint_secret.as_deref(), env, &mut p);
    let providers = providers::providers(&raw.providers, &fingerprinter, env, &mut p);
    let store = raw
        .store
        .as_ref()
        .and_then(|s| store::store(s, env, &mut p));
    let mut admin = admin::admin(&raw.admin, env, &mut p);
    let registry_audit = raw.registry.as_ref().and_then(|r| r.audit_file.as_deref());
    admin::audit_file(&mut admin, registry_audit, &mut p);
    let websocket = websocket::websocket(&raw.websocket, &mut p);
    let affinity = affinity::affinity(&raw.affinity, env, &mut p);
    let cx = tenants::Context {
        clients: &clients,
        providers: &providers,
        fingerprinter: &fingerprinter,
        env,
    };
    let tenants = tenants::tenants(&raw.tenants, &cx, &mut p);
    tenants::admin_tokens(&tenants, admin.token.as_ref(), &mut p);
    let registry = raw
        .registry
        .as_ref()
        .and_then(|r| tenants::registry(r, &fingerprinter, env, &mut p));
    let metrics = metrics::metrics(&raw.metrics, raw.registry.is_some(), &mut p);
    let registered = raw.registry.is_some();
    groups::client_groups(&clients, &providers, &tenants, registered, &mut p);
    if !p.is_empty() {
        return Err(ConfigError::Invalid(p));
    }
    Ok(Config {
        server,
        upstream,
        clients,
        providers,
        store,
        admin,
        websocket,
        metrics,
        affinity,
        tenants,
        registry,
    })
}
