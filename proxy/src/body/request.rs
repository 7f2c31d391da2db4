//! The request body, buffered in memory so the request can be replayed on the next key: bounded
//! in size per request (`replay_memory_bytes`, past which `replay` takes over, and
//! `max_body_bytes`), over all requests (`max_buffered_bytes`, a shared budget of in-memory
//! bytes only) and in time between two chunks (`body_read_timeout`).

use crate::error::ProxyError;
use bytes::Bytes;
use http_body::Body;
use http_body_util::BodyExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The bytes of request bodies buffered right now, over all requests, against a limit.
/// Taking never waits: a request that does not fit is refused at once.
#[derive(Debug)]
pub struct Budget {
    limit: AtomicUsize,
    used: AtomicUsize,
}

impl Budget {
    pub fn new(limit: usize) -> Arc<Budget> {
        Arc::new(Budget {
            limit: AtomicUsize::new(limit),
            used: AtomicUsize::new(0),
        })
    }

    /// A reload may change the limit; bytes already taken stay taken.
    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::Release);
    }

    /// Bytes taken now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    fn take(&self, n: usize) -> bool {
        let limit = self.limit.load(Ordering::Acquire);
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|total| *total <= limit)
            })
            .is_ok()
    }
}

/// Bytes one request holds of the [`Budget`]; given back when dropped, however the request
/// ends.
#[derive(Debug)]
pub struct Permit {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Permit {
    pub fn empty(budget: &Arc<Budget>) -> Permit {
        Permit {
            budget: budget.clone(),
            bytes: 0,
        }
    }

