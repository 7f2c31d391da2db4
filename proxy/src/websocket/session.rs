//! One WebSocket session after both 101s: bytes copied both ways as they come (frames, close
//! codes and all, untouched), until either side closes, nothing moves for the idle limit, or
//! the session reaches its total limit; then both sides are closed, and the end is counted.
//! Where tokens count, the provider's messages are read for their usage as they pass.

use super::tokens::Messages;
use super::Hold;
use crate::body::{EndHook, StreamEnd};
use crate::tenants::tokens::Count;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use keyrelay_metrics::{WsEnd, WsMetrics};
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

/// A session's limits.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub idle: Duration,
    pub max: Duration,
}

/// What both directions share: when anything last moved, bytes read from each side, and
/// which side closed first.
struct Activity {
    start: Instant,
    /// Milliseconds from `start` to the last byte read or written.
    last_ms: AtomicU64,
    read: [AtomicU64; 2],
    /// 0 while both are open, else 1 + the side that ended its stream first.
    first_eof: AtomicU8,
    /// Told when a side first ends its stream.
    half_closed: tokio::sync::Notify,
}

const CLIENT: usize = 0;
const UPSTREAM: usize = 1;

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            read: [AtomicU64::new(0), AtomicU64::new(0)],
            first_eof: AtomicU8::new(0),
            half_closed: tokio::sync::Notify::new(),
        })
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves [`LINGER`] after one side ended its stream, should the other keep its open.
    async fn linger(&self) {
        self.half_closed.notified().await;
        tokio::time::sleep(LINGER).await;
    }

    /// Resolves once nothing moved for `idle`.
    async fn idle(&self, idle: Duration) {
        loop {
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let due = self.start + last + idle;
            if Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due).await;
        }
    }
}

/// One side's connection, noting every byte it moves in the shared [`Activity`] (and, on the
/// provider's side where tokens count, reading its messages for their usage).
struct Counted<T> {
    inner: T,
    side: usize,
    activity: Arc<Activity>,
    meter: Option<Box<Metered>>,
}

/// The provider's messages read as they pass, and where their tokens go.
struct Metered {
    messages: Messages,
    count: Count,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let n = (buf.filled().len() - before) as u64;
            let a = &this.activity;
            if let Some(m) = &mut this.meter {
                m.count.add(m.messages.feed(&buf.filled()[before..]));
            }
            if n == 0 {
                let side = this.side as u8 + 1;
                let first =
                    a.first_eof
                        .compare_exchange(0, side, Ordering::Relaxed, Ordering::Relaxed);
                if first.is_ok() {
                    a.half_closed.notify_one();
                }
            } else {
                a.read[this.side].fetch_add(n, Ordering::Relaxed);
                a.touch();
            }
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            if n > 0 {
                self.activity.touch();
            }
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// How long a session lives on once one side ended its stream: a WebSocket is over when
/// either TCP side closes, and a peer that keeps its half open must not hold the session.
const LINGER: Duration = Duration::from_secs(2);

/// How long the close frames keyrelay sends at a limit may take to go out.
const CLOSE_FLUSH: Duration = Duration::from_secs(1);

/// The two sides of a session, still to upgrade, the connection's hold, and where the tokens
/// the provider reports go (when they count).
pub struct Ends {
    pub client: OnUpgrade,
    pub upstream: OnUpgrade,
    pub hold: Option<Hold>,
    pub count: Option<Count>,
}

/// Run the session once both sides have upgraded; `hook` finishes the request's log line.
pub async fn run(ends: Ends, limits: Limits, metrics: WsMetrics, mut hook: Box<dyn EndHook>) {
    let Ends {
        client,
        upstream,
        hold,
        count,
    } = ends;
    let (client, upstream) = match tokio::join!(client, upstream) {
        (Ok(c), Ok(u)) => (c, u),
        _ => {
            tracing::debug!("a WebSocket side did not complete its upgrade");
            metrics.opened();
            metrics.closed(WsEnd::UpgradeFailed, 0, 0);
            hook.ended(StreamEnd::UpstreamCut, 0);
            return;
        }
    };
    metrics.opened();
    let activity = Activity::new();
    let counted = |inner, side| Counted {
        inner: TokioIo::new(inner),
        side,
        activity: activity.clone(),
        meter: None,
    };
    let (mut c, mut u) = (counted(client, CLIENT), counted(upstream, UPSTREAM));
    u.meter = count.map(|count| {
        Box::new(Metered {
            messages: Messages::default(),
            count,
        })
    });
    let first_eof = || activity.first_eof.load(Ordering::Relaxed);
    let end = tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut c, &mut u) => match (copied, first_eof()) {
            (_, 1) => WsEnd::ClientClosed,
            (Ok(_), _) => WsEnd::UpstreamClosed,
            (Err(_), _) => WsEnd::Error,
        },
        () = activity.linger() => if first_eof() == 1 { WsEnd::ClientClosed } else { WsEnd::UpstreamClosed },
        () = activity.idle(limits.idle) => WsEnd::IdleTimeout,
        () = tokio::time::sleep(limits.max) => WsEnd::MaxDuration,
        () = drained(hold.clone()) => WsEnd::Shutdown,
    };
    if let Some(reason) = limit_reason(end) {
        let closing = async {
            let _ = c.inner.write_all(&close_frame(reason, None)).await;
            let _ = u.inner.write_all(&close_frame(reason, Some(mask()))).await;
            let _ = tokio::join!(c.inner.shutdown(), u.inner.shutdown());
        };
        let _ = tokio::time::timeout(CLOSE_FLUSH, closing).await;
    }
    let up = activity.read[CLIENT].load(Ordering::Relaxed);
    let down = activity.read[UPSTREAM].load(Ordering::Relaxed);
    metrics.closed(end, up, down);
    hook.ended(stream_end(end), up + down);
    // The connection's place under the cap is given back only now.
    drop(hold);
}

