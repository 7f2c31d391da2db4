//! keyrelay's own HTTP/1.1 path, over raw sockets: pipelined requests of every framing reach
//! the upstream whole and in order, an unread body does not cost the connection, a client
//! hanging up ends its request upstream, a head in pieces is read, and a shape handed to hyper
//! after a request of keyrelay's own is still served.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod raw;
mod support;

use raw::find;
use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

fn body(word: &str) -> String {
    format!(r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"{word}"}}]}}"#)
}

fn with_length(version: &str, token: &str, body: &str) -> String {
    format!(
        "POST /v1/chat/completions {version}\r\nhost: keyrelay\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// `body` in two chunks, the first with an extension, and a trailer.
fn chunked(token: &str, body: &str) -> String {
    let (a, b) = body.split_at(body.len() / 2);
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: keyrelay\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n{:x};x=1\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\nx-trailer: 1\r\n\r\n",
        a.len(),
        b.len()
    )
}

/// Answers read one by one off a connection, framed by length or chunked; bytes of the next
/// answer read with one are kept for it.
struct Answers {
    s: TcpStream,
    buf: Vec<u8>,
}

/// The length of a chunked body at the front of `buf` and its decoded bytes, once complete.
fn dechunk(buf: &[u8]) -> Option<(usize, Vec<u8>)> {
    let (mut at, mut out) = (0, Vec::new());
    loop {
        let line = find(&buf[at..], b"\r\n")?;
        let size_text = String::from_utf8_lossy(&buf[at..at + line]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
        at += line + 2;
        if size == 0 {
            return (buf.len() >= at + 2).then(|| (at + 2, out));
        }
        if buf.len() < at + size + 2 {
            return None;
        }
        out.extend_from_slice(&buf[at..at + size]);
        at += size + 2;
    }
}

impl Answers {
    /// The next answer: its head and body. Panics if the connection closes first.
    async fn next(&mut self) -> (String, String) {
        let read = async {
            loop {
                if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                    let lower = head.to_ascii_lowercase();
                    let rest = &self.buf[end + 4..];
                    let whole = match lower
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                    {
                        Some(n) => {
                            let n: usize = n.trim().parse().unwrap();
                            (rest.len() >= n).then(|| (n, rest[..n].to_vec()))
                        }
                        None => {
                            assert!(lower.contains("transfer-encoding: chunked"), "{head}");
                            dechunk(rest)
                        }
                    };
                    if let Some((used, body)) = whole {
                        self.buf.drain(..end + 4 + used);
                        return (head, String::from_utf8_lossy(&body).into_owned());
                    }
                }
                let mut chunk = [0u8; 4096];
                let n = self.s.read(&mut chunk).await.unwrap();
                assert!(n > 0, "closed before an answer");
                self.buf.extend_from_slice(&chunk[..n]);
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("an answer within 10 s")
    }

    /// The server keeps the connection open for at least `for_`.
    async fn stays_open(&mut self, for_: Duration) -> bool {
        let mut byte = [0u8; 1];
        tokio::time::timeout(for_, self.s.read(&mut byte))
            .await
            .is_err()
    }
}

async fn connect(h: &Harness) -> Answers {
    Answers {
        s: TcpStream::connect(h.proxy.addr()).await.unwrap(),
        buf: Vec::new(),
    }
}

fn status(head: &str) -> u16 {
    head[9..12].parse().unwrap()
}

#[tokio::test]
async fn pipelined_requests_of_every_framing_reach_the_upstream_whole_and_in_order() {
    let h = Harness::start("").await;
    let mut c = connect(&h).await;
    let words = ["first", "second", "third"];
    let all = [
        with_length("HTTP/1.1", TOKEN, &body(words[0])),
        chunked(TOKEN, &body(words[1])),
        with_length("HTTP/1.1", TOKEN, &body(words[2])),
    ]
    .concat();
    c.s.write_all(all.as_bytes()).await.unwrap();
    for _ in words {
        let (head, text) = c.next().await;
        assert_eq!(status(&head), 200, "{head}\n{text}");
    }
    let seen: Vec<String> = h
        .mock
        .seen()
        .iter()
        .map(|s| String::from_utf8_lossy(&s.body).into_owned())
        .collect();
    let sent: Vec<String> = words.iter().map(|w| body(w)).collect();
    assert_eq!(seen, sent, "the upstream got every body whole, in order");
    assert!(c.stays_open(Duration::from_millis(200)).await);
}

#[tokio::test]
async fn an_unread_body_does_not_cost_the_connection() {
    let h = Harness::start("").await;
    let mut c = connect(&h).await;
    // Refused before their bodies are read: each body is thrown away, the connection serves on.
    for refused in [
        with_length("HTTP/1.1", "not-a-token", &body("a")),
        chunked("not-a-token", &body("b")),
    ] {
        c.s.write_all(refused.as_bytes()).await.unwrap();
        let (head, text) = c.next().await;
        assert_eq!(status(&head), 401, "{head}\n{text}");
    }
    c.s.write_all(with_length("HTTP/1.1", TOKEN, &body("c")).as_bytes())
        .await
        .unwrap();
    let (head, _) = c.next().await;
    assert_eq!(status(&head), 200, "{head}");
    let seen = h.mock.seen();
    assert_eq!(seen.len(), 1, "only the authorized request went upstream");
    assert_eq!(&seen[0].body[..], body("c").as_bytes());
}

#[tokio::test]
async fn a_client_hanging_up_ends_its_request_upstream() {
    // An upstream that reads a request, never answers, and says when its connection ends.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (got, got_rx) = oneshot::channel();
    let (ended, ended_rx) = oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while find(&seen, b"\r\n\r\n").is_none() {
            let n = s.read(&mut buf).await.unwrap();
            seen.extend_from_slice(&buf[..n]);
        }
        got.send(()).unwrap();
        while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
        let _ = ended.send(Instant::now());
    });
    let config =
        keyrelay::config::Config::from_toml_str(&config_text(&url, "", ""), &env()).unwrap();
    let proxy = keyrelay::start(config).await.unwrap();
    let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
    client
        .write_all(with_length("HTTP/1.1", TOKEN, &body("x")).as_bytes())
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), got_rx)
        .await
        .expect("the request reached the upstream")
        .unwrap();
    drop(client);
    let left = Instant::now();
    // The upstream waits 5 s for a first byte; the hang-up must end the request long before.
    let ended = tokio::time::timeout(Duration::from_secs(3), ended_rx)
        .await
        .expect("the upstream connection still open 3 s after the client hung up")
        .unwrap();
    assert!(ended.duration_since(left) < Duration::from_secs(1));
}

