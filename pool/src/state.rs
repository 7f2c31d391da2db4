//! One key's state machine and its sliding request window, driven by explicit instants.
//!
//! ```text
//!            429 (hint or default)             401/403
//!   ┌───────┐ ───────────────────▶ ┌─────────┐        ┌─────────────┐
//!   │ Ready │                      │ Cooling │        │ Quarantined │
//!   └───────┘ ◀─────────────────── └─────────┘        └─────────────┘
//!     ▲  │        until passes                           │  ▲
//!     │  └───────────────────────────────────────────────┘  │
//!     └──────────────── until passes ◀──────────────────────┘
//! ```
//! Rate limits never disable a key for good: every Cooling and Quarantined state ends by time.
//! Only an operator moves a key to Disabled (from any state) and back to Ready.
//! A key at its rpm limit stays Ready but is not eligible until its oldest request leaves the
//! window.

use crate::store::{KeyMode, Mark, WINDOW};
use std::collections::VecDeque;
use tokio::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Ready,
    Cooling {
        until: Instant,
        reason: &'static str,
    },
    Quarantined {
        until: Instant,
        reason: &'static str,
    },
    /// Out of service until an operator enables it again.
    Disabled,
}

#[derive(Debug)]
pub(crate) struct KeyState {
    pub(crate) fingerprint: String,
    mode: Mode,
    /// Start instants of the requests in the last [`WINDOW`], oldest first.
    window: VecDeque<Instant>,
    pub(crate) total: u64,
    pub(crate) last_status: Option<u16>,
}

impl KeyState {
    pub(crate) fn new(fingerprint: String) -> Self {
        KeyState {
            fingerprint,
            mode: Mode::Ready,
            window: VecDeque::new(),
            total: 0,
            last_status: None,
        }
    }

    /// Drop window entries older than the window and end expired cooldowns.
    pub(crate) fn advance(&mut self, now: Instant) {
        while self.window.front().is_some_and(|t| *t + WINDOW <= now) {
            self.window.pop_front();
        }
        match self.mode {
            Mode::Cooling { until, .. } | Mode::Quarantined { until, .. } if until <= now => {
                self.mode = Mode::Ready;
            }
            _ => {}
        }
    }

    pub(crate) fn used(&self) -> u64 {
        self.window.len() as u64
    }

    /// How long until this key may serve again (zero when it may now; `None` while disabled).
    /// Call after `advance`.
    pub(crate) fn ready_in(&self, rpm: u32, now: Instant) -> Option<Duration> {
        let mode_wait = match self.mode {
            Mode::Ready => Duration::ZERO,
            Mode::Cooling { until, .. } | Mode::Quarantined { until, .. } => until - now,
            Mode::Disabled => return None,
        };
        let limit_wait = if self.window.len() >= rpm as usize {
            // The oldest request that must leave before one more fits.
            let excess = self.window.len() - rpm as usize;
            self.window.get(excess).map_or(Duration::ZERO, |t| {
                (*t + WINDOW).saturating_duration_since(now)
            })
        } else {
            Duration::ZERO
        };
        Some(mode_wait.max(limit_wait))
    }

    pub(crate) fn count(&mut self, now: Instant) {
        self.window.push_back(now);
        self.total += 1;
    }

    /// Apply a mark; a longer existing penalty is kept.
    pub(crate) fn mark(&mut self, mark: Mark, now: Instant) {
        let (until, new) = match mark {
            Mark::Cool { period, reason } => {
                let until = now + period;
                (until, Mode::Cooling { until, reason })
            }
            Mark::Quarantine { period, reason } => {
                let until = now + period;
                (until, Mode::Quarantined { until, reason })
            }
        };
        let current_until = match self.mode {
            Mode::Ready => None,
            Mode::Cooling { until, .. } | Mode::Quarantined { until, .. } => Some(until),
            Mode::Disabled => return,
        };
        if current_until.is_none_or(|c| c <= until) {
            self.mode = new;
        }
    }

    /// Clear a cooldown or quarantine; a disabled key stays disabled.
    pub(crate) fn reset(&mut self) {
        if self.mode != Mode::Disabled {
            self.mode = Mode::Ready;
        }
    }

    pub(crate) fn disable(&mut self) {
        self.mode = Mode::Disabled;
    }

    pub(crate) fn enable(&mut self) {
        if self.mode == Mode::Disabled {
            self.mode = Mode::Ready;
        }
    }

    pub(crate) fn public_mode(&self, now: Instant) -> KeyMode {
        match self.mode {
            Mode::Ready => KeyMode::Ready,
            Mode::Cooling { until, reason } => KeyMode::Cooling {
                remaining: until.saturating_duration_since(now),
                reason,
            },
            Mode::Quarantined { until, reason } => KeyMode::Quarantined {
                remaining: until.saturating_duration_since(now),
                reason,
            },
            Mode::Disabled => KeyMode::Disabled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn cooling_ends_by_time() {
        let mut k = KeyState::new("fp".into());
        let now = Instant::now();
        k.mark(
            Mark::Cool {
                period: Duration::from_secs(5),
                reason: "rate_limited",
            },
            now,
        );
        k.advance(now);
        assert_eq!(k.ready_in(10, now), Some(Duration::from_secs(5)));
        tokio::time::advance(Duration::from_secs(5)).await;
        let later = Instant::now();
        k.advance(later);
        assert_eq!(k.public_mode(later), KeyMode::Ready);
        assert_eq!(k.ready_in(10, later), Some(Duration::ZERO));
        k.disable();
        k.mark(
            Mark::Cool {
                period: Duration::from_secs(1),
                reason: "rate_limited",
            },
            later,
        );
        assert_eq!(
            k.ready_in(10, later),
            None,
            "a mark does not undo a disable"
        );
        k.reset();
        assert_eq!(k.public_mode(later), KeyMode::Disabled);
        k.enable();
        assert_eq!(k.public_mode(later), KeyMode::Ready);
    }

    #[tokio::test(start_paused = true)]
    async fn shorter_mark_does_not_shorten_penalty() {
        let mut k = KeyState::new("fp".into());
        let now = Instant::now();
        let q = Mark::Quarantine {
            period: Duration::from_secs(600),
            reason: "unauthorized",
        };
        k.mark(q, now);
        k.mark(
            Mark::Cool {
                period: Duration::from_secs(1),
                reason: "rate_limited",
            },
            now,
        );
        assert_eq!(k.ready_in(10, now), Some(Duration::from_secs(600)));
    }

    #[tokio::test(start_paused = true)]
    async fn window_slides() {
        let mut k = KeyState::new("fp".into());
        let t0 = Instant::now();
        k.count(t0);
        tokio::time::advance(Duration::from_secs(20)).await;
        k.count(Instant::now());
        let now = Instant::now();
        assert_eq!(k.used(), 2);
        assert_eq!(k.ready_in(2, now), Some(Duration::from_secs(40)));
        assert_eq!(k.ready_in(1, now), Some(Duration::from_secs(60)));
        tokio::time::advance(Duration::from_secs(40)).await;
        k.advance(Instant::now());
        assert_eq!(k.used(), 1);
        assert_eq!(k.total, 2);
    }
}
