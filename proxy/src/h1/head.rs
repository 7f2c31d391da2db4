//! Request heads read and response heads written by keyrelay's own HTTP/1 path: only the plain
//! HTTP/1.1 shapes it serves itself; anything else is handed back, byte for byte, to hyper.

use crate::connection::{H1_MAX_HEADERS, H1_MAX_HEAD_BYTES};
use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, Version};
use http_body::SizeHint;
use std::cell::RefCell;
use std::ops::Range;
use std::time::SystemTime;

use super::decode::length;
pub(super) use super::decode::Framing;

/// A request head read in full, its bytes taken off the connection's buffer.
#[derive(Debug)]
pub(super) struct Head {
    pub request: Request<()>,
    pub framing: Framing,
    /// The client asked to close after this exchange (`Connection: close`).
    pub close: bool,
}

/// What the buffered bytes are.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "returned once per request and taken apart at once; a box would cost an allocation"
)]
pub(super) enum Parsed {
    Complete(Head),
    /// The head is not all here yet (and still within the size limit).
    Partial,
    /// Not a shape this path serves (HTTP/2's preface, HTTP/1.0, an upgrade, `Expect`, an
    /// unusual framing, a malformed or oversized head): hyper serves the connection from here,
    /// with the buffer untouched, and gives whatever answer it gives.
    Hyper,
}

/// Header names this path looks at, compared without case.
fn is(name: &str, lower: &str) -> bool {
    name.len() == lower.len() && name.eq_ignore_ascii_case(lower)
}

/// `Some(close)` for a `Connection` value made only of `close` and `keep-alive`.
fn connection(value: &[u8]) -> Option<bool> {
    let mut close = false;
    for token in value.split(|b| *b == b',') {
        let token = token.trim_ascii();
        if token.eq_ignore_ascii_case(b"close") {
            close = true;
        } else if !token.eq_ignore_ascii_case(b"keep-alive") {
            return None;
        }
    }
    Some(close)
}

/// The body's framing and whether the client asks to close, from headers this path serves
/// as they are; `None` for anything hyper should judge (a second or malformed length, a
/// transfer coding other than chunked alone, both, another connection option, an upgrade,
/// `Expect`).
fn framing_of(headers: &[httparse::Header<'_>]) -> Option<(Framing, bool)> {
    let (mut declared, mut chunked, mut close) = (None, false, false);
    for h in headers {
        if is(h.name, "content-length") {
            match length(h.value) {
                Some(n) if declared.is_none() => declared = Some(n),
                _ => return None,
            }
        } else if is(h.name, "transfer-encoding") {
            if chunked || !h.value.eq_ignore_ascii_case(b"chunked") {
                return None;
            }
            chunked = true;
        } else if is(h.name, "connection") {
            close |= connection(h.value)?;
        } else if is(h.name, "upgrade") || is(h.name, "expect") {
            return None;
        }
    }
    let framing = match (declared, chunked) {
        (Some(_), true) => return None,
        (Some(0), false) | (None, false) => Framing::Empty,
        (Some(n), false) => Framing::Length(n),
        (None, true) => Framing::Chunked,
    };
    Some((framing, close))
}

/// Read a request head from the front of `buf`; when complete, its bytes are split off (the
/// request's URI and header values share them, uncopied).
pub(super) fn parse(buf: &mut BytesMut) -> Parsed {
    let n = buf.len().min(4);
    if buf[..n] == b"PRI "[..n] {
        // HTTP/2's preface, or what may yet become it.
        return if n < 4 {
            Parsed::Partial
        } else {
            Parsed::Hyper
        };
    }
    let mut slots = [httparse::EMPTY_HEADER; H1_MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len <= H1_MAX_HEAD_BYTES => len,
        Ok(httparse::Status::Partial) if buf.len() < H1_MAX_HEAD_BYTES => return Parsed::Partial,
        _ => return Parsed::Hyper,
    };
    let (Some(1), Some(method), Some(path)) = (req.version, req.method, req.path) else {
        return Parsed::Hyper;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::Hyper;
    };
    if method == Method::CONNECT || !path.starts_with('/') {
        return Parsed::Hyper;
    }
    let base = buf.as_ptr() as usize;
    let span = |s: &[u8]| -> Range<usize> {
        let start = s.as_ptr() as usize - base;
        start..start + s.len()
    };
    let path = span(path.as_bytes());
    let Some((framing, close)) = framing_of(req.headers) else {
        return Parsed::Hyper;
    };
    let mut spans = Vec::with_capacity(req.headers.len());
    spans.extend(
        req.headers
            .iter()
            .map(|h| (span(h.name.as_bytes()), span(h.value))),
    );
    let head = buf.split_to(len).freeze();
    match build(&head, method, path, &spans) {
        Some(request) => Parsed::Complete(Head {
            request,
            framing,
            close,
        }),
        None => {
            // A name or value httparse took and `http` does not: hyper decides. Put the bytes
            // back as they were (a copy, on this rare path only).
            let mut restored = BytesMut::with_capacity(head.len() + buf.len());
            restored.extend_from_slice(&head);
            restored.extend_from_slice(buf);
            *buf = restored;
            Parsed::Hyper
        }
    }
}

/// The request from its head's bytes.
fn build(
    head: &Bytes,
    method: Method,
    path: Range<usize>,
    spans: &[(Range<usize>, Range<usize>)],
) -> Option<Request<()>> {
    let uri = Uri::from_maybe_shared(head.slice(path)).ok()?;
    let mut headers = HeaderMap::with_capacity(spans.len());
    for (name, value) in spans {
        let name = HeaderName::from_bytes(&head[name.clone()]).ok()?;
        let value = HeaderValue::from_maybe_shared(head.slice(value.clone())).ok()?;
        headers.append(name, value);
    }
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = headers;
    Some(request)
}

/// How a response's body goes out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Out {
    /// No body on the wire (HEAD, 1xx, 204, 304).
    None,
    Length(u64),
    Chunked,
}

