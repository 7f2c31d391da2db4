//! The upstream clients (one shared, one per provider with TLS settings of its own), and
//! sending one attempt with its time limit.

mod client;
mod egress;
mod tls;
mod wire;

use crate::body::AttemptBody;
use crate::config::{Config, ProviderConfig, UpstreamConfig};
use bytes::Bytes;
use egress::{Bounded, EgressConnector};
use http::Request;
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use std::collections::HashMap;
use std::time::Duration;

pub use client::{ClientError, UpstreamBody, UpstreamClient};
#[doc(hidden)]
pub use wire::fuzz_answer;

/// The upstream clients of one config, built once (at start and at each reload): one shared
/// by every provider, and one of its own for each provider with a `ca_file` or a client
/// certificate (a TLS setting is per connector, and pooled connections must not cross).
/// Each exists once per worker thread (`server.workers`), so that a request's upstream
/// connection is driven by the thread serving the request.
pub struct Clients {
    shared: Vec<UpstreamClient>,
    own: HashMap<String, Vec<UpstreamClient>>,
}

/// What the clients of a [`Clients`] speak.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Protocols {
    /// HTTP/2 or HTTP/1.1 by ALPN, with a keep-alive pool: every request.
    Any,
    /// HTTP/1.1 only, keeping no idle connections: WebSocket upgrades (an upgraded connection
    /// leaves the pool anyway).
    Upgrades,
}

impl Clients {
    pub fn new(config: &Config) -> Clients {
        let clients = Clients::speaking(config, Protocols::Any);
        log_egress(&config.upstream);
        clients
    }

    /// Clients over the same roots, CAs, client certificates and egress proxy as
    /// [`Clients::new`], speaking `protocols`.
    pub fn speaking(config: &Config, protocols: Protocols) -> Clients {
        let roots = tls::base_roots();
        let u = &config.upstream;
        // An upgraded connection leaves the pool: upgrades share one client.
        let copies = match protocols {
            Protocols::Any => config.server.workers.max(1),
            Protocols::Upgrades => 1,
        };
        let each = |p: Option<&ProviderConfig>| {
            (0..copies)
                .map(|_| build(u, roots, &u.ca, p, protocols))
                .collect::<Vec<_>>()
        };
        let shared = each(None);
        let own = config
            .providers
            .iter()
            .filter(|p| p.tls.is_custom())
            .map(|p| (p.name.clone(), each(Some(p))))
            .collect();
        Clients { shared, own }
    }

    /// The client for `provider`'s requests made on this thread.
    pub fn get(&self, provider: &str) -> &UpstreamClient {
        let copies = if self.own.is_empty() {
            &self.shared
        } else {
            self.own.get(provider).unwrap_or(&self.shared)
        };
        &copies[crate::workers::current() % copies.len()]
    }
}

/// Say once where upstream connections go; the proxy by address only, never its credentials.
fn log_egress(u: &UpstreamConfig) {
    use crate::config::EgressSource;
    if u.egress.from == EgressSource::None {
        return;
    }
    let shown = |p: &Option<keyrelay_pool::Secret>| {
        p.as_ref()
            .and_then(|s| s.expose().parse::<http::Uri>().ok())
            .and_then(|u| {
                u.host()
                    .map(|h| format!("{h}:{}", u.port_u16().unwrap_or(80)))
            })
            .unwrap_or_else(|| "none".to_owned())
    };
    tracing::info!(
        from = ?u.egress.from,
        https = %shown(&u.egress.https),
        http = %shown(&u.egress.http),
        no_proxy = %u.egress.no_proxy,
        "upstream connections go through an egress proxy (CONNECT)"
    );
}

