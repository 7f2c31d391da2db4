//! keyrelay's own HTTP/1.1 exchange on a kept upstream connection: the request head and body
//! written (gathered into as few writes as are ready), the answer's head parsed by httparse
//! and its body decoded off the read buffer, all by whoever polls it, with no task or channel
//! in between. It knows exactly how much of the request left: an attempt that failed before
//! its first byte was written was not sent (principle 2), anything later may have been.

use super::client::{BoxError, Io};
use crate::body::AttemptBody;
use crate::h1::decode::{length, Decoder, Framing};
use crate::h1::spare::{self, Reads};
use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Version};
use http_body::{Body, SizeHint};
use hyper_util::rt::TokioIo;
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::ops::Range;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite};

/// Most bytes of an answer's head (hyper's client allowed ~400 KB of buffer; heads are small).
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most header lines in an answer's head (hyper's client default).
const MAX_HEADERS: usize = 100;
/// Bytes read from the socket at once, at least; more while reads fill what was offered.
const READ_MIN: usize = Reads::Answers.size();
const READ_MAX: usize = 64 * 1024;
/// Most pieces, and bytes, of request queued before they are written.
const QUEUE_PIECES: usize = 16;
const QUEUE_BYTES: usize = 64 * 1024;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("the upstream closed the connection before the answer was complete")]
    Closed,
    #[error("upstream connection I/O failed")]
    Io(#[source] io::Error),
    #[error("the upstream's answer is malformed: {0}")]
    Malformed(&'static str),
    #[error("the request body failed")]
    Body(#[source] BoxError),
    #[error("the request body did not match its declared length")]
    Length,
}

/// How the answer's body is read.
#[derive(Debug)]
enum Reading {
    /// Framed by its length or by chunks.
    Framed(Decoder),
    /// Until the upstream closes the connection (no length, no chunks): never kept after.
    UntilClose,
    Done,
}

/// How the request body goes out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Encode {
    /// Length-framed: bytes still to write.
    Length(u64),
    Chunked,
}

/// What is left of the request to write.
struct Upload {
    body: Option<AttemptBody>,
    encode: Encode,
    /// Bytes queued and not yet written, in order.
    queue: VecDeque<Bytes>,
    queued: usize,
    /// Written since the last flush.
    unflushed: bool,
}

/// One HTTP/1.1 connection to an upstream and where its exchange is.
pub(super) struct Wire {
    io: TokioIo<Io>,
    buf: BytesMut,
    /// How much a read offers the socket (grows while reads fill it).
    read_size: usize,
    upload: Option<Upload>,
    /// Request bytes the socket took in this exchange.
    wrote: u64,
    /// The request's method (a HEAD's answer has no body).
    head_only: bool,
    reading: Reading,
    /// The upstream keeps the connection after this answer, and nothing went wrong.
    reusable: bool,
    /// The last read took less than it offered, on plain TCP: nothing more was there (tokio
    /// waits for the socket's next readiness; over TLS, the TLS layer may hold more).
    drained: bool,
}

/// An answer's head and how its body is read.
pub(super) struct Head {
    pub parts: http::response::Parts,
    reading: Reading,
    keep: bool,
}

impl Wire {
    pub(super) fn new(io: Io) -> Wire {
        Wire {
            drained: false,
            io: TokioIo::new(io),
            buf: BytesMut::new(),
            read_size: READ_MIN,
            upload: None,
            wrote: 0,
            head_only: false,
            reading: Reading::Done,
            reusable: true,
        }
    }

    /// Whether any byte of the request reached the socket: if so it may have been sent.
    pub(super) fn sent(&self) -> bool {
        self.wrote > 0
    }

    /// Begin an exchange: `req` (origin-form URL, `Host` set) is queued to be written.
    pub(super) fn start(&mut self, req: Request<AttemptBody>) {
        let (mut parts, body) = req.into_parts();
        let (encode, add) = encoding(&mut parts.headers, &parts.method, &body);
        let mut head = Vec::with_capacity(256);
        write_head(&mut head, &parts, add.then_some(encode).flatten());
        let mut queue = VecDeque::with_capacity(4);
        queue.push_back(Bytes::from(head));
        let queued = queue[0].len();
        // A body of unknown size on a GET or HEAD is not sent (as with hyper's client).
        let body = encode.map(|_| body);
        let encode = encode.unwrap_or(Encode::Length(0));
        let mut upload = Upload {
            body,
            encode,
            queue,
            queued,
            unflushed: false,
        };
        if upload.body.is_none() {
            upload.finish_body();
        }
        self.upload = Some(upload);
        self.wrote = 0;
        self.head_only = parts.method == Method::HEAD;
        self.reading = Reading::Done;
        self.drained = false;
    }

    /// Write what can be written of the request now: `Ready(Ok)` once all of it is written
    /// (and at once when it was, before).
    pub(super) fn poll_upload(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WireError>> {
        let Some(up) = &mut self.upload else {
            return Poll::Ready(Ok(()));
        };
        loop {
            up.fill(cx)?;
            if up.queue.is_empty() {
                // Whatever a TLS layer still holds goes out before waiting or ending.
                if up.unflushed {
                    ready!(Pin::new(&mut self.io).poll_flush(cx)).map_err(WireError::Io)?;
                    up.unflushed = false;
                }
                if up.body.is_none() {
                    self.upload = None;
                    return Poll::Ready(Ok(()));
                }
                return Poll::Pending;
            }
            let mut slices = [IoSlice::new(&[]); QUEUE_PIECES];
            let n = up.slices(&mut slices);
            let wrote = Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..n]);
            let wrote = ready!(wrote).map_err(WireError::Io)?;
            if wrote == 0 {
                return Poll::Ready(Err(WireError::Io(io::ErrorKind::WriteZero.into())));
            }
            self.wrote += wrote as u64;
            up.unflushed = true;
            up.advance(wrote);
        }
    }

    /// Read more from the socket into the buffer; `Ok(0)` at end of stream. A buffer left
    /// empty while waiting within a body is given up (kept as this thread's spare), so a held
    /// stream holds no read buffer between chunks, and its next chunk reads into a spare one
    /// rather than a new allocation.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.read_size == READ_MIN {
            spare::reuse(&mut self.buf, Reads::Answers);
        }
        if self.buf.capacity() - self.buf.len() < self.read_size / 2 {
            self.buf.reserve(self.read_size);
        }
        let offered = self.buf.capacity() - self.buf.len();
        match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf) {
            Poll::Ready(Ok(n)) => {
                let plain = matches!(self.io.inner(), hyper_rustls::MaybeHttpsStream::Http(_));
                self.drained = plain && n < offered;
                if n == offered {
                    self.read_size = (self.read_size * 2).min(READ_MAX);
                } else if n < self.read_size / 4 {
                    self.read_size = (self.read_size / 2).max(READ_MIN);
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending => {
                // Waiting within a body (a held stream, its tokens apart) holds no buffer;
                // waiting for a head (moments, for most answers) keeps it for the head.
                if self.buf.is_empty() && !matches!(self.reading, Reading::Done) {
                    spare::give(&mut self.buf, Reads::Answers);
                }
                Poll::Pending
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        }
    }

    /// Write the request and read the answer's head; informational answers (1xx) are skipped.
    pub(super) fn poll_head(&mut self, cx: &mut Context<'_>) -> Poll<Result<Head, WireError>> {
        if let Poll::Ready(Err(e)) = self.poll_upload(cx) {
            // Not a byte went out: nothing can answer it.
            if !self.sent() || matches!(e, WireError::Body(_) | WireError::Length) {
                return Poll::Ready(Err(e));
            }
            // The upstream may have answered before it stopped reading (a 413): read on.
            self.upload = None;
            self.reusable = false;
        }
        loop {
            if !self.buf.is_empty() {
                if let Some(head) = parse(&mut self.buf, self.head_only)? {
                    return Poll::Ready(Ok(head));
                }
                if self.buf.len() >= MAX_HEAD_BYTES {
                    return Poll::Ready(Err(WireError::Malformed("head too large")));
                }
            }
            match ready!(self.poll_fill(cx)) {
                Ok(0) => return Poll::Ready(Err(WireError::Closed)),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(WireError::Io(e))),
            }
        }
    }

    /// Read the body of the answer whose head `head` was.
    pub(super) fn body_of(&mut self, head: &mut Head) {
        self.reading = std::mem::replace(&mut head.reading, Reading::Done);
        self.reusable &= head.keep;
    }

    /// The answer body's next piece: `None` at its end. A chunked body's chunks already read
    /// come as one piece (see [`Decoder::next_run`]). The request, if still being written,
    /// goes on being written meanwhile.
    pub(super) fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, WireError>>> {
        if self.upload.is_some() {
            if let Poll::Ready(Err(_)) = self.poll_upload(cx) {
                self.upload = None;
                self.reusable = false;
            }
        }
        loop {
            match &mut self.reading {
                Reading::Done => return Poll::Ready(None),
                Reading::Framed(d) => match d.next_run(&mut self.buf) {
                    Err(_) => return Poll::Ready(Some(Err(WireError::Malformed("body framing")))),
                    Ok(Some(data)) => {
                        if d.done() {
                            self.reading = Reading::Done;
                        }
                        if !data.is_empty() {
                            return Poll::Ready(Some(Ok(data)));
                        }
                        continue;
                    }
                    Ok(None) => {}
                },
                Reading::UntilClose if !self.buf.is_empty() => {
                    return Poll::Ready(Some(Ok(self.buf.split().freeze())));
                }
                Reading::UntilClose => {}
            }
            match ready!(self.poll_fill(cx)) {
                Ok(0) if matches!(self.reading, Reading::UntilClose) => {
                    self.reading = Reading::Done;
                    self.reusable = false;
                }
                Ok(0) => return Poll::Ready(Some(Err(WireError::Closed))),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(WireError::Io(e)))),
            }
        }
    }

    /// Whether a poll for the body's next piece would find nothing now, without trying: what
    /// was read is all handed on, the last read emptied the socket (tokio then answers
    /// `Pending` until the socket is ready again), and neither the end nor the request is left
    /// to see to. `false` when unsure: a poll tells.
    pub(super) fn nothing_ready(&self) -> bool {
        self.drained
            && self.buf.is_empty()
            && self.upload.is_none()
            && !matches!(self.reading, Reading::Done)
    }

    /// Whether the answer's body has been read to its end.
    pub(super) fn body_done(&self) -> bool {
        matches!(self.reading, Reading::Done)
    }

    /// What is left of the answer's body.
    pub(super) fn size_hint(&self) -> SizeHint {
        match &self.reading {
            Reading::Framed(d) => d.size_hint(),
            Reading::UntilClose => SizeHint::new(),
            Reading::Done => SizeHint::with_exact(0),
        }
    }

    /// Whether the connection can carry another exchange: this one ended whole (request
    /// written, answer read, no stray bytes), the upstream keeps it, and it has not closed.
    pub(super) fn reusable(&mut self) -> bool {
        let whole = self.upload.is_none() && self.body_done() && self.buf.is_empty();
        if whole && self.buf.capacity() > READ_MIN {
            // Kept idle, it holds at most a small read buffer (the next exchange reads into
            // it, or reclaims it, without allocating); one grown by a large answer goes.
            self.buf = BytesMut::new();
        }
        self.reusable && whole
    }

    /// Whether a kept connection is still open and quiet: one read with no waker (free when
    /// tokio already knows the socket is empty) sees an upstream's close or stray bytes.
    pub(super) fn quiet(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut probe = [0u8; 1];
        let mut probe = tokio::io::ReadBuf::new(&mut probe);
        let read = Pin::new(&mut self.io).poll_read(&mut cx, &mut probe);
        matches!(read, Poll::Pending)
    }
}

