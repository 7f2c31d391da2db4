//! Writing a response on keyrelay's own HTTP/1 path: the head with the first frames that are
//! ready, then every frame as it comes (what is ready at once goes in one write), chunked or
//! by length; a body that fails or falls short leaves the answer visibly cut.

use super::head::Out;
use crate::body::ProxyBody;
use bytes::Bytes;
use futures_util::FutureExt;
use http_body_util::BodyExt;
use std::io::{self, IoSlice};
use tokio::net::tcp::OwnedWriteHalf;

/// Data frames up to this size are copied next to their framing; larger ones are written from
/// where they are.
const COPY_UP_TO: usize = 4 * 1024;
/// Most bytes gathered from ready frames before they are written.
const GATHER_UP_TO: usize = 256 * 1024;
/// Least the gathering buffer grows by when it must.
const GROW_BY: usize = 4 * 1024;
/// Most of the gathering buffer kept between writes.
const KEEP: usize = 1024;
/// Most uncopied frames in one write.
const MAX_UNCOPIED: usize = 64;

/// Why an answer did not go out whole.
#[derive(Debug)]
pub(super) enum Cut {
    /// The socket failed (the client went away).
    Io,
    /// The body failed or did not match its length: the connection must close unterminated.
    Body,
}

impl From<io::Error> for Cut {
    fn from(_: io::Error) -> Cut {
        Cut::Io
    }
}

/// What is gathered for one write: small pieces in one buffer, large frames beside it (each
/// with the offset in `small` it goes before), and how the body is framed.
#[derive(Debug, Default)]
struct Gathered {
    small: Vec<u8>,
    large: Vec<(usize, Bytes)>,
    large_bytes: usize,
    chunked: bool,
    /// Bytes the declared length still allows (unbounded when chunked).
    left: u64,
}

impl Gathered {
    fn is_empty(&self) -> bool {
        self.small.is_empty() && self.large.is_empty()
    }

    fn full(&self) -> bool {
        self.small.len() + self.large_bytes >= GATHER_UP_TO || self.large.len() >= MAX_UNCOPIED
    }

    /// Frame one piece of the body; `false` when it went past the declared length (it is cut
    /// there).
    fn push(&mut self, mut data: Bytes) -> bool {
        let mut fits = true;
        // Framing (a size line and CRLF: at most 20 bytes) and a copied piece. The buffer
        // grows by GROW_BY at least: a burst of small chunks reallocates it once, not at each
        // doubling from the head's 512 bytes. An empty one starts small (a token's chunk).
        let copied = if data.len() <= COPY_UP_TO {
            data.len()
        } else {
            0
        };
        let adds = 20 + copied;
        if self.small.capacity() - self.small.len() < adds {
            let first = self.small.capacity() == 0;
            self.small
                .reserve(adds.max(if first { KEEP / 2 } else { GROW_BY }));
        }
        if self.chunked {
            let (line, n) = super::decode::size_line(data.len());
            self.small.extend_from_slice(&line[..n]);
        } else {
            if data.len() as u64 > self.left {
                data.truncate(usize::try_from(self.left).unwrap_or(usize::MAX));
                fits = false;
            }
            self.left -= data.len() as u64;
        }
        self.data(data);
        if self.chunked {
            self.small.extend_from_slice(b"\r\n");
        }
        fits
    }

    fn data(&mut self, data: Bytes) {
        if data.len() <= COPY_UP_TO {
            self.small.extend_from_slice(&data);
        } else {
            self.large_bytes += data.len();
            self.large.push((self.small.len(), data));
        }
    }

    /// Write everything gathered, then empty it.
    async fn write(&mut self, stream: &OwnedWriteHalf) -> io::Result<()> {
        if self.large.is_empty() {
            write_all(stream, &mut [IoSlice::new(&self.small)]).await?;
        } else {
            let mut slices = Vec::with_capacity(self.large.len() * 2 + 1);
            let mut at = 0;
            for (offset, data) in &self.large {
                if *offset > at {
                    slices.push(IoSlice::new(&self.small[at..*offset]));
                }
                slices.push(IoSlice::new(data));
                at = *offset;
            }
            if at < self.small.len() {
                slices.push(IoSlice::new(&self.small[at..]));
            }
            write_all(stream, &mut slices).await?;
        }
        self.small.clear();
        if self.small.capacity() > KEEP {
            // Grown by a burst: not kept for the rest of a stream whose tokens come apart.
            self.small = Vec::new();
        }
        self.large.clear();
        self.large_bytes = 0;
        Ok(())
    }
}