/// How a session's end reads in the request's log line.
fn stream_end(end: WsEnd) -> StreamEnd {
    match end {
        WsEnd::ClientClosed => StreamEnd::ClientGone,
        WsEnd::UpstreamClosed => StreamEnd::Complete,
        WsEnd::IdleTimeout | WsEnd::MaxDuration | WsEnd::Shutdown => StreamEnd::IdleTimeout,
        WsEnd::Error | WsEnd::UpgradeFailed => StreamEnd::UpstreamCut,
    }
}

async fn drained(hold: Option<Hold>) {
    match hold {
        Some(hold) => hold.drained().await,
        None => std::future::pending().await,
    }
}

/// The close reason keyrelay sends both sides when it ends a session at a limit.
fn limit_reason(end: WsEnd) -> Option<&'static str> {
    match end {
        WsEnd::IdleTimeout => Some("keyrelay: idle timeout"),
        WsEnd::MaxDuration => Some("keyrelay: session time limit"),
        WsEnd::Shutdown => Some("keyrelay: shutting down"),
        _ => None,
    }
}

/// A close frame with code 1001 (going away) and `reason`: unmasked towards the client,
/// masked with `mask` towards the provider (RFC 6455 §5.3). Sent only once the copy has
/// stopped: between frames when the session went idle; at the total limit or a shutdown it
/// may land inside a frame, and the peer then sees a protocol error, which ends it all the same.
fn close_frame(reason: &str, mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut payload = 1001u16.to_be_bytes().to_vec();
    payload.extend_from_slice(&reason.as_bytes()[..reason.len().min(123)]);
    let len = payload.len() as u8;
    let mut frame = vec![0x88];
    match mask {
        None => frame.push(len),
        Some(mask) => {
            frame.push(0x80 | len);
            frame.extend_from_slice(&mask);
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= mask[i % 4];
            }
        }
    }
    frame.extend_from_slice(&payload);
    frame
}

/// A fresh masking key.
fn mask() -> [u8; 4] {
    let bits = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (bits as u32).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_frames_are_well_formed() {
        let f = close_frame("bye", None);
        assert_eq!(f, [0x88, 5, 0x03, 0xe9, b'b', b'y', b'e']);
        let m = [1, 2, 3, 4];
        let f = close_frame("bye", Some(m));
        assert_eq!(&f[..6], &[0x88, 0x85, 1, 2, 3, 4]);
        let unmasked: Vec<u8> = f[6..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ m[i % 4])
            .collect();
        assert_eq!(unmasked, [0x03, 0xe9, b'b', b'y', b'e']);
    }
}
