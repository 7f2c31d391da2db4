//! WebSocket upgrades (OpenAI Realtime, the Responses API's WebSocket mode, Gemini Live): the
//! client authenticated as for HTTP (a header, `?key=`, or an `openai-insecure-api-key.`
//! subprotocol), its credential stripped, and the handshake sent to one pool key after
//! another, as HTTP attempts are, until a provider answers 101; then both connections are
//! handed to [`session`], which copies bytes both ways (and, where a `tpm` applies, reads the
//! provider's messages for their usage: [`tokens`]). Where WebSockets are off, 426.

mod protocols;
mod session;
mod tokens;

use crate::auth::ClientAuth;
use crate::body::{AttemptBody, ProxyBody};
use crate::config::{Config, UpstreamConfig};
use crate::error::{ErrorShape, ProxyError};
use crate::headers::{presented_credentials, query_without_key, strip_hop_by_hop, HeaderPolicy};
use crate::log::RequestLog;
use crate::routes::{JoinError, Provider, Routes};
use crate::service::{give_up, passable, Failure, Peer};
use crate::tenants::limits::Limits as ClientLimits;
use crate::tenants::tokens::{may_count, Tally};
use crate::upstream::{self, Answered, AnsweredBody};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use hyper::upgrade::OnUpgrade;
use keyrelay_metrics::{AuthFailure, Metrics};
use keyrelay_pool::{needs_body, Acquired, Answer, Lease, Tried};
use protocols::{Protocols, Sent};
use std::sync::Arc;
use tokio::time::Instant;

pub use protocols::KEY_PROTOCOL;
pub use session::Limits;

/// What WebSocket upgrades need that a config fixes: whether they are on, the session limits,
/// and HTTP/1.1-only upstream clients (an upgrade is an HTTP/1.1 affair).
pub struct Gateway {
    enabled: bool,
    limits: Limits,
    /// HTTP/1.1-only clients over the same TLS settings and egress proxy as HTTP requests.
    clients: upstream::Clients,
}

impl Gateway {
    pub fn new(config: &Config) -> Gateway {
        Gateway {
            enabled: config.websocket.enabled,
            limits: Limits {
                idle: config.websocket.idle_timeout,
                max: config.websocket.max_duration,
            },
            clients: upstream::Clients::speaking(config, upstream::Protocols::Upgrades),
        }
    }
}

/// What a session keeps of the connection it came on: its place under `max_connections`
/// (so sessions count as the connections they are), and the drain signal (a session is closed
/// with 1001 when keyrelay shuts down). Put in an upgrade request's extensions by the listener.
#[derive(Clone)]
pub struct Hold {
    _permit: Arc<crate::connection::Permit>,
    draining: tokio::sync::watch::Receiver<bool>,
}

impl Hold {
    pub fn new(
        permit: crate::connection::Permit,
        draining: tokio::sync::watch::Receiver<bool>,
    ) -> Hold {
        Hold {
            _permit: Arc::new(permit),
            draining,
        }
    }

