//! keyrelay's own upstream client: connections made by the connector (TCP, the egress tunnel,
//! TLS with ALPN), kept for the next request in a pool of this worker's own, found by
//! comparing the origin (no hashing, a lock only this worker takes, no task spawned per
//! request to hand a connection back).
//!
//! A kept HTTP/1 connection is spoken over by keyrelay's own exchange ([`super::wire`]) and
//! has no task of its own: the request it carries drives it, while awaiting the head and then
//! through the answer's body ([`UpstreamBody`]), so each chunk of a stream is read, decoded
//! and written by the one task serving the client. The body gives the connection back to its
//! origin's list once read to the end (dropped earlier, it closes the connection); a
//! connection whose answer still streams is not in the list, so it is never waited for. Taken
//! from the list, a connection is read once with no waker, which sees an upstream's close. An
//! HTTP/2 connection (hyper's) runs on a task of its own and is shared by every request to
//! its origin; a request hyper hands back unsent, because a connection closed under it, is
//! sent again on another (at most `MAX_RESENDS` times). WebSocket upgrades use hyper's
//! HTTP/1 client on a task of its own, and keep nothing.

use super::egress::{Bounded, EgressConnector};
use super::wire::{Wire, WireError};
use crate::body::AttemptBody;
use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{header, HeaderValue, Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::Connection as _;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tower_service::Service;

pub(super) type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Connector = Bounded<HttpsConnector<EgressConnector>>;
pub(super) type Io = hyper_rustls::MaybeHttpsStream<hyper_util::rt::TokioIo<tokio::net::TcpStream>>;
type Origins = Arc<Mutex<Vec<Origin>>>;

/// A kept connection unused this long is closed rather than reused: the provider may be
/// closing it at the same moment (hyper-util's pool used the same 90 s).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How many times a request hyper handed back unsent is sent again on another kept
/// connection (each failure also drops that connection), before it fails as not sent.
const MAX_RESENDS: u32 = 3;

/// Why a request got no response from the upstream.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No connection could be made (TCP, DNS, the egress tunnel, TLS, the HTTP handshake or
    /// the connect timeout): the request was not sent.
    #[error("could not connect to the upstream")]
    Connect(#[source] BoxError),
    /// The request had a connection; hyper's error says whether it was written.
    #[error("the upstream request failed")]
    Send(#[source] hyper::Error),
    /// The request had a kept HTTP/1 connection of keyrelay's own; `sent` says whether any
    /// byte of it was written.
    #[error("the upstream request failed")]
    Wire {
        sent: bool,
        #[source]
        source: WireError,
    },
    /// The request's URL has no scheme or authority (only a bug could make one).
    #[error("the upstream URL is not absolute")]
    NotAbsolute,
    /// No response head by the time the caller gave (connecting included).
    #[error("no response head in time")]
    HeadDue,
}

/// `f`'s output, or [`ClientError::HeadDue`] once `due` (if given) passed first.
async fn by<F: Future>(due: Option<Instant>, f: F) -> Result<F::Output, ClientError> {
    match due {
        Some(due) => (tokio::time::timeout_at(due, f).await).map_err(|_| ClientError::HeadDue),
        None => Ok(f.await),
    }
}

/// One way to send requests to an origin.
enum Tx {
    /// An HTTP/1 connection spoken over by keyrelay's own exchange, driven by the request it
    /// carries.
    Driven(Box<Driven>),
    /// An HTTP/1 connection on a task of its own (a client that keeps nothing: upgrades).
    H1(http1::SendRequest<AttemptBody>),
    H2(http2::SendRequest<AttemptBody>),
}

/// An HTTP/1 connection with no task of its own: whoever holds it drives it. That is the
/// request it carries, while awaiting the head and then in the answer's body (so each chunk
/// is read, handed over and written by one task), and nobody while it is kept idle.
struct Driven {
    wire: Wire,
    /// When a request's head is due, for the connection's life: moved on only when it fires
    /// before the head is due (or when a head is due sooner than it is set for). A timer made
    /// for each request went into the runtime's timer wheel and out again every time (about
    /// 1,000 instructions a request, callgrind); this one does so about once per
    /// `first_byte_timeout`. Firing while the connection is kept, it wakes the task that last
    /// waited for a head, which finds nothing to do.
    timer: Pin<Box<tokio::time::Sleep>>,
    /// When it was last given back.
    used: Instant,
    /// Where it is given back to.
    scheme: Scheme,
    authority: Authority,
    home: std::sync::Weak<Mutex<Vec<Origin>>>,
}

impl Driven {
    /// Whether it can take a request now: it has not closed, and nothing stray came.
    fn idle(&mut self) -> bool {
        self.wire.quiet()
    }

    /// Whether it was used within `idle` of `now` (else it is closed rather than reused).
    fn fresh(&self, now: Instant, idle: Duration) -> bool {
        now.saturating_duration_since(self.used) < idle
    }

    /// Send `req` and read the answer's head, due by `due` if given; the connection rides
    /// along in the answer's body.
    async fn send(
        mut self: Box<Self>,
        req: Request<AttemptBody>,
        due: Option<Instant>,
    ) -> Result<Response<UpstreamBody>, ClientError> {
        self.wire.start(req);
        if let Some(due) = due {
            if self.timer.is_elapsed() || self.timer.deadline() > due {
                self.timer.as_mut().reset(due);
            }
        }
        let head = std::future::poll_fn(|cx| {
            if let Poll::Ready(head) = self.wire.poll_head(cx) {
                return Poll::Ready(Some(head));
            }
            let Some(due) = due else {
                return Poll::Pending;
            };
            while self.timer.as_mut().poll(cx).is_ready() {
                if Instant::now() >= due {
                    return Poll::Ready(None);
                }
                self.timer.as_mut().reset(due);
            }
            Poll::Pending
        });
        let Some(head) = head.await else {
            return Err(ClientError::HeadDue);
        };
        match head {
            Ok(mut head) => {
                self.wire.body_of(&mut head);
                let done = self.wire.body_done();
                let inner = Inner::Own(Some(Lease::new(self)));
                Ok(Response::from_parts(
                    head.parts,
                    UpstreamBody { inner, done },
                ))
            }
            Err(source) => Err(ClientError::Wire {
                sent: self.wire.sent(),
                source,
            }),
        }
    }

    /// Keep it for the next request to its origin, if its exchange ended whole and the
    /// upstream keeps it.
    fn give_back(mut self: Box<Self>) {
        if !self.wire.reusable() {
            return;
        }
        let Some(home) = self.home.upgrade() else {
            return;
        };
        self.used = Instant::now();
        let mut origins = home.lock().unwrap_or_else(PoisonError::into_inner);
        Origin::of(&mut origins, &self.scheme, &self.authority)
            .h1
            .push(self);
    }
}

/// An upstream answer's body. Over a driven connection, the connection rides along: read
/// (and what is left of the request written) whenever the body is polled, and given back for
/// the next request once the body has been read to the end. Dropped before that, the
/// connection is closed with it.
pub struct UpstreamBody {
    inner: Inner,
    /// Read to its end (or failed).
    done: bool,
}

enum Inner {
    /// Over a connection on a task of its own (upgrades, HTTP/2).
    Hyper(Incoming),
    /// Over a driven connection, until its end.
    Own(Option<Lease>),
}

/// A driven connection lent to an answer's body. The mutex is never locked, only reached
/// through `&mut` (`get_mut`): it makes the body `Sync`, as answers are shared by reference,
/// though the request body inside the connection is not.
struct Lease(Mutex<Box<Driven>>);

impl Lease {
    fn new(d: Box<Driven>) -> Lease {
        Lease(Mutex::new(d))
    }

    fn get(&mut self) -> &mut Driven {
        self.0.get_mut().unwrap_or_else(PoisonError::into_inner)
    }

    fn give_back(self) {
        self.0
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
            .give_back();
    }
}

impl UpstreamBody {
    /// Whether polling for the next frame now would find nothing (see `Wire::nothing_ready`);
    /// `false` when unsure (an answer over a connection on a task of its own).
    pub fn nothing_ready(&mut self) -> bool {
        match &mut self.inner {
            Inner::Own(Some(lease)) => !self.done && lease.get().wire.nothing_ready(),
            Inner::Own(None) | Inner::Hyper(_) => false,
        }
    }

    /// Whether each frame is everything the upstream sent that was read (keyrelay's own
    /// HTTP/1 exchange hands on every chunk already read as one piece), so that holding a
    /// frame for the next one has nothing to gain.
    pub fn hands_on_runs(&self) -> bool {
        matches!(self.inner, Inner::Own(_))
    }

    /// An answer over a connection on a task of its own.
    fn unleased(resp: Response<Incoming>) -> Response<UpstreamBody> {
        resp.map(|inner| UpstreamBody {
            done: inner.is_end_stream(),
            inner: Inner::Hyper(inner),
        })
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let lease = match &mut this.inner {
            Inner::Hyper(inner) => {
                let frame = ready!(Pin::new(&mut *inner).poll_frame(cx));
                this.done = inner.is_end_stream();
                return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
            }
            Inner::Own(lease) => lease,
        };
        let Some(held) = lease else {
            return Poll::Ready(None);
        };
        let read = ready!(held.get().wire.poll_data(cx));
        let ended = match &read {
            Some(Ok(_)) => held.get().wire.body_done(),
            None | Some(Err(_)) => true,
        };
        if ended {
            this.done = true;
            // Given back only if it ended whole; else dropped, so closed.
            if let Some(held) = lease.take() {
                if !matches!(read, Some(Err(_))) {
                    held.give_back();
                }
            }
        }
        Poll::Ready(read.map(|r| r.map(Frame::data).map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Hyper(inner) => inner.size_hint(),
            Inner::Own(None) => SizeHint::with_exact(0),
            Inner::Own(Some(lease)) => lease
                .0
                .lock()
                .map_or_else(|_| SizeHint::new(), |d| d.wire.size_hint()),
        }
    }
}

impl Drop for UpstreamBody {
    /// A body its reader stopped at its last frame (a server does, when the body says it has
    /// ended) still gives its connection back.
    fn drop(&mut self) {
        if let Inner::Own(lease) = &mut self.inner {
            if let Some(lease) = lease.take() {
                if self.done {
                    lease.give_back();
                }
            }
        }
    }
}

/// The connections to one origin.
struct Origin {
    scheme: Scheme,
    authority: Authority,
    /// Idle HTTP/1 connections, the most recently used last.
    #[allow(
        clippy::vec_box,
        reason = "a connection moves between the pool and its request's body as a pointer"
    )]
    h1: Vec<Box<Driven>>,
    /// The HTTP/2 connection every request shares, once one was made.
    h2: Option<http2::SendRequest<AttemptBody>>,
}

impl Origin {
    fn is(&self, scheme: &Scheme, authority: &Authority) -> bool {
        self.authority == *authority && self.scheme == *scheme
    }

    /// The entry of `scheme` and `authority` among `origins`, added if there is none.
    fn of<'o>(
        origins: &'o mut Vec<Origin>,
        scheme: &Scheme,
        authority: &Authority,
    ) -> &'o mut Origin {
        let at = match origins.iter().position(|o| o.is(scheme, authority)) {
            Some(at) => at,
            None => {
                origins.push(Origin {
                    scheme: scheme.clone(),
                    authority: authority.clone(),
                    h1: Vec::new(),
                    h2: None,
                });
                origins.len() - 1
            }
        };
        &mut origins[at]
    }

    /// Drop (so close) the HTTP/1 connections unused for `idle`, or closed already. The
    /// HTTP/2 connection is dropped only once closed: its streams may outlive any one request.
    fn sweep(&mut self, now: Instant, idle: Duration) {
        self.h1.retain_mut(|d| d.fresh(now, idle) && d.idle());
        if self.h2.as_ref().is_some_and(http2::SendRequest::is_closed) {
            self.h2 = None;
        }
    }
}

