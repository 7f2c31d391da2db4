//! The one shared upstream client, and sending one attempt with its time limit.

use crate::config::UpstreamConfig;
use crate::error::ProxyError;
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

/// Send one attempt; the response head must arrive within `first_byte`.
pub async fn send(
    client: &UpstreamClient,
    req: Request<Full<Bytes>>,
    first_byte: Duration,
) -> Result<Response<Incoming>, ProxyError> {
    match tokio::time::timeout(first_byte, client.request(req)).await {
        Ok(Ok(resp)) => Ok(resp),
        Ok(Err(e)) => {
            tracing::debug!(connect = e.is_connect(), "upstream transport error");
            if is_timeout(&e) {
                Err(ProxyError::UpstreamTimeout)
            } else {
                Err(ProxyError::UpstreamUnreachable)
            }
        }
        Err(_) => Err(ProxyError::UpstreamTimeout),
    }
}

fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return true;
            }
        }
        if err.to_string().contains("timed out") {
            return true;
        }
        source = err.source();
    }
    false
}
