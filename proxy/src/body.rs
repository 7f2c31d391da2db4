//! Bodies: the request body buffered (bounded, in `request`) for replay, or streamed and
//! spilled to disk when large (`replay`, `spill`), and the response body
//! streamed through frame by frame with an idle timeout and a guard that sees how it ended.
//! A cut SSE stream gets one last event carrying an error in the provider's shape before the
//! connection is aborted, so SDKs raise a clear error and still never see a clean end.

mod client;
mod gather;
mod replay;
mod request;
pub mod spill;

pub use client::ClientBody;
pub use replay::{spool, AttemptBody, Fault, RequestBody, Spooled};
pub use request::{buffer_request, discard, BodyLimits, Budget, Buffered, Permit, Read};

use crate::error::{ErrorShape, ProxyError};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long the error event of a cut SSE stream is given to reach the socket before the
/// connection is aborted (hyper drops what it has not written when a body fails).
const ERROR_EVENT_FLUSH: Duration = Duration::from_millis(50);

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

impl StreamError {
    fn end(&self) -> StreamEnd {
        match self {
            StreamError::Cut => StreamEnd::UpstreamCut,
            StreamError::Idle => StreamEnd::IdleTimeout,
        }
    }

    fn proxy_error(&self) -> ProxyError {
        match self {
            StreamError::Cut => ProxyError::StreamCut,
            StreamError::Idle => ProxyError::StreamIdle,
        }
    }
}

/// The last event of a cut SSE stream: an error in `shape`, after whatever ends the event the
/// upstream left unfinished (`tail` is the end of what was passed on). A half-sent event is
/// closed as it is; the provider's stream never sends one across frames in practice.
fn error_event(shape: ErrorShape, error: &ProxyError, tail: &[u8]) -> Bytes {
    let close = if tail.is_empty() || tail.ends_with(b"\n\n") || tail.ends_with(b"\r\n\r\n") {
        ""
    } else if tail.ends_with(b"\n") {
        "\n"
    } else {
        "\n\n"
    };
    let event = match shape {
        ErrorShape::Anthropic => "event: error\n",
        ErrorShape::OpenAi | ErrorShape::Gemini => "",
    };
    Bytes::from(format!("{close}{event}data: {}\n\n", error.body(shape)))
}

struct Streamed<B: Body> {
    inner: B,
    idle: Duration,
    /// Fires at the idle deadline as last armed; re-armed lazily from `last` when it fires, so
    /// a frame costs no timer work. Made the first time the stream waits (see `timer`).
    timer: Option<Pin<Box<Sleep>>>,
    /// When the last frame came.
    last: Instant,
    bytes: u64,
    end: Option<StreamEnd>,
    hook: Option<Box<dyn EndHook>>,
    /// For an SSE answer, the shape of the error event sent when it is cut.
    sse: Option<ErrorShape>,
    /// The last bytes passed on, to end a half-sent event before the error event.
    tail: [u8; 4],
    tail_len: usize,
    /// The error to fail with once the error event had its time to reach the socket.
    failing: Option<StreamError>,
    /// Reads the tokens the answer used, where a `tpm` limit applies (`None`: no work at all);
    /// dropped with the body, which hands the count on.
    meter: Option<Box<crate::usage::Meter>>,
    /// Frames of a burst, held to go out in one write.
    gather: gather::Gather,
    /// Bursts are gathered: off for a body whose frames already carry everything read.
    gathers: bool,
}

impl<B: Body> Streamed<B> {
    /// Keep the last four bytes passed on (right-aligned in `tail`), shifting in at most four
    /// bytes of `data` at once rather than byte by byte.
    fn remember_tail(&mut self, data: &[u8]) {
        let n = data.len().min(4);
        self.tail.copy_within(n.., 0);
        self.tail[4 - n..].copy_from_slice(&data[data.len() - n..]);
        self.tail_len = (self.tail_len + n).min(4);
    }

    /// A frame passing on: counted, its last bytes kept (an SSE answer's, for its error
    /// event), its tokens metered.
    fn passing(&mut self, frame: &Frame<Bytes>) {
        if let Some(data) = frame.data_ref() {
            self.bytes += data.len() as u64;
            if self.sse.is_some() {
                self.remember_tail(data);
            }
            if let Some(meter) = &mut self.meter {
                meter.feed(data);
            }
        }
    }

