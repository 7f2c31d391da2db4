//! The request pipeline, as named steps: route, authenticate, buffer, then try keys in turn,
//! each attempt one lease from the pool and one report back to it.

use crate::auth::ClientAuth;
use crate::body::{buffer_request, discard, BodyLimits, Budget, Buffered, ProxyBody};
use crate::config::{Config, UpstreamConfig};
use crate::error::{ErrorKind, ErrorShape, ProxyError};
use crate::headers::{presented_credentials, query_without_key, strip_hop_by_hop, HeaderPolicy};
use crate::log::{RequestIds, RequestLog};
use crate::routes::{JoinError, Provider, Routes};
use crate::upstream::{self, Answered, AnsweredBody, UpstreamClient, UpstreamError};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use keyrelay_metrics::{AuthFailure, Metrics, ProviderMetrics, StoreOp};
use keyrelay_pool::{
    needs_body, Acquired, Answer, Lease, Observed, Outcome, PoolError, Store, Tried,
};
use std::sync::Arc;
use tokio::time::Instant;
use tracing::Instrument;

/// What outlives a config: the pool store, the metrics, and what providers reported of each
/// key. A reload builds a new [`App`] around the same `Shared`.
#[derive(Clone)]
pub struct Shared {
    pub store: Arc<dyn Store>,
    pub metrics: Metrics,
    pub observed: Arc<Observed>,
    /// Request-body bytes buffered now, over every request of every config.
    pub budget: Arc<Budget>,
}

impl Shared {
    pub fn new(store: Arc<dyn Store>) -> Shared {
        let metrics = Metrics::new();
        metrics.watch_store(store.clone());
        Shared {
            store,
            metrics,
            observed: Observed::new(),
            // Each config sets its own limit when it is built.
            budget: Budget::new(0),
        }
    }
}

/// Everything a request needs, built once per config.
pub struct App {
    shared: Shared,
    tls: Option<tokio_rustls::TlsAcceptor>,
    routes: Routes,
    auth: ClientAuth,
    client: UpstreamClient,
    upstream: UpstreamConfig,
    body_limits: BodyLimits,
    ids: RequestIds,
    unrouted: ProviderMetrics,
    headers: HeaderPolicy,
}

/// The client's address, put in each request's extensions by the listener.
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub std::net::SocketAddr);

/// A request after the client-side steps: ready to send to any key.
struct Prepared {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    /// Holds its share of the budget until the request is done with it.
    body: Buffered,
}

/// Why the key loop stopped without a response to pass on as it is.
enum Failure {
    /// An upstream answer that asked for another key (kept to answer from if none is left).
    Answer(Answered, Outcome),
    /// No answer at all.
    Error(UpstreamError),
}

/// What the attempt loop does next, after asking the pool.
enum Next<'p> {
    Try(Lease<'p>),
    /// Answer now with keyrelay's own error.
    Refuse(ProxyError),
    /// Stop trying; answer with the last failure.
    GiveUp,
}

/// The time bounds of one request's attempt loop.
struct Bounds {
    /// Waiting for a key to free up ends here (`max_wait`, within the deadline).
    wait_until: Instant,
    /// Everything up to the response head ends here.
    deadline: Instant,
}

impl App {
    pub fn new(config: &Config, shared: Shared) -> Result<App, PoolError> {
        let app = App {
            routes: Routes::new(config, &shared)?,
            tls: config
                .server
                .tls
                .clone()
                .map(tokio_rustls::TlsAcceptor::from),
            auth: ClientAuth::new(&config.clients, config.server.allow_unauthenticated),
            client: upstream::client(&config.upstream),
            upstream: config.upstream.clone(),
            body_limits: BodyLimits {
                max_bytes: config.server.max_body_bytes,
                idle: config.server.body_read_timeout,
            },
            ids: RequestIds::new(),
            unrouted: shared.metrics.provider("none"),
            headers: HeaderPolicy::new(
                &config.upstream.pass_headers,
                config.upstream.forwarded_for,
            ),
            shared,
        };
        app.shared
            .budget
            .set_limit(config.server.max_buffered_bytes);
        Ok(app)
    }

    /// Request-body bytes buffered right now, over all requests.
    pub fn buffered_bytes(&self) -> usize {
        self.shared.budget.used()
    }

    /// The listener's TLS acceptor, if TLS is configured (swapped with the config on reload).
    pub fn tls(&self) -> Option<&tokio_rustls::TlsAcceptor> {
        self.tls.as_ref()
    }

    /// What a reloaded config carries over.
    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Where pool state is kept right now (embedded, shared, or degraded).
    pub fn store_state(&self) -> keyrelay_pool::StoreState {
        self.shared.store.state()
    }

