//! TLS on the proxy listener: self-signed certificates made by the test, HTTP/1.1 and HTTP/2 by
//! ALPN, certificates swapped by a reload.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use keyrelay::Running;
use keyrelay_mock::MockUpstream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use support::*;

struct Cert {
    cert: String,
    der: Vec<u8>,
    key: String,
}

fn self_signed() -> Cert {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    Cert {
        cert: c.cert.pem(),
        der: c.cert.der().to_vec(),
        key: c.key_pair.serialize_pem(),
    }
}

fn write(dir: &Path, name: &str, c: &Cert) -> (PathBuf, PathBuf) {
    let (cert, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&cert, &c.cert).unwrap();
    write_secret(&key, &c.key);
    (cert, key)
}

/// A secret file only its owner may read, as keyrelay requires.
fn write_secret(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A rustls client configuration trusting only `c`.
fn trusting(c: &Cert) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(c.der.clone()))
        .unwrap();
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// A client trusting only `c`.
fn client_trusting(
    c: &Cert,
    h2: bool,
) -> Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
> {
    let b = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(trusting(c))
        .https_only();
    let connector = if h2 {
        b.enable_http2().build()
    } else {
        b.enable_http1().build()
    };
    Client::builder(TokioExecutor::new()).build(connector)
}

/// A mock, and a keyrelay in front of it serving TLS with `c` (written to `dir`), with
/// `server_extra` added to its `[server]` table.
async fn start_tls(dir: &Path, c: &Cert, server_extra: &str) -> (MockUpstream, Running) {
    let (cert, key) = write(dir, "a", c);
    let mock = MockUpstream::start().await.unwrap();
    let text = config_text(
        &mock.url(),
        "",
        &format!(
            "tls_cert = \"file:{}\"\ntls_key = \"file:{}\"\n{server_extra}",
            cert.display(),
            key.display()
        ),
    );
    let proxy = keyrelay::start(keyrelay::config::Config::from_toml_str(&text, &env()).unwrap())
        .await
        .unwrap();
    (mock, proxy)
}

