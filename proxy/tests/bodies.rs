//! Request bodies under pressure: the global buffering budget (503 at once, no upstream call),
//! the per-request limit (413 declared or streamed, without reading the rest), the idle
//! body-read timeout (408), and the error event a cut SSE stream ends with.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::too_many_lines,
    reason = "tests"
)]

mod raw;
mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use raw::{closes, exchange, read_reply};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// An upstream that reads each body (discarding it), counts the call, and holds its answer
/// until released.
struct Gate {
    addr: SocketAddr,
    calls: Arc<AtomicUsize>,
    release: watch::Sender<bool>,
}

async fn gated_upstream() -> Gate {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let (release, released) = watch::channel(false);
    let counted = calls.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (counted, released) = (counted.clone(), released.clone());
            let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                let (counted, mut released) = (counted.clone(), released.clone());
                async move {
                    let mut body = req.into_body();
                    while let Some(Ok(_)) = body.frame().await {}
                    counted.fetch_add(1, Ordering::SeqCst);
                    let _ = released.wait_for(|r| *r).await;
                    let mut resp = http::Response::new(Full::new(Bytes::from_static(b"{}")));
                    resp.headers_mut()
                        .insert("content-type", "application/json".parse().unwrap());
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            tokio::spawn(async move {
                let mut builder =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                // Small read buffers: this upstream stands for a remote host, not this process.
                builder.http1().max_buf_size(8192);
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Gate {
        addr,
        calls,
        release,
    }
}

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

async fn proxy_for(
    upstream: &str,
    server_extra: &str,
    upstream_timeout: &str,
) -> keyrelay::Running {
    let text = config_text(upstream, "", server_extra)
        .replace("first_byte_timeout = \"5s\"", upstream_timeout);
    let config = keyrelay::config::Config::from_toml_str(&text, &env()).unwrap();
    keyrelay::start(config).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_megabyte_bodies_stay_within_the_budget() {
    const CLIENTS: usize = 1000;
    const MIB: usize = 1024 * 1024;
    let gate = gated_upstream().await;
    let proxy = proxy_for(
        &format!("http://{}", gate.addr),
        "max_body_bytes = 2097152\nmax_buffered_bytes = 268435456",
        "first_byte_timeout = \"120s\"",
    )
    .await;
    let url = format!("http://{}/v1/chat/completions", proxy.addr());
    // One shared megabyte: the clients' bodies cost the test process nothing per request.
    let body = Bytes::from(vec![b'x'; MIB]);
    // The baseline: everything started and one request served (an unauthenticated one, which
    // the held upstream never sees), so what grows after is the load's.
    let warm = send(&http_client(), post(&url, &[], CHAT)).await;
    assert_eq!(warm.status, 401);
    let rss_before = status_kib("VmRSS:");
    // The clients stand for remote hosts: they keep no idle connections in this process.
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .http1_max_buf_size(8192)
        .build_http();
    let refused = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        if i % 100 == 99 {
            // Connects in waves: a burst of 1,000 SYNs overflows the listen queue, which is
            // the kernel's business, not the budget's.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let req = http::Request::post(&url)
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("content-type", "application/json")
            .body(Full::new(body.clone()))
            .unwrap();
        let (client, refused, failed) = (client.clone(), refused.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let resp = client.request(req).await.map_err(|e| {
                failed.fetch_add(1, Ordering::SeqCst);
                format!("{e:?}")
            })?;
            let status = resp.status().as_u16();
            let retry_after = resp.headers().get("retry-after").cloned();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("{e:?}"))?;
            if status == 503 {
                assert_eq!(retry_after.unwrap(), "1");
                let v: serde_json::Value = serde_json::from_slice(&body.to_bytes()).unwrap();
                assert_eq!(v["error"]["code"], "overloaded");
                refused.fetch_add(1, Ordering::SeqCst);
            }
            Ok::<u16, String>(status)
        }));
    }
    // Every request either reached the upstream (which holds them all) or was refused: the
    // refusals came while the admitted bodies were still held, so at once.
    let settled = eventually(Duration::from_secs(90), || {
        gate.calls.load(Ordering::SeqCst)
            + refused.load(Ordering::SeqCst)
            + failed.load(Ordering::SeqCst)
            == CLIENTS
    })
    .await;
    let admitted = gate.calls.load(Ordering::SeqCst);
    let held = proxy.app().buffered_bytes();
    let peak = status_kib("VmHWM:");
    let at_settle = status_kib("VmRSS:");
    assert!(
        settled,
        "{admitted} admitted + {} refused + {} failed != {CLIENTS}",
        refused.load(Ordering::SeqCst),
        failed.load(Ordering::SeqCst)
    );
    assert!(
        admitted <= 256,
        "{admitted} bodies admitted past a 256 MiB budget"
    );
    assert!(held <= 256 * MIB, "{held} bytes held");
    gate.release.send(true).unwrap();
    let mut statuses = std::collections::BTreeMap::new();
    let mut errors = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(status) => *statuses.entry(status).or_insert(0usize) += 1,
            Err(e) => errors.push(e),
        }
    }
    assert!(
        errors.is_empty(),
        "{} client errors, first: {:?}",
        errors.len(),
        errors.first()
    );
    let ok = statuses.get(&200).copied().unwrap_or(0);
    let busy = statuses.get(&503).copied().unwrap_or(0);
    eprintln!(
        "statuses {statuses:?}; upstream calls {admitted}; RSS before {rss_before} KiB, peak {peak} KiB, settled {at_settle} KiB, after {} KiB", status_kib("VmRSS:")
    );
    assert_eq!(ok + busy, CLIENTS, "{statuses:?}");
    assert!(busy > 0 && ok > 0, "{statuses:?}");
    assert_eq!(
        ok,
        gate.calls.load(Ordering::SeqCst),
        "an upstream call per 200, none per 503"
    );
    let growth_mib = peak.saturating_sub(rss_before) / 1024;
    assert!(growth_mib < 320, "RSS grew {growth_mib} MiB");
    assert!(
        eventually(Duration::from_secs(5), || proxy.app().buffered_bytes() == 0).await,
        "budget not given back"
    );
    // Afterwards a normal request is served.
    let r = send(
        &client,
        post(&url, &[("authorization", &format!("Bearer {TOKEN}"))], CHAT),
    )
    .await;
    assert_eq!(r.status, 200);
}

