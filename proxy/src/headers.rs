//! Header surgery: which client headers reach the provider (an allow-list; credentials,
//! hop-by-hop headers, cookies and forwarding headers never), and the client's credentials.

use http::header::{self, HeaderMap, HeaderName};

/// Every header a client may carry its keyrelay token in.
pub const CREDENTIAL_HEADERS: [HeaderName; 4] = [
    header::AUTHORIZATION,
    HeaderName::from_static("x-api-key"),
    HeaderName::from_static("x-goog-api-key"),
    HeaderName::from_static("api-key"),
];

/// keyrelay's own request headers (`x-keyrelay-group`): for keyrelay, never for a provider,
/// whatever `pass_headers` allows.
fn own(name: &HeaderName) -> bool {
    name.as_str().starts_with("x-keyrelay-")
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus proxy auth.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The credentials a client presented: one, or a few, kept without an allocation.
pub type Presented<'a> = smallvec::SmallVec<[&'a [u8]; 2]>;

/// The credentials a client presented, in every supported style, as raw bytes.
pub fn presented_credentials<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Presented<'a> {
    let mut out = Presented::new();
    for name in &CREDENTIAL_HEADERS {
        for value in headers.get_all(name) {
            let bytes = value.as_bytes();
            let token = if name == header::AUTHORIZATION {
                strip_bearer(bytes)
            } else {
                bytes
            };
            out.push(token);
        }
    }
    if let Some(q) = query {
        out.extend(
            q.split('&')
                .filter_map(|kv| kv.strip_prefix("key="))
                .map(str::as_bytes),
        );
    }
    out
}

fn strip_bearer(v: &[u8]) -> &[u8] {
    if v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ") {
        v[7..].trim_ascii()
    } else {
        v
    }
}

/// Remove hop-by-hop headers, including any the `Connection` header names. Most answers carry
/// none but `Transfer-Encoding`: only names present are removed, and nothing is allocated
/// unless a `Connection` header lists some.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for name in connection_listed(headers) {
        headers.remove(&name);
    }
    while let Some(name) = headers.keys().find(|k| HOP_BY_HOP.contains(k)).cloned() {
        headers.remove(&name);
    }
}

/// The header names a `Connection` header lists (none, without allocating, when it is absent).
fn connection_listed(headers: &HeaderMap) -> Vec<HeaderName> {
    if !headers.contains_key(header::CONNECTION) {
        return Vec::new();
    }
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect()
}

/// Client headers that reach the provider by default: what the official SDKs send. Anything
/// else (cookies, `X-Forwarded-*`, `OpenAI-Organization`/`OpenAI-Project`, which a pooled key
/// sets from its own config, `X-Goog-User-Project`, hop-by-hop headers, credentials) stays here.
const ALLOWED: [&str; 15] = [
    "accept",
    "accept-encoding",
    "accept-language",
    "anthropic-beta",
    "anthropic-version",
    "cache-control",
    "content-encoding",
    "content-type",
    "idempotency-key",
    "openai-beta",
    "traceparent",
    "tracestate",
    "user-agent",
    "x-goog-api-client",
    "x-request-id",
];

/// Allowed by prefix: the Stainless-generated SDKs' telemetry (`x-stainless-lang`, ...) and
/// Gemini's resumable-upload protocol (`x-goog-upload-protocol`, `-command`, `-offset`, ...).
const ALLOWED_PREFIXES: [&str; 2] = ["x-stainless-", "x-goog-upload-"];

/// Which client headers are forwarded: the default allow-list, plus the names the config adds
/// (`upstream.pass_headers`: exact names, or `prefix*`). Built once per config.
#[derive(Clone, Debug)]
pub struct HeaderPolicy {
    /// The exact names, as a set: a hashed look-up per client header, where a list was
    /// compared name by name (about 750 instructions a request, callgrind).
    exact: HeaderMap<()>,
    prefixes: Vec<String>,
    forwarded_for: bool,
}

