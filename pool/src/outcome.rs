//! Judging an upstream answer (or its absence) into an [`Outcome`] the pool can act on.
//!
//! | answer                                                        | outcome        | the key                         | the request               |
//! |---------------------------------------------------------------|----------------|---------------------------------|---------------------------|
//! | 1xx-3xx                                                       | `Success`      | -                               | passed on                 |
//! | 429                                                           | `RateLimited`  | cools for the hint              | next key                  |
//! | 401; 400/403 whose error says the key is invalid (Gemini `API_KEY_INVALID`, OpenAI `invalid_api_key`) | `Unauthorized` | quarantined | next key |
//! | 403 otherwise (permission, scope, model access)               | `Forbidden`    | skipped on that route a while   | next key                  |
//! | 503, 529                                                      | `Overloaded`   | -                               | next key                  |
//! | other 5xx                                                     | `ServerError`  | -                               | next key                  |
//! | no connection, or refused before the request was sent         | `NotSent`      | -                               | next key                  |
//! | sent, then reset or no head in time                           | `Lost`         | -                               | answered (504/502), unless the provider opts in to replays |
//! | other 4xx                                                     | `ClientError`  | -                               | passed on                 |

use crate::hints::rate_limit_hint;
use http::{HeaderMap, StatusCode};
use std::time::{Duration, SystemTime};

/// What one attempt with one key came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// 1xx, 2xx, 3xx: the answer goes to the client.
    Success,
    /// 429: the key cools for the hint, or the pool's default cooldown.
    RateLimited { retry_after: Option<Duration> },
    /// The provider says the key itself is invalid; it is quarantined.
    Unauthorized,
    /// The provider refuses this key for this request (permission, scope, model access). The
    /// key stays in service for other traffic; the request tries the next key.
    Forbidden,
    /// 503 or 529: the provider is overloaded; try another key, do not blame this one.
    Overloaded,
    /// Any other 5xx.
    ServerError,
    /// No answer, and the request provably never reached the provider (connect or TLS
    /// failure, a connection closed before the request was written, HTTP/2 refused stream).
    NotSent,
    /// No answer after the request was sent (reset, or no head in time): the provider may be
    /// working on it, so it is not replayed unless the provider is known to be idempotent.
    Lost,
    /// Any other 4xx: the request itself is wrong, so another key would not help.
    ClientError,
}

impl Outcome {
    /// Whether the same request may go to the next key (a `Lost` request only where the
    /// provider opted in to replays).
    pub fn retryable(&self, retry_after_send: bool) -> bool {
        match self {
            Outcome::Success | Outcome::ClientError => false,
            Outcome::Lost => retry_after_send,
            _ => true,
        }
    }

    /// A closed label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::RateLimited { .. } => "rate_limited",
            Outcome::Unauthorized => "unauthorized",
            Outcome::Forbidden => "forbidden",
            Outcome::Overloaded => "overloaded",
            Outcome::ServerError => "server_error",
            Outcome::NotSent => "transport_error",
            Outcome::Lost => "lost_after_send",
            Outcome::ClientError => "client_error",
        }
    }
}

/// Whether a response head's status needs its (small) error body read to be judged: a 400 or
/// 403 may say that the key is invalid.
pub fn needs_body(status: StatusCode) -> bool {
    matches!(status.as_u16(), 400 | 403)
}

/// Whether an error body says, in its structured fields, that the key is invalid: OpenAI's
/// `error.code == "invalid_api_key"`, Gemini's `error.details[].reason == "API_KEY_INVALID"`.
/// Only those fields count, never the message, which may echo the client's own input: a client
/// must not be able to bench a key by sending text that looks like a provider's verdict.
fn says_invalid_key(body: &[u8]) -> bool {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return false;
    };
    let error = &v["error"];
    if error["code"] == "invalid_api_key" {
        return true;
    }
    error["details"]
        .as_array()
        .is_some_and(|d| d.iter().any(|x| x["reason"] == "API_KEY_INVALID"))
}

