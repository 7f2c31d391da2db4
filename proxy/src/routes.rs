//! The route table: which provider serves a path, and everything about it fixed at start-up;
//! and the one place a request path is joined to a provider's base URL, refusing paths that
//! could climb out of it and checking the result still points at the provider.

use crate::affinity::{Affinity, Codec};
use crate::config::{AffinityConfig, AuthStyle, Config, ProviderConfig};
use crate::error::ErrorShape;
use crate::service::Shared;
use http::{HeaderName, HeaderValue, Uri};
use keyrelay_metrics::{ProviderMetrics, Tenant};
use keyrelay_pool::{KeyAuth, Pool, PoolError, PoolSpec};
use std::sync::Arc;
use std::time::Duration;

/// A provider as the request path uses it.
pub struct Provider {
    pub name: String,
    pub route: String,
    pub base_url: String,
    /// `base_url` parsed, to check every joined URL against.
    base: Uri,
    /// How much of `base_url` is `scheme://authority` as `base` holds them, when it is all of
    /// that text as written: a joined URL then reuses `base`'s scheme and authority and parses
    /// only its path (see [`join`]).
    origin_len: Option<usize>,
    pub shape: ErrorShape,
    /// The keys, each with its ready-made credential, and the store behind them.
    pub pool: Pool,
    pub max_attempts: u32,
    pub max_wait: Duration,
    pub deadline: Duration,
    pub retry_after_send: bool,
    /// Whether WebSocket upgrades are proxied (else 426).
    pub websocket: bool,
    pub metrics: ProviderMetrics,
    /// Resource affinity, when `[affinity] secret` is set.
    pub affinity: Option<Arc<Affinity>>,
    /// The tenant whose pool this is; `None` for a shared pool.
    pub tenant: Option<String>,
    /// The shared pool a tenant's request falls back to when none of its keys is ready.
    pub fallback: Option<Arc<Provider>>,
    /// Whether any key of this pool has a `tpm` (its answers' tokens are then counted).
    pub tpm_keys: bool,
    /// Its keys' token counters' names, made on each key's first metered answer.
    pub tpm_counters: crate::tenants::tokens::KeyCounters,
    /// The `Host` header of every upstream request, the base URL's authority as written (an
    /// HTTP/2 `:authority` is the same), made once instead of by the upstream client (which
    /// formats one per request only for a request that has none).
    pub host: Option<HeaderValue>,
}

/// A pool's metrics labels: its tenant's, and the name of the configured provider it serves.
pub(crate) type Labels<'a> = (Tenant<'a>, &'a str);

impl Provider {
    pub(crate) fn new(
        pc: &ProviderConfig,
        shared: &Shared,
        affinity: (&AffinityConfig, Option<&Arc<Codec>>),
        (tenant, provider): Labels<'_>,
    ) -> Result<Provider, PoolError> {
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
        let provider = Provider {
            name: pc.name.clone(),
            route: pc.route.clone(),
            base_url: pc.base_url.clone(),
            // Validated at load; were it not a URL, every join would fail closed.
            base: pc.base_url.parse().unwrap_or_default(),
            origin_len: None,
            shape,
            pool,
            max_attempts: pc.max_attempts,
            max_wait: pc.max_wait,
            deadline: pc.deadline,
            retry_after_send: pc.retry_after_send,
            websocket: pc.websocket,
            metrics: {
                let keys: Vec<&str> = pc.keys.iter().map(|k| k.name.as_str()).collect();
                shared.metrics.pool(tenant, provider, &keys)
            },
            affinity: affinity.1.map(|c| {
                let scope = (pc.name.as_str(), pc.base_url.as_str());
                Arc::new(
                    Affinity::new(c.clone(), affinity.0, scope, &pc.keys).with_store(
                        affinity.0,
                        &shared.store,
                        &pc.keys,
                    ),
                )
            }),
            tenant: None,
            fallback: None,
            tpm_keys: pc.keys.iter().any(|k| k.tpm.is_some()),
            tpm_counters: crate::tenants::tokens::KeyCounters::default(),
            host: None,
        };
        Ok(Provider {
            origin_len: origin_len(&provider.base, &provider.base_url),
            host: host_header(&provider.base),
            ..provider
        })
    }

