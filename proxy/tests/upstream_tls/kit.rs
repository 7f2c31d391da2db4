//! Test kit for upstream TLS: a CA made by the test (rcgen), the mock upstream behind a TLS
//! front (HTTP/2 and HTTP/1.1 by ALPN, optionally requiring a client certificate) that records
//! which protocol each connection spoke, and a small CONNECT proxy that records its tunnels.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test support"
)]

use keyrelay_mock::MockUpstream;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A CA and what it signed: a server certificate for `localhost` and `127.0.0.1`, and a client
/// certificate.
pub struct Pki {
    pub ca_pem: String,
    pub ca_der: CertificateDer<'static>,
    pub server_chain: Vec<CertificateDer<'static>>,
    pub server_key: PrivateKeyDer<'static>,
    pub client_pem: String,
    pub client_key_pem: String,
}

impl Pki {
    pub fn new() -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "keyrelay test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let mut server =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server = server.signed_by(&server_key, &ca, &ca_key).unwrap();
        let client_key = KeyPair::generate().unwrap();
        let mut client = CertificateParams::new(vec!["keyrelay-client".to_owned()]).unwrap();
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client = client.signed_by(&client_key, &ca, &ca_key).unwrap();
        Pki {
            ca_pem: ca.pem(),
            ca_der: ca.der().clone(),
            server_chain: vec![server.der().clone()],
            server_key: PrivateKeyDer::try_from(server_key.serialize_der()).unwrap(),
            client_pem: client.pem(),
            client_key_pem: client_key.serialize_pem(),
        }
    }

    /// Write the CA, the client certificate and the client key (owner-only) into `dir`.
    pub fn write(&self, dir: &Path) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(dir.join("ca.pem"), &self.ca_pem).unwrap();
        std::fs::write(dir.join("client.crt"), &self.client_pem).unwrap();
        let key = dir.join("client.key");
        std::fs::write(&key, &self.client_key_pem).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

/// A fresh directory under the system temp dir, for one test's files, removed with them when
/// the test is done with it.
pub fn temp_dir(name: &str) -> TempDir {
    // One level under the temp dir whatever the name holds ("http/1.1" is a protocol's).
    let name = name.replace('/', "-");
    let dir = std::env::temp_dir().join(format!("kr-upstream-tls-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

/// A test's directory: its path, removed with what is in it on drop.
pub struct TempDir(std::path::PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How a TLS front is set up.
#[derive(Clone, Copy)]
pub struct FrontOptions {
    /// Offer `h2` by ALPN (else only `http/1.1`).
    pub h2: bool,
    /// Require a client certificate signed by the test CA.
    pub client_auth: bool,
}

/// What one connection to the front did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Conn {
    /// Handshake done; the protocol the bytes inside spoke (`h2` by its preface, else
    /// `http/1.1`), and whether a client certificate was presented.
    Spoke {
        protocol: &'static str,
        client_cert: bool,
    },
    /// The handshake failed.
    Refused,
}

/// The mock upstream behind a TLS terminator on 127.0.0.1 port 0.
pub struct TlsMock {
    pub mock: MockUpstream,
    pub addr: SocketAddr,
    pub conns: Arc<Mutex<Vec<Conn>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for TlsMock {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl TlsMock {
    pub async fn start(pki: &Pki, options: FrontOptions) -> TlsMock {
        let mock = MockUpstream::start().await.unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config(pki, options)));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let backend = mock.addr();
        let seen = conns.clone();
        let accept = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, seen) = (acceptor.clone(), seen.clone());
                tokio::spawn(terminate(tcp, acceptor, backend, seen));
            }
        });
        TlsMock {
            mock,
            addr,
            conns,
            accept,
        }
    }

    /// `https://localhost:PORT` (or `https://127.0.0.1:PORT` when `ip`).
    pub fn url(&self, ip: bool) -> String {
        let host = if ip { "127.0.0.1" } else { "localhost" };
        format!("https://{host}:{}", self.addr.port())
    }

    pub fn conns(&self) -> Vec<Conn> {
        self.conns.lock().unwrap().clone()
    }
}

