//! Request bodies too large for memory (`replay_memory_bytes`): streamed to the upstream as they
//! arrive and, at the same time, kept in a spill file so the next key can be tried.
//!
//! One task per request (the pump) reads the client's body and appends each chunk to the spill
//! file, publishing how far the file is written (a `watch`). Every attempt, the first included,
//! reads the file from the start at its own offset: up to what is written, then waiting for the
//! pump, until the pump says the body is complete. So an attempt started while the client is
//! still uploading (the first key answered 429 early, as providers do) replays what has arrived
//! and goes on with the client's remaining bytes as they come; the client is never held back by
//! an attempt, nor an attempt by anything but the client. Memory per request is one read
//! buffer per attempt, whatever the size; the pages live in the kernel's page cache.
//!
//! When the spill space (`max_spill_bytes`) has no room, or no spill file can be created, the
//! body is streamed without a copy: the pump hands chunks to the one attempt through a small
//! channel, and that request gets one attempt only (its answer, a 429 included, goes to the
//! client as it is). A pump failure (too large, too slow, client gone, disk error) fails every
//! attempt's body, and the client gets keyrelay's own error for it.

use super::request::{discard, BodyLimits, Buffered, Permit};
use super::spill::{SpillDir, SpillFile};
use crate::error::ProxyError;
use bytes::{Bytes, BytesMut};
use futures_util::stream::{self, Stream, StreamExt};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use tokio::sync::{mpsc, oneshot, watch};

/// The most read from a spill file at once, per attempt.
const READ_CHUNK: usize = 256 * 1024;

/// Why a streamed body failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Fault {
    #[error("request body over the limit")]
    TooLarge,
    #[error("request body paused too long")]
    Timeout,
    #[error("request body could not be read")]
    Read,
    #[error("spill file could not be written or read")]
    Disk,
    #[error("request body abandoned")]
    Gone,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Open,
    Done,
    Failed(Fault),
}

/// How far the pump got: bytes written (to the file) and whether the body is complete.
#[derive(Clone, Copy, Debug)]
struct Progress {
    len: u64,
    end: End,
}

enum Sink {
    File(Arc<SpillFile>),
    Channel(mpsc::Sender<Bytes>),
}

impl Sink {
    async fn put(&self, data: Bytes, at: u64) -> Result<(), Fault> {
        match self {
            Sink::File(file) => {
                let file = file.clone();
                tokio::task::spawn_blocking(move || file.write_at(&data, at))
                    .await
                    .map_err(|_| Fault::Disk)?
                    .map_err(|e| {
                        tracing::warn!(error = %e, "cannot write a spill file");
                        Fault::Disk
                    })
            }
            Sink::Channel(tx) => tx.send(data).await.map_err(|_| Fault::Gone),
        }
    }
}

/// A request body being streamed, kept for replay when it has a spill file. Dropping it stops
/// the pump: an HTTP/1 client still uploading has the rest of its body read to nowhere (as a
/// refused body is, see `discard`), so it reads the answer rather than a reset; any other
/// has its body dropped. The file goes when its last reader is dropped.
pub struct Spooled {
    progress: watch::Receiver<Progress>,
    file: Option<Arc<SpillFile>>,
    once: Mutex<Option<mpsc::Receiver<Bytes>>>,
    declared: Option<u64>,
    limit: usize,
    /// Dropped with the request, which tells the pump to stop.
    _stop: oneshot::Sender<()>,
}

