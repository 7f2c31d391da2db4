//! keyrelay-metrics: one Prometheus registry, typed recording methods, closed label sets, text
//! encoding.
//!
//! Callers never name a label: they call a method (`provider.attempt(key, outcome)`), whose
//! arguments are closed enums ([`labels`], the pool's `Outcome` and `Mark`) or names from the
//! validated config. So cardinality is bounded by the pool size, no free text (let alone a
//! secret) can become a label, and a wrong label count cannot exist. Every per-pool family is
//! labelled `tenant` (see [`Tenant`]: a configured tenant's name, `shared`, or `runtime`) and
//! `provider` (the configured provider's name); a pool's handles are resolved once, when a
//! config is built, in [`ProviderMetrics`].

mod labels;
mod provider;
mod store;
mod websocket;

pub use labels::{AuthFailure, ReloadResult, StatusClass, StoreOp, Tenant};
pub use provider::ProviderMetrics;
pub use websocket::{WsDirection, WsEnd, WsMetrics};

use keyrelay_pool::Store;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Every metric keyrelay exports. Cheap to clone: one shared registry.
#[derive(Clone)]
pub struct Metrics {
    families: Arc<Families>,
}

/// The registered metric families.
pub(crate) struct Families {
    registry: Registry,
    pub(crate) requests: IntCounterVec,
    pub(crate) attempts: IntCounterVec,
    pub(crate) retries: IntCounterVec,
    pub(crate) cooldowns: IntCounterVec,
    pub(crate) upstream_ttfb: HistogramVec,
    pub(crate) request_duration: HistogramVec,
    pub(crate) proxy_overhead: HistogramVec,
    in_flight: IntGauge,
    open_streams: IntGauge,
    client_auth_failures: IntCounterVec,
    pub(crate) key_state: IntGaugeVec,
    pub(crate) key_requests_minute: IntGaugeVec,
    pub(crate) key_rpm_limit: IntGaugeVec,
    store_seconds: HistogramVec,
    /// `store_seconds` for acquires, resolved on first use (one per request).
    store_acquire: OnceLock<Histogram>,
    reloads: IntCounterVec,
    connections: Connections,
    pub(crate) websocket: websocket::WsFamilies,
    unreplayable_bodies: IntCounter,
    store_watched: OnceLock<()>,
}

/// Client connections on both listeners: open now, and closed at once for being over the cap.
struct Connections {
    open: IntGauge,
    refused: IntCounter,
}

impl Connections {
    fn new(b: &Builder) -> Connections {
        let name = "keyrelay_connections_refused_total";
        let help = "Client connections closed at accept because their listener's cap was reached.";
        let refused = IntCounter::new(name, help)
            .unwrap_or_else(|e| unreachable!("static counter {name}: {e}"));
        Connections {
            open: b.single_gauge(
                "keyrelay_open_connections",
                "Client connections open, proxy and admin listeners together.",
            ),
            refused: b.register(refused),
        }
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

const LATENCY_BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
const FAST_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Registers metrics, collecting them for the struct. Definitions are static, so a failure
/// here is a programming error caught by the tests below.
struct Builder(Registry);

impl Builder {
    fn register<M: prometheus::core::Collector + Clone + 'static>(&self, m: M) -> M {
        self.0
            .register(Box::new(m.clone()))
            .unwrap_or_else(|e| unreachable!("metric registered once: {e}"));
        m
    }

    fn counter(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.register(
            IntCounterVec::new(Opts::new(name, help), labels)
                .unwrap_or_else(|e| unreachable!("static counter {name}: {e}")),
        )
    }

    fn gauge(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.register(
            IntGaugeVec::new(Opts::new(name, help), labels)
                .unwrap_or_else(|e| unreachable!("static gauge {name}: {e}")),
        )
    }

    fn single_gauge(&self, name: &str, help: &str) -> IntGauge {
        self.register(
            IntGauge::new(name, help).unwrap_or_else(|e| unreachable!("static gauge {name}: {e}")),
        )
    }

    fn histogram(&self, name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> HistogramVec {
        self.register(
            HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                labels,
            )
            .unwrap_or_else(|e| unreachable!("static histogram {name}: {e}")),
        )
    }
}

impl Families {
    fn new() -> Families {
        let b = Builder(Registry::new());
        let (requests, attempts, retries, cooldowns, client_auth_failures, reloads) =
            Self::counters(&b);
        let (key_state, key_requests_minute, key_rpm_limit) = Self::key_gauges(&b);
        let (upstream_ttfb, request_duration, proxy_overhead, store_seconds) = Self::histograms(&b);
        Families {
            requests,
            attempts,
            retries,
            cooldowns,
            client_auth_failures,
            reloads,
            key_state,
            key_requests_minute,
            key_rpm_limit,
            upstream_ttfb,
            request_duration,
            proxy_overhead,
            store_seconds,
            store_acquire: OnceLock::new(),
            in_flight: b.single_gauge("keyrelay_in_flight_requests", "Requests being served."),
            open_streams: b.single_gauge(
                "keyrelay_open_streams",
                "Upstream response bodies being streamed.",
            ),
            connections: Connections::new(&b),
            websocket: websocket::WsFamilies::new(&b),
            unreplayable_bodies: b.register(
                IntCounter::new(
                    "keyrelay_request_bodies_unreplayable_total",
                    "Request bodies too large for memory streamed without a spill file (no spill space left, or none could be made): one attempt only.",
                )
                .unwrap_or_else(|e| unreachable!("static counter: {e}")),
            ),
            store_watched: OnceLock::new(),
            registry: b.0,
        }
    }

