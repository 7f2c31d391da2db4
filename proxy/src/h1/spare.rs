//! Read buffers kept for reuse by the connections of one worker thread: a connection waiting
//! for its next request holds none, and the one that reads next takes a spare one rather than
//! allocating (a 4 KiB allocation and its free on every request, otherwise).

use bytes::BytesMut;
use std::cell::RefCell;

/// Most spare buffers kept per thread (64 of 4 KiB: 256 KiB at most).
const MAX_SPARE: usize = 64;

thread_local! {
    static SPARE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// Give `buf` room to read into: a spare buffer when this thread has one (`buf` is empty).
pub(super) fn take(buf: &mut BytesMut, size: usize) {
    if buf.capacity() == 0 {
        if let Some(spare) = SPARE.with_borrow_mut(Vec::pop) {
            *buf = spare;
        }
    }
    if buf.capacity() - buf.len() < size / 8 {
        buf.reserve(size);
    }
}

/// Take an empty `buf`'s allocation off the connection: kept as a spare when nothing else
/// shares it and it is the usual size (`size` to twice that), else let go.
pub(super) fn give(buf: &mut BytesMut, size: usize) {
    let mut held = std::mem::take(buf);
    if !held.is_empty() || !held.try_reclaim(size) || held.capacity() > 2 * size {
        return;
    }
    SPARE.with_borrow_mut(|spare| {
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
        take(&mut buf, 4096);
        let at = buf.as_ptr();
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        drop(buf.split());
        give(&mut buf, 4096);
        assert_eq!(buf.capacity(), 0, "the connection holds nothing");
        let mut next = BytesMut::new();
        take(&mut next, 4096);
        assert_eq!(next.as_ptr(), at, "the same allocation, reused");
        assert!(next.capacity() >= 4096);
    }

    #[test]
    fn a_buffer_still_shared_or_grown_is_let_go() {
        SPARE.with_borrow_mut(Vec::clear);
        let mut buf = BytesMut::new();
        take(&mut buf, 4096);
        buf.extend_from_slice(&[b'a'; 4000]);
        let head = buf.split().freeze();
        give(&mut buf, 4096);
        assert!(
            SPARE.with_borrow(Vec::is_empty),
            "a request still holds part of it"
        );
        drop(head);
        let mut big = BytesMut::with_capacity(64 * 1024);
        give(&mut big, 4096);
        assert!(
            SPARE.with_borrow(Vec::is_empty),
            "grown past twice the usual size"
        );
        let mut fresh = BytesMut::new();
        take(&mut fresh, 4096);
        give(&mut fresh, 4096);
        assert_eq!(SPARE.with_borrow(Vec::len), 1);
    }
}
