//! Hostile input on the proxy listener, written raw where hyper's client would refuse to send
//! it: each gets a clean error or a closed connection, never a panic, never an upstream call
//! it should not cause, and a normal request right after is served.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::too_many_lines,
    reason = "tests"
)]

mod raw;
mod support;

use raw::{closes, exchange, raw_upstream, RawReply};
use std::sync::atomic::Ordering;
use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn auth() -> String {
    format!("authorization: Bearer {TOKEN}\r\n")
}

/// Send `bytes`, return what came back, then check nothing reached the mock and a normal
/// request still works.
async fn hostile(h: &Harness, bytes: &[u8]) -> RawReply {
    let r = exchange(h.proxy.addr(), bytes).await;
    assert_eq!(
        h.mock.total_calls(),
        0,
        "reached the upstream: {:?}",
        h.mock.seen()
    );
    assert_no_secret(&format!("{}{}", r.head, r.text()), "a hostile answer");
    r
}

async fn still_serves(h: &Harness) {
    let r = h.chat(CHAT).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test]
async fn oversized_and_too_many_headers_are_431() {
    let h = Harness::start("").await;
    let big = format!(
        "GET /v1/models HTTP/1.1\r\nhost: x\r\n{}x-big: {}\r\n\r\n",
        auth(),
        "a".repeat(32 * 1024)
    );
    let r = hostile(&h, big.as_bytes()).await;
    assert_eq!(r.status, Some(431), "{}", r.head);
    assert!(r.closed);
    let many: String = (0..200).map(|i| format!("x-h{i}: v\r\n")).collect();
    let many = format!("GET /v1/models HTTP/1.1\r\nhost: x\r\n{}{many}\r\n", auth());
    let r = hostile(&h, many.as_bytes()).await;
    assert_eq!(r.status, Some(431), "{}", r.head);
    still_serves(&h).await;
}

#[tokio::test]
async fn an_oversized_request_line_is_refused_by_hyper() {
    let h = Harness::start("").await;
    // hyper answers a request head past its read buffer (16 KiB) with 431, the request line
    // included; a line under the buffer but past 64 KiB would be 414.
    let line = format!(
        "GET /v1/{} HTTP/1.1\r\nhost: x\r\n{}\r\n",
        "a".repeat(70 * 1024),
        auth()
    );
    let r = hostile(&h, line.as_bytes()).await;
    assert_eq!(r.status, Some(431), "{}", r.head);
    assert!(r.closed);
    still_serves(&h).await;
}

#[tokio::test]
async fn content_length_with_transfer_encoding_smuggles_nothing() {
    let h = Harness::start("").await;
    // A front end reading Content-Length would see one request; one reading chunked, two.
    let smuggled = format!("GET /v1/smuggled HTTP/1.1\r\nhost: x\r\n{}\r\n", auth());
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n{}content-length: {}\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}",
        auth(),
        5 + smuggled.len()
    );
    let r = exchange(h.proxy.addr(), req.as_bytes()).await;
    eprintln!("CL+TE: {:?} {}", r.status, r.head);
    assert!(
        !h.mock.seen().iter().any(|s| s.uri.contains("smuggled")),
        "the smuggled request reached the upstream"
    );
    still_serves(&h).await;
}

#[tokio::test]
async fn bad_chunk_sizes_are_refused() {
    let h = Harness::start("").await;
    for size in ["zz", "ffffffffffffffffffff", "-1", "1;"] {
        let req = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n{}transfer-encoding: chunked\r\n\r\n{size}\r\nabc\r\n0\r\n\r\n",
            auth()
        );
        let r = hostile(&h, req.as_bytes()).await;
        eprintln!("chunk size {size}: {:?} closed {}", r.status, r.closed);
        assert!(
            r.status.is_none_or(|s| s == 400),
            "chunk size {size}: {}",
            r.head
        );
        assert!(r.closed, "chunk size {size}: connection left open");
    }
    still_serves(&h).await;
}

#[tokio::test]
async fn absolute_form_and_connect_are_refused() {
    let h = Harness::start("").await;
    let abs = format!(
        "POST http://evil.example/v1/chat/completions HTTP/1.1\r\nhost: evil.example\r\n{}content-length: {}\r\nconnection: close\r\n\r\n{CHAT}",
        auth(),
        CHAT.len()
    );
    let r = hostile(&h, abs.as_bytes()).await;
    assert_eq!(r.status, Some(400), "{}", r.head);
    assert_eq!(r.json()["error"]["code"], "invalid_path");
    let connect = format!(
        "CONNECT evil.example:443 HTTP/1.1\r\nhost: evil.example:443\r\n{}\r\n",
        auth()
    );
    let r = hostile(&h, connect.as_bytes()).await;
    eprintln!("CONNECT: {:?} {}", r.status, r.head);
    assert!(
        matches!(r.status, Some(400) | Some(404) | Some(405)),
        "{}",
        r.head
    );
    let star = format!(
        "OPTIONS * HTTP/1.1\r\nhost: x\r\n{}connection: close\r\n\r\n",
        auth()
    );
    let r = hostile(&h, star.as_bytes()).await;
    assert!(matches!(r.status, Some(400) | Some(404)), "{}", r.head);
    still_serves(&h).await;
}

