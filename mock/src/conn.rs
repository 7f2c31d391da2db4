//! A mock connection that a fault can ask to end with a reset (RST) instead of a close (FIN).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Shared between a connection and the requests it serves.
#[derive(Debug, Default)]
pub(crate) struct ConnCtl {
    reset: AtomicBool,
}

impl ConnCtl {
    /// End this connection with a reset when it closes.
    pub(crate) fn reset(&self) {
        self.reset.store(true, Ordering::SeqCst);
    }
}

/// A TCP stream that, when dropped after [`ConnCtl::reset`], resets instead of closing.
pub(crate) struct FaultIo {
    inner: TcpStream,
    ctl: Arc<ConnCtl>,
}

impl FaultIo {
    pub(crate) fn new(inner: TcpStream, ctl: Arc<ConnCtl>) -> FaultIo {
        FaultIo { inner, ctl }
    }
}

impl Drop for FaultIo {
    fn drop(&mut self) {
        if self.ctl.reset.load(Ordering::SeqCst) {
            // A zero linger makes the close an RST; nothing is left to flush by then.
            let _ = self.inner.set_zero_linger();
        }
    }
}

impl AsyncRead for FaultIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for FaultIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.ctl.reset.load(Ordering::SeqCst) {
            // No FIN for a connection that is to be reset: the drop sends the RST.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}
