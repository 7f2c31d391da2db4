//! Unit tests of keyrelay's own upstream HTTP/1.1 exchange, against raw sockets on port 0:
//! what the upstream received, byte for byte, and how each answer shape is read.
#![allow(clippy::unwrap_used, reason = "tests")]

use super::*;
use hyper_util::rt::TokioIo;
use std::future::poll_fn;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A wire over a fresh loopback connection, and the upstream's end of it.
async fn pair() -> (Wire, TcpStream) {
    pair_with(|_| {}).await
}

/// As [`pair`], with `prepare` done to keyrelay's end first.
async fn pair_with(prepare: impl FnOnce(&std::net::TcpStream)) -> (Wire, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let client = client.into_std().unwrap();
    prepare(&client);
    let client = TcpStream::from_std(client).unwrap();
    let (upstream, _) = listener.accept().await.unwrap();
    let io = hyper_rustls::MaybeHttpsStream::Http(TokioIo::new(client));
    (Wire::new(io), upstream)
}

fn request(method: Method, body: &'static [u8]) -> Request<AttemptBody> {
    let body = AttemptBody::full(Bytes::from_static(body));
    let mut req = Request::builder().method(method).uri("/v1/x?q=1");
    req = req.header("host", "up.test").header("x-a", "1");
    req.body(body).unwrap()
}

