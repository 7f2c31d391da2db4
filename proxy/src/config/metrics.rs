//! The `[metrics]` section: whether tenants created at run time get a `tenant` label each, or
//! share one (the default, so the label set stays bounded by the config file).

use super::problems::Problems;
use super::raw::RawMetrics;
use super::{defaults, MetricsConfig};

/// `registry`: whether `[registry]` is configured (without it no tenant is made at run time).
pub(super) fn metrics(m: &RawMetrics, registry: bool, p: &mut Problems) -> MetricsConfig {
    let runtime_tenant_labels = m
        .runtime_tenant_labels
        .unwrap_or(defaults::RUNTIME_TENANT_LABELS);
    if runtime_tenant_labels && !registry {
        p.add(
            "metrics.runtime_tenant_labels",
            "true without [registry]: no tenant is created at run time",
        );
    }
    MetricsConfig {
        runtime_tenant_labels,
    }
}
