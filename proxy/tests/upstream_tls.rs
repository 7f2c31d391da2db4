//! Upstream connectivity: HTTPS providers behind a CA made by the test (trusted by `ca_file`,
//! refused without it), HTTP/2 and HTTP/1.1 by ALPN, chat and streams, rotation on 429 over
//! HTTPS, client certificates (mTLS), and the egress proxy (`[upstream] proxy`, `HTTPS_PROXY`
//! in a child's environment, `NO_PROXY`), with the config checks for each new field.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

#[path = "upstream_tls/kit.rs"]
mod kit;
mod support;

use keyrelay::config::{Config, MapEnv};
use keyrelay::Running;
use keyrelay_mock::Reply as MockReply;
use kit::{basic, Conn, ConnectProxy, FrontOptions, Pki, TlsMock};
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use support::process::{keyrelay_addrs, Proc};
use support::*;

const H2: FrontOptions = FrontOptions {
    h2: true,
    client_auth: false,
};
const H1: FrontOptions = FrontOptions {
    h2: false,
    client_auth: false,
};
const MTLS: FrontOptions = FrontOptions {
    h2: true,
    client_auth: true,
};

const PROXY_USER: &str = "egress-user";
const PROXY_PASSWORD: &str = "pr0xy-pass-Z9x8c7v6b5n4";

/// A config with `[upstream]` lines `upstream` and one provider per `(name, base, extra)`.
fn config_text(upstream: &str, providers: &[(&str, &str, &str)]) -> String {
    let mut text = format!(
        r#"
[server]
listen = "127.0.0.1:0"

[upstream]
connect_timeout = "2s"
first_byte_timeout = "5s"
idle_timeout = "5s"
pass_headers = ["x-mock-*"]
{upstream}

[admin]
listen = "127.0.0.1:0"

[[clients]]
name = "tests"
token = "env:KR_TOKEN"
"#
    );
    for (name, base, extra) in providers {
        text.push_str(&format!(
            "\n[[providers]]\nname = \"{name}\"\nbase_url = \"{base}/v1\"\nroute = \"/{name}\"\nkeys = \"env:KR_KEY_*\"\n{extra}\n"
        ));
    }
    text
}

/// `ca_file` (and more) for a provider trusting the test CA in `dir`.
fn trusting(dir: &Path) -> String {
    format!("ca_file = \"file:{}\"", dir.join("ca.pem").display())
}

async fn start(text: &str, env: &MapEnv) -> Running {
    let config = Config::from_toml_str(text, env).unwrap_or_else(|e| panic!("{e}\n{text}"));
    keyrelay::start(config).await.unwrap()
}

/// POST `body` to `/{route}/chat/completions` on keyrelay at `addr`.
async fn chat_via(addr: std::net::SocketAddr, route: &str, body: &str) -> Reply {
    let url = format!("http://{addr}/{route}/chat/completions");
    let auth = format!("Bearer {TOKEN}");
    send(
        &http_client(),
        post(&url, &[("authorization", &auth)], body),
    )
    .await
}

fn spoke(protocol: &'static str, client_cert: bool) -> Conn {
    Conn::Spoke {
        protocol,
        client_cert,
    }
}

/// Chat and an SSE stream through keyrelay to an HTTPS mock; what protocol the mock saw.
async fn chat_and_stream(front: FrontOptions, protocol: &'static str) {
    let pki = Pki::new();
    let dir = kit::temp_dir(protocol);
    pki.write(&dir);
    let tls = TlsMock::start(&pki, front).await;
    let text = config_text("", &[("a", &tls.url(false), &trusting(&dir))]);
    let proxy = start(&text, &env()).await;
    let r = chat_via(proxy.addr(), "a", CHAT).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["id"], "chatcmpl-mock");
    let s = chat_via(proxy.addr(), "a", CHAT_STREAM).await;
    assert_eq!(s.status, 200, "{}", s.text());
    assert_eq!(s.text().matches("chat.completion.chunk").count(), 5);
    assert!(s.text().ends_with("data: [DONE]\n\n"), "{}", s.text());
    let seen = tls.mock.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen
        .iter()
        .all(|s| KEYS.contains(&s.key.as_deref().unwrap())));
    // Every connection (one, unless the first was not yet back in the pool) spoke the
    // protocol ALPN chose.
    let conns = tls.conns();
    assert!(
        !conns.is_empty() && conns.iter().all(|c| *c == spoke(protocol, false)),
        "{conns:?}"
    );
}