    /// Waiting on the upstream: pending until `idle` has passed since the last frame. The timer
    /// is only re-armed when it fires early (frames came since it was armed).
    fn poll_idle(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StreamError>>> {
        loop {
            let due = self.last + self.idle;
            if self.timer(due).poll(cx).is_pending() {
                return Poll::Pending;
            }
            if Instant::now() >= due {
                return self.fail(StreamError::Idle);
            }
            self.timer(due).reset(due);
        }
    }

    /// The stream's timer, made (due `at`) the first time it is needed: an answer whose body
    /// never keeps it waiting (a chat answer read with its head) needs none.
    fn timer(&mut self, at: Instant) -> Pin<&mut Sleep> {
        self.timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)))
            .as_mut()
    }

    /// The upstream cut the stream: what is held goes first, then the error event or the error.
    fn cut(&mut self) -> Poll<Option<Result<Frame<Bytes>, StreamError>>> {
        match self.fail(StreamError::Cut) {
            Poll::Ready(Some(Ok(event))) => Poll::Ready(self.gather.release(Some(event)).map(Ok)),
            Poll::Ready(Some(Err(e))) if !self.gather.is_empty() => {
                // Failed once the held frames are handed on.
                self.failing = Some(e);
                let now = Instant::now();
                self.timer(now).reset(now);
                Poll::Ready(self.gather.release(None).map(Ok))
            }
            other => other,
        }
    }

    /// The stream failed: an SSE answer first gets its error event, then fails.
    fn fail(&mut self, error: StreamError) -> Poll<Option<Result<Frame<Bytes>, StreamError>>> {
        self.end = Some(error.end());
        let Some(shape) = self.sse.take() else {
            return Poll::Ready(Some(Err(error)));
        };
        let event = error_event(shape, &error.proxy_error(), &self.tail[4 - self.tail_len..]);
        self.bytes += event.len() as u64;
        self.failing = Some(error);
        let flushed = Instant::now() + ERROR_EVENT_FLUSH;
        self.timer(flushed).reset(flushed);
        Poll::Ready(Some(Ok(Frame::data(event))))
    }
}

