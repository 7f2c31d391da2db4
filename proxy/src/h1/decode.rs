//! Request and response bodies' HTTP/1 framing, decoded off the front of a read buffer:
//! shared by keyrelay's own server path (request bodies) and its upstream client (answers).

use bytes::{Buf, Bytes, BytesMut};
use http_body::SizeHint;
use std::io;

/// How a body is framed on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    Empty,
    Length(u64),
    Chunked,
}

/// Most bytes of chunk extensions and trailers, in all, in one chunked body.
const MAX_CHUNK_META: usize = 16 * 1024;
/// Most hex digits in a chunk size (60 bits: its value fits a u64 with room to spare).
const MAX_SIZE_DIGITS: u8 = 15;

/// Where a chunked body's decoding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    /// Hex digits of the next chunk's size: its value so far and how many.
    Size(u64, u8),
    /// After the size: an extension, up to CR.
    Extension(u64),
    /// CR seen after the size line.
    SizeLf(u64),
    /// Bytes of chunk data still to come.
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    /// Inside a trailer line, up to LF.
    Trailer,
    /// CR of the final empty line seen.
    EndLf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Decode {
    Length(u64),
    Chunked(Chunk),
    Done,
}

/// Where a request body is: what is left of it, decoded off the front of a buffer.
#[derive(Debug)]
pub(crate) struct Decoder {
    decode: Decode,
    /// Chunk extension and trailer bytes seen so far.
    meta: usize,
}