#[tokio::test]
async fn chat_and_stream_over_https_with_h2_by_alpn() {
    chat_and_stream(H2, "h2").await;
}

#[tokio::test]
async fn chat_and_stream_over_https_with_http1_when_h2_is_not_offered() {
    chat_and_stream(H1, "http/1.1").await;
}

#[tokio::test]
async fn rotation_on_429_works_across_https() {
    let pki = Pki::new();
    let dir = kit::temp_dir("rotation");
    pki.write(&dir);
    let tls = TlsMock::start(&pki, H2).await;
    for key in &KEYS[..2] {
        tls.mock
            .set(key, MockReply::rate_limited(&[("retry-after", "60")]));
    }
    // The CA from [upstream] this time: it applies to every provider.
    let upstream = trusting(&dir);
    let text = config_text(&upstream, &[("a", &tls.url(false), "")]);
    let proxy = start(&text, &env()).await;
    let r = chat_via(proxy.addr(), "a", CHAT).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(tls.mock.calls(KEYS[2]), 1);
    assert!(tls.mock.total_calls() >= 2, "the 429 keys were tried first");
    let r = chat_via(proxy.addr(), "a", CHAT).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(tls.mock.calls(KEYS[2]), 2, "cooling keys are skipped");
}

#[tokio::test]
async fn mtls_client_certificate_is_presented_and_required() {
    let pki = Pki::new();
    let dir = kit::temp_dir("mtls");
    pki.write(&dir);
    let tls = TlsMock::start(&pki, MTLS).await;
    let identity = format!(
        "{}\nclient_cert = \"file:{}\"\nclient_key = \"file:{}\"",
        trusting(&dir),
        dir.join("client.crt").display(),
        dir.join("client.key").display()
    );
    let text = config_text(
        "",
        &[
            ("with", &tls.url(false), &identity),
            ("without", &tls.url(true), &trusting(&dir)),
        ],
    );
    let proxy = start(&text, &env()).await;
    let r = chat_via(proxy.addr(), "with", CHAT).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(tls.conns(), vec![spoke("h2", true)]);
    let r = chat_via(proxy.addr(), "without", CHAT).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.json()["error"]["type"].is_string(), "{}", r.text());
    assert_eq!(
        tls.mock.total_calls(),
        1,
        "the refused one never reached the mock"
    );
    assert!(tls.conns().contains(&Conn::Refused));
}

#[tokio::test]
async fn egress_proxy_from_config_tunnels_https_with_credentials_and_honours_no_proxy() {
    let pki = Pki::new();
    let dir = kit::temp_dir("egress-config");
    pki.write(&dir);
    let tls = TlsMock::start(&pki, H2).await;
    let egress = ConnectProxy::start(Some(basic(PROXY_USER, PROXY_PASSWORD))).await;
    let upstream = format!(
        "{}\nproxy = \"{}\"\nproxy_auth = \"env:KR_PROXY_AUTH\"\nno_proxy = [\"localhost\"]",
        trusting(&dir),
        egress.url()
    );
    let text = config_text(
        &upstream,
        &[
            ("direct", &tls.url(false), ""),
            ("tunnelled", &tls.url(true), ""),
        ],
    );
    let env = env().with("KR_PROXY_AUTH", &format!("{PROXY_USER}:{PROXY_PASSWORD}"));
    let proxy = start(&text, &env).await;
    let r = chat_via(proxy.addr(), "tunnelled", CHAT_STREAM).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().ends_with("data: [DONE]\n\n"));
    let port = tls.addr.port();
    assert_eq!(egress.targets(), vec![format!("127.0.0.1:{port}")]);
    // TLS to the provider, HTTP/2 by ALPN, inside the tunnel.
    assert_eq!(tls.conns(), vec![spoke("h2", false)]);
    let r = chat_via(proxy.addr(), "direct", CHAT).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(egress.targets().len(), 1, "a NO_PROXY host goes direct");
    assert_eq!(tls.mock.total_calls(), 2);
}

#[tokio::test]
async fn wrong_proxy_credentials_are_a_clean_502() {
    let egress = ConnectProxy::start(Some(basic(PROXY_USER, PROXY_PASSWORD))).await;
    let mock = keyrelay_mock::MockUpstream::start().await.unwrap();
    let upstream = format!(
        "proxy = \"{}\"\nproxy_auth = \"env:KR_PROXY_AUTH\"",
        egress.url()
    );
    let text = config_text(&upstream, &[("a", &mock.url(), "")]);
    let env = env().with("KR_PROXY_AUTH", "egress-user:not-the-password");
    let proxy = start(&text, &env).await;
    let r = chat_via(proxy.addr(), "a", CHAT).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "upstream_unreachable");
    assert_eq!(mock.total_calls(), 0);
    // Refused before anything was sent: every key was tried, each through its own CONNECT.
    assert_eq!(egress.targets().len(), 3);
}

