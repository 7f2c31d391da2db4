//! `?validate=true`: one cheap call with a new key (list models) before it is stored. The
//! answer is `valid`, `invalid` with the provider's reason (its status and error type only:
//! the message may echo part of the key) or `unknown` (network, timeout, 429 or 5xx).

use crate::body::AttemptBody;
use crate::config::{AuthStyle, ProviderConfig};
use crate::error::ErrorKind;
use crate::upstream::UpstreamClient;
use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use keyrelay_pool::Key;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(10);

/// What the provider said of a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Validity {
    Valid,
    Invalid(String),
    Unknown(String),
}

impl Validity {
    pub fn label(&self) -> &'static str {
        match self {
            Validity::Valid => "valid",
            Validity::Invalid(_) => "invalid",
            Validity::Unknown(_) => "unknown",
        }
    }

    pub fn json(&self) -> serde_json::Value {
        match self {
            Validity::Valid => serde_json::json!({"result": "valid"}),
            Validity::Invalid(r) | Validity::Unknown(r) => {
                serde_json::json!({"result": self.label(), "reason": r})
            }
        }
    }
}

/// The list-models request for `key` at `pc`.
fn request(pc: &ProviderConfig, key: &Key) -> Option<Request<AttemptBody>> {
    let secret = key.secret.expose();
    let (url, header, value) = match pc.auth {
        AuthStyle::Bearer => (
            format!("{}/models", pc.base_url),
            "authorization",
            format!("Bearer {secret}"),
        ),
        AuthStyle::ApiKey => (
            format!("{}/models", pc.base_url),
            "api-key",
            secret.to_owned(),
        ),
        AuthStyle::XGoogApiKey => (
            format!("{}/models", pc.base_url),
            "x-goog-api-key",
            secret.to_owned(),
        ),
        AuthStyle::XApiKey => (
            format!("{}/v1/models", pc.base_url),
            "x-api-key",
            secret.to_owned(),
        ),
    };
    let mut value = http::HeaderValue::from_str(&value).ok()?;
    value.set_sensitive(true);
    Request::get(url)
        .header(header, value)
        .header("anthropic-version", "2023-06-01")
        .body(AttemptBody::full(Bytes::new()))
        .ok()
}

/// Ask the provider about `key`.
pub async fn validate(client: &UpstreamClient, pc: &ProviderConfig, key: &Key) -> Validity {
    let Some(req) = request(pc, key) else {
        return Validity::Invalid("not a valid header value".into());
    };
    let call = async {
        let resp = client.request(req).await.ok()?;
        let status = resp.status();
        let body = http_body_util::Limited::new(resp.into_body(), 64 * 1024)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Some((status, body))
    };
    match tokio::time::timeout(TIMEOUT, call).await {
        Err(_) => Validity::Unknown("timeout".into()),
        Ok(None) => Validity::Unknown("network".into()),
        Ok(Some((s, _))) if s.is_success() => Validity::Valid,
        Ok(Some((s, _))) if s.is_server_error() || s.as_u16() == 429 => {
            Validity::Unknown(format!("provider answered {}", s.as_u16()))
        }
        Ok(Some((s, body))) => Validity::Invalid(format!(
            "provider answered {} ({})",
            s.as_u16(),
            ErrorKind::from_body(&body)
        )),
    }
}
