//! A scripted mock LLM provider: answers chat completions (JSON or SSE) per key as told, and
//! records every request it receives, so tests can assert on what the upstream saw.
//!
//! Per key (the credential it was sent), a [`Reply`] is scripted; keys with no script answer
//! normally. Stream shape is steered by request headers, which keyrelay forwards untouched:
//! `x-mock-chunks` (default 5), `x-mock-delay-ms` between chunks (default 0),
//! `x-mock-cut-after` (abort the connection after that many chunks), `x-mock-head-delay-ms`
//! (wait before sending the response head), `x-mock-stamp: 1` (each chunk carries its send
//! time, see [`stamp`]). Faults (resets, hangs, cut and malformed streams,
//! refusals, redirects) come per key as [`Reply::Fault`] or per request in `x-mock-fault`; see
//! [`Fault`]. `x-mock-sink` makes the mock count and hash a (large) body as it streams instead
//! of keeping it (see `sink.rs`).

mod body;
mod conn;
mod fault;
mod record;
mod resources;
mod sink;
pub mod stamp;
mod ws;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use body::MockBody;
use conn::{ConnCtl, FaultIo};
pub use fault::Fault;
pub use record::{Counters, Seen};
pub use ws::WsSession;

/// What the mock answers for one key.
#[derive(Clone, Debug)]
pub enum Reply {
    /// A normal answer: SSE when the request JSON has `"stream": true`, else JSON.
    Normal,
    /// A fixed status, headers and body.
    Fixed {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// A fault; see [`Fault`].
    Fault(Fault),
}

impl Reply {
    /// 429 with the given extra headers (e.g. `retry-after-ms`).
    pub fn rate_limited(headers: &[(&str, &str)]) -> Reply {
        Reply::Fixed {
            status: 429,
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            body: r#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#.into(),
        }
    }

    /// A bare status with a small provider-style JSON error body.
    pub fn status(status: u16) -> Reply {
        Reply::Fixed {
            status,
            headers: Vec::new(),
            body: format!(
                r#"{{"error":{{"message":"mock status {status}","type":"mock_error","code":{status}}}}}"#
            ),
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct State {
    replies: Mutex<HashMap<String, Reply>>,
    /// Off in the standalone binary, where a benchmark's millions of requests would pile up.
    no_recording: std::sync::atomic::AtomicBool,
    pub(crate) seen: Mutex<Vec<Seen>>,
    pub(crate) counters: Counters,
    pub(crate) ws: ws::WsSessions,
    resources: resources::Projects,
}

impl State {
    /// The reply scripted for `key`, if any.
    pub(crate) fn reply_for(&self, key: Option<&str>) -> Option<Reply> {
        let replies = self.replies.lock().unwrap_or_else(PoisonError::into_inner);
        replies.get(key?).cloned()
    }
}

/// A running mock upstream on 127.0.0.1. Stops accepting when dropped.
#[derive(Debug)]
pub struct MockUpstream {
    addr: SocketAddr,
    state: Arc<State>,
    accept: JoinHandle<()>,
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl MockUpstream {
    /// Start on 127.0.0.1 port 0.
    pub async fn start() -> std::io::Result<MockUpstream> {
        Self::bind(
            "127.0.0.1:0"
                .parse()
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0))),
        )
        .await
    }

    pub async fn bind(addr: SocketAddr) -> std::io::Result<MockUpstream> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        let accept = tokio::spawn(accept_loop(listener, state.clone()));
        Ok(MockUpstream {
            addr,
            state,
            accept,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Script the answer for requests carrying `key`.
    pub fn set(&self, key: &str, reply: Reply) {
        self.state
            .replies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.to_owned(), reply);
    }

    /// Stop (or resume) recording requests; counters and scripted replies still work.
    pub fn set_recording(&self, on: bool) {
        self.state.no_recording.store(!on, Ordering::Relaxed);
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state
            .seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// How many requests carried `key`.
    pub fn calls(&self, key: &str) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.key.as_deref() == Some(key))
            .count()
    }

    pub fn total_calls(&self) -> usize {
        self.state
            .seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn counters(&self) -> &Counters {
        &self.state.counters
    }

    pub fn open_streams(&self) -> usize {
        self.state.counters.open_streams.load(Ordering::SeqCst)
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let ctl = Arc::new(ConnCtl::default());
            let io = FaultIo::new(stream, ctl.clone());
            let service =
                hyper::service::service_fn(move |req| handle(req, state.clone(), ctl.clone()));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(io), service)
                .await;
        });
    }
}

/// Why the mock closed a connection instead of answering (a scripted fault).
#[derive(Debug)]
pub struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("mock upstream dropped the connection")
    }
}

