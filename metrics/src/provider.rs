//! One pool's metric handles, labelled by its tenant and provider, each resolved on first use
//! and kept, so the request path does no label lookups for them (and a series appears only
//! once it has something to say).

use crate::websocket::WsMetrics;
use crate::{Families, StatusClass, Tenant, KEY_STATES};
use keyrelay_pool::{Mark, Outcome};
use prometheus::{Histogram, HistogramVec, IntCounter};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Recording methods for one pool's requests and attempts.
#[derive(Clone)]
pub struct ProviderMetrics {
    families: Arc<Families>,
    labels: Arc<Labels>,
    handles: Arc<Handles>,
}

/// The pool's label values, fixed when it is built.
struct Labels {
    tenant: Box<str>,
    provider: Box<str>,
    /// The runtime tenants' pools together: their keys count under the tenant label, and
    /// write no per-key gauges (one gauge cannot stand for many tenants' keys).
    collapsed: bool,
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
    /// The WebSocket series, resolved at the pool's first session.
    websocket: OnceLock<WsMetrics>,
}

/// One key's attempt counters.
struct KeyHandles {
    name: Box<str>,
    attempts: [OnceLock<IntCounter>; OUTCOMES],
}

impl std::fmt::Debug for ProviderMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let l = &self.labels;
        write!(f, "ProviderMetrics({}/{})", l.tenant, l.provider)
    }
}

impl ProviderMetrics {
    /// `keys`: the pool's key names in order, whose attempt series are then kept here (see
    /// [`ProviderMetrics::key_attempt`]).
    pub(crate) fn new(
        families: Arc<Families>,
        tenant: Tenant<'_>,
        provider: &str,
        keys: &[&str],
    ) -> ProviderMetrics {
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
            labels: Arc::new(Labels {
                tenant: tenant.label().into(),
                provider: provider.into(),
                collapsed: tenant == Tenant::Runtime,
            }),
            families,
        }
    }

    /// The `tenant` label of this pool's series.
    pub fn tenant(&self) -> &str {
        &self.labels.tenant
    }

    /// The `provider` label of this pool's series.
    pub fn provider(&self) -> &str {
        &self.labels.provider
    }

    /// `[tenant, provider]`, the first labels of every family here.
    fn pool(&self) -> [&str; 2] {
        [&self.labels.tenant, &self.labels.provider]
    }

    /// The `key` label of the key named `key`: its name, or the tenant label when the pool
    /// stands for every runtime tenant.
    fn key_label<'k>(&'k self, key: &'k str) -> &'k str {
        if self.labels.collapsed {
            &self.labels.tenant
        } else {
            key
        }
    }

    fn observe(&self, slot: &OnceLock<Histogram>, family: &HistogramVec, d: Duration) {
        slot.get_or_init(|| family.with_label_values(&self.pool()))
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
                let [tenant, provider] = self.pool();
                self.families
                    .requests
                    .with_label_values(&[tenant, provider, class.label()])
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

    fn attempt_series(&self, key: &str, outcome: &Outcome) -> IntCounter {
        let [tenant, provider] = self.pool();
        self.families.attempts.with_label_values(&[
            tenant,
            provider,
            self.key_label(key),
            outcome.label(),
        ])
    }

    /// One attempt with `key`, and what it came to.
    pub fn attempt(&self, key: &str, outcome: &Outcome) {
        self.attempt_series(key, outcome).inc();
    }

    /// One attempt with the key at `index` of the pool (named `key`), and what it came to:
    /// the series is resolved once per key and outcome, not looked up per attempt.
    pub fn key_attempt(&self, index: usize, key: &str, outcome: &Outcome) {
        let Some(handles) = self.handles.keys.get(index).filter(|k| *k.name == *key) else {
            return self.attempt(key, outcome);
        };
        handles.attempts[outcome_slot(outcome)]
            .get_or_init(|| self.attempt_series(key, outcome))
            .inc();
    }

    /// The request went to another key after an attempt that came to `after`.
    pub fn retry(&self, after: &Outcome) {
        self.handles.retries[outcome_slot(after)]
            .get_or_init(|| {
                let [tenant, provider] = self.pool();
                self.families
                    .retries
                    .with_label_values(&[tenant, provider, after.label()])
            })
            .inc();
    }

    /// A key was cooled or quarantined.
    pub fn marked(&self, mark: &Mark) {
        let (Mark::Cool { reason, .. } | Mark::Quarantine { reason, .. }) = mark;
        let [tenant, provider] = self.pool();
        self.families
            .cooldowns
            .with_label_values(&[tenant, provider, reason])
            .inc();
    }

    /// The pool's WebSocket handles, resolved at its first session and kept.
    pub fn websocket(&self) -> &WsMetrics {
        self.handles
            .websocket
            .get_or_init(|| WsMetrics::new(&self.families.websocket, self.pool()))
    }

    /// One key's state (a label of the closed set ready, cooling, quarantined, disabled), use
    /// this minute and limit; written at scrape, after [`crate::Metrics::clear_keys`]. Not
    /// for the runtime tenants' pools together: their keys have no labels of their own.
    pub fn key_gauges(&self, key: &str, state: &str, used: u64, rpm: u32) {
        if self.labels.collapsed {
            return;
        }
        let f = &self.families;
        let [tenant, provider] = self.pool();
        for s in KEY_STATES {
            f.key_state
                .with_label_values(&[tenant, provider, key, s])
                .set(i64::from(s == state));
        }
        f.key_requests_minute
            .with_label_values(&[tenant, provider, key])
            .set(i64::try_from(used).unwrap_or(i64::MAX));
        f.key_rpm_limit
            .with_label_values(&[tenant, provider, key])
            .set(i64::from(rpm));
    }
}