/// An upstream client: one connector, and (unless it keeps nothing) its pool.
pub struct UpstreamClient {
    connector: Connector,
    /// Whether connections are kept after their request (WebSocket upgrades keep none).
    keep: bool,
    /// How long a kept connection may go unused and still be taken.
    idle: Duration,
    /// How often the sweeper closes the connections idle past `idle` (started with the
    /// first kept connection; it ends when the client is dropped).
    sweep_every: Duration,
    sweeping: std::sync::Once,
    origins: Origins,
}

impl UpstreamClient {
    pub(super) fn new(connector: Connector, keep: bool) -> UpstreamClient {
        UpstreamClient {
            connector,
            keep,
            idle: IDLE_TIMEOUT,
            sweep_every: IDLE_TIMEOUT / 3,
            sweeping: std::sync::Once::new(),
            origins: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Send `req` (absolute URL) and wait for the response head.
    pub async fn request(
        &self,
        req: Request<AttemptBody>,
    ) -> Result<Response<UpstreamBody>, ClientError> {
        self.request_by(req, None).await
    }

    /// [`UpstreamClient::request`], the head due by `due` if given ([`ClientError::HeadDue`]
    /// after that, connecting included).
    pub async fn request_by(
        &self,
        mut req: Request<AttemptBody>,
        due: Option<Instant>,
    ) -> Result<Response<UpstreamBody>, ClientError> {
        let uri = req.uri().clone();
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            return Err(ClientError::NotAbsolute);
        };
        if !req.headers().contains_key(header::HOST) {
            if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
                req.headers_mut().insert(header::HOST, host);
            }
        }
        let mut resends = 0;
        loop {
            let (tx, reused) = match self.checkout(scheme, authority) {
                Some(tx) => (tx, true),
                // Boxed: the handshakes' futures are large, and would otherwise be part of
                // (and copied with) every request's future, connecting or not.
                None => {
                    let connect = Box::pin(self.connect(&uri, scheme, authority));
                    (by(due, connect).await??, false)
                }
            };
            let sent = match tx {
                Tx::Driven(d) => return d.send(req, due).await,
                Tx::H1(mut tx) => {
                    origin_form(req.uri_mut());
                    let sent = by(due, tx.try_send_request(req)).await?;
                    sent.map(UpstreamBody::unleased)
                }
                Tx::H2(mut tx) => {
                    if !reused {
                        self.keep_h2(scheme, authority, &tx);
                    }
                    let sent = by(due, tx.try_send_request(req)).await?;
                    sent.map(UpstreamBody::unleased)
                }
            };
            match sent {
                Ok(resp) => return Ok(resp),
                Err(mut e) => match e.take_message() {
                    // A kept connection closed before the request was written: again,
                    // on another connection (a fresh one is not retried).
                    Some(mut back) if reused && resends < MAX_RESENDS => {
                        resends += 1;
                        *back.uri_mut() = uri.clone();
                        req = back;
                    }
                    _ => return Err(ClientError::Send(e.into_error())),
                },
            }
        }
    }

