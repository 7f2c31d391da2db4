//! The fuzz targets: each takes raw bytes and panics when a property fails.

use http::{HeaderMap, HeaderName, HeaderValue};
use keyrelay::config::{Config, MapEnv};
use keyrelay::headers::{presented_credentials, HeaderPolicy};
use keyrelay::routes::Routes;
use keyrelay_pool::{
    parse_go_duration, parse_retry_after, rate_limit_hint, remaining_quota, MemoryStore,
};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

/// The secrets the config target's environment holds; none may surface in any output.
const SECRETS: [&str; 5] = [
    "sk-fuzz-provider-key-ONE-0123456789",
    "sk-fuzz-provider-key-TWO-9876543210",
    "kr-fuzz-client-token-abcdefghijkl",
    "kr-fuzz-admin-token-mnopqrstuvwx",
    "kr-fuzz-fingerprint-secret-yz0123456789",
];

fn env() -> MapEnv {
    MapEnv::default()
        .with("KR_KEY_1", SECRETS[0])
        .with("KR_KEY_2", SECRETS[1])
        .with("KR_TOKEN", SECRETS[2])
        .with("KR_ADMIN", SECRETS[3])
        .with("KR_FP", SECRETS[4])
        .with(
            "REDIS_URL",
            "redis://:kr-fuzz-redis-password-000000@127.0.0.1:1/0",
        )
}

/// Panic if `output` holds a 12-character fragment of a secret that `input` did not hold
/// itself (echoing the input is not a leak).
fn assert_no_secret(output: &str, input: &str, place: &str) {
    let redis = "kr-fuzz-redis-password-000000";
    for secret in SECRETS.iter().chain([&redis]) {
        for fragment in secret.as_bytes().windows(12) {
            let fragment = String::from_utf8_lossy(fragment);
            assert!(
                !output.contains(fragment.as_ref()) || input.contains(fragment.as_ref()),
                "secret fragment {fragment:?} in {place}: {output}"
            );
        }
    }
}

/// `Config::from_toml_str`: no panic; no secret in the error or the loaded config's `Debug`;
/// a loaded base URL parses, carries no credentials, and every fingerprint is 12 hex digits.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    // `file:` under /proc or /sys reads the machine's own state (some of it slow or huge, and
    // regular files by type); devices are refused by keyrelay itself, so they stay in.
    if ["/proc", "/sys"].iter().any(|d| text.contains(d)) {
        return;
    }
    match Config::from_toml_str(&text, &env()) {
        Err(e) => assert_no_secret(&e.to_string(), &text, "config error"),
        Ok(c) => {
            assert_no_secret(&format!("{c:?}"), &text, "config Debug");
            for p in &c.providers {
                let uri: http::Uri = p.base_url.parse().unwrap_or_else(|e| {
                    panic!("loaded base_url {:?} does not parse: {e}", p.base_url)
                });
                let authority = uri.authority().map_or("", |a| a.as_str());
                assert!(!authority.contains('@'), "credentials in {}", p.base_url);
                for k in &p.keys {
                    assert!(
                        k.fingerprint.len() == 12
                            && k.fingerprint.bytes().all(|b| b.is_ascii_hexdigit()),
                        "fingerprint {:?}",
                        k.fingerprint
                    );
                }
            }
        }
    }
}

/// `name: value` lines into a header map (lines that are not a valid header are skipped); a
/// first line starting with `?` is the query.
fn header_map(data: &[u8]) -> (HeaderMap, Option<String>) {
    let mut map = HeaderMap::new();
    let mut query = None;
    for (i, line) in data.split(|b| *b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if i == 0 && line.first() == Some(&b'?') {
            query = Some(String::from_utf8_lossy(&line[1..]).into_owned());
            continue;
        }
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            map.append(n, v);
        }
    }
    (map, query)
}

/// Headers that must never reach a provider from a client.
const NEVER_FORWARDED: [&str; 17] = [
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "x-goog-api-key",
    "api-key",
    "cookie",
    "host",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "openai-organization",
    "openai-project",
    "x-forwarded-host",
    "forwarded",
];

/// `presented_credentials` and `HeaderPolicy::forward`: no panic; nothing forwarded that is
/// a credential, hop-by-hop, named by `Connection`, or not sent by the client (but
/// `X-Forwarded-For`, only when configured, and then the peer's address).
pub fn headers(data: &[u8]) {
    let (map, query) = header_map(data);
    let credentials = presented_credentials(&map, query.as_deref());
    assert!(credentials.len() <= map.len() + query.as_deref().map_or(0, |q| q.len() + 1));
    let named_by_connection: Vec<String> = map
        .get_all("connection")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    let peer: std::net::IpAddr = [192, 0, 2, 7].into();
    let extra = ["x-mock-*".to_owned(), "x-custom".to_owned()];
    for (policy, xff) in [
        (HeaderPolicy::new(&[], false), false),
        (HeaderPolicy::new(&extra, true), true),
    ] {
        let out = policy.forward(map.clone(), Some(peer));
        for (name, value) in &out {
            let n = name.as_str();
            if n == "x-forwarded-for" {
                assert!(xff && value == "192.0.2.7", "x-forwarded-for {value:?}");
                continue;
            }
            assert!(!NEVER_FORWARDED.contains(&n), "forwarded {n}");
            assert!(
                !named_by_connection.iter().any(|c| c == n),
                "forwarded {n}, which Connection names"
            );
            assert!(
                map.get_all(name).iter().any(|v| v == value),
                "forwarded {n}: {value:?}, which the client did not send"
            );
        }
    }
}

