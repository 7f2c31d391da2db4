//! WebSockets through keyrelay (OpenAI Realtime and Responses paths, Gemini Live): frames both
//! ways, close codes from either side, rotation at the handshake, the subprotocol and `?key=`
//! credential forms, 426 where disabled, 401 without a token, the idle and total limits, the
//! session metrics, and the tokens a session's provider reports counted against a `tpm`.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod support;

use futures_util::{SinkExt, StreamExt};
use keyrelay_mock::{MockUpstream, Reply};
use std::time::Duration;
use support::*;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Handshake = http::Response<Option<Vec<u8>>>;

const GEMINI_LIVE: &str =
    "/gemini/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent";

/// A mock and a keyrelay with an OpenAI provider at `/v1` and a Gemini one at `/gemini`, both
/// on the mock; `websocket` holds the `[websocket]` section's lines.
async fn start(provider_extra: &str, websocket: &str) -> Harness {
    let mock = MockUpstream::start().await.unwrap();
    let text = format!(
        "{}\n[[providers]]\nname = \"gemini\"\nbase_url = \"{}/gemini\"\nauth = \"x-goog-api-key\"\nkeys = \"env:KR_KEY_*\"\n{provider_extra}\n[websocket]\n{websocket}\n",
        config_text(&mock.url(), provider_extra, ""),
        mock.url()
    );
    Harness::on(mock, &text, &env()).await
}

/// Open a WebSocket to `path` on keyrelay with extra handshake headers.
async fn open(
    h: &Harness,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(Ws, Handshake), WsError> {
    let url = format!("ws://{}{path}", h.proxy.addr());
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(req),
    )
    .await
    .expect("handshake timed out")
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

/// Open a Realtime session with the client token in `Authorization`.
async fn realtime(h: &Harness) -> (Ws, Handshake) {
    open(
        h,
        "/v1/realtime?model=gpt-realtime&intent=transcription",
        &[("authorization", &bearer())],
    )
    .await
    .unwrap_or_else(|e| panic!("handshake failed: {e}"))
}

/// The status of a refused handshake.
fn refused(result: Result<(Ws, Handshake), WsError>) -> Handshake {
    match result {
        Err(WsError::Http(resp)) => *resp,
        Err(e) => panic!("expected an HTTP answer, got {e}"),
        Ok((_, resp)) => panic!("expected a refusal, got {}", resp.status()),
    }
}

/// The next data or close message, within a deadline.
async fn next(ws: &mut Ws) -> Option<Message> {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("no message within 10 s")?;
        match msg {
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Ok(m) => return Some(m),
            Err(_) => return None,
        }
    }
}

fn binary_frame(i: usize) -> Vec<u8> {
    (0..(i % 300) + 1)
        .map(|j| ((i * 7 + j) % 256) as u8)
        .collect()
}

#[tokio::test]
async fn frames_pass_both_ways_in_order_byte_exact() {
    let h = start("", "").await;
    let (ws, resp) = realtime(&h).await;
    assert_eq!(resp.status(), 101);
    let (mut tx, mut rx) = ws.split();
    let sender = tokio::spawn(async move {
        for i in 0..1000 {
            tx.send(Message::text(format!(
                "text frame {i} ✓ {}",
                "x".repeat(i % 50)
            )))
            .await
            .unwrap();
            tx.send(Message::binary(binary_frame(i))).await.unwrap();
        }
        tx
    });
    for i in 0..1000 {
        let text = rx.next().await.unwrap().unwrap();
        assert_eq!(
            text,
            Message::text(format!("text frame {i} ✓ {}", "x".repeat(i % 50)))
        );
        let bin = rx.next().await.unwrap().unwrap();
        assert_eq!(bin, Message::binary(binary_frame(i)), "binary frame {i}");
    }
    let mut ws = sender.await.unwrap().reunite(rx).unwrap();
    ws.close(None).await.unwrap();

    let sessions = h.mock.ws_sessions();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].frames, 2000);
    assert!(KEYS.contains(&sessions[0].key.as_deref().unwrap()));
    assert_eq!(
        sessions[0].uri,
        "/v1/realtime?model=gpt-realtime&intent=transcription"
    );
    let seen = &h.mock.seen()[0];
    assert_eq!(seen.header("upgrade"), Some("websocket"));
    assert_no_secret(&format!("{:?}", resp.headers()), "the 101 answer");
    assert!(
        !format!("{:?}", seen.headers).contains(TOKEN),
        "client token reached the provider"
    );
}

