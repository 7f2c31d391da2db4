//! The TCP leg of every upstream connection: straight to the provider, or through the egress
//! proxy by an HTTP CONNECT tunnel (hyper-util's `Tunnel`), chosen per destination by
//! hyper-util's proxy `Matcher` (`NO_PROXY` rules as curl has them: hosts, domain suffixes,
//! IPs, networks, `*`; loopback is proxied unless listed). TLS, when the upstream is
//! `https://`, runs inside the tunnel, end to end with the provider.
//!
//! Plain `http://` upstreams are tunnelled too (CONNECT to their port) rather than sent in
//! absolute form: one path for both, and the proxy credentials only ever travel in the CONNECT.

use crate::config::{Egress, EgressSource};
use http::Uri;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tower_service::Service;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A connector that reaches each destination directly or through the proxy.
#[derive(Clone)]
pub struct EgressConnector {
    direct: HttpConnector,
    matcher: Option<Arc<Matcher>>,
}

impl EgressConnector {
    pub(super) fn new(direct: HttpConnector, egress: &Egress) -> Self {
        let matcher = (egress.from != EgressSource::None).then(|| {
            let mut b = Matcher::builder().no(egress.no_proxy.clone());
            if let Some(p) = &egress.http {
                b = b.http(p.expose().to_owned());
            }
            if let Some(p) = &egress.https {
                b = b.https(p.expose().to_owned());
            }
            Arc::new(b.build())
        });
        EgressConnector { direct, matcher }
    }
}

/// Why a tunnel could not be made; the proxy's address is named, its credentials never.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("the egress proxy {proxy} could not open a tunnel")]
    Tunnel {
        proxy: String,
        #[source]
        source: BoxError,
    },
}

impl Service<Uri> for EgressConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // The direct connector (and so the tunnel over it) is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let intercept = self.matcher.as_ref().and_then(|m| m.intercept(&dst));
        let mut direct = self.direct.clone();
        let Some(intercept) = intercept else {
            return Box::pin(async move { direct.call(dst).await.map_err(Into::into) });
        };
        let proxy = intercept.uri().clone();
        let shown = proxy
            .authority()
            .map(ToString::to_string)
            .unwrap_or_default();
        let mut tunnel = Tunnel::new(proxy, direct);
        if let Some(auth) = intercept.basic_auth() {
            tunnel = tunnel.with_auth(auth.clone());
        }
        Box::pin(async move {
            let target = with_port(dst)?;
            tunnel.call(target).await.map_err(|e| {
                EgressError::Tunnel {
                    proxy: shown,
                    source: e.into(),
                }
                .into()
            })
        })
    }
}

/// `dst` with its port written out (the tunnel would assume 443 for an `http://` one).
fn with_port(dst: Uri) -> Result<Uri, BoxError> {
    if dst.port().is_some() {
        return Ok(dst);
    }
    let port = if dst.scheme_str() == Some("http") {
        80
    } else {
        443
    };
    let host = dst.host().ok_or("upstream URL without a host")?;
    let uri = Uri::builder()
        .scheme(dst.scheme_str().unwrap_or("https"))
        .authority(format!("{host}:{port}"))
        .path_and_query("/")
        .build()?;
    Ok(uri)
}

/// A connector whose whole connect (TCP, the proxy's tunnel, the TLS handshake) must finish
/// within `connect_timeout`: a handshake that stalls is then a connect failure (never sent, so
/// the next key may be tried), not a wait until `first_byte_timeout`.
#[derive(Clone)]
pub struct Bounded<C> {
    pub(super) inner: C,
    pub(super) limit: Duration,
}

/// The connect (TCP, tunnel and TLS) did not finish within `connect_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the upstream connection (TCP, tunnel and TLS) was not up within {limit:?}")]
pub struct ConnectTimedOut {
    limit: Duration,
    #[source]
    source: std::io::Error,
}

impl<C> Service<Uri> for Bounded<C>
where
    C: Service<Uri> + Send,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let connecting = self.inner.call(dst);
        let limit = self.limit;
        Box::pin(async move {
            match tokio::time::timeout(limit, connecting).await {
                Ok(done) => done.map_err(Into::into),
                Err(_) => Err(ConnectTimedOut {
                    limit,
                    source: std::io::ErrorKind::TimedOut.into(),
                }
                .into()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyrelay_pool::Secret;

    fn proxied(no_proxy: &str, url: &str) -> bool {
        let egress = Egress {
            http: Some(Secret::new("http://127.0.0.1:3128")),
            https: Some(Secret::new("http://127.0.0.1:3128")),
            no_proxy: no_proxy.to_owned(),
            from: EgressSource::Config,
            use_env_proxy: true,
        };
        let c = EgressConnector::new(HttpConnector::new(), &egress);
        let uri: Uri = url.parse().unwrap_or_default();
        c.matcher
            .as_ref()
            .is_some_and(|m| m.intercept(&uri).is_some())
    }

    #[test]
    fn no_proxy_takes_hosts_suffixes_ips_networks_and_star() {
        // Loopback is proxied unless listed, so a test's proxy on 127.0.0.1 sees it.
        assert!(proxied("", "https://127.0.0.1:8443/v1"));
        assert!(proxied("", "http://localhost/v1"));
        assert!(!proxied("localhost", "https://localhost:8443/v1"));
        assert!(!proxied("corp.example", "https://api.corp.example/v1"));
        assert!(!proxied(".corp.example", "https://api.corp.example/v1"));
        assert!(proxied("corp.example", "https://notcorp.example/v1"));
        assert!(!proxied("10.1.2.3", "https://10.1.2.3/v1"));
        assert!(!proxied("10.0.0.0/8", "https://10.9.9.9/v1"));
        assert!(proxied("10.0.0.0/8", "https://11.0.0.1/v1"));
        assert!(!proxied("*", "https://api.openai.com/v1"));
        assert!(proxied("a.example, b.example", "https://api.openai.com/v1"));
    }

    #[test]
    fn the_tunnel_target_always_has_a_port() {
        let t = |u: &str| {
            with_port(u.parse().unwrap_or_default())
                .map(|u| u.to_string())
                .ok()
        };
        assert_eq!(
            t("http://mock.internal/v1").as_deref(),
            Some("http://mock.internal:80/")
        );
        assert_eq!(
            t("https://api.openai.com/v1").as_deref(),
            Some("https://api.openai.com:443/")
        );
        assert_eq!(t("https://h:8443/v1").as_deref(), Some("https://h:8443/v1"));
    }
}