impl std::error::Error for Dropped {}

/// The fault for this request: its `x-mock-fault` header, else its key's script. A
/// `status-once` script is used up here.
fn fault_for(parts: &http::request::Parts, key: Option<&str>, state: &State) -> Option<Fault> {
    if let Some(f) = parts
        .headers
        .get("x-mock-fault")
        .and_then(|v| v.to_str().ok())
        .and_then(Fault::parse)
    {
        return Some(f);
    }
    let mut replies = state.replies.lock().unwrap_or_else(PoisonError::into_inner);
    let slot = replies.get_mut(key?)?;
    match slot {
        Reply::Fault(Fault::StatusOnce(code)) => {
            let code = *code;
            *slot = Reply::Normal;
            Some(Fault::StatusOnce(code))
        }
        Reply::Fault(f) => Some(f.clone()),
        _ => None,
    }
}

/// The credential a request carries, in any of the provider header styles.
pub fn credential(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(v) = header("authorization") {
        return Some(v.strip_prefix("Bearer ").unwrap_or(v).to_owned());
    }
    for name in ["x-api-key", "x-goog-api-key", "api-key"] {
        if let Some(v) = header(name) {
            return Some(v.to_owned());
        }
    }
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix("key=").map(str::to_owned))
}

fn header_num(headers: &HeaderMap, name: &str, default: u64) -> u64 {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<State>,
    ctl: Arc<ConnCtl>,
) -> Result<Response<MockBody>, Dropped> {
    let (mut parts, body) = req.into_parts();
    if parts.uri.path().starts_with("/__mock/") {
        return Ok(control(&parts, &state));
    }
    state.counters.received.fetch_add(1, Ordering::SeqCst);
    let key = credential(&parts.headers, parts.uri.query())
        .or_else(|| ws::subprotocol_key(&parts.headers));
    let fault = fault_for(&parts, key.as_deref(), &state);
    if fault == Some(Fault::Reset) {
        record(&state, &parts, key, Bytes::new());
        ctl.reset();
        return Err(Dropped);
    }
    if sink::wanted(&parts) {
        return Ok(sink::answer(&parts, body, key, &state).await);
    }
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    record(&state, &parts, key.clone(), body.clone());
    let head_delay = header_num(&parts.headers, "x-mock-head-delay-ms", 0);
    if head_delay > 0 {
        tokio::time::sleep(Duration::from_millis(head_delay)).await;
    }
    if let Some(fault) = fault {
        return faulty(fault, &parts, &body, &state, ctl).await;
    }
    let reply = state.reply_for(key.as_deref()).unwrap_or(Reply::Normal);
    Ok(match reply {
        Reply::Fixed {
            status,
            headers,
            body,
        } => fixed(status, &headers, body),
        Reply::Normal | Reply::Fault(_) if ws::is_upgrade(&parts.headers) => {
            ws::accept(&mut parts, key, &state)
        }
        Reply::Normal | Reply::Fault(_) => {
            resources::handle(&parts, &body, key.as_deref(), &state.resources)
                .unwrap_or_else(|| normal(&parts, &body, &state, None, ctl))
        }
    })
}

fn record(state: &State, parts: &http::request::Parts, key: Option<String>, body: Bytes) {
    if !state.no_recording.load(Ordering::Relaxed) {
        let seen = Seen::new(parts, key, body);
        state
            .seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(seen);
    }
}

/// A fixed answer with a JSON body.
fn fixed(status: u16, headers: &[(String, String)], body: String) -> Response<MockBody> {
    let mut resp = Response::new(MockBody::full(Bytes::from(body)));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    for (k, v) in headers {
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::from_bytes(k.as_bytes()),
            http::HeaderValue::from_str(v),
        ) {
            resp.headers_mut().insert(k, v);
        }
    }
    resp.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// The mock's own control routes, for scripts driving the standalone binary (loopback only):
/// `GET /__mock/stats` (counters as JSON), `POST /__mock/script?key=K&fault=F` (script a key;
/// F in [`Fault`]'s syntax, percent-encoding `=` as `%3D`), `POST /__mock/reset` (clear scripts).
fn control(parts: &http::request::Parts, state: &State) -> Response<MockBody> {
    let c = &state.counters;
    let query = parts.uri.query().unwrap_or_default();
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .map(|v| v.replace("%3D", "=").replace("%3d", "="))
    };
    let (status, body) = match parts.uri.path() {
        "/__mock/stats" => (
            200,
            format!(
                r#"{{"received":{},"open_streams":{},"streams_abandoned":{}}}"#,
                c.received.load(Ordering::SeqCst),
                c.open_streams.load(Ordering::SeqCst),
                c.streams_abandoned.load(Ordering::SeqCst)
            ),
        ),
        "/__mock/script" => match (
            param("key"),
            param("fault").as_deref().and_then(Fault::parse),
        ) {
            (Some(key), Some(fault)) => {
                state
                    .replies
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(key, Reply::Fault(fault));
                (200, "{}".to_owned())
            }
            _ => (400, r#"{"error":"want key=K&fault=F"}"#.to_owned()),
        },
        "/__mock/reset" => {
            state
                .replies
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clear();
            (200, "{}".to_owned())
        }
        _ => (404, "{}".to_owned()),
    };
    fixed(status, &[], body)
}

