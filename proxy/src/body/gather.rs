//! Write coalescing for a streamed answer: frames the upstream delivers back to back (an event
//! stream's burst, read from one upstream segment) go out in one write instead of one each.
//!
//! hyper's client hands a body over one frame at a time, and hyper's server writes what it
//! holds as soon as the body has nothing ready, so a burst of twenty SSE chunks cost twenty
//! socket writes (each waking the client). When a frame comes within [`BURST`] of the one
//! before, it is held and the body is polled again at once: over a connection the request's
//! task drives (HTTP/1, `upstream::client`), that decodes the next frame the connection
//! already read. When nothing is ready, the task yields once before giving up, so that an
//! upstream connection on a task of its own (HTTP/2) can hand over what it read. Frames still
//! arriving are held too (at most [`MAX_HELD`]), and the held ones are handed on together as
//! soon as nothing more is ready. Nothing waits on the network: a frame is held only while
//! the upstream has more already read, so a stream of chunks arriving apart (a model producing
//! tokens) passes frame by frame, each written at once. An answer over keyrelay's own HTTP/1
//! exchange is not gathered (`ProxyBody::gathered`): its every frame is all that was read, and
//! the writer takes at once whatever else is ready, so this serves answers over a connection
//! on a task of its own (HTTP/2).

use bytes::Bytes;
use http_body::Frame;
use std::collections::VecDeque;
use std::task::Context;
use std::time::Duration;
use tokio::time::Instant;

/// A frame this soon after the one before is part of a burst.
pub const BURST: Duration = Duration::from_millis(1);

/// At most this many frames, and this many bytes, are held at once. hyper's server copies
/// what it is handed into one write buffer (`writev(false)`) of up to 16 KiB
/// (`connection::H1_MAX_HEAD_BYTES`); what is held was read already, so the bounds only cap
/// how much a burst keeps back from the client.
const MAX_HELD: usize = 64;
const MAX_HELD_BYTES: usize = 16 * 1024;
/// Room made for held frames when a burst begins (a burst of 20 SSE chunks grows it once).
const HELD_FIRST: usize = 16;

/// Frames held back while a burst lasts.
#[derive(Default)]
pub struct Gather {
    /// Held data, oldest first (only data frames are held).
    held: VecDeque<Bytes>,
    /// The frame that ended a burst, handed on after the held ones.
    tail: Option<Frame<Bytes>>,
    /// The data bytes in `held`.
    held_bytes: usize,
    /// Handing the held frames on: no more are taken until they are.
    releasing: bool,
    /// Yielded once more after nothing was ready, for the upstream connection to run.
    waited: bool,
}

impl Gather {
    /// The next held frame to hand on, while releasing.
    pub fn next(&mut self) -> Option<Frame<Bytes>> {
        if !self.releasing {
            return None;
        }
        let frame = match self.held.pop_front() {
            Some(data) => Some(Frame::data(data)),
            None => self.tail.take(),
        };
        self.releasing = frame.is_some();
        if self.held.is_empty() {
            self.held_bytes = 0;
        }
        frame
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty() && self.tail.is_none()
    }

    /// A frame came at `now`, the one before at `previous`, and the body may have `more`:
    /// hold it (`None`: poll the body again) when it is data in a burst that has not ended and
    /// there is room, else the frame to hand on now (the oldest held one, when some are).
    pub fn offer(
        &mut self,
        frame: Frame<Bytes>,
        more: bool,
        now: Instant,
        previous: Instant,
    ) -> Option<Frame<Bytes>> {
        let burst = more && now.saturating_duration_since(previous) < BURST;
        let len = frame.data_ref().map_or(0, Bytes::len);
        let room = self.held.len() < MAX_HELD && self.held_bytes + len <= MAX_HELD_BYTES;
        if !(burst && room) {
            return self.release(Some(frame));
        }
        match frame.into_data() {
            Ok(data) => {
                if self.held.capacity() == 0 {
                    // Room for a usual burst at once, rather than growing 4, 8, 16.
                    self.held.reserve(HELD_FIRST);
                }
                self.held_bytes += len;
                self.held.push_back(data);
                self.waited = false;
                None
            }
            // Trailers end the burst.
            Err(frame) => self.release(Some(frame)),
        }
    }

    /// Nothing was ready: yield once more (`true`) so the upstream connection, woken by that
    /// poll, can hand over what it has already read; else it is time to release.
    pub fn wait(&mut self, cx: &mut Context<'_>) -> bool {
        if self.held.is_empty() || self.waited {
            return false;
        }
        self.waited = true;
        cx.waker().wake_by_ref();
        true
    }

