//! Connection limits on both listeners: how many connections may be open, how long each may
//! stay silent or idle, how accept errors are survived, and the fixed HTTP/1 and HTTP/2 limits.
//!
//! Every connection is bounded in time from accept. Until its first request head has been
//! read (TLS handshake and HTTP/1-or-2 detection included) it has `header_read_timeout`, then
//! it is dropped. Afterwards, whenever no request is in flight, it has `keepalive_timeout`;
//! then it is asked to close (HTTP/1 closes at once, HTTP/2 gets a GOAWAY) and dropped if it
//! has not after another `header_read_timeout`. Later HTTP/1 request heads are bounded by
//! hyper's own `header_read_timeout`, HTTP/2 peers by keep-alive pings. (Plain HTTP/1.1
//! connections are served by `crate::h1`, with the same timeouts, until it hands them here.)

use crate::body::{ClientBody, ProxyBody};
use crate::config::ServerConfig;
use crate::woken::WhenWoken;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use keyrelay_metrics::Metrics;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Largest HTTP/1 request head (request line and headers); more gets 431. Also each
/// connection's read buffer: hyper's default (~400 KiB) times a thousand clients outweighs
/// the whole body budget (Node's default head limit is 16 KiB too).
pub const H1_MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most headers in an HTTP/1 request; more gets 431.
pub const H1_MAX_HEADERS: usize = 100;
/// Streams one HTTP/2 connection may have open at once.
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 100;
/// Largest HTTP/2 header list (decoded), advertised in SETTINGS and enforced by h2.
pub const H2_MAX_HEADER_LIST_BYTES: u32 = 64 * 1024;
/// HTTP/2 keep-alive: a ping this often, and the connection dropped when one goes unanswered
/// this long, so a vanished peer does not hold a stream (and its upstream request) forever.
pub const H2_PING_INTERVAL: Duration = Duration::from_secs(20);
pub const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);
/// Connections the admin listener accepts at once (scrapes, probes, the dashboard).
pub const ADMIN_MAX_CONNECTIONS: u32 = 64;
/// Descriptors kept back from the proxy listener's cap: the admin listener's, upstream and
/// store connections, files.
const FD_RESERVE: u64 = ADMIN_MAX_CONNECTIONS as u64 + 192;
/// Accept errors that are not the connection's own: the first wait, and the most.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_millis(100);
/// A repeated warning is written at most this often.
const LOG_EVERY: Duration = Duration::from_secs(1);

/// The time and count bounds of one listener's connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub max_connections: u32,
}

impl Limits {
    /// The proxy listener's limits: `[server]`, with `max_connections` lowered to what the
    /// open-file limit leaves (logged when it is).
    pub fn proxy(server: &ServerConfig) -> Limits {
        let configured = server.max_connections;
        let max_connections = fd_cap(open_file_limit(), configured);
        if max_connections < configured {
            tracing::warn!(
                configured,
                max_connections,
                "server.max_connections lowered to fit the open-file limit (ulimit -n)"
            );
        }
        Limits {
            header_read_timeout: server.header_read_timeout,
            keepalive_timeout: server.keepalive_timeout,
            max_connections,
        }
    }

    /// The admin listener's limits: the same timeouts, its own small cap.
    pub fn admin(server: &ServerConfig) -> Limits {
        Limits {
            header_read_timeout: server.header_read_timeout,
            keepalive_timeout: server.keepalive_timeout,
            max_connections: ADMIN_MAX_CONNECTIONS,
        }
    }

    /// hyper's connection builder with every limit set explicitly.
    pub fn builder(&self) -> auto::Builder<TokioExecutor> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout)
            .max_buf_size(H1_MAX_HEAD_BYTES)
            .max_headers(H1_MAX_HEADERS)
            // One buffer per write instead of an iovec per chunk piece: a 20-chunk SSE answer
            // went out in ~8 writev calls (hyper's queue flushes at 16 iovecs), now in ~1.
            .writev(false);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
            .max_header_list_size(H2_MAX_HEADER_LIST_BYTES)
            .keep_alive_interval(H2_PING_INTERVAL)
            .keep_alive_timeout(H2_PING_TIMEOUT);
        builder
    }
}

/// `configured`, lowered to what a soft open-file limit of `limit` leaves after the reserve
/// (but never below half the limit, nor below one).
fn fd_cap(limit: Option<u64>, configured: u32) -> u32 {
    let Some(limit) = limit else {
        return configured;
    };
    let budget = limit.saturating_sub(FD_RESERVE).max(limit / 2).max(1);
    u32::try_from(budget).map_or(configured, |b| configured.min(b))
}

