//! Per-request bookkeeping: request ids, and the one log line and metrics written when a
//! response ends, however it ends.

use crate::body::{EndHook, ProxyBody, StreamEnd};
use crate::error::{ErrorShape, ProxyError};
use crate::routes::Provider;
use http::Response;
use keyrelay_metrics::{Metrics, ProviderMetrics};
use keyrelay_pool::{Outcome, Verdict};
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

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

/// One attempt as the request's facts keep it.
struct Attempt {
    key: String,
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
    pub fn attempt(&mut self, key: &str, waited: Duration, answered: bool, verdict: Verdict) {
        self.upstream_wait += waited;
        self.attempts.push(Attempt {
            key: key.to_owned(),
            head_after: answered.then_some(waited),
            verdict,
        });
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
            m.attempt(&a.key, &a.verdict.outcome);
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
        let key = self.attempts.last().map_or("", |a| a.key.as_str());
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
