//! Tests of the registry: every family registers, encodes, and records through its method.

use super::*;
use keyrelay_pool::{Mark, MemoryStore, Outcome};

#[test]
fn every_metric_registers_and_encodes() {
    let m = Metrics::new();
    m.watch_store(Arc::new(MemoryStore::new()));
    let p = m.pool(Tenant::Shared, "openai", &[]);
    p.answered(429, Some(Duration::from_millis(3)));
    p.attempt("k1", &Outcome::RateLimited { retry_after: None });
    p.retry(&Outcome::NotSent);
    p.marked(&Mark::Cool {
        period: Duration::from_secs(1),
        reason: "rate_limited",
    });
    p.key_gauges("k1", "ready", 3, 60);
    m.store_round_trip(StoreOp::Acquire, Duration::from_micros(300));
    m.client_auth_failure(AuthFailure::Missing);
    m.reload(ReloadResult::Failure);
    let text = m.encode();
    for line in [
        r#"keyrelay_requests_total{provider="openai",status="4xx",tenant="shared"} 1"#,
        r#"keyrelay_upstream_attempts_total{key="k1",outcome="rate_limited",provider="openai",tenant="shared"} 1"#,
        r#"keyrelay_retries_total{provider="openai",reason="transport_error",tenant="shared"} 1"#,
        r#"keyrelay_cooldowns_total{provider="openai",reason="rate_limited",tenant="shared"} 1"#,
        r#"keyrelay_key_state{key="k1",provider="openai",state="ready",tenant="shared"} 1"#,
        r#"keyrelay_key_state{key="k1",provider="openai",state="cooling",tenant="shared"} 0"#,
        r#"keyrelay_key_requests_this_minute{key="k1",provider="openai",tenant="shared"} 3"#,
        r#"keyrelay_request_duration_seconds_count{provider="openai",tenant="shared"} 1"#,
        r#"keyrelay_store_seconds_count{op="acquire"} 1"#,
        r#"keyrelay_client_auth_failures_total{reason="missing"} 1"#,
        r#"keyrelay_config_reloads_total{result="failure"} 1"#,
        "keyrelay_store_degraded 0",
        "keyrelay_store_errors_total 0",
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }
}