/// Start streaming `body` (after `prefix`, what was read of it into memory): to a spill file
/// when the spill space has room for its declared length (or, undeclared, for the most it may
/// be), else through to the first attempt only. `linger`: when the request ends first, read
/// the rest of the body to nowhere (HTTP/1) rather than drop it.
pub async fn spool<B>(
    body: B,
    prefix: Buffered,
    declared: Option<u64>,
    limits: BodyLimits,
    dir: &Arc<SpillDir>,
    linger: bool,
) -> Spooled
where
    B: Body<Data = Bytes> + Unpin + Send + 'static,
{
    let want = declared
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(limits.max_bytes);
    let file = match dir.reserve(want) {
        Some(permit) => create(dir, permit).await,
        None => None,
    };
    let (tx, progress) = watch::channel(Progress {
        len: 0,
        end: End::Open,
    });
    let (sink, once) = match &file {
        Some(f) => (Sink::File(f.clone()), None),
        None => {
            let (tx, rx) = mpsc::channel(4);
            (Sink::Channel(tx), Some(rx))
        }
    };
    let (stop, stopped) = oneshot::channel();
    let pumping = Pump {
        sink,
        limits,
        tx,
        stopped,
    };
    tokio::spawn(pumping.run(body, prefix, linger));
    Spooled {
        progress,
        file,
        once: Mutex::new(once),
        declared,
        limit: limits.max_bytes,
        _stop: stop,
    }
}

async fn create(dir: &Arc<SpillDir>, permit: Permit) -> Option<Arc<SpillFile>> {
    let dir = dir.clone();
    match tokio::task::spawn_blocking(move || dir.create(permit)).await {
        Ok(Ok(file)) => Some(Arc::new(file)),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot create a spill file; the body is streamed without replay");
            None
        }
        Err(_) => None,
    }
}

/// One request's pump: the client's body into the sink, progress to the readers.
struct Pump {
    sink: Sink,
    limits: BodyLimits,
    tx: watch::Sender<Progress>,
    /// Resolves when the request is done with the body.
    stopped: oneshot::Receiver<()>,
}

impl Pump {
    async fn run<B>(mut self, mut body: B, prefix: Buffered, linger: bool)
    where
        B: Body<Data = Bytes> + Unpin,
    {
        let end = match self.copy(&mut body, prefix).await {
            Ok(len) => {
                if let Sink::File(file) = &self.sink {
                    file.shrink_to(usize::try_from(len).unwrap_or(usize::MAX));
                }
                End::Done
            }
            Err(fault) => End::Failed(fault),
        };
        // The end is published before the channel closes, so a reader that sees it closed
        // knows why.
        self.tx.send_modify(|p| p.end = end);
        let Pump { sink, limits, .. } = self;
        drop(sink);
        if linger && end == End::Failed(Fault::Gone) {
            discard(body, limits).await;
        }
    }

    /// Copy the prefix, then the client's body, to the sink; the length copied. `Gone` as
    /// soon as the request is done with the body.
    async fn copy<B>(&mut self, body: &mut B, prefix: Buffered) -> Result<u64, Fault>
    where
        B: Body<Data = Bytes> + Unpin,
    {
        let mut len = prefix.bytes.len() as u64;
        if len > 0 {
            self.sink.put(prefix.bytes.clone(), 0).await?;
            self.tx.send_modify(|p| p.len = len);
        }
        // The in-memory share is given back once the bytes are on disk; handed to a channel
        // they may still wait in it, so they stay counted until the body ends.
        let _held = match self.sink {
            Sink::File(_) => None,
            Sink::Channel(_) => Some(prefix),
        };
        loop {
            let step = step(body, &self.sink, self.limits, len);
            let n = tokio::select! {
                biased;
                _ = &mut self.stopped => return Err(Fault::Gone),
                n = step => n?,
            };
            let Some(n) = n else {
                return Ok(len);
            };
            len += n;
            self.tx.send_modify(|p| p.len = len);
        }
    }
}

/// Read one frame of the client's body and put its data at `len`: its length, `None` at the
/// end.
async fn step<B>(
    body: &mut B,
    sink: &Sink,
    limits: BodyLimits,
    len: u64,
) -> Result<Option<u64>, Fault>
where
    B: Body<Data = Bytes> + Unpin,
{
    if body.is_end_stream() {
        return Ok(None);
    }
    let frame = match tokio::time::timeout(limits.idle, body.frame()).await {
        Err(_) => return Err(Fault::Timeout),
        Ok(None) => return Ok(None),
        Ok(Some(Err(_))) => return Err(Fault::Read),
        Ok(Some(Ok(frame))) => frame,
    };
    // Trailers are not forwarded.
    let Ok(data) = frame.into_data() else {
        return Ok(Some(0));
    };
    let n = data.len() as u64;
    if len + n > limits.max_bytes as u64 {
        return Err(Fault::TooLarge);
    }
    sink.put(data, len).await?;
    Ok(Some(n))
}

