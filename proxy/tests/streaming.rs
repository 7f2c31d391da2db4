//! Streaming: chunks flow as they come, cuts look cut, and a client leaving ends the upstream.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod support;

use http_body_util::BodyExt;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use support::*;

fn stream_req(
    h: &Harness,
    extra: &[(&str, &str)],
) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    let auth = format!("Bearer {TOKEN}");
    let mut headers = vec![("authorization", auth.as_str())];
    headers.extend_from_slice(extra);
    post(&h.url("/v1/chat/completions"), &headers, CHAT_STREAM)
}

#[tokio::test]
async fn first_chunk_arrives_before_the_upstream_produced_the_last() {
    let h = Harness::start("").await;
    let req = stream_req(&h, &[("x-mock-chunks", "5"), ("x-mock-delay-ms", "150")]);
    let resp = h.client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-accel-buffering"], "no");
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let mut first_at = None;
    let mut text = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap();
        if let Some(d) = frame.data_ref() {
            first_at.get_or_insert_with(Instant::now);
            text.extend_from_slice(d);
        }
    }
    // A proxy that buffered the stream would hand over the first chunk only after the last
    // was produced, five 150 ms pauses later.
    let first_at = first_at.unwrap();
    let last_produced = h.mock.counters().last_chunk_at.lock().unwrap().unwrap();
    assert!(
        first_at < last_produced,
        "first chunk seen {:?} after the last was produced",
        first_at.duration_since(last_produced)
    );
    let text = String::from_utf8(text).unwrap();
    assert_eq!(text.matches("data: ").count(), 6, "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"));
}

#[tokio::test]
async fn the_head_is_not_held_for_a_first_chunk_that_has_not_come() {
    // The head goes out with the first chunk when the upstream already sent it, but never
    // waits for one: here no chunk comes until the 5 s idle timeout cuts the stream.
    let h = Harness::start("").await;
    let req = stream_req(&h, &[("x-mock-fault", "stall-after=0")]);
    let resp = tokio::time::timeout(Duration::from_secs(3), h.client.request(req))
        .await
        .expect("the head waited for a chunk")
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
}

#[tokio::test]
async fn a_cut_stream_reaches_the_client_as_an_error() {
    let h = Harness::start("").await;
    let req = stream_req(&h, &[("x-mock-chunks", "10"), ("x-mock-cut-after", "2")]);
    let resp = h.client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut received = Vec::new();
    let outcome = loop {
        match body.frame().await {
            Some(Ok(f)) => {
                received.extend_from_slice(f.data_ref().map(|d| d.as_ref()).unwrap_or_default())
            }
            Some(Err(e)) => break Err(e),
            None => break Ok(()),
        }
    };
    assert!(
        outcome.is_err(),
        "a cut stream ended cleanly for the client"
    );
    let text = String::from_utf8_lossy(&received);
    assert!(
        text.contains("tok1"),
        "chunks before the cut were delivered: {text}"
    );
    assert!(!text.contains("[DONE]"));
}

#[tokio::test]
async fn a_stream_cut_after_the_head_is_not_retried() {
    // Once the head went to the client, another key cannot help: exactly one upstream call.
    let h = Harness::start("").await;
    let req = stream_req(&h, &[("x-mock-chunks", "10"), ("x-mock-cut-after", "0")]);
    let resp = h.client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.into_body().collect().await.is_err());
    assert_eq!(h.mock.total_calls(), 1, "no retry once the head went out");
}

#[tokio::test]
async fn client_disconnect_closes_the_upstream_request() {
    let h = Harness::start("").await;
    let req = stream_req(&h, &[("x-mock-chunks", "100"), ("x-mock-delay-ms", "50")]);
    let resp = h.client.request(req).await.unwrap();
    let mut body = resp.into_body();
    body.frame().await.unwrap().unwrap();
    assert_eq!(h.mock.open_streams(), 1);
    let gone = Instant::now();
    drop(body);
    // The stream would run 5 s more; closing it takes milliseconds, allowed up to 3 s.
    let closed = eventually(Duration::from_secs(3), || {
        h.mock.open_streams() == 0
            && h.mock.counters().streams_abandoned.load(Ordering::SeqCst) == 1
    })
    .await;
    assert!(
        closed,
        "upstream stream still open {:?} after the client left",
        gone.elapsed()
    );
}

