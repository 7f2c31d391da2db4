//! Shared test support: a mock upstream and keyrelay, both on port 0, a small HTTP client, and
//! the scan for secrets where they must not be.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test support"
)]

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use keyrelay::config::{Config, MapEnv};
use keyrelay::Running;
use keyrelay_mock::MockUpstream;
use std::time::{Duration, Instant};

pub const TOKEN: &str = "kr-test-client-token-0123456789";
// Random-looking, so a fragment scan cannot match ordinary words (the dashboard says
// "admin-token").
pub const ADMIN_TOKEN: &str = "kr-adm-7f3c9e1b5d8a2046e9c1";
pub const KEYS: [&str; 3] = [
    "sk-test-key-AAAAAAAAAAAAAAAA",
    "sk-test-key-BBBBBBBBBBBBBBBB",
    "sk-test-key-CCCCCCCCCCCCCCCC",
];

/// A `[registry] master_key` (64 hex digits).
pub const MASTER_KEY: &str = "5e3a9c1f7b2d4e6081a3c5e7f9b1d3f5a7c9e1b3d5f7a9c1e3b5d7f9a1c3e5b7";

/// The environment every test config resolves secrets from.
pub fn env() -> MapEnv {
    MapEnv::default()
        .with("KR_TOKEN", TOKEN)
        .with("KR_ADMIN", ADMIN_TOKEN)
        .with("KR_KEY_1", KEYS[0])
        .with("KR_KEY_2", KEYS[1])
        .with("KR_KEY_3", KEYS[2])
        .with("KR_MASTER", MASTER_KEY)
}

/// A config for one OpenAI-style provider in front of `mock_url`; `provider_extra` adds lines
/// to the provider table, `server_extra` to `[server]`.
pub fn config_text(mock_url: &str, provider_extra: &str, server_extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
{server_extra}

[upstream]
first_byte_timeout = "5s"
idle_timeout = "5s"
pass_headers = ["x-mock-*"]

[admin]
listen = "127.0.0.1:0"
token = "env:KR_ADMIN"

[[clients]]
name = "tests"
token = "env:KR_TOKEN"

[[providers]]
name = "openai"
base_url = "{mock_url}/v1"
route = "/v1"
keys = "env:KR_KEY_*"
{provider_extra}
"#
    )
}

pub struct Harness {
    pub mock: MockUpstream,
    pub proxy: Running,
    pub client: Client<HttpConnector, Full<Bytes>>,
}

impl Harness {
    pub async fn start(provider_extra: &str) -> Harness {
        Self::start_with(provider_extra, "").await
    }

    pub async fn start_with(provider_extra: &str, server_extra: &str) -> Harness {
        let mock = MockUpstream::start().await.unwrap();
        let text = config_text(&mock.url(), provider_extra, server_extra);
        Harness::on(mock, &text, &env()).await
    }

    /// keyrelay started from the config `text` (its secrets from `env`) in front of `mock`.
    pub async fn on(mock: MockUpstream, text: &str, env: &MapEnv) -> Harness {
        let config = Config::from_toml_str(text, env).unwrap_or_else(|e| panic!("{e}"));
        let proxy = keyrelay::start(config).await.unwrap();
        Harness {
            mock,
            proxy,
            client: http_client(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy.addr())
    }

    /// POST a chat completion with the client token as a Bearer header.
    pub async fn chat(&self, body: &str) -> Reply {
        self.send(post(
            &self.url("/v1/chat/completions"),
            &[("authorization", &format!("Bearer {TOKEN}"))],
            body,
        ))
        .await
    }

    pub async fn send(&self, req: Request<Full<Bytes>>) -> Reply {
        send(&self.client, req).await
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy.admin_addr().unwrap())
    }

    /// `method path` on the admin listener, with `token` as a Bearer header when given.
    pub async fn admin(&self, method: &str, path: &str, token: Option<&str>) -> Reply {
        let mut b = Request::builder().method(method).uri(self.admin_url(path));
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        self.send(b.body(Full::default()).unwrap()).await
    }
}

pub fn http_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn post(url: &str, headers: &[(&str, &str)], body: &str) -> Request<Full<Bytes>> {
    let mut b = Request::post(url).header("content-type", "application/json");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::from(body.to_owned()))).unwrap()
}

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub async fn send(client: &Client<HttpConnector, Full<Bytes>>, req: Request<Full<Bytes>>) -> Reply {
    let resp = client.request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// POST a chat completion to `url` with the client token as a Bearer header.
pub async fn chat_at(client: &Client<HttpConnector, Full<Bytes>>, url: &str) -> Reply {
    send(
        client,
        post(url, &[("authorization", &format!("Bearer {TOKEN}"))], CHAT),
    )
    .await
}

/// Poll `check` until it holds or `within` passes.
pub async fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Read until the peer closes (EOF, reset, or for TLS its close); how long that took from
/// `since`, or `None` if it was still open at `within`.
pub async fn closed_after<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    since: Instant,
    within: Duration,
) -> Option<Duration> {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::from_std(since + within);
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(since.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// Every secret the tests configure: provider keys, client token, admin token.
pub fn secrets() -> Vec<&'static str> {
    let mut all = KEYS.to_vec();
    all.extend([TOKEN, ADMIN_TOKEN]);
    all
}

/// Fail if `text` (what `place` holds) contains any test secret or any 12-character fragment
/// of one.
pub fn assert_no_secret(text: &str, place: &str) {
    for secret in secrets() {
        let fragments = secret.as_bytes().windows(12.min(secret.len()));
        for fragment in fragments.map(|f| std::str::from_utf8(f).unwrap()) {
            assert!(
                !text.contains(fragment),
                "secret fragment {fragment:?} in {place}:\n{text}"
            );
        }
    }
}

pub const CHAT: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
pub const CHAT_STREAM: &str =
    r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
pub mod ports;
pub mod process;
pub mod redis;
