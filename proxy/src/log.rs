//! Per-request bookkeeping: request ids, and the one log line and metrics written when a
//! response ends, however it ends.

use crate::body::{EndHook, ProxyBody, StreamEnd};
use crate::error::{ErrorShape, ProxyError};
use crate::routes::Provider;
use http::{HeaderValue, Response};
use keyrelay_metrics::{Metrics, ProviderMetrics};
use keyrelay_pool::{Key, Outcome, Verdict};
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// The response header that carries the request id.
pub const REQUEST_ID_HEADER: http::HeaderName =
    http::HeaderName::from_static("x-keyrelay-request-id");

/// Request ids: a random per-process prefix and a counter, so ids are unique across instances.
pub struct RequestIds {
    prefix: u32,
    next: AtomicU64,
}

impl RequestIds {
    pub fn new() -> Self {
        let seed = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        RequestIds {
            prefix: (seed >> 32) as u32,
            next: AtomicU64::new(1),
        }
    }

    pub fn next(&self) -> RequestId {
        RequestId(self.prefix, self.next.fetch_add(1, Ordering::Relaxed))
    }
}

impl Default for RequestIds {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Clone, Copy, Debug)]
pub struct RequestId(u32, u64);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}-{:x}", self.0, self.1)
    }
}

impl RequestId {
    /// The id as its `x-keyrelay-request-id` header value: the [`fmt::Display`] text, written
    /// without the formatting machinery (this runs on every response).
    pub fn header_value(&self) -> HeaderValue {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut buf = [0u8; 8 + 1 + 16];
        for (i, b) in buf[..8].iter_mut().enumerate() {
            *b = HEX[((self.0 >> (28 - 4 * i)) & 0xf) as usize];
        }
        buf[8] = b'-';
        let digits = (16 - self.1.leading_zeros() as usize / 4).max(1);
        for (i, b) in buf[9..9 + digits].iter_mut().enumerate() {
            *b = HEX[((self.1 >> (4 * (digits - 1 - i))) & 0xf) as usize];
        }
        HeaderValue::from_bytes(&buf[..9 + digits])
            .unwrap_or_else(|_| HeaderValue::from_static("-"))
    }
}

/// One attempt as the request's facts keep it.
struct Attempt {
    /// The key's index in the provider's pool.
    key: usize,
    /// How long the response head took, when one came.
    head_after: Option<Duration>,
    verdict: Verdict,
}

/// What is known about a request so far; its metrics and its one log line are written once,
/// when its answer is decided (attempts) and when its response ends (the rest). Holds names
/// only.
pub struct RequestLog {
    id: RequestId,
    started: Instant,
    client: String,
    /// The provider once routed; until then the `"none"` handles.
    provider: Option<Arc<Provider>>,
    unrouted: ProviderMetrics,
    attempts: Vec<Attempt>,
    status: u16,
    metrics: Metrics,
    done: bool,
    /// Time spent waiting on upstream response heads, over all attempts.
    upstream_wait: Duration,
    streaming: bool,
}

impl RequestLog {
    pub fn new(id: RequestId, metrics: Metrics, unrouted: ProviderMetrics) -> Self {
        metrics.request_started();
        RequestLog {
            id,
            started: Instant::now(),
            client: String::new(),
            provider: None,
            unrouted,
            attempts: Vec::new(),
            status: 0,
            metrics,
            done: false,
            upstream_wait: Duration::ZERO,
            streaming: false,
        }
    }

    pub fn client(&mut self, name: &str) {
        self.client = name.to_owned();
    }

    pub fn provider(&mut self, provider: &Arc<Provider>) {
        self.provider = Some(provider.clone());
    }

    /// One attempt: the key it used, how long it waited upstream, whether a head came, and
    /// the pool's verdict.
    pub fn attempt(&mut self, key: &Key, waited: Duration, answered: bool, verdict: Verdict) {
        self.upstream_wait += waited;
        // The key is the provider pool's own (a lease hands out a reference into it).
        let index = self
            .provider
            .as_ref()
            .and_then(|p| p.pool.spec().keys.iter().position(|k| std::ptr::eq(k, key)))
            .unwrap_or(usize::MAX);
        self.attempts.push(Attempt {
            key: index,
            head_after: answered.then_some(waited),
            verdict,
        });
    }

    /// The name of the key at `index` of the provider's pool.
    fn key_name(&self, index: usize) -> &str {
        self.provider
            .as_ref()
            .and_then(|p| p.pool.spec().keys.get(index))
            .map_or("unknown", |k| k.name.as_str())
    }

    fn handles(&self) -> &ProviderMetrics {
        self.provider
            .as_ref()
            .map_or(&self.unrouted, |p| &p.metrics)
    }

    /// The attempts' facts, written once the answer is decided.
    fn emit_attempts(&self) {
        let m = self.handles();
        let mut previous: Option<&Outcome> = None;
        for a in &self.attempts {
            if let Some(after) = previous {
                m.retry(after);
            }
            m.key_attempt(a.key, self.key_name(a.key), &a.verdict.outcome);
            if let Some(waited) = a.head_after {
                m.upstream_head(waited);
            }
            if let Some(mark) = &a.verdict.mark {
                m.marked(mark);
            }
            previous = Some(&a.verdict.outcome);
        }
    }

    /// Answer with keyrelay's own error and finish the log.
    pub fn error(mut self, e: ProxyError, shape: ErrorShape) -> Response<ProxyBody> {
        let resp = e.into_response(shape);
        self.status = resp.status().as_u16();
        self.finish("error", 0);
        resp
    }

    /// Hand the log to the response body, which finishes it when the stream ends.
    pub fn streaming(mut self, status: u16) -> Box<dyn EndHook> {
        self.status = status;
        let head_after = self.started.elapsed();
        self.handles()
            .proxy_added(head_after.saturating_sub(self.upstream_wait));
        self.emit_attempts();
        self.metrics.stream_opened();
        self.streaming = true;
        Box::new(self)
    }

    fn finish(&mut self, end: &str, bytes: u64) {
        if self.done {
            return;
        }
        self.done = true;
        if !self.streaming {
            self.emit_attempts();
        }
        self.metrics.request_ended();
        if self.streaming {
            self.metrics.stream_closed();
        }
        let took = self.started.elapsed();
        let routed = self.provider.is_some();
        self.handles().answered(self.status, routed.then_some(took));
        let provider = self.provider.as_ref().map_or("", |p| p.name.as_str());
        let key = self.attempts.last().map_or("", |a| self.key_name(a.key));
        tracing::info!(
            target: "keyrelay::access",
            id = %self.id,
            client = %self.client,
            provider,
            key,
            status = self.status,
            attempts = self.attempts.len(),
            end,
            bytes,
            upstream_ms = self.upstream_wait.as_millis() as u64,
            ms = took.as_millis() as u64,
            "request"
        );
    }
}

impl EndHook for RequestLog {
    fn ended(&mut self, end: StreamEnd, bytes: u64) {
        self.finish(end.label(), bytes);
    }
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        // A request abandoned before any answer (the client left mid-attempt).
        self.finish("client_gone", 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_id_header_is_its_display_text() {
        for (prefix, n) in [
            (0, 0),
            (0xdead_beef, 1),
            (7, 0xabc),
            (u32::MAX, u64::MAX),
            (1, 16),
        ] {
            let id = RequestId(prefix, n);
            assert_eq!(
                id.header_value().to_str().ok(),
                Some(id.to_string().as_str())
            );
        }
    }
}