impl<B: Body> Drop for Streamed<B> {
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

enum Kind<B: Body> {
    Full(Option<Bytes>),
    Held(Held),
    Stream(Box<Streamed<B>>),
    /// A body wrapped by another step (resource ids sealed on the way out, `affinity`).
    Boxed(Pin<Box<dyn Body<Data = Bytes, Error = StreamError> + Send + Sync>>),
}

/// The response body keyrelay sends: its own small JSON, or an upstream body passed through.
/// The upstream body is hyper's; the parameter lets a benchmark pass its own frames through.
pub struct ProxyBody<B: Body = crate::upstream::UpstreamBody> {
    kind: Kind<B>,
    /// The first frame (or the end), read by [`ProxyBody::prime`] before the head went out.
    primed: Option<Option<Result<Frame<Bytes>, StreamError>>>,
}

impl ProxyBody {
    pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
        ProxyBody {
            kind: Kind::Full(Some(bytes.into())),
            primed: None,
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
            primed: None,
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> ProxyBody<B> {
    /// An upstream body passed on as it comes; `sse` (the route's error shape, for an
    /// event stream) asks for an error event before a cut.
    pub fn streamed(
        inner: B,
        idle: Duration,
        sse: Option<ErrorShape>,
        hook: Option<Box<dyn EndHook>>,
    ) -> ProxyBody<B> {
        ProxyBody {
            kind: Kind::Stream(Box::new(Streamed {
                inner,
                idle,
                timer: None,
                last: Instant::now(),
                bytes: 0,
                end: None,
                hook,
                sse,
                tail: [0; 4],
                tail_len: 0,
                failing: None,
                meter: None,
                gather: gather::Gather::default(),
                gathers: true,
            })),
            primed: None,
        }
    }

    /// The same body, its bursts gathered (`true`, the default) or not: a body whose every
    /// frame is all the upstream has sent so far (keyrelay's own HTTP/1 exchange) has nothing
    /// to gather, and would only pay for holding each frame and yielding once after it.
    pub fn gathered(mut self, on: bool) -> ProxyBody<B> {
        if let Kind::Stream(s) = &mut self.kind {
            s.gathers = on;
        }
        self
    }

    /// The same body, its frames also read by `meter` as they pass: an event stream event by
    /// event, anything else as one JSON body.
    pub fn metered(mut self, mut meter: Option<Box<crate::usage::Meter>>) -> ProxyBody<B> {
        if let Kind::Stream(s) = &mut self.kind {
            if let (Some(m), Some(_)) = (&mut meter, s.sse) {
                m.set_format(crate::usage::Format::Sse);
            }
            s.meter = meter;
        }
        self
    }

    /// Before the head goes out, read the first frame if the upstream already has it (the
    /// head and the start of the body usually come in one segment): hyper's server then writes
    /// them together, one socket write where there were two (three for a burst of events).
    /// Nothing waits on the network: the task yields once for the upstream connection to hand
    /// over what it has read (and as long as a burst is being gathered, which stops as soon as
    /// nothing more is ready); if nothing is ready then, the head goes alone, as before.
    pub async fn prime(&mut self) {
        if !matches!(self.kind, Kind::Stream(_) | Kind::Boxed(_)) || self.primed.is_some() {
            return;
        }
        let mut yielded = false;
        std::future::poll_fn(|cx| match Pin::new(&mut *self).poll_frame(cx) {
            Poll::Ready(first) => {
                self.primed = Some(first);
                Poll::Ready(())
            }
            Poll::Pending if self.gathering() => Poll::Pending,
            Poll::Pending if !yielded => {
                yielded = true;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Poll::Pending => Poll::Ready(()),
        })
        .await;
    }

    /// Whether a burst is being gathered: the task has woken itself to go on.
    fn gathering(&self) -> bool {
        matches!(&self.kind, Kind::Stream(s) if !s.gather.is_empty())
    }

    /// The size of what the body has not handed out yet, a primed frame aside.
    fn kind_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(b)) | Kind::Held(Held { bytes: Some(b), .. }) => {
                SizeHint::with_exact(b.len() as u64)
            }
            Kind::Full(None) | Kind::Held(Held { bytes: None, .. }) => SizeHint::with_exact(0),
            Kind::Stream(s) if s.sse.is_some() => SizeHint::default(),
            Kind::Stream(s) => s.inner.size_hint(),
            Kind::Boxed(b) => b.size_hint(),
        }
    }
}

impl ProxyBody {
    /// Whether polling for the next frame now would find nothing, known without polling: the
    /// upstream's bytes read so far are all handed on and its socket was empty at the last
    /// read. A writer that has frames in hand writes them at once rather than poll through
    /// every layer to hear `Pending` (a held stream's token: two polls where there were three).
    /// `false` when unsure.
    pub fn nothing_ready(&mut self) -> bool {
        match &mut self.kind {
            Kind::Stream(s) if self.primed.is_none() => {
                s.gather.is_empty()
                    && s.failing.is_none()
                    && s.end.is_none()
                    && s.inner.nothing_ready()
            }
            _ => false,
        }
    }