    /// Nothing more is ready (or the stream ended, adding `last` when it has one): hand on
    /// what is held, oldest first, then `last`.
    pub fn release(&mut self, last: Option<Frame<Bytes>>) -> Option<Frame<Bytes>> {
        if self.held.is_empty() {
            return last;
        }
        self.tail = last;
        self.releasing = true;
        self.next()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use std::task::Waker;

    fn data(s: &'static str) -> Frame<Bytes> {
        Frame::data(Bytes::from_static(s.as_bytes()))
    }

    fn text(f: Option<Frame<Bytes>>) -> Option<String> {
        f.map(|f| String::from_utf8(f.into_data().unwrap().to_vec()).unwrap())
    }

    #[test]
    fn a_burst_is_held_and_handed_on_in_order_once_nothing_more_is_ready() {
        let mut g = Gather::default();
        let t = Instant::now();
        assert!(g.offer(data("a"), true, t, t).is_none());
        assert!(g.offer(data("b"), true, t, t).is_none());
        assert!(
            g.next().is_none(),
            "nothing is handed on while the burst lasts"
        );
        // Nothing more ready: the held frames go, oldest first.
        assert_eq!(text(g.release(None)).as_deref(), Some("a"));
        assert_eq!(text(g.next()).as_deref(), Some("b"));
        assert!(g.next().is_none());
        assert!(g.is_empty());
    }

    #[test]
    fn nothing_ready_yields_once_more_then_releases() {
        let mut cx = Context::from_waker(Waker::noop());
        let mut g = Gather::default();
        assert!(!g.wait(&mut cx), "nothing held: nothing to wait for");
        let t = Instant::now();
        assert!(g.offer(data("a"), true, t, t).is_none());
        assert!(
            g.wait(&mut cx),
            "the first time nothing is ready, yield again"
        );
        assert!(!g.wait(&mut cx), "the second time, release");
        assert_eq!(text(g.release(None)).as_deref(), Some("a"));
        // A new frame held starts a new wait.
        assert!(g.offer(data("b"), true, t, t).is_none());
        assert!(g.wait(&mut cx));
    }

    #[test]
    fn a_frame_long_after_the_last_passes_at_once() {
        let mut g = Gather::default();
        let t = Instant::now();
        let later = t + Duration::from_millis(20);
        assert_eq!(
            text(g.offer(data("a"), true, later, t)).as_deref(),
            Some("a")
        );
        assert!(g.is_empty());
    }

    #[test]
    fn the_last_frame_of_a_body_passes_at_once() {
        let mut g = Gather::default();
        let t = Instant::now();
        assert_eq!(text(g.offer(data("a"), false, t, t)).as_deref(), Some("a"));
    }

    #[test]
    fn at_most_max_held_frames_are_held_then_all_go() {
        let mut g = Gather::default();
        let t = Instant::now();
        for _ in 0..MAX_HELD {
            assert!(g.offer(data("x"), true, t, t).is_none());
        }
        let mut out = vec![text(g.offer(data("y"), true, t, t)).unwrap()];
        while let Some(f) = g.next() {
            out.push(text(Some(f)).unwrap());
        }
        assert_eq!(out.len(), MAX_HELD + 1);
        assert_eq!(out.last().map(String::as_str), Some("y"));
    }

    #[test]
    fn at_most_max_held_bytes_are_held_then_all_go() {
        let mut g = Gather::default();
        let t = Instant::now();
        let big = || Frame::data(Bytes::from(vec![b'x'; MAX_HELD_BYTES / 4]));
        for _ in 0..4 {
            assert!(g.offer(big(), true, t, t).is_none());
        }
        assert!(
            g.offer(data("y"), true, t, t).is_some(),
            "no room for one more byte: everything goes"
        );
        let mut n = 1;
        while g.next().is_some() {
            n += 1;
        }
        assert_eq!(n, 5);
        assert!(g.is_empty());
        // The count starts again from nothing.
        assert!(g.offer(big(), true, t, t).is_none());
    }

    #[test]
    fn the_end_of_the_stream_comes_after_the_held_frames() {
        let mut g = Gather::default();
        let t = Instant::now();
        assert!(g.offer(data("a"), true, t, t).is_none());
        let trailers = Frame::trailers(http::HeaderMap::new());
        assert_eq!(text(g.release(Some(trailers))).as_deref(), Some("a"));
        assert!(g.next().unwrap().is_trailers());
        assert!(g.next().is_none());
    }
}
