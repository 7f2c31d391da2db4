//! keyrelay's own HTTP/1.1 path for plain client connections: the common request shapes are
//! read and answered here, in the connection's task, with no buffers held between requests;
//! anything else (HTTP/2, HTTP/1.0, upgrades, `Expect`, unusual framing, malformed heads) is
//! handed to hyper, unread bytes and all, which serves the connection from there.
//!
//! Its timeouts are hyper's: the first head within `header_read_timeout` of accept, each later
//! one within the shorter of the two timeouts of the previous answer's end; a client hanging
//! up while its request is served ends the request (hyper's default, no half-close).

mod body;
pub(crate) mod decode;
mod head;
pub(crate) mod spare;
mod write;

pub use body::OwnBody;

use crate::body::{ClientBody, ProxyBody};
use crate::connection::{self, Limits};
use body::Reader;
use bytes::{Bytes, BytesMut};
use head::{Framing, Head, Parsed};
use http::header::CONNECTION;
use http::{Method, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use spare::Reads;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

/// Most body bytes thrown away, without waiting, so a connection whose request body went
/// unread can serve on; past it (or if the rest has not arrived) the connection closes.
const DRAIN_UP_TO: usize = 64 * 1024;

/// Serve a plain TCP client connection until it closes, times out, or `drain` asks it to
/// finish what is in flight and close.
pub async fn serve<H, F>(
    builder: &auto::Builder<TokioExecutor>,
    stream: TcpStream,
    handle: H,
    limits: Limits,
    mut drain: watch::Receiver<bool>,
) where
    H: Fn(Request<ClientBody>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let (mut read, write) = stream.into_split();
    let mut buf = BytesMut::new();
    let mut until = Instant::now() + limits.header_read_timeout;
    // One timer for the connection's life, moved on only when it fires before `until`: a
    // timer armed afresh for each request went into the runtime's timer wheel and out again
    // every time, and, being due sooner than anything else there, woke the runtime's driver
    // with a system call (an eventfd write) after every answer.
    let timer = tokio::time::sleep_until(until);
    tokio::pin!(timer);
    loop {
        let head = loop {
            if !buf.is_empty() {
                match head::parse(&mut buf) {
                    Parsed::Complete(head) => break head,
                    Parsed::Partial => {}
                    Parsed::Hyper => {
                        let Ok(stream) = read.reunite(write) else {
                            return;
                        };
                        return hand_over(builder, stream, buf, handle, limits, drain).await;
                    }
                }
            }
            let idle = buf.is_empty();
            let got = tokio::select! {
                biased;
                got = read_some(&mut read, &mut buf) => got,
                () = &mut timer => {
                    if Instant::now() < until {
                        timer.as_mut().reset(until);
                        continue;
                    }
                    return;
                }
                () = connection::draining(&mut drain), if idle => return,
            };
            if !matches!(got, Ok(n) if n > 0) {
                return;
            }
        };
        let reader = Reader::new(read, buf, head.framing);
        // Boxed: an exchange's state (about 2 KB: the answer being written, the body's return)
        // exists only while a request is served, not in every idle connection's task.
        let exchange = Box::pin(exchange(&write, head, reader, &handle, &drain, &limits));
        let Some(reader) = exchange.await else {
            return;
        };
        (read, buf) = (reader.stream, reader.buf);
        if buf.is_empty() {
            // Nothing held while idle: the read buffer is kept for this thread's next read.
            spare::give(&mut buf, Reads::Requests);
        }
        until = Instant::now() + limits.header_read_timeout.min(limits.keepalive_timeout);
        if until < timer.deadline() {
            // Due sooner than the timer was set for (a keep-alive shorter than the first
            // head's timeout): moved now, as only a timer firing early is moved later.
            timer.as_mut().reset(until);
        }
    }
}

/// Serve one request whose head is read, `reader` holding the connection's reading half and
/// what came after the head: the reader back, past the request's body, when the connection
/// serves on; `None` when it closes.
async fn exchange<H, F>(
    write: &OwnedWriteHalf,
    head: Head,
    reader: Reader,
    handle: &H,
    drain: &watch::Receiver<bool>,
    limits: &Limits,
) -> Option<Reader>
where
    H: Fn(Request<ClientBody>) -> F,
    F: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let Head {
        request,
        framing,
        close,
    } = head;
    let head_request = request.method() == Method::HEAD;
    let (body, mut back, mut home) = match framing {
        Framing::Empty => (ClientBody::Empty, None, Some(reader)),
        _ => {
            let (tx, rx) = oneshot::channel();
            (ClientBody::Own(OwnBody::new(reader, tx)), Some(rx), None)
        }
    };
    // Boxed: the request's state (several KB) lives only while it is served.
    let mut answer = Box::pin(handle(request.map(|()| body)));
    let response = answered(answer.as_mut(), &mut back, &mut home).await?;
    drop(answer);
    let close = close || *drain.borrow();
    let close = match respond(write, response, head_request, close).await {
        Ok(close) => close,
        Err(cut) => {
            tracing::debug!(?cut, "answer cut; closing the connection");
            return None;
        }
    };
    if let Some(rx) = back {
        let wait = limits.keepalive_timeout.max(limits.header_read_timeout);
        home = tokio::time::timeout(wait, rx).await.ok()?.ok();
    }
    // No reader: the body failed, and its framing with it.
    let mut reader = home?;
    if !reader.done() && !reader.drain_now(DRAIN_UP_TO) {
        return None;
    }
    (!close && !*drain.borrow()).then_some(reader)
}

