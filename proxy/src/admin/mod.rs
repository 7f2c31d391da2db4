//! The admin listener: health, readiness, Prometheus metrics, key status and key actions, config
//! reload, and a small dashboard. Separate from the proxy port; `/admin/*` needs the admin token.
//! Every answer goes only to an allowed `Host` (see `hosts.rs`) and carries a strict CSP and
//! anti-framing headers; the dashboard's script and styles are files of their own, so the CSP
//! allows no inline code.

mod hosts;
mod status;

use crate::body::{ClientBody, ProxyBody};
use crate::server::Live;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use keyrelay_pool::{KeyAction, Secret};
use sha2::{Digest, Sha256};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use subtle::ConstantTimeEq;

pub use hosts::AllowedHosts;
pub use status::{refresh_metrics, rfc3339};

/// Re-reads the config and swaps it in; `Err` names every problem.
pub type Reloader = Arc<
    dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), crate::ReloadError>> + Send>> + Send + Sync,
>;

const DASHBOARD: &str = include_str!("dashboard.html");
const DASHBOARD_JS: &str = include_str!("dashboard.js");
const DASHBOARD_CSS: &str = include_str!("dashboard.css");

/// The content security policy of every admin answer: nothing inline, nothing from elsewhere.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// What the admin handlers need.
pub struct Admin {
    live: Arc<Live>,
    hosts: AllowedHosts,
    token: Option<[u8; 32]>,
    reload: Option<Reloader>,
    scrape: tokio::sync::Mutex<()>,
}

impl Admin {
    /// Admin handlers for a listener answering `hosts`.
    pub fn new(
        live: Arc<Live>,
        hosts: AllowedHosts,
        token: Option<&Secret>,
        reload: Option<Reloader>,
    ) -> Admin {
        Admin {
            live,
            hosts,
            token: token.map(|t| Sha256::digest(t.expose().as_bytes()).into()),
            reload,
            scrape: tokio::sync::Mutex::new(()),
        }
    }