#[tokio::test]
async fn dot_segments_encoded_slashes_and_host_paths_are_400() {
    let h = Harness::start("").await;
    for path in [
        "/v1/../admin",
        "/v1/..",
        "/v1/./chat/completions",
        "/v1/%2e%2e/admin",
        "/v1/%2E%2E/admin",
        "/v1/%2E./admin",
        "/v1/.%2e/admin",
        "/v1/chat/%2e%2e%2f%2e%2e/x",
        "/v1/a%2fb",
        "/v1/a%5cb",
        "/v1//evil.example/x",
        "/v1/..;/admin",
    ] {
        let req = format!(
            "GET {path} HTTP/1.1\r\nhost: x\r\n{}connection: close\r\n\r\n",
            auth()
        );
        let r = hostile(&h, req.as_bytes()).await;
        assert_eq!(r.status, Some(400), "{path}: {}", r.head);
        assert_eq!(r.json()["error"]["code"], "invalid_path", "{path}");
    }
    // Not under the route at all: no provider, 404.
    let req = format!(
        "GET //evil.example/v1/x HTTP/1.1\r\nhost: x\r\n{}connection: close\r\n\r\n",
        auth()
    );
    let r = hostile(&h, req.as_bytes()).await;
    assert_eq!(r.status, Some(404), "{}", r.head);
    still_serves(&h).await;
}

#[tokio::test]
async fn connection_naming_authorization_never_forwards_the_client_token() {
    let h = Harness::start("").await;
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n{}connection: authorization, close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{CHAT}",
        auth(),
        CHAT.len()
    );
    let r = exchange(h.proxy.addr(), req.as_bytes()).await;
    eprintln!("Connection: authorization -> {:?}", r.status);
    assert!(matches!(r.status, Some(200) | Some(401)), "{}", r.head);
    for seen in h.mock.seen() {
        let auth = seen.header("authorization").unwrap_or_default().to_owned();
        assert!(KEYS.iter().any(|k| auth == format!("Bearer {k}")), "{auth}");
        assert_no_secret(
            &format!("{:?}", seen.headers).replace(&auth, ""),
            "upstream headers",
        );
    }
    still_serves(&h).await;
}

#[tokio::test]
async fn invalid_utf8_in_headers_and_path_is_handled() {
    let h = Harness::start("").await;
    // A token that is not UTF-8 is no token: 401, nothing sent.
    let mut req = b"GET /v1/models HTTP/1.1\r\nhost: x\r\nauthorization: Bearer \xff\xfe\r\nconnection: close\r\n\r\n".to_vec();
    let r = hostile(&h, &req).await;
    assert_eq!(r.status, Some(401), "{}", r.head);
    // Raw bytes past ASCII in the request target: hyper lets them through, keyrelay does not.
    req = format!(
        "GET /v1/mod\u{ff}els HTTP/1.1\r\nhost: x\r\n{}connection: close\r\n\r\n",
        auth()
    )
    .into_bytes();
    let r = hostile(&h, &req).await;
    assert_eq!(r.status, Some(400), "{}", r.head);
    assert_eq!(r.json()["error"]["code"], "invalid_path");
    req = format!(
        "GET /v1/models?q=\u{ff} HTTP/1.1\r\nhost: x\r\n{}connection: close\r\n\r\n",
        auth()
    )
    .into_bytes();
    let r = hostile(&h, &req).await;
    assert_eq!(r.status, Some(400), "{}", r.head);
    // Percent-encoded invalid UTF-8 is a path like any other: forwarded as written.
    let mut req = format!(
        "GET /v1/models%ff HTTP/1.1\r\nhost: x\r\n{}connection: close\r\n",
        auth()
    )
    .into_bytes();
    req.extend_from_slice(b"user-agent: sdk \xff\xfe\r\n\r\n");
    let r = exchange(h.proxy.addr(), &req).await;
    assert_eq!(r.status, Some(200), "{}", r.head);
    let seen = h.mock.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].uri, "/v1/models%ff");
    still_serves(&h).await;
}

