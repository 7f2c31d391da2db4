//! Per-request bookkeeping: request ids, and the one log line and metrics written when a
//! response ends, however it ends.

use crate::body::{EndHook, ProxyBody, StreamEnd};
use crate::error::{ErrorShape, ProxyError};
use http::Response;
use keyrelay_metrics::{Metrics, StatusClass};
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
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

/// What is known about a request so far; written out once at its end. Holds names only.
pub struct RequestLog {
    id: RequestId,
    started: Instant,
    client: String,
    provider: String,
    key: String,
    attempts: u32,
    status: u16,
    metrics: Metrics,
    done: bool,
    /// Time spent waiting on upstream response heads, over all attempts.
    upstream_wait: std::time::Duration,
    streaming: bool,
}

impl RequestLog {
    pub fn new(id: RequestId, metrics: Metrics) -> Self {
        metrics.in_flight.inc();
        RequestLog {
            id,
            started: Instant::now(),
            client: String::new(),
            provider: String::new(),
            key: String::new(),
            attempts: 0,
            status: 0,
            metrics,
            done: false,
            upstream_wait: std::time::Duration::ZERO,
            streaming: false,
        }
    }

    pub fn upstream_wait(&mut self, waited: std::time::Duration) {
        self.upstream_wait += waited;
    }

    pub fn client(&mut self, name: &str) {
        self.client = name.to_owned();
    }

    pub fn provider(&mut self, name: &str) {
        self.provider = name.to_owned();
    }

    pub fn attempt(&mut self, key: &str) {
        self.attempts += 1;
        self.key = key.to_owned();
    }

    /// Answer with keyrelay's own error and finish the log.
    pub fn error(mut self, e: ProxyError, shape: ErrorShape) -> Response<ProxyBody> {
        let resp = e.into_response(shape);
        self.status = resp.status().as_u16();
        self.finish("error", 0);
        resp
    }

    /// Hand the log to the response body, which finishes it when the stream ends.
    pub fn streaming(mut self, status: u16, provider: &str) -> Box<dyn EndHook> {
        self.status = status;
        let head_after = self.started.elapsed();
        self.metrics
            .proxy_overhead
            .with_label_values(&[provider])
            .observe(head_after.saturating_sub(self.upstream_wait).as_secs_f64());
        self.metrics.open_streams.inc();
        self.streaming = true;
        Box::new(self)
    }

    fn finish(&mut self, end: &str, bytes: u64) {
        if self.done {
            return;
        }
        self.done = true;
        self.metrics.in_flight.dec();
        if self.streaming {
            self.metrics.open_streams.dec();
        }
        let provider = if self.provider.is_empty() {
            "none"
        } else {
            &self.provider
        };
        if !self.provider.is_empty() {
            self.metrics
                .request_duration
                .with_label_values(&[provider])
                .observe(self.started.elapsed().as_secs_f64());
        }
        self.metrics
            .requests
            .with_label_values(&[provider, StatusClass::of(self.status).label()])
            .inc();
        tracing::info!(
            target: "keyrelay::access",
            id = %self.id,
            client = %self.client,
            provider = %self.provider,
            key = %self.key,
            status = self.status,
            attempts = self.attempts,
            end,
            bytes,
            upstream_ms = self.upstream_wait.as_millis() as u64,
            ms = self.started.elapsed().as_millis() as u64,
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