impl Upload {
    /// Queue what the body has ready, with its framing, while the queue has room.
    fn fill(&mut self, cx: &mut Context<'_>) -> Result<(), WireError> {
        while self.queue.len() + 3 <= QUEUE_PIECES && self.queued < QUEUE_BYTES {
            let Some(body) = &mut self.body else {
                return Ok(());
            };
            match Pin::new(body).poll_frame(cx) {
                Poll::Pending => return Ok(()),
                Poll::Ready(None) => {
                    self.body = None;
                    self.finish_body();
                    if self.encode != Encode::Length(0) && self.encode != Encode::Chunked {
                        return Err(WireError::Length);
                    }
                }
                Poll::Ready(Some(Err(e))) => return Err(WireError::Body(Box::new(e))),
                Poll::Ready(Some(Ok(frame))) => {
                    // Trailers are not sent (hyper's client did not send them either).
                    if let Ok(data) = frame.into_data() {
                        self.data(data)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn push(&mut self, piece: Bytes) {
        self.queued += piece.len();
        self.queue.push_back(piece);
    }

    /// Queue one piece of the body in its framing.
    fn data(&mut self, data: Bytes) -> Result<(), WireError> {
        if data.is_empty() {
            return Ok(());
        }
        match &mut self.encode {
            Encode::Length(left) => {
                let n = data.len() as u64;
                if n > *left {
                    return Err(WireError::Length);
                }
                *left -= n;
                self.push(data);
            }
            Encode::Chunked => {
                let (line, n) = crate::h1::decode::size_line(data.len());
                self.push(Bytes::copy_from_slice(&line[..n]));
                self.push(data);
                self.push(Bytes::from_static(b"\r\n"));
            }
        }
        Ok(())
    }

    /// The body has ended: a chunked one's last chunk is queued.
    fn finish_body(&mut self) {
        if self.encode == Encode::Chunked {
            self.push(Bytes::from_static(b"0\r\n\r\n"));
        }
    }

    /// The queued pieces as slices to write; how many.
    fn slices<'a>(&'a self, out: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (slot, piece) in out.iter_mut().zip(&self.queue) {
            *slot = IoSlice::new(piece);
            n += 1;
        }
        n
    }

    /// `n` bytes were written off the front of the queue.
    fn advance(&mut self, mut n: usize) {
        self.queued -= n;
        while n > 0 {
            let Some(front) = self.queue.front_mut() else {
                return;
            };
            if front.len() > n {
                front.advance(n);
                return;
            }
            n -= front.len();
            self.queue.pop_front();
        }
    }
}

/// The request body's framing (as hyper's client chose it): `None` for no body, and whether
/// [`write_head`] adds its header (the request has none). A `Content-Length` given is kept;
/// else a body of known size gets one; else it is chunked (but a GET or HEAD of unknown size
/// sends none, as with hyper). A client's `Transfer-Encoding` never goes out as it came.
fn encoding(
    headers: &mut HeaderMap,
    method: &Method,
    body: &AttemptBody,
) -> (Option<Encode>, bool) {
    headers.remove(TRANSFER_ENCODING);
    if body.is_end_stream() {
        return match declared_length(headers) {
            Some(n) if n > 0 => (Some(Encode::Length(n)), false),
            _ => (None, false),
        };
    }
    if let Some(n) = declared_length(headers) {
        return (Some(Encode::Length(n)), false);
    }
    if let Some(n) = body.size_hint().exact() {
        return (Some(Encode::Length(n)), true);
    }
    if matches!(*method, Method::GET | Method::HEAD) {
        return (None, false);
    }
    (Some(Encode::Chunked), true)
}

/// The one length all `Content-Length` values agree on, if they do.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    let mut found = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        for part in value.as_bytes().split(|b| *b == b',') {
            let n = length(part.trim_ascii())?;
            if found.is_some_and(|f| f != n) {
                return None;
            }
            found = Some(n);
        }
    }
    found
}

/// The request line and headers, as HTTP/1.1, with the framing header of `add` when given.
fn write_head(out: &mut Vec<u8>, parts: &http::request::Parts, add: Option<Encode>) {
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match add {
        None => {}
        Some(Encode::Length(n)) => crate::h1::decode::framing_line(out, Some(n)),
        Some(Encode::Chunked) => crate::h1::decode::framing_line(out, None),
    }
    out.extend_from_slice(b"\r\n");
}

/// Parse an answer's head off the front of `buf`: `None` while it is incomplete. An
/// informational answer (1xx) is taken off and the next head looked for.
fn parse(buf: &mut BytesMut, head_only: bool) -> Result<Option<Head>, WireError> {
    loop {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut slots);
        let len = match resp.parse(buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(WireError::Malformed("head")),
        };
        let code = resp.code.unwrap_or(0);
        if (100..200).contains(&code) && code != 101 {
            buf.advance(len);
            if buf.is_empty() {
                return Ok(None);
            }
            continue;
        }
        let version = match resp.version {
            Some(1) => Version::HTTP_11,
            _ => Version::HTTP_10,
        };
        let base = buf.as_ptr() as usize;
        let span = |s: &[u8]| -> Range<usize> {
            let start = s.as_ptr() as usize - base;
            start..start + s.len()
        };
        let spans: Vec<_> = resp
            .headers
            .iter()
            .map(|h| (span(h.name.as_bytes()), span(h.value)))
            .collect();
        let bytes = buf.split_to(len).freeze();
        return build(&bytes, code, version, &spans, head_only).map(Some);
    }
}