impl Spooled {
    /// Whether a second attempt can have the body (it has a spill file).
    pub fn replayable(&self) -> bool {
        self.file.is_some()
    }

    /// The body for one more attempt; `None` for a body without replay that was already given.
    pub fn attempt(&self) -> Option<AttemptBody> {
        let chunks: Chunks = match &self.file {
            Some(file) => Box::pin(from_file(file.clone(), self.progress.clone())),
            None => {
                let rx = self
                    .once
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take()?;
                Box::pin(from_channel(rx, self.progress.clone()))
            }
        };
        let (sent, sent_rx) = oneshot::channel();
        Some(AttemptBody {
            kind: Kind::Stream {
                chunks,
                left: self.declared,
                done: false,
                sent: Some(sent),
            },
            sent: Some(sent_rx),
        })
    }

    /// The client's error, when the body failed on the client's side (or the disk's).
    pub fn failure(&self) -> Option<ProxyError> {
        match self.progress.borrow().end {
            End::Failed(Fault::TooLarge) => Some(ProxyError::BodyTooLarge { limit: self.limit }),
            End::Failed(Fault::Timeout) => Some(ProxyError::BodyTimeout),
            End::Failed(Fault::Read) => Some(ProxyError::BodyRead),
            End::Failed(Fault::Disk) => Some(ProxyError::BodyBudgetFull),
            End::Failed(Fault::Gone) | End::Open | End::Done => None,
        }
    }
}

type Chunks = Pin<Box<dyn Stream<Item = Result<Bytes, Fault>> + Send>>;

/// Where an attempt's reading of the spill file is.
struct Reading {
    file: Arc<SpillFile>,
    progress: watch::Receiver<Progress>,
    at: u64,
    /// One buffer, reused once the upstream has let go of the last chunk cut from it, so a
    /// reader's memory stays at about one chunk whatever the body's size.
    buf: BytesMut,
}

/// An attempt's reading of the spill file: what is written, then what comes, to the end.
fn from_file(
    file: Arc<SpillFile>,
    progress: watch::Receiver<Progress>,
) -> impl Stream<Item = Result<Bytes, Fault>> + Send {
    let start = Reading {
        file,
        progress,
        at: 0,
        buf: BytesMut::new(),
    };
    stream::unfold(Some(start), |state| async move {
        let mut r = state?;
        loop {
            let now = *r.progress.borrow_and_update();
            if let End::Failed(fault) = now.end {
                return Some((Err(fault), None));
            }
            if r.at < now.len {
                let n = usize::try_from(now.len - r.at).map_or(READ_CHUNK, |n| n.min(READ_CHUNK));
                return match read_chunk(&mut r, n).await {
                    Ok(chunk) => Some((Ok(chunk), Some(r))),
                    Err(fault) => Some((Err(fault), None)),
                };
            }
            if now.end == End::Done {
                return None;
            }
            if r.progress.changed().await.is_err() {
                return Some((Err(Fault::Gone), None));
            }
        }
    })
}

/// The next `n` bytes of the file, read off the runtime's threads into the reused buffer.
async fn read_chunk(r: &mut Reading, n: usize) -> Result<Bytes, Fault> {
    let mut buf = std::mem::take(&mut r.buf);
    buf.reserve(READ_CHUNK);
    buf.resize(n, 0);
    let (file, at) = (r.file.clone(), r.at);
    let read = tokio::task::spawn_blocking(move || file.read_at(at, &mut buf).map(|()| buf)).await;
    let Ok(Ok(mut buf)) = read else {
        return Err(Fault::Disk);
    };
    r.at += n as u64;
    let chunk = buf.split().freeze();
    r.buf = buf;
    Ok(chunk)
}