fn server_config(pki: &Pki, options: FrontOptions) -> rustls::ServerConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = if options.client_auth {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca_der.clone()).unwrap();
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder
        .with_single_cert(pki.server_chain.clone(), pki.server_key.clone_key())
        .unwrap();
    config.alpn_protocols = if options.h2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    config
}

/// One connection: the handshake, the protocol sniffed from the first bytes, then bytes both
/// ways to the plain mock.
async fn terminate(
    tcp: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    backend: SocketAddr,
    seen: Arc<Mutex<Vec<Conn>>>,
) {
    let Ok(mut tls) = acceptor.accept(tcp).await else {
        seen.lock().unwrap().push(Conn::Refused);
        return;
    };
    let client_cert = tls.get_ref().1.peer_certificates().is_some();
    let mut first = vec![0u8; 4096];
    let n = match tls.read(&mut first).await {
        Ok(n) if n > 0 => n,
        // A client certificate refused after a TLS 1.3 handshake shows here.
        _ => {
            seen.lock().unwrap().push(Conn::Refused);
            return;
        }
    };
    let protocol = if first[..n].starts_with(b"PRI * HTTP/2.0") {
        "h2"
    } else {
        "http/1.1"
    };
    seen.lock().unwrap().push(Conn::Spoke {
        protocol,
        client_cert,
    });
    let mut plain = TcpStream::connect(backend).await.unwrap();
    if plain.write_all(&first[..n]).await.is_ok() {
        let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
    }
}

/// One CONNECT the proxy received.
#[derive(Clone, Debug)]
pub struct Tunnel {
    pub target: String,
    pub proxy_authorization: Option<String>,
}

/// A CONNECT-only HTTP proxy on 127.0.0.1 port 0; with `require` set, a CONNECT without that
/// `Proxy-Authorization` value gets 407.
pub struct ConnectProxy {
    pub addr: SocketAddr,
    pub tunnels: Arc<Mutex<Vec<Tunnel>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl ConnectProxy {
    pub async fn start(require: Option<String>) -> ConnectProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tunnels = Arc::new(Mutex::new(Vec::new()));
        let seen = tunnels.clone();
        let accept = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(tunnel(tcp, seen.clone(), require.clone()));
            }
        });
        ConnectProxy {
            addr,
            tunnels,
            accept,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn targets(&self) -> Vec<String> {
        self.tunnels
            .lock()
            .unwrap()
            .iter()
            .map(|t| t.target.clone())
            .collect()
    }
}

async fn tunnel(mut tcp: TcpStream, seen: Arc<Mutex<Vec<Tunnel>>>, require: Option<String>) {
    let Some(head) = read_head(&mut tcp).await else {
        return;
    };
    let mut lines = head.lines();
    let request = lines.next().unwrap_or_default().to_owned();
    let proxy_authorization = lines.find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("proxy-authorization")
            .then(|| value.trim().to_owned())
    });
    let mut parts = request.split_whitespace();
    let (Some("CONNECT"), Some(target)) = (parts.next(), parts.next()) else {
        let _ = tcp
            .write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
            .await;
        return;
    };
    let target = target.to_owned();
    seen.lock().unwrap().push(Tunnel {
        target: target.clone(),
        proxy_authorization: proxy_authorization.clone(),
    });
    if require.is_some() && proxy_authorization != require {
        let _ = tcp
            .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\ncontent-length: 0\r\n\r\n")
            .await;
        return;
    }
    let Ok(mut upstream) = TcpStream::connect(&target).await else {
        let _ = tcp.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
        return;
    };
    if tcp
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .is_ok()
    {
        let _ = tokio::io::copy_bidirectional(&mut tcp, &mut upstream).await;
    }
}

/// The request head, read byte by byte so nothing after it is taken.
async fn read_head(tcp: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 * 1024 || tcp.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    String::from_utf8(head).ok()
}

/// `Basic base64(user:password)`, as a CONNECT's `Proxy-Authorization` carries it.
pub fn basic(user: &str, password: &str) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let input = format!("{user}:{password}").into_bytes();
    let mut out = String::from("Basic ");
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(TABLE[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}