    pub fn routes(&self) -> &Routes {
        &self.routes
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Serve one client request. Never fails: every error becomes a provider-shaped answer.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<ProxyBody> {
        let id = self.ids.next();
        let span = tracing::info_span!("request", id = %id);
        let log = RequestLog::new(id, self.shared.metrics.clone(), self.unrouted.clone());
        async move {
            let mut resp = self.serve(req, log).await;
            resp.headers_mut()
                .insert(crate::log::REQUEST_ID_HEADER, id.header_value());
            resp
        }
        .instrument(span)
        .await
    }

    async fn serve(&self, req: Request<Incoming>, mut log: RequestLog) -> Response<ProxyBody> {
        let (parts, body) = req.into_parts();
        let found = self.routes.find(parts.uri.path());
        let shape = found.map_or(ErrorShape::OpenAi, |(p, _)| p.shape);
        // Step 0: nothing a forward proxy or a tunnel would serve.
        if let Err(e) = check_target(&parts) {
            return log.error(e, shape);
        }
        // Step 1: who is asking.
        let presented = presented_credentials(&parts.headers, parts.uri.query());
        let Some(client) = self.auth.authenticate(&presented) else {
            self.shared
                .metrics
                .client_auth_failure(if presented.is_empty() {
                    AuthFailure::Missing
                } else {
                    AuthFailure::Invalid
                });
            return log.error(ProxyError::Unauthorized, shape);
        };
        log.client(client);
        // Step 2: where it goes.
        let Some((provider, rest)) = found else {
            return log.error(ProxyError::UnknownRoute, shape);
        };
        let provider = provider.clone();
        log.provider(&provider);
        let query = parts.uri.query().and_then(query_without_key);
        let uri = match provider.upstream_uri(rest, query.as_deref()) {
            Ok(uri) => uri,
            Err(JoinError::Path(why)) => return log.error(ProxyError::BadPath(why), shape),
            Err(JoinError::Origin) => {
                tracing::error!(provider = %provider.name, "a joined upstream URL left the provider's base URL; not sent");
                return log.error(ProxyError::UpstreamMismatch, shape);
            }
        };
        // Step 3: the body, buffered so another key can replay it.
        let body = match self.read_body(body, &parts).await {
            Ok(b) => b,
            Err((e, shed)) => {
                let mut resp = log.error(e, shape);
                if shed {
                    // Under memory pressure, the connection is not kept for another request.
                    resp.headers_mut()
                        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
                }
                return resp;
            }
        };
        let peer = parts.extensions.get::<Peer>().map(|p| p.0.ip());
        let headers = self.headers.forward(parts.headers, peer);
        let prepared = Prepared {
            method: parts.method,
            uri,
            headers,
            body,
        };
        // Step 4: keys in turn.
        self.forward(&provider, prepared, log).await
    }

    /// Buffer the body within the limits; on refusal, the error and whether the connection is
    /// shed (an HTTP/1 body refused for the budget alone, read to nowhere so the client sees
    /// its 503 rather than a reset; an oversized or stalled body is cut off at once).
    async fn read_body(
        &self,
        mut body: Incoming,
        parts: &http::request::Parts,
    ) -> Result<Buffered, (ProxyError, bool)> {
        let declared = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let limits = self.body_limits;
        match buffer_request(&mut body, declared, limits, &self.shared.budget).await {
            Ok(b) => Ok(b),
            Err(e) => {
                let shed = matches!(e, ProxyError::BodyBudgetFull)
                    && parts.version < http::Version::HTTP_2;
                if shed {
                    tokio::spawn(discard(body, limits));
                }
                Err((e, shed))
            }
        }
    }

    /// Try keys until one gives an answer to pass on, or none is left.
    async fn forward(
        &self,
        provider: &Provider,
        req: Prepared,
        mut log: RequestLog,
    ) -> Response<ProxyBody> {
        let mut tried = Tried::new(req.uri.path(), provider.max_attempts as usize);
        let mut last: Option<Failure> = None;
        let now = Instant::now();
        let deadline = now + provider.deadline;
        let bounds = Bounds {
            wait_until: (now + provider.max_wait).min(deadline),
            deadline,
        };
        loop {
            let lease = match self.next_key(provider, &mut tried, &last, &bounds).await {
                Next::Try(lease) => lease,
                Next::Refuse(e) => return log.error(e, provider.shape),
                Next::GiveUp => break,
            };
            let key = lease.key();
            let limit = self
                .upstream
                .first_byte_timeout
                .min(deadline.saturating_duration_since(Instant::now()));
            let started = Instant::now();
            let sent = upstream::send(&self.client, attempt(&req, &lease), limit, needs_body).await;
            let waited = started.elapsed();
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
                Ok(answered) if !again => {
                    return pass_on(answered, log, &self.upstream, provider.shape)
                }
                Ok(answered) => {
                    tracing::debug!(key = %key.name, outcome = verdict.outcome.label(), "trying the next key");
                    last = Some(Failure::Answer(answered, verdict.outcome));
                }
                Err(e) if !again => return log.error(e.into(), provider.shape),
                Err(e) => last = Some(Failure::Error(e)),
            }
        }
        match last {
            Some(Failure::Answer(answered, outcome)) if passable(outcome) => {
                pass_on(answered, log, &self.upstream, provider.shape)
            }
            last => log.error(give_up(last), provider.shape),
        }
    }