    /// The refusal for a request without the right admin token, if it lacks it.
    fn rejection(&self, req: &Request<ClientBody>) -> Option<Response<ProxyBody>> {
        let Some(expected) = &self.token else {
            return Some(json(
                StatusCode::NOT_FOUND,
                serde_json::json!({"error": "the admin API is off: set [admin] token = \"env:NAME\" to turn it on"}),
            ));
        };
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes())
            .and_then(|v| v.strip_prefix(b"Bearer "))
            .unwrap_or_default();
        let digest: [u8; 32] = Sha256::digest(presented).into();
        if bool::from(digest.ct_eq(expected)) {
            None
        } else {
            Some(json(
                StatusCode::UNAUTHORIZED,
                serde_json::json!({"error": "missing or wrong admin token"}),
            ))
        }
    }

    /// Answer one request: refused (421) for a `Host` not allowed, else routed; either way
    /// with the security headers.
    pub async fn handle(self: Arc<Self>, req: Request<ClientBody>) -> Response<ProxyBody> {
        let host = match req.uri().authority() {
            Some(a) => Some(a.as_str()),
            None => req
                .headers()
                .get(header::HOST)
                .map(|h| h.to_str().unwrap_or("\u{0}")),
        };
        let mut resp = if self.hosts.allows(host) {
            self.route(req).await
        } else {
            json(
                StatusCode::MISDIRECTED_REQUEST,
                serde_json::json!({"error": "this Host is not the admin listener's; add it to [admin] allowed_hosts"}),
            )
        };
        let headers = resp.headers_mut();
        for (name, value) in [
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ] {
            headers.insert(name, HeaderValue::from_static(value));
        }
        resp
    }

    async fn route(&self, req: Request<ClientBody>) -> Response<ProxyBody> {
        let path = req.uri().path().to_owned();
        let method = req.method().clone();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (&method, segments.as_slice()) {
            (&Method::GET, ["healthz"]) => {
                json(StatusCode::OK, serde_json::json!({"status": "alive"}))
            }
            (&Method::GET, ["readyz"]) => self.readyz().await,
            (&Method::GET, ["metrics"]) => {
                let app = self.live.app();
                // One scrape at a time: each rewrites the per-key series before encoding.
                let text = {
                    let _one = self.scrape.lock().await;
                    refresh_metrics(&app).await;
                    app.metrics().encode()
                };
                let mut resp = Response::new(ProxyBody::full(text));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                resp
            }
            (_, ["admin", "tenants", ..]) => {
                let app = self.live.app();
                crate::tenants::admin::handle(&app, req, self.token.as_ref()).await
            }
            (_, ["admin", ..]) => match self.authorized_page(&req, &method, &segments) {
                Some(resp) => resp,
                None => self.admin(&method, &segments).await,
            },
            _ => json(
                StatusCode::NOT_FOUND,
                serde_json::json!({"error": "not found"}),
            ),
        }
    }

    /// The dashboard page itself needs no token (it asks for one); every API call does.
    fn authorized_page(
        &self,
        req: &Request<ClientBody>,
        method: &Method,
        segments: &[&str],
    ) -> Option<Response<ProxyBody>> {
        if method == Method::GET && self.token.is_some() {
            let page = match segments {
                ["admin"] => Some((DASHBOARD, "text/html; charset=utf-8")),
                ["admin", "dashboard.js"] => Some((DASHBOARD_JS, "text/javascript; charset=utf-8")),
                ["admin", "dashboard.css"] => Some((DASHBOARD_CSS, "text/css; charset=utf-8")),
                _ => None,
            };
            if let Some((text, content_type)) = page {
                let mut resp = Response::new(ProxyBody::full(text));
                resp.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
                resp.headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
                return Some(resp);
            }
        }
        self.rejection(req)
    }

    async fn admin(&self, method: &Method, segments: &[&str]) -> Response<ProxyBody> {
        match (method, segments) {
            (&Method::GET, ["admin", "api-keys", "status"]) => {
                json(StatusCode::OK, status::status_json(&self.live.app()).await)
            }
            (&Method::POST, ["admin", "keys", provider, key, action]) => {
                let action = match *action {
                    "disable" => KeyAction::Disable,
                    "enable" => KeyAction::Enable,
                    "reset" => KeyAction::Reset,
                    _ => {
                        return json(
                            StatusCode::NOT_FOUND,
                            serde_json::json!({"error": "actions: disable, enable, reset"}),
                        )
                    }
                };
                status::act(&self.live.app(), provider, key, action).await
            }
            (&Method::POST, ["admin", "reload"]) => match &self.reload {
                None => json(
                    StatusCode::NOT_FOUND,
                    serde_json::json!({"error": "this instance was not started from a config file"}),
                ),
                Some(reload) => match reload().await {
                    Ok(()) => json(StatusCode::OK, serde_json::json!({"reloaded": true})),
                    Err(e) => json(
                        StatusCode::BAD_REQUEST,
                        serde_json::json!({"reloaded": false, "error": e.to_string()}),
                    ),
                },
            },
            _ => json(
                StatusCode::NOT_FOUND,
                serde_json::json!({"error": "not found"}),
            ),
        }
    }

    async fn readyz(&self) -> Response<ProxyBody> {
        let app = self.live.app();
        let draining = self.live.draining();
        let mut providers = serde_json::Map::new();
        let mut all_usable = true;
        for p in app.routes().providers() {
            let status = p.pool.status().await;
            let usable = status
                .iter()
                .filter(|k| matches!(k.mode.label(), "ready" | "cooling"))
                .count();
            all_usable &= usable > 0;
            providers.insert(
                p.name.clone(),
                serde_json::json!({"usable_keys": usable, "keys": status.len()}),
            );
        }
        let ready = !draining && all_usable;
        let body = serde_json::json!({
            "ready": ready,
            "draining": draining,
            "store": app.store_state().label(),
            "providers": providers,
        });
        json(
            if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            },
            body,
        )
    }
}

pub(crate) fn json(status: StatusCode, body: serde_json::Value) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