/// The answer's head from its bytes, and how its body is read.
fn build(
    bytes: &Bytes,
    code: u16,
    version: Version,
    spans: &[(Range<usize>, Range<usize>)],
    head_only: bool,
) -> Result<Head, WireError> {
    let status = StatusCode::from_u16(code).map_err(|_| WireError::Malformed("status"))?;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(WireError::Malformed("an upgrade nobody asked for"));
    }
    // Room for what is added on the way out (the request id, a framing header).
    let mut headers = HeaderMap::with_capacity(spans.len() + 2);
    for (name, value) in spans {
        let name = HeaderName::from_bytes(&bytes[name.clone()])
            .map_err(|_| WireError::Malformed("header name"))?;
        let value = HeaderValue::from_maybe_shared(bytes.slice(value.clone()))
            .map_err(|_| WireError::Malformed("header value"))?;
        headers.append(name, value);
    }
    let (reading, framed) = reading_of(&headers, status, version, head_only)?;
    let keep = framed && keeps(&headers, version);
    let mut resp = http::Response::new(());
    *resp.status_mut() = status;
    *resp.version_mut() = version;
    *resp.headers_mut() = headers;
    let (parts, ()) = resp.into_parts();
    Ok(Head {
        parts,
        reading,
        keep,
    })
}