    /// Ask the pool for the next key; wait for one to free up while the bounds allow.
    async fn next_key<'p>(
        &self,
        provider: &'p Provider,
        tried: &mut Tried<'p>,
        last: &Option<Failure>,
        bounds: &Bounds,
    ) -> Next<'p> {
        while tried.len() < provider.max_attempts as usize && Instant::now() < bounds.deadline {
            let asked = Instant::now();
            let acquired = provider.pool.acquire(tried).await;
            self.shared
                .metrics
                .store_round_trip(StoreOp::Acquire, asked.elapsed());
            match acquired {
                Acquired::Lease(lease) => return Next::Try(lease),
                Acquired::Wait(d) if Instant::now() + d <= bounds.wait_until => {
                    tokio::time::sleep(d).await;
                }
                Acquired::Wait(d) if last.is_none() => {
                    return Next::Refuse(ProxyError::AllKeysCooling { retry_after: d })
                }
                Acquired::Wait(_) | Acquired::Exhausted | Acquired::OverBudget => {
                    return Next::GiveUp
                }
            }
        }
        if last.is_none() {
            return Next::Refuse(ProxyError::UpstreamTimeout);
        }
        Next::GiveUp
    }
}

/// Refuse what only a forward proxy or a tunnel would serve: `CONNECT`, and an HTTP/1
/// absolute-form target (`GET http://host/ HTTP/1.1`). keyrelay only ever sends to a
/// provider's base URL, so such a request is a probe, not a client.
fn check_target(parts: &http::request::Parts) -> Result<(), ProxyError> {
    if parts.method == Method::CONNECT {
        return Err(ProxyError::MethodNotAllowed);
    }
    if parts.version < http::Version::HTTP_2 && parts.uri.scheme().is_some() {
        return Err(ProxyError::BadPath("absolute-form request target"));
    }
    Ok(())
}

/// Whether the last answer, when no key is left, goes to the client as it is: not a refused
/// key's (providers echo part of the key in it) nor a refusal's (its message may too).
fn passable(outcome: Outcome) -> bool {
    !matches!(outcome, Outcome::Unauthorized | Outcome::Forbidden)
}

/// The client's answer when no key gave one to pass on: the one place an attempt's failure
/// becomes keyrelay's own error.
fn give_up(last: Option<Failure>) -> ProxyError {
    match last {
        Some(Failure::Answer(answered, Outcome::Forbidden)) => ProxyError::UpstreamRefused {
            status: answered.parts.status,
            kind: ErrorKind::from_body(answered.read_body().unwrap_or_default()),
        },
        // Any other answer kept back is a refused key's.
        Some(Failure::Answer(..)) => ProxyError::UpstreamRejectedKeys,
        Some(Failure::Error(e)) => e.into(),
        None => ProxyError::NoUsableKey,
    }
}

/// The upstream request for one attempt: the prepared request plus the lease's credential.
fn attempt(req: &Prepared, lease: &Lease<'_>) -> Request<Full<Bytes>> {
    let mut out = Request::new(Full::new(req.body.bytes.clone()));
    *out.method_mut() = req.method.clone();
    *out.uri_mut() = req.uri.clone();
    *out.headers_mut() =
        crate::headers::with_credential(&req.headers, lease.credential(), lease.account_headers());
    out
}

/// Tells a buffering proxy in front (nginx) to pass an event stream on as it comes.
const X_ACCEL_BUFFERING: http::HeaderName = http::HeaderName::from_static("x-accel-buffering");

/// Send an upstream answer to the client, head first, body frame by frame (or, for an error
/// answer read to judge it, as read).
fn pass_on(
    answered: Answered,
    log: RequestLog,
    upstream: &UpstreamConfig,
    shape: ErrorShape,
) -> Response<ProxyBody> {
    let Answered { mut parts, body } = answered;
    strip_hop_by_hop(&mut parts.headers);
    let sse = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if sse {
        parts
            .headers
            .insert(X_ACCEL_BUFFERING, HeaderValue::from_static("no"));
    }
    let hook = log.streaming(parts.status.as_u16());
    let body = match body {
        AnsweredBody::Streaming(body) => ProxyBody::streamed(
            body,
            upstream.idle_timeout,
            sse.then_some(shape),
            Some(hook),
        ),
        AnsweredBody::Read(bytes) => ProxyBody::read(bytes, hook),
    };
    Response::from_parts(parts, body)
}
