//! The one shared upstream client, and sending one attempt with its time limit.

use crate::config::UpstreamConfig;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::time::Duration;

pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

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
    /// No connection could be made (refused, DNS, TLS, or the connect timeout).
    #[error("could not connect to the upstream")]
    Connect {
        timed_out: bool,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// The connection failed after it was made.
    #[error("the upstream connection failed")]
    Transport(#[source] hyper_util::client::legacy::Error),
    /// No response head within the first-byte timeout.
    #[error("no response head within {0:?}")]
    FirstByteTimeout(Duration),
}

impl UpstreamError {
    fn classify(e: hyper_util::client::legacy::Error) -> UpstreamError {
        if e.is_connect() {
            let timed_out = io_kind(&e) == Some(std::io::ErrorKind::TimedOut);
            UpstreamError::Connect {
                timed_out,
                source: e,
            }
        } else {
            UpstreamError::Transport(e)
        }
    }

    /// Whether the failure was a timer running out rather than a refusal or reset.
    pub fn timed_out(&self) -> bool {
        match self {
            UpstreamError::Connect { timed_out, .. } => *timed_out,
            UpstreamError::Transport(_) => false,
            UpstreamError::FirstByteTimeout(_) => true,
        }
    }
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

/// Send one attempt; the response head must arrive within `first_byte`.
pub async fn send(
    client: &UpstreamClient,
    req: Request<Full<Bytes>>,
    first_byte: Duration,
) -> Result<Response<Incoming>, UpstreamError> {
    match tokio::time::timeout(first_byte, client.request(req)).await {
        Ok(Ok(resp)) => Ok(resp),
        Ok(Err(e)) => {
            let e = UpstreamError::classify(e);
            tracing::debug!(error = %e, cause = ?std::error::Error::source(&e), "upstream attempt failed");
            Err(e)
        }
        Err(_) => Err(UpstreamError::FirstByteTimeout(first_byte)),
    }
}