#[tokio::test]
async fn plain_http_upstreams_are_tunnelled_too() {
    let egress = ConnectProxy::start(None).await;
    let mock = keyrelay_mock::MockUpstream::start().await.unwrap();
    let upstream = format!("proxy = \"{}\"", egress.url());
    let text = config_text(&upstream, &[("a", &mock.url(), "")]);
    let proxy = start(&text, &env()).await;
    let r = chat_via(proxy.addr(), "a", CHAT).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(egress.targets(), vec![mock.addr().to_string()]);
    let tunnel = egress.tunnels.lock().unwrap()[0].clone();
    assert_eq!(tunnel.proxy_authorization, None);
}

/// keyrelay as a child process on `text`, with the test secrets, `envs`, no proxy variable
/// from the test's own environment, and debug logs.
async fn spawn(dir: &Path, text: &str, envs: &[(&str, String)]) -> (Proc, std::net::SocketAddr) {
    let path = dir.join("keyrelay.toml");
    std::fs::write(&path, text).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keyrelay"));
    cmd.arg("--config").arg(&path).current_dir(dir);
    for var in ["HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY"] {
        cmd.env_remove(var).env_remove(var.to_lowercase());
    }
    cmd.env("KR_TOKEN", TOKEN)
        .env("KR_KEY_1", KEYS[0])
        .env("KR_KEY_2", KEYS[1])
        .env("KR_KEY_3", KEYS[2])
        .env("KEYRELAY_LOG", "debug");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut proc = Proc::spawn(&mut cmd, "cargo builds it");
    let (addr, _) = proc
        .wait_line(Duration::from_secs(20), keyrelay_addrs)
        .await;
    (proc, addr)
}

/// Wait (with a deadline) until the child has logged a line containing `needle`: its output
/// is read by another thread, and logs go to stderr while the start-up line goes to stdout.
async fn wait_logged(proc: &mut Proc, needle: &str) {
    proc.wait_line(Duration::from_secs(10), |l| {
        l.contains(needle).then_some(())
    })
    .await;
}

/// Everything the child logged, checked for every test secret and the proxy credentials.
fn assert_clean_logs(proc: &Proc) -> String {
    let logs = format!("{}{}", proc.stdout(), proc.stderr());
    assert_no_secret(&logs, "keyrelay's logs");
    let encoded = basic(PROXY_USER, PROXY_PASSWORD);
    for secret in [PROXY_PASSWORD, &encoded["Basic ".len()..]] {
        assert!(
            !logs.contains(secret),
            "proxy credentials in the logs:\n{logs}"
        );
    }
    logs
}

#[tokio::test]
async fn https_proxy_from_the_childs_environment_with_no_proxy() {
    let pki = Pki::new();
    let dir = kit::temp_dir("egress-env");
    pki.write(&dir);
    let tls = TlsMock::start(&pki, H2).await;
    let egress = ConnectProxy::start(Some(basic(PROXY_USER, PROXY_PASSWORD))).await;
    let text = config_text(
        &trusting(&dir),
        &[
            ("direct", &tls.url(false), ""),
            ("tunnelled", &tls.url(true), ""),
        ],
    );
    let https_proxy = format!("http://{PROXY_USER}:{PROXY_PASSWORD}@{}", egress.addr);
    let envs = [
        ("HTTPS_PROXY", https_proxy),
        ("NO_PROXY", "example.invalid, localhost".to_owned()),
    ];
    let (mut proc, addr) = spawn(&dir, &text, &envs).await;
    let r = chat_via(addr, "tunnelled", CHAT).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let tunnels = egress.tunnels.lock().unwrap().clone();
    assert_eq!(tunnels.len(), 1);
    assert_eq!(tunnels[0].target, format!("127.0.0.1:{}", tls.addr.port()));
    let r = chat_via(addr, "direct", CHAT_STREAM).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(egress.targets().len(), 1, "localhost is in NO_PROXY");
    wait_logged(&mut proc, "go through an egress proxy").await;
    assert_clean_logs(&proc);
}

