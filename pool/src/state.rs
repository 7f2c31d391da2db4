//! One key's state machine and its request window of per-second buckets, on a store's clock.
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
//!
//! The window has the Redis store's shape (see `pool/src/redis`): one counter per whole second,
//! and a second's bucket counts until all of that second has left the minute, so it counts in
//! 61 windows and no key takes more than its rpm in any 60 s. A key at its rpm limit stays
//! Ready but is not eligible until enough of its oldest buckets have left. A key costs 61
//! counters however much traffic it takes.

use crate::store::{KeyMode, Mark};
use tokio::time::{Duration, Instant};

/// Buckets in a window: the current second and the 60 before it.
pub(crate) const BUCKETS: u64 = 61;

/// A store's clock: tokio's (so paused-time tests drive it), cut into whole seconds counted
/// from the store's creation.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    origin: Instant,
}

/// A moment on a [`Clock`]: the instant and the whole second it falls in.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Now {
    pub(crate) at: Instant,
    pub(crate) sec: u64,
    origin: Instant,
}

impl Clock {
    pub(crate) fn new() -> Self {
        Clock {
            origin: Instant::now(),
        }
    }

    pub(crate) fn now(&self) -> Now {
        let at = Instant::now();
        Now {
            at,
            sec: at.saturating_duration_since(self.origin).as_secs(),
            origin: self.origin,
        }
    }
}

impl Now {
    /// How long until second `sec` starts (zero if it has).
    fn until_second(&self, sec: u64) -> Duration {
        (self.origin + Duration::from_secs(sec)).saturating_duration_since(self.at)
    }
}

/// Requests per whole second over the last [`BUCKETS`] seconds: a ring of counters.
#[derive(Debug)]
struct Window {
    /// Second `s`, while in the window, is counted in slot `s % BUCKETS`.
    counts: [u64; BUCKETS as usize],
    /// The latest second the ring has moved to; older slots hold the 60 seconds before it.
    head: u64,
    /// The sum of `counts`.
    used: u64,
}

impl Window {
    fn new() -> Self {
        Window {
            counts: [0; BUCKETS as usize],
            head: 0,
            used: 0,
        }
    }

    fn slot(sec: u64) -> usize {
        (sec % BUCKETS) as usize
    }

    /// Move to second `sec`: the buckets of seconds before `sec - 60` leave.
    fn advance(&mut self, sec: u64) {
        if sec <= self.head {
            return;
        }
        // The slots the seconds after `head` take over hold seconds that have left.
        let fresh = (sec - self.head).min(BUCKETS);
        for s in sec + 1 - fresh..=sec {
            let slot = &mut self.counts[Self::slot(s)];
            self.used -= *slot;
            *slot = 0;
        }
        self.head = sec;
    }

    /// Count one request in the current second. Call after `advance`.
    fn count(&mut self) {
        self.counts[Self::slot(self.head)] += 1;
        self.used += 1;
    }

    /// The second from which one more request fits under `rpm`: when enough of the oldest
    /// buckets have left (`None` when one fits now).
    fn frees_at(&self, rpm: u64) -> Option<u64> {
        if self.used < rpm {
            return None;
        }
        let mut left = self.used;
        let oldest = self.head.saturating_sub(BUCKETS - 1);
        for s in oldest..=self.head {
            left -= self.counts[Self::slot(s)];
            if left < rpm {
                return Some(s + BUCKETS);
            }
        }
        Some(self.head + BUCKETS)
    }
}

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
    window: Window,
    pub(crate) total: u64,
    pub(crate) last_status: Option<u16>,
}

impl KeyState {
    pub(crate) fn new(fingerprint: String) -> Self {
        KeyState {
            fingerprint,
            mode: Mode::Ready,
            window: Window::new(),
            total: 0,
            last_status: None,
        }
    }

    /// Let buckets that left the window go and end expired cooldowns.
    pub(crate) fn advance(&mut self, now: Now) {
        self.window.advance(now.sec);
        match self.mode {
            Mode::Cooling { until, .. } | Mode::Quarantined { until, .. } if until <= now.at => {
                self.mode = Mode::Ready;
            }
            _ => {}
        }
    }

    /// Requests counted in the window. Call after `advance`.
    pub(crate) fn used(&self) -> u64 {
        self.window.used
    }

    /// How long until this key may serve again (zero when it may now; `None` while disabled).
    /// Call after `advance`.
    pub(crate) fn ready_in(&self, rpm: u32, now: Now) -> Option<Duration> {
        let mode_wait = match self.mode {
            Mode::Ready => Duration::ZERO,
            Mode::Cooling { until, .. } | Mode::Quarantined { until, .. } => {
                until.saturating_duration_since(now.at)
            }
            Mode::Disabled => return None,
        };
        let limit_wait = self
            .window
            .frees_at(u64::from(rpm))
            .map_or(Duration::ZERO, |sec| now.until_second(sec));
        Some(mode_wait.max(limit_wait))
    }

    /// Count one request now.
    pub(crate) fn count(&mut self, now: Now) {
        self.window.advance(now.sec);
        self.window.count();
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
#[path = "state_tests.rs"]
mod tests;