fn invalid(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

impl Decoder {
    pub(crate) fn new(framing: Framing) -> Decoder {
        let decode = match framing {
            Framing::Empty => Decode::Done,
            Framing::Length(n) => Decode::Length(n),
            Framing::Chunked => Decode::Chunked(Chunk::Size(0, 0)),
        };
        Decoder { decode, meta: 0 }
    }

    pub(crate) fn done(&self) -> bool {
        self.decode == Decode::Done
    }

    /// The next piece of body taken off the front of `buf`: `Some(data)` (possibly empty, when
    /// only framing was consumed, or once the body has ended), or `None` when more bytes are
    /// needed.
    pub(crate) fn next(&mut self, buf: &mut BytesMut) -> io::Result<Option<Bytes>> {
        loop {
            match self.decode {
                Decode::Done => return Ok(Some(Bytes::new())),
                Decode::Length(rest) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let take = usize::try_from(rest).map_or(buf.len(), |r| r.min(buf.len()));
                    let left = rest - take as u64;
                    self.decode = if left == 0 {
                        Decode::Done
                    } else {
                        Decode::Length(left)
                    };
                    return Ok(Some(buf.split_to(take).freeze()));
                }
                Decode::Chunked(Chunk::Data(rest)) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let take = usize::try_from(rest).map_or(buf.len(), |r| r.min(buf.len()));
                    let left = rest - take as u64;
                    self.decode = Decode::Chunked(if left == 0 {
                        Chunk::DataCr
                    } else {
                        Chunk::Data(left)
                    });
                    return Ok(Some(buf.split_to(take).freeze()));
                }
                Decode::Chunked(state) => {
                    // Plain framing is read in one go; anything else is stepped through
                    // byte by byte in place, and taken off once.
                    if let Some((used, chunk)) = plain(state, buf) {
                        buf.advance(used);
                        self.decode = Decode::Chunked(chunk);
                        continue;
                    }
                    let (used, next) = self.steps(state, buf)?;
                    if used == 0 {
                        return Ok(None);
                    }
                    buf.advance(used);
                    self.decode = next;
                }
            }
        }
    }

    /// As [`Decoder::next`], but a chunked body's data comes in runs: the data of every chunk
    /// already in `buf` (the last one's as far as it came), moved together in place with the
    /// framing between them taken out, as one piece. A burst of small chunks read at once (an
    /// event stream's tokens, sent back to back) then passes on as one piece instead of one
    /// each; a chunk arriving on its own still passes on the moment it is read. Bad framing
    /// after some data fails the call after the one that hands that data on.
    pub(crate) fn next_run(&mut self, buf: &mut BytesMut) -> io::Result<Option<Bytes>> {
        if !matches!(self.decode, Decode::Chunked(_)) {
            return self.next(buf);
        }
        // The run is `buf[from..to]`: the first chunk's data where it lies, each later one's
        // moved up behind it. `read`: bytes of `buf` gone through.
        let (mut from, mut to, mut read) = (0, 0, 0);
        let failed = loop {
            let Decode::Chunked(state) = self.decode else {
                break None;
            };
            let here = &buf[read..];
            if let Chunk::Data(rest) = state {
                let take = usize::try_from(rest).map_or(here.len(), |r| r.min(here.len()));
                if take == 0 {
                    break None;
                }
                if to == from {
                    (from, to) = (read, read + take);
                } else {
                    buf.copy_within(read..read + take, to);
                    to += take;
                }
                read += take;
                let left = rest - take as u64;
                self.decode = Decode::Chunked(if left == 0 {
                    Chunk::DataCr
                } else {
                    Chunk::Data(left)
                });
                continue;
            }
            if here.is_empty() {
                break None;
            }
            let (used, next) = match plain(state, here) {
                Some((used, chunk)) => (used, Decode::Chunked(chunk)),
                None => match self.steps(state, here) {
                    Ok(stepped) => stepped,
                    Err(e) => break Some(e),
                },
            };
            read += used;
            self.decode = next;
        };
        match failed {
            Some(e) if to == from => return Err(e),
            _ if read == 0 => return Ok(self.done().then(Bytes::new)),
            _ => {}
        }
        let mut run = buf.split_to(read);
        run.truncate(to);
        run.advance(from);
        Ok(Some(run.freeze()))
    }

    /// Step through framing bytes at the front of `buf`, up to the next chunk's data or the
    /// body's end: how many were used, and where the decoding is then.
    fn steps(&mut self, mut state: Chunk, buf: &[u8]) -> io::Result<(usize, Decode)> {
        for (at, &b) in buf.iter().enumerate() {
            match self.step(state, b)? {
                None => return Ok((at + 1, Decode::Done)),
                Some(next @ Chunk::Data(_)) => return Ok((at + 1, Decode::Chunked(next))),
                Some(next) => state = next,
            }
        }
        Ok((buf.len(), Decode::Chunked(state)))
    }

    /// One framing byte of a chunked body; `None` once the body has ended.
    fn step(&mut self, state: Chunk, b: u8) -> io::Result<Option<Chunk>> {
        let meta = |r: &mut Decoder| {
            r.meta += 1;
            if r.meta > MAX_CHUNK_META {
                Err(invalid("chunk extensions or trailers too large"))
            } else {
                Ok(())
            }
        };
        Ok(Some(match (state, b) {
            (Chunk::Size(n, digits), _) if b.is_ascii_hexdigit() => {
                if digits >= MAX_SIZE_DIGITS {
                    return Err(invalid("chunk size too large"));
                }
                Chunk::Size(n * 16 + hex_value(b), digits + 1)
            }
            (Chunk::Size(n, d), b';' | b' ' | b'\t') if d > 0 => {
                meta(self)?;
                Chunk::Extension(n)
            }
            (Chunk::Size(n, d), b'\r') if d > 0 => Chunk::SizeLf(n),
            (Chunk::Extension(n), b'\r') => Chunk::SizeLf(n),
            (Chunk::Extension(n), b) if b != b'\n' => {
                meta(self)?;
                Chunk::Extension(n)
            }
            (Chunk::SizeLf(0), b'\n') => Chunk::TrailerStart,
            (Chunk::SizeLf(n), b'\n') => Chunk::Data(n),
            (Chunk::DataCr, b'\r') => Chunk::DataLf,
            (Chunk::DataLf, b'\n') => Chunk::Size(0, 0),
            (Chunk::TrailerStart, b'\r') => Chunk::EndLf,
            (Chunk::EndLf, b'\n') => return Ok(None),
            (Chunk::TrailerStart | Chunk::Trailer, b'\n') => Chunk::TrailerStart,
            (Chunk::TrailerStart | Chunk::Trailer, _) => {
                meta(self)?;
                Chunk::Trailer
            }
            _ => return Err(invalid("invalid chunked framing")),
        }))
    }
}

/// The framing at the front of `buf` when it has a plain form, read at once: the CRLF ending a
/// chunk's data, or a whole size line with no extension of a chunk that is not the last. The
/// bytes it takes and where the decoding is then; `None` for anything else (an extension, the
/// last chunk, trailers, bytes still to come, bad framing), which the byte-wise steps decide.
fn plain(state: Chunk, buf: &[u8]) -> Option<(usize, Chunk)> {
    match state {
        Chunk::DataCr if buf.starts_with(b"\r\n") => Some((2, Chunk::Size(0, 0))),
        Chunk::Size(0, 0) => plain_size_line(buf).map(|(used, size)| (used, Chunk::Data(size))),
        _ => None,
    }
}