    /// Resolves when keyrelay starts draining (never, if its sender is gone).
    pub async fn drained(mut self) {
        if self.draining.wait_for(|d| *d).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Whether a request asks to become a WebSocket: `Upgrade: websocket` with `Connection:
/// upgrade` (HTTP/1.1; HTTP/2 has no such upgrade).
pub fn is_upgrade(parts: &http::request::Parts) -> bool {
    let has = |name: header::HeaderName, token: &str| {
        parts
            .headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    parts.version == http::Version::HTTP_11
        && has(header::UPGRADE, "websocket")
        && has(header::CONNECTION, "upgrade")
}

/// The parts of the app an upgrade uses, borrowed for one request.
pub struct Ctx<'a> {
    pub routes: &'a Routes,
    pub auth: &'a ClientAuth,
    pub headers: &'a HeaderPolicy,
    pub upstream: &'a UpstreamConfig,
    pub metrics: &'a Metrics,
    pub gateway: &'a Gateway,
    /// A tenant's client reaches its tenant's pools only, as over HTTP.
    pub tenants: &'a crate::tenants::Tenants,
    pub limits: &'a Arc<ClientLimits>,
}

/// A handshake ready to send to any key.
struct Handshake {
    uri: Uri,
    headers: HeaderMap,
    protocols: Protocols,
    /// The connection's hold, kept by the session (absent on connections that give none).
    hold: Option<Hold>,
    /// The key group the upgrade named (header or client default), if any.
    group: Option<keyrelay_pool::Group>,
    /// The client's and tenant's token counters, where they have a `tpm`.
    tally: Option<Box<Tally>>,
}

/// A provider's 101: its answer, the subprotocols sent to it, and the key it came to.
struct Switched {
    answered: Answered,
    sent: Sent,
    index: usize,
}

impl Ctx<'_> {
    /// Serve one upgrade request: authenticate, route, then try keys.
    pub async fn serve(
        &self,
        mut parts: http::request::Parts,
        mut log: RequestLog,
    ) -> Response<ProxyBody> {
        let found = self.routes.find(parts.uri.path());
        let shape = found.map_or(ErrorShape::OpenAi, |(p, _)| p.shape);
        let protocols = Protocols::from_headers(&parts.headers);
        let mut presented = presented_credentials(&parts.headers, parts.uri.query()).into_vec();
        presented.extend(protocols.tokens());
        let runtime = self.tenants.runtime_client(&presented);
        let runtime = runtime.as_deref().map(|c| (c, None));
        let Some((client, default_group)) = self.auth.identify(&presented).or(runtime) else {
            self.metrics.client_auth_failure(if presented.is_empty() {
                AuthFailure::Missing
            } else {
                AuthFailure::Invalid
            });
            return log.error(ProxyError::Unauthorized, shape);
        };
        log.client(client);
        let Some((shared, rest)) = found else {
            return log.error(ProxyError::UnknownRoute, shape);
        };
        let named = (&parts.headers, default_group);
        let (provider, group, tally) = match self.pool_for(client, shared, named).await {
            Ok(p) => p,
            Err(e) => return log.error(e, shape),
        };
        log.provider(&provider);
        if !(self.gateway.enabled && provider.websocket) {
            return log.error(ProxyError::WebSocketDisabled, shape);
        }
        let query = parts.uri.query().and_then(query_without_key);
        let uri = match provider.upstream_uri(rest, query.as_deref()) {
            Ok(uri) => uri,
            Err(JoinError::Path(why)) => return log.error(ProxyError::BadPath(why), shape),
            Err(JoinError::Origin) => return log.error(ProxyError::UpstreamMismatch, shape),
        };
        if let Err(why) = check_handshake(&parts) {
            return log.error(ProxyError::BadUpgrade(why), shape);
        }
        let Some(on_upgrade) = parts.extensions.remove::<OnUpgrade>() else {
            return log.error(
                ProxyError::BadUpgrade("the connection cannot be upgraded"),
                shape,
            );
        };
        let peer = parts.extensions.get::<Peer>().map(|p| p.0.ip());
        let hold = parts.extensions.remove::<Hold>();
        let mut headers = self.headers.forward_upgrade(parts.headers, peer);
        if may_count(tally.as_deref(), &provider) {
            // A compressed message could not be read for its usage.
            headers.remove(header::SEC_WEBSOCKET_EXTENSIONS);
        }
        let handshake = Handshake {
            uri,
            headers,
            protocols,
            hold,
            group,
            tally,
        };
        self.connect(&provider, handshake, on_upgrade, log).await
    }

    /// The pool serving `client` on `shared`'s route and the key group the request names
    /// (header, else the client's default), as over HTTP; then the client's limits (and its
    /// token counters, for the session's tokens).
    async fn pool_for(
        &self,
        client: &str,
        shared: &Arc<Provider>,
        (headers, default_group): (&http::HeaderMap, Option<&str>),
    ) -> Result<
        (
            Arc<Provider>,
            Option<keyrelay_pool::Group>,
            Option<Box<Tally>>,
        ),
        ProxyError,
    > {
        let provider = self.tenants.route(client, shared)?;
        let named = crate::group::requested(headers, default_group)?;
        let group = crate::group::resolve(named, &provider)?;
        let tally = self.limits.check(client).await?;
        Ok((provider, group, tally))
    }

    /// Send the handshake to one key after another until one gives an answer to pass on.
    async fn connect(
        &self,
        provider: &Arc<Provider>,
        mut hs: Handshake,
        on_upgrade: OnUpgrade,
        mut log: RequestLog,
    ) -> Response<ProxyBody> {
        let shape = provider.shape;
        let mut tried = Tried::new(hs.uri.path(), provider.max_attempts as usize);
        if let Some(group) = hs.group {
            tried = tried.within(&provider.pool, group);
        }
        let mut last: Option<Failure> = None;
        let started = Instant::now();
        let deadline = started + provider.deadline;
        let wait_until = (started + provider.max_wait).min(deadline);
        loop {
            let lease =
                match next_key(provider, &mut tried, last.is_some(), wait_until, deadline).await {
                    Ok(Some(lease)) => lease,
                    Ok(None) => break,
                    Err(e) => return log.error(e, shape),
                };
            let (key, index) = (lease.key(), lease.index());
            let (req, sent_protocols) = attempt(&hs, &lease);
            let asked = Instant::now();
            let sent = self.ask(provider, req, deadline).await;
            let waited = asked.elapsed();
            let answer = match &sent {
                Ok(a) => Answer::Head {
                    status: a.parts.status,
                    headers: &a.parts.headers,
                    body: a.read_body(),
                },
                Err(e) => Answer::Failed { sent: e.sent() },
            };
            let verdict = lease.report(answer).await;
            log.attempt(key, waited, sent.is_ok(), verdict);
            let again = verdict.outcome.retryable(provider.retry_after_send);
            match sent {
                Ok(answered) if answered.parts.status == StatusCode::SWITCHING_PROTOCOLS => {
                    let switched = Switched {
                        answered,
                        sent: sent_protocols,
                        index,
                    };
                    return self.open(provider, &mut hs, switched, on_upgrade, log);
                }
                Ok(a) if !again => return pass_on(a, log, self.upstream),
                Ok(a) => last = Some(Failure::Answer(a, verdict.outcome)),
                Err(e) if !again => return log.error(e.into(), shape),
                Err(e) => last = Some(Failure::Error(e)),
            }
        }
        match last {
            Some(Failure::Answer(a, outcome)) if passable(outcome) => {
                pass_on(a, log, self.upstream)
            }
            last => log.error(give_up(last), shape),
        }
    }

    /// Send one handshake; its answer's head is due within the first-byte timeout and the
    /// deadline.
    async fn ask(
        &self,
        provider: &Provider,
        req: Request<AttemptBody>,
        deadline: Instant,
    ) -> Result<Answered, upstream::UpstreamError> {
        let limit = self
            .upstream
            .first_byte_timeout
            .min(deadline.saturating_duration_since(Instant::now()));
        let client = self.gateway.clients.get(&provider.name);
        upstream::send(client, req, limit, needs_body).await
    }

    /// The provider answered 101: answer the client's upgrade alike (its subprotocol mapped
    /// back to the client's own), and run the session once both sides have switched.
    fn open(
        &self,
        provider: &Arc<Provider>,
        hs: &mut Handshake,
        switched: Switched,
        client: OnUpgrade,
        log: RequestLog,
    ) -> Response<ProxyBody> {
        let Switched {
            answered: Answered { mut parts, .. },
            sent,
            index,
        } = switched;
        let Some(upstream) = parts.extensions.remove::<OnUpgrade>() else {
            return log.error(ProxyError::UpstreamUnreachable, provider.shape);
        };
        let chosen = parts.headers.remove(header::SEC_WEBSOCKET_PROTOCOL);
        strip_hop_by_hop(&mut parts.headers);
        let h = &mut parts.headers;
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Some(answer) = hs.protocols.answer(&sent, chosen.as_ref()) {
            h.insert(header::SEC_WEBSOCKET_PROTOCOL, answer);
        }
        let hook = log.streaming(StatusCode::SWITCHING_PROTOCOLS.as_u16());
        let metrics = provider.metrics.websocket().clone();
        let ends = session::Ends {
            client,
            upstream,
            hold: hs.hold.clone(),
            count: self.limits.count(hs.tally.take(), provider, index),
        };
        tokio::spawn(session::run(ends, self.gateway.limits, metrics, hook));
        Response::from_parts(parts, ProxyBody::full(Bytes::new()))
    }
}

/// The handshake fields a WebSocket needs; the rest is the provider's to judge.
fn check_handshake(parts: &http::request::Parts) -> Result<(), &'static str> {
    if parts.method != Method::GET {
        return Err("an upgrade must be a GET");
    }
    if !parts.headers.contains_key(header::SEC_WEBSOCKET_KEY) {
        return Err("no Sec-WebSocket-Key");
    }
    Ok(())
}