#[tokio::test]
async fn a_head_in_pieces_is_read_and_answered() {
    let h = Harness::start("").await;
    let mut c = connect(&h).await;
    let request = with_length("HTTP/1.1", TOKEN, &body("pieces"));
    for piece in request.as_bytes().chunks(40) {
        c.s.write_all(piece).await.unwrap();
        c.s.flush().await.unwrap();
        // Separate segments, so the head arrives over several reads.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (head, _) = c.next().await;
    assert_eq!(status(&head), 200, "{head}");
    assert_eq!(&h.mock.seen()[0].body[..], body("pieces").as_bytes());
}

#[tokio::test]
async fn after_a_request_of_its_own_the_connection_hands_http_1_0_to_hyper() {
    let h = Harness::start("").await;
    let mut c = connect(&h).await;
    c.s.write_all(with_length("HTTP/1.1", TOKEN, &body("one")).as_bytes())
        .await
        .unwrap();
    let (head, _) = c.next().await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    c.s.write_all(with_length("HTTP/1.0", TOKEN, &body("two")).as_bytes())
        .await
        .unwrap();
    // hyper answers in HTTP/1.0, delimited by closing the connection.
    let mut rest = c.buf.clone();
    tokio::time::timeout(Duration::from_secs(10), c.s.read_to_end(&mut rest))
        .await
        .expect("closed within 10 s")
        .unwrap();
    let text = String::from_utf8_lossy(&rest);
    assert!(text.starts_with("HTTP/1.0 200"), "{text}");
    assert!(text.contains("chat.completion"), "{text}");
    let bodies: Vec<_> = h.mock.seen().iter().map(|s| s.body.clone()).collect();
    assert_eq!(bodies, [body("one"), body("two")].map(bytes::Bytes::from));
}
