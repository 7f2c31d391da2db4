//! The tokens a WebSocket session used, read from the provider's messages as their bytes pass
//! to the client: each text message that reports usage (OpenAI Realtime's `response.done`, the
//! Responses API's `response.completed`, Gemini Live's `usageMetadata`) adds its own report,
//! read as [`crate::usage`] reads a JSON answer. The bytes are only looked at, never held back
//! or changed; of each message at most what `crate::usage` keeps of a record is kept. A message
//! sent compressed (`permessage-deflate` sets RSV1) cannot be read and counts nothing, which is
//! why the extension is not offered upstream where tokens count.

use crate::usage::{Format, Usage};

/// The longest frame head: 2 bytes, an 8-byte length, a 4-byte mask.
const MAX_HEAD: usize = 14;

/// Where the reader is in the frame stream.
#[derive(Debug)]
enum Part {
    /// In a frame's head: its bytes so far.
    Head { bytes: [u8; MAX_HEAD], have: usize },
    /// In a frame's payload: the bytes left, its mask and how far into it, whether the payload
    /// belongs to the message being read, and whether the frame ends its message.
    Payload {
        left: u64,
        mask: Option<[u8; 4]>,
        at: usize,
        read: bool,
        last: bool,
    },
}

/// Reads a session's server-to-client byte stream as WebSocket frames (RFC 6455 §5.2).
#[derive(Debug)]
pub struct Messages {
    part: Part,
    /// The text message in progress, when one is being read.
    message: Option<Usage>,
}

impl Default for Messages {
    fn default() -> Messages {
        Messages {
            part: Part::Head {
                bytes: [0; MAX_HEAD],
                have: 0,
            },
            message: None,
        }
    }
}

impl Messages {
    /// The next bytes from the provider: the tokens reported by the messages they complete.
    pub fn feed(&mut self, mut data: &[u8]) -> u64 {
        let mut tokens = 0;
        while !data.is_empty() {
            match &mut self.part {
                Part::Head { bytes, have } => {
                    let need = head_len(&bytes[..*have]);
                    let n = (need - *have).min(data.len());
                    bytes[*have..*have + n].copy_from_slice(&data[..n]);
                    *have += n;
                    data = &data[n..];
                    if *have == head_len(&bytes[..*have]) {
                        let head = *bytes;
                        tokens += self.start_frame(&head);
                    }
                }
                Part::Payload {
                    left,
                    mask,
                    at,
                    read,
                    last,
                } => {
                    let n = usize::try_from(*left).map_or(data.len(), |l| l.min(data.len()));
                    if *read {
                        if let Some(message) = &mut self.message {
                            feed_unmasked(message, &data[..n], *mask, *at);
                        }
                    }
                    *at = (*at + n) % 4;
                    *left -= n as u64;
                    data = &data[n..];
                    if *left == 0 {
                        let last = *last && *read;
                        tokens += self.end_frame(last);
                    }
                }
            }
        }
        tokens
    }

    /// A frame's head is whole: read its payload next (or end it now, when it has none).
    fn start_frame(&mut self, head: &[u8; MAX_HEAD]) -> u64 {
        let (fin, compressed, opcode) = (head[0] & 0x80 != 0, head[0] & 0x40 != 0, head[0] & 0x0f);
        let masked = head[1] & 0x80 != 0;
        let (len, ext) = match head[1] & 0x7f {
            126 => (u64::from(u16::from_be_bytes([head[2], head[3]])), 2),
            127 => {
                let mut b = [0; 8];
                b.copy_from_slice(&head[2..10]);
                (u64::from_be_bytes(b), 8)
            }
            n => (u64::from(n), 0),
        };
        let mask = masked.then(|| {
            let mut m = [0; 4];
            m.copy_from_slice(&head[2 + ext..6 + ext]);
            m
        });
        // Control frames (close, ping, pong) may come between a message's frames: skipped.
        let data = opcode & 0x08 == 0;
        if data && opcode != 0 {
            // A new message: read only text that is not compressed.
            self.message = (opcode == 1 && !compressed).then(|| Usage::new(Format::Json));
        }
        self.part = Part::Payload {
            left: len,
            mask,
            at: 0,
            read: data,
            last: fin,
        };
        if len == 0 {
            return self.end_frame(data && fin);
        }
        0
    }

    /// A frame's payload is whole: the message's tokens when it ended one.
    fn end_frame(&mut self, ends_message: bool) -> u64 {
        self.part = Part::Head {
            bytes: [0; MAX_HEAD],
            have: 0,
        };
        if !ends_message {
            return 0;
        }
        self.message.take().map_or(0, |mut m| m.finish())
    }
}

/// The length of the head that starts with `bytes`: 2 until its second byte says more.
fn head_len(bytes: &[u8]) -> usize {
    let Some(&b1) = bytes.get(1) else {
        return 2;
    };
    let ext = match b1 & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + ext + if b1 & 0x80 != 0 { 4 } else { 0 }
}

/// Feed `data` to `message`, unmasked with `mask` from its byte `at` (a provider's frames are
/// not masked; a client's would be).
fn feed_unmasked(message: &mut Usage, data: &[u8], mask: Option<[u8; 4]>, at: usize) {
    let Some(mask) = mask else {
        message.feed(data);
        return;
    };
    let mut buf = [0u8; 256];
    for (i, piece) in data.chunks(buf.len()).enumerate() {
        let start = at + i * buf.len();
        for (j, (b, out)) in piece.iter().zip(buf.iter_mut()).enumerate() {
            *out = b ^ mask[(start + j) % 4];
        }
        message.feed(&buf[..piece.len()]);
    }
}

#[cfg(test)]
#[path = "tokens_tests.rs"]
mod tests;