/// One client: HTTPS by rustls (bundled, system and configured roots; the provider's client
/// certificate if it has one), HTTP/2 or HTTP/1.1 by ALPN, over the egress connector, keeping
/// its connections for later requests unless it serves upgrades.
fn build(
    config: &UpstreamConfig,
    roots: &rustls::RootCertStore,
    global_ca: &[rustls::pki_types::CertificateDer<'static>],
    provider: Option<&ProviderConfig>,
    protocols: Protocols,
) -> UpstreamClient {
    // Only one crypto provider is compiled in; installing it can only fail if one already is.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(config.connect_timeout));
    let connector = EgressConnector::new(http, &config.egress);
    let none = crate::config::ProviderTls::default();
    let own = provider.map_or(&none, |p| &p.tls);
    let tls = tls::client_config(roots, &tls::extra(global_ca, own), own.identity.as_ref())
        .unwrap_or_else(|e| {
            // Every certificate and key was checked at load; this is a last resort.
            tracing::error!(error = %e, "upstream TLS settings refused; using the default roots only");
            let fallback = tls::client_config(roots, &[], None);
            fallback.unwrap_or_else(|_| default_tls(roots))
        });
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1();
    let https = match protocols {
        Protocols::Any => https.enable_http2().wrap_connector(connector),
        Protocols::Upgrades => https.wrap_connector(connector),
    };
    let bounded = Bounded {
        inner: https,
        limit: config.connect_timeout,
    };
    UpstreamClient::new(bounded, protocols == Protocols::Any)
}

/// The plainest client config over `roots`, with the process's default crypto provider.
fn default_tls(roots: &rustls::RootCertStore) -> rustls::ClientConfig {
    rustls::ClientConfig::builder()
        .with_root_certificates(roots.clone())
        .with_no_client_auth()
}

/// Why an attempt got no response head. Classified by whether a byte of the request reached
/// the socket (keyrelay's own HTTP/1 exchange) or by hyper's own predicates and error types
/// (HTTP/2, upgrades), never by message text; the cause is kept for the debug log.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made (refused, DNS, TLS, or the connect timeout): not sent.
    #[error("could not connect to the upstream")]
    Connect {
        timed_out: bool,
        #[source]
        source: ClientError,
    },
    /// The connection failed before the request was written (a pooled connection closed
    /// first, or an HTTP/2 stream the server refused): not sent.
    #[error("the upstream connection closed before the request was sent")]
    Refused(#[source] ClientError),
    /// The connection failed after the request was (or may have been) written.
    #[error("the upstream connection failed after the request was sent")]
    Lost(#[source] ClientError),
    /// No response head within the attempt's time; the request was sent.
    #[error("no response head within {0:?}")]
    FirstByteTimeout(Duration),
    /// An error answer whose (small) body could not be read whole in time.
    #[error("the upstream's error body could not be read")]
    Unreadable,
}

impl UpstreamError {
    fn classify(e: ClientError) -> UpstreamError {
        if matches!(e, ClientError::Connect(_)) {
            let timed_out = io_kind(&e) == Some(std::io::ErrorKind::TimedOut);
            UpstreamError::Connect {
                timed_out,
                source: e,
            }
        } else if matches!(
            e,
            ClientError::NotAbsolute | ClientError::Wire { sent: false, .. }
        ) || never_sent(&e)
        {
            UpstreamError::Refused(e)
        } else {
            UpstreamError::Lost(e)
        }
    }

    /// Whether the request may have reached the provider.
    pub fn sent(&self) -> bool {
        matches!(
            self,
            UpstreamError::Lost(_) | UpstreamError::FirstByteTimeout(_) | UpstreamError::Unreadable
        )
    }

    /// Whether the failure was a timer running out rather than a refusal or reset.
    pub fn timed_out(&self) -> bool {
        match self {
            UpstreamError::Connect { timed_out, .. } => *timed_out,
            UpstreamError::Refused(_) | UpstreamError::Lost(_) | UpstreamError::Unreadable => false,
            UpstreamError::FirstByteTimeout(_) => true,
        }
    }
}

/// Whether hyper says the request was never written: canceled before it was sent, or an
/// HTTP/2 stream refused (REFUSED_STREAM, which a GOAWAY also gives the streams above its
/// last id).
fn never_sent(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(err) = source {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_canceled() {
                return true;
            }
        }
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            if h2.reason() == Some(h2::Reason::REFUSED_STREAM) {
                return true;
            }
        }
        source = err.source();
    }
    false
}

