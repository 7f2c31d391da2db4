//! The request pipeline, as named steps: route, authenticate, buffer, then try keys in turn.

use crate::auth::ClientAuth;
use crate::body::{buffer_request, ProxyBody};
use crate::config::{Config, UpstreamConfig};
use crate::error::{ErrorShape, ProxyError};
use crate::headers::{
    prepare_request_headers, presented_credentials, query_without_key, strip_hop_by_hop,
};
use crate::log::{RequestIds, RequestLog};
use crate::routes::{Provider, Routes};
use crate::upstream::{self, UpstreamClient};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use keyrelay_metrics::Metrics;
use keyrelay_pool::{classify, Acquire, Outcome, Store};
use std::sync::Arc;
use std::time::SystemTime;
use tokio::time::Instant;
use tracing::Instrument;

/// Everything a request needs, built once at start-up.
pub struct App {
    store: Arc<dyn Store>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    routes: Routes,
    auth: ClientAuth,
    client: UpstreamClient,
    upstream: UpstreamConfig,
    max_body: usize,
    metrics: Metrics,
    ids: RequestIds,
}

/// A request after the client-side steps: ready to send to any key.
struct Prepared {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

/// Why the key loop stopped without a response to pass on as is.
enum Failure {
    /// An upstream answer that asked for another key (kept to pass on if none is left).
    Answer(Response<Incoming>, Outcome),
    /// No answer at all.
    Error(ProxyError),
}

impl App {
    pub fn new(config: &Config, store: Arc<dyn Store>, metrics: Metrics) -> Result<App, String> {
        Ok(App {
            routes: Routes::new(config, store.clone())?,
            store,
            tls: config
                .server
                .tls
                .clone()
                .map(tokio_rustls::TlsAcceptor::from),
            auth: ClientAuth::new(&config.clients, config.server.allow_unauthenticated),
            client: upstream::client(&config.upstream),
            upstream: config.upstream.clone(),
            max_body: config.server.max_body_bytes,
            metrics,
            ids: RequestIds::new(),
        })
    }

