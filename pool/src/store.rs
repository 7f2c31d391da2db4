//! The store behind a pool: where per-key windows, cooldowns and quarantines live.
//!
//! Every call is one unit of work against the store: `acquire` checks, picks and counts in one
//! step (at most one round trip for a shared store; none while a leased share lasts, see
//! `redis/shares.rs`), `report` writes a mark only when there is one.

use crate::key::Key;
use crate::select::Strategy;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

/// The sliding window that `rpm` limits are counted in.
pub const WINDOW: Duration = Duration::from_secs(60);

/// A store call's answer: there at once (the embedded store, a leased share being spent, a
/// report with no mark to write) or after a round trip. Only the latter is boxed: a boxed
/// ready future cost an allocation and an indirect call per acquire and per report.
pub enum StoreFuture<'a, T> {
    Ready(Option<T>),
    Pending(Pin<Box<dyn Future<Output = T> + Send + 'a>>),
}

impl<'a, T> StoreFuture<'a, T> {
    pub fn ready(value: T) -> Self {
        StoreFuture::Ready(Some(value))
    }

    pub fn boxed(future: impl Future<Output = T> + Send + 'a) -> Self {
        StoreFuture::Pending(Box::pin(future))
    }
}

impl<T: Unpin> Future for StoreFuture<'_, T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        match self.get_mut() {
            // Taken once; polled again after that (a misuse), it never completes.
            StoreFuture::Ready(value) => value.take().map_or(Poll::Pending, Poll::Ready),
            StoreFuture::Pending(future) => future.as_mut().poll(cx),
        }
    }
}

static GENERATION: AtomicU64 = AtomicU64::new(1);

/// A pool's fixed description: its keys in order and how it spreads load.
#[derive(Debug)]
pub struct PoolSpec {
    pub name: String,
    pub keys: Vec<Key>,
    pub strategy: Strategy,
    /// Unique per constructed spec, so a store notices a reloaded key set cheaply.
    pub generation: u64,
    /// The pool's state in the memory store that first served it.
    pub(crate) found: crate::memory::Found,
}

impl PoolSpec {
    pub fn new(name: impl Into<String>, keys: Vec<Key>, strategy: Strategy) -> Self {
        PoolSpec {
            name: name.into(),
            keys,
            strategy,
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
            found: crate::memory::Found::new(),
        }
    }
}

/// The answer to "which key may this attempt use?".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acquire {
    /// Use this key (an index into the spec's keys); it has been counted.
    Key(usize),
    /// No untried key is ready; the first one will be in this long.
    Wait(Duration),
    /// Every key was tried already, or none can serve at all (disabled).
    Exhausted,
}

/// What to record against a key after an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mark {
    /// Do not use the key for this long.
    Cool {
        period: Duration,
        reason: &'static str,
    },
    /// The provider refused the key: keep it out for this long.
    Quarantine {
        period: Duration,
        reason: &'static str,
    },
}

/// One attempt's result as a store records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Report {
    /// Upstream status, if an answer came.
    pub status: Option<u16>,
    pub mark: Option<Mark>,
}

/// A key's state as operators see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyMode {
    Ready,
    Cooling {
        remaining: Duration,
        reason: &'static str,
    },
    Quarantined {
        remaining: Duration,
        reason: &'static str,
    },
    Disabled,
}

impl KeyMode {
    pub fn label(&self) -> &'static str {
        match self {
            KeyMode::Ready => "ready",
            KeyMode::Cooling { .. } => "cooling",
            KeyMode::Quarantined { .. } => "quarantined",
            KeyMode::Disabled => "disabled",
        }
    }
}

/// A key's status snapshot, identified by index, name and fingerprint only.
#[derive(Clone, Debug)]
pub struct KeyStatus {
    pub index: usize,
    pub name: String,
    pub fingerprint: String,
    pub mode: KeyMode,
    pub used_this_minute: u64,
    pub rpm: u32,
    pub total: u64,
    pub last_status: Option<u16>,
}