    /// `{base_url}{rest}?{query}`, once `rest` passed [`check_path`] and the result is
    /// checked to have the base URL's scheme, host, port and path prefix.
    pub fn upstream_uri(&self, rest: &str, query: Option<&str>) -> Result<Uri, JoinError> {
        match self.origin_len {
            Some(n) => join_under(&self.base, &self.base_url[n..], rest, query),
            None => join(&self.base, &self.base_url, rest, query),
        }
    }
}

/// The `Host` header for requests to `base`: its authority as written.
fn host_header(base: &Uri) -> Option<HeaderValue> {
    HeaderValue::from_str(base.authority()?.as_str()).ok()
}

/// The length of `base_url`'s `scheme://authority`, if it is exactly `base`'s scheme and
/// authority as written (a base URL in another case or form takes the general [`join`]).
fn origin_len(base: &Uri, base_url: &str) -> Option<usize> {
    let origin = format!("{}://{}", base.scheme()?, base.authority()?);
    let rest = base_url.strip_prefix(origin.as_str())?;
    (rest.is_empty() || rest.starts_with('/')).then_some(origin.len())
}

/// [`join`] for a base URL whose origin is `base`'s: the same text is joined, but only its
/// path and query (`base_path` is the base URL's text after the origin) are parsed, and the
/// scheme and authority are `base`'s own, shared. The same second lock then checks the path.
fn join_under(
    base: &Uri,
    base_path: &str,
    rest: &str,
    query: Option<&str>,
) -> Result<Uri, JoinError> {
    check_path(rest).map_err(JoinError::Path)?;
    check_query(query)?;
    let mut s = String::with_capacity(base_path.len() + rest.len() + 2 + query.map_or(0, str::len));
    s.push_str(base_path);
    if base_path.is_empty() && rest.is_empty() {
        // What parsing `https://host` or `https://host?q` gives as its path.
        s.push('/');
    }
    s.push_str(rest);
    if let Some(q) = query {
        s.push('?');
        s.push_str(q);
    }
    let mut parts = http::uri::Parts::default();
    parts.scheme = base.scheme().cloned();
    parts.authority = base.authority().cloned();
    parts.path_and_query = Some(
        http::uri::PathAndQuery::from_maybe_shared(bytes::Bytes::from(s))
            .map_err(|_| JoinError::Path("not a valid URL path"))?,
    );
    let joined = Uri::from_parts(parts).map_err(|_| JoinError::Path("not a valid URL path"))?;
    if !under_path(base, &joined) {
        return Err(JoinError::Origin);
    }
    Ok(joined)
}

/// Refuse a query with a byte past printable ASCII (hyper lets such bytes through in a
/// request target; they are sent nowhere).
fn check_query(query: Option<&str>) -> Result<(), JoinError> {
    if query
        .unwrap_or_default()
        .bytes()
        .all(|b| b.is_ascii_graphic())
    {
        Ok(())
    } else {
        Err(JoinError::Path(
            "a byte outside printable ASCII in the query",
        ))
    }
}

/// Why a request path was not joined to a base URL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinError {
    /// The path is refused (a 400); the reason is fixed text.
    Path(&'static str),
    /// The joined URL would leave the base URL's scheme, host, port or path (a 500, logged,
    /// never sent). [`check_path`] should make this impossible; this is the second lock.
    Origin,
}

/// Join `rest` (the path after the route prefix) and `query` to `base_url` (parsed: `base`).
pub fn join(base: &Uri, base_url: &str, rest: &str, query: Option<&str>) -> Result<Uri, JoinError> {
    check_path(rest).map_err(JoinError::Path)?;
    check_query(query)?;
    let mut s = String::with_capacity(base_url.len() + rest.len() + 1 + query.map_or(0, str::len));
    s.push_str(base_url);
    s.push_str(rest);
    if let Some(q) = query {
        s.push('?');
        s.push_str(q);
    }
    let joined: Uri = s
        .parse()
        .map_err(|_| JoinError::Path("not a valid URL path"))?;
    if !same_origin(base, &joined) {
        return Err(JoinError::Origin);
    }
    Ok(joined)
}

/// Whether `joined` has `base`'s scheme, host and port (the scheme's default when absent) and
/// its path lies under `base`'s.
pub fn same_origin(base: &Uri, joined: &Uri) -> bool {
    let port = |u: &Uri| {
        u.port_u16().or(match u.scheme_str() {
            Some("http") => Some(80),
            Some("https") => Some(443),
            _ => None,
        })
    };
    base.scheme().is_some()
        && base.scheme() == joined.scheme()
        && base
            .host()
            .is_some_and(|h| joined.host().is_some_and(|j| j.eq_ignore_ascii_case(h)))
        && port(base) == port(joined)
        && under_path(base, joined)
}