/// Write all of `slices`, waiting for the socket when it is full.
async fn write_all(stream: &OwnedWriteHalf, mut slices: &mut [IoSlice<'_>]) -> io::Result<()> {
    while !slices.is_empty() {
        match stream.try_write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => stream.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// How gathering the frames that are ready ended.
enum Gather {
    /// Nothing more is ready yet, or enough is gathered: write it and go on.
    More,
    Ended,
    /// The body failed, or went past its length.
    Failed,
}

/// Gather the body's frames, framed: waiting for the first only when nothing is gathered yet,
/// then taking what is ready without waiting (and without asking, when the body knows nothing
/// is).
async fn gather(wire: &mut Gathered, body: &mut ProxyBody) -> Gather {
    while !wire.full() {
        let next = if wire.is_empty() {
            body.frame().await
        } else if body.nothing_ready() {
            return Gather::More;
        } else {
            match body.frame().now_or_never() {
                Some(next) => next,
                None => return Gather::More,
            }
        };
        match next {
            None => return Gather::Ended,
            Some(Err(_)) => return Gather::Failed,
            // Trailers are not sent.
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    if !data.is_empty() && !wire.push(data) {
                        return Gather::Failed;
                    }
                }
            }
        }
    }
    Gather::More
}

/// Send `head` and then `body` framed as `out`. The body is dropped as soon as it has ended
/// or failed, before its last bytes are written (as hyper's server did): whatever its drop
/// records (the access log, the metrics) is done by the time the client has the whole answer.
pub(super) async fn send(
    stream: &OwnedWriteHalf,
    head: Vec<u8>,
    mut body: ProxyBody,
    out: Out,
) -> Result<(), Cut> {
    let mut wire = Gathered {
        small: head,
        chunked: out == Out::Chunked,
        left: match out {
            Out::Length(n) => n,
            Out::None | Out::Chunked => u64::MAX,
        },
        ..Gathered::default()
    };
    if out == Out::None {
        drop(body);
        return Ok(wire.write(stream).await?);
    }
    let how = loop {
        match gather(&mut wire, &mut body).await {
            Gather::More => wire.write(stream).await?,
            how => break how,
        }
    };
    drop(body);
    if matches!(how, Gather::Ended) && wire.chunked {
        wire.small.extend_from_slice(b"0\r\n\r\n");
    }
    wire.write(stream).await?;
    match how {
        // Short of its length: the client must not see it as whole.
        Gather::Ended if wire.chunked || wire.left == 0 => Ok(()),
        _ => Err(Cut::Body),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    #[tokio::test]
    async fn a_burst_grows_the_buffer_once_and_a_grown_one_goes_after_its_write() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (_read, write) = server.into_split();
        let mut head = Vec::with_capacity(512);
        head.extend_from_slice(b"HTTP/1.1 200 OK\r\n\r\n");
        let mut wire = Gathered {
            small: head,
            chunked: true,
            left: u64::MAX,
            ..Gathered::default()
        };
        let mut capacities = Vec::new();
        for _ in 0..20 {
            assert!(wire.push(Bytes::from_static(&[b'x'; 100])));
            capacities.push(wire.small.capacity());
        }
        capacities.dedup();
        assert_eq!(capacities.len(), 2, "grown once: {capacities:?}");
        wire.write(&write).await.unwrap();
        assert_eq!(wire.small.capacity(), 0, "a grown buffer is not kept");
        assert!(wire.push(Bytes::from_static(b"data: 1\n\n")));
        wire.write(&write).await.unwrap();
        let kept = wire.small.capacity();
        assert!(kept > 0 && kept <= KEEP, "a token's buffer is kept: {kept}");
        drop(write);
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        let mut want = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        for _ in 0..20 {
            want.extend_from_slice(b"64\r\n");
            want.extend_from_slice(&[b'x'; 100]);
            want.extend_from_slice(b"\r\n");
        }
        want.extend_from_slice(b"9\r\ndata: 1\n\n\r\n");
        assert_eq!(got, want, "every byte, in order, framed");
    }
}
