//! Which keys a provider refused for which route (403 permission or scope), remembered for a
//! while so later requests on that route skip them, without benching the keys for other
//! traffic. Kept in this process only (each instance learns a refusal with one request of its
//! own), bounded in size.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use tokio::time::{Duration, Instant};

/// At most this many (key, route) refusals are remembered per pool; beyond it, expired ones
/// are dropped first and new ones are not remembered until there is room.
const MAX_REMEMBERED: usize = 4096;

/// Refusals by (key index, route).
#[derive(Debug, Default)]
pub(crate) struct Refusals {
    until: Mutex<HashMap<(usize, String), Instant>>,
    /// Set by the first refusal, so a pool that never had one takes no lock per request.
    any: AtomicBool,
}

impl Refusals {
    /// Remember that key `index` was refused on `route` for `period`.
    pub(crate) fn remember(&self, index: usize, route: &str, period: Duration) {
        let now = Instant::now();
        let mut map = self.until.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= MAX_REMEMBERED {
            map.retain(|_, until| *until > now);
            if map.len() >= MAX_REMEMBERED {
                return;
            }
        }
        map.insert((index, route.to_owned()), now + period);
        self.any.store(true, Ordering::Release);
    }

    /// Whether any refusal was ever remembered (no lock).
    pub(crate) fn any(&self) -> bool {
        self.any.load(Ordering::Acquire)
    }

    /// The keys refused on `route` right now, added to `out`. Costs one lock and nothing else
    /// while nothing is remembered.
    pub(crate) fn refused(&self, route: &str, out: &mut Vec<usize>) {
        if !self.any() {
            return;
        }
        let map = self.until.lock().unwrap_or_else(PoisonError::into_inner);
        if map.is_empty() {
            return;
        }
        let now = Instant::now();
        out.extend(
            map.iter()
                .filter(|((_, r), until)| r == route && **until > now)
                .map(|((i, _), _)| *i),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn refusals_are_per_route_and_end() {
        let r = Refusals::default();
        r.remember(1, "/v1/fine_tuning/jobs", Duration::from_secs(60));
        let mut out = Vec::new();
        r.refused("/v1/fine_tuning/jobs", &mut out);
        assert_eq!(out, [1]);
        out.clear();
        r.refused("/v1/chat/completions", &mut out);
        assert!(out.is_empty());
        tokio::time::advance(Duration::from_secs(61)).await;
        r.refused("/v1/fine_tuning/jobs", &mut out);
        assert!(out.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn memory_is_bounded() {
        let r = Refusals::default();
        for i in 0..MAX_REMEMBERED + 10 {
            r.remember(0, &format!("/r{i}"), Duration::from_secs(60));
        }
        assert_eq!(r.until.lock().unwrap().len(), MAX_REMEMBERED);
        tokio::time::advance(Duration::from_secs(61)).await;
        r.remember(0, "/new", Duration::from_secs(60));
        assert_eq!(r.until.lock().unwrap().len(), 1);
    }
}
