//! Response bodies of the mock: a fixed buffer, or an SSE stream paced by a timer.

use crate::conn::ConnCtl;
use crate::fault::StreamFault;
use crate::State;
use bytes::Bytes;
use http_body::{Body, Frame};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Error that aborts the connection mid-body, to simulate a provider cutting a stream.
#[derive(Debug)]
pub struct Cut;

impl std::fmt::Display for Cut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("mock upstream cut the stream")
    }
}

impl std::error::Error for Cut {}

pub struct MockBody {
    kind: Kind,
}

enum Kind {
    Full(Option<Bytes>),
    Sse(Box<Sse>),
}

struct Sse {
    total: u64,
    sent: u64,
    delay: Duration,
    fault: Option<StreamFault>,
    ctl: Arc<ConnCtl>,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    finished: bool,
    state: Arc<State>,
    /// Chunks carry their send time (`x-mock-stamp`, see `stamp.rs`).
    stamp: bool,
    /// A usage chunk is still to come before `[DONE]` (`stream_options.include_usage`).
    usage: bool,
}

impl Drop for Sse {
    fn drop(&mut self) {
        self.state
            .counters
            .open_streams
            .fetch_sub(1, Ordering::SeqCst);
        if !self.finished {
            self.state
                .counters
                .streams_abandoned
                .fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl MockBody {
    pub fn full(bytes: Bytes) -> MockBody {
        MockBody {
            kind: Kind::Full(Some(bytes)),
        }
    }

    pub(crate) fn sse(
        total: u64,
        delay: Duration,
        fault: Option<StreamFault>,
        state: Arc<State>,
        ctl: Arc<ConnCtl>,
    ) -> MockBody {
        state.counters.open_streams.fetch_add(1, Ordering::SeqCst);
        MockBody {
            kind: Kind::Sse(Box::new(Sse {
                total,
                sent: 0,
                delay,
                fault,
                ctl,
                timer: None,
                finished: false,
                state,
                stamp: false,
                usage: false,
            })),
        }
    }

    /// End with OpenAI's usage chunk (prompt 5, one completion token per chunk) when `on`.
    pub(crate) fn with_usage(mut self, on: bool) -> MockBody {
        if let Kind::Sse(s) = &mut self.kind {
            s.usage = on;
        }
        self
    }

    /// Stamp each chunk with its send time when `on` (see `stamp.rs`).
    pub(crate) fn with_stamp(mut self, on: bool) -> MockBody {
        if let Kind::Sse(s) = &mut self.kind {
            s.stamp = on;
        }
        self
    }
}

/// One poll of a body's next frame.
type Polled = Poll<Option<Result<Frame<Bytes>, Cut>>>;

impl Sse {
    /// What a stream fault makes of the next frame, if it takes over.
    fn fault_frame(&mut self, cx: &mut Context<'_>) -> Option<Polled> {
        match self.fault {
            Some(StreamFault::Cut { after, rst }) if self.sent >= after => {
                // Pause first so the server flushes the head and earlier chunks before the abort.
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(Duration::from_millis(20))));
                if timer.as_mut().poll(cx).is_pending() {
                    return Some(Poll::Pending);
                }
                self.finished = true;
                if rst {
                    self.ctl.reset();
                }
                return Some(Poll::Ready(Some(Err(Cut))));
            }
            // Stalled for good: the connection stays open, nothing more comes.
            Some(StreamFault::Stall(after)) if self.sent >= after => return Some(Poll::Pending),
            Some(StreamFault::ErrorEvent(after)) if self.sent == after => {
                self.finished = true;
                let event = "event: error\ndata: {\"error\":{\"message\":\"mock overloaded mid-stream\",\"type\":\"server_error\"}}\n\n";
                return Some(Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
                    event.as_bytes(),
                ))))));
            }
            _ => {}
        }
        None
    }
}

/// What a content chunk ends its JSON with when `usage` is on: `"usage":null`, as OpenAI's
/// chunks do when `stream_options.include_usage` asks for the usage chunk at the end.
pub(crate) fn null_usage(usage: bool) -> &'static str {
    if usage {
        ",\"usage\":null"
    } else {
        ""
    }
}

/// Content chunk `i` (see [`null_usage`]).
fn chunk(i: u64, usage: bool) -> Bytes {
    let usage = null_usage(usage);
    Bytes::from(format!(
        "data: {{\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok{i} \"}}}}]{usage}}}\n\n"
    ))
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = Cut;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Cut>>> {
        let this = self.get_mut();
        let sse = match &mut this.kind {
            Kind::Full(b) => return Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Sse(s) => s,
        };
        if sse.finished {
            return Poll::Ready(None);
        }
        if let Some(ready) = sse.fault_frame(cx) {
            return ready;
        }
        if sse.sent > 0 && !sse.delay.is_zero() {
            let delay = sse.delay;
            let timer = sse
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(delay)));
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            sse.timer = None;
        }
        if sse.sent == sse.total && sse.usage {
            sse.usage = false;
            let (prompt, completion) = (5, sse.total);
            let total = prompt + completion;
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(format!(
                "data: {{\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{{\"prompt_tokens\":{prompt},\"completion_tokens\":{completion},\"total_tokens\":{total}}}}}\n\n"
            ))))));
        }
        if sse.sent == sse.total {
            sse.finished = true;
            if sse.fault == Some(StreamFault::NoDone) {
                return Poll::Ready(None);
            }
            *sse.state
                .counters
                .last_chunk_at
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
                b"data: [DONE]\n\n",
            )))));
        }
        let data = match sse.fault {
            Some(StreamFault::Malformed(n)) if sse.sent == n => {
                Bytes::from_static(b"data: {\"id\":\"chatcmpl-mock\",\"choices\":[{\"delta\n\n")
            }
            _ if sse.stamp => crate::stamp::chunk(sse.sent, sse.usage),
            _ => chunk(sse.sent, sse.usage),
        };
        sse.sent += 1;
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(b) => b.is_none(),
            Kind::Sse(s) => s.finished,
        }
    }
}
