//! `/admin/tenants/{tenant}/keys`: register (add or replace, optionally validated), list and
//! remove a tenant's runtime keys. Authorised by the admin token, or by that tenant's own admin
//! token, which reaches only its own tenant. Every action is one audit line.

use super::audit::{audit, Who};
use super::records::Record;
use super::registry::Registry;
use super::validate::{validate, Validity};
use crate::body::ClientBody;
use crate::body::ProxyBody;
use crate::service::App;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use keyrelay_pool::{Key, Secret};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A registration's body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    name: String,
    provider: String,
    secret: String,
    rpm: Option<u32>,
    tpm: Option<u32>,
    /// The key group it serves in (letters, digits, '-', '_'; at most 64).
    group: Option<String>,
}

/// A refusal's status and JSON body, answered by the caller.
type Refusal = (StatusCode, serde_json::Value);

pub(super) fn answer(status: StatusCode, body: serde_json::Value) -> Response<ProxyBody> {
    crate::admin::json(status, body)
}

/// Who the bearer token belongs to: the operator, a tenant's admin, or nobody.
fn who(app: &App, req: &Request<ClientBody>, admin: Option<&[u8; 32]>) -> Option<Who> {
    let token = req
        .headers()
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")?;
    let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    if admin.is_some_and(|a| bool::from(a.ct_eq(&digest))) {
        return Some(Who::Admin);
    }
    let registry = app.tenants().registry()?;
    let configured = registry.config.tenants.iter().find_map(|t| {
        let own: [u8; 32] = Sha256::digest(t.admin_token.as_ref()?.expose().as_bytes()).into();
        bool::from(own.ct_eq(&digest)).then(|| Who::Tenant(t.name.clone()))
    });
    configured.or_else(|| {
        registry
            .runtime_admin(&hex::encode(digest))
            .map(Who::Tenant)
    })
}

/// Serve `/admin/tenants/...`.
pub async fn handle(
    app: &App,
    req: Request<ClientBody>,
    admin: Option<&[u8; 32]>,
) -> Response<ProxyBody> {
    let Some(registry) = app.tenants().registry() else {
        return answer(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "runtime registration is off: configure [registry] master_key"}),
        );
    };
    let Some(who) = who(app, &req, admin) else {
        return answer(
            StatusCode::UNAUTHORIZED,
            serde_json::json!({"error": "admin or tenant admin token required"}),
        );
    };
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    if let ["admin", "tenants", rest @ ..] = segments.as_slice() {
        if rest.len() <= 1 {
            let method = req.method().clone();
            let name = rest.first().copied();
            return super::runtime::tenants(registry, &who, &method, name, req).await;
        }
    }
    let tenant = match target(registry, &who, &segments) {
        Ok(t) => t,
        Err((status, body)) => return answer(status, body),
    };
    let flag = |name: &str| query.split('&').any(|p| p == format!("{name}=true"));
    match (req.method().clone(), segments.as_slice()) {
        (Method::GET, [_, _, _, "keys"]) => list(registry, tenant).await,
        (Method::POST, [_, _, _, "keys"]) => {
            let body = match read(req).await {
                Ok(b) => b,
                Err(resp) => return resp,
            };
            let (check, force) = (flag("validate"), flag("force"));
            register(registry, &who, tenant, body, check, force).await
        }
        (Method::DELETE, [_, _, _, "keys", name]) => remove(registry, &who, tenant, name).await,
        _ => answer(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "not found"}),
        ),
    }
}

/// The tenant a path names, if it exists and `who` may reach it. Another tenant's gets the
/// same answer as one that does not exist: nothing to learn from it.
fn target<'s>(registry: &Registry, who: &Who, segments: &[&'s str]) -> Result<&'s str, Refusal> {
    let tenant = match segments {
        ["admin", "tenants", tenant, "keys", ..] => *tenant,
        _ => {
            return Err((
                StatusCode::NOT_IMPLEMENTED,
                serde_json::json!({"error": "only /admin/tenants/{tenant}/keys is served; tenants themselves come from the config file"}),
            ))
        }
    };
    if !who.may(tenant) || !registry.has_tenant(tenant) {
        return Err((
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "no such tenant"}),
        ));
    }
    Ok(tenant)
}

async fn read(req: Request<ClientBody>) -> Result<NewKey, Response<ProxyBody>> {
    let bad = |why: &str| answer(StatusCode::BAD_REQUEST, serde_json::json!({"error": why}));
    let body = http_body_util::Limited::new(req.into_body(), 64 * 1024)
        .collect()
        .await
        .map_err(|_| bad("unreadable or larger than 64 KiB"))?
        .to_bytes();
    // serde's message could quote the secret: say only what is wanted.
    serde_json::from_slice(&body).map_err(|_| {
        bad("expected {\"name\", \"provider\", \"secret\", \"rpm\"?, \"tpm\"?, \"group\"?}")
    })
}