    /// A kept connection to the origin that can take a request now, if there is one.
    fn checkout(&self, scheme: &Scheme, authority: &Authority) -> Option<Tx> {
        if !self.keep {
            return None;
        }
        let mut origins = self.origins.lock().unwrap_or_else(PoisonError::into_inner);
        let origin = origins.iter_mut().find(|o| o.is(scheme, authority))?;
        if let Some(h2) = &origin.h2 {
            if !h2.is_closed() {
                return Some(Tx::H2(h2.clone()));
            }
            origin.h2 = None;
        }
        let now = Instant::now();
        while let Some(mut d) = origin.h1.pop() {
            if d.fresh(now, self.idle) && d.idle() {
                return Some(Tx::Driven(d));
            }
        }
        None
    }

    /// Share `tx`, a new HTTP/2 connection, with later requests to its origin.
    fn keep_h2(
        &self,
        scheme: &Scheme,
        authority: &Authority,
        tx: &http2::SendRequest<AttemptBody>,
    ) {
        if !self.keep {
            return;
        }
        let mut origins = self.origins.lock().unwrap_or_else(PoisonError::into_inner);
        Origin::of(&mut origins, scheme, authority).h2 = Some(tx.clone());
    }

    /// Close kept connections idle past the limit every `sweep_every`, on this runtime, for
    /// as long as the client lives, so that a pool that gets no more traffic does not hold
    /// its connections (and descriptors) until the provider closes them.
    fn start_sweeper(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let origins = Arc::downgrade(&self.origins);
        let (every, idle) = (self.sweep_every, self.idle);
        runtime.spawn(async move {
            let mut tick = tokio::time::interval_at(Instant::now() + every, every);
            loop {
                tick.tick().await;
                let Some(origins) = origins.upgrade() else {
                    return;
                };
                let now = Instant::now();
                let mut origins = origins.lock().unwrap_or_else(PoisonError::into_inner);
                for origin in origins.iter_mut() {
                    origin.sweep(now, idle);
                }
            }
        });
    }