#[tokio::test]
async fn a_client_close_reaches_the_provider_and_sessions_are_counted() {
    let h = start("", "").await;
    let (mut ws, _) = realtime(&h).await;
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(next(&mut ws).await, Some(Message::text("hello")));
    let open = h.admin("GET", "/metrics", None).await.text();
    assert!(
        open.contains("keyrelay_websocket_open_sessions 1"),
        "{open}"
    );
    ws.close(Some(CloseFrame {
        code: CloseCode::from(4001),
        reason: "client done".into(),
    }))
    .await
    .unwrap();
    // The provider's answering close comes back, then the stream ends.
    while next(&mut ws).await.is_some() {}
    let ended = eventually(Duration::from_secs(10), || {
        h.mock.ws_sessions().first().is_some_and(|s| s.ended)
    })
    .await;
    assert!(ended, "the provider's side stayed open");
    let s = &h.mock.ws_sessions()[0];
    assert_eq!(s.close, Some((4001, "client done".to_owned())));

    let metrics = metrics_once_closed(&h).await;
    for line in [
        "keyrelay_websocket_sessions_opened_total{provider=\"openai\",tenant=\"shared\"} 1",
        "keyrelay_websocket_open_sessions 0",
    ] {
        assert!(metrics.contains(line), "no `{line}` in:\n{metrics}");
    }
    let closed = metrics
        .lines()
        .find(|l| l.starts_with("keyrelay_websocket_sessions_closed_total{") && l.ends_with(" 1"))
        .unwrap_or_else(|| panic!("no closed session in:\n{metrics}"));
    assert!(
        closed.contains("end=\"client_closed\"") || closed.contains("end=\"upstream_closed\""),
        "{closed}"
    );
    let up = metrics
        .lines()
        .find(|l| l.contains("keyrelay_websocket_bytes_total{direction=\"upstream\""))
        .unwrap();
    assert!(!up.ends_with(" 0"), "{up}");
    assert_no_secret(&metrics, "/metrics");
}

#[tokio::test]
async fn a_provider_close_reaches_the_client_with_its_code_and_reason() {
    let h = start("", "").await;
    let (mut ws, _) = realtime(&h).await;
    ws.send(Message::text("close:4002:server done"))
        .await
        .unwrap();
    let Some(Message::Close(Some(frame))) = next(&mut ws).await else {
        panic!("no close frame from the provider");
    };
    assert_eq!(u16::from(frame.code), 4002);
    assert_eq!(frame.reason.as_str(), "server done");
}

#[tokio::test]
async fn a_rate_limited_handshake_moves_to_the_next_key() {
    let h = start(r#"strategy = "round-robin""#, "").await;
    h.mock
        .set(KEYS[0], Reply::rate_limited(&[("retry-after", "30")]));
    let (mut ws, resp) = realtime(&h).await;
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("on the second key")).await.unwrap();
    assert_eq!(
        next(&mut ws).await,
        Some(Message::text("on the second key"))
    );
    assert_eq!(h.mock.calls(KEYS[0]), 1, "the first key was not tried");
    let sessions = h.mock.ws_sessions();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].key.as_deref(), Some(KEYS[1]));

    // Every key cooling: 429 with Retry-After, as for HTTP, and no upstream call.
    h.mock
        .set(KEYS[1], Reply::rate_limited(&[("retry-after", "30")]));
    h.mock
        .set(KEYS[2], Reply::rate_limited(&[("retry-after", "30")]));
    let first = refused(open(&h, "/v1/realtime?model=m", &[("authorization", &bearer())]).await);
    assert_eq!(first.status(), 429);
    let calls = h.mock.total_calls();
    let resp = refused(open(&h, "/v1/realtime?model=m", &[("authorization", &bearer())]).await);
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"), "{resp:?}");
    assert_eq!(h.mock.total_calls(), calls, "a cooling key was asked");
}

