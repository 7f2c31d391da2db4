//! The request pipeline, as named steps: route, authenticate, buffer, then try keys in turn,
//! each attempt one lease from the pool and one report back to it.

use crate::affinity::{self, Plan};
use crate::auth::ClientAuth;
use crate::body::spill::{self, SpillDir};
use crate::body::ClientBody;
use crate::body::{
    buffer_request, discard, spool, AttemptBody, BodyLimits, Budget, ProxyBody, Read, RequestBody,
};
use crate::config::{Config, UpstreamConfig};
use crate::error::{ErrorKind, ErrorShape, ProxyError};
use crate::headers::{presented_credentials, query_without_key, strip_hop_by_hop, HeaderPolicy};
use crate::log::{RequestIds, RequestLog};
use crate::routes::{JoinError, Provider, Routes};
use crate::tenants::tokens::Tally;
use crate::upstream::{self, Answered, AnsweredBody, UpstreamError};
use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri};
use keyrelay_metrics::{AuthFailure, Metrics, ProviderMetrics, StoreOp};
use keyrelay_pool::{
    needs_body, Acquired, Answer, Group, Lease, Observed, Outcome, Pool, PoolError, Store, Tried,
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
    /// Spill-file bytes reserved now, over every request of every config.
    pub spill_space: Arc<Budget>,
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
            spill_space: Budget::new(0),
        }
    }
}

/// The client named in the log for a Gemini upload step authenticated by its sealed link.
const UPLOAD_LINK_CLIENT: &str = "(upload link)";

/// Everything a request needs, built once per config.
pub struct App {
    shared: Shared,
    tls: Option<tokio_rustls::TlsAcceptor>,
    routes: Routes,
    tenants: crate::tenants::Tenants,
    /// Shared with the answers' meters, which add tokens once a body ends.
    limits: Arc<crate::tenants::limits::Limits>,
    auth: ClientAuth,
    client: upstream::Clients,
    upstream: UpstreamConfig,
    body_limits: BodyLimits,
    spill: Arc<SpillDir>,
    ids: RequestIds,
    unrouted: ProviderMetrics,
    headers: HeaderPolicy,
    ws: crate::websocket::Gateway,
    /// Where audit lines are appended (`[admin] audit_file`), if anywhere.
    audit_file: Option<std::path::PathBuf>,
}

/// The client's address, given with each request by the listener (and put in a WebSocket
/// upgrade's extensions for the session).
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub std::net::SocketAddr);

/// A request after the client-side steps: ready to send to any key.
struct Prepared {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    /// Holds its share of the budget (or its spill file) until the request is done with it.
    body: RequestBody,
    /// The key a resource id pins the request to, and how its answer is treated.
    plan: Plan,
    /// The key group the request named (header or client default), if any.
    group: Option<Group>,
}

/// Why the key loop stopped without a response to pass on as it is.
pub(crate) enum Failure {
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
        let routes = Routes::new(config, &shared)?;
        let app = App {
            tenants: crate::tenants::Tenants::new(config, &shared, &routes)?,
            routes,
            limits: Arc::new(crate::tenants::limits::Limits::new(config)),
            tls: config
                .server
                .tls
                .clone()
                .map(tokio_rustls::TlsAcceptor::from),
            auth: ClientAuth::new(&config.all_clients(), config.server.allow_unauthenticated),
            client: upstream::Clients::new(config),
            upstream: config.upstream.clone(),
            body_limits: BodyLimits {
                max_bytes: config.server.max_body_bytes,
                memory_bytes: config.server.replay_memory_bytes,
                idle: config.server.body_read_timeout,
            },
            spill: Arc::new(SpillDir::new(
                config.server.spill_dir.clone(),
                shared.spill_space.clone(),
            )),
            ids: RequestIds::new(),
            unrouted: shared.metrics.unrouted(),
            headers: HeaderPolicy::new(
                &config.upstream.pass_headers,
                config.upstream.forwarded_for,
            ),
            ws: crate::websocket::Gateway::new(config),
            audit_file: config.admin.audit_file.clone(),
            shared,
        };
        app.shared
            .budget
            .set_limit(config.server.max_buffered_bytes);
        app.shared
            .spill_space
            .set_limit(config.server.max_spill_bytes);
        let stale = spill::clear_stale(&config.server.spill_dir);
        if stale > 0 {
            tracing::info!(files = stale, "removed spill files left by an earlier run");
        }
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