impl HeaderPolicy {
    /// `extra`: names or `prefix*` patterns, lower case; `forwarded_for`: whether keyrelay sets
    /// `X-Forwarded-For` to the client's address.
    pub fn new(extra: &[String], forwarded_for: bool) -> HeaderPolicy {
        let mut exact: HeaderMap<()> = ALLOWED
            .iter()
            .map(|n| (HeaderName::from_static(n), ()))
            .collect();
        let mut prefixes: Vec<String> = ALLOWED_PREFIXES.iter().map(|p| (*p).to_owned()).collect();
        for name in extra {
            match name.strip_suffix('*') {
                Some(prefix) => prefixes.push(prefix.to_ascii_lowercase()),
                None => {
                    if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
                        exact.insert(name, ());
                    }
                }
            }
        }
        HeaderPolicy {
            exact,
            prefixes,
            forwarded_for,
        }
    }

    fn allows(&self, name: &HeaderName) -> bool {
        self.exact.contains_key(name)
            || self
                .prefixes
                .iter()
                .any(|p| name.as_str().starts_with(p.as_str()))
    }

    /// The headers to send upstream from a client's: only allowed ones, and none that is
    /// hop-by-hop or that a `Connection` header names; `X-Forwarded-For` only when configured,
    /// from the peer. Each kept name moves into the result (no copy of a custom name).
    pub fn forward(&self, from: HeaderMap, peer: Option<std::net::IpAddr>) -> HeaderMap {
        let listed = connection_listed(&from);
        let passes = |n: &HeaderName| {
            self.allows(n) && !HOP_BY_HOP.contains(n) && !listed.contains(n) && !own(n)
        };
        let mut out = HeaderMap::with_capacity(from.len() + 1);
        // The entry the current name's values go to, while that name passes.
        let mut entry: Option<header::OccupiedEntry<'_, header::HeaderValue>> = None;
        for (name, value) in from {
            match (name, entry.as_mut()) {
                (Some(name), _) => {
                    entry = None;
                    if passes(&name) {
                        entry = Some(match out.entry(name) {
                            header::Entry::Occupied(mut o) => {
                                o.append(value);
                                o
                            }
                            header::Entry::Vacant(v) => v.insert_entry(value),
                        });
                    }
                }
                (None, Some(e)) => e.append(value),
                (None, None) => {}
            }
        }
        if let (true, Some(ip)) = (self.forwarded_for, peer) {
            if let Ok(v) = header::HeaderValue::from_str(&ip.to_string()) {
                out.insert(HeaderName::from_static("x-forwarded-for"), v);
            }
        }
        out
    }
}

/// The handshake headers a WebSocket upgrade forwards as the client sent them (hop-by-hop, so
/// never forwarded otherwise). `Sec-WebSocket-Protocol` is not among them: it may carry the
/// client's token, and the caller rewrites it.
const UPGRADE_HEADERS: [HeaderName; 3] = [
    header::SEC_WEBSOCKET_KEY,
    header::SEC_WEBSOCKET_VERSION,
    header::SEC_WEBSOCKET_EXTENSIONS,
];

impl HeaderPolicy {
    /// The headers to send upstream for a WebSocket upgrade: [`HeaderPolicy::forward`]'s, the
    /// handshake's own, and `Connection: upgrade`, `Upgrade: websocket`; never a subprotocol.
    pub fn forward_upgrade(&self, from: HeaderMap, peer: Option<std::net::IpAddr>) -> HeaderMap {
        let mut handshake = Vec::new();
        for name in &UPGRADE_HEADERS {
            for value in from.get_all(name) {
                handshake.push((name.clone(), value.clone()));
            }
        }
        let mut out = self.forward(from, peer);
        out.remove(header::SEC_WEBSOCKET_PROTOCOL);
        for name in &UPGRADE_HEADERS {
            out.remove(name);
        }
        for (name, value) in handshake {
            out.append(name, value);
        }
        out.insert(
            header::CONNECTION,
            header::HeaderValue::from_static("upgrade"),
        );
        out.insert(
            header::UPGRADE,
            header::HeaderValue::from_static("websocket"),
        );
        out
    }
}