/// For the fuzzer (`fuzz/`, target `h1`): read `data` as a request head and then the body after
/// it, as this path would; panics when one of its properties fails.
#[doc(hidden)]
pub fn fuzz_request(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    match head::parse(&mut buf) {
        Parsed::Hyper => assert_eq!(
            &buf[..],
            data,
            "handed to hyper with its bytes as they were"
        ),
        Parsed::Partial => assert!(data.len() < connection::H1_MAX_HEAD_BYTES),
        Parsed::Complete(head) => {
            assert!(data.ends_with(&buf), "only the head taken, off the front");
            assert!(data.len() - buf.len() <= connection::H1_MAX_HEAD_BYTES);
            assert!(head.request.headers().len() <= connection::H1_MAX_HEADERS);
            let (after_head, mut decoder) = (buf.len(), decode::Decoder::new(head.framing));
            let mut body = 0;
            while let Ok(Some(data)) = decoder.next(&mut buf) {
                body += data.len();
                if decoder.done() {
                    break;
                }
            }
            assert!(body + buf.len() <= after_head, "no byte handed out twice");
            match head.framing {
                Framing::Empty => assert_eq!(body, 0),
                Framing::Length(n) => assert!(body as u64 <= n),
                Framing::Chunked => {}
            }
        }
    }
}

/// The handler's answer, watching meanwhile for the body's reader to come home, then for the
/// client hanging up (`None`: it did, and the request is dropped; hyper's default, no
/// half-close). While the body is out, the handler itself reads the socket.
async fn answered<F: Future<Output = Response<ProxyBody>>>(
    mut answer: Pin<&mut F>,
    back: &mut Option<oneshot::Receiver<Reader>>,
    home: &mut Option<Reader>,
) -> Option<Response<ProxyBody>> {
    if let Some(rx) = back.as_mut() {
        tokio::select! {
            biased;
            response = answer.as_mut() => return Some(response),
            reader = rx => {
                *back = None;
                // An error: the body failed, and its reader with it.
                *home = reader.ok();
            }
        }
    }
    match home.as_mut() {
        Some(reader) => tokio::select! {
            biased;
            response = answer.as_mut() => Some(response),
            gone = hung_up(&mut reader.stream) => {
                if gone {
                    return None;
                }
                // More bytes instead (the rest of an unread body, or the next request).
                Some(answer.await)
            }
        },
        None => Some(answer.await),
    }
}

/// Write `response` (its head saying `Connection: close` when `close`, or when it says so
/// itself): whether the connection closes after it.
async fn respond(
    write: &OwnedWriteHalf,
    mut response: Response<ProxyBody>,
    head_request: bool,
    close: bool,
) -> Result<bool, write::Cut> {
    response.body_mut().prime().await;
    let (mut parts, body) = response.into_parts();
    let (out, add) = head::framing(
        head_request,
        parts.status,
        &mut parts.headers,
        &http_body::Body::size_hint(&body),
    );
    let close = close
        || parts
            .headers
            .get_all(CONNECTION)
            .iter()
            .any(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
    let mut wire = Vec::with_capacity(512);
    head::write_head(&mut wire, parts.status, &parts.headers, add, close);
    drop(parts);
    write::send(write, wire, body, out).await?;
    Ok(close)
}

/// Read what the socket has into `buf`: `Ok(0)` at its end. The buffer has room only while a
/// read is tried, so a connection waiting for its next request holds none. The read goes
/// through tokio's `poll_read`, which takes a short read to mean the socket is empty: the next
/// request's first read then waits for readiness without a system call.
async fn read_some(read: &mut OwnedReadHalf, buf: &mut BytesMut) -> io::Result<usize> {
    loop {
        spare::take(buf, Reads::Requests);
        let tried = {
            let mut cx = Context::from_waker(std::task::Waker::noop());
            tokio_util::io::poll_read_buf(Pin::new(&mut *read), &mut cx, buf)
        };
        match tried {
            Poll::Ready(done) => return done,
            Poll::Pending => {
                if buf.is_empty() {
                    spare::give(buf, Reads::Requests);
                }
                read.readable().await?;
            }
        }
    }
}

/// Resolves once the client has hung up (`true`) or sent more bytes (`false`). Costs no
/// system call until one of them happens: the last short read told tokio the socket was empty.
async fn hung_up(read: &mut OwnedReadHalf) -> bool {
    let mut byte = [0u8; 1];
    !matches!(read.peek(&mut byte).await, Ok(n) if n > 0)
}

/// Let hyper serve the connection from here, reading `buf` first.
async fn hand_over<H, F>(
    builder: &auto::Builder<TokioExecutor>,
    stream: TcpStream,
    buf: BytesMut,
    handle: H,
    limits: Limits,
    drain: watch::Receiver<bool>,
) where
    H: Fn(Request<ClientBody>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let io = TokioIo::new(Rewind {
        prefix: buf.freeze(),
        inner: stream,
    });
    // Boxed: hyper's connection state is allocated only for the connections it serves.
    Box::pin(connection::drive(
        builder,
        io,
        handle,
        Instant::now(),
        limits,
        drain,
    ))
    .await;
}

/// A socket whose first reads return bytes already read from it.
struct Rewind {
    prefix: Bytes,
    inner: TcpStream,
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(out.remaining());
            out.put_slice(&self.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, out)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
