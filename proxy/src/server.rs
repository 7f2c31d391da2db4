//! The listener: accept loop, per-connection HTTP/1.1 and HTTP/2, graceful shutdown.

use crate::config::Config;
use crate::service::{App, Peer};
use crate::ReloadError;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use keyrelay_metrics::ReloadResult;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::sync::{PoisonError, RwLock};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The app currently serving, swapped whole on reload, and whether we are draining.
/// A request holds the `Arc<App>` it started with, so a reload never touches it.
pub struct Live {
    app: RwLock<Arc<App>>,
    draining: AtomicBool,
}

impl Live {
    pub fn new(app: Arc<App>) -> Arc<Live> {
        Arc::new(Live {
            app: RwLock::new(app),
            draining: AtomicBool::new(false),
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
    /// Listener addresses and the store itself change only with a restart.
    pub fn reload(&self, config: &Config) -> Result<(), ReloadError> {
        let current = self.app();
        let result = App::new(config, current.shared().clone());
        current.metrics().reload(if result.is_ok() {
            ReloadResult::Success
        } else {
            ReloadResult::Failure
        });
        let app = result?;
        *self.app.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(app);
        tracing::info!("configuration reloaded");
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

/// Serve `app` on `listener` until told to stop.
pub fn serve(
    listener: TcpListener,
    live: Arc<Live>,
    header_read_timeout: Duration,
    shutdown_grace: Duration,
) -> std::io::Result<Running> {
    let addr = listener.local_addr()?;
    let (stop, mut stopped) = watch::channel(None);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        // Each connection's read buffer: hyper's default (~400 KiB) times a thousand clients
        // outweighs the whole body budget. 16 KiB also caps a request head (431 beyond).
        .max_buf_size(16 * 1024);
    builder.http2().timer(TokioTimer::new());
    let served = live.clone();
    let task = tokio::spawn(async move {
        let graceful = GracefulShutdown::new();
        let grace = loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _peer)) = accepted else { continue };
                    serve_connection(stream, &served, &builder, graceful.watcher(), header_read_timeout);
                }
                changed = stopped.changed() => {
                    if changed.is_err() { break Duration::ZERO; }
                    if let Some(grace) = *stopped.borrow() { break grace; }
                }
            }
        };
        drop(listener);
        if tokio::time::timeout(grace, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                grace_secs = grace.as_secs(),
                "connections still open after the grace period; closing"
            );
        }
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

/// Serve one accepted client connection (TLS first when configured) on its own task, watched
/// for graceful shutdown.
fn serve_connection(
    stream: tokio::net::TcpStream,
    live: &Arc<Live>,
    builder: &auto::Builder<TokioExecutor>,
    watcher: hyper_util::server::graceful::Watcher,
    header_read_timeout: Duration,
) {
    let _ = stream.set_nodelay(true);
    let tls = live.app().tls().cloned();
    let live = live.clone();
    let peer = stream.peer_addr().ok().map(Peer);
    let service = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        if let Some(peer) = peer {
            req.extensions_mut().insert(peer);
        }
        let app = live.app();
        async move { Ok::<_, Infallible>(app.handle(req).await) }
    });
    let builder = builder.clone();
    tokio::spawn(async move {
        let result = match tls {
            None => {
                watcher
                    .watch(builder.serve_connection(TokioIo::new(stream), service))
                    .await
            }
            Some(acceptor) => {
                // The handshake shares the header timeout: a silent client cannot hold it open.
                let Ok(Ok(tls)) =
                    tokio::time::timeout(header_read_timeout, acceptor.accept(stream)).await
                else {
                    return;
                };
                watcher
                    .watch(builder.serve_connection(TokioIo::new(tls), service))
                    .await
            }
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    });
}

/// Serve the admin API on `listener` until the process ends.
pub fn serve_admin(listener: TcpListener, admin: Arc<crate::admin::Admin>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let admin = admin.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.handle(req).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}
