//! The embedded id map of `[affinity] mode = "map"`: a provider resource id to the fingerprint
//! of the key that created it, per pool, each entry with its expiry. Bounded: past
//! [`MAX_IDS`] entries the oldest are forgotten first (a forgotten id is routed by rotation,
//! as an unknown one).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;
use tokio::time::Instant;

/// Ids remembered in this process, over every pool.
pub const MAX_IDS: usize = 100_000;

#[derive(Debug, Default)]
pub struct IdMap {
    /// `(pool, id)` to (fingerprint, expiry).
    entries: HashMap<(String, String), (String, Instant)>,
    /// Insertion order, for forgetting the oldest; may hold keys since replaced or removed.
    order: VecDeque<(String, String)>,
}

impl IdMap {
    pub fn remember(&mut self, pool: &str, ids: &[String], fingerprint: &str, ttl: Duration) {
        let until = Instant::now() + ttl;
        for id in ids {
            let k = (pool.to_owned(), id.clone());
            if self
                .entries
                .insert(k.clone(), (fingerprint.to_owned(), until))
                .is_none()
            {
                self.order.push_back(k);
            }
        }
        while self.entries.len() > MAX_IDS {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            self.entries.remove(&old);
        }
    }

    /// Each id's fingerprint, `None` for an id unknown or expired.
    pub fn recall(&self, pool: &str, ids: &[String]) -> Vec<Option<String>> {
        let now = Instant::now();
        ids.iter()
            .map(|id| {
                self.entries
                    .get(&(pool.to_owned(), id.clone()))
                    .filter(|(_, until)| *until > now)
                    .map(|(fp, _)| fp.clone())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ids_are_recalled_per_pool_until_they_expire_and_bounded() {
        let mut m = IdMap::default();
        let ids = vec!["file-a".to_owned(), "batch_b".to_owned()];
        m.remember("openai", &ids, "fp1", Duration::from_secs(60));
        let got = m.recall("openai", &["file-a".into(), "file-x".into()]);
        assert_eq!(got, vec![Some("fp1".to_owned()), None]);
        assert_eq!(m.recall("acme.openai", &ids), vec![None, None]);
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(m.recall("openai", &ids), vec![None, None]);
        for i in 0..=MAX_IDS {
            m.remember("p", &[format!("id{i}")], "fp", Duration::from_secs(60));
        }
        assert_eq!(m.recall("p", &["id0".into()]), vec![None]);
        assert_eq!(
            m.recall("p", &[format!("id{MAX_IDS}")]),
            vec![Some("fp".into())]
        );
        assert!(m.entries.len() <= MAX_IDS);
    }
}
