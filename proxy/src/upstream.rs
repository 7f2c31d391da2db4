//! The one shared upstream client, and sending one attempt with its time limit.

use crate::body::AttemptBody;
use crate::config::UpstreamConfig;
use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::time::Duration;

pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, AttemptBody>;

/// Build the shared client: HTTPS by rustls with the bundled web PKI roots (no system store
/// needed), HTTP/1.1 and HTTP/2 by ALPN, a keep-alive pool with a timer so idle timeouts work.
pub fn client(config: &UpstreamConfig) -> UpstreamClient {
    // Only one crypto provider is compiled in; installing it can only fail if one already is.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(config.connect_timeout));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(https)
}

/// Why an attempt got no response head. Classified by hyper's own predicates and error types,
/// never by message text; the cause is kept for the debug log.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made (refused, DNS, TLS, or the connect timeout): not sent.
    #[error("could not connect to the upstream")]
    Connect {
        timed_out: bool,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// The connection failed before the request was written (a pooled connection closed
    /// first, or an HTTP/2 stream the server refused): not sent.
    #[error("the upstream connection closed before the request was sent")]
    Refused(#[source] hyper_util::client::legacy::Error),
    /// The connection failed after the request was (or may have been) written.
    #[error("the upstream connection failed after the request was sent")]
    Lost(#[source] hyper_util::client::legacy::Error),
    /// No response head within the attempt's time; the request was sent.
    #[error("no response head within {0:?}")]
    FirstByteTimeout(Duration),
    /// An error answer whose (small) body could not be read whole in time.
    #[error("the upstream's error body could not be read")]
    Unreadable,
}

impl UpstreamError {
    fn classify(e: hyper_util::client::legacy::Error) -> UpstreamError {
        if e.is_connect() {
            let timed_out = io_kind(&e) == Some(std::io::ErrorKind::TimedOut);
            UpstreamError::Connect {
                timed_out,
                source: e,
            }
        } else if never_sent(&e) {
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
    Streaming(Incoming),
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
    let attempt = async {
        let resp = client.request(req).await.map_err(|e| {
            let e = UpstreamError::classify(e);
            tracing::debug!(error = %e, cause = ?std::error::Error::source(&e), "upstream attempt failed");
            e
        })?;
        let (parts, body) = resp.into_parts();
        if !read_body(parts.status) {
            let body = AnsweredBody::Streaming(body);
            return Ok(Answered { parts, body });
        }
        let read = http_body_util::Limited::new(body, ERROR_BODY_LIMIT)
            .collect()
            .await;
        let bytes = read.map_err(|_| UpstreamError::Unreadable)?.to_bytes();
        let body = AnsweredBody::Read(bytes);
        Ok(Answered { parts, body })
    };
    tokio::time::timeout(limit, attempt)
        .await
        .unwrap_or(Err(UpstreamError::FirstByteTimeout(limit)))
}
