//! keyrelay-metrics: one Prometheus registry, typed handles, closed label sets, text encoding.
//!
//! Labels take only values from closed sets (provider and key names come from the validated
//! config, status classes, outcomes and reasons from enums), so cardinality is bounded by the
//! pool size and no free text, let alone a secret, can become a label.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Status classes of client-facing responses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusClass {
    Informational,
    Success,
    Redirect,
    ClientError,
    ServerError,
}

impl StatusClass {
    pub fn of(status: u16) -> StatusClass {
        match status {
            100..=199 => StatusClass::Informational,
            200..=299 => StatusClass::Success,
            300..=399 => StatusClass::Redirect,
            400..=499 => StatusClass::ClientError,
            _ => StatusClass::ServerError,
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            StatusClass::Informational => "1xx",
            StatusClass::Success => "2xx",
            StatusClass::Redirect => "3xx",
            StatusClass::ClientError => "4xx",
            StatusClass::ServerError => "5xx",
        }
    }
}

/// Every metric keyrelay exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub attempts: IntCounterVec,
    pub retries: IntCounterVec,
    pub upstream_ttfb: HistogramVec,
    pub request_duration: HistogramVec,
    pub proxy_overhead: HistogramVec,
    pub in_flight: IntGauge,
    pub open_streams: IntGauge,
    pub client_auth_failures: IntCounterVec,
    pub cooldowns: IntCounterVec,
    pub key_state: IntGaugeVec,
    pub key_requests_minute: IntGaugeVec,
    pub key_rpm_limit: IntGaugeVec,
    pub store_seconds: HistogramVec,
    pub store_errors: IntCounter,
    pub store_degraded: IntGauge,
    pub reloads: IntCounterVec,
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

impl Metrics {
    pub fn new() -> Self {
        let b = Builder(Registry::new());
        let in_flight = b.register(
            IntGauge::new("keyrelay_in_flight_requests", "Requests being served.")
                .unwrap_or_else(|e| unreachable!("{e}")),
        );
        let open_streams = b.register(
            IntGauge::new(
                "keyrelay_open_streams",
                "Upstream response bodies being streamed.",
            )
            .unwrap_or_else(|e| unreachable!("{e}")),
        );
        let store_errors = b.register(
            IntCounter::new(
                "keyrelay_store_errors_total",
                "Shared store commands that failed or timed out.",
            )
            .unwrap_or_else(|e| unreachable!("{e}")),
        );
        let store_degraded = b.register(
            IntGauge::new(
                "keyrelay_store_degraded",
                "1 while the shared store is away and pool state is local to this instance.",
            )
            .unwrap_or_else(|e| unreachable!("{e}")),
        );
        Metrics {
            requests: b.counter(
                "keyrelay_requests_total",
                "Client requests answered, by provider and status class.",
                &["provider", "status"],
            ),
            attempts: b.counter(
                "keyrelay_upstream_attempts_total",
                "Upstream attempts, by provider, key name and outcome.",
                &["provider", "key", "outcome"],
            ),
            retries: b.counter(
                "keyrelay_retries_total",
                "Requests sent again on another key, by provider and reason.",
                &["provider", "reason"],
            ),
            client_auth_failures: b.counter(
                "keyrelay_client_auth_failures_total",
                "Client requests refused for a missing or wrong token.",
                &["reason"],
            ),
            cooldowns: b.counter(
                "keyrelay_cooldowns_total",
                "Cooldowns and quarantines started, by provider and reason.",
                &["provider", "reason"],
            ),
            reloads: b.counter(
                "keyrelay_config_reloads_total",
                "Config reloads, by result.",
                &["result"],
            ),
            key_state: b.gauge(
                "keyrelay_key_state",
                "1 for each key's current state (ready, cooling, quarantined, disabled).",
                &["provider", "key", "state"],
            ),
            key_requests_minute: b.gauge(
                "keyrelay_key_requests_this_minute",
                "Requests counted against each key in the sliding minute.",
                &["provider", "key"],
            ),
            key_rpm_limit: b.gauge(
                "keyrelay_key_rpm_limit",
                "Each key's requests-per-minute limit.",
                &["provider", "key"],
            ),
            upstream_ttfb: b.histogram(
                "keyrelay_upstream_ttfb_seconds",
                "Time from sending upstream to the response head, per attempt.",
                &["provider"],
                &LATENCY_BUCKETS,
            ),
            request_duration: b.histogram(
                "keyrelay_request_duration_seconds",
                "Whole request, from arrival to the last body byte.",
                &["provider"],
                &LATENCY_BUCKETS,
            ),
            proxy_overhead: b.histogram(
                "keyrelay_proxy_added_seconds",
                "Time to the response head not spent waiting on the upstream.",
                &["provider"],
                &FAST_BUCKETS,
            ),
            store_seconds: b.histogram(
                "keyrelay_store_seconds",
                "Pool store round trips, by operation.",
                &["op"],
                &FAST_BUCKETS,
            ),
            in_flight,
            open_streams,
            store_errors,
            store_degraded,
            registry: b.0,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        // Encoding well-formed families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_registers_and_encodes() {
        let m = Metrics::new();
        m.requests
            .with_label_values(&["openai", StatusClass::of(429).label()])
            .inc();
        m.key_state
            .with_label_values(&["openai", "k1", "ready"])
            .set(1);
        m.store_seconds
            .with_label_values(&["acquire"])
            .observe(0.0003);
        let text = m.encode();
        assert!(
            text.contains(r#"keyrelay_requests_total{provider="openai",status="4xx"} 1"#),
            "{text}"
        );
        assert!(text.contains("keyrelay_store_degraded 0"), "{text}");
        assert!(
            text.contains(r#"keyrelay_key_state{key="k1",provider="openai",state="ready"} 1"#),
            "{text}"
        );
    }
}
