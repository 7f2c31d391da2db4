//! The listeners: what each connection serves, graceful shutdown, and reload (which refuses
//! what only a restart can apply). Connection limits live in `connection.rs`.

use crate::body::ClientBody;
use crate::config::Config;
use crate::connection::{self, accept_until, Gate, Limits};
use crate::service::{App, Peer};
use crate::workers::Workers;
use crate::ReloadError;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use keyrelay_metrics::ReloadResult;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::sync::{PoisonError, RwLock};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The app currently serving, swapped whole on reload, and whether we are draining.
/// A request holds the `Arc<App>` it started with, so a reload never touches it.
pub struct Live {
    app: RwLock<Arc<App>>,
    draining: AtomicBool,
    bound: Bound,
}

/// What the process started with that a reload cannot change: the sockets are bound once,
/// and their connection limits and drain time are read once.
#[derive(Clone, Copy, Debug)]
struct Bound {
    listen: SocketAddr,
    admin_listen: SocketAddr,
    tls: bool,
    limits: (Duration, Duration, u32, Duration),
    workers: usize,
}

/// The `[server]` fields read only at start, in the order of `Bound::limits`.
const READ_AT_START: [&str; 5] = [
    "server.header_read_timeout",
    "server.keepalive_timeout",
    "server.max_connections",
    "server.shutdown_grace",
    "server.workers",
];

impl Bound {
    fn of(config: &Config) -> Bound {
        let s = &config.server;
        Bound {
            listen: s.listen,
            admin_listen: config.admin.listen,
            tls: s.tls.is_some(),
            limits: (
                s.header_read_timeout,
                s.keepalive_timeout,
                s.max_connections,
                s.shutdown_grace,
            ),
            workers: s.workers,
        }
    }

    /// The fields of `new` that differ from the start but apply only after a restart.
    fn unapplied(&self, new: &Config) -> Vec<&'static str> {
        let new = Bound::of(new);
        let (a, b) = (self.limits, new.limits);
        let changed = [
            a.0 != b.0,
            a.1 != b.1,
            a.2 != b.2,
            a.3 != b.3,
            self.workers != new.workers,
        ];
        READ_AT_START
            .iter()
            .zip(changed)
            .filter_map(|(f, c)| c.then_some(*f))
            .collect()
    }

    /// Every field of `new` that a reload must refuse, with why.
    fn refusals(&self, new: &Config) -> Vec<Refusal> {
        let mut out = Vec::new();
        let mut refuse = |field, why: String| out.push(Refusal { field, why });
        let restart = "only a restart can re-bind";
        if new.server.listen != self.listen {
            let why = format!("{restart} (listening on {})", self.listen);
            refuse("server.listen", why);
        }
        if new.admin.listen != self.admin_listen {
            let why = format!("{restart} (listening on {})", self.admin_listen);
            refuse("admin.listen", why);
        }
        if new.server.tls.is_some() != self.tls {
            let now = if self.tls { "on" } else { "off" };
            refuse("server.tls_cert", format!("TLS is {now}; {restart}"));
        }
        let open = new.clients.is_empty() && new.server.allow_unauthenticated;
        if open && !self.listen.ip().is_loopback() {
            let why = format!(
                "would serve the non-loopback {} without tokens",
                self.listen
            );
            refuse("server.allow_unauthenticated", why);
        }
        out
    }
}

/// A field a reload may not change, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub field: &'static str,
    pub why: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.why)
    }
}

impl Live {
    /// The live state of a process started with `config` (whose listeners it pins).
    pub fn new(app: Arc<App>, config: &Config) -> Arc<Live> {
        Arc::new(Live {
            app: RwLock::new(app),
            draining: AtomicBool::new(false),
            bound: Bound::of(config),
        })
    }