/// A whole plain size line (hex digits, at most [`MAX_SIZE_DIGITS`] as in the byte-wise steps,
/// then CRLF) at the front of `buf`, of a chunk that is not the last: the bytes it takes and
/// the size.
fn plain_size_line(line: &[u8]) -> Option<(usize, u64)> {
    let most = usize::from(MAX_SIZE_DIGITS);
    let digits = line
        .iter()
        .take(most + 1)
        .take_while(|b| b.is_ascii_hexdigit())
        .count();
    if digits == 0 || digits > most || line.get(digits..digits + 2)? != b"\r\n" {
        return None;
    }
    let size = line[..digits]
        .iter()
        .fold(0u64, |n, &b| n * 16 + hex_value(b));
    (size > 0).then_some((digits + 2, size))
}

/// The value of an ASCII hex digit (the byte-wise steps and the plain size lines both read
/// digits with it).
fn hex_value(b: u8) -> u64 {
    u64::from(match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => (b | 0x20) - b'a' + 10,
    })
}

impl Decoder {
    /// What is left of a body framed by its length.
    pub(crate) fn length_left(&self) -> Option<u64> {
        match self.decode {
            Decode::Length(n) => Some(n),
            Decode::Chunked(_) | Decode::Done => None,
        }
    }

    /// The size of what is left: exact for a length (or an ended body), unknown for chunks.
    pub(crate) fn size_hint(&self) -> SizeHint {
        match self.decode {
            Decode::Done => SizeHint::with_exact(0),
            Decode::Length(n) => SizeHint::with_exact(n),
            Decode::Chunked(_) => SizeHint::new(),
        }
    }
}