    /// Hold at least `total` bytes; false (holding what it held) if the budget has no room.
    pub fn grow_to(&mut self, total: usize) -> bool {
        let more = total.saturating_sub(self.bytes);
        if more == 0 || self.budget.take(more) {
            self.bytes = self.bytes.max(total);
            return true;
        }
        false
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Give back what is held beyond `total`.
    pub fn shrink_to(&mut self, total: usize) {
        let less = self.bytes.saturating_sub(total);
        if less > 0 {
            self.budget.used.fetch_sub(less, Ordering::AcqRel);
            self.bytes = total;
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// A request body read whole, with the share of the budget it holds.
#[derive(Debug)]
pub struct Buffered {
    pub bytes: Bytes,
    _permit: Permit,
}

impl Buffered {
    /// No bytes, holding nothing.
    pub fn empty(budget: &Arc<Budget>) -> Buffered {
        Buffered {
            bytes: Bytes::new(),
            _permit: Permit::empty(budget),
        }
    }
}

/// What [`buffer_request`] read: the whole body, or the start of one too large to hold in
/// memory (possibly nothing, when its declared length said so), the rest still unread.
#[derive(Debug)]
pub enum Read {
    Whole(Buffered),
    Over(Buffered),
}

/// How much and how slowly a request body may come.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimits {
    /// The most one body may hold (`max_body_bytes`).
    pub max_bytes: usize,
    /// The most one body is held in memory (`replay_memory_bytes`); past it, the body is
    /// spilled to disk.
    pub memory_bytes: usize,
    /// The longest pause between two chunks (`body_read_timeout`).
    pub idle: Duration,
}

/// Read the request body into memory, up to `limits.memory_bytes`: [`Read::Over`] as soon as it
/// is larger (before reading a byte when its declared length says so). Refused before reading
/// a byte when the declared length is over the limit (413) or over what the budget has left
/// (503); refused as soon as a streamed body passes either, or pauses longer than
/// `limits.idle` (408). Refusing drops the body unread, unless the caller hands it to
/// [`discard`]; hyper then stops reading the connection and closes it after the answer.
pub async fn buffer_request<B>(
    body: &mut B,
    declared: Option<u64>,
    limits: BodyLimits,
    budget: &Arc<Budget>,
) -> Result<Read, ProxyError>
where
    B: Body<Data = Bytes> + Unpin,
{
    let limit = limits.max_bytes;
    let memory = limits.memory_bytes.min(limit);
    let mut permit = Permit::empty(budget);
    let mut buf = Vec::new();
    if let Some(n) = declared {
        let n = usize::try_from(n)
            .ok()
            .filter(|n| *n <= limit)
            .ok_or(ProxyError::BodyTooLarge { limit })?;
        if n > memory {
            return Ok(Read::Over(Buffered {
                bytes: Bytes::new(),
                _permit: permit,
            }));
        }
        if !permit.grow_to(n) {
            return Err(ProxyError::BodyBudgetFull);
        }
        buf.reserve_exact(n);
    }
    while !body.is_end_stream() {
        let frame = match tokio::time::timeout(limits.idle, body.frame()).await {
            Err(_) => return Err(ProxyError::BodyTimeout),
            Ok(None) => break,
            Ok(Some(Err(_))) => return Err(ProxyError::BodyRead),
            Ok(Some(Ok(frame))) => frame,
        };
        // Trailers are not forwarded.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let total = buf.len() + data.len();
        if total > limit {
            return Err(ProxyError::BodyTooLarge { limit });
        }
        if !permit.grow_to(total) {
            return Err(ProxyError::BodyBudgetFull);
        }
        buf.extend_from_slice(&data);
        if total > memory {
            return Ok(Read::Over(Buffered {
                bytes: Bytes::from(buf),
                _permit: permit,
            }));
        }
    }
    Ok(Read::Whole(Buffered {
        bytes: Bytes::from(buf),
        _permit: permit,
    }))
}

/// Read and throw away the rest of a refused body, up to `limits.max_bytes` and within one
/// `limits.idle`: an HTTP/1 client still sending a body it was allowed to send then reads the
/// answer, where closing with its bytes unread would reset the connection under it. Holds no
/// budget: nothing is kept.
pub async fn discard<B>(mut body: B, limits: BodyLimits)
where
    B: Body<Data = Bytes> + Unpin,
{
    let drain = async {
        let mut seen = 0usize;
        while seen <= limits.max_bytes && !body.is_end_stream() {
            match body.frame().await {
                Some(Ok(frame)) => seen += frame.data_ref().map_or(0, Bytes::len),
                _ => return,
            }
        }
    };
    // One idle period in all, not per chunk: a trickle cannot hold the connection open.
    let _ = tokio::time::timeout(limits.idle, drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};

    const LIMITS: BodyLimits = BodyLimits {
        max_bytes: 100,
        memory_bytes: 100,
        idle: Duration::from_secs(1),
    };

    fn whole(read: Result<Read, ProxyError>) -> Buffered {
        match read.unwrap() {
            Read::Whole(b) => b,
            Read::Over(_) => panic!("expected the whole body"),
        }
    }

    #[tokio::test]
    async fn a_body_over_the_memory_share_stops_reading_and_says_so() {
        let budget = Budget::new(1000);
        let limits = BodyLimits {
            memory_bytes: 25,
            ..LIMITS
        };
        let mut body = Full::new(Bytes::new());
        let declared = buffer_request(&mut body, Some(50), limits, &budget).await;
        assert!(matches!(declared, Ok(Read::Over(b)) if b.bytes.is_empty()));
        let chunks = (0..5).map(|_| {
            Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from_static(
                b"0123456789",
            )))
        });
        let mut body = StreamBody::new(futures_util::stream::iter(chunks));
        let Ok(Read::Over(prefix)) = buffer_request(&mut body, None, limits, &budget).await else {
            panic!("expected the start of the body");
        };
        assert_eq!(
            prefix.bytes.len(),
            30,
            "read up to the chunk that went past"
        );
        assert_eq!(budget.used(), 30);
        let mut rest = 0;
        while let Some(Ok(frame)) = body.frame().await {
            rest += frame.into_data().map_or(0, |d| d.len());
        }
        assert_eq!(rest, 20, "the rest is left unread");
    }

    #[tokio::test]
    async fn the_budget_is_taken_while_held_and_given_back_on_drop() {
        let budget = Budget::new(150);
        let mut body = Full::new(Bytes::from(vec![b'a'; 80]));
        let first = whole(buffer_request(&mut body, Some(80), LIMITS, &budget).await);
        assert_eq!(budget.used(), 80);
        let mut body = Full::new(Bytes::from(vec![b'a'; 80]));
        let refused = buffer_request(&mut body, Some(80), LIMITS, &budget).await;
        assert!(matches!(refused, Err(ProxyError::BodyBudgetFull)));
        assert_eq!(budget.used(), 80, "a refusal holds nothing");
        drop(first);
        assert_eq!(budget.used(), 0);
        let mut body = Full::new(Bytes::from(vec![b'a'; 80]));
        let second = whole(buffer_request(&mut body, None, LIMITS, &budget).await);
        assert_eq!(second.bytes.len(), 80);
        assert_eq!(budget.used(), 80, "an undeclared body takes what it read");
    }

    #[tokio::test]
    async fn declared_and_streamed_oversize_are_413() {
        let budget = Budget::new(1000);
        let mut body = Full::new(Bytes::new());
        let declared = buffer_request(&mut body, Some(101), LIMITS, &budget).await;
        assert!(matches!(declared, Err(ProxyError::BodyTooLarge { .. })));
        let chunks = (0..20).map(|_| {
            Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from_static(
                b"0123456789",
            )))
        });
        let mut body = StreamBody::new(futures_util::stream::iter(chunks));
        let streamed = buffer_request(&mut body, None, LIMITS, &budget).await;
        assert!(matches!(streamed, Err(ProxyError::BodyTooLarge { .. })));
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_longer_than_the_idle_limit_is_408() {
        let budget = Budget::new(1000);
        let chunks = futures_util::stream::unfold(0, |i| async move {
            if i == 1 {
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            let frame = http_body::Frame::data(Bytes::from_static(b"ab"));
            (i < 3).then_some((Ok::<_, std::convert::Infallible>(frame), i + 1))
        });
        let mut body = StreamBody::new(Box::pin(chunks));
        let slow = buffer_request(&mut body, None, LIMITS, &budget).await;
        assert!(matches!(slow, Err(ProxyError::BodyTimeout)));
        assert_eq!(budget.used(), 0);
    }
}
