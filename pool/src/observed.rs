//! What providers report about each key (remaining requests and tokens), kept by fingerprint so
//! a reloaded pool that keeps a key keeps what was last heard about it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Unknown, as stored in a slot.
const UNKNOWN: i64 = -1;

/// One key's last reported quota. Written on every answer, read by the status page.
#[derive(Debug)]
pub struct Quota {
    requests: AtomicI64,
    tokens: AtomicI64,
}

impl Default for Quota {
    fn default() -> Self {
        Quota {
            requests: AtomicI64::new(UNKNOWN),
            tokens: AtomicI64::new(UNKNOWN),
        }
    }
}

impl Quota {
    /// Remember what an answer reported; a figure it did not report keeps its last value.
    pub fn record(&self, (requests, tokens): (Option<i64>, Option<i64>)) {
        if let Some(n) = requests {
            self.requests.store(n, Ordering::Relaxed);
        }
        if let Some(n) = tokens {
            self.tokens.store(n, Ordering::Relaxed);
        }
    }

    /// Last reported (remaining requests, remaining tokens).
    pub fn get(&self) -> (Option<i64>, Option<i64>) {
        let read = |a: &AtomicI64| Some(a.load(Ordering::Relaxed)).filter(|n| *n >= 0);
        (read(&self.requests), read(&self.tokens))
    }
}

/// Every key's [`Quota`] by fingerprint. One per process, handed from config to config on reload.
#[derive(Debug, Default)]
pub struct Observed {
    by_fingerprint: Mutex<HashMap<String, Arc<Quota>>>,
}

impl Observed {
    pub fn new() -> Arc<Observed> {
        Arc::new(Observed::default())
    }

    /// The slot of the key with `fingerprint`, made on first use. Called when a pool is built,
    /// never per request.
    pub fn slot(&self, fingerprint: &str) -> Arc<Quota> {
        self.by_fingerprint
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(fingerprint.to_owned())
            .or_default()
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_shared_by_fingerprint() {
        let o = Observed::new();
        let a = o.slot("fp1");
        assert_eq!(a.get(), (None, None));
        a.record((Some(5), None));
        a.record((None, Some(700)));
        assert_eq!(o.slot("fp1").get(), (Some(5), Some(700)));
        assert_eq!(o.slot("fp2").get(), (None, None));
    }
}
