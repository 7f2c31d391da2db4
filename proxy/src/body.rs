//! Bodies: the request body buffered (bounded) for replay, and the response body streamed
//! through frame by frame with an idle timeout and a guard that sees how it ended.

use crate::error::ProxyError;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Read the whole request body, refusing at once if it declares or reaches more than `limit`.
pub async fn buffer_request(
    body: Incoming,
    declared: Option<u64>,
    limit: usize,
) -> Result<Bytes, ProxyError> {
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ProxyError::BodyTooLarge { limit });
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(ProxyError::BodyTooLarge { limit })
        }
        Err(_) => Err(ProxyError::BodyRead),
    }
}

/// How a streamed response ended, as the guard saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamEnd {
    /// The upstream finished and every frame was handed on.
    Complete,
    /// The upstream failed mid-body; the client connection is aborted.
    UpstreamCut,
    /// No frame within the idle timeout; treated like a cut.
    IdleTimeout,
    /// The client went away first; dropping the body drops the upstream request.
    ClientGone,
}

impl StreamEnd {
    pub fn label(&self) -> &'static str {
        match self {
            StreamEnd::Complete => "complete",
            StreamEnd::UpstreamCut => "upstream_cut",
            StreamEnd::IdleTimeout => "idle_timeout",
            StreamEnd::ClientGone => "client_gone",
        }
    }
}

/// Called once when a response body ends, however it ends.
pub trait EndHook: Send + Sync + 'static {
    fn ended(&mut self, end: StreamEnd, bytes: u64);
}

/// The error a cut stream carries to hyper, which then aborts the client connection so the
/// client's HTTP library reports an incomplete message, never a clean end.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("upstream stream was cut")]
    Cut,
    #[error("upstream stream was idle for too long")]
    Idle,
}

struct Streamed {
    inner: Incoming,
    idle: Duration,
    timer: Pin<Box<Sleep>>,
    bytes: u64,
    end: Option<StreamEnd>,
    hook: Option<Box<dyn EndHook>>,
}

impl Drop for Streamed {
    fn drop(&mut self) {
        let end = self.end.unwrap_or(if self.inner.is_end_stream() {
            StreamEnd::Complete
        } else {
            StreamEnd::ClientGone
        });
        if let Some(mut hook) = self.hook.take() {
            hook.ended(end, self.bytes);
        }
    }
}

/// An upstream answer read whole (a small error body), passed on as read.
struct Held {
    bytes: Option<Bytes>,
    len: u64,
    hook: Box<dyn EndHook>,
}

impl Drop for Held {
    fn drop(&mut self) {
        let (end, sent) = match self.bytes {
            None => (StreamEnd::Complete, self.len),
            Some(_) => (StreamEnd::ClientGone, 0),
        };
        self.hook.ended(end, sent);
    }
}

enum Kind {
    Full(Option<Bytes>),
    Held(Held),
    Stream(Box<Streamed>),
}

/// The response body keyrelay sends: its own small JSON, or an upstream body passed through.
pub struct ProxyBody {
    kind: Kind,
}

impl ProxyBody {
    pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
        ProxyBody {
            kind: Kind::Full(Some(bytes.into())),
        }
    }

    /// An upstream body already read; `hook` sees it end.
    pub fn read(bytes: Bytes, hook: Box<dyn EndHook>) -> ProxyBody {
        ProxyBody {
            kind: Kind::Held(Held {
                len: bytes.len() as u64,
                bytes: Some(bytes),
                hook,
            }),
        }
    }

    pub fn streamed(inner: Incoming, idle: Duration, hook: Option<Box<dyn EndHook>>) -> ProxyBody {
        ProxyBody {
            kind: Kind::Stream(Box::new(Streamed {
                inner,
                idle,
                timer: Box::pin(tokio::time::sleep(idle)),
                bytes: 0,
                end: None,
                hook,
            })),
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = StreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StreamError>>> {
        let s = match &mut self.get_mut().kind {
            Kind::Full(b) | Kind::Held(Held { bytes: b, .. }) => {
                return Poll::Ready(b.take().map(|b| Ok(Frame::data(b))))
            }
            Kind::Stream(s) => s,
        };
        if s.end.is_some() {
            return Poll::Ready(None);
        }
        match Pin::new(&mut s.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    s.bytes += data.len() as u64;
                }
                s.timer.as_mut().reset(Instant::now() + s.idle);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(_))) => {
                s.end = Some(StreamEnd::UpstreamCut);
                Poll::Ready(Some(Err(StreamError::Cut)))
            }
            Poll::Ready(None) => {
                s.end = Some(StreamEnd::Complete);
                Poll::Ready(None)
            }
            Poll::Pending => {
                if s.timer.as_mut().poll(cx).is_ready() {
                    s.end = Some(StreamEnd::IdleTimeout);
                    return Poll::Ready(Some(Err(StreamError::Idle)));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(b) | Kind::Held(Held { bytes: b, .. }) => b.is_none(),
            Kind::Stream(s) => s.end.is_some() || s.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(b)) | Kind::Held(Held { bytes: Some(b), .. }) => {
                SizeHint::with_exact(b.len() as u64)
            }
            Kind::Full(None) | Kind::Held(Held { bytes: None, .. }) => SizeHint::with_exact(0),
            Kind::Stream(s) => s.inner.size_hint(),
        }
    }
}