fn head(path: &str, extra: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\ncontent-type: application/json\r\n{extra}\r\n"
    )
}

#[tokio::test]
async fn a_declared_oversize_body_is_413_before_it_is_read() {
    let h = Harness::start_with("", "max_body_bytes = 1024").await;
    let mut s = TcpStream::connect(h.proxy.addr()).await.unwrap();
    // 100 MiB declared, 10 bytes sent: the answer cannot wait for the rest.
    let req = head("/v1/chat/completions", "content-length: 104857600\r\n") + "{\"model\":";
    s.write_all(req.as_bytes()).await.unwrap();
    let r = read_reply(&mut s).await;
    assert_eq!(r.status, Some(413), "{}", r.head);
    assert_eq!(r.json()["error"]["code"], "request_too_large");
    assert!(
        closes(&mut s).await,
        "connection left open with a body half sent"
    );
    assert_eq!(h.mock.total_calls(), 0);
    assert_eq!(h.proxy.app().buffered_bytes(), 0);
    assert_eq!(h.chat(CHAT).await.status, 200);
}

#[tokio::test]
async fn a_chunked_body_is_413_as_soon_as_it_passes_the_limit() {
    let h = Harness::start_with("", "max_body_bytes = 1024").await;
    let mut s = TcpStream::connect(h.proxy.addr()).await.unwrap();
    let mut req = head("/v1/chat/completions", "transfer-encoding: chunked\r\n");
    for _ in 0..3 {
        req.push_str(&format!("200\r\n{}\r\n", "a".repeat(512)));
    }
    // No last chunk: the answer comes from the excess alone.
    s.write_all(req.as_bytes()).await.unwrap();
    let r = read_reply(&mut s).await;
    assert_eq!(r.status, Some(413), "{}", r.head);
    assert!(closes(&mut s).await);
    assert_eq!(h.mock.total_calls(), 0);
    assert_eq!(h.proxy.app().buffered_bytes(), 0);
    assert_eq!(h.chat(CHAT).await.status, 200);
}