/// Classify a response head, with its error body where [`needs_body`] asked for it.
pub fn classify(
    status: StatusCode,
    headers: &HeaderMap,
    body: Option<&[u8]>,
    now: SystemTime,
) -> Outcome {
    let invalid_key = || body.is_some_and(says_invalid_key);
    match status.as_u16() {
        429 => Outcome::RateLimited {
            retry_after: rate_limit_hint(headers, now),
        },
        401 => Outcome::Unauthorized,
        400 | 403 if invalid_key() => Outcome::Unauthorized,
        403 => Outcome::Forbidden,
        503 | 529 => Outcome::Overloaded,
        500..=599 => Outcome::ServerError,
        400..=499 => Outcome::ClientError,
        _ => Outcome::Success,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn judge_with(code: u16, body: &str) -> Outcome {
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        classify(
            status,
            &HeaderMap::new(),
            Some(body.as_bytes()),
            SystemTime::now(),
        )
    }

    fn judge(code: u16) -> Outcome {
        judge_with(code, "")
    }

    #[test]
    fn statuses() {
        assert_eq!(judge(200), Outcome::Success);
        assert_eq!(judge(302), Outcome::Success);
        assert_eq!(judge(429), Outcome::RateLimited { retry_after: None });
        assert_eq!(judge(401), Outcome::Unauthorized);
        assert_eq!(judge(403), Outcome::Forbidden);
        assert_eq!(judge(503), Outcome::Overloaded);
        assert_eq!(judge(529), Outcome::Overloaded);
        assert_eq!(judge(500), Outcome::ServerError);
        assert_eq!(judge(400), Outcome::ClientError);
        assert_eq!(judge(404), Outcome::ClientError);
        assert!(!judge(400).retryable(false));
        assert!(!judge(200).retryable(true));
        assert!(judge(429).retryable(false) && judge(401).retryable(false));
        assert!(judge(502).retryable(false) && judge(403).retryable(false));
        assert!(Outcome::NotSent.retryable(false));
        assert!(!Outcome::Lost.retryable(false));
        assert!(Outcome::Lost.retryable(true));
    }

    #[test]
    fn error_bodies_that_name_an_invalid_key() {
        let gemini = r#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"reason":"API_KEY_INVALID"}]}}"#;
        assert_eq!(judge_with(400, gemini), Outcome::Unauthorized);
        let openai = r#"{"error":{"message":"Incorrect API key","type":"invalid_request_error","code":"invalid_api_key"}}"#;
        assert_eq!(judge_with(403, openai), Outcome::Unauthorized);
        let anthropic = r#"{"type":"error","error":{"type":"permission_error","message":"Your API key does not have permission to use the specified resource."}}"#;
        assert_eq!(judge_with(403, anthropic), Outcome::Forbidden);
        assert_eq!(
            judge_with(400, r#"{"error":{"message":"bad model"}}"#),
            Outcome::ClientError
        );
        // A message that merely echoes the words benches nothing.
        let echo = r#"{"error":{"message":"Invalid value: 'API_KEY_INVALID invalid_api_key'","code":null}}"#;
        assert_eq!(judge_with(400, echo), Outcome::ClientError);
        assert_eq!(judge_with(403, echo), Outcome::Forbidden);
        assert_eq!(judge_with(400, "API_KEY_INVALID"), Outcome::ClientError);
        assert!(needs_body(StatusCode::FORBIDDEN) && needs_body(StatusCode::BAD_REQUEST));
        assert!(!needs_body(StatusCode::OK) && !needs_body(StatusCode::UNAUTHORIZED));
    }

    #[test]
    fn rate_limit_carries_hint() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(
            classify(StatusCode::TOO_MANY_REQUESTS, &h, None, SystemTime::now()),
            Outcome::RateLimited {
                retry_after: Some(Duration::from_secs(7))
            }
        );
    }
}