/// Read from the upstream's end until `want` bytes came (or 5 s passed).
async fn received(up: &mut TcpStream, want: usize) -> Vec<u8> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while got.len() < want {
        let mut buf = [0u8; 4096];
        let read = tokio::time::timeout_at(deadline, up.read(&mut buf)).await;
        match read {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    got
}

/// Most a test waits for the wire: a regression fails instead of hanging.
const WAIT: std::time::Duration = std::time::Duration::from_secs(5);

async fn head(wire: &mut Wire) -> Result<Head, WireError> {
    let head = tokio::time::timeout(WAIT, poll_fn(|cx| wire.poll_head(cx))).await;
    let mut head = head.expect("an answer's head or an error within 5 s")?;
    wire.body_of(&mut head);
    Ok(head)
}

/// The body's next piece (or its end), within [`WAIT`].
async fn next(wire: &mut Wire) -> Option<Result<Bytes, WireError>> {
    let next = tokio::time::timeout(WAIT, poll_fn(|cx| wire.poll_data(cx))).await;
    next.expect("a piece of the body or its end within 5 s")
}

/// The answer's body, piece by piece, to its end or first error.
async fn pieces(wire: &mut Wire) -> (Vec<Bytes>, Option<WireError>) {
    let mut out = Vec::new();
    loop {
        match next(wire).await {
            Some(Ok(b)) => out.push(b),
            Some(Err(e)) => return (out, Some(e)),
            None => return (out, None),
        }
    }
}

fn joined(pieces: &[Bytes]) -> String {
    pieces.iter().map(|b| String::from_utf8_lossy(b)).collect()
}

#[tokio::test]
async fn a_sized_request_goes_out_whole_and_an_answer_after_a_100_is_read_by_its_length() {
    let (mut wire, mut up) = pair().await;
    wire.start(request(Method::POST, b"hello"));
    let sent =
        b"POST /v1/x?q=1 HTTP/1.1\r\nhost: up.test\r\nx-a: 1\r\ncontent-length: 5\r\n\r\nhello";
    let answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nX-B: 2\r\ncontent-length: 3\r\n\r\nabc";
    let (got, ()) = tokio::join!(
        async {
            let h = head(&mut wire).await.unwrap();
            let (body, err) = pieces(&mut wire).await;
            (h, body, err)
        },
        async {
            assert_eq!(received(&mut up, sent.len()).await, sent);
            up.write_all(answer).await.unwrap();
        }
    );
    let (h, body, err) = got;
    assert_eq!(h.parts.status, StatusCode::CREATED);
    assert_eq!(h.parts.headers["x-b"], "2");
    assert_eq!((joined(&body).as_str(), err.is_none()), ("abc", true));
    assert!(wire.sent());
    assert!(wire.reusable(), "kept: the exchange ended whole");
    assert!(wire.quiet());
}

#[tokio::test]
async fn a_chunked_answer_is_decoded_across_reads_extensions_and_trailers_skipped() {
    let (mut wire, mut up) = pair().await;
    wire.start(request(Method::GET, b""));
    up.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;x=y\r\nhel")
        .await
        .unwrap();
    let h = head(&mut wire).await.unwrap();
    // A GET with no body: no framing header at all.
    let sent = b"GET /v1/x?q=1 HTTP/1.1\r\nhost: up.test\r\nx-a: 1\r\n\r\n";
    assert_eq!(received(&mut up, sent.len()).await, sent);
    assert_eq!(h.parts.status, StatusCode::OK);
    assert_eq!(wire.size_hint().exact(), None);
    let first = next(&mut wire).await.unwrap().unwrap();
    assert_eq!(&first[..], b"hel");
    up.write_all(b"lo\r\n1\r\n!\r\n0\r\nx-t: 1\r\n\r\n")
        .await
        .unwrap();
    let (rest, err) = pieces(&mut wire).await;
    assert!(err.is_none());
    assert_eq!(joined(&rest), "lo!");
    assert!(wire.reusable());
}

#[tokio::test]
async fn answers_without_a_known_end_or_kept_by_their_headers_are_not_reused() {
    let cases: [(&[u8], &str, bool); 5] = [
        (b"HTTP/1.1 200 OK\r\n\r\nuntil close", "until close", false),
        (
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
            "ok",
            false,
        ),
        (
            b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok",
            "ok",
            false,
        ),
        (
            b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\nok",
            "ok",
            true,
        ),
        (
            b"HTTP/1.1 204 No Content\r\ncontent-length: 9\r\n\r\n",
            "",
            true,
        ),
    ];
    for (answer, body, kept) in cases {
        let (mut wire, mut up) = pair().await;
        wire.start(request(Method::GET, b""));
        up.write_all(answer).await.unwrap();
        if !kept {
            // Only an answer read until close needs it; the others must not wait for it.
            up.shutdown().await.unwrap();
        }
        head(&mut wire).await.unwrap();
        let (got, err) = pieces(&mut wire).await;
        let shown = String::from_utf8_lossy(answer);
        assert!(err.is_none(), "{shown}");
        assert_eq!(joined(&got), body, "{shown}");
        assert_eq!(wire.reusable(), kept, "{shown}");
    }
}

#[tokio::test]
async fn a_head_requests_answer_has_no_body_whatever_its_length_says() {
    let (mut wire, mut up) = pair().await;
    wire.start(request(Method::HEAD, b""));
    up.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n")
        .await
        .unwrap();
    head(&mut wire).await.unwrap();
    assert!(wire.body_done());
    assert_eq!(wire.size_hint().exact(), Some(0));
    assert!(wire.reusable());
}

#[tokio::test]
async fn a_cut_body_a_malformed_head_and_a_close_before_the_head_are_errors_after_sending() {
    let (mut wire, mut up) = pair().await;
    wire.start(request(Method::GET, b""));
    up.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
        .await
        .unwrap();
    drop(up);
    head(&mut wire).await.unwrap();
    let (got, err) = pieces(&mut wire).await;
    assert_eq!(joined(&got), "abc");
    assert!(matches!(err, Some(WireError::Closed)), "{err:?}");
    assert!(!wire.reusable());

    for answer in [
        &b"HTTP/1.1 2x0 OK\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\ncontent-length: 1, 2\r\n\r\n",
    ] {
        let (mut wire, mut up) = pair().await;
        wire.start(request(Method::GET, b""));
        up.write_all(answer).await.unwrap();
        let err = head(&mut wire).await.err();
        assert!(matches!(err, Some(WireError::Malformed(_))), "{err:?}");
    }

    let (mut wire, mut up) = pair().await;
    wire.start(request(Method::POST, b"{}"));
    let (got, ()) = tokio::join!(head(&mut wire), async move {
        // It closes once the request has come whole, without answering.
        assert!(received(&mut up, 71).await.ends_with(b"\r\n\r\n{}"));
        drop(up);
    });
    let err = got.err();
    assert!(matches!(err, Some(WireError::Closed)), "{err:?}");
    assert!(wire.sent(), "the request left: it may have been seen");
}

#[tokio::test]
async fn a_request_that_could_not_be_written_at_all_is_not_sent() {
    // This end can no longer write: the first write fails before a byte leaves.
    let (mut wire, _up) = pair_with(|s| s.shutdown(std::net::Shutdown::Write).unwrap()).await;
    wire.start(request(Method::POST, b"{\"model\":\"x\"}"));
    let err = head(&mut wire).await.err();
    assert!(matches!(err, Some(WireError::Io(_))), "{err:?}");
    assert!(!wire.sent());
}

#[tokio::test]
async fn idle_connections_closed_or_sending_stray_bytes_are_not_quiet() {
    let (mut wire, up) = pair().await;
    assert!(wire.quiet());
    drop(up);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while wire.quiet() && tokio::time::Instant::now() < deadline {
        tokio::task::yield_now().await;
    }
    assert!(!wire.quiet(), "the upstream's close is seen");
    let (mut wire, mut up) = pair().await;
    up.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
    while wire.quiet() && tokio::time::Instant::now() < deadline {
        tokio::task::yield_now().await;
    }
    assert!(!wire.quiet(), "stray bytes are seen");
}

/// The upstream answers a started exchange with a chunked head and one chunk, `data 1`: that
/// chunk, read by the wire.
async fn first_of_a_stream(wire: &mut Wire, up: &mut TcpStream) -> Bytes {
    up.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n6\r\ndata 1\r\n")
        .await
        .unwrap();
    head(wire).await.unwrap();
    let first = next(wire).await.unwrap().unwrap();
    assert_eq!(&first[..], b"data 1");
    first
}

#[tokio::test]
async fn a_held_stream_holds_no_read_buffer_between_chunks() {
    let (mut wire, mut up) = pair().await;
    wire.start(request(Method::GET, b""));
    let first = first_of_a_stream(&mut wire, &mut up).await;
    drop(first);
    // Nothing more has come: waiting lets the buffer go.
    let mut cx = Context::from_waker(std::task::Waker::noop());
    assert!(wire.poll_data(&mut cx).is_pending());
    assert_eq!(wire.buf.capacity(), 0);
    up.write_all(b"6\r\ndata 2\r\n0\r\n\r\n").await.unwrap();
    let (rest, err) = pieces(&mut wire).await;
    assert_eq!((joined(&rest).as_str(), err.is_none()), ("data 2", true));
}

#[tokio::test]
async fn nothing_ready_is_said_only_when_a_poll_would_find_nothing() {
    let (mut wire, mut up) = pair().await;
    wire.start(request(Method::GET, b""));
    assert!(!wire.nothing_ready(), "the request is still to be written");
    first_of_a_stream(&mut wire, &mut up).await;
    // The read took all there was and all of it was handed on: a poll would be pending.
    assert!(wire.nothing_ready());
    let mut cx = Context::from_waker(std::task::Waker::noop());
    assert!(wire.poll_data(&mut cx).is_pending(), "as said");
    // A chunk larger than a read: the first read fills what it offered, so more may be there.
    let mut big = b"4e20\r\n".to_vec();
    big.extend_from_slice(&[b'x'; 20_000]);
    big.extend_from_slice(b"\r\n");
    up.write_all(&big).await.unwrap();
    let mut got = next(&mut wire).await.unwrap().unwrap().len();
    assert!(got < 20_000, "read in parts: {got}");
    assert!(!wire.nothing_ready(), "a full read: only a poll can tell");
    while got < 20_000 {
        got += next(&mut wire).await.unwrap().unwrap().len();
    }
    assert_eq!(got, 20_000);
    // The end read with the last data: the next poll ends the body at once.
    up.write_all(b"0\r\n\r\n").await.unwrap();
    assert!(next(&mut wire).await.is_none());
    assert!(
        !wire.nothing_ready(),
        "the body's end is for a poll to hand on"
    );
}