    #[allow(
        clippy::type_complexity,
        reason = "a tuple of families, named at the call site"
    )]
    fn counters(
        b: &Builder,
    ) -> (
        IntCounterVec,
        IntCounterVec,
        IntCounterVec,
        IntCounterVec,
        IntCounterVec,
        IntCounterVec,
    ) {
        (
            b.counter(
                "keyrelay_requests_total",
                "Client requests answered, by tenant, provider and status class.",
                &["tenant", "provider", "status"],
            ),
            b.counter(
                "keyrelay_upstream_attempts_total",
                "Upstream attempts, by tenant, provider, key name and outcome.",
                &["tenant", "provider", "key", "outcome"],
            ),
            b.counter(
                "keyrelay_retries_total",
                "Requests sent again on another key, by tenant, provider and reason.",
                &["tenant", "provider", "reason"],
            ),
            b.counter(
                "keyrelay_cooldowns_total",
                "Cooldowns and quarantines started, by tenant, provider and reason.",
                &["tenant", "provider", "reason"],
            ),
            b.counter(
                "keyrelay_client_auth_failures_total",
                "Client requests refused for a missing or wrong token.",
                &["reason"],
            ),
            b.counter(
                "keyrelay_config_reloads_total",
                "Config reloads, by result.",
                &["result"],
            ),
        )
    }

    fn key_gauges(b: &Builder) -> (IntGaugeVec, IntGaugeVec, IntGaugeVec) {
        (
            b.gauge(
                "keyrelay_key_state",
                "1 for each key's current state (ready, cooling, quarantined, disabled).",
                &["tenant", "provider", "key", "state"],
            ),
            b.gauge(
                "keyrelay_key_requests_this_minute",
                "Requests counted against each key in the sliding minute.",
                &["tenant", "provider", "key"],
            ),
            b.gauge(
                "keyrelay_key_rpm_limit",
                "Each key's requests-per-minute limit.",
                &["tenant", "provider", "key"],
            ),
        )
    }

    fn histograms(b: &Builder) -> (HistogramVec, HistogramVec, HistogramVec, HistogramVec) {
        (
            b.histogram(
                "keyrelay_upstream_ttfb_seconds",
                "Time from sending upstream to the response head, per attempt.",
                &["tenant", "provider"],
                &LATENCY_BUCKETS,
            ),
            b.histogram(
                "keyrelay_request_duration_seconds",
                "Whole request, from arrival to the last body byte.",
                &["tenant", "provider"],
                &LATENCY_BUCKETS,
            ),
            b.histogram(
                "keyrelay_proxy_added_seconds",
                "Time to the response head not spent waiting on the upstream.",
                &["tenant", "provider"],
                &FAST_BUCKETS,
            ),
            b.histogram(
                "keyrelay_store_seconds",
                "Pool store round trips, by operation.",
                &["op"],
                &FAST_BUCKETS,
            ),
        )
    }
}

