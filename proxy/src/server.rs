//! The listener: accept loop, per-connection HTTP/1.1 and HTTP/2, graceful shutdown.

use crate::service::App;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running proxy listener.
pub struct Running {
    addr: SocketAddr,
    app: Arc<App>,
    stop: watch::Sender<Option<Duration>>,
    task: JoinHandle<()>,
}

impl Running {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// Stop accepting, let open connections finish for up to `grace`, then return.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.stop.send(Some(grace));
        let _ = self.task.await;
    }

    /// Run until the accept loop ends (it ends only on shutdown).
    pub async fn wait(self) {
        let _ = self.task.await;
    }

    pub fn stopper(&self) -> watch::Sender<Option<Duration>> {
        self.stop.clone()
    }
}

/// Serve `app` on `listener` until told to stop.
pub fn serve(
    listener: TcpListener,
    app: Arc<App>,
    header_read_timeout: Duration,
) -> std::io::Result<Running> {
    let addr = listener.local_addr()?;
    let (stop, mut stopped) = watch::channel(None);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let served = app.clone();
    let task = tokio::spawn(async move {
        let graceful = GracefulShutdown::new();
        let grace = loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _peer)) = accepted else { continue };
                    let _ = stream.set_nodelay(true);
                    let app = served.clone();
                    let service = service_fn(move |req| {
                        let app = app.clone();
                        async move { Ok::<_, Infallible>(app.handle(req).await) }
                    });
                    let builder = builder.clone();
                    let watcher = graceful.watcher();
                    tokio::spawn(async move {
                        let conn = builder.serve_connection(TokioIo::new(stream), service);
                        if let Err(e) = watcher.watch(conn).await {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                    });
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
        app,
        stop,
        task,
    })
}
