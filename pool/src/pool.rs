//! A provider's key pool: its keys, its settings, and the store that holds its state.

use crate::key::Key;
use crate::outcome::Outcome;
use crate::store::{Acquire, KeyAction, KeyStatus, Mark, PoolSpec, Report, Store};
use std::sync::Arc;
use std::time::Duration;

/// How outcomes turn into penalties.
#[derive(Clone, Copy, Debug)]
pub struct PoolSettings {
    /// Cooldown after a 429 that carries no hint.
    pub cooldown: Duration,
    /// How long a key the provider refused (401/403) stays out.
    pub quarantine: Duration,
    /// Upper bound on any provider hint, so a bogus Retry-After cannot park a key for days.
    pub max_cooldown: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            cooldown: Duration::from_secs(60),
            quarantine: Duration::from_secs(600),
            max_cooldown: Duration::from_secs(3600),
        }
    }
}

/// A pool: spec plus settings plus store. Cheap to share behind an `Arc`.
pub struct Pool {
    spec: PoolSpec,
    settings: PoolSettings,
    store: Arc<dyn Store>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("spec", &self.spec)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Pool {
    pub fn new(spec: PoolSpec, settings: PoolSettings, store: Arc<dyn Store>) -> Self {
        Pool {
            spec,
            settings,
            store,
        }
    }

    pub fn spec(&self) -> &PoolSpec {
        &self.spec
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn key(&self, index: usize) -> Option<&Key> {
        self.spec.keys.get(index)
    }

    pub async fn acquire(&self, tried: &[usize]) -> Acquire {
        self.store.acquire(&self.spec, tried).await
    }

    /// The mark an outcome earns, if any.
    pub fn mark_for(&self, outcome: &Outcome) -> Option<Mark> {
        match outcome {
            Outcome::RateLimited { retry_after } => Some(Mark::Cool {
                period: retry_after
                    .unwrap_or(self.settings.cooldown)
                    .min(self.settings.max_cooldown),
                reason: "rate_limited",
            }),
            Outcome::Unauthorized => Some(Mark::Quarantine {
                period: self.settings.quarantine,
                reason: "unauthorized",
            }),
            // A single 5xx or transport failure says more about the provider than the key.
            _ => None,
        }
    }

    pub async fn report(&self, index: usize, status: Option<u16>, outcome: &Outcome) {
        let report = Report {
            status,
            mark: self.mark_for(outcome),
        };
        self.store.report(&self.spec, index, report).await;
    }

    /// An operator's action on key `index`.
    pub async fn act(&self, index: usize, action: KeyAction) {
        self.store.act(&self.spec, index, action).await;
    }

    pub async fn status(&self) -> Vec<KeyStatus> {
        self.store.status(&self.spec).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Secret;
    use crate::memory::MemoryStore;
    use crate::select::Strategy;

    fn pool() -> Pool {
        let keys = vec![
            Key::new("a", Secret::new("sa"), 10, 1),
            Key::new("b", Secret::new("sb"), 10, 1),
        ];
        Pool::new(
            PoolSpec::new("p", keys, Strategy::RoundRobin),
            PoolSettings::default(),
            Arc::new(MemoryStore::new()),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn outcomes_become_marks() {
        let p = pool();
        let hinted = Outcome::RateLimited {
            retry_after: Some(Duration::from_secs(5)),
        };
        assert_eq!(
            p.mark_for(&hinted),
            Some(Mark::Cool {
                period: Duration::from_secs(5),
                reason: "rate_limited"
            })
        );
        let bogus = Outcome::RateLimited {
            retry_after: Some(Duration::from_secs(86_400 * 7)),
        };
        assert!(
            matches!(p.mark_for(&bogus), Some(Mark::Cool { period, .. }) if period == Duration::from_secs(3600))
        );
        let bare = Outcome::RateLimited { retry_after: None };
        assert!(
            matches!(p.mark_for(&bare), Some(Mark::Cool { period, .. }) if period == Duration::from_secs(60))
        );
        assert!(matches!(
            p.mark_for(&Outcome::Unauthorized),
            Some(Mark::Quarantine { .. })
        ));
        assert_eq!(p.mark_for(&Outcome::ServerError), None);
        assert_eq!(p.mark_for(&Outcome::TransportError), None);
    }

    #[tokio::test(start_paused = true)]
    async fn unauthorized_key_is_quarantined_then_returns() {
        let p = pool();
        assert_eq!(p.acquire(&[]).await, Acquire::Key(0));
        p.report(0, Some(401), &Outcome::Unauthorized).await;
        assert_eq!(p.acquire(&[]).await, Acquire::Key(1));
        assert_eq!(p.acquire(&[]).await, Acquire::Key(1));
        tokio::time::advance(Duration::from_secs(600)).await;
        assert_eq!(p.acquire(&[1]).await, Acquire::Key(0));
    }
}