fn chat_req(port: u16) -> Request<Full<Bytes>> {
    post(
        &format!("https://localhost:{port}/v1/chat/completions"),
        &[("authorization", &format!("Bearer {TOKEN}"))],
        CHAT,
    )
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("keyrelay-tls-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn serves_https_on_http1_and_http2() {
    let dir = tempdir("serve");
    let c = self_signed();
    let (mock, proxy) = start_tls(&dir, &c, "").await;
    let port = proxy.addr().port();
    for h2 in [false, true] {
        let resp = client_trusting(&c, h2)
            .request(chat_req(port))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let want = if h2 {
            http::Version::HTTP_2
        } else {
            http::Version::HTTP_11
        };
        assert_eq!(resp.version(), want);
    }
    assert_eq!(mock.total_calls(), 2);
    // Plain HTTP to the TLS port gets no HTTP answer: the connection is made, and what comes
    // back is a TLS alert, which fails to parse as an HTTP response.
    let plain = http_client()
        .request(post(
            &format!("http://127.0.0.1:{port}/v1/chat/completions"),
            &[("authorization", &format!("Bearer {TOKEN}"))],
            CHAT,
        ))
        .await;
    let err = plain.expect_err("plain HTTP answered on the TLS port");
    assert!(!err.is_connect(), "{err:?}");
    let cause = std::error::Error::source(&err).and_then(|e| e.downcast_ref::<hyper::Error>());
    assert!(
        cause.is_some_and(hyper::Error::is_parse),
        "not an HTTP parse failure: {err:?}"
    );
    assert_eq!(mock.total_calls(), 2);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn bad_tls_settings_are_named() {
    let dir = tempdir("bad");
    let c = self_signed();
    let (cert, _) = write(&dir, "a", &c);
    let mock_url = "http://127.0.0.1:1";
    let text = config_text(
        mock_url,
        "",
        &format!("tls_cert = \"file:{}\"", cert.display()),
    );
    let e = keyrelay::config::Config::from_toml_str(&text, &env()).unwrap_err();
    assert!(e.mentions("server.tls_key: missing"), "{e}");
    let text = config_text(
        mock_url,
        "",
        &format!(
            "tls_cert = \"file:{0}\"\ntls_key = \"file:{0}\"",
            cert.display()
        ),
    );
    let e = keyrelay::config::Config::from_toml_str(&text, &env()).unwrap_err();
    assert!(
        e.mentions("server.tls_key: no PEM private key found"),
        "{e}"
    );
    let text = config_text(
        mock_url,
        "",
        "tls_cert = \"file:/nonexistent.crt\"\ntls_key = \"file:/nonexistent.key\"",
    );
    let e = keyrelay::config::Config::from_toml_str(&text, &env()).unwrap_err();
    assert!(
        e.mentions("server.tls_cert: cannot read secret file /nonexistent.crt"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn reload_swaps_the_certificate() {
    let dir = tempdir("reload");
    let (a, b) = (self_signed(), self_signed());
    let (cert, key) = write(&dir, "live", &a);
    let mock = MockUpstream::start().await.unwrap();
    for (i, k) in KEYS.iter().enumerate() {
        write_secret(&dir.join(format!("key{i}")), k);
    }
    write_secret(&dir.join("token"), TOKEN);
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"file:{}\"\ntls_key = \"file:{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[[clients]]\nname = \"t\"\ntoken = \"file:{}\"\n[[providers]]\nname = \"openai\"\nbase_url = \"{}/v1\"\nkeys = [{{ secret = \"file:{}\" }}]\n",
        cert.display(),
        key.display(),
        dir.join("token").display(),
        mock.url(),
        dir.join("key0").display()
    );
    let path = dir.join("keyrelay.toml");
    std::fs::write(&path, text).unwrap();
    let proxy = keyrelay::start_from_file(path.clone()).await.unwrap();
    let port = proxy.addr().port();
    assert_eq!(
        client_trusting(&a, false)
            .request(chat_req(port))
            .await
            .unwrap()
            .status(),
        200
    );
    assert!(
        client_trusting(&b, false)
            .request(chat_req(port))
            .await
            .is_err(),
        "b trusted before the swap"
    );
    write(&dir, "live", &b);
    let who = keyrelay::tenants::audit::Who::Admin;
    keyrelay::reload_from(proxy.live(), &path, &who).unwrap();
    assert_eq!(
        client_trusting(&b, false)
            .request(chat_req(port))
            .await
            .unwrap()
            .status(),
        200
    );
    assert!(
        client_trusting(&a, false)
            .request(chat_req(port))
            .await
            .is_err(),
        "old certificate still served"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn silent_clients_are_closed_at_the_header_timeout_before_and_after_the_handshake() {
    use std::time::{Duration, Instant};
    let dir = tempdir("silent");
    let c = self_signed();
    let (mock, proxy) = start_tls(&dir, &c, "header_read_timeout = \"300ms\"").await;
    let addr = proxy.addr();
    // One says nothing at all; the other completes its handshake, then says nothing. The
    // timeout runs from the connection's accept in both cases, the handshake included.
    let opened = Instant::now();
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut shook = tokio_rustls::TlsConnector::from(Arc::new(trusting(&c)))
        .connect(name, tcp)
        .await
        .expect("the handshake completes");
    let within = Duration::from_secs(3);
    let (a, b) = tokio::join!(
        closed_after(&mut silent, opened, within),
        closed_after(&mut shook, opened, within)
    );
    for (what, took) in [("silent", a), ("after its handshake", b)] {
        let took = took.unwrap_or_else(|| panic!("{what}: still open after 3s"));
        assert!(
            took >= Duration::from_millis(300),
            "{what}: closed after {took:?}, before the timeout"
        );
        assert!(
            took < Duration::from_millis(1500),
            "{what}: closed only after {took:?}"
        );
    }
    // The listener still serves.
    let resp = client_trusting(&c, false)
        .request(chat_req(addr.port()))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(mock.total_calls(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}
