//! The `[admin]` section: the health, readiness and metrics listener and its `/admin/*` token.

use super::problems::Problems;
use super::raw::RawAdmin;
use super::secrets::Env;
use super::{defaults, AdminConfig};

pub(super) fn admin(a: &RawAdmin, env: &dyn Env, p: &mut Problems) -> AdminConfig {
    let listen = p.address("admin.listen", a.listen.as_deref(), defaults::ADMIN_LISTEN);
    let token = a
        .token
        .as_deref()
        .and_then(|r| p.secret("admin.token", r, env));
    let allowed_hosts = allowed_hosts(a.allowed_hosts.as_deref().unwrap_or_default(), p);
    AdminConfig {
        listen,
        token,
        allowed_hosts,
        audit_file: a.audit_file.as_deref().map(Into::into),
    }
}

/// The one audit file: `[admin] audit_file`, else `[registry] audit_file` (where it was
/// first configured, when only registrations were audited); both set, they must agree.
pub(super) fn audit_file(admin: &mut AdminConfig, registry: Option<&str>, p: &mut Problems) {
    let Some(registry) = registry else { return };
    match &admin.audit_file {
        None => admin.audit_file = Some(registry.into()),
        Some(own) if own.as_path() != std::path::Path::new(registry) => p.add(
            "registry.audit_file",
            "differs from admin.audit_file; keyrelay writes one audit file: set admin.audit_file only",
        ),
        Some(_) => {}
    }
}

/// `[admin] allowed_hosts`: host names or `host:port`s, lower-cased.
fn allowed_hosts(hosts: &[String], p: &mut Problems) -> Vec<String> {
    let mut out = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        let host = h.trim().to_ascii_lowercase();
        match http::uri::Authority::try_from(host.as_str()) {
            Ok(a) if !a.host().is_empty() && !host.contains('@') => out.push(host),
            _ => p.add(
                format!("admin.allowed_hosts[{i}]"),
                format!("\"{h}\" is not a host name or host:port"),
            ),
        }
    }
    out
}