#[tokio::test]
async fn a_stalled_body_is_408_in_the_providers_shape() {
    // A second provider in Anthropic's shape; nothing reaches its (unreachable) upstream.
    let anthropic = r#"
[[providers]]
name = "anthropic"
base_url = "http://127.0.0.1:1"
auth = "x-api-key"
route = "/anthropic"
keys = "env:KR_KEY_*"
"#;
    let h = Harness::start_with(anthropic, "body_read_timeout = \"300ms\"").await;
    for (path, anthropic) in [
        ("/v1/chat/completions", false),
        ("/anthropic/v1/messages", true),
    ] {
        let mut s = TcpStream::connect(h.proxy.addr()).await.unwrap();
        let req = head(path, "content-length: 100\r\n") + "{\"model\":";
        s.write_all(req.as_bytes()).await.unwrap();
        let started = Instant::now();
        let r = read_reply(&mut s).await;
        assert_eq!(r.status, Some(408), "{}", r.head);
        assert!(started.elapsed() >= Duration::from_millis(250));
        assert!(started.elapsed() < Duration::from_secs(5));
        let v = r.json();
        if anthropic {
            assert_eq!(v["type"], "error");
            assert_eq!(v["error"]["type"], "invalid_request_error");
        } else {
            assert_eq!(v["error"]["code"], "request_timeout");
        }
        assert!(closes(&mut s).await);
    }
    // A body that keeps coming, each pause under the limit, is read whole.
    let mut s = TcpStream::connect(h.proxy.addr()).await.unwrap();
    let body = CHAT.as_bytes();
    let req = head(
        "/v1/chat/completions",
        &format!("content-length: {}\r\nconnection: close\r\n", body.len()),
    );
    s.write_all(req.as_bytes()).await.unwrap();
    for part in body.chunks(body.len() / 4 + 1) {
        tokio::time::sleep(Duration::from_millis(120)).await;
        s.write_all(part).await.unwrap();
    }
    let r = read_reply(&mut s).await;
    assert_eq!(r.status, Some(200), "{}", r.head);
    assert_eq!(
        h.mock.total_calls(),
        1,
        "only the complete body went upstream"
    );
    assert_eq!(h.proxy.app().buffered_bytes(), 0);
}

#[tokio::test]
async fn a_client_leaving_mid_body_gives_its_budget_back() {
    let h = Harness::start("").await;
    let mut s = TcpStream::connect(h.proxy.addr()).await.unwrap();
    let req = head("/v1/chat/completions", "content-length: 100000\r\n") + "{\"model\":";
    s.write_all(req.as_bytes()).await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || h.proxy.app().buffered_bytes()
            == 100_000)
        .await,
        "the declared length is taken from the budget up front"
    );
    drop(s);
    assert!(
        eventually(Duration::from_secs(5), || h.proxy.app().buffered_bytes()
            == 0)
        .await,
        "still held: {}",
        h.proxy.app().buffered_bytes()
    );
    assert_eq!(h.mock.total_calls(), 0);
}

