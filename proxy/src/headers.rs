//! Header surgery: client credentials out, hop-by-hop headers out, the pool key in.

use http::header::{self, HeaderMap, HeaderName};

/// Every header a client may carry its keyrelay token in.
pub const CREDENTIAL_HEADERS: [HeaderName; 4] = [
    header::AUTHORIZATION,
    HeaderName::from_static("x-api-key"),
    HeaderName::from_static("x-goog-api-key"),
    HeaderName::from_static("api-key"),
];

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

/// The credentials a client presented, in every supported style, as raw bytes.
pub fn presented_credentials<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
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

/// Remove hop-by-hop headers, including any the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed.iter().chain(&HOP_BY_HOP) {
        headers.remove(name);
    }
}

/// Prepare a client's request headers for the upstream: no client credential, no hop-by-hop
/// header, no `Host` (the client sets the upstream's) and no length (the body sets it).
pub fn prepare_request_headers(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers);
    for name in &CREDENTIAL_HEADERS {
        headers.remove(name);
    }
    headers.remove(header::HOST);
    headers.remove(header::CONTENT_LENGTH);
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
    fn prepare_strips_everything_it_should() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        h.insert("x-api-key", HeaderValue::from_static("t"));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-custom"),
        );
        h.insert("x-custom", HeaderValue::from_static("1"));
        h.insert(header::HOST, HeaderValue::from_static("keyrelay"));
        h.insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
        prepare_request_headers(&mut h);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["anthropic-version"]);
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