/// The one attempt's reading of a body without replay: chunks as the pump passes them.
fn from_channel(
    rx: mpsc::Receiver<Bytes>,
    progress: watch::Receiver<Progress>,
) -> impl Stream<Item = Result<Bytes, Fault>> + Send {
    stream::unfold(Some((rx, progress)), |state| async move {
        let (mut rx, progress) = state?;
        if let Some(bytes) = rx.recv().await {
            return Some((Ok(bytes), Some((rx, progress))));
        }
        let end = progress.borrow().end;
        match end {
            End::Done => None,
            End::Failed(fault) => Some((Err(fault), None)),
            End::Open => Some((Err(Fault::Gone), None)),
        }
    })
}

/// The body of one upstream attempt: a buffered body, or a streamed one read as above.
pub struct AttemptBody {
    kind: Kind,
    /// For a streamed body: resolves once it was read to its end, or failed, or was dropped.
    sent: Option<oneshot::Receiver<()>>,
}

enum Kind {
    Full(Full<Bytes>),
    Stream {
        chunks: Chunks,
        /// The declared length still to come, sent as `Content-Length`; none: chunked.
        left: Option<u64>,
        done: bool,
        /// Told when the body ends (dropped unsent when it is dropped first).
        sent: Option<oneshot::Sender<()>>,
    },
}

impl AttemptBody {
    pub fn full(bytes: Bytes) -> AttemptBody {
        AttemptBody {
            kind: Kind::Full(Full::new(bytes)),
            sent: None,
        }
    }

    /// For a streamed body, what resolves once the upstream has taken all of it (or the body
    /// ended otherwise): the answer head is due from then. `None` for a buffered body, which is
    /// sent at once.
    pub fn take_sent(&mut self) -> Option<oneshot::Receiver<()>> {
        self.sent.take()
    }
}

impl Body for AttemptBody {
    type Data = Bytes;
    type Error = Fault;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Fault>>> {
        match &mut self.get_mut().kind {
            Kind::Full(full) => match Pin::new(full).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
                Poll::Ready(Some(Err(never))) => match never {},
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
            Kind::Stream {
                chunks,
                left,
                done,
                sent,
            } => {
                if *done {
                    return Poll::Ready(None);
                }
                let next = std::task::ready!(chunks.poll_next_unpin(cx));
                if let Some(Ok(bytes)) = &next {
                    *left = left.map(|l| l.saturating_sub(bytes.len() as u64));
                }
                // Ended: failed, finished, or all of its declared length given (hyper may not
                // ask for more).
                if !matches!(next, Some(Ok(_))) || *left == Some(0) {
                    *done = true;
                    if let Some(tx) = sent.take() {
                        let _ = tx.send(());
                    }
                }
                Poll::Ready(next.map(|r| r.map(Frame::data)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(full) => full.is_end_stream(),
            Kind::Stream { done, .. } => *done,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(full) => full.size_hint(),
            Kind::Stream { left: Some(n), .. } => SizeHint::with_exact(*n),
            Kind::Stream { left: None, .. } => SizeHint::default(),
        }
    }
}

/// A request body ready for attempts: in memory, or streamed.
pub enum RequestBody {
    Memory(Buffered),
    Spooled(Spooled),
}

impl RequestBody {
    /// The body for one more attempt; `None` when it cannot be given again.
    pub fn attempt(&self) -> Option<AttemptBody> {
        match self {
            RequestBody::Memory(b) => Some(AttemptBody::full(b.bytes.clone())),
            RequestBody::Spooled(s) => s.attempt(),
        }
    }

    pub fn replayable(&self) -> bool {
        match self {
            RequestBody::Memory(_) => true,
            RequestBody::Spooled(s) => s.replayable(),
        }
    }

    /// The client's error, when its body failed while an attempt was sending it.
    pub fn failure(&self) -> Option<ProxyError> {
        match self {
            RequestBody::Memory(_) => None,
            RequestBody::Spooled(s) => s.failure(),
        }
    }
}

#[cfg(test)]
#[path = "replay_tests.rs"]
mod tests;