    pub fn app(&self) -> Arc<App> {
        self.app
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Build an app from `config` on the same store and metrics, and swap it in. Keys kept
    /// keep their state (the store aligns by fingerprint); removed keys get no new requests.
    /// Listener addresses, TLS on or off, connection limits and the store itself change only
    /// with a restart: a file changing the first two is refused, naming each field (so is one
    /// that would open the bound socket to clients without a token); changed limits are
    /// logged as waiting for a restart.
    pub fn reload(&self, config: &Config) -> Result<(), ReloadError> {
        let current = self.app();
        let refused = self.bound.refusals(config);
        let result = if refused.is_empty() {
            App::new(config, current.shared().clone()).map_err(ReloadError::from)
        } else {
            Err(ReloadError::Refused(refused))
        };
        current.metrics().reload(if result.is_ok() {
            ReloadResult::Success
        } else {
            ReloadResult::Failure
        });
        let app = result?;
        *self.app.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(app);
        tracing::info!("configuration reloaded");
        let unapplied = self.bound.unapplied(config);
        if !unapplied.is_empty() {
            tracing::warn!(fields = ?unapplied, "changed, but applied only after a restart");
        }
        Ok(())
    }
}

/// A running proxy listener.
pub struct Running {
    addr: SocketAddr,
    live: Arc<Live>,
    stop: watch::Sender<Option<Duration>>,
    task: JoinHandle<()>,
    admin: Option<(SocketAddr, JoinHandle<()>)>,
    shutdown_grace: Duration,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some((_, task)) = &self.admin {
            task.abort();
        }
    }
}

impl Running {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The app serving now.
    pub fn app(&self) -> Arc<App> {
        self.live.app()
    }

    pub fn live(&self) -> &Arc<Live> {
        &self.live
    }

    /// The drain time configured at start (`server.shutdown_grace`).
    pub fn shutdown_grace(&self) -> Duration {
        self.shutdown_grace
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|(a, _)| *a)
    }

    pub(crate) fn with_admin(mut self, addr: SocketAddr, task: JoinHandle<()>) -> Running {
        self.admin = Some((addr, task));
        self
    }

    /// Drain: readiness turns 503 at once, the listener closes, open requests and streams get
    /// up to `grace` to finish. Returns when they have (or the grace ran out).
    pub async fn shutdown(mut self, grace: Duration) {
        self.live.set_draining();
        let _ = self.stop.send(Some(grace));
        let task = std::mem::replace(&mut self.task, tokio::spawn(async {}));
        let _ = task.await;
    }

    /// Run until the accept loop ends (it ends only on shutdown).
    pub async fn wait(mut self) {
        let task = std::mem::replace(&mut self.task, tokio::spawn(async {}));
        let _ = task.await;
    }

    pub fn stopper(&self) -> watch::Sender<Option<Duration>> {
        self.stop.clone()
    }
}

/// Serve `app` on `listener` within `limits` until told to stop: on `workers` threads of
/// their own (see `workers.rs`), or on the calling runtime when `workers` is 0.
pub fn serve(
    listener: TcpListener,
    live: Arc<Live>,
    limits: Limits,
    shutdown_grace: Duration,
    workers: usize,
) -> std::io::Result<Running> {
    let addr = listener.local_addr()?;
    let (stop, stopped) = watch::channel(None);
    let gate = Gate::new(limits.max_connections, live.app().metrics().clone());
    let workers = match workers {
        0 => None,
        n => Some(Workers::start(n)?),
    };
    let served = live.clone();
    let task = tokio::spawn(async move {
        let builder = Arc::new(limits.builder());
        let (drain, draining) = watch::channel(false);
        let grace = accept_until(
            &listener,
            &gate,
            asked_to_stop(stopped),
            |stream, permit| {
                let (live, builder, draining) = (served.clone(), builder.clone(), draining.clone());
                let Some(workers) = &workers else {
                    tokio::spawn(async move {
                        serve_connection(stream, &live, &builder, limits, draining, permit).await;
                    });
                    return;
                };
                // Registered again with the worker's own I/O driver, so its readiness wakes
                // that thread and no other.
                let Ok(stream) = stream.into_std() else {
                    return;
                };
                workers.spawn(async move {
                    let Ok(stream) = TcpStream::from_std(stream) else {
                        return;
                    };
                    serve_connection(stream, &live, &builder, limits, draining, permit).await;
                });
            },
        )
        .await;
        drop(listener);
        let _ = drain.send(true);
        if tokio::time::timeout(grace, gate.closed()).await.is_err() {
            tracing::warn!(
                grace_secs = grace.as_secs(),
                "connections still open after the grace period; closing"
            );
        }
        // Ends the worker threads, cutting whatever they still serve.
        drop(workers);
    });
    Ok(Running {
        addr,
        live,
        stop,
        task,
        admin: None,
        shutdown_grace,
    })
}

