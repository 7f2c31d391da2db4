//! Read buffers kept for reuse by the connections of one worker thread: a client connection
//! waiting for its next request, or an upstream one waiting within a held stream for its next
//! token, holds none, and the one that reads next takes a spare one rather than allocating (a
//! 4 KiB or 8 KiB allocation and its free on every request, or every streamed token, otherwise).

use bytes::BytesMut;
use std::cell::RefCell;

/// Most spare buffers kept per thread of each kind (64 of 4 KiB and 64 of 8 KiB: 768 KiB at
/// most).
const MAX_SPARE: usize = 64;

/// What a buffer reads, which sets its usual size.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Reads {
    /// A client connection's requests (heads, and the bodies after them).
    Requests,
    /// An upstream connection's answers.
    Answers,
}

impl Reads {
    /// The usual size of a buffer for these reads.
    pub(crate) const fn size(self) -> usize {
        match self {
            Reads::Requests => 4 * 1024,
            Reads::Answers => 8 * 1024,
        }
    }
}

thread_local! {
    /// Spare buffers, by [`Reads`].
    static SPARE: RefCell<[Vec<BytesMut>; 2]> = const { RefCell::new([Vec::new(), Vec::new()]) };
}

/// Put a spare buffer in `buf` when it has no allocation and this thread has one.
pub(crate) fn reuse(buf: &mut BytesMut, reads: Reads) {
    if buf.capacity() == 0 {
        if let Some(spare) = SPARE.with_borrow_mut(|s| s[reads as usize].pop()) {
            *buf = spare;
        }
    }
}

/// Give `buf` room to read into: a spare buffer when this thread has one (`buf` is empty).
pub(super) fn take(buf: &mut BytesMut, reads: Reads) {
    reuse(buf, reads);
    let size = reads.size();
    if buf.capacity() - buf.len() < size / 8 {
        buf.reserve(size);
    }
}

/// Take an empty `buf`'s allocation off the connection: kept as a spare when nothing else
/// shares it and it is the usual size (up to twice that), else let go.
pub(crate) fn give(buf: &mut BytesMut, reads: Reads) {
    let size = reads.size();
    let mut held = std::mem::take(buf);
    if !held.is_empty() || !held.try_reclaim(size) || held.capacity() > 2 * size {
        return;
    }
    SPARE.with_borrow_mut(|spare| {
        let spare = &mut spare[reads as usize];
        if spare.len() < MAX_SPARE {
            spare.push(held);
        }
    });
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn a_buffer_given_back_whole_is_taken_again_without_allocating() {
        let mut buf = BytesMut::new();
        take(&mut buf, Reads::Requests);
        let at = buf.as_ptr();
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        drop(buf.split());
        give(&mut buf, Reads::Requests);
        assert_eq!(buf.capacity(), 0, "the connection holds nothing");
        let mut next = BytesMut::new();
        take(&mut next, Reads::Requests);
        assert_eq!(next.as_ptr(), at, "the same allocation, reused");
        assert!(next.capacity() >= 4096);
    }

    #[test]
    fn a_buffer_still_shared_or_grown_is_let_go() {
        SPARE.with_borrow_mut(|s| s.iter_mut().for_each(Vec::clear));
        let mut buf = BytesMut::new();
        take(&mut buf, Reads::Requests);
        buf.extend_from_slice(&[b'a'; 4000]);
        let head = buf.split().freeze();
        give(&mut buf, Reads::Requests);
        assert!(
            SPARE.with_borrow(|s| s[0].is_empty()),
            "a request still holds part of it"
        );
        drop(head);
        let mut big = BytesMut::with_capacity(64 * 1024);
        give(&mut big, Reads::Requests);
        assert!(
            SPARE.with_borrow(|s| s[0].is_empty()),
            "grown past twice the usual size"
        );
        let mut fresh = BytesMut::new();
        take(&mut fresh, Reads::Requests);
        give(&mut fresh, Reads::Requests);
        assert_eq!(SPARE.with_borrow(|s| s[0].len()), 1);
    }
}