    pub fn tenants(&self) -> &crate::tenants::Tenants {
        &self.tenants
    }

    pub fn limits(&self) -> &crate::tenants::limits::Limits {
        &self.limits
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Where this config's audit lines are appended, if anywhere.
    pub fn audit_file(&self) -> Option<&std::path::Path> {
        self.audit_file.as_deref()
    }

    /// Serve one client request from `peer`. Never fails: every error becomes a
    /// provider-shaped answer.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<ClientBody>,
        peer: Option<Peer>,
    ) -> Response<ProxyBody> {
        let id = self.ids.next();
        let span = tracing::info_span!("request", id = %id);
        let log = RequestLog::new(id, self.shared.metrics.clone(), self.unrouted.clone());
        async move {
            let mut resp = self.serve(req, peer, log).await;
            resp.headers_mut()
                .insert(crate::log::REQUEST_ID_HEADER, id.header_value());
            resp
        }
        .instrument(span)
        .await
    }

    async fn serve(
        &self,
        req: Request<ClientBody>,
        peer: Option<Peer>,
        mut log: RequestLog,
    ) -> Response<ProxyBody> {
        let (mut parts, body) = req.into_parts();
        let found = self.routes.find(parts.uri.path());
        let shape = found.map_or(ErrorShape::OpenAi, |(p, _)| p.shape);
        // Step 0: nothing a forward proxy or a tunnel would serve.
        if let Err(e) = check_target(&parts) {
            return log.error(e, shape);
        }
        if crate::websocket::is_upgrade(&parts) {
            if let Some(peer) = peer {
                parts.extensions.insert(peer);
            }
            return self.upgrade(parts, log).await;
        }
        // Steps 1 and 2: who is asking, and where it goes.
        let (provider, rest, tally, group) = match self.authorize(found, &parts, &mut log).await {
            Ok(p) => p,
            Err(e) => return log.error(e, shape),
        };
        log.provider(&provider);
        let query = parts.uri.query().and_then(query_without_key);
        let tls = self.tls.is_some();
        let (target, uri) = match open_target(&provider, rest, query.as_deref(), (&parts, tls)) {
            Ok(t) => t,
            Err(e) => return log.error(e, shape),
        };
        // Step 3: the body, buffered (or, when large, spilled while it streams) so another key
        // can replay it. Only now is it read, so a refused request never gets 100 Continue.
        let mut body = match self.read_body(body, &parts).await {
            Ok(b) => b,
            Err((e, shed)) => return body_refused(log.error(e, shape), shed, &parts),
        };
        let mut headers = self.headers.forward(parts.headers, peer.map(|p| p.0.ip()));
        if let Some(host) = &provider.host {
            headers.insert(http::header::HOST, host.clone());
        }
        crate::tenants::tokens::uncompressed(tally.as_deref(), &provider, &mut headers);
        // Ids are opened in bodies held in memory; a spilled one (past replay_memory_bytes:
        // uploads, not JSON) passes as it is.
        let mut none = bytes::Bytes::new();
        let json = match &mut body {
            RequestBody::Memory(b) => &mut b.bytes,
            RequestBody::Spooled(_) => &mut none,
        };
        let affinity = provider.affinity.as_deref();
        let plan = match target.finish(affinity, json, &mut headers) {
            // Map mode: the ids it names looked up (one store call, resource routes only).
            Ok(mut plan) => match affinity::recall(affinity, &mut plan).await {
                Ok(()) => plan,
                Err(e) => return log.error(e, shape),
            },
            Err(e) => return log.error(e, shape),
        };
        let prepared = Prepared {
            method: parts.method,
            uri,
            headers,
            body,
            plan,
            group,
        };
        // Step 4: keys in turn.
        self.forward(&provider, prepared, tally, log).await
    }