#[test]
fn cleared_keys_leave_the_exposition() {
    let m = Metrics::new();
    let p = m.pool(Tenant::Shared, "openai", &[]);
    p.key_gauges("gone", "cooling", 1, 10);
    assert!(m.encode().contains(r#"key="gone""#));
    m.clear_keys();
    p.key_gauges("kept", "ready", 0, 10);
    let text = m.encode();
    assert!(!text.contains(r#"key="gone""#), "{text}");
    assert!(text.contains(r#"key="kept""#), "{text}");
}

#[test]
fn store_figures_are_read_not_accumulated() {
    let m = Metrics::new();
    m.watch_store(Arc::new(MemoryStore::new()));
    // Scraping twice must not add anything up.
    let _ = m.encode();
    let text = m.encode();
    assert!(text.contains("keyrelay_store_errors_total 0"), "{text}");
    // A second store is ignored: the first one is the process's.
    m.watch_store(Arc::new(MemoryStore::new()));
    assert_eq!(
        m.encode().matches("keyrelay_store_errors_total 0").count(),
        1
    );
}

#[test]
fn a_series_appears_only_once_used() {
    let m = Metrics::new();
    let p = m.pool(Tenant::Shared, "openai", &[]);
    assert!(!m.encode().contains("keyrelay_requests_total"));
    p.answered(200, None);
    p.answered(201, None);
    let text = m.encode();
    assert!(
        text.contains(
            r#"keyrelay_requests_total{provider="openai",status="2xx",tenant="shared"} 2"#
        ),
        "{text}"
    );
    assert!(!text.contains(r#"status="4xx""#), "{text}");
    assert!(
        !text.contains("keyrelay_request_duration_seconds_count"),
        "{text}"
    );
}

#[test]
fn attempts_by_key_index_count_on_the_same_series_as_by_name() {
    let m = Metrics::new();
    let p = m.pool(Tenant::Named("acme"), "openai", &["k1", "k2"]);
    p.key_attempt(1, "k2", &Outcome::Success);
    p.key_attempt(1, "k2", &Outcome::Success);
    p.attempt("k2", &Outcome::Success);
    // An index that names another key (or none) is counted by the name it was given.
    p.key_attempt(0, "k3", &Outcome::NotSent);
    p.key_attempt(7, "k1", &Outcome::NotSent);
    p.retry(&Outcome::NotSent);
    p.retry(&Outcome::NotSent);
    let text = m.encode();
    for line in [
        r#"keyrelay_upstream_attempts_total{key="k2",outcome="success",provider="openai",tenant="acme"} 3"#,
        r#"keyrelay_upstream_attempts_total{key="k3",outcome="transport_error",provider="openai",tenant="acme"} 1"#,
        r#"keyrelay_upstream_attempts_total{key="k1",outcome="transport_error",provider="openai",tenant="acme"} 1"#,
        r#"keyrelay_retries_total{provider="openai",reason="transport_error",tenant="acme"} 2"#,
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
    assert!(!text.contains(r#"key="k1",outcome="success""#), "{text}");
}

#[test]
fn runtime_tenants_count_together_under_one_tenant_and_key_label() {
    let m = Metrics::new();
    let one = m.pool(Tenant::Runtime, "openai", &["own"]);
    let two = m.pool(Tenant::Runtime, "openai", &["mine", "spare"]);
    one.answered(200, Some(Duration::from_millis(1)));
    two.answered(200, Some(Duration::from_millis(1)));
    one.key_attempt(0, "own", &Outcome::Success);
    two.key_attempt(1, "spare", &Outcome::Success);
    two.attempt("mine", &Outcome::Success);
    one.key_gauges("own", "ready", 1, 10);
    let ws = two.websocket();
    ws.opened();
    ws.closed(WsEnd::ClientClosed, 1, 2);
    let text = m.encode();
    for line in [
        r#"keyrelay_requests_total{provider="openai",status="2xx",tenant="runtime"} 2"#,
        r#"keyrelay_request_duration_seconds_count{provider="openai",tenant="runtime"} 2"#,
        r#"keyrelay_upstream_attempts_total{key="runtime",outcome="success",provider="openai",tenant="runtime"} 3"#,
        r#"keyrelay_websocket_sessions_opened_total{provider="openai",tenant="runtime"} 1"#,
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
    // Names chosen at run time never become labels, and no gauge stands for many keys.
    for name in [r#""own""#, r#""mine""#, r#""spare""#, "keyrelay_key_state{"] {
        assert!(!text.contains(name), "{name} in\n{text}");
    }
    assert_eq!(
        text.matches("keyrelay_requests_total{").count(),
        1,
        "{text}"
    );
}

#[test]
fn a_named_tenant_and_the_shared_pool_of_one_provider_are_apart() {
    let m = Metrics::new();
    let shared = m.pool(Tenant::Shared, "openai", &["k"]);
    let acme = m.pool(Tenant::Named("acme"), "openai", &["k"]);
    shared.answered(200, None);
    acme.answered(200, None);
    acme.answered(500, None);
    m.unrouted().answered(404, None);
    acme.key_gauges("k", "disabled", 0, 5);
    let text = m.encode();
    for line in [
        r#"keyrelay_requests_total{provider="openai",status="2xx",tenant="shared"} 1"#,
        r#"keyrelay_requests_total{provider="openai",status="2xx",tenant="acme"} 1"#,
        r#"keyrelay_requests_total{provider="openai",status="5xx",tenant="acme"} 1"#,
        r#"keyrelay_requests_total{provider="none",status="4xx",tenant="none"} 1"#,
        r#"keyrelay_key_state{key="k",provider="openai",state="disabled",tenant="acme"} 1"#,
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
    assert_eq!(format!("{acme:?}"), "ProviderMetrics(acme/openai)");
    assert_eq!((acme.tenant(), acme.provider()), ("acme", "openai"));
}
