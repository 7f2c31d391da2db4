//! A provider's key pool: its keys, its settings, the store that holds its state, and the
//! [`Lease`] through which one attempt uses one key and reports how it went.

use crate::budget::{BudgetSettings, RetryBudget};
use crate::group::{Group, Groups};
use crate::hints::remaining_quota;
use crate::key::{Account, Key};
use crate::observed::{Observed, Quota};
use crate::outcome::{classify, Outcome};
use crate::refusals::Refusals;
use crate::store::{Acquire, KeyAction, KeyStatus, Mark, PoolSpec, Report, Store, StoreState};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How outcomes turn into penalties.
#[derive(Clone, Copy, Debug)]
pub struct PoolSettings {
    /// Cooldown after a 429 that carries no hint.
    pub cooldown: Duration,
    /// How long a key the provider refused (401/403) stays out.
    pub quarantine: Duration,
    /// Upper bound on any provider hint, so a bogus Retry-After cannot park a key for days.
    pub max_cooldown: Duration,
    /// How long a key refused for a route (403 permission or scope) is skipped on that route.
    pub refusal_memory: Duration,
    /// How much retrying on other keys the provider allows.
    pub budget: BudgetSettings,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            cooldown: Duration::from_secs(60),
            quarantine: Duration::from_secs(600),
            max_cooldown: Duration::from_secs(3600),
            refusal_memory: Duration::from_secs(300),
            budget: BudgetSettings::default(),
        }
    }
}

/// How a key goes on the wire: the header it is sent in, and whether as `Bearer <key>`.
#[derive(Clone, Debug)]
pub struct KeyAuth {
    pub header: HeaderName,
    pub bearer: bool,
}

/// Why a pool could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The secret has bytes a header cannot carry (the secret itself is never shown).
    #[error("key \"{key}\" of pool \"{pool}\" is not a valid header value")]
    InvalidKeyHeader { pool: String, key: String },
}

/// What a pool keeps per key beside its spec: the ready-made credential, the account headers
/// it is sent with, and its quota slot.
struct Held {
    credential: HeaderValue,
    account: Vec<(HeaderName, HeaderValue)>,
    quota: Arc<Quota>,
}

/// A pool: spec plus settings plus store, and each key's ready-made credential. Cheap to share
/// behind an `Arc`; built once per config.
pub struct Pool {
    spec: PoolSpec,
    settings: PoolSettings,
    store: Arc<dyn Store>,
    auth: KeyAuth,
    held: Vec<Held>,
    refusals: Refusals,
    budget: RetryBudget,
    groups: Groups,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("spec", &self.spec)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// One request's attempt loop as the pool sees it: the route it is for, the keys leased so far
/// (skipped from now on), and its standing with the retry budget.
#[derive(Debug)]
pub struct Tried<'a> {
    route: &'a str,
    keys: Vec<usize>,
    /// Whether the first attempt was added to the retry budget.
    deposited: bool,
    /// Retries the budget granted so far.
    granted: usize,
    /// Whether a key remembered as refused on this route was given its one chance.
    refused_chance: bool,
    /// The one key this request may use (a resource it names lives there).
    pinned: Option<usize>,
    /// Keys never to use: those outside the group the request named (none without one).
    outside: &'a [usize],
}

impl<'a> Tried<'a> {
    /// A new attempt loop for a request to `route` (the path, without the query).
    pub fn new(route: &'a str, max_attempts: usize) -> Self {
        Tried {
            route,
            keys: Vec::with_capacity(max_attempts),
            deposited: false,
            granted: 0,
            refused_chance: false,
            pinned: None,
            outside: &[],
        }
    }

    /// An attempt loop that may only use key `index`: waiting for it while it cools, never
    /// moving to another key.
    pub fn pinned(route: &'a str, max_attempts: usize, index: usize) -> Self {
        Tried {
            pinned: Some(index),
            ..Tried::new(route, max_attempts)
        }
    }