/// Read a streamed body to its end; the bytes, and whether it ended in an error.
async fn drain(resp: http::Response<Incoming>) -> (String, bool) {
    let mut body = resp.into_body();
    let mut got = Vec::new();
    let failed = loop {
        match body.frame().await {
            Some(Ok(f)) => {
                got.extend_from_slice(f.data_ref().map(|d| d.as_ref()).unwrap_or_default())
            }
            Some(Err(_)) => break true,
            None => break false,
        }
    };
    (String::from_utf8_lossy(&got).into_owned(), failed)
}

#[tokio::test]
async fn a_cut_sse_stream_ends_with_an_error_event_then_an_abort() {
    let extra = r#"
[[providers]]
name = "anthropic"
base_url = "MOCK"
auth = "x-api-key"
route = "/anthropic"
keys = "env:KR_KEY_*"
"#;
    let mock = keyrelay_mock::MockUpstream::start().await.unwrap();
    let text = config_text(&mock.url(), "", "") + &extra.replace("MOCK", &mock.url());
    let config = keyrelay::config::Config::from_toml_str(&text, &env()).unwrap();
    let proxy = keyrelay::start(config).await.unwrap();
    let client = http_client();
    for path in ["/v1/chat/completions", "/anthropic/v1/messages"] {
        let req = post(
            &format!("http://{}{path}", proxy.addr()),
            &[
                ("authorization", &format!("Bearer {TOKEN}")),
                ("x-mock-chunks", "10"),
                ("x-mock-cut-after", "2"),
            ],
            CHAT_STREAM,
        );
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let (text, failed) = drain(resp).await;
        assert!(failed, "{path}: a cut stream ended cleanly: {text}");
        assert!(text.contains("tok1"), "{path}: {text}");
        assert!(!text.contains("[DONE]"));
        let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
        let last = events.last().unwrap();
        if path.starts_with("/anthropic") {
            let data = last
                .strip_prefix("event: error\ndata: ")
                .unwrap_or_else(|| panic!("{last}"));
            let v: serde_json::Value = serde_json::from_str(data).unwrap();
            assert_eq!(v["type"], "error");
            assert_eq!(v["error"]["type"], "api_error");
        } else {
            let data = last
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("{last}"));
            let v: serde_json::Value = serde_json::from_str(data).unwrap();
            assert_eq!(v["error"]["code"], "upstream_stream_cut");
        }
        assert_no_secret(&text, "a cut stream");
    }
}

#[tokio::test]
async fn an_idle_sse_stream_ends_with_an_error_event_then_an_abort() {
    let mock = keyrelay_mock::MockUpstream::start().await.unwrap();
    let text = config_text(&mock.url(), "", "")
        .replace("idle_timeout = \"5s\"", "idle_timeout = \"200ms\"");
    let config = keyrelay::config::Config::from_toml_str(&text, &env()).unwrap();
    let proxy = keyrelay::start(config).await.unwrap();
    let req = post(
        &format!("http://{}/v1/chat/completions", proxy.addr()),
        &[
            ("authorization", &format!("Bearer {TOKEN}")),
            ("x-mock-chunks", "3"),
            ("x-mock-delay-ms", "10000"),
        ],
        CHAT_STREAM,
    );
    let resp = http_client().request(req).await.unwrap();
    let (text, failed) = tokio::time::timeout(Duration::from_secs(5), drain(resp))
        .await
        .expect("idle timeout did not fire within 5 s");
    assert!(failed, "an idle stream ended cleanly: {text}");
    let last = text.split("\n\n").filter(|e| !e.is_empty()).last().unwrap();
    let v: serde_json::Value = serde_json::from_str(last.strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(v["error"]["code"], "upstream_stream_idle");
    assert!(
        text.starts_with("data: {\"id\""),
        "the first chunk came first: {text}"
    );
}

#[tokio::test]
async fn a_refused_request_over_http1_is_answered_and_closed() {
    // The budget refusal path, declared: a body bigger than what is left gets 503 at once.
    let h = Harness::start_with("", "max_body_bytes = 1000\nmax_buffered_bytes = 1500").await;
    let mut holder = TcpStream::connect(h.proxy.addr()).await.unwrap();
    let req = head("/v1/chat/completions", "content-length: 1000\r\n") + "{";
    holder.write_all(req.as_bytes()).await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || h.proxy.app().buffered_bytes()
            == 1000)
        .await
    );
    let req = head("/v1/chat/completions", "content-length: 600\r\n") + "{";
    let r = exchange(h.proxy.addr(), req.as_bytes()).await;
    assert_eq!(r.status, Some(503), "{}", r.head);
    assert!(
        r.head.to_ascii_lowercase().contains("retry-after: 1"),
        "{}",
        r.head
    );
    drop(holder);
    assert!(
        eventually(Duration::from_secs(5), || h.proxy.app().buffered_bytes()
            == 0)
        .await
    );
    assert_eq!(h.chat(CHAT).await.status, 200);
    assert_eq!(h.mock.total_calls(), 1);
}