#[tokio::test]
async fn an_untrusted_upstream_certificate_is_a_clean_502_logged_without_secrets() {
    let pki = Pki::new();
    let dir = kit::temp_dir("untrusted");
    let tls = TlsMock::start(&pki, H2).await;
    let text = config_text("", &[("a", &tls.url(false), "")]);
    let (mut proc, addr) = spawn(&dir, &text, &[]).await;
    let r = chat_via(addr, "a", CHAT).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "upstream_unreachable");
    assert_eq!(tls.mock.total_calls(), 0);
    assert!(tls.conns().iter().all(|c| *c == Conn::Refused));
    wait_logged(&mut proc, "TLS with the upstream failed").await;
    let logs = assert_clean_logs(&proc);
    assert!(logs.contains("UnknownIssuer"), "{logs}");
}

/// Every problem loading `text` reports, one per line.
fn problems(text: &str, env: &MapEnv) -> String {
    match Config::from_toml_str(text, env) {
        Ok(_) => panic!("loaded:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_pem_and_a_lone_client_cert_are_refused_by_path() {
    let dir = kit::temp_dir("config-pem");
    let pki = Pki::new();
    pki.write(&dir);
    let garbage = dir.join("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let empty = dir.join("empty.pem");
    std::fs::write(
        &empty,
        "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\nx",
    )
    .unwrap();
    let cert = dir.join("client.crt").display().to_string();
    let providers = [
        (
            "a",
            "https://a.example",
            format!("ca_file = \"file:{}\"", garbage.display()),
        ),
        (
            "b",
            "https://b.example",
            format!("client_cert = \"file:{cert}\""),
        ),
        (
            "c",
            "https://c.example",
            format!("client_key = \"file:{}\"", dir.join("client.key").display()),
        ),
        (
            "d",
            "https://d.example",
            format!(
                "client_cert = \"file:{cert}\"\nclient_key = \"file:{}\"",
                garbage.display()
            ),
        ),
    ];
    let providers: Vec<(&str, &str, &str)> = providers
        .iter()
        .map(|(n, b, e)| (*n, *b, e.as_str()))
        .collect();
    let upstream = format!("ca_file = \"file:{}\"", empty.display());
    let text = config_text(&upstream, &providers);
    let err = problems(&text, &env());
    for expected in [
        "providers[0].ca_file: not valid PEM",
        "providers[1].client_key: missing; client_cert and client_key go together",
        "providers[2].client_cert: missing; client_cert and client_key go together",
        "providers[3].client_key: no PEM private key found",
        "upstream.ca_file: ",
    ] {
        assert!(err.contains(expected), "{expected:?} not in:\n{err}");
    }
}

#[test]
fn a_client_key_that_does_not_match_its_certificate_is_refused() {
    let dir = kit::temp_dir("config-mismatch");
    let (one, other) = (Pki::new(), Pki::new());
    one.write(&dir);
    let wrong = dir.join("other.key");
    std::fs::write(&wrong, &other.client_key_pem).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600)).unwrap();
    let extra = format!(
        "client_cert = \"file:{}\"\nclient_key = \"file:{}\"",
        dir.join("client.crt").display(),
        wrong.display()
    );
    let text = config_text("", &[("a", "https://a.example", &extra)]);
    let err = problems(&text, &env());
    assert!(
        err.contains("providers[0].client_key: does not go with client_cert"),
        "{err}"
    );
    assert!(!err.contains("PRIVATE KEY"), "{err}");
}

#[test]
fn bad_proxy_settings_are_refused_by_path_without_echoing_credentials() {
    let cases = [
        (
            "proxy = \"socks5://127.0.0.1:1080\"",
            "upstream.proxy: must be an http:// proxy URL",
        ),
        ("proxy = \"not a url\"", "upstream.proxy: is not a URL"),
        (
            "proxy = \"http://127.0.0.1:3128/path\"",
            "upstream.proxy: must be an http:// proxy URL",
        ),
        (
            "proxy = \"http://user:hunter2-secret@127.0.0.1:3128\"",
            "upstream.proxy: may not carry credentials",
        ),
        (
            "proxy_auth = \"env:KR_TOKEN\"",
            "upstream.proxy_auth: set without upstream.proxy",
        ),
        ("no_proxy = [\"a b\"]", "upstream.no_proxy[0]: "),
    ];
    for (line, expected) in cases {
        let text = config_text(line, &[("a", "https://a.example", "")]);
        let err = problems(&text, &env());
        assert!(
            err.contains(expected),
            "{line}: {expected:?} not in:\n{err}"
        );
        assert!(!err.contains("hunter2"), "{err}");
    }
    let env = env().with("HTTPS_PROXY", "ftp://user:hunter2-secret@proxy:21");
    let text = config_text("", &[("a", "https://a.example", "")]);
    let err = problems(&text, &env);
    assert!(
        err.contains("upstream.use_env_proxy: HTTPS_PROXY from the environment"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
    // Ignored when told so.
    let text = config_text("use_env_proxy = false", &[("a", "https://a.example", "")]);
    assert!(Config::from_toml_str(&text, &env).is_ok());
}

#[test]
fn proxy_credentials_never_print_in_the_loaded_config() {
    let env = env()
        .with("KR_PROXY_AUTH", &format!("{PROXY_USER}:{PROXY_PASSWORD}"))
        .with("HTTP_PROXY", "http://u:env-proxy-secret-123@127.0.0.1:9");
    let text = config_text(
        "proxy = \"http://127.0.0.1:3128\"\nproxy_auth = \"env:KR_PROXY_AUTH\"",
        &[("a", "https://a.example", "")],
    );
    let printed = format!("{:?}", Config::from_toml_str(&text, &env).unwrap());
    assert!(!printed.contains(PROXY_PASSWORD) && !printed.contains("env-proxy-secret"));
    let text = config_text("", &[("a", "https://a.example", "")]);
    let printed = format!("{:?}", Config::from_toml_str(&text, &env).unwrap());
    assert!(printed.contains("Environment"), "{printed}");
    assert!(!printed.contains("env-proxy-secret"), "{printed}");
}

#[tokio::test]
async fn a_stalled_tls_handshake_is_a_connect_timeout_and_the_next_key_is_tried() {
    // Accepts TCP, then never answers the ClientHello.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    let hold = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            open.push(tcp);
        }
    });
    let text = config_text("", &[("a", &format!("https://localhost:{port}"), "")])
        .replace("connect_timeout = \"2s\"", "connect_timeout = \"200ms\"");
    let proxy = start(&text, &env()).await;
    let r = chat_via(proxy.addr(), "a", CHAT).await;
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "upstream_timeout");
    // Not sent: so every key was tried (a first-byte timeout is never sent again).
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
    hold.abort();
}