/// The soft open-file limit, where the platform says (Linux's `/proc/self/limits`).
fn open_file_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The cap on open connections, shared by a listener's accept loop and its connections.
#[derive(Clone)]
pub struct Gate {
    permits: Arc<Semaphore>,
    max: u32,
    metrics: Metrics,
}

/// One open connection's place under the cap; counted in `keyrelay_open_connections`.
pub struct Permit {
    _permit: OwnedSemaphorePermit,
    metrics: Metrics,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.metrics.connection_closed();
    }
}

impl Gate {
    pub fn new(max: u32, metrics: Metrics) -> Gate {
        Gate {
            permits: Arc::new(Semaphore::new(max as usize)),
            max,
            metrics,
        }
    }

    fn enter(&self) -> Option<Permit> {
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        self.metrics.connection_opened();
        Some(Permit {
            _permit: permit,
            metrics: self.metrics.clone(),
        })
    }

    /// Wait until every connection has closed.
    pub async fn closed(&self) {
        let _ = self.permits.acquire_many(self.max).await;
    }
}

/// A warning written at most once a second, with how many were held back in between.
struct Throttled {
    last: Option<Instant>,
    held: u64,
}

impl Throttled {
    const fn new() -> Throttled {
        Throttled {
            last: None,
            held: 0,
        }
    }

    /// Whether to write now; if so, how many were held back since the last one.
    fn due(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            self.held += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held))
    }
}

/// Accept-error handling: errors of one connection are skipped; any other (out of
/// descriptors, out of memory) is logged at most once a second and waited out with a growing
/// pause, so a listener never spins.
struct AcceptErrors {
    backoff: Duration,
    log: Throttled,
}

impl AcceptErrors {
    const fn new() -> AcceptErrors {
        AcceptErrors {
            backoff: ACCEPT_BACKOFF_MIN,
            log: Throttled::new(),
        }
    }

    fn accepted(&mut self) {
        self.backoff = ACCEPT_BACKOFF_MIN;
    }

    /// How long to wait before accepting again after `e` (zero: at once).
    fn failed(&mut self, e: &io::Error) -> Duration {
        use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset, Interrupted};
        if matches!(
            e.kind(),
            ConnectionAborted | ConnectionRefused | ConnectionReset | Interrupted
        ) {
            return Duration::ZERO;
        }
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(ACCEPT_BACKOFF_MAX);
        if let Some(held) = self.log.due() {
            let wait_ms = wait.as_millis();
            tracing::error!(error = %e, held, wait_ms, "accept failed; pausing the listener");
        }
        wait
    }
}