/// The grace period once `stopped` carries one (zero if its sender is gone).
async fn asked_to_stop(mut stopped: watch::Receiver<Option<Duration>>) -> Duration {
    match stopped.wait_for(Option::is_some).await {
        Ok(grace) => grace.unwrap_or_default(),
        Err(_) => Duration::ZERO,
    }
}

/// Serve one accepted client connection (TLS first when configured), within `limits` from
/// now: the handshake shares the header timeout, so a silent client cannot hold it open.
async fn serve_connection(
    stream: TcpStream,
    live: &Arc<Live>,
    builder: &auto::Builder<TokioExecutor>,
    limits: Limits,
    draining: watch::Receiver<bool>,
    permit: connection::Permit,
) {
    let opened = Instant::now();
    let _ = stream.set_nodelay(true);
    let tls = live.app().tls().cloned();
    let peer = stream.peer_addr().ok().map(Peer);
    let live = live.clone();
    // A WebSocket session outlives its connection's task: it keeps the permit and the drain.
    let hold = crate::websocket::Hold::new(permit, draining.clone());
    let handle = move |mut req: hyper::Request<ClientBody>| {
        if req.headers().contains_key(hyper::header::UPGRADE) {
            req.extensions_mut().insert(hold.clone());
        }
        live.app().handle(req, peer)
    };
    match tls {
        None => crate::h1::serve(builder, stream, handle, limits, draining).await,
        // Boxed: a TLS connection's state (the handshake, then rustls's session beside hyper's)
        // is about 2.4 KB larger, and inline it would size every plain connection's task too.
        Some(acceptor) => {
            Box::pin(async move {
                let deadline = opened + limits.header_read_timeout;
                let Ok(Ok(tls)) = tokio::time::timeout_at(deadline, acceptor.accept(stream)).await
                else {
                    return;
                };
                let io = TokioIo::new(tls);
                connection::drive(builder, io, handle, opened, limits, draining).await;
            })
            .await;
        }
    }
}

/// Serve the admin API on `listener`, within `limits`, until the process ends.
pub fn serve_admin(
    listener: TcpListener,
    admin: Arc<crate::admin::Admin>,
    limits: Limits,
    metrics: keyrelay_metrics::Metrics,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let gate = Gate::new(limits.max_connections, metrics);
        let builder = Arc::new(limits.builder());
        // Never sent: the admin listener lives until the process ends.
        let (_never, draining) = watch::channel(false);
        let forever = std::future::pending::<()>();
        accept_until(&listener, &gate, forever, |stream, permit| {
            let (admin, builder, draining) = (admin.clone(), builder.clone(), draining.clone());
            tokio::spawn(async move {
                let handle = move |req| admin.clone().handle(req);
                connection::drive_tcp(&builder, stream, handle, limits, draining).await;
                drop(permit);
            });
        })
        .await;
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use crate::config::MapEnv;

    fn config(server: &str) -> Config {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{server}\n[[clients]]\nname = \"t\"\ntoken = \"env:T\"\n[[providers]]\nname = \"openai\"\nbase_url = \"http://127.0.0.1:1/v1\"\nkeys = \"env:K_*\"\n"
        );
        let env = MapEnv::default().with("T", "token-t").with("K_1", "key-1");
        Config::from_toml_str(&text, &env).unwrap()
    }

    #[test]
    fn limits_changed_by_a_reload_are_named_as_waiting_for_a_restart() {
        let bound = Bound::of(&config(""));
        assert!(bound.unapplied(&config("")).is_empty());
        let changed = config("keepalive_timeout = \"5s\"\nmax_connections = 7\nworkers = 9");
        assert_eq!(
            bound.unapplied(&changed),
            [
                "server.keepalive_timeout",
                "server.max_connections",
                "server.workers"
            ]
        );
        assert!(bound.refusals(&changed).is_empty());
    }
}