    /// A WebSocket upgrade: its own pipeline, in `websocket`.
    async fn upgrade(&self, parts: http::request::Parts, log: RequestLog) -> Response<ProxyBody> {
        let ctx = crate::websocket::Ctx {
            routes: &self.routes,
            auth: &self.auth,
            headers: &self.headers,
            upstream: &self.upstream,
            metrics: &self.shared.metrics,
            gateway: &self.ws,
            tenants: &self.tenants,
            limits: &self.limits,
        };
        ctx.serve(parts, log).await
    }

    /// Who is asking (step 1), the pool that serves them and the key group they name (step 2),
    /// with the token counters the answer adds to (a client or tenant with a `tpm`); a request
    /// with no credential at all may still be the next step of a Gemini resumable upload, which
    /// its sealed upload id authenticates ([`affinity::upload_pool`]).
    async fn authorize<'r>(
        &self,
        found: Option<(&Arc<Provider>, &'r str)>,
        parts: &http::request::Parts,
        log: &mut RequestLog,
    ) -> Result<(Arc<Provider>, &'r str, Option<Box<Tally>>, Option<Group>), ProxyError> {
        let presented = presented_credentials(&parts.headers, parts.uri.query());
        let mut runtime = None;
        let Some((client, default_group)) = self.client(&presented, &mut runtime) else {
            let link = match found {
                Some((shared, rest)) if presented.is_empty() => {
                    let pools = self.tenants.pools_on(shared);
                    affinity::upload_pool(&pools, rest, parts.uri.query())?.map(|p| (p, rest))
                }
                _ => None,
            };
            let (pool, rest) = link.ok_or_else(|| self.unauthorized(&presented))?;
            log.client(UPLOAD_LINK_CLIENT);
            return Ok((pool, rest, None, None));
        };
        log.client(client);
        let (shared, rest) = found.ok_or(ProxyError::UnknownRoute)?;
        let named = crate::group::requested(&parts.headers, default_group)?;
        let (pool, tally, group) = self.pool_for(client, shared, named).await?;
        Ok((pool, rest, tally, group))
    }

    /// Count a failed authentication; the error to answer.
    fn unauthorized(&self, presented: &[&[u8]]) -> ProxyError {
        self.shared
            .metrics
            .client_auth_failure(if presented.is_empty() {
                AuthFailure::Missing
            } else {
                AuthFailure::Invalid
            });
        ProxyError::Unauthorized
    }

