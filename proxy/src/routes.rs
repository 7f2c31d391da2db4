//! The route table: which provider serves a path, and everything about it fixed at start-up.

use crate::config::{AuthStyle, Config, ProviderConfig};
use crate::error::ErrorShape;
use crate::headers::sensitive_value;
use http::{HeaderName, HeaderValue, Uri};
use keyrelay_pool::{Pool, PoolSpec, Store};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A provider as the request path uses it.
pub struct Provider {
    pub name: String,
    pub route: String,
    pub base_url: String,
    pub auth_header: HeaderName,
    /// The ready-made auth header value of each pool key, in pool order.
    key_values: Vec<HeaderValue>,
    pub shape: ErrorShape,
    pub pool: Pool,
    pub max_attempts: u32,
    pub max_wait: Duration,
    /// The provider's last reported remaining requests and tokens per key (-1: unknown).
    remaining: Vec<[AtomicI64; 2]>,
}

impl Provider {
    fn new(pc: &ProviderConfig, store: Arc<dyn Store>) -> Result<Provider, String> {
        let key_values = pc
            .keys
            .iter()
            .map(|k| {
                let text = match pc.auth {
                    AuthStyle::Bearer => format!("Bearer {}", k.secret.expose()),
                    _ => k.secret.expose().to_owned(),
                };
                sensitive_value(&text).ok_or_else(|| {
                    format!(
                        "key \"{}\" of provider \"{}\" is not a valid header value",
                        k.name, pc.name
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (auth_header, shape) = match pc.auth {
            AuthStyle::Bearer => (http::header::AUTHORIZATION, ErrorShape::OpenAi),
            AuthStyle::XApiKey => (HeaderName::from_static("x-api-key"), ErrorShape::Anthropic),
            AuthStyle::XGoogApiKey => (
                HeaderName::from_static("x-goog-api-key"),
                ErrorShape::Gemini,
            ),
            AuthStyle::ApiKey => (HeaderName::from_static("api-key"), ErrorShape::OpenAi),
        };
        let spec = PoolSpec::new(pc.name.clone(), pc.keys.clone(), pc.strategy);
        Ok(Provider {
            name: pc.name.clone(),
            route: pc.route.clone(),
            base_url: pc.base_url.clone(),
            auth_header,
            key_values,
            shape,
            pool: Pool::new(spec, pc.settings, store),
            max_attempts: pc.max_attempts,
            max_wait: pc.max_wait,
            remaining: pc
                .keys
                .iter()
                .map(|_| [AtomicI64::new(-1), AtomicI64::new(-1)])
                .collect(),
        })
    }

    /// Remember the remaining requests and tokens a response reports for key `index`
    /// (OpenAI `x-ratelimit-remaining-*`, Anthropic `anthropic-ratelimit-*-remaining`).
    pub fn observe_remaining(&self, index: usize, headers: &http::HeaderMap) {
        let Some(slots) = self.remaining.get(index) else {
            return;
        };
        let read = |names: [&str; 2]| {
            names
                .iter()
                .find_map(|n| headers.get(*n))
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<i64>().ok())
        };
        if let Some(n) = read([
            "x-ratelimit-remaining-requests",
            "anthropic-ratelimit-requests-remaining",
        ]) {
            slots[0].store(n, Ordering::Relaxed);
        }
        if let Some(n) = read([
            "x-ratelimit-remaining-tokens",
            "anthropic-ratelimit-tokens-remaining",
        ]) {
            slots[1].store(n, Ordering::Relaxed);
        }
    }

    /// Last reported (remaining requests, remaining tokens) of key `index`.
    pub fn remaining(&self, index: usize) -> (Option<i64>, Option<i64>) {
        let get = |i: usize| {
            self.remaining
                .get(index)
                .map(|s| s[i].load(Ordering::Relaxed))
                .filter(|n| *n >= 0)
        };
        (get(0), get(1))
    }

    pub fn key_value(&self, index: usize) -> Option<&HeaderValue> {
        self.key_values.get(index)
    }

    /// `{base_url}{rest}?{query}`
    pub fn upstream_uri(
        &self,
        rest: &str,
        query: Option<&str>,
    ) -> Result<Uri, http::uri::InvalidUri> {
        let mut s =
            String::with_capacity(self.base_url.len() + rest.len() + 1 + query.map_or(0, str::len));
        s.push_str(&self.base_url);
        s.push_str(rest);
        if let Some(q) = query {
            s.push('?');
            s.push_str(q);
        }
        s.parse()
    }
}

/// Providers by route prefix, longest first so `/v1/special` wins over `/v1`.
pub struct Routes {
    providers: Vec<Arc<Provider>>,
}

impl Routes {
    pub fn new(config: &Config, store: Arc<dyn Store>) -> Result<Routes, String> {
        let mut providers = config
            .providers
            .iter()
            .map(|pc| Provider::new(pc, store.clone()).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        providers.sort_by_key(|p| std::cmp::Reverse(p.route.len()));
        Ok(Routes { providers })
    }

    /// The provider serving `path` and the rest of the path after its prefix.
    pub fn find<'p>(&self, path: &'p str) -> Option<(&Arc<Provider>, &'p str)> {
        self.providers.iter().find_map(|p| {
            if p.route == "/" {
                return Some((p, path));
            }
            let rest = path.strip_prefix(p.route.as_str())?;
            (rest.is_empty() || rest.starts_with('/')).then_some((p, rest))
        })
    }

    pub fn providers(&self) -> &[Arc<Provider>] {
        &self.providers
    }
}