#[tokio::test]
async fn the_system_store_is_trusted_and_a_missing_one_is_only_a_warning() {
    let pki = Pki::new();
    let dir = kit::temp_dir("system-store");
    pki.write(&dir);
    let tls = TlsMock::start(&pki, H2).await;
    let text = config_text("", &[("a", &tls.url(false), "")]);
    // rustls-native-certs reads SSL_CERT_FILE in place of the platform's store.
    let store = dir.join("ca.pem").display().to_string();
    let (proc, addr) = spawn(&dir, &text, &[("SSL_CERT_FILE", store)]).await;
    let r = chat_via(addr, "a", CHAT).await;
    assert_eq!(r.status, 200, "{}", r.text());
    drop(proc);
    let missing = dir.join("no-such-store.pem").display().to_string();
    let (mut proc, addr) = spawn(&dir, &text, &[("SSL_CERT_FILE", missing)]).await;
    let r = chat_via(addr, "a", CHAT).await;
    assert_eq!(r.status, 502, "{}", r.text());
    wait_logged(
        &mut proc,
        "could not read (part of) the system certificate store",
    )
    .await;
    assert_clean_logs(&proc);
    assert_eq!(tls.mock.total_calls(), 1);
}

#[test]
fn lowercase_proxy_variables_count_and_use_env_proxy_false_ignores_them() {
    let env = env()
        .with("https_proxy", "127.0.0.1:3128")
        .with("no_proxy", "internal.example");
    let text = config_text("", &[("a", "https://a.example", "")]);
    let egress = Config::from_toml_str(&text, &env).unwrap().upstream.egress;
    assert_eq!(egress.from, keyrelay::config::EgressSource::Environment);
    assert_eq!(egress.https.unwrap().expose(), "http://127.0.0.1:3128");
    assert!(egress.http.is_none());
    assert_eq!(egress.no_proxy, "internal.example");
    let text = config_text("use_env_proxy = false", &[("a", "https://a.example", "")]);
    let egress = Config::from_toml_str(&text, &env).unwrap().upstream.egress;
    assert_eq!(egress.from, keyrelay::config::EgressSource::None);
    assert!(egress.https.is_none());
}