    /// The configured client a presented credential belongs to, with its default key group,
    /// or the client of a tenant created at run time (named `runtime:<tenant>`, kept in
    /// `runtime`; no default group).
    fn client<'a>(
        &'a self,
        presented: &[&[u8]],
        runtime: &'a mut Option<String>,
    ) -> Option<(&'a str, Option<&'a str>)> {
        if let Some(c) = self.auth.identify(presented) {
            return Some(c);
        }
        *runtime = self.tenants.runtime_client(presented);
        runtime.as_deref().map(|c| (c, None))
    }

    /// The pool serving `client` on `shared`'s route (its tenant's only, for a tenant's
    /// client) and its group `named`, which must exist there; checked against the client's own
    /// limit and its tenant's before anything is read or sent.
    async fn pool_for(
        &self,
        client: &str,
        shared: &Arc<Provider>,
        named: Option<&str>,
    ) -> Result<(Arc<Provider>, Option<Box<Tally>>, Option<Group>), ProxyError> {
        let provider = self.tenants.route(client, shared)?;
        let group = crate::group::resolve(named, &provider)?;
        let tally = self.limits.check(client).await?;
        Ok((provider, tally, group))
    }

    /// Buffer the body within the limits, or start spooling it when it is too large for
    /// memory; on refusal, the error and whether the connection is shed (an HTTP/1 body refused
    /// for the budget alone, read to nowhere so the client sees its 503 rather than a reset;
    /// an oversized or stalled body is cut off at once).
    async fn read_body(
        &self,
        mut body: ClientBody,
        parts: &http::request::Parts,
    ) -> Result<RequestBody, (ProxyError, bool)> {
        let declared = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let limits = self.body_limits;
        match buffer_request(&mut body, declared, limits, &self.shared.budget).await {
            Ok(Read::Whole(b)) => Ok(RequestBody::Memory(b)),
            Ok(Read::Over(prefix)) => {
                let linger = parts.version < http::Version::HTTP_2;
                let spooled = spool(body, prefix, declared, limits, &self.spill, linger).await;
                if !spooled.replayable() {
                    self.shared.metrics.request_body_unreplayable();
                }
                Ok(RequestBody::Spooled(spooled))
            }
            Err(e) => {
                let shed = matches!(e, ProxyError::BodyBudgetFull)
                    && parts.version < http::Version::HTTP_2;
                // A client waiting for 100 Continue has sent no body: nothing to drain, and
                // polling the body would invite it to send one.
                let waiting = parts.headers.contains_key(http::header::EXPECT);
                if shed && !waiting {
                    tokio::spawn(discard(body, limits));
                }
                Err((e, shed))
            }
        }
    }

    /// Try keys until one gives an answer to pass on, or none is left; its tokens are counted
    /// when a `tpm` applies (the client's or tenant's, in `tally`, or the key's).
    async fn forward(
        &self,
        provider: &Arc<Provider>,
        req: Prepared,
        mut tally: Option<Box<Tally>>,
        mut log: RequestLog,
    ) -> Response<ProxyBody> {
        let mut tried = req.tried(provider.max_attempts as usize, &provider.pool);
        let mut last: Option<Failure> = None;
        let now = Instant::now();
        let deadline = now + provider.deadline;
        let bounds = Bounds {
            wait_until: (now + provider.max_wait).min(deadline),
            deadline,
        };
        loop {
            let next = self.next_key(provider, &mut tried, &last, &bounds).await;
            if let Some(shared) = fallback(provider, last.as_ref(), &next, &req) {
                return Box::pin(self.forward(shared, req, tally, log)).await;
            }
            let lease = match next {
                Next::Try(lease) => lease,
                Next::Refuse(e) => return log.error(e, provider.shape),
                Next::GiveUp => break,
            };
            let (key, index) = (lease.key(), lease.index());
            let Some(out) = attempt(&req, &lease) else {
                break;
            };
            let started = Instant::now();
            let sent = self.send(out, deadline, &provider.name).await;
            let waited = started.elapsed();
            if let (Err(_), Some(e)) = (&sent, req.body.failure()) {
                // The client's body failed, not the key: no report, keyrelay's own answer.
                return log.error(e, provider.shape);
            }
            let verdict = lease.report(answer_of(&sent)).await;
            log.attempt(key, waited, sent.is_ok(), verdict);
            // A body streamed without a spill file cannot be sent again.
            let again =
                verdict.outcome.retryable(provider.retry_after_send) && req.body.replayable();
            match sent {
                Ok(answered) if !again => {
                    let meter = if crate::tenants::tokens::readable(&answered.parts) {
                        self.limits.meter(tally.take(), provider, index)
                    } else {
                        None
                    };
                    let resp = pass_on(answered, log, &self.upstream, provider.shape, meter);
                    return affinity::wrap(provider.affinity.as_ref(), &req.plan, key, resp);
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
                pass_on(answered, log, &self.upstream, provider.shape, None)
            }
            last => log.error(give_up(last), provider.shape),
        }
    }

    /// Send one attempt. The answer head is due `first_byte_timeout` after the body is sent
    /// (for a streamed body, once the upstream took its last byte), always within the deadline.
    async fn send(
        &self,
        mut out: Request<AttemptBody>,
        deadline: Instant,
        provider: &str,
    ) -> Result<Answered, UpstreamError> {
        let client = self.client.get(provider);
        let first_byte = self.upstream.first_byte_timeout;
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(sent) = out.body_mut().take_sent() else {
            return upstream::send(client, out, first_byte.min(left), needs_body).await;
        };
        let head_due = async move {
            let _ = sent.await;
            tokio::time::sleep(first_byte).await;
        };
        tokio::select! {
            sent = upstream::send(client, out, left, needs_body) => sent,
            () = head_due => Err(UpstreamError::FirstByteTimeout(first_byte)),
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
                Acquired::Exhausted if tried.is_pinned() && last.is_none() => {
                    return Next::Refuse(ProxyError::ResourceKeyDisabled)
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

/// The shared pool a tenant's request goes to when none of its tenant's keys was ready: when
/// the tenant allows it, and the request names no key group (it stays within that).
fn fallback<'p>(
    provider: &'p Provider,
    last: Option<&Failure>,
    next: &Next<'_>,
    req: &Prepared,
) -> Option<&'p Arc<Provider>> {
    let none_ready = last.is_none() && !matches!(next, Next::Try(_));
    let shared = provider.fallback.as_ref()?;
    (none_ready && req.group.is_none()).then_some(shared)
}

/// The upstream URL for a request's path (`rest`, after the route prefix) and query, with
/// keyrelay resource ids opened (resource routes only; see `affinity`).
fn open_target<'a>(
    provider: &Provider,
    rest: &'a str,
    query: Option<&'a str>,
    (parts, tls): (&http::request::Parts, bool),
) -> Result<(affinity::Target<'a>, Uri), ProxyError> {
    let origin = || affinity::origin(parts, tls, &provider.route);
    let target = affinity::open(provider.affinity.as_deref(), rest, query, origin)?;
    match provider.upstream_uri(target.rest(), target.query()) {
        Ok(uri) => Ok((target, uri)),
        Err(JoinError::Path(why)) => Err(ProxyError::BadPath(why)),
        Err(JoinError::Origin) => {
            tracing::error!(provider = %provider.name, "a joined upstream URL left the provider's base URL; not sent");
            Err(ProxyError::UpstreamMismatch)
        }
    }
}

/// What the pool is told of one attempt.
fn answer_of(sent: &Result<Answered, UpstreamError>) -> Answer<'_> {
    match sent {
        Ok(a) => Answer::Head {
            status: a.parts.status,
            headers: &a.parts.headers,
            body: a.read_body(),
        },
        Err(e) => Answer::Failed { sent: e.sent() },
    }
}

