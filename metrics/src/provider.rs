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

/// The resolved series, filled in as they are first used.
#[derive(Default)]
struct Handles {
    /// `keyrelay_requests_total` per status class, in [`StatusClass::ALL`] order.
    requests: [OnceLock<IntCounter>; 5],
    upstream_ttfb: OnceLock<Histogram>,
    request_duration: OnceLock<Histogram>,
    proxy_overhead: OnceLock<Histogram>,
}

impl std::fmt::Debug for ProviderMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ProviderMetrics({})", self.name)
    }
}

impl ProviderMetrics {
    pub(crate) fn new(families: Arc<Families>, name: &str) -> ProviderMetrics {
        ProviderMetrics {
            handles: Arc::default(),
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

    /// The request went to another key after an attempt that came to `after`.
    pub fn retry(&self, after: &Outcome) {
        self.families
            .retries
            .with_label_values(&[&*self.name, after.label()])
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
