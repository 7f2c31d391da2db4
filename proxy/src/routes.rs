//! The route table: which provider serves a path, and everything about it fixed at start-up.

use crate::config::{AuthStyle, Config, ProviderConfig};
use crate::error::ErrorShape;
use crate::service::Shared;
use http::{HeaderName, Uri};
use keyrelay_metrics::ProviderMetrics;
use keyrelay_pool::{KeyAuth, Pool, PoolError, PoolSpec};
use std::sync::Arc;
use std::time::Duration;

/// A provider as the request path uses it.
pub struct Provider {
    pub name: String,
    pub route: String,
    pub base_url: String,
    pub shape: ErrorShape,
    /// The keys, each with its ready-made credential, and the store behind them.
    pub pool: Pool,
    pub max_attempts: u32,
    pub max_wait: Duration,
    pub deadline: Duration,
    pub retry_after_send: bool,
    pub metrics: ProviderMetrics,
}

impl Provider {
    fn new(pc: &ProviderConfig, shared: &Shared) -> Result<Provider, PoolError> {
        let (header, shape) = match pc.auth {
            AuthStyle::Bearer => (http::header::AUTHORIZATION, ErrorShape::OpenAi),
            AuthStyle::XApiKey => (HeaderName::from_static("x-api-key"), ErrorShape::Anthropic),
            AuthStyle::XGoogApiKey => (
                HeaderName::from_static("x-goog-api-key"),
                ErrorShape::Gemini,
            ),
            AuthStyle::ApiKey => (HeaderName::from_static("api-key"), ErrorShape::OpenAi),
        };
        let auth = KeyAuth {
            header,
            bearer: matches!(pc.auth, AuthStyle::Bearer),
        };
        let spec = PoolSpec::new(pc.name.clone(), pc.keys.clone(), pc.strategy);
        let pool = Pool::new(
            spec,
            pc.settings,
            shared.store.clone(),
            auth,
            &shared.observed,
        )?;
        Ok(Provider {
            name: pc.name.clone(),
            route: pc.route.clone(),
            base_url: pc.base_url.clone(),
            shape,
            pool,
            max_attempts: pc.max_attempts,
            max_wait: pc.max_wait,
            deadline: pc.deadline,
            retry_after_send: pc.retry_after_send,
            metrics: shared.metrics.provider(&pc.name),
        })
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
    pub fn new(config: &Config, shared: &Shared) -> Result<Routes, PoolError> {
        let mut providers = config
            .providers
            .iter()
            .map(|pc| Provider::new(pc, shared).map(Arc::new))
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