async fn list(registry: &Registry, tenant: &str) -> Response<ProxyBody> {
    let records = match registry.records.all().await {
        Ok(r) => r,
        Err(_) => {
            return answer(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"error": "the key store does not answer"}),
            )
        }
    };
    let mut keys = Vec::new();
    for r in records.iter().filter(|r| r.tenant == tenant) {
        let pool = registry.pool(&crate::config::pool_name(tenant, &r.provider));
        let state = match &pool {
            Some(p) => match p.pool.find(&r.name) {
                Some(i) => p
                    .pool
                    .status()
                    .await
                    .get(i)
                    .map_or("unknown", |s| s.mode.label()),
                None => "not_serving",
            },
            None => "not_serving",
        };
        keys.push(serde_json::json!({
            "name": r.name, "provider": r.provider, "fingerprint": r.fingerprint,
            "rpm": r.rpm, "tpm": r.tpm, "group": r.group, "state": state,
        }));
    }
    answer(
        StatusCode::OK,
        serde_json::json!({"tenant": tenant, "keys": keys}),
    )
}

/// The provider and key a registration names, or why it is refused.
fn checked(
    registry: &Registry,
    new: NewKey,
) -> Result<(&crate::config::ProviderConfig, Key), Refusal> {
    let bad = |why: &str| (StatusCode::BAD_REQUEST, serde_json::json!({"error": why}));
    let name_ok = !new.name.is_empty()
        && new.name.len() <= 64
        && new
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    let secret_ok = !new.secret.is_empty() && http::HeaderValue::from_str(&new.secret).is_ok();
    if !name_ok || !secret_ok {
        return Err(bad("name must be 1-64 of letters, digits, '-', '_', '.'; secret a non-empty header-safe string"));
    }
    let Some(pc) = registry
        .config
        .providers
        .iter()
        .find(|p| p.name == new.provider)
    else {
        return Err(bad("no such provider"));
    };
    if new
        .group
        .as_deref()
        .is_some_and(|g| !keyrelay_pool::valid_group(g))
    {
        return Err(bad("group must be 1-64 of letters, digits, '-', '_'"));
    }
    let rpm = new.rpm.unwrap_or(10_000).max(1);
    let tpm = new.tpm.map(|t| t.max(1));
    let key = registry.key(&new.name, Secret::new(new.secret), rpm);
    Ok((pc, key.with_tpm(tpm).with_group(new.group)))
}

async fn register(
    registry: &Registry,
    who: &Who,
    tenant: &str,
    new: NewKey,
    check: bool,
    force: bool,
) -> Response<ProxyBody> {
    let (pc, key) = match checked(registry, new) {
        Ok(k) => k,
        Err((status, body)) => return answer(status, body),
    };
    let mut validity = None;
    if check {
        let v = validate(registry.clients.get(&pc.name), pc, &key).await;
        audit(
            registry,
            who,
            "validate",
            tenant,
            &key.name,
            &key.fingerprint,
            v.label(),
        );
        if matches!(v, Validity::Invalid(_)) && !force {
            return answer(
                StatusCode::UNPROCESSABLE_ENTITY,
                serde_json::json!({"stored": false, "validation": v.json(), "fingerprint": key.fingerprint}),
            );
        }
        validity = Some(v.json());
    }
    let stored = registry
        .records
        .put(&sealed(registry, tenant, pc, &key))
        .await;
    let result = if stored.is_ok() {
        "stored"
    } else {
        "store_failed"
    };
    audit(
        registry,
        who,
        "register",
        tenant,
        &key.name,
        &key.fingerprint,
        result,
    );
    if stored.is_err() {
        return unavailable();
    }
    registry.refresh(true).await;
    answer(
        StatusCode::OK,
        serde_json::json!({
            "stored": true, "tenant": tenant, "name": key.name, "provider": pc.name,
            "fingerprint": key.fingerprint, "group": key.group, "validation": validity,
        }),
    )
}

/// `key`'s record: its secret sealed for `tenant` and its name.
fn sealed(
    registry: &Registry,
    tenant: &str,
    pc: &crate::config::ProviderConfig,
    key: &Key,
) -> Record {
    Record {
        tenant: tenant.to_owned(),
        name: key.name.clone(),
        provider: pc.name.clone(),
        rpm: key.rpm,
        tpm: key.tpm,
        group: key.group.clone(),
        fingerprint: key.fingerprint.clone(),
        sealed: registry.masters.seal(
            tenant,
            &key.name,
            key.group.as_deref(),
            key.secret.expose().as_bytes(),
        ),
    }
}

fn unavailable() -> Response<ProxyBody> {
    answer(
        StatusCode::SERVICE_UNAVAILABLE,
        serde_json::json!({"error": "the key store does not answer"}),
    )
}

async fn remove(registry: &Registry, who: &Who, tenant: &str, name: &str) -> Response<ProxyBody> {
    // The key's fingerprint, for the audit line.
    let fingerprint = registry.records.all().await.ok().and_then(|all| {
        all.into_iter()
            .find(|r| r.tenant == tenant && r.name == name)
            .map(|r| r.fingerprint)
    });
    let removed = registry.records.remove(tenant, name).await;
    let result = match removed {
        Ok(true) => "removed",
        Ok(false) => "not_found",
        Err(_) => "store_failed",
    };
    // A name that matched no key is not written: it may be a secret pasted by mistake.
    let key = if matches!(removed, Ok(true)) {
        name
    } else {
        ""
    };
    let fingerprint = fingerprint.unwrap_or_default();
    audit(registry, who, "remove", tenant, key, &fingerprint, result);
    registry.refresh(true).await;
    match removed {
        Ok(true) => answer(
            StatusCode::OK,
            serde_json::json!({"removed": true, "tenant": tenant, "name": name}),
        ),
        Ok(false) => answer(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "no such key"}),
        ),
        Err(_) => answer(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"error": "the key store does not answer"}),
        ),
    }
}
