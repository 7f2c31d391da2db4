//! keyrelay's own errors, and the one place they become HTTP responses in the provider's shape.

use crate::body::ProxyBody;
use crate::upstream::UpstreamError;
use http::{HeaderValue, Response, StatusCode};
use std::time::Duration;

/// Which provider's JSON error shape a client expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorShape {
    /// `{"error":{"message","type","code"}}`
    OpenAi,
    /// `{"type":"error","error":{"type","message"}}`
    Anthropic,
    /// `{"error":{"code","message","status"}}`
    Gemini,
}

/// Everything keyrelay itself can answer with, grouped by where it came from.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    // The client's side.
    #[error("missing or invalid keyrelay client token")]
    Unauthorized,
    #[error("no route for this path")]
    UnknownRoute,
    #[error("request body is larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("could not read the request body")]
    BodyRead,
    #[error("the request body paused longer than the server allows")]
    BodyTimeout,
    #[error("too many request bodies are being buffered; retry shortly")]
    BodyBudgetFull,
    /// A request target keyrelay will not forward: dot segments, encoded slashes, empty
    /// segments, absolute-form. The reason is fixed text.
    #[error("request path refused: {0}")]
    BadPath(&'static str),
    #[error("method not allowed")]
    MethodNotAllowed,
    /// A WebSocket upgrade where WebSockets are off: 426, so clients fall back to HTTP.
    #[error("WebSockets are not enabled here; use HTTP")]
    WebSocketDisabled,
    /// A WebSocket handshake keyrelay cannot forward; the reason is fixed text.
    #[error("bad WebSocket handshake: {0}")]
    BadUpgrade(&'static str),
    /// A keyrelay resource id that does not open: forged, altered or from elsewhere.
    #[error("this resource id was not issued by this keyrelay (or was altered)")]
    ResourceIdInvalid,
    /// A provider's own resource id, with `[affinity] unknown_ids = "refuse"`.
    #[error("resource ids not issued by this keyrelay are refused")]
    ResourceIdUnknown,
    #[error("the resource ids in this request belong to different keys")]
    ResourceIdsConflict,
    /// A key group (`x-keyrelay-group`, or the client's default) no key of the pool is in.
    #[error("no key here is in the key group this request names (x-keyrelay-group or the client's default)")]
    UnknownKeyGroup,
    /// The client's own limit, or its tenant's (`scope`: "client" or "tenant"), of requests
    /// (`limit`: "rpm") or of tokens ("tpm").
    #[error("the {scope}'s {} is reached; retry after {} s", limit_text(limit), retry_after_secs(.retry_after))]
    ClientLimited {
        scope: &'static str,
        limit: &'static str,
        retry_after: Duration,
    },

    // The pool's side.
    /// The key a resource id is sealed to is no longer in the config.
    #[error("the key that holds this resource was removed from keyrelay's config")]
    ResourceKeyRemoved,
    /// The key a resource id is sealed to is disabled.
    #[error("the key that holds this resource is disabled")]
    ResourceKeyDisabled,
    #[error("every key of this provider is rate limited; retry after {} s", retry_after_secs(.retry_after))]
    AllKeysCooling { retry_after: Duration },
    #[error("no key of this provider can serve now")]
    NoUsableKey,

    // The upstream's side.
    #[error("upstream unreachable")]
    UpstreamUnreachable,
    #[error("upstream did not answer in time")]
    UpstreamTimeout,
    #[error("upstream refused every key tried")]
    UpstreamRejectedKeys,
    #[error("the upstream connection failed after the request was sent; not sent again, as the provider may have processed it")]
    UpstreamLost,
    /// Every key tried was refused for this request (permission or scope); the provider's
    /// status and error type are kept, its message is not (it may echo part of a key).
    #[error("the provider refused this request for every key tried ({kind})")]
    UpstreamRefused { status: StatusCode, kind: ErrorKind },
    #[error("the upstream's error answer could not be read")]
    UpstreamUnreadable,
    /// Only in the last event of a cut SSE stream.
    #[error("the upstream stream was cut before it ended")]
    StreamCut,
    /// Only in the last event of an SSE stream that went idle.
    #[error("the upstream stream sent nothing for too long")]
    StreamIdle,

    // keyrelay's own.
    /// A joined upstream URL whose scheme, host or port is not the provider's: never sent.
    #[error("internal error")]
    UpstreamMismatch,
}

/// A provider's error type as keyrelay repeats it: a short word of letters and `_` (no digits,
/// so no key fragment can pass as one), or `"refused"` when the provider's was anything else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorKind(String);

impl ErrorKind {
    /// The type in a provider's error body: `error.type` (OpenAI, Anthropic), else
    /// `error.status` (Gemini), else `error.code` when it is a word.
    pub fn from_body(body: &[u8]) -> ErrorKind {
        let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let e = &v["error"];
        let word = [&e["type"], &e["status"], &e["code"]]
            .into_iter()
            .filter_map(|f| f.as_str())
            .find(|w| {
                !w.is_empty()
                    && w.len() <= 48
                    && w.bytes().all(|b| b.is_ascii_alphabetic() || b == b'_')
            });
        ErrorKind(word.unwrap_or("refused").to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<UpstreamError> for ProxyError {
    fn from(e: UpstreamError) -> Self {
        match e {
            e if e.timed_out() => ProxyError::UpstreamTimeout,
            UpstreamError::Lost(_) => ProxyError::UpstreamLost,
            _ => ProxyError::UpstreamUnreachable,
        }
    }
}

/// What a client limit counts, as its error names it.
fn limit_text(limit: &str) -> &'static str {
    match limit {
        "tpm" => "token limit (tpm)",
        _ => "request limit (rpm)",
    }
}

/// Whole seconds to wait, rounded up, at least 1.
pub fn retry_after_secs(d: &Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Unauthorized => StatusCode::UNAUTHORIZED,
            ProxyError::UnknownRoute => StatusCode::NOT_FOUND,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BodyRead | ProxyError::BadPath(_) => StatusCode::BAD_REQUEST,
            ProxyError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::BodyBudgetFull => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::WebSocketDisabled => StatusCode::UPGRADE_REQUIRED,
            ProxyError::BadUpgrade(_) => StatusCode::BAD_REQUEST,
            ProxyError::ResourceIdInvalid
            | ProxyError::ResourceIdUnknown
            | ProxyError::ResourceIdsConflict
            | ProxyError::UnknownKeyGroup => StatusCode::BAD_REQUEST,
            ProxyError::ResourceKeyRemoved => StatusCode::GONE,
            // The key may serve again once an operator enables it: a rate limit, not a refusal.
            ProxyError::ResourceKeyDisabled => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::UpstreamMismatch => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::StreamCut => StatusCode::BAD_GATEWAY,
            ProxyError::StreamIdle => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::AllKeysCooling { .. } | ProxyError::ClientLimited { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ProxyError::NoUsableKey => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamUnreachable
            | ProxyError::UpstreamRejectedKeys
            | ProxyError::UpstreamLost
            | ProxyError::UpstreamUnreadable => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamRefused { status, .. } => *status,
            ProxyError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// A stable machine-readable code, also the `type` field.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::Unauthorized => "invalid_api_key",
            ProxyError::UnknownRoute => "not_found",
            ProxyError::BodyTooLarge { .. } => "request_too_large",
            ProxyError::BodyRead => "invalid_request_error",
            ProxyError::BodyTimeout => "request_timeout",
            ProxyError::BodyBudgetFull => "overloaded",
            ProxyError::BadPath(_) => "invalid_path",
            ProxyError::MethodNotAllowed => "method_not_allowed",
            ProxyError::WebSocketDisabled => "websocket_disabled",
            ProxyError::BadUpgrade(_) => "invalid_websocket_handshake",
            ProxyError::ResourceIdInvalid => "invalid_resource_id",
            ProxyError::ResourceIdUnknown => "unknown_resource_id",
            ProxyError::ResourceIdsConflict => "resource_ids_conflict",
            ProxyError::UnknownKeyGroup => "unknown_key_group",
            ProxyError::ResourceKeyRemoved => "resource_key_removed",
            ProxyError::ResourceKeyDisabled => "resource_key_disabled",
            ProxyError::UpstreamMismatch => "internal_error",
            ProxyError::StreamCut => "upstream_stream_cut",
            ProxyError::StreamIdle => "upstream_stream_idle",
            ProxyError::AllKeysCooling { .. } => "rate_limit_exceeded",
            ProxyError::ClientLimited { .. } => "client_rate_limit_exceeded",
            ProxyError::NoUsableKey => "no_usable_key",
            ProxyError::UpstreamUnreachable => "upstream_unreachable",
            ProxyError::UpstreamTimeout => "upstream_timeout",
            ProxyError::UpstreamRejectedKeys => "upstream_rejected_keys",
            ProxyError::UpstreamLost => "upstream_connection_lost",
            ProxyError::UpstreamRefused { .. } => "upstream_refused",
            ProxyError::UpstreamUnreadable => "upstream_unreadable",
        }
    }

    fn kind(&self) -> &str {
        match self {
            ProxyError::UpstreamRefused { kind, .. } => kind.as_str(),
            ProxyError::Unauthorized => "authentication_error",
            ProxyError::UnknownRoute => "not_found_error",
            ProxyError::BodyTooLarge { .. } => "request_too_large",
            ProxyError::BodyRead
            | ProxyError::BodyTimeout
            | ProxyError::BadPath(_)
            | ProxyError::MethodNotAllowed
            | ProxyError::WebSocketDisabled
            | ProxyError::BadUpgrade(_)
            | ProxyError::ResourceIdInvalid
            | ProxyError::ResourceIdUnknown
            | ProxyError::ResourceIdsConflict
            | ProxyError::UnknownKeyGroup
            | ProxyError::ResourceKeyRemoved => "invalid_request_error",
            ProxyError::ResourceKeyDisabled => "rate_limit_error",
            ProxyError::BodyBudgetFull => "overloaded_error",
            ProxyError::AllKeysCooling { .. } | ProxyError::ClientLimited { .. } => {
                "rate_limit_error"
            }
            ProxyError::NoUsableKey
            | ProxyError::UpstreamUnreachable
            | ProxyError::UpstreamTimeout
            | ProxyError::UpstreamRejectedKeys
            | ProxyError::UpstreamLost
            | ProxyError::UpstreamUnreadable
            | ProxyError::UpstreamMismatch
            | ProxyError::StreamCut
            | ProxyError::StreamIdle => "api_error",
        }
    }

    fn gemini_status(&self) -> &'static str {
        match self {
            ProxyError::Unauthorized => "UNAUTHENTICATED",
            ProxyError::UnknownRoute => "NOT_FOUND",
            ProxyError::BodyTooLarge { .. }
            | ProxyError::BodyRead
            | ProxyError::BadPath(_)
            | ProxyError::MethodNotAllowed
            | ProxyError::BadUpgrade(_) => "INVALID_ARGUMENT",
            ProxyError::WebSocketDisabled => "FAILED_PRECONDITION",
            ProxyError::ResourceIdInvalid
            | ProxyError::ResourceIdUnknown
            | ProxyError::ResourceIdsConflict
            | ProxyError::UnknownKeyGroup => "INVALID_ARGUMENT",
            ProxyError::ResourceKeyRemoved => "NOT_FOUND",
            ProxyError::ResourceKeyDisabled => "RESOURCE_EXHAUSTED",
            ProxyError::BodyTimeout | ProxyError::StreamIdle => "DEADLINE_EXCEEDED",
            ProxyError::BodyBudgetFull => "UNAVAILABLE",
            ProxyError::AllKeysCooling { .. } | ProxyError::ClientLimited { .. } => {
                "RESOURCE_EXHAUSTED"
            }
            ProxyError::NoUsableKey | ProxyError::UpstreamUnreachable => "UNAVAILABLE",
            ProxyError::UpstreamTimeout => "DEADLINE_EXCEEDED",
            ProxyError::UpstreamRejectedKeys
            | ProxyError::UpstreamLost
            | ProxyError::UpstreamUnreadable
            | ProxyError::UpstreamMismatch
            | ProxyError::StreamCut => "INTERNAL",
            ProxyError::UpstreamRefused { .. } => "PERMISSION_DENIED",
        }
    }

    /// The JSON body in `shape`. Holds only our own fixed text: never a key, token or
    /// upstream detail.
    pub fn body(&self, shape: ErrorShape) -> String {
        let message = format!("keyrelay: {self}");
        let json = match shape {
            ErrorShape::OpenAi => serde_json::json!({
                "error": { "message": message, "type": self.kind(), "code": self.code() }
            }),
            ErrorShape::Anthropic => serde_json::json!({
                "type": "error",
                "error": { "type": self.kind(), "message": message }
            }),
            ErrorShape::Gemini => serde_json::json!({
                "error": {
                    "code": self.status().as_u16(),
                    "message": message,
                    "status": self.gemini_status()
                }
            }),
        };
        json.to_string()
    }

    /// The response. No side effects: logging and metrics happen at the boundary.
    pub fn into_response(self, shape: ErrorShape) -> Response<ProxyBody> {
        let mut resp = Response::new(ProxyBody::full(self.body(shape)));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        match &self {
            ProxyError::AllKeysCooling { retry_after }
            | ProxyError::ClientLimited { retry_after, .. } => {
                h.insert(
                    http::header::RETRY_AFTER,
                    HeaderValue::from(retry_after_secs(retry_after)),
                );
            }
            ProxyError::BodyBudgetFull => {
                h.insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        if matches!(self, ProxyError::Unauthorized) && shape == ErrorShape::OpenAi {
            h.insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let e = ProxyError::AllKeysCooling {
            retry_after: Duration::from_millis(1200),
        };
        let v: serde_json::Value = serde_json::from_str(&e.body(ErrorShape::OpenAi)).unwrap();
        assert_eq!(v["error"]["code"], "rate_limit_exceeded");
        assert_eq!(v["error"]["type"], "rate_limit_error");
        let v: serde_json::Value = serde_json::from_str(&e.body(ErrorShape::Anthropic)).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "rate_limit_error");
        let v: serde_json::Value = serde_json::from_str(&e.body(ErrorShape::Gemini)).unwrap();
        assert_eq!(v["error"]["status"], "RESOURCE_EXHAUSTED");
        assert_eq!(v["error"]["code"], 429);
        let resp = e.into_response(ErrorShape::OpenAi);
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()["retry-after"], "2");
    }

    #[test]
    fn a_refusal_keeps_the_providers_type_and_nothing_else() {
        let anthropic = br#"{"type":"error","error":{"type":"permission_error","message":"key sk-ant-abc123 may not"}}"#;
        let e = ProxyError::UpstreamRefused {
            status: StatusCode::FORBIDDEN,
            kind: ErrorKind::from_body(anthropic),
        };
        let body = e.body(ErrorShape::Anthropic);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["type"], "permission_error");
        assert!(!body.contains("sk-ant"), "{body}");
        assert_eq!(e.status(), 403);
        let gemini = br#"{"error":{"code":403,"message":"m","status":"PERMISSION_DENIED"}}"#;
        assert_eq!(ErrorKind::from_body(gemini).as_str(), "PERMISSION_DENIED");
        let odd = br#"{"error":{"type":"sk-abc def","code":"AIzaSyA1234567890"}}"#;
        assert_eq!(ErrorKind::from_body(odd).as_str(), "refused");
        assert_eq!(ErrorKind::from_body(b"not json").as_str(), "refused");
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(&Duration::from_millis(10)), 1);
        assert_eq!(retry_after_secs(&Duration::from_secs(30)), 30);
        assert_eq!(retry_after_secs(&Duration::from_millis(30_001)), 31);
        assert_eq!(retry_after_secs(&Duration::ZERO), 1);
    }
}
