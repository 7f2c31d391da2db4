//! The audit trail of registry actions: one structured line per registration, removal and
//! validation (who, tenant, key name and fingerprint, result; never a secret), to the log under
//! the `keyrelay::audit` target and, when `[registry] audit_file` is set, appended to that file.

use super::registry::Registry;
use std::io::Write;

/// Who acted: the operator (admin token) or a tenant's admin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Who {
    Admin,
    Tenant(String),
}

impl Who {
    /// Whether this caller may see and change `tenant`.
    pub fn may(&self, tenant: &str) -> bool {
        match self {
            Who::Admin => true,
            Who::Tenant(own) => own == tenant,
        }
    }

    fn label(&self) -> String {
        match self {
            Who::Admin => "admin".to_owned(),
            Who::Tenant(t) => format!("tenant-admin:{t}"),
        }
    }
}

/// Write one audit line.
pub fn audit(
    registry: &Registry,
    who: &Who,
    action: &str,
    tenant: &str,
    key: &str,
    fingerprint: &str,
    result: &str,
) {
    let who = who.label();
    tracing::info!(target: "keyrelay::audit", %who, action, tenant, key, fingerprint, result, "audit");
    let line = serde_json::json!({
        "at": crate::admin::rfc3339(std::time::SystemTime::now()),
        "who": who, "action": action, "tenant": tenant, "key": key,
        "fingerprint": fingerprint, "result": result,
    });
    append(registry.audit_file.as_deref(), &line);
}

/// An operator's key action or reload on the admin listener (authorised by the admin token):
/// one audit line. `key` is what the operator named, given only once it matched a key (so a
/// secret pasted by mistake is never written).
pub fn operator(app: &crate::service::App, action: &str, provider: &str, key: &str, status: u16) {
    let key = if status == 200 { key } else { "" };
    tracing::info!(target: "keyrelay::audit", who = "admin", action, provider, key, status, "audit");
    let line = serde_json::json!({
        "at": crate::admin::rfc3339(std::time::SystemTime::now()),
        "who": "admin", "action": action, "provider": provider, "key": key, "status": status,
    });
    let file = app.tenants().registry().and_then(|r| r.audit_file.clone());
    append(file.as_deref(), &line);
}

/// Append `line` to the audit file, if one is configured.
fn append(path: Option<&std::path::Path>, line: &serde_json::Value) {
    let Some(path) = path else {
        return;
    };
    let mut options = std::fs::OpenOptions::new();
    options.append(true).create(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options.open(path).and_then(|mut f| writeln!(f, "{line}"));
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), error = %e, "cannot append to the audit file");
    }
}