    /// The same loop, served only by `pool`'s keys of `group`: the others are skipped from
    /// the start. A pinned loop keeps its one key, in the group or not: the resource it names
    /// lives there and nowhere else, so no key of the group could serve it.
    pub fn within(mut self, pool: &'a Pool, group: Group) -> Self {
        self.outside = pool.groups.outside(group);
        self
    }

    pub fn is_pinned(&self) -> bool {
        self.pinned.is_some()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// The answer to "may this attempt have a key?".
#[derive(Debug)]
pub enum Acquired<'p> {
    /// This key, counted against its limit; report the attempt's result through it.
    Lease(Lease<'p>),
    /// No untried key is ready; the first one will be in this long.
    Wait(Duration),
    /// Every key was tried already, or none can serve at all.
    Exhausted,
    /// A retry would exceed the provider's retry budget: the last answer stands.
    OverBudget,
}

/// One attempt's hold on one key: everything the attempt needs to send, and the one way to
/// say how it went.
#[derive(Debug)]
pub struct Lease<'p> {
    pool: &'p Pool,
    index: usize,
    route: &'p str,
}

/// What an attempt came to, as the pool is told it.
#[derive(Clone, Copy, Debug)]
pub enum Answer<'a> {
    /// A response head arrived.
    Head {
        status: StatusCode,
        headers: &'a HeaderMap,
        /// The error body, read where [`crate::needs_body`] asked for it.
        body: Option<&'a [u8]>,
    },
    /// None did: the request failed in transport or timed out, after it was `sent` (so the
    /// provider may be working on it) or provably before.
    Failed { sent: bool },
}

/// How the pool judged an attempt: its outcome, and the mark it put on the key, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub outcome: Outcome,
    pub mark: Option<Mark>,
}

impl<'p> Lease<'p> {
    pub fn key(&self) -> &'p Key {
        &self.pool.spec.keys[self.index]
    }

    /// The key's place in the pool.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The header that carries the key, and its value (marked sensitive).
    pub fn credential(&self) -> (&'p HeaderName, &'p HeaderValue) {
        (
            &self.pool.auth.header,
            &self.pool.held[self.index].credential,
        )
    }

    /// Headers that go with this key: `OpenAI-Organization` and `OpenAI-Project` where its
    /// config names them.
    pub fn account_headers(&self) -> &'p [(HeaderName, HeaderValue)] {
        &self.pool.held[self.index].account
    }

    /// Judge the attempt, record what the provider reported about the key, mark the key if the
    /// outcome earns it, and say what happened.
    pub async fn report(self, answer: Answer<'_>) -> Verdict {
        let (status, outcome) = match answer {
            Answer::Head {
                status,
                headers,
                body,
            } => {
                self.pool.held[self.index]
                    .quota
                    .record(remaining_quota(headers));
                (
                    Some(status.as_u16()),
                    classify(status, headers, body, SystemTime::now()),
                )
            }
            Answer::Failed { sent: false } => (None, Outcome::NotSent),
            Answer::Failed { sent: true } => (None, Outcome::Lost),
        };
        if outcome == Outcome::Forbidden {
            let period = self.pool.settings.refusal_memory;
            self.pool.refusals.remember(self.index, self.route, period);
        }
        let mark = self.pool.mark_for(&outcome);
        let report = Report { status, mark };
        self.pool
            .store
            .report(&self.pool.spec, self.index, report)
            .await;
        Verdict { outcome, mark }
    }
}

impl Pool {
    /// Build a pool, each key's credential made here once. `observed` keeps the providers'
    /// quota reports by fingerprint across reloads.
    pub fn new(
        spec: PoolSpec,
        settings: PoolSettings,
        store: Arc<dyn Store>,
        auth: KeyAuth,
        observed: &Observed,
    ) -> Result<Self, PoolError> {
        let held = spec
            .keys
            .iter()
            .map(|k| {
                let invalid = || PoolError::InvalidKeyHeader {
                    pool: spec.name.clone(),
                    key: k.name.clone(),
                };
                let credential = credential(&auth, k).ok_or_else(invalid)?;
                let account = account_headers(&k.account).ok_or_else(invalid)?;
                let quota = observed.slot(&k.fingerprint);
                Ok(Held {
                    credential,
                    account,
                    quota,
                })
            })
            .collect::<Result<Vec<_>, PoolError>>()?;
        Ok(Pool {
            groups: Groups::new(&spec.keys),
            budget: RetryBudget::new(settings.budget),
            refusals: Refusals::default(),
            spec,
            settings,
            store,
            auth,
            held,
        })
    }

