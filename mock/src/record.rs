//! What the mock records: each request as received, and stream counters.

use bytes::Bytes;
use std::sync::atomic::AtomicUsize;
use std::sync::Mutex;
use std::time::Instant;

/// One request as the mock received it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub key: Option<String>,
    pub method: String,
    /// Path and query.
    pub uri: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub at: Instant,
}

impl Seen {
    pub(crate) fn new(parts: &http::request::Parts, key: Option<String>, body: Bytes) -> Seen {
        Seen {
            key,
            method: parts.method.to_string(),
            uri: parts
                .uri
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default(),
            headers: parts
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body,
            at: Instant::now(),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Stream bookkeeping, for tests about cuts and disconnects.
#[derive(Debug, Default)]
pub struct Counters {
    /// Requests received (recorded or not), the control routes aside.
    pub received: AtomicUsize,
    /// SSE bodies currently alive.
    pub open_streams: AtomicUsize,
    /// SSE bodies dropped before their last chunk (the client side went away).
    pub streams_abandoned: AtomicUsize,
    /// When the most recent SSE body produced its final chunk.
    pub last_chunk_at: Mutex<Option<Instant>>,
}
