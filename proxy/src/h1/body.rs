//! A request body read straight off the client's socket by keyrelay's own HTTP/1 path, by
//! whoever polls it (no channel between tasks); the reader goes back to the connection when
//! the body ends or is dropped, with whatever bytes came after it.

use super::decode::{Decoder, Framing};
use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::oneshot;

/// Most bytes read from the socket at once for a body.
const READ_CHUNK: usize = 16 * 1024;
/// The connection's reading half and read buffer, with where the request's body is.
#[derive(Debug)]
pub(super) struct Reader {
    pub stream: OwnedReadHalf,
    pub buf: BytesMut,
    decoder: Decoder,
}

impl Reader {
    pub(super) fn new(stream: OwnedReadHalf, buf: BytesMut, framing: Framing) -> Reader {
        Reader {
            stream,
            buf,
            decoder: Decoder::new(framing),
        }
    }

    pub(super) fn done(&self) -> bool {
        self.decoder.done()
    }

    fn decode(&mut self) -> io::Result<Option<Bytes>> {
        self.decoder.next(&mut self.buf)
    }

    /// Read more from the socket into the buffer; `Ok(0)` at end of stream. (A short read
    /// tells tokio the socket is drained, so waiting for the next bytes costs no system call.)
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let want = match self.decoder.length_left() {
            Some(n) => usize::try_from(n).map_or(READ_CHUNK, |n| n.min(READ_CHUNK)),
            None => READ_CHUNK,
        };
        if self.buf.capacity() - self.buf.len() < want.min(1024) {
            self.buf.reserve(want);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.buf)
    }

    /// Decode what can be read without waiting, up to `limit` bytes of body, throwing the body
    /// away: whether it then ended (so the connection can serve on).
    pub(super) fn drain_now(&mut self, limit: usize) -> bool {
        let mut seen = 0;
        loop {
            match self.decode() {
                Err(_) => return false,
                Ok(Some(data)) => {
                    if self.done() {
                        return true;
                    }
                    seen += data.len();
                    if seen > limit {
                        return false;
                    }
                }
                Ok(None) => {
                    if self.buf.capacity() - self.buf.len() < 1024 {
                        self.buf.reserve(READ_CHUNK);
                    }
                    match self.stream.try_read_buf(&mut self.buf) {
                        Ok(n) if n > 0 => {}
                        _ => return false,
                    }
                }
            }
        }
    }
}

/// A request body read by whoever polls it.
#[derive(Debug)]
pub struct OwnBody {
    reader: Option<Reader>,
    back: Option<oneshot::Sender<Reader>>,
}

impl OwnBody {
    pub(super) fn new(reader: Reader, back: oneshot::Sender<Reader>) -> OwnBody {
        OwnBody {
            reader: Some(reader),
            back: Some(back),
        }
    }

    /// Give the reader back to the connection (at the body's end, or when it is dropped).
    fn give_back(&mut self) {
        if let (Some(reader), Some(back)) = (self.reader.take(), self.back.take()) {
            let _ = back.send(reader);
        }
    }
}

impl Drop for OwnBody {
    fn drop(&mut self) {
        self.give_back();
    }
}

impl Body for OwnBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        loop {
            let Some(reader) = this.reader.as_mut() else {
                return Poll::Ready(None);
            };
            match reader.decode() {
                Err(e) => {
                    this.reader = None;
                    return Poll::Ready(Some(Err(e)));
                }
                Ok(Some(data)) => {
                    if reader.done() {
                        this.give_back();
                    }
                    if !data.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Ok(None) => match ready!(reader.poll_fill(cx)) {
                    Ok(0) => {
                        this.reader = None;
                        return Poll::Ready(Some(Err(io::ErrorKind::UnexpectedEof.into())));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        this.reader = None;
                        return Poll::Ready(Some(Err(e)));
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.reader.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        self.reader
            .as_ref()
            .map_or(SizeHint::with_exact(0), |r| r.decoder.size_hint())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;

    /// A connected pair: the client's end (with the server's writing half, kept open), and a
    /// reader over the server's end holding `buf`.
    async fn pair(
        buf: &[u8],
        framing: Framing,
    ) -> ((TcpStream, tokio::net::tcp::OwnedWriteHalf), Reader) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (read, write) = server.into_split();
        let reader = Reader::new(read, BytesMut::from(buf), framing);
        ((client, write), reader)
    }

    #[tokio::test]
    async fn a_chunked_body_is_decoded_across_reads_and_what_follows_goes_back() {
        let ((mut client, _w), reader) = pair(b"5;ext=1\r\nhel", Framing::Chunked).await;
        let (tx, rx) = oneshot::channel();
        let body = OwnBody::new(reader, tx);
        let send = async {
            client.write_all(b"lo\r\n0\r\n").await.unwrap();
            client.write_all(b"x-t: 1\r\n\r\nGET /next").await.unwrap();
        };
        let (got, ()) = tokio::join!(body.collect(), send);
        assert_eq!(&got.unwrap().to_bytes()[..], b"hello");
        let back = rx.await.unwrap();
        assert!(back.done());
        // The rest may still be on its way; what came back is a prefix of it.
        assert!(b"GET /next".starts_with(&back.buf));
    }

    #[tokio::test]
    async fn a_length_body_ends_at_its_length_and_is_given_back_at_once() {
        let (_client, reader) = pair(b"abcdefGET", Framing::Length(6)).await;
        let (tx, mut rx) = oneshot::channel();
        let mut body = OwnBody::new(reader, tx);
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "abcdef");
        assert!(body.is_end_stream(), "no further poll needed");
        let back = rx.try_recv().unwrap();
        assert_eq!(&back.buf[..], b"GET");
    }

    #[tokio::test]
    async fn bad_framing_and_a_cut_body_are_errors() {
        for bad in [
            &b"zz\r\n"[..],
            b"5\nhello",
            b"5\r\nhelloXX",
            b"ffffffffffffffff\r\n",
        ] {
            let (_client, reader) = pair(bad, Framing::Chunked).await;
            let (tx, _rx) = oneshot::channel();
            let got = OwnBody::new(reader, tx).collect().await;
            assert!(got.is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let ((client, _w), reader) = pair(b"abc", Framing::Length(6)).await;
        drop(client);
        let (tx, _rx) = oneshot::channel();
        let err = OwnBody::new(reader, tx).collect().await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn a_dropped_body_goes_back_unfinished_and_drains_what_is_there() {
        let (_client, reader) = pair(b"3\r\nabc\r\n0\r\n\r\nnext", Framing::Chunked).await;
        let (tx, rx) = oneshot::channel();
        drop(OwnBody::new(reader, tx));
        let mut back = rx.await.unwrap();
        assert!(!back.done());
        assert!(back.drain_now(1024));
        assert_eq!(&back.buf[..], b"next");
        let (_client, reader) = pair(b"abc", Framing::Length(1000)).await;
        let (tx, rx) = oneshot::channel();
        drop(OwnBody::new(reader, tx));
        assert!(!rx.await.unwrap().drain_now(1024), "the rest is not here");
    }
}