    pub fn spec(&self) -> &PoolSpec {
        &self.spec
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// A lease on a ready key not tried yet and not refused on the route, counted against its
    /// limit (one store round trip). A retry must fit the retry budget.
    pub async fn acquire<'a>(&'a self, tried: &mut Tried<'a>) -> Acquired<'a> {
        if !self.budget_allows(tried) {
            return Acquired::OverBudget;
        }
        let acquired = match tried.pinned {
            Some(only) if tried.keys.contains(&only) => Acquire::Exhausted,
            Some(only) => {
                let others: Vec<usize> = (0..self.spec.keys.len()).filter(|i| *i != only).collect();
                self.store.acquire(&self.spec, &others).await
            }
            None => match self.skipped(tried) {
                None => self.store.acquire(&self.spec, &tried.keys).await,
                Some(skip) => self.store.acquire(&self.spec, &skip).await,
            },
        };
        match acquired {
            Acquire::Key(index) if index < self.spec.keys.len() => {
                tried.keys.push(index);
                Acquired::Lease(Lease {
                    pool: self,
                    index,
                    route: tried.route,
                })
            }
            Acquire::Key(_) | Acquire::Exhausted => Acquired::Exhausted,
            Acquire::Wait(d) => Acquired::Wait(d),
        }
    }

    /// The first attempt adds to the budget; each later one must be granted a retry (once,
    /// however often it then waits for a key).
    fn budget_allows(&self, tried: &mut Tried<'_>) -> bool {
        if tried.keys.is_empty() {
            if !tried.deposited {
                self.budget.deposit();
                tried.deposited = true;
            }
            return true;
        }
        if tried.granted >= tried.keys.len() {
            return true;
        }
        let granted = self.budget.withdraw();
        if granted {
            tried.granted = tried.keys.len();
        }
        granted
    }

    /// The keys to skip beyond those tried: those outside the request's group, and those
    /// refused on the route, unless that would skip every key, in which case one refused key
    /// gets one chance to answer for itself. `None` (skip only those tried, no allocation)
    /// when there is neither a group nor a refusal.
    fn skipped(&self, tried: &mut Tried<'_>) -> Option<Vec<usize>> {
        let refusals = self.refusals.any();
        if !refusals && tried.outside.is_empty() {
            return None;
        }
        let mut skip = tried.keys.clone();
        skip.extend_from_slice(tried.outside);
        let base = skip.len();
        self.refusals.refused(tried.route, &mut skip);
        if skip.len() == base {
            return Some(skip);
        }
        let every = (0..self.spec.keys.len()).all(|i| skip.contains(&i));
        if every && !tried.refused_chance {
            tried.refused_chance = true;
            skip.truncate(base);
        }
        Some(skip)
    }

    /// The mark an outcome earns, if any.
    fn mark_for(&self, outcome: &Outcome) -> Option<Mark> {
        match outcome {
            // A hint of zero ("retry now") benches nothing: a mark of a few milliseconds would
            // only make concurrent requests find every key cooling and answer 429.
            Outcome::RateLimited {
                retry_after: Some(hint),
            } if hint.is_zero() => None,
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

    /// The group named `name`, if any key of this pool is in it.
    pub fn group(&self, name: &str) -> Option<Group> {
        self.groups.find(name)
    }

    /// The position of the key named by name, fingerprint or index, for operators.
    pub fn find(&self, key: &str) -> Option<usize> {
        let keys = &self.spec.keys;
        keys.iter()
            .position(|k| k.name == key || k.fingerprint == key)
            .or_else(|| key.parse::<usize>().ok().filter(|i| *i < keys.len()))
    }

    /// What the provider last reported as left of key `index`'s quota: (requests, tokens).
    pub fn quota(&self, index: usize) -> (Option<i64>, Option<i64>) {
        self.held.get(index).map_or((None, None), |h| h.quota.get())
    }

    /// An operator's action on key `index`; answers where it is kept (see [`Store::act`]).
    pub async fn act(&self, index: usize, action: KeyAction) -> StoreState {
        self.store.act(&self.spec, index, action).await
    }

    /// Mark key `index` outside any attempt (its tokens this minute reached its `tpm`): kept
    /// as a 429's mark is, so every instance on the same store skips the key too.
    pub async fn mark(&self, index: usize, mark: Mark) {
        let report = Report {
            status: None,
            mark: Some(mark),
        };
        self.store.report(&self.spec, index, report).await;
    }

    pub async fn status(&self) -> Vec<KeyStatus> {
        self.store.status(&self.spec).await
    }
}

/// `OpenAI-Organization` / `OpenAI-Project` for an account, as far as it names them.
fn account_headers(account: &Account) -> Option<Vec<(HeaderName, HeaderValue)>> {
    let named = [
        ("openai-organization", &account.organization),
        ("openai-project", &account.project),
    ];
    named
        .into_iter()
        .filter_map(|(name, value)| Some((name, value.as_deref()?)))
        .map(|(name, value)| {
            Some((
                HeaderName::from_static(name),
                HeaderValue::from_str(value).ok()?,
            ))
        })
        .collect()
}

/// `Bearer <key>` or the bare key, as a sensitive header value (never shown by `Debug`).
fn credential(auth: &KeyAuth, key: &Key) -> Option<HeaderValue> {
    let secret = key.secret.expose();
    let mut value = if auth.bearer {
        let mut text = String::with_capacity(7 + secret.len());
        text.push_str("Bearer ");
        text.push_str(secret);
        HeaderValue::from_str(&text).ok()?
    } else {
        HeaderValue::from_str(secret).ok()?
    };
    value.set_sensitive(true);
    Some(value)
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
        let auth = KeyAuth {
            header: http::header::AUTHORIZATION,
            bearer: true,
        };
        Pool::new(
            PoolSpec::new("p", keys, Strategy::RoundRobin),
            PoolSettings::default(),
            Arc::new(MemoryStore::new()),
            auth,
            &Observed::default(),
        )
        .unwrap()
    }

    async fn lease<'p>(p: &'p Pool, tried: &mut Tried<'p>) -> Lease<'p> {
        match p.acquire(tried).await {
            Acquired::Lease(l) => l,
            other => panic!("no lease: {other:?}"),
        }
    }

    fn head(status: u16, headers: &HeaderMap) -> Answer<'_> {
        Answer::Head {
            status: StatusCode::from_u16(status).unwrap(),
            headers,
            body: None,
        }
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
        assert_eq!(p.mark_for(&Outcome::NotSent), None);
        let now = Outcome::RateLimited {
            retry_after: Some(Duration::ZERO),
        };
        assert_eq!(p.mark_for(&now), None, "retry-after: 0 benches nothing");
        assert_eq!(p.mark_for(&Outcome::Forbidden), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_carries_its_key_and_credential() {
        let p = pool();
        let mut tried = Tried::new("/v1/chat", 3);
        let l = lease(&p, &mut tried).await;
        assert_eq!(l.key().name, "a");
        let (name, value) = l.credential();
        assert_eq!(name, http::header::AUTHORIZATION);
        assert_eq!(value, "Bearer sa");
        assert!(value.is_sensitive());
        assert!(!format!("{l:?}").contains("sa\""), "{l:?}");
        let l = lease(&p, &mut tried).await;
        assert_eq!(l.key().name, "b");
        assert_eq!(tried.len(), 2);
        assert!(matches!(p.acquire(&mut tried).await, Acquired::Exhausted));
    }

    #[tokio::test(start_paused = true)]
    async fn unauthorized_key_is_quarantined_then_returns() {
        let p = pool();
        let l = lease(&p, &mut Tried::new("/v1/chat", 3)).await;
        let verdict = l.report(head(401, &HeaderMap::new())).await;
        assert_eq!(verdict.outcome, Outcome::Unauthorized);
        assert!(matches!(verdict.mark, Some(Mark::Quarantine { .. })));
        assert_eq!(
            lease(&p, &mut Tried::new("/v1/chat", 3)).await.key().name,
            "b"
        );
        assert_eq!(
            lease(&p, &mut Tried::new("/v1/chat", 3)).await.key().name,
            "b"
        );
        tokio::time::advance(Duration::from_secs(600)).await;
        let mut tried = Tried::new("/v1/chat", 3);
        assert_eq!(lease(&p, &mut tried).await.key().name, "a");
    }

    #[tokio::test(start_paused = true)]
    async fn reports_keep_the_providers_quota_across_rebuilds() {
        let observed = Observed::default();
        let build = || {
            let keys = vec![Key::new("a", Secret::new("sa"), 10, 1)];
            let auth = KeyAuth {
                header: HeaderName::from_static("x-api-key"),
                bearer: false,
            };
            let spec = PoolSpec::new("p", keys, Strategy::RoundRobin);
            let store = Arc::new(MemoryStore::new());
            Pool::new(spec, PoolSettings::default(), store, auth, &observed).unwrap()
        };
        let p = build();
        let mut h = HeaderMap::new();
        h.insert(
            "x-ratelimit-remaining-requests",
            HeaderValue::from_static("7"),
        );
        let verdict = lease(&p, &mut Tried::new("/v1/chat", 3))
            .await
            .report(head(200, &h))
            .await;
        assert_eq!(
            verdict,
            Verdict {
                outcome: Outcome::Success,
                mark: None
            }
        );
        assert_eq!(p.quota(0), (Some(7), None));
        let again = build();
        assert_eq!(again.quota(0), (Some(7), None));
        let (_, value) = lease(&again, &mut Tried::new("/v1/chat", 3))
            .await
            .credential();
        assert_eq!(value, "sa");
    }

    #[test]
    fn a_secret_that_is_no_header_value_is_refused_by_name() {
        let keys = vec![Key::new("bad", Secret::new("s\nx"), 10, 1)];
        let auth = KeyAuth {
            header: http::header::AUTHORIZATION,
            bearer: true,
        };
        let spec = PoolSpec::new("p", keys, Strategy::RoundRobin);
        let store = Arc::new(MemoryStore::new());
        let err = Pool::new(
            spec,
            PoolSettings::default(),
            store,
            auth,
            &Observed::default(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "key \"bad\" of pool \"p\" is not a valid header value"
        );
    }

    #[test]
    fn operators_name_keys_by_name_fingerprint_or_index() {
        let p = pool();
        let fp = p.spec().keys[1].fingerprint.clone();
        assert_eq!(p.find("a"), Some(0));
        assert_eq!(p.find(&fp), Some(1));
        assert_eq!(p.find("1"), Some(1));
        assert_eq!(p.find("2"), None);
        assert_eq!(p.find("zz"), None);
    }

    fn three(settings: PoolSettings) -> Pool {
        let keys = ["a", "b", "c"]
            .map(|n| Key::new(n, Secret::new(format!("s{n}")), 1000, 1))
            .to_vec();
        let auth = KeyAuth {
            header: http::header::AUTHORIZATION,
            bearer: true,
        };
        let spec = PoolSpec::new("p", keys, Strategy::RoundRobin);
        let store = Arc::new(MemoryStore::new());
        Pool::new(spec, settings, store, auth, &Observed::default()).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_skips_the_key_on_its_route_only() {
        let p = three(PoolSettings::default());
        let none = HeaderMap::new();
        let mut tried = Tried::new("/v1/fine_tuning/jobs", 3);
        let l = lease(&p, &mut tried).await;
        assert_eq!(l.key().name, "a");
        let verdict = l.report(head(403, &none)).await;
        assert_eq!(
            verdict,
            Verdict {
                outcome: Outcome::Forbidden,
                mark: None
            }
        );
        // Other routes still get key a, in its round-robin turn.
        let mut seen = Vec::new();
        for _ in 0..3 {
            let mut t = Tried::new("/v1/chat", 3);
            seen.push(lease(&p, &mut t).await.key().name.clone());
        }
        seen.sort();
        assert_eq!(seen, ["a", "b", "c"]);
        // The refused route skips a.
        for _ in 0..4 {
            let mut t = Tried::new("/v1/fine_tuning/jobs", 3);
            assert_ne!(lease(&p, &mut t).await.key().name, "a");
        }
        // Until the memory ends.
        tokio::time::advance(Duration::from_secs(301)).await;
        let mut seen = Vec::new();
        for _ in 0..3 {
            let mut t = Tried::new("/v1/fine_tuning/jobs", 3);
            seen.push(lease(&p, &mut t).await.key().name.clone());
        }
        assert!(seen.contains(&"a".to_owned()), "{seen:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn when_every_key_refused_a_route_one_gets_a_chance() {
        let p = three(PoolSettings::default());
        let none = HeaderMap::new();
        let mut tried = Tried::new("/v1/x", 3);
        for _ in 0..3 {
            lease(&p, &mut tried).await.report(head(403, &none)).await;
        }
        let mut tried = Tried::new("/v1/x", 3);
        let l = lease(&p, &mut tried).await;
        l.report(head(403, &none)).await;
        assert!(matches!(p.acquire(&mut tried).await, Acquired::Exhausted));
    }

    #[tokio::test(start_paused = true)]
    async fn a_pinned_loop_uses_its_key_only_and_waits_while_it_cools() {
        let p = three(PoolSettings::default());
        for _ in 0..4 {
            let mut tried = Tried::pinned("/v1/files/f", 3, 2);
            assert!(tried.is_pinned());
            assert_eq!(lease(&p, &mut tried).await.key().name, "c");
            assert!(matches!(p.acquire(&mut tried).await, Acquired::Exhausted));
        }
        let mut tried = Tried::pinned("/v1/files/f", 3, 1);
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("5"));
        lease(&p, &mut tried).await.report(head(429, &h)).await;
        // Cooling: the pinned key is waited for, never swapped for a ready one.
        let mut tried = Tried::pinned("/v1/files/f", 3, 1);
        assert!(
            matches!(p.acquire(&mut tried).await, Acquired::Wait(d) if d <= Duration::from_secs(5))
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(lease(&p, &mut tried).await.key().name, "b");
        // Disabled: nothing to wait for.
        p.act(0, KeyAction::Disable).await;
        let mut tried = Tried::pinned("/v1/files/f", 3, 0);
        assert!(matches!(p.acquire(&mut tried).await, Acquired::Exhausted));
        // A key index past the pool's keys (a stale pin) gets nothing either.
        let mut tried = Tried::pinned("/v1/files/f", 3, 7);
        assert!(matches!(p.acquire(&mut tried).await, Acquired::Exhausted));
    }

    #[tokio::test(start_paused = true)]
    async fn retries_stop_at_the_budget() {
        let settings = PoolSettings {
            budget: BudgetSettings {
                ratio: 0.0,
                min_per_second: 0,
            },
            ..PoolSettings::default()
        };
        let p = three(settings);
        let mut tried = Tried::new("/v1/chat", 3);
        let _first = lease(&p, &mut tried).await;
        assert!(matches!(p.acquire(&mut tried).await, Acquired::OverBudget));
        let settings = PoolSettings {
            budget: BudgetSettings {
                ratio: 0.0,
                min_per_second: 1,
            },
            ..PoolSettings::default()
        };
        let p = three(settings);
        // 10 retries in the 10 s window, then none.
        let mut granted = 0;
        for _ in 0..6 {
            let mut tried = Tried::new("/v1/chat", 3);
            for _ in 0..3 {
                if let Acquired::Lease(_) = p.acquire(&mut tried).await {
                    granted += 1;
                }
            }
        }
        assert_eq!(granted, 6 + 10);
    }
}
