//! Raw HTTP/1 over a TcpStream, for requests hyper's client would refuse to send, and small
//! upstreams the scripted mock cannot play (a gate that holds answers, a raw SSE body).
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test support"
)]

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One response as read off the wire.
#[derive(Debug)]
pub struct RawReply {
    pub status: Option<u16>,
    pub head: String,
    pub body: Vec<u8>,
    /// The server closed the connection (EOF or reset) while or after answering.
    pub closed: bool,
}

impl RawReply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.head, self.text()))
    }
}

/// Send `bytes` as they are, then read one response.
pub async fn exchange(addr: SocketAddr, bytes: &[u8]) -> RawReply {
    let mut s = TcpStream::connect(addr).await.unwrap();
    // A server may answer and close before taking everything; what matters is what it says.
    let _ = s.write_all(bytes).await;
    let mut r = read_reply(&mut s).await;
    if !r.closed {
        // Answered in full: does the server then close (it should, after an error)?
        let mut more = [0u8; 1024];
        let eof = tokio::time::timeout(Duration::from_secs(2), s.read(&mut more)).await;
        r.closed = matches!(eof, Ok(Ok(0) | Err(_)));
    }
    r
}

/// Read one response: the head, then a Content-Length body, else until the connection ends.
/// Bounded at 10 s.
pub async fn read_reply(s: &mut TcpStream) -> RawReply {
    let mut buf = Vec::new();
    let mut closed = false;
    let read = async {
        let mut chunk = [0u8; 16384];
        loop {
            if let Some(done) = complete(&buf) {
                return done;
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    closed = true;
                    return buf.len();
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    let end = tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("no complete answer within 10 s");
    let buf = &buf[..end.min(buf.len())];
    let split = find(buf, b"\r\n\r\n").map_or(buf.len(), |i| i + 4);
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .filter(|_| head.starts_with("HTTP/1."));
    RawReply {
        status,
        head,
        body: buf[split..].to_vec(),
        closed,
    }
}

/// The length of a complete response in `buf`, when it holds one with a Content-Length.
fn complete(buf: &[u8]) -> Option<usize> {
    let end = find(buf, b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))?
        .trim()
        .parse()
        .ok()?;
    (buf.len() >= end + len).then_some(end + len)
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The connection is closed by the server within 10 s (reads EOF or an error).
pub async fn closes(s: &mut TcpStream) -> bool {
    let mut sink = [0u8; 4096];
    let wait = async {
        loop {
            match s.read(&mut sink).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .unwrap_or(false)
}

/// An upstream that answers every connection with `response` as raw bytes and counts them.
pub async fn raw_upstream(
    response: Vec<u8>,
) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            let response = response.clone();
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut seen = Vec::new();
                while find(&seen, b"\r\n\r\n").is_none() {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = s.write_all(&response).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, count)
}
