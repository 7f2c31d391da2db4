//! Figures from the outcomes: per kind, per second of the run, latency percentiles.

use crate::mix::Outcome;
use std::collections::BTreeMap;
use std::time::Duration;

/// Outcomes with the second of the run each started in.
#[derive(Default)]
pub struct Stats {
    pub rows: Vec<(u64, Outcome)>,
}

/// The `q` quantile (0..=1) of sorted durations, in milliseconds.
pub fn quantile_ms(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

impl Stats {
    /// Print the figures; returns the number of unexpected outcomes.
    pub fn report(&self) -> usize {
        let mut kinds: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
        for (_, o) in &self.rows {
            let e = kinds.entry(o.kind.name()).or_default();
            e.0 += 1;
            e.1 += usize::from(!o.expected);
        }
        for (kind, (n, bad)) in &kinds {
            println!("kind {kind}: {n} requests, {bad} unexpected");
        }
        let mut heads: Vec<Duration> = self.rows.iter().map(|(_, o)| o.head).collect();
        heads.sort_unstable();
        println!(
            "head latency ms: p50 {:.2} p99 {:.2} max {:.2}",
            quantile_ms(&heads, 0.5),
            quantile_ms(&heads, 0.99),
            quantile_ms(&heads, 1.0)
        );
        let mut seconds: BTreeMap<u64, Vec<&Outcome>> = BTreeMap::new();
        for (s, o) in &self.rows {
            seconds.entry(*s).or_default().push(o);
        }
        for (s, outcomes) in seconds {
            let mut d: Vec<Duration> = outcomes.iter().map(|o| o.head).collect();
            d.sort_unstable();
            let bad = outcomes.iter().filter(|o| !o.expected).count();
            println!(
                "second {s}: {} requests, {bad} unexpected, p99 {:.2} ms",
                outcomes.len(),
                quantile_ms(&d, 0.99)
            );
        }
        let unexpected: Vec<&Outcome> = self
            .rows
            .iter()
            .map(|(_, o)| o)
            .filter(|o| !o.expected)
            .collect();
        for o in unexpected.iter().take(5) {
            println!("unexpected {}: {}", o.kind.name(), o.detail);
        }
        let total = unexpected.len();
        println!("total {} requests, {total} unexpected", self.rows.len());
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles() {
        let d: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile_ms(&d, 0.5).round(), 51.0);
        assert_eq!(quantile_ms(&d, 0.99), 99.0);
        assert_eq!(quantile_ms(&d, 1.0), 100.0);
        assert_eq!(quantile_ms(&[], 0.5), 0.0);
    }
}