/// The next key to try: `Ok(None)` to stop and answer from the last failure, `Err` to answer
/// with keyrelay's own error (every key cooling: 429 with Retry-After, as for HTTP).
async fn next_key<'p>(
    provider: &'p Provider,
    tried: &mut Tried<'p>,
    failed_before: bool,
    wait_until: Instant,
    deadline: Instant,
) -> Result<Option<Lease<'p>>, ProxyError> {
    while tried.len() < provider.max_attempts as usize && Instant::now() < deadline {
        match provider.pool.acquire(tried).await {
            Acquired::Lease(lease) => return Ok(Some(lease)),
            Acquired::Wait(d) if Instant::now() + d <= wait_until => tokio::time::sleep(d).await,
            Acquired::Wait(d) if !failed_before => {
                return Err(ProxyError::AllKeysCooling { retry_after: d })
            }
            Acquired::Wait(_) | Acquired::Exhausted | Acquired::OverBudget => return Ok(None),
        }
    }
    if failed_before {
        Ok(None)
    } else {
        Err(ProxyError::UpstreamTimeout)
    }
}

/// The handshake for one key: the key in the subprotocol list where the client put its token
/// there and the provider takes a bearer key, else in the provider's header.
fn attempt(hs: &Handshake, lease: &Lease<'_>) -> (Request<AttemptBody>, Sent) {
    let mut req = Request::new(AttemptBody::full(Bytes::new()));
    *req.uri_mut() = hs.uri.clone();
    *req.headers_mut() = hs.headers.clone();
    let (name, value) = lease.credential();
    let in_protocol = hs.protocols.has_token() && *name == header::AUTHORIZATION;
    let sent = hs
        .protocols
        .upstream(in_protocol.then(|| lease.key().secret.expose()));
    let headers = req.headers_mut();
    if !in_protocol {
        headers.insert(name.clone(), value.clone());
    }
    if let Some(v) = sent.header() {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, v);
    }
    for (name, value) in lease.account_headers() {
        headers.insert(name.clone(), value.clone());
    }
    (req, sent)
}