/// A `Content-Length` value: ASCII digits only, at most 18 of them.
pub(crate) fn length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(value.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

/// A chunk's size line (`{hex}\r\n`) without the formatting machinery: the bytes, and how
/// many of them are used.
pub(crate) fn size_line(n: usize) -> ([u8; 18], usize) {
    let mut out = [0u8; 18];
    let digits = (usize::BITS - n.leading_zeros()).div_ceil(4).max(1) as usize;
    for (i, slot) in out.iter_mut().take(digits).enumerate() {
        let nibble = (n >> (4 * (digits - 1 - i))) & 0xf;
        *slot = b"0123456789abcdef"[nibble];
    }
    out[digits] = b'\r';
    out[digits + 1] = b'\n';
    (out, digits + 2)
}

/// Append the framing header line of a body of `length` bytes (`None`: chunked), as a head
/// that lacks one gets it, on either side of the proxy.
pub(crate) fn framing_line(out: &mut Vec<u8>, length: Option<u64>) {
    match length {
        Some(n) => {
            out.extend_from_slice(b"content-length: ");
            decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        None => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
}

/// Append `n` in decimal (without `core::fmt`).
fn decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    /// Everything `d` decodes from `input` fed `step` bytes at a time, and whether it ended.
    fn fed(input: &[u8], step: usize) -> (Vec<u8>, bool) {
        let mut d = Decoder::new(Framing::Chunked);
        let (mut buf, mut out) = (BytesMut::new(), Vec::new());
        for piece in input.chunks(step) {
            buf.extend_from_slice(piece);
            while let Some(data) = d.next(&mut buf).unwrap() {
                out.extend_from_slice(&data);
                if d.done() || buf.is_empty() {
                    break;
                }
            }
        }
        (out, d.done())
    }

    #[test]
    fn chunks_decode_alike_whole_or_byte_by_byte() {
        let input = b"5;a=b\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nx-t: 1\r\n\r\n";
        let want = (b"hello 0123456789".to_vec(), true);
        for step in [1, 2, 3, 7, input.len()] {
            assert_eq!(fed(input, step), want, "fed {step} at a time");
        }
        let mut d = Decoder::new(Framing::Chunked);
        let mut buf = BytesMut::from(&b"5\r\nhelloX\r\n"[..]);
        assert_eq!(&d.next(&mut buf).unwrap().unwrap()[..], b"hello");
        assert!(d.next(&mut buf).is_err(), "data must end with CRLF");
    }

    #[test]
    fn plain_size_lines_read_whole_decode_as_byte_by_byte() {
        let data = [b'x'; 0x1f];
        let mut input = b"1F\r\n".to_vec();
        input.extend_from_slice(&data);
        input.extend_from_slice(b"\r\naB\r\n");
        input.extend_from_slice(&[b'y'; 0xab]);
        input.extend_from_slice(b"\r\n00000000000001\r\nz\r\n0\r\n\r\n");
        let mut want = data.to_vec();
        want.extend_from_slice(&[b'y'; 0xab]);
        want.push(b'z');
        for step in [1, 2, 5, input.len()] {
            assert_eq!(
                fed(&input, step),
                (want.clone(), true),
                "fed {step} at a time"
            );
        }
        for bad in [
            &b"0000000000000001\r\nz\r\n"[..], // 16 digits
            b"5\r\nhello\n\r\n",               // data not ended by CRLF
            b"5\n\r\nhello\r\n",               // size line not ended by CRLF
            b"g\r\n",
        ] {
            let mut d = Decoder::new(Framing::Chunked);
            let mut buf = BytesMut::from(bad);
            let mut failed = false;
            for _ in 0..4 {
                match d.next(&mut buf) {
                    Err(_) => failed = true,
                    Ok(Some(_)) => continue,
                    Ok(None) => {}
                }
                break;
            }
            assert!(failed, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    /// Everything `d` decodes in runs from `input` fed `step` bytes at a time, the pieces it
    /// came in, and whether it ended.
    fn fed_in_runs(input: &[u8], step: usize) -> (Vec<u8>, usize, bool) {
        let mut d = Decoder::new(Framing::Chunked);
        let (mut buf, mut out, mut pieces) = (BytesMut::new(), Vec::new(), 0);
        for piece in input.chunks(step) {
            buf.extend_from_slice(piece);
            while let Some(data) = d.next_run(&mut buf).unwrap() {
                if !data.is_empty() {
                    pieces += 1;
                }
                out.extend_from_slice(&data);
                if d.done() || buf.is_empty() {
                    break;
                }
            }
        }
        (out, pieces, d.done())
    }

    #[test]
    fn runs_carry_every_chunk_already_read_in_one_piece() {
        let mut input = Vec::new();
        let mut want = Vec::new();
        for i in 0..20 {
            let event = format!("data: {{\"tok\":{i}}}\n\n");
            input.extend_from_slice(format!("{:x}\r\n{event}\r\n", event.len()).as_bytes());
            want.extend_from_slice(event.as_bytes());
        }
        input.extend_from_slice(b"0\r\n\r\n");
        assert_eq!(fed_in_runs(&input, input.len()), (want.clone(), 1, true));
        for step in [1, 2, 3, 7, 50] {
            let (out, pieces, done) = fed_in_runs(&input, step);
            assert_eq!((&out, done), (&want, true), "fed {step} at a time");
            assert!(pieces > 1, "fed {step} at a time: {pieces} pieces");
        }
        let odd = b"5;a=b\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nx-t: 1\r\n\r\n";
        for step in [1, 2, 3, 7, odd.len()] {
            let (out, _, done) = fed_in_runs(odd, step);
            assert_eq!((&out[..], done), (&b"hello 0123456789"[..], true), "{step}");
        }
    }

    #[test]
    fn a_run_before_bad_framing_is_handed_on_then_the_framing_fails() {
        let mut d = Decoder::new(Framing::Chunked);
        let mut buf = BytesMut::from(&b"3\r\nabc\r\n2\r\nde\r\nzz\r\n"[..]);
        assert_eq!(&d.next_run(&mut buf).unwrap().unwrap()[..], b"abcde");
        assert!(d.next_run(&mut buf).is_err(), "zz is no chunk size");
        let mut d = Decoder::new(Framing::Chunked);
        let mut buf = BytesMut::from(&b"5\r\nhelloX\r\n"[..]);
        assert_eq!(&d.next_run(&mut buf).unwrap().unwrap()[..], b"hello");
        assert!(d.next_run(&mut buf).is_err(), "data must end with CRLF");
        let mut d = Decoder::new(Framing::Length(4));
        let mut buf = BytesMut::from(&b"abcdef"[..]);
        assert_eq!(&d.next_run(&mut buf).unwrap().unwrap()[..], b"abcd");
        assert!(d.done());
    }

    #[test]
    fn size_lines_are_lowercase_hex() {
        for (n, want) in [
            (0, &b"0\r\n"[..]),
            (9, b"9\r\n"),
            (0xabc, b"abc\r\n"),
            (4096, b"1000\r\n"),
            (usize::MAX, b"ffffffffffffffff\r\n"),
        ] {
            let (line, len) = size_line(n);
            assert_eq!(&line[..len], want, "{n}");
        }
    }
}
