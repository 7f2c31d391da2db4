//! `POST /admin/tenants` and `DELETE /admin/tenants/{tenant}`: tenants created at run time, by
//! the admin token only. A new tenant's client token and admin token are made here, shown once
//! in the answer, and kept only as SHA-256 digests; its clients are served from the keys
//! registered for it and nothing else, counted in metrics under `tenant="runtime"` (or its own
//! name with `[metrics] runtime_tenant_labels`).

use super::admin::answer as reply;
use super::audit::{audit, Who};
use super::records::TenantRecord;
use super::registry::Registry;
use crate::body::ClientBody;
use crate::body::ProxyBody;
use aes_gcm::aead::rand_core::RngCore;
use aes_gcm::aead::OsRng;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};

fn token(kind: &str) -> String {
    let mut bytes = [0u8; 24];
    OsRng.fill_bytes(&mut bytes);
    format!("kr-{kind}-{}", hex::encode(bytes))
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n != crate::config::RUNTIME_LABEL
        && n != crate::config::SHARED_LABEL
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Create (`POST`, body `{"name"}`) or delete (`DELETE .../{name}`) a runtime tenant.
pub async fn tenants(
    registry: &Registry,
    who: &Who,
    method: &Method,
    name: Option<&str>,
    req: Request<ClientBody>,
) -> Response<ProxyBody> {
    if *who != Who::Admin {
        return reply(
            StatusCode::FORBIDDEN,
            serde_json::json!({"error": "only the admin token creates or deletes tenants"}),
        );
    }
    match (method, name) {
        (&Method::POST, None) => {
            let body = http_body_util::Limited::new(req.into_body(), 4096)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            match v["name"].as_str() {
                Some(n) if valid_name(n) => create(registry, who, n).await,
                _ => reply(
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({"error": "expected {\"name\"}: letters, digits, '-', '_'"}),
                ),
            }
        }
        (&Method::DELETE, Some(n)) => delete(registry, who, n).await,
        _ => reply(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "not found"}),
        ),
    }
}

async fn create(registry: &Registry, who: &Who, name: &str) -> Response<ProxyBody> {
    if registry.config.tenants.iter().any(|t| t.name == name) {
        return reply(
            StatusCode::CONFLICT,
            serde_json::json!({"error": "a configured tenant has this name"}),
        );
    }
    let (client, admin) = (token("rt"), token("rtadm"));
    let digest = |t: &str| hex::encode(Sha256::digest(t.as_bytes()));
    let record = TenantRecord {
        name: name.to_owned(),
        client_digest: digest(&client),
        admin_digest: digest(&admin),
    };
    let added = registry.records.add_tenant(&record).await;
    let result = match added {
        Ok(true) => "created",
        Ok(false) => "exists",
        Err(_) => "store_failed",
    };
    audit(registry, who, "create_tenant", name, "", "", result);
    registry.refresh(true).await;
    match added {
        Ok(true) => reply(
            StatusCode::CREATED,
            serde_json::json!({"tenant": name, "client_token": client, "admin_token": admin,
                "note": "shown once: keyrelay keeps only their digests"}),
        ),
        Ok(false) => reply(
            StatusCode::CONFLICT,
            serde_json::json!({"error": "the tenant exists"}),
        ),
        Err(_) => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"error": "the key store does not answer"}),
        ),
    }
}

async fn delete(registry: &Registry, who: &Who, name: &str) -> Response<ProxyBody> {
    if registry.config.tenants.iter().any(|t| t.name == name) {
        return reply(
            StatusCode::CONFLICT,
            serde_json::json!({"error": "a configured tenant is removed from the config file"}),
        );
    }
    let removed = registry.records.remove_tenant(name).await;
    let result = match removed {
        Ok(true) => "deleted",
        Ok(false) => "not_found",
        Err(_) => "store_failed",
    };
    audit(registry, who, "delete_tenant", name, "", "", result);
    registry.refresh(true).await;
    match removed {
        Ok(true) => reply(
            StatusCode::OK,
            serde_json::json!({"deleted": true, "tenant": name}),
        ),
        Ok(false) => reply(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "no such tenant"}),
        ),
        Err(_) => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"error": "the key store does not answer"}),
        ),
    }
}
