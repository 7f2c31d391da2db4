//! Reading a provider's "when may I try again" hints: Retry-After, retry-after-ms, reset headers.

use http::{HeaderMap, HeaderValue};
use std::time::{Duration, SystemTime};

/// `Retry-After` as delta-seconds (`"30"`, `"1.5"`) or as an HTTP date, relative to `now`.
/// A date in the past means "now", so it yields zero.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(1e9)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// A Go-style duration as OpenAI sends in `x-ratelimit-reset-*`: `"6m0s"`, `"20ms"`, `"1h2m3.5s"`,
/// `"0.5s"`. A bare number is taken as seconds.
pub fn parse_go_duration(value: &str) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(1e9)));
    }
    let mut total = 0f64;
    let mut rest = value;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let number: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * scale;
    }
    (total.is_finite() && total <= 1e9).then(|| Duration::from_secs_f64(total))
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// How long the provider asks us to wait, from a rate-limited answer's headers.
///
/// Order of trust: `retry-after-ms`, then `Retry-After`, then OpenAI's reset headers, where a
/// reset counts only if its matching `x-ratelimit-remaining-*` is exhausted (or absent).
pub fn rate_limit_hint(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    if let Some(ms) = header(headers, "retry-after-ms").and_then(|v| v.trim().parse::<f64>().ok()) {
        if ms.is_finite() && ms >= 0.0 {
            return Some(Duration::from_secs_f64((ms / 1000.0).min(1e9)));
        }
    }
    if let Some(d) = header(headers, "retry-after").and_then(|v| parse_retry_after(v, now)) {
        return Some(d);
    }
    let mut best: Option<Duration> = None;
    for kind in ["requests", "tokens"] {
        let reset =
            header(headers, &format!("x-ratelimit-reset-{kind}")).and_then(parse_go_duration);
        let exhausted = header(headers, &format!("x-ratelimit-remaining-{kind}"))
            .map(|v| v.trim() == "0")
            .unwrap_or(true);
        if let (Some(reset), true) = (reset, exhausted) {
            best = Some(best.map_or(reset, |b| b.max(reset)));
        }
    }
    best
}

/// What the provider says is left of a key's quota: (requests, tokens), as OpenAI's
/// `x-ratelimit-remaining-*` or Anthropic's `anthropic-ratelimit-*-remaining` report it.
pub fn remaining_quota(headers: &HeaderMap) -> (Option<i64>, Option<i64>) {
    // One pass over the answer's few headers, comparing names (this runs on every attempt;
    // four hashed lookups of names mostly absent cost several times more). Where both
    // providers' names are present, OpenAI's counts; a name's first value counts.
    let mut found: [Option<&HeaderValue>; 4] = [None; 4];
    for (name, value) in headers {
        let slot = match name.as_str() {
            "x-ratelimit-remaining-requests" => 0,
            "anthropic-ratelimit-requests-remaining" => 1,
            "x-ratelimit-remaining-tokens" => 2,
            "anthropic-ratelimit-tokens-remaining" => 3,
            _ => continue,
        };
        found[slot].get_or_insert(value);
    }
    let read = |pair: &[Option<&HeaderValue>]| {
        pair.iter()
            .find_map(|v| v.and_then(|v| v.to_str().ok()))
            .and_then(|v| v.trim().parse::<i64>().ok())
            .filter(|n| *n >= 0)
    };
    (read(&found[..2]), read(&found[2..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                *k,
                HeaderValue::from_str(v).unwrap_or(HeaderValue::from_static("")),
            );
        }
        h
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("30", now), Some(Duration::from_secs(30)));
        assert_eq!(
            parse_retry_after(" 1.5 ", now),
            Some(Duration::from_millis(1500))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(90))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("6m0s"), Some(Duration::from_secs(360)));
        assert_eq!(parse_go_duration("20ms"), Some(Duration::from_millis(20)));
        assert_eq!(
            parse_go_duration("1h2m3.5s"),
            Some(Duration::from_millis(3_723_500))
        );
        assert_eq!(parse_go_duration("0.5s"), Some(Duration::from_millis(500)));
        assert_eq!(parse_go_duration("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_go_duration("5x"), None);
        assert_eq!(parse_go_duration("ms"), None);
        assert_eq!(parse_go_duration(""), None);
    }

    #[test]
    fn hint_priority() {
        let now = SystemTime::now();
        let h = headers(&[("retry-after-ms", "250"), ("retry-after", "9")]);
        assert_eq!(rate_limit_hint(&h, now), Some(Duration::from_millis(250)));
        let h = headers(&[("retry-after", "9")]);
        assert_eq!(rate_limit_hint(&h, now), Some(Duration::from_secs(9)));
        let h = headers(&[
            ("x-ratelimit-reset-requests", "20ms"),
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-reset-tokens", "6m0s"),
            ("x-ratelimit-remaining-tokens", "1200"),
        ]);
        assert_eq!(rate_limit_hint(&h, now), Some(Duration::from_millis(20)));
        let h = headers(&[
            ("x-ratelimit-reset-requests", "20ms"),
            ("x-ratelimit-reset-tokens", "6m0s"),
        ]);
        assert_eq!(rate_limit_hint(&h, now), Some(Duration::from_secs(360)));
        assert_eq!(rate_limit_hint(&HeaderMap::new(), now), None);
    }

    #[test]
    fn remaining_quota_from_either_provider() {
        let h = headers(&[
            ("x-ratelimit-remaining-requests", "41"),
            ("x-ratelimit-remaining-tokens", " 9000 "),
        ]);
        assert_eq!(remaining_quota(&h), (Some(41), Some(9000)));
        let h = headers(&[("anthropic-ratelimit-tokens-remaining", "12")]);
        assert_eq!(remaining_quota(&h), (None, Some(12)));
        let h = headers(&[("x-ratelimit-remaining-requests", "many")]);
        assert_eq!(remaining_quota(&h), (None, None));
        let h = headers(&[
            ("content-type", "application/json"),
            ("anthropic-ratelimit-requests-remaining", "5"),
            ("x-ratelimit-remaining-requests", "7"),
            ("anthropic-ratelimit-tokens-remaining", "-1"),
        ]);
        assert_eq!(
            remaining_quota(&h),
            (Some(7), None),
            "OpenAI's name counts first"
        );
    }
}
