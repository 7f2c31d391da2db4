//! Key status as the admin API shows it, key actions, and the per-key gauges refreshed at scrape.

use super::json;
use crate::body::ProxyBody;
use crate::service::App;
use http::{Response, StatusCode};
use keyrelay_pool::{KeyAction, KeyMode};
use std::time::{Duration, SystemTime};

/// RFC 3339 UTC with milliseconds, e.g. `2026-11-22T04:05:06.789Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

fn mode_parts(mode: &KeyMode, now: SystemTime) -> (Option<&'static str>, Option<String>) {
    let until = |d: &Duration| Some(rfc3339(now + *d));
    match mode {
        KeyMode::Ready => (None, None),
        KeyMode::Cooling { remaining, reason } | KeyMode::Quarantined { remaining, reason } => {
            (Some(reason), until(remaining))
        }
        KeyMode::Disabled => (Some("manual"), None),
    }
}

/// The `/admin/api-keys/status` document.
pub async fn status_json(app: &App) -> serde_json::Value {
    let now = SystemTime::now();
    let mut pools = Vec::new();
    for p in app.pools() {
        let keys = p.pool.status().await;
        let total_minute: u64 = keys.iter().map(|k| k.used_this_minute).sum();
        let capacity: u64 = keys.iter().map(|k| u64::from(k.rpm)).sum();
        let rows: Vec<serde_json::Value> = keys
            .iter()
            .map(|k| {
                let (reason, until) = mode_parts(&k.mode, now);
                let remaining = p.pool.quota(k.index);
                let group = p.pool.spec().keys.get(k.index).and_then(|k| k.group.as_deref());
                serde_json::json!({
                    "index": k.index,
                    "name": k.name,
                    "fingerprint": k.fingerprint,
                    "group": group,
                    "state": k.mode.label(),
                    "reason": reason,
                    "until": until,
                    "requests_this_minute": k.used_this_minute,
                    "rpm_limit": k.rpm,
                    "percent_used": (k.used_this_minute as f64 * 100.0 / f64::from(k.rpm.max(1)) * 10.0).round() / 10.0,
                    "total_requests": k.total,
                    "last_status": k.last_status,
                    "remaining_requests": remaining.0,
                    "remaining_tokens": remaining.1,
                })
            })
            .collect();
        pools.push(serde_json::json!({
            "pool": p.name,
            "tenant": p.tenant.as_deref().unwrap_or(crate::config::SHARED_LABEL),
            "provider": p.fallback_name(),
            "route": p.route,
            "strategy": p.pool.spec().strategy.as_str(),
            "total_requests_this_minute": total_minute,
            "capacity": capacity,
            "keys": rows,
        }));
    }
    serde_json::json!({
        "timestamp": rfc3339(now),
        "store": app.store_state().label(),
        "pools": pools,
    })
}

/// Apply an operator action to `provider`'s key named by name, fingerprint or index; audited
/// (one line, whatever the result).
pub async fn act(app: &App, provider: &str, key: &str, action: KeyAction) -> Response<ProxyBody> {
    use crate::tenants::audit::{key_action, Target};
    let label = match action {
        KeyAction::Disable => "disable",
        KeyAction::Enable => "enable",
        KeyAction::Reset => "reset",
    };
    let Some(p) = app.pools().into_iter().find(|p| p.name == provider) else {
        key_action(app.audit_file(), label, None, "no_such_provider");
        return json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "no such provider"}),
        );
    };
    let keys = &p.pool.spec().keys;
    let Some(index) = p.pool.find(key) else {
        let target = Target {
            pool: &p.name,
            tenant: p.tenant.as_deref(),
            key: "",
            fingerprint: "",
        };
        key_action(app.audit_file(), label, Some(&target), "no_such_key");
        return json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "no such key"}),
        );
    };
    // Shared: every instance sees it now; otherwise it holds here and, with a shared store,
    // is written there when the store is back.
    let shared = p.pool.act(index, action).await == keyrelay_pool::StoreState::Shared;
    let status = p.pool.status().await;
    let state = status.get(index).map_or("unknown", |s| s.mode.label());
    let target = Target {
        pool: &p.name,
        tenant: p.tenant.as_deref(),
        key: &keys[index].name,
        fingerprint: &keys[index].fingerprint,
    };
    key_action(app.audit_file(), label, Some(&target), state);
    json(
        StatusCode::OK,
        serde_json::json!({"provider": provider, "key": keys[index].name, "fingerprint": keys[index].fingerprint, "state": state, "shared": shared}),
    )
}

/// Write the per-key gauges afresh from the current pools (a key a reload removed leaves
/// them); called on each scrape. The store's own figures are read by their collector. The
/// runtime tenants' pools write none unless `[metrics] runtime_tenant_labels` is on: their
/// keys' names are chosen at run time (see [`keyrelay_metrics::Tenant::Runtime`]).
pub async fn refresh_metrics(app: &App) {
    let mut rows = Vec::new();
    for p in app.pools() {
        let keys = p.pool.status().await;
        rows.push((p, keys));
    }
    app.metrics().clear_keys();
    for (p, keys) in rows {
        for k in keys {
            let (state, used) = (k.mode.label(), k.used_this_minute);
            p.metrics.key_gauges(&k.name, state, used, k.rpm);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_320_306_789);
        assert_eq!(rfc3339(t), "2026-11-22T04:05:06.789Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}