#[tokio::test]
async fn idle_upstream_stream_is_cut_after_idle_timeout() {
    let mock = keyrelay_mock::MockUpstream::start().await.unwrap();
    let text = config_text(&mock.url(), "", "")
        .replace("idle_timeout = \"5s\"", "idle_timeout = \"200ms\"");
    let config = keyrelay::config::Config::from_toml_str(&text, &env()).unwrap();
    let proxy = keyrelay::start(config).await.unwrap();
    let client = http_client();
    let url = format!("http://{}/v1/chat/completions", proxy.addr());
    let req = post(
        &url,
        &[
            ("authorization", &format!("Bearer {TOKEN}")),
            ("x-mock-chunks", "3"),
            ("x-mock-delay-ms", "10000"),
        ],
        CHAT_STREAM,
    );
    // Chunks 10 s apart against a 200 ms idle timeout: the cut comes long before the first
    // chunk would, allowed up to 5 s on a busy machine.
    let resp = client.request(req).await.unwrap();
    let body = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect())
        .await
        .expect("idle timeout did not fire within 5 s");
    assert!(body.is_err(), "idle stream ended cleanly");
}

#[tokio::test]
async fn http2_clients_are_served_and_streamed() {
    let h = Harness::start("").await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let resp = client
        .request(stream_req(&h, &[("x-mock-chunks", "3")]))
        .await
        .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).ends_with("data: [DONE]\n\n"));
}

#[tokio::test]
async fn client_leaving_before_the_head_drops_the_upstream_request() {
    use tokio::io::AsyncWriteExt;
    let h = Harness::start("").await;
    let mut tcp = tokio::net::TcpStream::connect(h.proxy.addr())
        .await
        .unwrap();
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\nx-mock-head-delay-ms: 10000\r\ncontent-length: {}\r\n\r\n{CHAT}",
        CHAT.len()
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    assert!(eventually(Duration::from_secs(5), || h.mock.total_calls() == 1).await);
    drop(tcp);
    // The upstream connection must close: the mock's handler is dropped mid-delay, so no
    // response is ever produced. Observe it through keyrelay's in-flight gauge: it drops in
    // milliseconds, allowed up to 3 s, long before the 10 s head would have come.
    let app = h.proxy.app().clone();
    let idle = eventually(Duration::from_secs(3), || app.metrics().in_flight() == 0).await;
    assert!(idle, "request still in flight after the client left");
}

#[tokio::test]
async fn redirects_are_passed_back_not_followed() {
    let h = Harness::start("").await;
    for k in KEYS {
        h.mock.set(
            k,
            keyrelay_mock::Reply::Fixed {
                status: 307,
                headers: vec![("location".into(), "http://127.0.0.1:1/elsewhere".into())],
                body: String::new(),
            },
        );
    }
    let r = h.chat(CHAT).await;
    assert_eq!(r.status, 307);
    assert_eq!(r.headers["location"], "http://127.0.0.1:1/elsewhere");
    assert_eq!(h.mock.total_calls(), 1);
}

#[tokio::test]
async fn slow_client_headers_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = Harness::start_with("", "header_read_timeout = \"300ms\"").await;
    // Taken before connecting: the server's timer cannot start earlier than this.
    let started = Instant::now();
    let mut tcp = tokio::net::TcpStream::connect(h.proxy.addr())
        .await
        .unwrap();
    tcp.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), tcp.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "connection held open past the header timeout");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "cut after {:?}, before the 300 ms header timeout",
        started.elapsed()
    );
    assert_eq!(h.mock.total_calls(), 0);
}
