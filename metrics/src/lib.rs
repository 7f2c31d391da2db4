//! keyrelay-metrics: one Prometheus registry, typed handles, closed label sets, text encoding.
//!
//! Labels take only values from closed sets (provider and key names come from the validated
//! config, status classes and outcomes from enums), so cardinality is bounded by the pool size
//! and no free text, let alone a secret, can become a label.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
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
    pub in_flight: IntGauge,
    pub client_auth_failures: IntCounterVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| {
        unreachable!("static metric definition {name} is valid: {e}");
    });
    registry
        .register(Box::new(c.clone()))
        .unwrap_or_else(|e| unreachable!("metric {name} registered once: {e}"));
    c
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = counter(
            &registry,
            "keyrelay_requests_total",
            "Client requests answered, by provider and status class.",
            &["provider", "status"],
        );
        let attempts = counter(
            &registry,
            "keyrelay_upstream_attempts_total",
            "Upstream attempts, by provider, key name and outcome.",
            &["provider", "key", "outcome"],
        );
        let retries = counter(
            &registry,
            "keyrelay_retries_total",
            "Requests sent again on another key, by provider and reason.",
            &["provider", "reason"],
        );
        let client_auth_failures = counter(
            &registry,
            "keyrelay_client_auth_failures_total",
            "Client requests refused for a missing or wrong token, by route kind.",
            &["reason"],
        );
        let upstream_ttfb = HistogramVec::new(
            HistogramOpts::new(
                "keyrelay_upstream_ttfb_seconds",
                "Time from sending upstream to the response head.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ]),
            &["provider"],
        )
        .unwrap_or_else(|e| unreachable!("static histogram is valid: {e}"));
        registry
            .register(Box::new(upstream_ttfb.clone()))
            .unwrap_or_else(|e| unreachable!("histogram registered once: {e}"));
        let in_flight = IntGauge::new("keyrelay_in_flight_requests", "Requests being served.")
            .unwrap_or_else(|e| unreachable!("static gauge is valid: {e}"));
        registry
            .register(Box::new(in_flight.clone()))
            .unwrap_or_else(|e| unreachable!("gauge registered once: {e}"));
        Metrics {
            registry,
            requests,
            attempts,
            retries,
            upstream_ttfb,
            in_flight,
            client_auth_failures,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
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
    fn encodes_labelled_counters() {
        let m = Metrics::new();
        m.requests
            .with_label_values(&["openai", StatusClass::of(429).label()])
            .inc();
        let text = m.encode();
        assert!(
            text.contains(r#"keyrelay_requests_total{provider="openai",status="4xx"} 1"#),
            "{text}"
        );
    }
}