/// Whether `joined`'s path lies under `base`'s.
fn under_path(base: &Uri, joined: &Uri) -> bool {
    joined
        .path()
        .strip_prefix(base.path().trim_end_matches('/'))
        .is_some_and(|r| r.is_empty() || r.starts_with('/'))
}

/// Refuse a path that could reach anything but what it names under the base URL: any segment
/// that is `.` or `..` (also percent-encoded, or before a `;` parameter), an encoded `/` or
/// `\`, a backslash, an encoded NUL, or an empty segment (`//`, which some servers read as a
/// host) anywhere but at the end. Refusing beats resolving: no provider API has such paths.
pub fn check_path(rest: &str) -> Result<(), &'static str> {
    if !(rest.is_empty() || rest.starts_with('/')) {
        return Err("the path must start with /");
    }
    if plain_path(rest) {
        return Ok(());
    }
    check_segments(rest)
}

/// [`check_path`]'s full check of a path starting with `/`, naming what is wrong.
fn check_segments(rest: &str) -> Result<(), &'static str> {
    if !rest.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("a byte outside printable ASCII in the path");
    }
    if rest.contains('\\') {
        return Err("backslash in the path");
    }
    let mut segments = rest.split('/').skip(1).peekable();
    while let Some(segment) = segments.next() {
        if segment.is_empty() && segments.peek().is_some() {
            return Err("empty path segment");
        }
        check_segment(segment)?;
    }
    Ok(())
}

/// Whether a path starting with `/` passes [`check_segments`] at a glance, in one pass over
/// its bytes: printable ASCII with no backslash, `%` or `.` (so nothing encoded and no dot
/// segment) and no `//` (so no empty segment but the last). Most API paths are such (the full
/// check cost about 1,000 instructions a request, callgrind); any other takes the full check.
fn plain_path(rest: &str) -> bool {
    let mut last = 0;
    rest.bytes().all(|b| {
        let plain = b.is_ascii_graphic() && !matches!(b, b'\\' | b'%' | b'.');
        let ok = plain && !(b == b'/' && last == b'/');
        last = b;
        ok
    })
}

/// One path segment: nothing encoded that is a separator or NUL, and no dot segment.
fn check_segment(segment: &str) -> Result<(), &'static str> {
    let dots = |name: &[u8]| name == b"." || name == b"..";
    if !segment.contains('%') {
        // Nothing to decode (the common case, checked without allocating): a segment holds
        // no '/', and a backslash or a NUL was refused with the whole path.
        let name = segment.split(';').next().unwrap_or_default();
        return if dots(name.as_bytes()) {
            Err("dot segment in the path")
        } else {
            Ok(())
        };
    }
    let decoded = percent_decode(segment);
    if decoded.iter().any(|b| matches!(b, b'/' | b'\\' | 0)) {
        return Err("encoded slash, backslash or NUL in a path segment");
    }
    let name = decoded.split(|b| *b == b';').next().unwrap_or_default();
    if dots(name) {
        return Err("dot segment in the path");
    }
    Ok(())
}

/// `%XX` escapes decoded; a `%` not followed by two hex digits is kept as it is.
fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// Providers by route prefix, longest first so `/v1/special` wins over `/v1`.
pub struct Routes {
    providers: Vec<Arc<Provider>>,
}