#[tokio::test]
async fn the_subprotocol_token_becomes_the_key_and_never_comes_back() {
    let h = start("", "").await;
    let offered = format!("realtime, openai-insecure-api-key.{TOKEN}, openai-beta.realtime-v1");
    let (mut ws, resp) = open(
        &h,
        "/v1/realtime?model=gpt-realtime",
        &[("sec-websocket-protocol", &offered)],
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(next(&mut ws).await, Some(Message::text("hi")));
    let s = &h.mock.ws_sessions()[0];
    let key = s.key.clone().unwrap();
    assert!(KEYS.contains(&key.as_str()));
    assert_eq!(
        s.protocols.as_deref(),
        Some(format!("realtime, openai-insecure-api-key.{key}, openai-beta.realtime-v1").as_str())
    );
    let seen = &h.mock.seen()[0];
    assert_eq!(
        seen.header("authorization"),
        None,
        "the key went in a header too"
    );
    // The mock answered with the key's own subprotocol; the client hears its own entry.
    assert_eq!(
        s.chosen.as_deref(),
        Some(format!("openai-insecure-api-key.{key}").as_str())
    );
    let answer = resp.headers()["sec-websocket-protocol"].to_str().unwrap();
    assert_eq!(answer, format!("openai-insecure-api-key.{TOKEN}"));
    let head = format!("{:?}", resp.headers());
    for k in KEYS {
        assert!(!head.contains(&k[8..]), "a key in the 101 answer: {head}");
    }
}

#[tokio::test]
async fn gemini_live_takes_the_key_query_and_sends_the_header() {
    let h = start("", "").await;
    let path = format!("{GEMINI_LIVE}?key={TOKEN}");
    let (mut ws, _) = open(&h, &path, &[]).await.unwrap_or_else(|e| panic!("{e}"));
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    assert_eq!(
        next(&mut ws).await,
        Some(Message::binary(vec![0u8, 1, 2, 255]))
    );
    let s = &h.mock.ws_sessions()[0];
    assert!(KEYS.contains(&s.key.as_deref().unwrap()));
    assert_eq!(
        s.uri,
        "/gemini/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
    );
    let seen = &h.mock.seen()[0];
    assert_eq!(seen.header("x-goog-api-key"), s.key.as_deref());
}

#[tokio::test]
async fn a_disabled_path_answers_426_in_the_providers_shape() {
    let h = start("", "enabled = false").await;
    let resp = refused(open(&h, "/v1/responses", &[("authorization", &bearer())]).await);
    assert_eq!(resp.status(), 426);
    let body: serde_json::Value = serde_json::from_slice(resp.body().as_deref().unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "websocket_disabled", "{body}");
    assert_eq!(h.mock.total_calls(), 0);

    // Per provider (here both turn it off).
    let h = start("websocket = false", "").await;
    let path = format!("{GEMINI_LIVE}?key={TOKEN}");
    let resp = refused(open(&h, &path, &[]).await);
    assert_eq!(resp.status(), 426);
    let body: serde_json::Value = serde_json::from_slice(resp.body().as_deref().unwrap()).unwrap();
    assert_eq!(body["error"]["status"], "FAILED_PRECONDITION", "{body}");
    assert_eq!(h.mock.total_calls(), 0);
}

#[tokio::test]
async fn an_upgrade_without_a_valid_token_is_refused_before_the_provider() {
    let h = start("", "").await;
    let resp = refused(open(&h, "/v1/realtime?model=m", &[]).await);
    assert_eq!(resp.status(), 401);
    let resp = refused(
        open(
            &h,
            "/v1/realtime?model=m",
            &[(
                "sec-websocket-protocol",
                "realtime, openai-insecure-api-key.wrong",
            )],
        )
        .await,
    );
    assert_eq!(resp.status(), 401);
    let resp = refused(
        open(
            &h,
            "/v1/realtime?model=m",
            &[("authorization", "Bearer nope")],
        )
        .await,
    );
    assert_eq!(resp.status(), 401);
    assert_eq!(h.mock.total_calls(), 0);
}

#[tokio::test]
async fn an_idle_session_is_closed_on_both_sides() {
    let h = start("", "idle_timeout = \"300ms\"").await;
    let (mut ws, _) = realtime(&h).await;
    ws.send(Message::text("once")).await.unwrap();
    assert_eq!(next(&mut ws).await, Some(Message::text("once")));
    let Some(Message::Close(Some(frame))) = next(&mut ws).await else {
        panic!("the idle session was not closed with a close frame");
    };
    assert_eq!(u16::from(frame.code), 1001);
    assert_eq!(frame.reason.as_str(), "keyrelay: idle timeout");
    let ended = eventually(Duration::from_secs(10), || {
        h.mock.ws_sessions().first().is_some_and(|s| s.ended)
    })
    .await;
    assert!(ended, "the provider's side stayed open");
    assert_eq!(
        h.mock.ws_sessions()[0].close.as_ref().map(|c| c.0),
        Some(1001)
    );
    let metrics = metrics_once_closed(&h).await;
    let line =
        "keyrelay_websocket_sessions_closed_total{end=\"idle_timeout\",provider=\"openai\",tenant=\"shared\"} 1";
    assert!(metrics.contains(line), "no `{line}` in:\n{metrics}");
}

#[tokio::test]
async fn a_busy_session_ends_at_its_total_limit() {
    let h = start("", "max_duration = \"500ms\"").await;
    let (mut ws, _) = realtime(&h).await;
    let frame = loop {
        let _ = ws.send(Message::text("busy")).await;
        match next(&mut ws).await {
            Some(Message::Text(_)) => tokio::time::sleep(Duration::from_millis(20)).await,
            Some(Message::Close(Some(frame))) => break frame,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(frame.reason.as_str(), "keyrelay: session time limit");
}

#[tokio::test]
async fn a_client_that_drops_its_connection_closes_the_providers_side() {
    let h = start("", "").await;
    let (mut ws, _) = realtime(&h).await;
    ws.send(Message::text("then gone")).await.unwrap();
    assert_eq!(next(&mut ws).await, Some(Message::text("then gone")));
    drop(ws);
    let ended = eventually(Duration::from_secs(10), || {
        h.mock.ws_sessions().first().is_some_and(|s| s.ended)
    })
    .await;
    assert!(
        ended,
        "the provider's side stayed open after the client left"
    );
    let metrics = metrics_once_closed(&h).await;
    let line =
        "keyrelay_websocket_sessions_closed_total{end=\"client_closed\",provider=\"openai\",tenant=\"shared\"} 1";
    assert!(metrics.contains(line), "no `{line}` in:\n{metrics}");
}

#[tokio::test]
async fn the_responses_path_upgrades_with_the_handshake_headers_forwarded() {
    let h = start("", "").await;
    let (mut ws, _) = open(
        &h,
        "/v1/responses",
        &[
            ("authorization", &bearer()),
            ("openai-beta", "responses_websockets=2026-02-04"),
            ("cookie", "session=theirs"),
        ],
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    ws.send(Message::text(r#"{"type":"response.create"}"#))
        .await
        .unwrap();
    assert_eq!(
        next(&mut ws).await,
        Some(Message::text(r#"{"type":"response.create"}"#))
    );
    assert_eq!(h.mock.ws_sessions()[0].uri, "/v1/responses");
    let seen = &h.mock.seen()[0];
    assert_eq!(
        seen.header("openai-beta"),
        Some("responses_websockets=2026-02-04")
    );
    assert_eq!(seen.header("sec-websocket-version"), Some("13"));
    assert!(seen.header("sec-websocket-key").is_some());
    assert_eq!(seen.header("cookie"), None);
    assert!(KEYS.contains(&seen.key.as_deref().unwrap()));
}

#[tokio::test]
async fn a_shutdown_closes_open_sessions_with_going_away() {
    let h = start("", "").await;
    let (mut ws, _) = realtime(&h).await;
    ws.send(Message::text("before")).await.unwrap();
    assert_eq!(next(&mut ws).await, Some(Message::text("before")));
    // The session still counts as the connection it came on (under `max_connections`).
    assert_eq!(h.proxy.app().metrics().open_connections(), 1);
    let Harness { mock, proxy, .. } = h;
    let stopping = tokio::spawn(proxy.shutdown(Duration::from_secs(30)));
    let Some(Message::Close(Some(frame))) = next(&mut ws).await else {
        panic!("the session was not closed at shutdown");
    };
    assert_eq!(u16::from(frame.code), 1001);
    assert_eq!(frame.reason.as_str(), "keyrelay: shutting down");
    let ended = eventually(Duration::from_secs(10), || {
        mock.ws_sessions().first().is_some_and(|s| s.ended)
    })
    .await;
    assert!(ended, "the provider's side stayed open");
    drop(ws);
    tokio::time::timeout(Duration::from_secs(20), stopping)
        .await
        .expect("the drain waited out its grace for a closed session")
        .unwrap();
}

/// A tenant's client opens its sessions on its tenant's key only, never on a shared one, and
/// a shared client never on the tenant's (the HTTP rule, at the handshake).
#[tokio::test]
async fn a_tenants_session_opens_on_its_tenants_key_only() {
    const TENANT_TOKEN: &str = "kr-ws-tenant-token-5f1e9a3c7b";
    const TENANT_KEY: &str = "sk-ws-tenant-key-DDDDDDDDDDDDDDDD";
    let mock = MockUpstream::start().await.unwrap();
    let text = format!(
        "{}\n[[tenants]]\nname = \"acme\"\n[[tenants.clients]]\nname = \"acme-app\"\ntoken = \"env:WS_TENANT_TOKEN\"\n[[tenants.providers]]\nname = \"openai\"\nkeys = \"env:WS_TENANT_KEY\"\n",
        config_text(&mock.url(), "strategy = \"round-robin\"", ""),
    );
    let env = env()
        .with("WS_TENANT_TOKEN", TENANT_TOKEN)
        .with("WS_TENANT_KEY", TENANT_KEY);
    let h = Harness::on(mock, &text, &env).await;
    let path = "/v1/realtime?model=gpt-realtime";
    for _ in 0..3 {
        let tenant = format!("Bearer {TENANT_TOKEN}");
        let (mut ws, resp) = open(&h, path, &[("authorization", &tenant)]).await.unwrap();
        assert_eq!(resp.status(), 101);
        ws.close(None).await.unwrap();
        let (mut ws, resp) = realtime(&h).await;
        assert_eq!(resp.status(), 101);
        ws.close(None).await.unwrap();
    }
    let keys = session_keys(&h);
    assert_eq!(keys.len(), 6);
    for (i, key) in keys.iter().enumerate() {
        if i % 2 == 0 {
            assert_eq!(
                key, TENANT_KEY,
                "session {i}: a tenant's session on another key"
            );
        } else {
            assert!(
                KEYS.contains(&key.as_str()),
                "session {i}: a shared session on {key}"
            );
        }
    }
}

/// A handshake naming a key group opens on that group's keys only, in turn; an unknown group
/// is refused with 400 before the provider.
#[tokio::test]
async fn a_session_naming_a_key_group_opens_on_its_keys_only() {
    let mock = MockUpstream::start().await.unwrap();
    let tables = r#"keys = [
  { name = "s1", secret = "env:KR_KEY_1" },
  { name = "s2", secret = "env:KR_KEY_2", group = "live" },
  { name = "s3", secret = "env:KR_KEY_3", group = "live" },
]"#;
    let text = config_text(&mock.url(), "strategy = \"round-robin\"", "")
        .replace("keys = \"env:KR_KEY_*\"", tables);
    let h = Harness::on(mock, &text, &env()).await;
    let path = "/v1/realtime?model=gpt-realtime";
    let auth = bearer();
    for _ in 0..4 {
        let headers = [
            ("authorization", auth.as_str()),
            ("x-keyrelay-group", "live"),
        ];
        let (mut ws, resp) = open(&h, path, &headers).await.unwrap();
        assert_eq!(resp.status(), 101);
        ws.close(None).await.unwrap();
    }
    let keys = session_keys(&h);
    assert_eq!(keys, [KEYS[1], KEYS[2], KEYS[1], KEYS[2]]);
    let calls = h.mock.total_calls();
    let headers = [
        ("authorization", auth.as_str()),
        ("x-keyrelay-group", "batch"),
    ];
    let resp = refused(open(&h, path, &headers).await);
    assert_eq!(resp.status(), 400);
    assert_eq!(h.mock.total_calls(), calls, "the provider was asked");
    assert_eq!(h.mock.ws_sessions().len(), 4);
}

/// Realtime's event that ends a response, with its usage: 40 tokens.
const RESPONSE_DONE: &str = r#"{"type":"response.done","response":{"id":"resp_1","status":"completed","usage":{"total_tokens":40,"input_tokens":10,"output_tokens":30}}}"#;
/// A Realtime event with no usage.
const DELTA: &str = r#"{"type":"response.output_text.delta","delta":"Hel"}"#;

/// A harness whose client `tests` has `tpm` (none when 0).
async fn with_client_tpm(tpm: u64) -> Harness {
    let mock = MockUpstream::start().await.unwrap();
    let mut text = config_text(&mock.url(), "", "");
    if tpm > 0 {
        text = text.replace(
            "token = \"env:KR_TOKEN\"\n",
            &format!("token = \"env:KR_TOKEN\"\ntpm = {tpm}\n"),
        );
    }
    Harness::on(mock, &text, &env()).await
}

/// Open a Realtime session offering `permessage-deflate`, send each of `messages` and read its
/// echo (the mock sends every message back, as a provider sends its events).
async fn session_echoing(h: &Harness, messages: &[Message]) -> Ws {
    let headers = [
        ("authorization", bearer()),
        ("sec-websocket-extensions", "permessage-deflate".to_owned()),
    ];
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (mut ws, resp) = open(h, "/v1/realtime?model=gpt-realtime", &headers)
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    for m in messages {
        ws.send(m.clone()).await.unwrap();
        assert_eq!(next(&mut ws).await.as_ref(), Some(m));
    }
    ws
}

/// The tokens a session's provider reports count against its client's `tpm` while it is open,
/// message by message (text only: a binary message is not read); once they reach it, the next
/// handshake and the next HTTP request are refused with 429 before the provider. Where tokens
/// count, the handshake does not offer the provider compression.
#[tokio::test]
async fn a_sessions_reported_tokens_count_against_its_clients_tpm_as_they_come() {
    let h = with_client_tpm(100).await;
    let mut messages = vec![
        Message::text(DELTA),
        Message::binary(RESPONSE_DONE.as_bytes().to_vec()),
    ];
    messages.extend(std::iter::repeat_n(Message::text(RESPONSE_DONE), 3));
    let mut ws = session_echoing(&h, &messages).await;
    assert_eq!(
        h.mock.seen()[0].header("sec-websocket-extensions"),
        None,
        "compression offered where tokens count"
    );
    // Counted while the session is still open.
    let limits = || h.proxy.app().limits().counted();
    let landed = eventually(Duration::from_secs(5), || limits() == 120).await;
    assert!(landed, "counted {} tokens, expected 120", limits());
    let calls = h.mock.total_calls();
    let resp = refused(
        open(
            &h,
            "/v1/realtime?model=gpt-realtime",
            &[("authorization", &bearer())],
        )
        .await,
    );
    assert_eq!(resp.status(), 429);
    assert_eq!(h.chat(CHAT).await.status, 429);
    assert_eq!(
        h.mock.total_calls(),
        calls,
        "a refused request reached the provider"
    );
    ws.close(None).await.unwrap();
    assert_eq!(limits(), 120, "tokens counted twice");
}

/// Where no `tpm` applies, nothing is read and the extension offer passes as it came.
#[tokio::test]
async fn a_session_no_tpm_applies_to_is_not_read_and_keeps_its_extension_offer() {
    let h = with_client_tpm(0).await;
    let mut ws = session_echoing(&h, &[Message::text(RESPONSE_DONE)]).await;
    assert_eq!(
        h.mock.seen()[0].header("sec-websocket-extensions"),
        Some("permessage-deflate")
    );
    ws.close(None).await.unwrap();
    assert_eq!(h.proxy.app().limits().counted(), 0);
}

/// The key each WebSocket session the mock saw was opened with, in order.
fn session_keys(h: &Harness) -> Vec<String> {
    h.mock
        .ws_sessions()
        .into_iter()
        .map(|s| s.key.unwrap_or_default())
        .collect()
}

/// The metrics text, once no WebSocket session is counted open any more.
async fn metrics_once_closed(h: &Harness) -> String {
    let counted = eventually(Duration::from_secs(10), || {
        h.proxy.app().metrics().open_websockets() == 0
    })
    .await;
    assert!(counted, "the session was never counted closed");
    h.admin("GET", "/metrics", None).await.text()
}