    /// A new connection to `uri`'s origin, its HTTP handshake done: driven by its requests
    /// when it is kept, else on a task of its own.
    async fn connect(
        &self,
        uri: &Uri,
        scheme: &Scheme,
        authority: &Authority,
    ) -> Result<Tx, ClientError> {
        let mut connector = self.connector.clone();
        let io = connector
            .call(uri.clone())
            .await
            .map_err(ClientError::Connect)?;
        let h2 = io.connected().is_negotiated_h2();
        let handshake = |e: hyper::Error| ClientError::Connect(e.into());
        if h2 {
            let (mut tx, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await
                .map_err(handshake)?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
                }
            });
            tx.ready().await.map_err(handshake)?;
            return Ok(Tx::H2(tx));
        }
        if self.keep {
            self.sweeping.call_once(|| self.start_sweeper());
            let now = Instant::now();
            return Ok(Tx::Driven(Box::new(Driven {
                wire: Wire::new(io),
                timer: Box::pin(tokio::time::sleep_until(now)),
                used: now,
                scheme: scheme.clone(),
                authority: authority.clone(),
                home: Arc::downgrade(&self.origins),
            })));
        }
        let (tx, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(handshake)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream HTTP/1 connection ended");
            }
        });
        Ok(Tx::H1(tx))
    }
}