impl Prepared {
    /// The keys this request may try: only the one its resource ids are sealed to, if any;
    /// only `pool`'s keys of its group, if it names one.
    fn tried<'a>(&'a self, attempts: usize, pool: &'a Pool) -> Tried<'a> {
        let tried = match self.plan.pinned {
            Some(key) => Tried::pinned(self.uri.path(), attempts, key),
            None => Tried::new(self.uri.path(), attempts),
        };
        match self.group {
            Some(group) => tried.within(pool, group),
            None => tried,
        }
    }
}

/// The answer to a request whose body was refused: under memory pressure (`shed`) the
/// connection is not kept for another request, unless the client is still waiting for
/// 100 Continue (it has sent no body: nothing to drain, and polling the body would invite one).
fn body_refused(
    mut resp: Response<ProxyBody>,
    shed: bool,
    parts: &http::request::Parts,
) -> Response<ProxyBody> {
    if shed && !parts.headers.contains_key(http::header::EXPECT) {
        resp.headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

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
pub(crate) fn passable(outcome: Outcome) -> bool {
    !matches!(outcome, Outcome::Unauthorized | Outcome::Forbidden)
}

/// The client's answer when no key gave one to pass on: the one place an attempt's failure
/// becomes keyrelay's own error.
pub(crate) fn give_up(last: Option<Failure>) -> ProxyError {
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

/// The upstream request for one attempt: the prepared request plus the lease's credential;
/// `None` when the body cannot be sent again.
fn attempt(req: &Prepared, lease: &Lease<'_>) -> Option<Request<AttemptBody>> {
    let mut out = Request::new(req.body.attempt()?);
    *out.method_mut() = req.method.clone();
    *out.uri_mut() = req.uri.clone();
    *out.headers_mut() =
        crate::headers::with_credential(&req.headers, lease.credential(), lease.account_headers());
    Some(out)
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
    meter: Option<Box<crate::usage::Meter>>,
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
        AnsweredBody::Streaming(body) => {
            let gather = !body.hands_on_runs();
            ProxyBody::streamed(
                body,
                upstream.idle_timeout,
                sse.then_some(shape),
                Some(hook),
            )
            .gathered(gather)
            .metered(meter)
        }
        AnsweredBody::Read(bytes) => ProxyBody::read(bytes, hook),
    };
    Response::from_parts(parts, body)
}