/// One attempt's headers: the request's forwarded headers with the lease's credential (the
/// key, a sensitive value) and the key's account headers put in.
pub fn with_credential(
    forwarded: &HeaderMap,
    credential: (&HeaderName, &header::HeaderValue),
    account: &[(HeaderName, header::HeaderValue)],
) -> HeaderMap {
    // Made with room for what is put in: a clone has none, and its first insert reallocates.
    let mut headers = HeaderMap::with_capacity(forwarded.len() + 1 + account.len());
    headers.extend(forwarded.iter().map(|(n, v)| (n.clone(), v.clone())));
    headers.insert(credential.0.clone(), credential.1.clone());
    for (name, value) in account {
        headers.insert(name.clone(), value.clone());
    }
    headers
}

/// The query without any `key=` parameter (Gemini-style client credential).
pub fn query_without_key(query: &str) -> Option<String> {
    let kept: Vec<&str> = query
        .split('&')
        .filter(|kv| !kv.is_empty() && !kv.starts_with("key="))
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn credentials_in_every_style() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer tok-a"),
        );
        h.insert("x-api-key", HeaderValue::from_static("tok-b"));
        h.insert("x-goog-api-key", HeaderValue::from_static("tok-c"));
        h.insert("api-key", HeaderValue::from_static("tok-d"));
        let got = presented_credentials(&h, Some("alt=sse&key=tok-e"));
        let got: Vec<&str> = got
            .iter()
            .map(|b| std::str::from_utf8(b).unwrap())
            .collect();
        assert_eq!(got, ["tok-a", "tok-b", "tok-c", "tok-d", "tok-e"]);
    }

    #[test]
    fn only_allowed_headers_are_forwarded() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        h.insert("x-api-key", HeaderValue::from_static("t"));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-stainless-lang"),
        );
        h.insert("x-stainless-lang", HeaderValue::from_static("python"));
        h.insert("x-stainless-os", HeaderValue::from_static("Linux"));
        h.insert(header::HOST, HeaderValue::from_static("keyrelay"));
        h.insert(header::COOKIE, HeaderValue::from_static("session=1"));
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.insert(
            "openai-organization",
            HeaderValue::from_static("org-theirs"),
        );
        h.insert("openai-project", HeaderValue::from_static("proj-theirs"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
        h.insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
        h.append("accept", HeaderValue::from_static("application/json"));
        h.append("accept", HeaderValue::from_static("text/event-stream"));
        h.insert("x-mock-chunks", HeaderValue::from_static("3"));
        h.insert("x-keyrelay-group", HeaderValue::from_static("batch"));
        let policy = HeaderPolicy::new(&[], false);
        let out = policy.forward(h.clone(), None);
        let mut names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["accept", "anthropic-version", "x-stainless-os"]);
        assert_eq!(out.get_all("accept").iter().count(), 2);
        let ip = std::net::IpAddr::from([192, 0, 2, 7]);
        let policy = HeaderPolicy::new(&["x-*".to_owned()], true);
        let out = policy.forward(h, Some(ip));
        assert_eq!(out["x-mock-chunks"], "3");
        assert!(
            !out.contains_key("x-keyrelay-group"),
            "keyrelay's own, always"
        );
        assert_eq!(out["x-forwarded-for"], "192.0.2.7");
    }

    #[test]
    fn an_upgrade_forwards_its_handshake_but_never_a_subprotocol() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::SEC_WEBSOCKET_KEY, HeaderValue::from_static("k"));
        h.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("openai-insecure-api-key.tok"),
        );
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        let policy = HeaderPolicy::new(&["sec-websocket-*".to_owned()], false);
        let out = policy.forward_upgrade(h.clone(), None);
        let mut names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "connection",
                "sec-websocket-key",
                "sec-websocket-version",
                "upgrade"
            ]
        );
        assert_eq!(out["connection"], "upgrade");
        assert_eq!(out.get_all("sec-websocket-key").iter().count(), 1);
        let plain = HeaderPolicy::new(&[], false).forward(h, None);
        assert!(plain.is_empty(), "{plain:?}");
    }

    #[test]
    fn key_query_removed() {
        assert_eq!(query_without_key("key=abc"), None);
        assert_eq!(
            query_without_key("alt=sse&key=abc&x=1").as_deref(),
            Some("alt=sse&x=1")
        );
    }
}