/// The rate-limit readers: no panic, bounded results, and the round trips that must hold.
pub fn ratelimit(data: &[u8]) {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let (map, _) = header_map(data);
    let _ = rate_limit_hint(&map, now);
    let (requests, tokens) = remaining_quota(&map);
    assert!(requests.is_none_or(|n| n >= 0) && tokens.is_none_or(|n| n >= 0));
    let text = String::from_utf8_lossy(data);
    for value in text.split(['\n', ':']) {
        if let Some(d) = parse_go_duration(value) {
            assert!(
                d <= Duration::from_secs(1_000_000_000),
                "{value:?} -> {d:?}"
            );
        }
        if let (Ok(n), Some(d)) = (value.trim().parse::<f64>(), parse_retry_after(value, now)) {
            assert!(
                n >= 0.0 && d <= Duration::from_secs(1_000_000_000),
                "{value:?}"
            );
        }
    }
    // Round trips, from the first bytes as numbers.
    let b = |i: usize| u64::from(data.get(i).copied().unwrap_or(0));
    let (h, m, s, ms) = (b(0), b(1) % 60, b(2) % 60, b(3) * 3 % 1000);
    let go = format!("{h}h{m}m{s}.{ms:03}s");
    let want = Duration::from_millis(((h * 60 + m) * 60 + s) * 1000 + ms);
    let got = parse_go_duration(&go).unwrap_or_else(|| panic!("{go} does not parse"));
    let diff = got.abs_diff(want);
    assert!(
        diff < Duration::from_micros(1),
        "{go} -> {got:?}, want {want:?}"
    );
    let ahead = Duration::from_secs(b(4) * 256 + b(5));
    let date = httpdate::fmt_http_date(now + ahead);
    assert_eq!(parse_retry_after(&date, now), Some(ahead), "{date}");
    let behind = httpdate::fmt_http_date(now - ahead);
    assert_eq!(
        parse_retry_after(&behind, now),
        Some(Duration::ZERO),
        "{behind}"
    );
}

/// Providers of the URL target: a base with a path, a bare host under the root route, and an
/// IPv6 base with a port.
const URL_CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"
allow_unauthenticated = true
[admin]
listen = "127.0.0.1:0"
[[providers]]
name = "openai"
base_url = "http://127.0.0.1:9/v1"
route = "/v1"
keys = "env:KR_KEY_*"
[[providers]]
name = "azure"
base_url = "http://[::1]:8080/openai/deployments/gpt"
route = "/az"
keys = "env:KR_KEY_*"
[[providers]]
name = "root"
base_url = "https://example.com"
route = "/"
keys = "env:KR_KEY_*"
"#;

fn routes() -> &'static Routes {
    static ROUTES: OnceLock<Routes> = OnceLock::new();
    ROUTES.get_or_init(|| {
        let config = Config::from_toml_str(URL_CONFIG, &env())
            .unwrap_or_else(|e| panic!("the URL target's config: {e}"));
        let shared = keyrelay::Shared::new(Arc::new(MemoryStore::new()));
        Routes::new(&config, &shared).unwrap_or_else(|e| panic!("routes: {e}"))
    })
}

/// `Routes::find` then `Provider::upstream_uri` on a request target as hyper would parse it:
/// the joined URL keeps the base's scheme, host and port, and starts with its path.
pub fn url(data: &[u8]) {
    let Ok(target) = http::Uri::try_from(data) else {
        return;
    };
    // `OPTIONS * HTTP/1.1` to a root-route provider once joined to `https://example.com*`,
    // another host (a finding of this target); routes now refuses a path without a leading '/'.
    let Some((provider, rest)) = routes().find(target.path()) else {
        return;
    };
    let Ok(joined) = provider.upstream_uri(rest, target.query()) else {
        return;
    };
    let base: http::Uri = provider
        .base_url
        .parse()
        .unwrap_or_else(|e| panic!("base {}: {e}", provider.base_url));
    let shown = format!("{target} -> {joined} (base {base})");
    assert_eq!(joined.scheme(), base.scheme(), "{shown}");
    assert_eq!(joined.host(), base.host(), "{shown}");
    assert_eq!(joined.port_u16(), base.port_u16(), "{shown}");
    let base_path = base.path().trim_end_matches('/');
    assert!(joined.path().starts_with(base_path), "{shown}");
}

/// keyrelay's own HTTP/1 path: a request head parsed, then its body decoded: no panic; a head
/// handed to hyper leaves its bytes as they were; no byte is handed out twice; a body never
/// exceeds its declared length.
pub fn h1(data: &[u8]) {
    keyrelay::h1::fuzz_request(data);
}

/// keyrelay's own upstream HTTP/1 exchange: an answer's head parsed, then its body decoded: no
/// panic; only whole heads taken off the front; no 1xx handed on; a HEAD's answer has no body;
/// a body read until close is never kept; no byte handed out twice; a body never exceeds its
/// declared length.
pub fn upstream(data: &[u8]) {
    keyrelay::upstream::fuzz_answer(data);
}