/// How an answer's body is read (RFC 9112 6.3, as hyper's client reads it), and whether its
/// end is known without the connection closing.
fn reading_of(
    headers: &HeaderMap,
    status: StatusCode,
    version: Version,
    head_only: bool,
) -> Result<(Reading, bool), WireError> {
    if head_only || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok((Reading::Done, true));
    }
    if let Some(te) = headers.get(TRANSFER_ENCODING) {
        if version == Version::HTTP_10 {
            return Err(WireError::Malformed("transfer-encoding in HTTP/1.0"));
        }
        let last = headers
            .get_all(TRANSFER_ENCODING)
            .iter()
            .next_back()
            .unwrap_or(te);
        let chunked = last
            .as_bytes()
            .rsplit(|b| *b == b',')
            .next()
            .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        if chunked {
            return Ok((Reading::Framed(Decoder::new(Framing::Chunked)), true));
        }
        return Ok((Reading::UntilClose, false));
    }
    if headers.contains_key(CONTENT_LENGTH) {
        return match declared_length(headers) {
            Some(0) => Ok((Reading::Done, true)),
            Some(n) => Ok((Reading::Framed(Decoder::new(Framing::Length(n))), true)),
            None => Err(WireError::Malformed("content-length")),
        };
    }
    Ok((Reading::UntilClose, false))
}

