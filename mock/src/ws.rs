//! The mock's WebSocket endpoint: any upgrade request whose key has no scripted reply is
//! accepted (a scripted reply, such as a 429, answers the handshake instead). The session
//! echoes text and binary frames in order; a text frame `close:<code>:<reason>` makes the mock
//! close with that code and reason. Each session is recorded with the key that opened it, the
//! subprotocols offered, and the close code the other side sent.
//!
//! The 101 answer picks, from the offered subprotocols, the one carrying the key
//! (`openai-insecure-api-key.<key>`) when there is one, else the first: the worst a real
//! server could do, so tests can check keyrelay never lets it reach the client.

use crate::{MockBody, MockUpstream, State};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::sync::{Arc, Mutex, PoisonError};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The subprotocol prefix OpenAI's browser clients carry their key in.
const KEY_PROTOCOL: &str = "openai-insecure-api-key.";

/// One WebSocket session as the mock saw it.
#[derive(Clone, Debug, Default)]
pub struct WsSession {
    /// The credential of the handshake (header, `?key=`, or key subprotocol).
    pub key: Option<String>,
    /// Path and query of the handshake.
    pub uri: String,
    /// `Sec-WebSocket-Protocol` as offered.
    pub protocols: Option<String>,
    /// The subprotocol the mock answered with.
    pub chosen: Option<String>,
    /// Data frames received.
    pub frames: usize,
    /// The close code and reason the other side sent, if it sent a close frame.
    pub close: Option<(u16, String)>,
    /// Whether the session has ended (closed or cut).
    pub ended: bool,
}

/// Every session, in the order they opened.
#[derive(Debug, Default)]
pub(crate) struct WsSessions(Mutex<Vec<WsSession>>);

impl WsSessions {
    fn update(&self, index: usize, f: impl FnOnce(&mut WsSession)) {
        let mut list = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = list.get_mut(index) {
            f(s);
        }
    }
}

impl MockUpstream {
    /// Every WebSocket session opened so far.
    pub fn ws_sessions(&self) -> Vec<WsSession> {
        self.state
            .ws
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Whether a request asks to become a WebSocket.
pub(crate) fn is_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// The key carried in an `openai-insecure-api-key.` subprotocol, if any.
pub(crate) fn subprotocol_key(headers: &HeaderMap) -> Option<String> {
    offered(headers)
        .into_iter()
        .find_map(|p| p.strip_prefix(KEY_PROTOCOL).map(str::to_owned))
}

fn offered(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

/// Answer an upgrade request with 101 and run the echo session on the upgraded connection.
pub(crate) fn accept(
    parts: &mut http::request::Parts,
    key: Option<String>,
    state: &Arc<State>,
) -> Response<MockBody> {
    let (Some(on_upgrade), Some(client_key)) = (
        parts.extensions.remove::<hyper::upgrade::OnUpgrade>(),
        parts.headers.get(http::header::SEC_WEBSOCKET_KEY),
    ) else {
        let mut resp = Response::new(MockBody::full(Bytes::from_static(b"{}")));
        *resp.status_mut() = StatusCode::BAD_REQUEST;
        return resp;
    };
    let accept = derive_accept_key(client_key.as_bytes());
    let protocols = offered(&parts.headers);
    let chosen = protocols
        .iter()
        .find(|p| p.starts_with(KEY_PROTOCOL))
        .or(protocols.first())
        .cloned();
    let session = WsSession {
        key,
        uri: parts
            .uri
            .path_and_query()
            .map(ToString::to_string)
            .unwrap_or_default(),
        protocols: (!protocols.is_empty()).then(|| protocols.join(", ")),
        chosen: chosen.clone(),
        ..WsSession::default()
    };
    let index = {
        let mut list = state.ws.0.lock().unwrap_or_else(PoisonError::into_inner);
        list.push(session);
        list.len() - 1
    };
    let state = state.clone();
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            let ws =
                WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
            echo(ws, &state.ws, index).await;
        }
        state.ws.update(index, |s| s.ended = true);
    });
    let mut resp = Response::new(MockBody::full(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(
        http::header::CONNECTION,
        HeaderValue::from_static("upgrade"),
    );
    h.insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(http::header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if let Some(v) = chosen.and_then(|c| HeaderValue::from_str(&c).ok()) {
        h.insert(http::header::SEC_WEBSOCKET_PROTOCOL, v);
    }
    resp
}

/// Echo data frames until the session ends; close on request.
async fn echo<S>(mut ws: WebSocketStream<S>, sessions: &WsSessions, index: usize)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(Ok(msg)) = ws.next().await {
        let reply = match msg {
            Message::Text(t) => {
                if let Some(spec) = t.as_str().strip_prefix("close:") {
                    let (code, reason) = spec.split_once(':').unwrap_or((spec, ""));
                    let frame = CloseFrame {
                        code: CloseCode::from(code.parse::<u16>().unwrap_or(1000)),
                        reason: reason.to_owned().into(),
                    };
                    let _ = ws.close(Some(frame)).await;
                    continue;
                }
                Message::Text(t)
            }
            Message::Binary(b) => Message::Binary(b),
            Message::Close(frame) => {
                let close = frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                sessions.update(index, |s| s.close = close);
                continue;
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
        };
        sessions.update(index, |s| s.frames += 1);
        if ws.send(reply).await.is_err() {
            break;
        }
    }
}