/// What an operator can do to a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyAction {
    /// Take the key out of service until enabled.
    Disable,
    /// Put a disabled key back in service.
    Enable,
    /// Clear a cooldown or quarantine.
    Reset,
}

/// Where pool state is kept right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreState {
    /// In this process only, by configuration.
    Embedded,
    /// In the shared store, one truth for every instance.
    Shared,
    /// The shared store is away; serving on this instance's local state until it is back.
    Degraded,
}

impl StoreState {
    pub fn label(&self) -> &'static str {
        match self {
            StoreState::Embedded => "embedded",
            StoreState::Shared => "shared",
            StoreState::Degraded => "degraded",
        }
    }
}

/// Where pool state lives. Implementations: [`crate::MemoryStore`] (one process) and, in the
/// proxy's deployment, a shared store.
pub trait Store: Send + Sync {
    /// Pick a ready key not in `tried`, counting the request against it.
    fn acquire<'a>(&'a self, pool: &'a PoolSpec, tried: &'a [usize]) -> StoreFuture<'a, Acquire>;

    /// Record an attempt's result against key `index`.
    fn report<'a>(
        &'a self,
        pool: &'a PoolSpec,
        index: usize,
        report: Report,
    ) -> StoreFuture<'a, ()>;

    /// Every key's current state.
    fn status<'a>(&'a self, pool: &'a PoolSpec) -> StoreFuture<'a, Vec<KeyStatus>>;

    /// Apply an operator's action to key `index`: at once on this instance and, for a shared
    /// store, on every instance. Answers where the action is kept now: `Embedded` (this
    /// process is the store), `Shared` (written to the shared store: every instance sees it),
    /// or `Degraded` (the shared store is away: applied here and queued; written when the
    /// store is back, unless a newer action on the key was written meanwhile).
    fn act<'a>(
        &'a self,
        pool: &'a PoolSpec,
        index: usize,
        action: KeyAction,
    ) -> StoreFuture<'a, StoreState>;

    /// Remember that each of `ids` (provider resource ids, `[affinity] mode = "map"`) was
    /// created by the key with `fingerprint` in `pool`, for `ttl`: on a shared store one
    /// round trip (and a copy here, for an outage).
    fn remember<'a>(
        &'a self,
        pool: &'a str,
        ids: &'a [String],
        fingerprint: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, ()>;

    /// The fingerprint each of `ids` was remembered with in `pool` (`None`: unknown or
    /// expired): on a shared store one round trip.
    fn recall<'a>(
        &'a self,
        pool: &'a str,
        ids: &'a [String],
    ) -> StoreFuture<'a, Vec<Option<String>>>;

    /// Failed or timed-out store commands since start.
    fn errors(&self) -> u64 {
        0
    }

    /// Where state is kept right now.
    fn state(&self) -> StoreState {
        StoreState::Embedded
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    #[test]
    fn a_ready_answer_is_there_on_the_first_poll_and_only_once() {
        let mut cx = Context::from_waker(Waker::noop());
        let mut answer = StoreFuture::ready(Acquire::Key(2));
        assert_eq!(
            Pin::new(&mut answer).poll(&mut cx),
            Poll::Ready(Acquire::Key(2))
        );
        assert_eq!(Pin::new(&mut answer).poll(&mut cx), Poll::Pending);
    }

    #[test]
    fn a_boxed_answer_waits_for_its_future() {
        let mut cx = Context::from_waker(Waker::noop());
        let (tx, rx) = std::sync::mpsc::channel::<u32>();
        let mut answer = StoreFuture::boxed(std::future::poll_fn(move |_| {
            rx.try_recv().map_or(Poll::Pending, Poll::Ready)
        }));
        assert_eq!(Pin::new(&mut answer).poll(&mut cx), Poll::Pending);
        tx.send(7).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(Pin::new(&mut answer).poll(&mut cx), Poll::Ready(7));
    }
}
