//! A provider's retry budget (linkerd's model): retries may add at most `ratio` of the requests
//! of the last ten seconds, plus a floor of `min_per_second`, so a failing provider is not
//! hit with a multiple of its traffic.

use std::sync::{Mutex, PoisonError};
use tokio::time::{Duration, Instant};

/// Seconds the budget looks back over.
const WINDOW_SECS: u64 = 10;

/// How much retrying a provider allows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BudgetSettings {
    /// Retries allowed per first attempt, over the window (0.2: one in five).
    pub ratio: f64,
    /// Retries allowed per second whatever the traffic, so a quiet provider still retries.
    pub min_per_second: u32,
}

impl Default for BudgetSettings {
    fn default() -> Self {
        BudgetSettings {
            ratio: 0.2,
            min_per_second: 10,
        }
    }
}

/// Requests and retries per second, over the last [`WINDOW_SECS`] seconds.
#[derive(Debug)]
struct Window {
    start: Instant,
    /// Per second since `start`, modulo the window: (second, requests, retries).
    slots: [(u64, u64, u64); WINDOW_SECS as usize],
}

impl Window {
    fn slot(&mut self, now: Instant) -> &mut (u64, u64, u64) {
        let second = now.saturating_duration_since(self.start).as_secs();
        let slot = &mut self.slots[(second % WINDOW_SECS) as usize];
        if slot.0 != second {
            *slot = (second, 0, 0);
        }
        slot
    }

    fn totals(&self, now: Instant) -> (u64, u64) {
        let second = now.saturating_duration_since(self.start).as_secs();
        self.slots
            .iter()
            .filter(|s| s.0 <= second && second - s.0 < WINDOW_SECS)
            .fold((0, 0), |(q, r), s| (q + s.1, r + s.2))
    }
}

/// One provider's retry budget. Shared by every request to it; one short lock per call.
#[derive(Debug)]
pub struct RetryBudget {
    settings: BudgetSettings,
    window: Mutex<Window>,
}

impl RetryBudget {
    pub fn new(settings: BudgetSettings) -> Self {
        RetryBudget {
            settings,
            window: Mutex::new(Window {
                start: Instant::now(),
                slots: [(u64::MAX, 0, 0); WINDOW_SECS as usize],
            }),
        }
    }

    /// A request's first attempt: it adds to what may be retried.
    pub fn deposit(&self) {
        let mut w = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        w.slot(Instant::now()).1 += 1;
    }

    /// Ask to retry once; `false` when the budget is spent (the last answer stands).
    pub fn withdraw(&self) -> bool {
        let now = Instant::now();
        let mut w = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        let (requests, retries) = w.totals(now);
        let floor = u64::from(self.settings.min_per_second) * WINDOW_SECS;
        let allowed = (requests as f64 * self.settings.ratio) as u64 + floor;
        if retries >= allowed {
            return false;
        }
        w.slot(now).2 += 1;
        true
    }

    /// The window the budget looks back over.
    pub fn window() -> Duration {
        Duration::from_secs(WINDOW_SECS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(ratio: f64, min_per_second: u32) -> RetryBudget {
        RetryBudget::new(BudgetSettings {
            ratio,
            min_per_second,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn retries_are_a_share_of_requests_plus_a_floor() {
        let b = budget(0.2, 1);
        for _ in 0..100 {
            b.deposit();
        }
        // 20% of 100, plus 1 per second over the 10 s window.
        let granted = (0..100).filter(|_| b.withdraw()).count();
        assert_eq!(granted, 30);
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_refills_as_the_window_moves() {
        let b = budget(0.0, 1);
        assert_eq!((0..20).filter(|_| b.withdraw()).count(), 10);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!b.withdraw(), "still inside the window");
        tokio::time::advance(RetryBudget::window()).await;
        assert_eq!((0..20).filter(|_| b.withdraw()).count(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn no_floor_and_no_requests_means_no_retries() {
        let b = budget(0.2, 0);
        assert!(!b.withdraw());
        for _ in 0..10 {
            b.deposit();
        }
        assert!(b.withdraw() && b.withdraw());
        assert!(!b.withdraw());
    }
}
