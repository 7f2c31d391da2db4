//! Response bodies of the mock: a fixed buffer, or an SSE stream paced by a timer.

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
    cut_after: Option<u64>,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    finished: bool,
    state: Arc<State>,
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
        cut_after: Option<u64>,
        state: Arc<State>,
    ) -> MockBody {
        state.counters.open_streams.fetch_add(1, Ordering::SeqCst);
        MockBody {
            kind: Kind::Sse(Box::new(Sse {
                total,
                sent: 0,
                delay,
                cut_after,
                timer: None,
                finished: false,
                state,
            })),
        }
    }
}

fn chunk(i: u64) -> Bytes {
    Bytes::from(format!(
        "data: {{\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok{i} \"}}}}]}}\n\n"
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
        if sse.cut_after.is_some_and(|n| sse.sent >= n) {
            // Pause first so the server flushes the head and earlier chunks before the abort.
            let timer = sse
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(Duration::from_millis(20))));
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            sse.finished = true;
            return Poll::Ready(Some(Err(Cut)));
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
        if sse.sent == sse.total {
            sse.finished = true;
            *sse.state
                .counters
                .last_chunk_at
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
                b"data: [DONE]\n\n",
            )))));
        }
        let data = chunk(sse.sent);
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
