//! The store's own figures (commands failed, degraded or not), read from the store at each
//! scrape by a collector, so concurrent scrapes never add them up twice.

use keyrelay_pool::{Store, StoreState};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounter, IntGauge};
use std::sync::{Arc, Mutex, PoisonError};

/// Exports `keyrelay_store_errors_total` and `keyrelay_store_degraded` from a store.
pub(crate) struct StoreCollector {
    store: Arc<dyn Store>,
    /// Unregistered handles, set from the store under the lock and then collected.
    figures: Mutex<(IntCounter, IntGauge)>,
    descs: Vec<Desc>,
}

impl StoreCollector {
    pub(crate) fn new(store: Arc<dyn Store>) -> prometheus::Result<StoreCollector> {
        let errors = IntCounter::new(
            "keyrelay_store_errors_total",
            "Shared store commands that failed or timed out.",
        )?;
        let degraded = IntGauge::new(
            "keyrelay_store_degraded",
            "1 while the shared store is away and pool state is local to this instance.",
        )?;
        let descs = errors
            .desc()
            .into_iter()
            .chain(degraded.desc())
            .cloned()
            .collect();
        Ok(StoreCollector {
            store,
            figures: Mutex::new((errors, degraded)),
            descs,
        })
    }
}

impl Collector for StoreCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let figures = self.figures.lock().unwrap_or_else(PoisonError::into_inner);
        let (errors, degraded) = &*figures;
        errors.reset();
        errors.inc_by(self.store.errors());
        degraded.set(i64::from(self.store.state() == StoreState::Degraded));
        let mut out = errors.collect();
        out.extend(degraded.collect());
        out
    }
}