/// A TLS failure towards the provider (an unknown CA, a name mismatch, a client certificate
/// refused) or a tunnel the egress proxy would not open is a deployment problem, not a passing
/// one: said at warn, at most once a second (every attempt is in the debug log), with rustls's
/// or the tunnel's reason and the host, which never hold a key, a header or a credential.
fn warn_tls(e: &UpstreamError, host: Option<&str>) {
    let host = host.unwrap_or_default();
    let tls = find_cause::<rustls::Error>(e);
    let proxy = find_cause::<egress::EgressError>(e);
    if (tls.is_none() && proxy.is_none()) || !once_a_second() {
        return;
    }
    if let Some(tls) = tls {
        tracing::warn!(host, error = %tls, "TLS with the upstream failed");
    } else if let Some(proxy) = proxy {
        let cause = std::error::Error::source(proxy).map(ToString::to_string);
        tracing::warn!(host, error = %proxy, cause = cause.unwrap_or_default(), "the egress proxy failed");
    }
}

/// Whether a second has passed since this last said yes.
fn once_a_second() -> bool {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static START: OnceLock<std::time::Instant> = OnceLock::new();
    static LAST: AtomicU64 = AtomicU64::new(u64::MAX);
    let now = START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_secs();
    LAST.swap(now, Ordering::Relaxed) != now
}

/// The first `T` among `e`'s causes, looking inside wrapped I/O errors too (an io::Error's
/// `source()` skips the error it wraps).
fn find_cause<'e, T: std::error::Error + 'static>(
    e: &'e (dyn std::error::Error + 'static),
) -> Option<&'e T> {
    if let Some(found) = e.downcast_ref::<T>() {
        return Some(found);
    }
    if let Some(inner) = e
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
    {
        if let Some(found) = find_cause::<T>(inner) {
            return Some(found);
        }
    }
    find_cause::<T>(e.source()?)
}

/// The kind of the first I/O error in `e`'s chain of causes.
fn io_kind(e: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    let mut source = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        source = err.source();
    }
    None
}

/// An upstream answer: its head, and its body, still streaming or (a small error answer the
/// pool must judge by its body) already read.
pub struct Answered {
    pub parts: http::response::Parts,
    pub body: AnsweredBody,
}

pub enum AnsweredBody {
    Streaming(UpstreamBody),
    Read(Bytes),
}

impl Answered {
    /// The body, where it was read.
    pub fn read_body(&self) -> Option<&[u8]> {
        match &self.body {
            AnsweredBody::Read(b) => Some(b),
            AnsweredBody::Streaming(_) => None,
        }
    }
}

/// The most of an error answer's body read to judge it.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// Send one attempt; the response head (and, where `read_body` asks for it, the whole error
/// body) must arrive within `limit`.
pub async fn send(
    client: &UpstreamClient,
    req: Request<AttemptBody>,
    limit: Duration,
    read_body: fn(http::StatusCode) -> bool,
) -> Result<Answered, UpstreamError> {
    // Shared with the URL (no copy), read only if the attempt fails.
    let authority = req.uri().authority().cloned();
    // The client times the head itself (a kept connection with its own timer, rather than a
    // timer made and dropped around every request).
    let due = tokio::time::Instant::now() + limit;
    let resp = client.request_by(req, Some(due)).await.map_err(|e| {
        if matches!(e, ClientError::HeadDue) {
            return UpstreamError::FirstByteTimeout(limit);
        }
        let e = UpstreamError::classify(e);
        tracing::debug!(error = %e, cause = ?std::error::Error::source(&e), "upstream attempt failed");
        warn_tls(&e, authority.as_ref().map(http::uri::Authority::host));
        e
    })?;
    let (parts, body) = resp.into_parts();
    if !read_body(parts.status) {
        let body = AnsweredBody::Streaming(body);
        return Ok(Answered { parts, body });
    }
    let read = Box::pin(http_body_util::Limited::new(body, ERROR_BODY_LIMIT).collect());
    let read = tokio::time::timeout_at(due, read)
        .await
        .map_err(|_| UpstreamError::FirstByteTimeout(limit))?;
    let bytes = read.map_err(|_| UpstreamError::Unreadable)?.to_bytes();
    let body = AnsweredBody::Read(bytes);
    Ok(Answered { parts, body })
}