/// `uri` as an HTTP/1 request line wants it: path and query only.
fn origin_form(uri: &mut Uri) {
    let mut parts = http::uri::Parts::default();
    parts.path_and_query = uri.path_and_query().cloned();
    if parts.path_and_query.is_none() {
        *uri = Uri::default();
        return;
    }
    if let Ok(u) = Uri::from_parts(parts) {
        *uri = u;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};
    use hyper::body::Frame;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::TokioIo;
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::net::TcpListener;
    use tokio::sync::Notify;

    type Answer = http_body_util::combinators::BoxBody<Bytes, Infallible>;

    /// What the test upstream saw.
    #[derive(Default)]
    struct Seen {
        connections: AtomicUsize,
        /// Connections the client closed (or that ended).
        closed: AtomicUsize,
        requests: Mutex<Vec<(String, String)>>,
        /// Lets the body of a `/hold` answer end.
        release: Notify,
    }

    impl Seen {
        fn connections(&self) -> usize {
            self.connections.load(Ordering::SeqCst)
        }

        fn requests(&self) -> Vec<(String, String)> {
            self.requests
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        }
    }

    /// A listener on a free loopback port, and its address.
    async fn listen() -> (TcpListener, std::net::SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        (listener, addr)
    }

    /// The connections the upstream saw end, once they reach `n` (or after 5 s).
    async fn closed(seen: &Seen, n: usize) -> usize {
        let deadline = Instant::now() + Duration::from_secs(5);
        while seen.closed.load(Ordering::SeqCst) < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        seen.closed.load(Ordering::SeqCst)
    }

    /// An HTTP/1 upstream on port 0: `/hold` streams until released, `/close` answers with
    /// `Connection: close`, `/silent` never answers, `/slow` answers `ok` after 50 ms,
    /// anything else answers `ok` at once.
    async fn upstream() -> (String, Arc<Seen>) {
        let (listener, addr) = listen().await;
        let url = format!("http://{addr}");
        let seen = Arc::new(Seen::default());
        let s = seen.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                s.connections.fetch_add(1, Ordering::SeqCst);
                let (for_svc, ended) = (s.clone(), s.clone());
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let s = for_svc.clone();
                    async move {
                        match req.uri().path() {
                            "/silent" => std::future::pending::<()>().await,
                            "/slow" => tokio::time::sleep(Duration::from_millis(50)).await,
                            _ => {}
                        }
                        Ok::<_, Infallible>(answer(&s, &req))
                    }
                });
                let conn = hyper::server::conn::http1::Builder::new();
                let conn = conn.serve_connection(TokioIo::new(tcp), svc);
                tokio::spawn(async move {
                    let _ = conn.await;
                    ended.closed.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        (url, seen)
    }

    fn answer(s: &Arc<Seen>, req: &Request<Incoming>) -> Response<Answer> {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok());
        let seen = (req.uri().to_string(), host.unwrap_or_default().to_owned());
        s.requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(seen);
        let mut resp = Response::new(Full::new(Bytes::from_static(b"ok")).boxed());
        match req.uri().path() {
            "/hold" => {
                let s = s.clone();
                let last = futures_util::stream::once(async move {
                    s.release.notified().await;
                    Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"done")))
                });
                *resp.body_mut() = StreamBody::new(last).boxed();
            }
            "/close" => {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        resp
    }

    fn client(keep: bool) -> UpstreamClient {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let tls = rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        let egress = EgressConnector::new(http, &crate::config::Egress::default());
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(egress);
        let limit = Duration::from_secs(5);
        UpstreamClient::new(
            Bounded {
                inner: https,
                limit,
            },
            keep,
        )
    }

    fn get(url: &str) -> Request<AttemptBody> {
        let req = Request::get(url).body(AttemptBody::full(Bytes::new()));
        req.unwrap_or_else(|e| panic!("{e}"))
    }

    /// Let a `/hold` answer end, and read it whole.
    async fn release(seen: &Seen, held: Response<UpstreamBody>) -> Bytes {
        seen.release.notify_one();
        let body = held.into_body().collect().await;
        body.unwrap_or_else(|e| panic!("{e}")).to_bytes()
    }

    /// Send a GET and read the whole answer.
    async fn fetch(c: &UpstreamClient, url: &str) -> String {
        let resp = c.request(get(url)).await.unwrap_or_else(|e| panic!("{e}"));
        let body = resp
            .into_body()
            .collect()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        String::from_utf8_lossy(&body.to_bytes()).into_owned()
    }

    #[tokio::test]
    async fn sequential_requests_share_one_connection_in_origin_form_with_a_host() {
        let (url, seen) = upstream().await;
        let c = client(true);
        for _ in 0..3 {
            assert_eq!(fetch(&c, &format!("{url}/v1/chat?q=1")).await, "ok");
        }
        assert_eq!(seen.connections(), 1);
        let authority = url.trim_start_matches("http://").to_owned();
        let want = ("/v1/chat?q=1".to_owned(), authority);
        assert_eq!(seen.requests(), vec![want.clone(), want.clone(), want]);
    }

    /// Ask for `url`'s head, due `limit` from now; the error and how long it took.
    async fn timed(c: &UpstreamClient, url: &str, limit: Duration) -> (ClientError, Duration) {
        let asked = Instant::now();
        match c.request_by(get(url), Some(asked + limit)).await {
            Ok(_) => panic!("{url} answered"),
            Err(e) => (e, asked.elapsed()),
        }
    }

    /// Ask for `url`, due `limit` from now, and read the answer whole (keeping the connection).
    async fn fetch_by(c: &UpstreamClient, url: &str, limit: Duration) {
        let resp = c.request_by(get(url), Some(Instant::now() + limit)).await;
        let body = resp.unwrap_or_else(|e| panic!("{e}")).into_body();
        body.collect().await.unwrap_or_else(|e| panic!("{e}"));
    }

    #[tokio::test]
    async fn a_kept_connection_times_each_head_from_when_it_is_asked_for() {
        let (url, seen) = upstream().await;
        let c = client(true);
        let (silent, slow) = (format!("{url}/silent"), format!("{url}/slow"));
        let limit = Duration::from_millis(300);
        // Answered after 50 ms (so the timer is set while it waits); kept with its timer set
        // 300 ms on. 200 ms later the timer fires before the next head is due: it is moved
        // on, not obeyed (that would end this at ~100 ms).
        let first = Instant::now();
        fetch_by(&c, &slow, limit).await;
        tokio::time::sleep_until(first + Duration::from_millis(200)).await;
        let (e, took) = timed(&c, &silent, limit).await;
        assert!(matches!(e, ClientError::HeadDue), "{e:?}");
        assert!(took >= limit && took < limit * 3, "{took:?}");
        assert_eq!(seen.connections(), 1);
        // A connection whose timer is set 10 s on, and a head due sooner: the timer is
        // brought forward (else this would take 10 s).
        fetch_by(&c, &slow, Duration::from_secs(10)).await;
        let (e, took) = timed(&c, &silent, limit).await;
        assert!(matches!(e, ClientError::HeadDue), "{e:?}");
        assert!(took >= limit && took < limit * 3, "{took:?}");
        assert_eq!(
            seen.connections(),
            2,
            "the timed-out connection is not reused"
        );
    }

    #[tokio::test]
    async fn a_connection_whose_answer_still_streams_is_not_taken_then_is_reused() {
        let (url, seen) = upstream().await;
        let c = client(true);
        let held = c.request(get(&format!("{url}/hold"))).await;
        let held = held.unwrap_or_else(|e| panic!("{e}"));
        // The held answer's connection is busy: another request gets a second one at once.
        let a = format!("{url}/a");
        let other = tokio::time::timeout(Duration::from_secs(5), fetch(&c, &a)).await;
        assert_eq!(other.ok().as_deref(), Some("ok"));
        assert_eq!(seen.connections(), 2);
        assert_eq!(release(&seen, held).await, "done");
        // Both are idle now; neither is replaced.
        assert_eq!(fetch(&c, &format!("{url}/b")).await, "ok");
        assert_eq!(fetch(&c, &format!("{url}/c")).await, "ok");
        assert_eq!(seen.connections(), 2);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closes_is_not_reused() {
        let (url, seen) = upstream().await;
        let c = client(true);
        assert_eq!(fetch(&c, &format!("{url}/close")).await, "ok");
        assert_eq!(fetch(&c, &format!("{url}/close")).await, "ok");
        assert_eq!(seen.connections(), 2);
    }

    /// The connections two sequential requests through `c` opened.
    async fn connections_for_two(c: UpstreamClient) -> usize {
        let (url, seen) = upstream().await;
        assert_eq!(fetch(&c, &format!("{url}/a")).await, "ok");
        assert_eq!(fetch(&c, &format!("{url}/b")).await, "ok");
        seen.connections()
    }

    #[tokio::test]
    async fn a_connection_unused_past_the_idle_limit_is_not_reused() {
        let mut c = client(true);
        c.idle = Duration::ZERO;
        assert_eq!(connections_for_two(c).await, 2);
    }

    #[tokio::test]
    async fn the_sweeper_closes_connections_idle_past_the_limit_and_keeps_busy_ones() {
        let (url, seen) = upstream().await;
        let mut c = client(true);
        c.idle = Duration::from_millis(300);
        c.sweep_every = Duration::from_millis(50);
        let held = c.request(get(&format!("{url}/hold"))).await;
        let held = held.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(fetch(&c, &format!("{url}/a")).await, "ok");
        assert_eq!(seen.connections(), 2);
        // With no more requests, the idle one is closed; the one still answering is not.
        assert_eq!(closed(&seen, 1).await, 1);
        assert_eq!(release(&seen, held).await, "done");
        assert_eq!(fetch(&c, &format!("{url}/b")).await, "ok");
        assert_eq!(seen.connections(), 2, "the held connection, done, was kept");
    }

    #[tokio::test]
    async fn a_client_for_upgrades_keeps_no_connection() {
        assert_eq!(connections_for_two(client(false)).await, 2);
    }

    #[tokio::test]
    async fn origins_do_not_share_connections() {
        let (a, seen_a) = upstream().await;
        let (b, seen_b) = upstream().await;
        let c = client(true);
        for _ in 0..2 {
            assert_eq!(fetch(&c, &format!("{a}/x")).await, "ok");
            assert_eq!(fetch(&c, &format!("{b}/x")).await, "ok");
        }
        assert_eq!((seen_a.connections(), seen_b.connections()), (1, 1));
        assert_eq!((seen_a.requests().len(), seen_b.requests().len()), (2, 2));
    }

    /// An HTTP/1 upstream that answers each request's head at once, then reads the request
    /// body to its end and sends its length as the answer's body.
    async fn counting_upstream() -> (String, Arc<Seen>) {
        let (listener, addr) = listen().await;
        let seen = Arc::new(Seen::default());
        let s = seen.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                s.connections.fetch_add(1, Ordering::SeqCst);
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let count = futures_util::stream::once(async move {
                        let body = req.into_body().collect().await;
                        let n = body.map_or(0, |b| b.to_bytes().len());
                        Ok::<_, Infallible>(Frame::data(Bytes::from(n.to_string())))
                    });
                    Ok::<_, Infallible>(Response::new(StreamBody::new(count)))
                });
                let conn = hyper::server::conn::http1::Builder::new();
                tokio::spawn(conn.serve_connection(TokioIo::new(tcp), svc));
            }
        });
        (format!("http://{addr}"), seen)
    }

    #[tokio::test]
    async fn a_request_body_still_uploading_when_the_head_comes_is_sent_as_the_answer_is_read() {
        let (url, seen) = counting_upstream().await;
        let c = client(true);
        // Far more than loopback's socket buffers hold: most of it is still to be written
        // when the head comes, and only reading the answer drives the connection on.
        let size = 16 << 20;
        let mut req = get(&format!("{url}/count"));
        *req.body_mut() = AttemptBody::full(Bytes::from(vec![b'x'; size]));
        let resp = c.request(req).await.unwrap_or_else(|e| panic!("{e}"));
        let body = tokio::time::timeout(Duration::from_secs(20), resp.into_body().collect()).await;
        let body = body
            .expect("the upload went on")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(body.to_bytes(), size.to_string());
        assert_eq!(fetch(&c, &format!("{url}/count")).await, "0");
        assert_eq!(seen.connections(), 1, "the connection was kept after both");
    }

    #[tokio::test]
    async fn an_answer_dropped_before_its_end_closes_its_connection() {
        let (url, seen) = upstream().await;
        let c = client(true);
        let held = c.request(get(&format!("{url}/hold"))).await;
        drop(held.unwrap_or_else(|e| panic!("{e}")));
        assert_eq!(closed(&seen, 1).await, 1);
        assert_eq!(fetch(&c, &format!("{url}/a")).await, "ok");
        assert_eq!(seen.connections(), 2);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_while_idle_is_replaced_without_a_failure() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (listener, addr) = listen().await;
        let seen = Arc::new(Seen::default());
        let s = seen.clone();
        // Answers one request per connection, keep-alive by its headers, then closes.
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                s.connections.fetch_add(1, Ordering::SeqCst);
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.ends_with(b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                        _ => break,
                    }
                }
                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                let _ = tcp.write_all(answer).await;
                drop(tcp);
                s.closed.fetch_add(1, Ordering::SeqCst);
            }
        });
        let c = client(true);
        let url = format!("http://{addr}/x");
        assert_eq!(fetch(&c, &url).await, "ok");
        assert_eq!(closed(&seen, 1).await, 1);
        assert_eq!(fetch(&c, &url).await, "ok");
        assert_eq!(seen.connections(), 2);
    }

    #[tokio::test]
    async fn no_listener_is_a_connect_error_and_a_relative_url_is_refused() {
        let (listener, addr) = listen().await;
        drop(listener);
        let c = client(true);
        let e = c.request(get(&format!("http://{addr}/x"))).await.err();
        assert!(matches!(e, Some(ClientError::Connect(_))), "{e:?}");
        let e = c.request(get("/x")).await.err();
        assert!(matches!(e, Some(ClientError::NotAbsolute)), "{e:?}");
    }
}
