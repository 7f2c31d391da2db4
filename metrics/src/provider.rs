//! One provider's metric handles, each resolved on first use and kept, so the request path does
//! no label lookups for them (and a series appears only once it has something to say).

use crate::{Families, StatusClass};
use keyrelay_pool::{Mark, Outcome};
use prometheus::{Histogram, HistogramVec, IntCounter};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Recording methods for one provider's requests and attempts.
#[derive(Clone)]
pub struct ProviderMetrics {
    families: Arc<Families>,
    name: Arc<str>,
    handles: Arc<Handles>,
}

/// How many outcomes there are: the length of the per-outcome slots below.
const OUTCOMES: usize = 9;

/// An outcome's slot in the per-outcome handles (a new outcome fails to compile here).
fn outcome_slot(outcome: &Outcome) -> usize {
    match outcome {
        Outcome::Success => 0,
        Outcome::RateLimited { .. } => 1,
        Outcome::Unauthorized => 2,
        Outcome::Forbidden => 3,
        Outcome::Overloaded => 4,
        Outcome::ServerError => 5,
        Outcome::NotSent => 6,
        Outcome::Lost => 7,
        Outcome::ClientError => 8,
    }
}

/// The resolved series, filled in as they are first used.
#[derive(Default)]
struct Handles {
    /// `keyrelay_requests_total` per status class, in [`StatusClass::ALL`] order.
    requests: [OnceLock<IntCounter>; 5],
    upstream_ttfb: OnceLock<Histogram>,
    request_duration: OnceLock<Histogram>,
    proxy_overhead: OnceLock<Histogram>,
    /// `keyrelay_retries_total` per outcome that caused the retry.
    retries: [OnceLock<IntCounter>; OUTCOMES],
    /// The pool's keys in order, each with its `keyrelay_upstream_attempts_total` per outcome.
    keys: Box<[KeyHandles]>,
}

/// One key's attempt counters.
struct KeyHandles {
    name: Box<str>,
    attempts: [OnceLock<IntCounter>; OUTCOMES],
}

impl std::fmt::Debug for ProviderMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ProviderMetrics({})", self.name)
    }
}

impl ProviderMetrics {
    /// `keys`: the provider's key names in pool order, whose attempt series are then kept
    /// here (see [`ProviderMetrics::key_attempt`]).
    pub(crate) fn new(families: Arc<Families>, name: &str, keys: &[&str]) -> ProviderMetrics {
        let keys = keys
            .iter()
            .map(|k| KeyHandles {
                name: (*k).into(),
                attempts: Default::default(),
            })
            .collect();
        ProviderMetrics {
            handles: Arc::new(Handles {
                keys,
                ..Handles::default()
            }),
            name: name.into(),
            families,
        }
    }

    fn observe(&self, slot: &OnceLock<Histogram>, family: &HistogramVec, d: Duration) {
        slot.get_or_init(|| family.with_label_values(&[&*self.name]))
            .observe(d.as_secs_f64());
    }

    /// A request answered with `status`; `took` is its whole time, when it was routed.
    pub fn answered(&self, status: u16, took: Option<Duration>) {
        let class = StatusClass::of(status);
        let i = StatusClass::ALL
            .iter()
            .position(|c| *c == class)
            .unwrap_or(4);
        self.handles.requests[i]
            .get_or_init(|| {
                self.families
                    .requests
                    .with_label_values(&[&*self.name, class.label()])
            })
            .inc();
        if let Some(took) = took {
            let f = &self.families.request_duration;
            self.observe(&self.handles.request_duration, f, took);
        }
    }

    /// One attempt's wait for the upstream's response head.
    pub fn upstream_head(&self, waited: Duration) {
        let f = &self.families.upstream_ttfb;
        self.observe(&self.handles.upstream_ttfb, f, waited);
    }

    /// Time to the client's response head not spent waiting on the upstream.
    pub fn proxy_added(&self, took: Duration) {
        let f = &self.families.proxy_overhead;
        self.observe(&self.handles.proxy_overhead, f, took);
    }

    /// One attempt with `key`, and what it came to.
    pub fn attempt(&self, key: &str, outcome: &Outcome) {
        self.families
            .attempts
            .with_label_values(&[&*self.name, key, outcome.label()])
            .inc();
    }

    /// One attempt with the key at `index` of the pool (named `key`), and what it came to:
    /// the series is resolved once per key and outcome, not looked up per attempt.
    pub fn key_attempt(&self, index: usize, key: &str, outcome: &Outcome) {
        let Some(handles) = self.handles.keys.get(index).filter(|k| *k.name == *key) else {
            return self.attempt(key, outcome);
        };
        handles.attempts[outcome_slot(outcome)]
            .get_or_init(|| {
                self.families
                    .attempts
                    .with_label_values(&[&*self.name, key, outcome.label()])
            })
            .inc();
    }

    /// The request went to another key after an attempt that came to `after`.
    pub fn retry(&self, after: &Outcome) {
        self.handles.retries[outcome_slot(after)]
            .get_or_init(|| {
                self.families
                    .retries
                    .with_label_values(&[&*self.name, after.label()])
            })
            .inc();
    }

    /// A key was cooled or quarantined.
    pub fn marked(&self, mark: &Mark) {
        let (Mark::Cool { reason, .. } | Mark::Quarantine { reason, .. }) = mark;
        self.families
            .cooldowns
            .with_label_values(&[&*self.name, reason])
            .inc();
    }
}