/// The answer (or no answer) a fault scripts, after the body was read.
async fn faulty(
    fault: Fault,
    parts: &http::request::Parts,
    body: &Bytes,
    state: &Arc<State>,
    ctl: Arc<ConnCtl>,
) -> Result<Response<MockBody>, Dropped> {
    let error = |kind: &str, message: &str| {
        format!(r#"{{"error":{{"message":"{message}","type":"{kind}","code":null}}}}"#)
    };
    Ok(match fault {
        Fault::Status(code) | Fault::StatusOnce(code) => fixed(
            code,
            &[],
            error("mock_error", &format!("mock status {code}")),
        ),
        Fault::RateLimited { retry_after } => {
            let hint: Vec<(String, String)> = retry_after
                .map(|s| ("retry-after".to_owned(), s.to_string()))
                .into_iter()
                .collect();
            fixed(429, &hint, error("requests", "Rate limit reached"))
        }
        Fault::Forbidden { path_prefix } if parts.uri.path().starts_with(&path_prefix) => {
            let body = r#"{"type":"error","error":{"type":"permission_error","message":"This key may not use this endpoint."}}"#;
            fixed(403, &[], body.to_owned())
        }
        Fault::GeminiInvalidKey => {
            let body = r#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID"}]}}"#;
            fixed(400, &[], body.to_owned())
        }
        Fault::DropAfterBody | Fault::Reset => return Err(Dropped),
        Fault::Hang => std::future::pending().await,
        Fault::SlowHead(d) => {
            tokio::time::sleep(d).await;
            normal(parts, body, state, None, ctl)
        }
        Fault::Redirect(url) => fixed(302, &[("location".to_owned(), url)], String::new()),
        other => normal(parts, body, state, other.stream_shape(), ctl),
    })
}

fn normal(
    parts: &http::request::Parts,
    body: &Bytes,
    state: &Arc<State>,
    shape: Option<fault::StreamFault>,
    ctl: Arc<ConnCtl>,
) -> Response<MockBody> {
    let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let streaming = json
        .get("stream")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let anthropic = parts.uri.path().ends_with("/messages");
    if streaming {
        let chunks = header_num(&parts.headers, "x-mock-chunks", 5);
        let delay = Duration::from_millis(header_num(&parts.headers, "x-mock-delay-ms", 0));
        let cut_after: Option<u64> = parts
            .headers
            .get("x-mock-cut-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let shape = shape.or(cut_after.map(|after| fault::StreamFault::Cut { after, rst: false }));
        let usage = json
            .pointer("/stream_options/include_usage")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        let body = MockBody::sse(chunks, delay, shape, state.clone(), ctl)
            .with_stamp(stamp::wanted(&parts.headers))
            .with_usage(usage);
        let mut resp = Response::new(body);
        resp.headers_mut().insert(
            "content-type",
            http::HeaderValue::from_static("text/event-stream"),
        );
        return resp;
    }
    let text = if anthropic {
        r#"{"id":"msg_mock","type":"message","role":"assistant","model":"mock","content":[{"type":"text","text":"Hello from the mock upstream."}],"stop_reason":"end_turn","usage":{"input_tokens":5,"output_tokens":7}}"#
    } else {
        r#"{"id":"chatcmpl-mock","object":"chat.completion","created":0,"model":"mock","choices":[{"index":0,"message":{"role":"assistant","content":"Hello from the mock upstream."},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}"#
    };
    let mut resp = Response::new(MockBody::full(Bytes::from_static(text.as_bytes())));
    resp.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// Run a mock until the process ends, `rate_limited` keys always answering 429.
pub async fn serve_forever(addr: SocketAddr, rate_limited: &[String]) -> std::io::Result<()> {
    let mock = MockUpstream::bind(addr).await?;
    mock.set_recording(false);
    for key in rate_limited {
        mock.set(key, Reply::rate_limited(&[("retry-after", "60")]));
    }
    println!("keyrelay-mock listening on {}", mock.url());
    std::future::pending::<()>().await;
    Ok(())
}