/// Accept connections on `listener` until `stop` completes, returning its output. Each one
/// under the cap goes to `serve` with its permit; one over it is closed at once and counted.
pub async fn accept_until<F: Future>(
    listener: &TcpListener,
    gate: &Gate,
    stop: F,
    mut serve: impl FnMut(TcpStream, Permit),
) -> F::Output {
    tokio::pin!(stop);
    let mut errors = AcceptErrors::new();
    let mut refusals = Throttled::new();
    loop {
        let accepted = tokio::select! {
            biased;
            out = &mut stop => return out,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                errors.accepted();
                match gate.enter() {
                    Some(permit) => serve(stream, permit),
                    None => refuse(stream, gate, &mut refusals),
                }
            }
            Err(e) => {
                let wait = errors.failed(&e);
                tokio::select! {
                    biased;
                    out = &mut stop => return out,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// Close a connection over the cap at once (RST, no lingering in TIME_WAIT) and count it.
fn refuse(stream: TcpStream, gate: &Gate, log: &mut Throttled) {
    let _ = stream.set_zero_linger();
    drop(stream);
    gate.metrics.connection_refused();
    if let Some(held) = log.due() {
        let max_connections = gate.max;
        tracing::warn!(
            max_connections,
            held,
            "connection refused: the listener's cap is reached"
        );
    }
}

/// Requests in flight on one connection, whether any has started, and when the last one
/// ended. The watchdog reads it when its timer fires; a request starting or ending wakes
/// nobody (so the connection task is not polled again for it).
#[derive(Debug, Default)]
struct Busy(Mutex<BusyState>);

#[derive(Clone, Copy, Debug, Default)]
struct BusyState {
    started: bool,
    in_flight: u32,
    /// When `in_flight` last dropped to zero.
    idle_since: Option<Instant>,
}

impl Busy {
    fn update(&self, f: impl FnOnce(&mut BusyState)) {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner));
    }

    fn get(&self) -> BusyState {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Counts one request as in flight until its response body is dropped.
struct InFlight(Arc<Busy>);

impl InFlight {
    fn start(busy: &Arc<Busy>) -> InFlight {
        busy.update(|b| {
            b.started = true;
            b.in_flight += 1;
        });
        InFlight(busy.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.update(|b| {
            b.in_flight = b.in_flight.saturating_sub(1);
            if b.in_flight == 0 {
                b.idle_since = Some(Instant::now());
            }
        });
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted as in flight until it is dropped.
    pub struct Tracked {
        #[pin]
        inner: ProxyBody,
        in_flight: InFlight,
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = <ProxyBody as Body>::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Why the watchdog ended a connection's wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expiry {
    /// No request head arrived within `header_read_timeout` of accept.
    Silent,
    /// No request in flight for the idle limit.
    Idle,
}

/// Wait until the connection opened at `opened` has been silent too long, or idle for
/// `idle_limit`; never while a request is in flight. One timer, re-armed only when it fires
/// (to when the connection can next expire), so requests cost the watchdog nothing.
async fn expired(busy: &Busy, opened: Instant, limits: &Limits, idle_limit: Duration) -> Expiry {
    let mut at = opened + limits.header_read_timeout.min(idle_limit);
    loop {
        tokio::time::sleep_until(at).await;
        let state = busy.get();
        let now = Instant::now();
        let (due, why) = if !state.started {
            (opened + limits.header_read_timeout, Some(Expiry::Silent))
        } else if state.in_flight > 0 {
            // Look again once a request ending now could have idled out.
            (now + idle_limit, None)
        } else {
            let since = state.idle_since.unwrap_or(opened);
            (since + idle_limit, Some(Expiry::Idle))
        };
        match why {
            Some(why) if now >= due => return why,
            _ => at = due,
        }
    }
}

/// Resolves once `drain` says to shut down; never if it has no sender left.
pub(crate) async fn draining(drain: &mut watch::Receiver<bool>) {
    if drain.wait_for(|d| *d).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Serve one connection with `handle`, within `limits` from `opened`, until it ends, the
/// watchdog drops it, or `drain` asks it to finish what is in flight and close.
pub async fn drive<I, H, F>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    handle: H,
    opened: Instant,
    limits: Limits,
    mut drain: watch::Receiver<bool>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    H: Fn(Request<ClientBody>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let busy = Arc::new(Busy::default());
    let watch = busy.clone();
    let service = service_fn(move |req| {
        let in_flight = InFlight::start(&busy);
        // Boxed: hyper keeps a slot the size of this future in every connection, idle ones
        // included; boxed, the request's state (several KB) lives only while it is served.
        let response = Box::pin(handle(req.map(ClientBody::Hyper)));
        async move {
            let mut response = response.await;
            response.body_mut().prime().await;
            Ok::<_, Infallible>(response.map(|inner| Tracked { inner, in_flight }))
        }
    });
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let mut closing = false;
    let mut idle_limit = limits.keepalive_timeout;
    loop {
        // Polled only when its timer or the drain signal woke the task, not on every frame.
        let watchdog = WhenWoken::new(async {
            tokio::select! {
                () = draining(&mut drain), if !closing => None,
                why = expired(&watch, opened, &limits, idle_limit) => Some(why),
            }
        });
        let expiry = tokio::select! {
            biased;
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            expiry = watchdog => expiry,
        };
        if let Some(why) = expiry {
            if why == Expiry::Silent || closing {
                tracing::debug!(?why, "connection closed by its timeout");
                return;
            }
        }
        // Draining, or idle too long: finish what is in flight, then close.
        conn.as_mut().graceful_shutdown();
        (closing, idle_limit) = (true, limits.header_read_timeout);
    }
}

/// Serve `stream` as plain HTTP: [`drive`] over tokio's socket.
pub async fn drive_tcp<H, F>(
    builder: &auto::Builder<TokioExecutor>,
    stream: TcpStream,
    handle: H,
    limits: Limits,
    drain: watch::Receiver<bool>,
) where
    H: Fn(Request<ClientBody>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let opened = Instant::now();
    drive(builder, TokioIo::new(stream), handle, opened, limits, drain).await;
}

#[cfg(test)]
#[path = "connection_tests.rs"]
mod tests;