#[test]
fn the_body_budget_must_hold_at_least_one_body() {
    let text = config_text(
        "http://127.0.0.1:1",
        "",
        "max_body_bytes = 2048\nmax_buffered_bytes = 1024\nbody_read_timeout = \"2s\"",
    );
    let e = keyrelay::config::Config::from_toml_str(&text, &env())
        .unwrap_err()
        .to_string();
    assert!(e.contains("server.max_buffered_bytes"), "{e}");
    let text = config_text("http://127.0.0.1:1", "", "max_buffered_bytes = 0");
    let e = keyrelay::config::Config::from_toml_str(&text, &env())
        .unwrap_err()
        .to_string();
    assert!(e.contains("server.max_buffered_bytes"), "{e}");
    let text = config_text("http://127.0.0.1:1", "", "body_read_timeout = \"90s\"");
    let c = keyrelay::config::Config::from_toml_str(&text, &env()).unwrap();
    assert_eq!(c.server.body_read_timeout, Duration::from_secs(90));
}

#[tokio::test]
async fn over_http2_a_refused_body_is_503_and_the_connection_serves_on() {
    let h = Harness::start_with("", "max_body_bytes = 1000\nmax_buffered_bytes = 1000").await;
    let mut holder = TcpStream::connect(h.proxy.addr()).await.unwrap();
    let req = head("/v1/chat/completions", "content-length: 1000\r\n") + "{";
    holder.write_all(req.as_bytes()).await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || h.proxy.app().buffered_bytes()
            == 1000)
        .await
    );
    let h2 = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let url = h.url("/v1/chat/completions");
    let r = send(
        &h2,
        post(&url, &[("authorization", &format!("Bearer {TOKEN}"))], CHAT),
    )
    .await;
    assert_eq!(r.status, 503);
    assert_eq!(r.headers["retry-after"], "1");
    assert!(r.headers.get("connection").is_none());
    drop(holder);
    assert!(
        eventually(Duration::from_secs(5), || h.proxy.app().buffered_bytes()
            == 0)
        .await
    );
    let r = chat_at(&h2, &url).await;
    assert_eq!(r.status, 200);
    assert_eq!(h.mock.total_calls(), 1);
}

#[tokio::test]
async fn over_http2_a_cut_sse_stream_also_ends_with_its_error_event() {
    let h = Harness::start("").await;
    let h2 = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let req = post(
        &h.url("/v1/chat/completions"),
        &[
            ("authorization", &format!("Bearer {TOKEN}")),
            ("x-mock-chunks", "10"),
            ("x-mock-cut-after", "2"),
        ],
        CHAT_STREAM,
    );
    let resp = h2.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let (text, failed) = drain(resp).await;
    assert!(failed, "a cut stream ended cleanly over HTTP/2: {text}");
    let last = text.split("\n\n").filter(|e| !e.is_empty()).last().unwrap();
    let v: serde_json::Value = serde_json::from_str(last.strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(v["error"]["code"], "upstream_stream_cut");
}