    /// A body that wraps another (which keeps its own guard and timeouts).
    pub fn boxed(
        inner: impl Body<Data = Bytes, Error = StreamError> + Send + Sync + 'static,
    ) -> Self {
        ProxyBody {
            kind: Kind::Boxed(Box::pin(inner)),
            primed: None,
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for ProxyBody<B> {
    type Data = Bytes;
    type Error = StreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StreamError>>> {
        let this = self.get_mut();
        if let Some(primed) = this.primed.take() {
            return Poll::Ready(primed);
        }
        let s = match &mut this.kind {
            Kind::Full(b) | Kind::Held(Held { bytes: b, .. }) => {
                return Poll::Ready(b.take().map(|b| Ok(Frame::data(b))))
            }
            Kind::Stream(s) => s,
            Kind::Boxed(b) => return b.as_mut().poll_frame(cx),
        };
        if let Some(frame) = s.gather.next() {
            return Poll::Ready(Some(Ok(frame)));
        }
        if s.failing.is_some() {
            // `fail` and `cut` arm the timer as they set `failing`.
            if s.timer
                .as_mut()
                .is_some_and(|t| t.as_mut().poll(cx).is_pending())
            {
                return Poll::Pending;
            }
            return Poll::Ready(s.failing.take().map(Err));
        }
        if s.end.is_some() {
            return Poll::Ready(None);
        }
        // Frames taken in this one poll came back to back: the clock is read once, for the
        // first, and the ones after it are part of its burst.
        let mut now = None;
        loop {
            let frame = match Pin::new(&mut s.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => frame,
                Poll::Ready(Some(Err(_))) => return s.cut(),
                Poll::Ready(None) => {
                    s.end = Some(StreamEnd::Complete);
                    return Poll::Ready(s.gather.release(None).map(Ok));
                }
                Poll::Pending if s.gather.wait(cx) => return Poll::Pending,
                Poll::Pending => {
                    return match s.gather.release(None) {
                        Some(frame) => Poll::Ready(Some(Ok(frame))),
                        None => s.poll_idle(cx),
                    }
                }
            };
            s.passing(&frame);
            let now = *now.get_or_insert_with(Instant::now);
            let previous = std::mem::replace(&mut s.last, now);
            if !s.gathers {
                return Poll::Ready(Some(Ok(frame)));
            }
            let more = !s.inner.is_end_stream();
            // Held (part of a burst): see at once whether the next frame is ready too.
            if let Some(frame) = s.gather.offer(frame, more, now, previous) {
                return Poll::Ready(Some(Ok(frame)));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        if let Some(primed) = &self.primed {
            return primed.is_none();
        }
        match &self.kind {
            Kind::Full(b) | Kind::Held(Held { bytes: b, .. }) => b.is_none(),
            // Never "ended" while an error is still to come: hyper would end the message cleanly.
            Kind::Stream(s) => {
                s.gather.is_empty()
                    && s.failing.is_none()
                    && (s.end.is_some() || s.inner.is_end_stream())
            }
            Kind::Boxed(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        let rest = self.kind_hint();
        match &self.primed {
            None => rest,
            Some(None) => SizeHint::with_exact(0),
            Some(Some(first)) => {
                let len = first
                    .as_ref()
                    .ok()
                    .and_then(Frame::data_ref)
                    .map_or(0, |d| d.len() as u64);
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower() + len);
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper + len);
                }
                hint
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::task::Waker;

    /// What an upstream body does on each poll, the way hyper's client body behaves: `Later`
    /// is nothing ready yet but the connection was woken to hand it over (the task is woken);
    /// `Never` is nothing ready and nothing coming soon.
    enum Step {
        Later,
        Frame(&'static str),
        Never,
    }

    /// An upstream body playing `steps`, then ending.
    struct Script {
        steps: VecDeque<Step>,
        polls: usize,
    }

    fn script(steps: impl IntoIterator<Item = Step>) -> Script {
        Script {
            steps: steps.into_iter().collect(),
            polls: 0,
        }
    }

    impl Body for Script {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            self.polls += 1;
            match self.steps.front() {
                None => Poll::Ready(None),
                Some(Step::Never) => Poll::Pending,
                Some(Step::Later) => {
                    self.steps.pop_front();
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                Some(Step::Frame(text)) => {
                    let frame = Frame::data(Bytes::from_static(text.as_bytes()));
                    self.steps.pop_front();
                    Poll::Ready(Some(Ok(frame)))
                }
            }
        }

        fn is_end_stream(&self) -> bool {
            self.steps.is_empty()
        }
    }

    fn streamed(steps: impl IntoIterator<Item = Step>) -> ProxyBody<Script> {
        ProxyBody::streamed(script(steps), Duration::from_secs(60), None, None)
    }

    /// Everything the body hands on without ever being pending, with a waker that does
    /// nothing (as hyper's server does after writing the head: all of it goes in one write).
    fn ready_now(body: &mut ProxyBody<Script>) -> (Vec<String>, bool) {
        let mut cx = Context::from_waker(Waker::noop());
        let mut out = Vec::new();
        loop {
            match Pin::new(&mut *body).poll_frame(&mut cx) {
                Poll::Ready(Some(Ok(f))) => {
                    out.push(String::from_utf8(f.into_data().unwrap().to_vec()).unwrap());
                }
                Poll::Ready(None) => return (out, true),
                Poll::Ready(Some(Err(e))) => panic!("the body failed: {e}"),
                Poll::Pending => return (out, false),
            }
        }
    }

    #[tokio::test]
    async fn priming_reads_the_first_frame_the_upstream_already_has() {
        let mut body = streamed([Step::Later, Step::Frame("{\"id\":1}")]);
        body.prime().await;
        assert!(!body.is_end_stream());
        assert_eq!(body.size_hint().lower(), 8);
        assert_eq!(ready_now(&mut body), (vec!["{\"id\":1}".to_owned()], true));
    }

    // The clock is paused: a burst is frames less than 1 ms apart, and a busy machine
    // (CI's) can take longer than that between two polls of a real clock.
    #[tokio::test(start_paused = true)]
    async fn priming_gathers_a_burst_so_the_head_and_every_frame_go_out_together() {
        let mut steps = Vec::new();
        for text in ["a", "b", "c", "d"] {
            steps.extend([Step::Later, Step::Frame(text)]);
        }
        let mut body = streamed(steps);
        body.prime().await;
        let (frames, ended) = ready_now(&mut body);
        assert_eq!(frames, ["a", "b", "c", "d"]);
        assert!(ended);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_not_gathered_hands_each_frame_on_at_once() {
        let mut body = streamed([Step::Frame("a"), Step::Frame("b"), Step::Never]).gathered(false);
        let mut cx = Context::from_waker(Waker::noop());
        for want in ["a", "b"] {
            let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut body).poll_frame(&mut cx) else {
                panic!("{want} is handed on at once, not held for the next frame");
            };
            assert_eq!(frame.into_data().unwrap(), want);
        }
        let Kind::Stream(s) = &body.kind else {
            unreachable!()
        };
        assert_eq!(
            s.inner.polls, 2,
            "one poll per frame: none held to look for the next"
        );
        assert!(Pin::new(&mut body).poll_frame(&mut cx).is_pending());
        // Gathered (the default), the same frames are held until nothing more is ready.
        let mut body = streamed([Step::Frame("a"), Step::Frame("b"), Step::Never]);
        assert!(Pin::new(&mut body).poll_frame(&mut cx).is_pending());
    }

    #[tokio::test]
    async fn priming_never_waits_for_a_frame_that_is_not_there() {
        let mut body = streamed([Step::Never]);
        tokio::time::timeout(Duration::from_secs(5), body.prime())
            .await
            .expect("priming returns at once when nothing is ready");
        let Kind::Stream(s) = &body.kind else {
            unreachable!()
        };
        assert_eq!(s.inner.polls, 2, "one poll, one yield, one more poll");
        assert!(!body.is_end_stream());
        // The frame still comes whenever it does.
        let Kind::Stream(s) = &mut body.kind else {
            unreachable!()
        };
        s.inner.steps = VecDeque::from([Step::Frame("late")]);
        assert_eq!(ready_now(&mut body), (vec!["late".to_owned()], true));
    }

    #[tokio::test]
    async fn a_full_body_is_not_primed() {
        let mut body = ProxyBody::full("x");
        body.prime().await;
        assert!(body.primed.is_none());
        assert_eq!(body.size_hint().exact(), Some(1));
    }

    fn event(shape: ErrorShape, tail: &[u8]) -> String {
        String::from_utf8(error_event(shape, &ProxyError::StreamCut, tail).to_vec()).unwrap()
    }

    #[test]
    fn the_error_event_closes_a_half_sent_event_and_takes_the_providers_shape() {
        let openai = event(ErrorShape::OpenAi, b"}\n\n");
        let data = openai.strip_prefix("data: ").unwrap().trim_end();
        let v: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(v["error"]["code"], "upstream_stream_cut");
        let anthropic = event(ErrorShape::Anthropic, b"");
        let data = anthropic
            .strip_prefix("event: error\ndata: ")
            .unwrap()
            .trim_end();
        let v: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(v["type"], "error");
        assert!(anthropic.ends_with("\n\n"));
        assert!(event(ErrorShape::Gemini, b"\r\n\r\n").starts_with("data: {\"error\""));
        assert!(event(ErrorShape::OpenAi, b"x\"}\n").starts_with("\ndata: "));
        assert!(event(ErrorShape::OpenAi, b"\"con").starts_with("\n\ndata: "));
    }
}