/// Pass a provider's non-101 answer on as it is (head first, body as it comes).
fn pass_on(answered: Answered, log: RequestLog, upstream: &UpstreamConfig) -> Response<ProxyBody> {
    let Answered { mut parts, body } = answered;
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::SEC_WEBSOCKET_PROTOCOL);
    let hook = log.streaming(parts.status.as_u16());
    let body = match body {
        AnsweredBody::Streaming(b) => {
            ProxyBody::streamed(b, upstream.idle_timeout, None, Some(hook))
        }
        AnsweredBody::Read(bytes) => ProxyBody::read(bytes, hook),
    };
    Response::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(version: http::Version, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = Request::builder().uri("/v1/realtime").version(version);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn an_upgrade_needs_both_headers_on_http_1_1() {
        let both = [
            ("upgrade", "WebSocket"),
            ("connection", "keep-alive, Upgrade"),
        ];
        assert!(is_upgrade(&parts(http::Version::HTTP_11, &both)));
        assert!(!is_upgrade(&parts(http::Version::HTTP_10, &both)));
        assert!(!is_upgrade(&parts(http::Version::HTTP_2, &both)));
        assert!(!is_upgrade(&parts(http::Version::HTTP_11, &both[..1])));
        assert!(!is_upgrade(&parts(http::Version::HTTP_11, &both[1..])));
        let h2c = [("upgrade", "h2c"), ("connection", "upgrade")];
        assert!(!is_upgrade(&parts(http::Version::HTTP_11, &h2c)));
    }
}