#[tokio::test]
async fn an_sse_line_over_a_mebibyte_passes_through_intact() {
    // keyrelay passes SSE bytes on as they come and never splits them into lines, so there is
    // no line limit to hit: a 1.5 MiB `data:` line reaches the client byte for byte.
    let line = format!("data: {{\"x\":\"{}\"}}\n\n", "a".repeat(1536 * 1024));
    let body = format!("{line}data: [DONE]\n\n");
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n{body}"
    );
    let (upstream, calls) = raw_upstream(response.into_bytes()).await;
    let text = config_text(&format!("http://{upstream}"), "", "");
    let config = keyrelay::config::Config::from_toml_str(&text, &env()).unwrap();
    let proxy = keyrelay::start(config).await.unwrap();
    let r = send(
        &http_client(),
        post(
            &format!("http://{}/v1/chat/completions", proxy.addr()),
            &[("authorization", &format!("Bearer {TOKEN}"))],
            CHAT_STREAM,
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), body.len());
    assert!(r.body == body.as_bytes(), "the long line was altered");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_redirect_is_passed_back_and_its_target_never_called() {
    let (canary, canary_calls) =
        raw_upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_vec()).await;
    let h = Harness::start("").await;
    for k in KEYS {
        h.mock.set(
            k,
            keyrelay_mock::Reply::Fixed {
                status: 302,
                headers: vec![("location".into(), format!("http://{canary}/steal"))],
                body: String::new(),
            },
        );
    }
    let r = h.chat(CHAT).await;
    assert_eq!(r.status, 302);
    assert_eq!(h.mock.total_calls(), 1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        canary_calls.load(Ordering::SeqCst),
        0,
        "the redirect was followed"
    );
}

#[tokio::test]
async fn http2_rapid_reset_reaches_nothing_and_holds_nothing() {
    let h = Harness::start("").await;
    let url = h.url("/v1/chat/completions");
    let tcp = TcpStream::connect(h.proxy.addr()).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    // Normal traffic beside the flood, on its own connections.
    let normal = {
        let url = url.clone();
        tokio::spawn(async move {
            let client = http_client();
            let mut statuses = Vec::new();
            for _ in 0..20 {
                statuses.push(chat_at(&client, &url).await.status);
            }
            statuses
        })
    };
    let mut opened = 0;
    let mut client = Some(client);
    for _ in 0..5000 {
        let Some(c) = client.take() else { break };
        let Ok(mut ready) = c.ready().await else {
            break;
        };
        // A body is promised (so keyrelay starts buffering), then the stream is reset.
        let req = http::Request::post(&url)
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("content-length", "100000")
            .body(())
            .unwrap();
        let Ok((_resp, mut stream)) = ready.send_request(req, false) else {
            break;
        };
        stream.send_reset(h2::Reason::CANCEL);
        opened += 1;
        client = Some(ready);
    }
    drop(client);
    let ended = tokio::time::timeout(Duration::from_secs(10), conn).await;
    eprintln!("rapid reset: {opened} streams opened; connection ended: {ended:?}");
    let statuses = normal.await.unwrap();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(
        h.mock.total_calls(),
        20,
        "only the normal requests reached the upstream"
    );
    assert!(
        eventually(Duration::from_secs(5), || h.proxy.app().buffered_bytes()
            == 0)
        .await,
        "reset streams still hold {} bytes of budget",
        h.proxy.app().buffered_bytes()
    );
    still_serves(&h).await;
}

/// An HTTP/2 frame header and payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

#[tokio::test]
async fn http2_continuation_flood_is_cut_off() {
    let h = Harness::start("").await;
    let mut s = TcpStream::connect(h.proxy.addr()).await.unwrap();
    let mut start = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    start.extend(frame(0x4, 0, 0, &[]));
    // HEADERS without END_HEADERS: GET, http, / (static table), nothing else yet.
    start.extend(frame(0x1, 0, 1, &[0x82, 0x86, 0x84]));
    s.write_all(&start).await.unwrap();
    // Each CONTINUATION: one literal header `x-flood: a…` of 1,000 bytes, never the last.
    let mut field = vec![0x00, 0x07];
    field.extend_from_slice(b"x-flood");
    field.extend_from_slice(&[0x7f, 0xe9, 0x06]);
    field.extend(std::iter::repeat_n(b'a', 1000));
    let continuation = frame(0x9, 0, 1, &field);
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        let mut sent = 0usize;
        for _ in 0..20_000 {
            if wr.write_all(&continuation).await.is_err() {
                break;
            }
            sent += 1;
        }
        sent
    });
    let mut got = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(15), async {
        let mut buf = [0u8; 4096];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let sent = writer.await.unwrap();
    // A GOAWAY (type 7) among what the server sent.
    let goaway = got.windows(4).any(|w| w[3] == 0x7 && w[0] == 0);
    eprintln!(
        "continuation flood: {sent} frames sent, {} bytes back, goaway {goaway}",
        got.len()
    );
    assert!(closed.is_ok(), "connection still open after 15 s of flood");
    assert!(sent < 20_000, "all 20 MB of CONTINUATION was taken in");
    assert_eq!(h.mock.total_calls(), 0);
    still_serves(&h).await;
}

#[tokio::test]
async fn a_half_sent_request_cannot_outlive_its_timeouts() {
    let h = Harness::start_with("", "body_read_timeout = \"200ms\"").await;
    let mut s = TcpStream::connect(h.proxy.addr()).await.unwrap();
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n{}content-length: 50\r\n\r\n{{",
        auth()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    assert!(closes(&mut s).await);
    assert_eq!(h.mock.total_calls(), 0);
    still_serves(&h).await;
}