/// Whether the upstream keeps the connection after this answer.
fn keeps(headers: &HeaderMap, version: Version) -> bool {
    let has = |token: &[u8]| {
        headers.get_all(CONNECTION).iter().any(|v| {
            v.as_bytes()
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
        })
    };
    if version == Version::HTTP_11 {
        !has(b"close")
    } else {
        has(b"keep-alive")
    }
}

/// For the fuzzer (`fuzz/`, target `upstream`): read `data` as an upstream's answer to a GET (a
/// HEAD when its first byte is odd), head then body, as an exchange would; panics when one of
/// its properties fails.
pub fn fuzz_answer(data: &[u8]) {
    let head_only = data.first().is_some_and(|b| b % 2 == 1);
    let data = data.get(1..).unwrap_or_default();
    let mut buf = BytesMut::from(data);
    let Ok(Some(head)) = parse(&mut buf, head_only) else {
        assert!(
            data.ends_with(&buf),
            "only whole heads taken, off the front"
        );
        return;
    };
    assert!(data.ends_with(&buf), "only the head taken, off the front");
    assert!(head.parts.headers.len() <= MAX_HEADERS);
    assert!(
        !head.parts.status.is_informational(),
        "1xx skipped, 101 refused"
    );
    let after_head = buf.len();
    let declared = match &head.reading {
        Reading::Framed(d) => d.length_left(),
        Reading::Done => Some(0),
        Reading::UntilClose => {
            assert!(!head.keep, "a body read until close is never kept");
            return;
        }
    };
    if head_only {
        assert!(
            matches!(head.reading, Reading::Done),
            "a HEAD's answer has no body"
        );
    }
    let mut body = 0;
    if let Reading::Framed(mut d) = head.reading {
        while let Ok(Some(piece)) = d.next(&mut buf) {
            body += piece.len();
            if d.done() {
                break;
            }
        }
    }
    assert!(body + buf.len() <= after_head, "no byte handed out twice");
    if let Some(n) = declared {
        assert!(body as u64 <= n, "a body never exceeds its length");
    }
}

#[cfg(test)]
#[path = "wire_tests.rs"]
mod tests;
