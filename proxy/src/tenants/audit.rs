//! The audit trail: one structured line per registration, removal and validation of a key, per
//! runtime tenant created or deleted, per operator key action (disable, enable, reset) and per
//! config reload (admin API or SIGHUP). Each says who, what, on which tenant or pool, which key
//! (name and fingerprint, once the name matched a key) and the result; never a secret. Logged
//! under the `keyrelay::audit` target and, when `[admin] audit_file` (or, in older configs,
//! `[registry] audit_file`) is set, appended to that file as one JSON object per line.

use super::registry::Registry;
use std::io::Write;
use std::path::Path;

/// Who acted: the operator (admin token), a tenant's admin, or the operator by SIGHUP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Who {
    Admin,
    Tenant(String),
    Signal,
}

impl Who {
    /// Whether this caller may see and change `tenant`.
    pub fn may(&self, tenant: &str) -> bool {
        match self {
            Who::Admin => true,
            Who::Tenant(own) => own == tenant,
            Who::Signal => false,
        }
    }

    fn label(&self) -> String {
        match self {
            Who::Admin => "admin".to_owned(),
            Who::Tenant(t) => format!("tenant-admin:{t}"),
            Who::Signal => "signal:SIGHUP".to_owned(),
        }
    }
}

/// A registry action: one audit line.
pub fn audit(
    registry: &Registry,
    who: &Who,
    action: &str,
    tenant: &str,
    key: &str,
    fingerprint: &str,
    result: &str,
) {
    let line = serde_json::json!({
        "who": who.label(), "action": action, "tenant": tenant, "key": key,
        "fingerprint": fingerprint, "result": result,
    });
    record(registry.audit_file.as_deref(), line);
}

/// The key an operator's action reached: its pool (and that pool's tenant), name and
/// fingerprint. Only a name that matched a key is ever written, so a secret pasted by mistake
/// into the path is not.
pub struct Target<'a> {
    pub pool: &'a str,
    pub tenant: Option<&'a str>,
    pub key: &'a str,
    pub fingerprint: &'a str,
}

/// An operator's key action on the admin listener: one audit line. `target` is `None` when
/// the path named no pool or key (`result` says which).
pub fn key_action(file: Option<&Path>, action: &str, target: Option<&Target<'_>>, result: &str) {
    let line = serde_json::json!({
        "who": Who::Admin.label(), "action": action,
        "provider": target.map_or("", |t| t.pool), "tenant": target.and_then(|t| t.tenant),
        "key": target.map_or("", |t| t.key), "fingerprint": target.map_or("", |t| t.fingerprint),
        "result": result,
    });
    record(file, line);
}

/// A config reload, by the admin API or SIGHUP: one audit line. `result` is a fixed word
/// (`reloaded`, `invalid_config`, ...), never the problems themselves.
pub fn reload(file: Option<&Path>, who: &Who, result: &str) {
    let line = serde_json::json!({"who": who.label(), "action": "reload", "result": result});
    record(file, line);
}

/// Log `line` with the time it happened, and append it to `file` if one is configured.
fn record(file: Option<&Path>, mut line: serde_json::Value) {
    line["at"] = crate::admin::rfc3339(std::time::SystemTime::now()).into();
    tracing::info!(target: "keyrelay::audit", "{line}");
    append(file, &line);
}

/// Append `line` to the audit file, if one is configured (created owner-only).
fn append(path: Option<&Path>, line: &serde_json::Value) {
    let Some(path) = path else {
        return;
    };
    let mut options = std::fs::OpenOptions::new();
    options.append(true).create(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    // One write of the whole line: with O_APPEND, concurrent writers never interleave.
    let mut text = line.to_string();
    text.push('\n');
    let written = options
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()));
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), error = %e, "cannot append to the audit file");
    }
}