impl Routes {
    pub fn new(config: &Config, shared: &Shared) -> Result<Routes, PoolError> {
        let codec = Affinity::codec(&config.affinity);
        let mut providers = config
            .providers
            .iter()
            .map(|pc| {
                let affinity = (&config.affinity, codec.as_ref());
                Provider::new(pc, shared, affinity, (Tenant::Shared, &pc.name)).map(Arc::new)
            })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(base_url: &str, rest: &str) -> Result<Uri, JoinError> {
        join(&base_url.parse().unwrap(), base_url, rest, Some("a=1"))
    }

    #[test]
    fn an_asterisk_target_never_joins_to_another_host() {
        // Found by the URL fuzz target: `OPTIONS *` on a root route once joined to
        // `https://example.com*`.
        assert!(check_path("*").is_err());
        assert!(joined("https://example.com", "*").is_err());
    }

    #[test]
    fn ordinary_paths_join_under_the_base() {
        let u = joined("https://api.example.com/v1", "/chat/completions").unwrap();
        assert_eq!(
            u.to_string(),
            "https://api.example.com/v1/chat/completions?a=1"
        );
        for ok in [
            "", "/", "/models/", "/a%20b", "/x.json", "/...", "/a..b", "/%2e%2ex", "/%ff",
        ] {
            assert!(joined("http://h:8/v1", ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn paths_that_could_climb_out_are_refused() {
        for bad in [
            "/..",
            "/../x",
            "/a/../../x",
            "/.",
            "/./x",
            "/%2e%2e/x",
            "/%2E./x",
            "/.%2e/x",
            "/%2e/x",
            "/..;/x",
            "/a%2fb",
            "/a%2Fb",
            "/a%5cb",
            "/a\\b",
            "//evil.com/x",
            "/a//b",
            "/a%00b",
            "x",
            "@evil/x",
        ] {
            assert!(
                matches!(
                    joined("https://api.example.com/v1", bad),
                    Err(JoinError::Path(_))
                ),
                "{bad} was not refused"
            );
        }
    }

    #[test]
    fn a_path_plain_at_a_glance_passes_the_full_check() {
        let plain = [
            "",
            "/",
            "/chat/completions",
            "/models/",
            "/a;b/c",
            "/x-y_z~1",
            "/a/",
        ];
        for p in plain {
            assert!(plain_path(p), "{p} should be plain");
            assert_eq!(check_segments(p), Ok(()), "{p}");
        }
        // Each of these needs the full check, which refuses some and passes others.
        let not_plain = [
            "/x.json",
            "/a%20b",
            "/..",
            "/./x",
            "/a%2fb",
            "/a\\b",
            "//evil.com/x",
            "/a//b",
            "/a b",
            "/a\u{7f}",
            "/é",
        ];
        for p in not_plain {
            assert!(!plain_path(p), "{p} should not be plain");
        }
        assert_eq!(check_path("/x.json"), Ok(()));
        assert_eq!(check_path("/a//b"), Err("empty path segment"));
        assert_eq!(
            check_path("/a b"),
            Err("a byte outside printable ASCII in the path")
        );
    }

    #[test]
    fn a_join_that_changes_the_origin_is_caught() {
        let base: Uri = "http://api.example.com".parse().unwrap();
        let same = |u: &str| same_origin(&base, &u.parse().unwrap());
        assert!(same("http://API.example.com:80/x"));
        assert!(!same("http://api.example.com@evil/x"));
        assert!(!same("https://api.example.com/x"));
        assert!(!same("http://api.example.com:8080/x"));
        assert!(!same("http://api.example.com.evil/x"));
        let base: Uri = "https://gw.example.com/acct/1".parse().unwrap();
        assert!(!same_origin(
            &base,
            &"https://gw.example.com/acct/2/x".parse().unwrap()
        ));
        assert!(!same_origin(
            &base,
            &"https://gw.example.com/acct/10".parse().unwrap()
        ));
        assert!(same_origin(
            &base,
            &"https://gw.example.com/acct/1/x".parse().unwrap()
        ));
        assert!(!same_origin(
            &Uri::default(),
            &"https://gw.example.com/".parse().unwrap()
        ));
    }

    #[test]
    fn the_shared_origin_join_gives_what_the_whole_url_join_gives() {
        let rests = [
            "",
            "/",
            "/chat/completions",
            "/a%20b",
            "/x;y",
            "/..",
            "//e",
            "*",
        ];
        let queries = [None, Some("a=1"), Some("alt=sse&x=%20")];
        for base_url in [
            "https://api.example.com/v1",
            "https://api.example.com/v1/",
            "http://127.0.0.1:8080",
            "http://h:8/",
            "https://gw.example.com/acct/1",
        ] {
            let base: Uri = base_url.parse().unwrap();
            let n = origin_len(&base, base_url).unwrap();
            for rest in rests {
                for query in queries {
                    let whole = join(&base, base_url, rest, query);
                    let shared = join_under(&base, &base_url[n..], rest, query);
                    assert_eq!(
                        whole.as_ref().map(Uri::to_string),
                        shared.as_ref().map(Uri::to_string),
                        "{base_url} {rest} {query:?}"
                    );
                }
            }
        }
        // A base URL not written as its parsed origin takes the general join.
        let odd = "HTTPS://api.example.com/v1";
        assert_eq!(origin_len(&odd.parse().unwrap(), odd), None);
    }
}