/// The states a key's `keyrelay_key_state` series are written for.
pub(crate) const KEY_STATES: [&str; 4] = ["ready", "cooling", "quarantined", "disabled"];

impl Metrics {
    pub fn new() -> Self {
        Metrics {
            families: Arc::new(Families::new()),
        }
    }

    /// The handles of `tenant`'s pool for the provider named `provider`, whose keys (names
    /// in pool order) get their attempt series resolved once, for
    /// [`ProviderMetrics::key_attempt`]. Build them when a config is built, not per request.
    pub fn pool(&self, tenant: Tenant<'_>, provider: &str, keys: &[&str]) -> ProviderMetrics {
        ProviderMetrics::new(self.families.clone(), tenant, provider, keys)
    }

    /// The handles of requests that matched no route: tenant and provider `"none"`.
    pub fn unrouted(&self) -> ProviderMetrics {
        ProviderMetrics::new(self.families.clone(), Tenant::Named("none"), "none", &[])
    }

    pub fn client_auth_failure(&self, why: AuthFailure) {
        self.families
            .client_auth_failures
            .with_label_values(&[why.label()])
            .inc();
    }

    pub fn reload(&self, result: ReloadResult) {
        self.families
            .reloads
            .with_label_values(&[result.label()])
            .inc();
    }

    pub fn store_round_trip(&self, op: StoreOp, took: Duration) {
        let f = &self.families;
        let slot = match op {
            StoreOp::Acquire => &f.store_acquire,
        };
        slot.get_or_init(|| f.store_seconds.with_label_values(&[op.label()]))
            .observe(took.as_secs_f64());
    }

    pub fn request_started(&self) {
        self.families.in_flight.inc();
    }

    pub fn request_ended(&self) {
        self.families.in_flight.dec();
    }

    /// Requests being served now.
    pub fn in_flight(&self) -> i64 {
        self.families.in_flight.get()
    }

    /// Response bodies being streamed now.
    pub fn open_streams(&self) -> i64 {
        self.families.open_streams.get()
    }

    pub fn stream_opened(&self) {
        self.families.open_streams.inc();
    }

    pub fn stream_closed(&self) {
        self.families.open_streams.dec();
    }

    pub fn connection_opened(&self) {
        self.families.connections.open.inc();
    }

    pub fn connection_closed(&self) {
        self.families.connections.open.dec();
    }

    pub fn connection_refused(&self) {
        self.families.connections.refused.inc();
    }

    /// Client connections open now.
    pub fn open_connections(&self) -> i64 {
        self.families.connections.open.get()
    }

    /// Client connections refused for the cap so far.
    pub fn connections_refused(&self) -> u64 {
        self.families.connections.refused.get()
    }

    /// A request body went upstream without a spill file, so without replay.
    pub fn request_body_unreplayable(&self) {
        self.families.unreplayable_bodies.inc();
    }

    /// Export the store's error count and degraded state, read from it at each scrape. The
    /// first store watched is kept: the store lives as long as the process.
    pub fn watch_store(&self, store: Arc<dyn Store>) {
        self.families.store_watched.get_or_init(|| {
            match store::StoreCollector::new(store) {
                Ok(c) => {
                    if let Err(e) = self.families.registry.register(Box::new(c)) {
                        unreachable!("store collector registered once: {e}");
                    }
                }
                Err(e) => unreachable!("static store metrics: {e}"),
            };
        });
    }

    /// Drop every per-key series, before they are written afresh from the current pools (so a
    /// key removed by a reload leaves `/metrics`).
    pub fn clear_keys(&self) {
        self.families.key_state.reset();
        self.families.key_requests_minute.reset();
        self.families.key_rpm_limit.reset();
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        // Encoding well-formed families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.families.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
