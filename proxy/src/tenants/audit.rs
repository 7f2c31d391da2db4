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
    let Some(path) = &registry.audit_file else {
        return;
    };
    let line = serde_json::json!({
        "at": crate::admin::rfc3339(std::time::SystemTime::now()),
        "who": who, "action": action, "tenant": tenant, "key": key,
        "fingerprint": fingerprint, "result": result,
    });
    let mut options = std::fs::OpenOptions::new();
    options.append(true).create(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options.open(path).and_then(|mut f| writeln!(f, "{line}"));
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), error = %e, "cannot append to the audit file");
    }
}
