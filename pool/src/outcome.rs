//! Judging an upstream answer (or its absence) into an [`Outcome`] the pool can act on.

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
    /// 401 or 403: the provider refused the key itself; it is quarantined.
    Unauthorized,
    /// 503 or 529: the provider is overloaded; try another key, do not blame this one.
    Overloaded,
    /// Any other 5xx.
    ServerError,
    /// No answer: connect error, reset, or timeout before the response head.
    TransportError,
    /// Any other 4xx: the request itself is wrong, so another key would not help.
    ClientError,
}

impl Outcome {
    /// Whether the same request may go to the next key.
    pub fn retryable(&self) -> bool {
        !matches!(self, Outcome::Success | Outcome::ClientError)
    }

    /// A closed label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::RateLimited { .. } => "rate_limited",
            Outcome::Unauthorized => "unauthorized",
            Outcome::Overloaded => "overloaded",
            Outcome::ServerError => "server_error",
            Outcome::TransportError => "transport_error",
            Outcome::ClientError => "client_error",
        }
    }
}

/// Classify a response head.
pub fn classify(status: StatusCode, headers: &HeaderMap, now: SystemTime) -> Outcome {
    match status.as_u16() {
        429 => Outcome::RateLimited {
            retry_after: rate_limit_hint(headers, now),
        },
        401 | 403 => Outcome::Unauthorized,
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

    fn judge(code: u16) -> Outcome {
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        classify(status, &HeaderMap::new(), SystemTime::now())
    }

    #[test]
    fn statuses() {
        assert_eq!(judge(200), Outcome::Success);
        assert_eq!(judge(302), Outcome::Success);
        assert_eq!(judge(429), Outcome::RateLimited { retry_after: None });
        assert_eq!(judge(401), Outcome::Unauthorized);
        assert_eq!(judge(403), Outcome::Unauthorized);
        assert_eq!(judge(503), Outcome::Overloaded);
        assert_eq!(judge(529), Outcome::Overloaded);
        assert_eq!(judge(500), Outcome::ServerError);
        assert_eq!(judge(400), Outcome::ClientError);
        assert_eq!(judge(404), Outcome::ClientError);
        assert!(!judge(400).retryable());
        assert!(!judge(200).retryable());
        assert!(judge(429).retryable() && judge(401).retryable() && judge(502).retryable());
    }

    #[test]
    fn rate_limit_carries_hint() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(
            classify(StatusCode::TOO_MANY_REQUESTS, &h, SystemTime::now()),
            Outcome::RateLimited {
                retry_after: Some(Duration::from_secs(7))
            }
        );
    }
}