    /// The listener's TLS acceptor, if TLS is configured (swapped with the config on reload).
    pub fn tls(&self) -> Option<&tokio_rustls::TlsAcceptor> {
        self.tls.as_ref()
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Failed or timed-out shared-store commands since start.
    pub fn store_errors(&self) -> u64 {
        self.store.errors()
    }

    /// Where pool state is kept right now (embedded, shared, or degraded).
    pub fn store_state(&self) -> keyrelay_pool::StoreState {
        self.store.state()
    }

    pub fn routes(&self) -> &Routes {
        &self.routes
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Serve one client request. Never fails: every error becomes a provider-shaped answer.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<ProxyBody> {
        let id = self.ids.next();
        let span = tracing::info_span!("request", id = %id);
        let log = RequestLog::new(id, self.metrics.clone());
        async move {
            let mut resp = self.serve(req, log).await;
            if let Ok(v) = HeaderValue::from_str(&id.to_string()) {
                resp.headers_mut().insert("x-keyrelay-request-id", v);
            }
            resp
        }
        .instrument(span)
        .await
    }

    async fn serve(&self, req: Request<Incoming>, mut log: RequestLog) -> Response<ProxyBody> {
        let (parts, body) = req.into_parts();
        let found = self.routes.find(parts.uri.path());
        let shape = found.map_or(ErrorShape::OpenAi, |(p, _)| p.shape);
        // Step 1: who is asking.
        let presented = presented_credentials(&parts.headers, parts.uri.query());
        let Some(client) = self.auth.authenticate(&presented) else {
            self.metrics
                .client_auth_failures
                .with_label_values(&[if presented.is_empty() {
                    "missing"
                } else {
                    "invalid"
                }])
                .inc();
            return log.error(ProxyError::Unauthorized, shape);
        };
        log.client(client);
        // Step 2: where it goes.
        let Some((provider, rest)) = found else {
            return log.error(ProxyError::UnknownRoute, shape);
        };
        let provider = provider.clone();
        log.provider(&provider.name);
        let query = parts.uri.query().and_then(query_without_key);
        let Ok(uri) = provider.upstream_uri(rest, query.as_deref()) else {
            return log.error(ProxyError::UnknownRoute, shape);
        };
        // Step 3: the body, buffered so another key can replay it.
        let declared = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let body = match buffer_request(body, declared, self.max_body).await {
            Ok(b) => b,
            Err(e) => return log.error(e, shape),
        };
        let mut headers = parts.headers;
        prepare_request_headers(&mut headers);
        let prepared = Prepared {
            method: parts.method,
            uri,
            headers,
            body,
        };
        // Step 4: keys in turn.
        self.forward(&provider, prepared, log).await
    }

    async fn forward(
        &self,
        provider: &Provider,
        req: Prepared,
        mut log: RequestLog,
    ) -> Response<ProxyBody> {
        let max = provider.max_attempts as usize;
        let mut tried: Vec<usize> = Vec::with_capacity(max);
        let mut last: Option<Failure> = None;
        let wait_until = Instant::now() + provider.max_wait;
        while tried.len() < max {
            let asked = Instant::now();
            let acquired = provider.pool.acquire(&tried).await;
            self.metrics
                .store_seconds
                .with_label_values(&["acquire"])
                .observe(asked.elapsed().as_secs_f64());
            let index = match acquired {
                Acquire::Key(i) => i,
                Acquire::Wait(d) if Instant::now() + d <= wait_until => {
                    tokio::time::sleep(d).await;
                    continue;
                }
                Acquire::Wait(d) if last.is_none() => {
                    return log.error(
                        ProxyError::AllKeysCooling { retry_after: d },
                        provider.shape,
                    );
                }
                Acquire::Wait(_) | Acquire::Exhausted => break,
            };
            tried.push(index);
            if tried.len() > 1 {
                let reason = match &last {
                    Some(Failure::Answer(_, o)) => o.label(),
                    _ => Outcome::TransportError.label(),
                };
                self.metrics
                    .retries
                    .with_label_values(&[&provider.name, reason])
                    .inc();
            }
            let key_name = provider.pool.key(index).map_or("", |k| k.name.as_str());
            log.attempt(key_name);
            let started = Instant::now();
            match upstream::send(
                &self.client,
                self.attempt(provider, &req, index),
                self.upstream.first_byte_timeout,
            )
            .await
            {
                Ok(resp) => {
                    let status = resp.status();
                    let outcome = classify(status, resp.headers(), SystemTime::now());
                    let waited = started.elapsed();
                    log.upstream_wait(waited);
                    self.metrics
                        .upstream_ttfb
                        .with_label_values(&[&provider.name])
                        .observe(waited.as_secs_f64());
                    provider.observe_remaining(index, resp.headers());
                    self.record_attempt(provider, index, Some(status.as_u16()), &outcome)
                        .await;
                    if !outcome.retryable() {
                        return self.pass_on(provider, resp, log);
                    }
                    tracing::debug!(
                        key = key_name,
                        outcome = outcome.label(),
                        "trying the next key"
                    );
                    last = Some(Failure::Answer(resp, outcome));
                }
                Err(e) => {
                    log.upstream_wait(started.elapsed());
                    self.record_attempt(provider, index, None, &Outcome::TransportError)
                        .await;
                    last = Some(Failure::Error(e));
                }
            }
        }
        match last {
            Some(Failure::Answer(_, Outcome::Unauthorized)) => {
                // Never pass a refused-key body on: providers echo part of the key in it.
                log.error(ProxyError::UpstreamRejectedKeys, provider.shape)
            }
            Some(Failure::Answer(resp, _)) => self.pass_on(provider, resp, log),
            Some(Failure::Error(e)) => log.error(e, provider.shape),
            None => log.error(ProxyError::NoUsableKey, provider.shape),
        }
    }

    /// The upstream request for one attempt: the prepared request plus this key's header.
    fn attempt(&self, provider: &Provider, req: &Prepared, index: usize) -> Request<Full<Bytes>> {
        let mut out = Request::new(Full::new(req.body.clone()));
        *out.method_mut() = req.method.clone();
        *out.uri_mut() = req.uri.clone();
        *out.headers_mut() = req.headers.clone();
        if let Some(value) = provider.key_value(index) {
            out.headers_mut()
                .insert(provider.auth_header.clone(), value.clone());
        }
        out
    }

    async fn record_attempt(
        &self,
        provider: &Provider,
        index: usize,
        status: Option<u16>,
        outcome: &Outcome,
    ) {
        if let Some(key) = provider.pool.key(index) {
            self.metrics
                .attempts
                .with_label_values(&[&provider.name, &key.name, outcome.label()])
                .inc();
        }
        if let Some(mark) = provider.pool.mark_for(outcome) {
            let reason = match mark {
                keyrelay_pool::Mark::Cool { reason, .. }
                | keyrelay_pool::Mark::Quarantine { reason, .. } => reason,
            };
            self.metrics
                .cooldowns
                .with_label_values(&[&provider.name, reason])
                .inc();
        }
        provider.pool.report(index, status, outcome).await;
    }

    /// Stream an upstream answer to the client, head first, body frame by frame.
    fn pass_on(
        &self,
        provider: &Provider,
        resp: Response<Incoming>,
        log: RequestLog,
    ) -> Response<ProxyBody> {
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        let sse = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if sse {
            parts
                .headers
                .insert("x-accel-buffering", HeaderValue::from_static("no"));
        }
        let hook = log.streaming(parts.status.as_u16(), &provider.name);
        Response::from_parts(
            parts,
            ProxyBody::streamed(body, self.upstream.idle_timeout, Some(hook)),
        )
    }
}