/// Settle the response's framing: its own `Content-Length` when valid, else the body's exact
/// size, else chunked; none for a bodiless status or a HEAD request. Returns how the body goes
/// out and the framing header [`write_head`] adds (`Out::None`: the response has its own, or
/// needs none); the map itself only loses what must not go out.
pub(super) fn framing(
    head_request: bool,
    status: StatusCode,
    headers: &mut HeaderMap,
    hint: &SizeHint,
) -> (Out, Out) {
    headers.remove(TRANSFER_ENCODING);
    if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        headers.remove(CONTENT_LENGTH);
        return (Out::None, Out::None);
    }
    let declared = match headers.get(CONTENT_LENGTH).map(|v| length(v.as_bytes())) {
        Some(Some(n)) => Some(n),
        Some(None) => {
            headers.remove(CONTENT_LENGTH);
            None
        }
        None => None,
    };
    let (out, add) = match (declared, hint.exact()) {
        (Some(n), _) => (Out::Length(n), Out::None),
        (None, Some(n)) => (Out::Length(n), Out::Length(n)),
        (None, None) => (Out::Chunked, Out::Chunked),
    };
    if head_request {
        (Out::None, add)
    } else {
        (out, add)
    }
}

/// Append the status line and headers (with the framing header `add` from [`framing`], `Date`
/// when the response has none, and `Connection: close` when this is the connection's last
/// answer).
pub(super) fn write_head(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    add: Out,
    close: bool,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match add {
        Out::None => {}
        Out::Length(n) => super::decode::framing_line(out, Some(n)),
        Out::Chunked => super::decode::framing_line(out, None),
    }
    if !headers.contains_key(DATE) {
        out.extend_from_slice(b"date: ");
        date(out);
        out.extend_from_slice(b"\r\n");
    }
    if close && !headers.contains_key(CONNECTION) {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

thread_local! {
    /// The current second's HTTP date, formatted once a second per thread.
    static DATE_CACHE: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
}

/// Append the current time as an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn date(out: &mut Vec<u8>) {
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE_CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.0 != secs {
            let text = httpdate::fmt_http_date(now);
            if text.len() == 29 {
                cache.1.copy_from_slice(text.as_bytes());
                cache.0 = secs;
            }
        }
        out.extend_from_slice(&cache.1);
    });
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    fn parsed(bytes: &[u8]) -> (Parsed, BytesMut) {
        let mut buf = BytesMut::from(bytes);
        (parse(&mut buf), buf)
    }

    #[test]
    fn a_plain_request_is_read_and_its_bytes_taken() {
        let (p, rest) = parsed(
            b"POST /v1/chat?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nX-A: 1\r\nx-a: 2\r\n\r\nhelloGET",
        );
        let Parsed::Complete(head) = p else {
            panic!("{p:?}")
        };
        assert_eq!(head.framing, Framing::Length(5));
        assert!(!head.close);
        assert_eq!(head.request.method(), Method::POST);
        assert_eq!(head.request.uri(), "/v1/chat?x=1");
        let all: Vec<_> = head.request.headers().get_all("x-a").iter().collect();
        assert_eq!(all, ["1", "2"]);
        assert_eq!(&rest[..], b"helloGET");
    }

    #[test]
    fn framings_and_close_are_read() {
        let cases: [(&[u8], Framing, bool); 4] = [
            (b"GET / HTTP/1.1\r\n\r\n", Framing::Empty, false),
            (b"GET / HTTP/1.1\r\ncontent-length: 0\r\n\r\n", Framing::Empty, false),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\nConnection: keep-alive, close\r\n\r\n",
                Framing::Chunked,
                true,
            ),
            (b"POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\n", Framing::Length(12), false),
        ];
        for (bytes, framing, close) in cases {
            let (Parsed::Complete(head), rest) = parsed(bytes) else {
                panic!("{}", String::from_utf8_lossy(bytes))
            };
            assert_eq!((head.framing, head.close), (framing, close));
            assert!(rest.is_empty());
        }
    }

    #[test]
    fn partial_heads_wait_and_unusual_ones_go_to_hyper_untouched() {
        assert!(matches!(
            parsed(b"GET / HTTP/1.1\r\nHost").0,
            Parsed::Partial
        ));
        assert!(matches!(parsed(b"PR").0, Parsed::Partial));
        let unusual: [&[u8]; 13] = [
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET / HTTP/1.0\r\n\r\n",
            b"CONNECT a:443 HTTP/1.1\r\n\r\n",
            b"GET http://a/ HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nConnection: authorization\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Header: 1\r\n\r\n",
            b"GET /\xff HTTP/1.1\r\n\r\n",
        ];
        for bytes in unusual {
            let (p, rest) = parsed(bytes);
            assert!(
                matches!(p, Parsed::Hyper),
                "{}: {p:?}",
                String::from_utf8_lossy(bytes)
            );
            assert_eq!(&rest[..], bytes, "bytes left as they were");
        }
        let big = format!("GET / HTTP/1.1\r\nx: {}", "a".repeat(H1_MAX_HEAD_BYTES));
        assert!(matches!(parsed(big.as_bytes()).0, Parsed::Hyper));
    }

    #[test]
    fn response_framing_follows_the_length_the_hint_or_chunks() {
        let exact = SizeHint::with_exact(7);
        let open = SizeHint::new();
        let mut h = HeaderMap::new();
        let settled = framing(false, StatusCode::OK, &mut h, &exact);
        assert_eq!(settled, (Out::Length(7), Out::Length(7)));
        assert!(
            h.is_empty(),
            "the length is written with the head, not put in the map"
        );
        let mut h = HeaderMap::new();
        h.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        let settled = framing(false, StatusCode::OK, &mut h, &open);
        assert_eq!(settled, (Out::Chunked, Out::Chunked));
        assert!(
            h.is_empty(),
            "the upstream's own framing never goes out as it was"
        );
        let mut h = HeaderMap::new();
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("3"));
        let settled = framing(false, StatusCode::OK, &mut h, &open);
        assert_eq!(settled, (Out::Length(3), Out::None));
        let settled = framing(true, StatusCode::OK, &mut h, &open);
        assert_eq!(settled, (Out::None, Out::None));
        assert_eq!(h[CONTENT_LENGTH], "3", "HEAD keeps the length");
        let mut h = HeaderMap::new();
        let settled = framing(true, StatusCode::OK, &mut h, &exact);
        assert_eq!(settled, (Out::None, Out::Length(7)), "HEAD says the length");
        let mut h = HeaderMap::new();
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("3"));
        let settled = framing(false, StatusCode::NO_CONTENT, &mut h, &exact);
        assert_eq!(settled, (Out::None, Out::None));
        assert!(h.is_empty());
        let mut h = HeaderMap::new();
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("x"));
        let settled = framing(false, StatusCode::OK, &mut h, &exact);
        assert_eq!(
            settled,
            (Out::Length(7), Out::Length(7)),
            "a bad length is replaced"
        );
        assert!(h.is_empty());
    }

    #[test]
    fn the_framing_header_is_written_with_the_head() {
        let h = HeaderMap::new();
        for (add, line) in [
            (Out::Length(0), "content-length: 0\r\n"),
            (Out::Length(1234567), "content-length: 1234567\r\n"),
            (
                Out::Length(u64::MAX),
                "content-length: 18446744073709551615\r\n",
            ),
            (Out::Chunked, "transfer-encoding: chunked\r\n"),
        ] {
            let mut out = Vec::new();
            write_head(&mut out, StatusCode::OK, &h, add, false);
            let text = String::from_utf8(out).unwrap();
            assert!(
                text.starts_with(&format!("HTTP/1.1 200 OK\r\n{line}date: ")),
                "{text}"
            );
        }
    }

    #[test]
    fn heads_carry_a_date_and_close_when_asked() {
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("b"));
        let mut out = Vec::new();
        write_head(&mut out, StatusCode::TOO_MANY_REQUESTS, &h, Out::None, true);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 429 Too Many Requests\r\nx-a: b\r\ndate: "));
        assert!(
            text.ends_with(" GMT\r\nconnection: close\r\n\r\n"),
            "{text}"
        );
        let mut out = Vec::new();
        h.insert(DATE, HeaderValue::from_static("then"));
        write_head(&mut out, StatusCode::OK, &h, Out::None, false);
        assert_eq!(out, b"HTTP/1.1 200 OK\r\nx-a: b\r\ndate: then\r\n\r\n");
    }
}
