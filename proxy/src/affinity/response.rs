//! A resource answer with its ids sealed on the way out: JSON read whole up to the bound (past
//! it, passed on unrewritten and counted), SSE rewritten event by event as frames arrive, so a
//! stream is never held back beyond the event in progress.

use super::codec::KeyRef;
use super::Affinity;
use crate::body::{ProxyBody, StreamError};
use bytes::Bytes;
use http_body::{Body, Frame};
use serde_json::Value;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

/// How an answer is rewritten.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Json,
    Sse,
}

/// The answer's body, its ids sealed.
pub struct Sealing {
    inner: ProxyBody,
    affinity: Arc<Affinity>,
    key: KeyRef,
    kind: Kind,
    /// JSON read so far, or the SSE event in progress.
    buf: Vec<u8>,
    /// Past the bound: the rest passes as it comes.
    passing: bool,
    ready: VecDeque<Result<Frame<Bytes>, StreamError>>,
    done: bool,
    /// Map mode: the answering key's fingerprint; ids are remembered, not sealed.
    mapped: Option<String>,
    /// Map mode: ids found and not yet remembered.
    found: Vec<String>,
    /// Map mode: ids remembered from this answer (a stream names its id in every event: one
    /// store write, not one per event).
    remembered: Vec<String>,
    /// Map mode: the store write in flight; what is ready waits for it, so a client never
    /// names an id before the store knows it.
    /// Spawned: the write completes even when the client leaves.
    pending: Option<tokio::task::JoinHandle<()>>,
}

impl Sealing {
    pub fn new(
        inner: ProxyBody,
        affinity: Arc<Affinity>,
        (key, mapped): (KeyRef, Option<String>),
        kind: Kind,
    ) -> Sealing {
        Sealing {
            mapped,
            found: Vec::new(),
            remembered: Vec::new(),
            pending: None,
            inner,
            affinity,
            key,
            kind,
            buf: Vec::new(),
            passing: false,
            ready: VecDeque::new(),
            done: false,
        }
    }

    /// Map mode: start remembering the ids found so far.
    fn remember(&mut self) {
        let (Some(fp), Some(map)) = (&self.mapped, &self.affinity.map) else {
            return;
        };
        let mut ids = std::mem::take(&mut self.found);
        ids.sort_unstable();
        ids.dedup();
        ids.retain(|id| !self.remembered.contains(id));
        if ids.is_empty() {
            return;
        }
        if self.remembered.len() < 1000 {
            self.remembered.extend(ids.iter().cloned());
        }
        let (store, ttl, fp) = (map.store.clone(), map.ttl, fp.clone());
        let pool = self.affinity.scope.clone();
        self.pending = Some(tokio::spawn(async move {
            store.remember(&pool, &ids, &fp, ttl).await;
        }));
    }

    fn emit(&mut self, bytes: Vec<u8>) {
        if !bytes.is_empty() {
            self.ready.push_back(Ok(Frame::data(Bytes::from(bytes))));
        }
    }

    /// A data frame from the upstream.
    fn take(&mut self, data: Bytes) {
        if self.passing {
            self.ready.push_back(Ok(Frame::data(data)));
            return;
        }
        self.buf.extend_from_slice(&data);
        if self.kind == Kind::Sse {
            if let Some(end) = last_event_end(&self.buf) {
                let rest = self.buf.split_off(end);
                let events = std::mem::replace(&mut self.buf, rest);
                let sealed = self.seal_events(&events);
                self.emit(sealed);
            }
        }
        if self.buf.len() > self.affinity.max_rewrite {
            self.affinity.unrewritten.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                bytes = self.buf.len(),
                "a resource answer is larger than affinity.max_rewrite_bytes; its ids pass unsealed"
            );
            self.passing = true;
            let held = std::mem::take(&mut self.buf);
            self.emit(held);
        }
    }

    /// The upstream ended (or failed): what is held goes out, sealed if whole.
    fn flush(&mut self, whole: bool) {
        let held = std::mem::take(&mut self.buf);
        let out = match (self.kind, whole) {
            (Kind::Json, true) => self.seal_json(&held).unwrap_or(held),
            (Kind::Sse, true) => self.seal_events(&held),
            (_, false) => held,
        };
        self.emit(out);
    }

    fn seal_json(&mut self, bytes: &[u8]) -> Option<Vec<u8>> {
        let mut v: Value = serde_json::from_slice(bytes).ok()?;
        if self.mapped.is_some() {
            super::map::answer_ids(&v, &mut self.found);
            return None;
        }
        if !self.affinity.seal_value(&mut v, &self.key) {
            return None;
        }
        serde_json::to_vec(&v).ok()
    }

    /// Whole events: each `data:` line holding JSON gets its ids sealed; all else as it came.
    fn seal_events(&mut self, events: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(events.len() + 128);
        for line in events.split_inclusive(|b| *b == b'\n') {
            let body = line.strip_suffix(b"\n").unwrap_or(line);
            let body = body.strip_suffix(b"\r").unwrap_or(body);
            let sealed = body
                .strip_prefix(b"data:")
                .map(|d| d.strip_prefix(b" ").unwrap_or(d))
                .and_then(|d| self.seal_json(d));
            match sealed {
                Some(json) => {
                    out.extend_from_slice(b"data: ");
                    out.extend_from_slice(&json);
                    out.extend_from_slice(&line[body.len()..]);
                }
                None => out.extend_from_slice(line),
            }
        }
        out
    }
}

/// Where the last whole event in `buf` ends (after its blank line), if any.
fn last_event_end(buf: &[u8]) -> Option<usize> {
    let lf = buf.windows(2).rposition(|w| w == b"\n\n").map(|i| i + 2);
    let crlf = buf
        .windows(4)
        .rposition(|w| w == b"\r\n\r\n")
        .map(|i| i + 4);
    lf.max(crlf)
}

impl Body for Sealing {
    type Data = Bytes;
    type Error = StreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StreamError>>> {
        let this = self.get_mut();
        loop {
            if let Some(pending) = &mut this.pending {
                // A failed task (a panic) is no reason to hold the answer back.
                let _ = std::task::ready!(Pin::new(pending).poll(cx));
                this.pending = None;
            }
            if let Some(frame) = this.ready.pop_front() {
                return Poll::Ready(Some(frame));
            }
            if this.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        this.take(data);
                        this.remember();
                    }
                    Err(other) => this.ready.push_back(Ok(other)),
                },
                Poll::Ready(Some(Err(e))) => {
                    this.flush(false);
                    this.ready.push_back(Err(e));
                    this.done = true;
                }
                Poll::Ready(None) => {
                    this.flush(true);
                    this.remember();
                    this.done = true;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.ready.is_empty()
    }
}
