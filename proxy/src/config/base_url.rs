//! A provider's `base_url`: an http(s) URL with a host, no query, no credentials, and not on a
//! link-local or cloud metadata address unless the provider says so.
//!
//! The address check sees only what the config names: a literal IP (in any form `inet_aton`
//! would accept, since the resolver does) or a well-known metadata host name. A name that
//! resolves to such an address at run time is for the per-request checks to catch.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Host names that reach a cloud's instance metadata service.
const METADATA_HOSTS: [&str; 4] = [
    "metadata.google.internal",
    "metadata",
    "instance-data",
    "instance-data.ec2.internal",
];

/// The checked URL without a trailing slash, or why not. Errors never echo credentials.
pub(super) fn check(u: &str, allow_link_local: bool) -> Result<String, String> {
    let shown = redacted(u);
    if shown != u {
        return Err(format!(
            "\"{shown}\" carries credentials (user:password@): keyrelay never sends them; put the provider key in keys"
        ));
    }
    let uri: http::Uri = u.parse().map_err(|_| format!("\"{u}\" is not a URL"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(format!("\"{u}\" must start with http:// or https://")),
    }
    let host = uri.host().unwrap_or_default();
    if host.is_empty() {
        return Err(format!("\"{u}\" has no host"));
    }
    if uri.query().is_some() {
        return Err(format!("\"{u}\" must not carry a query"));
    }
    if !allow_link_local && is_link_local_or_metadata(host) {
        return Err(format!(
            "\"{u}\" points at a link-local or cloud metadata address; set allow_link_local_base_url = true if that is really the provider"
        ));
    }
    Ok(u.trim_end_matches('/').to_owned())
}

/// `u` with any `user:password@` replaced by `***@`, for messages.
pub(super) fn redacted(u: &str) -> String {
    let start = u.find("://").map_or(0, |i| i + 3);
    let rest = &u[start..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{}***{}", &u[..start], &rest[at..]),
        None => u.to_owned(),
    }
}

/// Whether `host` (as in a URI: IPv6 in brackets) names a link-local or metadata address.
pub(super) fn is_link_local_or_metadata(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if METADATA_HOSTS.contains(&host.as_str()) {
        return true;
    }
    let ip = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.split('%').next().and_then(|a| a.parse().ok()),
        None => loose_ipv4(&host).map(IpAddr::V4),
    };
    match ip {
        Some(IpAddr::V4(v4)) => v4.is_link_local(),
        Some(IpAddr::V6(v6)) => v6_link_local_or_metadata(v6),
        None => false,
    }
}

fn v6_link_local_or_metadata(v6: Ipv6Addr) -> bool {
    const AWS_METADATA: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);
    if let Some(v4) = v6.to_ipv4_mapped() {
        return v4.is_link_local();
    }
    v6 == AWS_METADATA || (v6.segments()[0] & 0xffc0) == 0xfe80
}

/// An IPv4 address in any form `inet_aton` accepts: one to four parts, each decimal, octal
/// (leading 0) or hex (0x), the last part filling the remaining bytes (`169.254.43518`).
pub(super) fn loose_ipv4(host: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = host.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let numbers: Vec<u64> = parts.iter().map(|p| number(p)).collect::<Option<_>>()?;
    let (last, head) = numbers.split_last()?;
    let mut value: u64 = 0;
    for (i, n) in head.iter().enumerate() {
        if *n > 255 {
            return None;
        }
        value |= n << (24 - 8 * i);
    }
    let room = 32 - 8 * head.len() as u32;
    if *last >= 1u64 << room {
        return None;
    }
    u32::try_from(value | last).ok().map(Ipv4Addr::from)
}

fn number(part: &str) -> Option<u64> {
    let (digits, radix) = if let Some(h) = part.strip_prefix("0x").or(part.strip_prefix("0X")) {
        (h, 16)
    } else if part.len() > 1 && part.starts_with('0') {
        (&part[1..], 8)
    } else {
        (part, 10)
    };
    if digits.is_empty() && radix == 16 {
        return Some(0);
    }
    if digits.is_empty() || digits.len() > 11 || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_of_the_metadata_address_is_caught() {
        for host in [
            "169.254.169.254",
            "169.254.0.1",
            "2852039166",
            "0xa9fea9fe",
            "0251.0376.0251.0376",
            "169.254.43518",
            "0xa9.0xfe.0xa9.0xfe",
            "[fe80::1]",
            "[FE80::1%25eth0]",
            "[febf::1]",
            "[fd00:ec2::254]",
            "[::ffff:169.254.169.254]",
            "metadata.google.internal",
            "Metadata.Google.Internal.",
            "metadata",
        ] {
            assert!(is_link_local_or_metadata(host), "{host}");
        }
        for host in [
            "api.openai.com",
            "127.0.0.1",
            "10.0.0.1",
            "169.253.1.1",
            "[::1]",
            "[fec0::1]",
            "[fd00:ec2::253]",
            "1.2.3.4.5",
            "256.1.1.1",
            "0x",
            "",
            "metadata.example.com",
        ] {
            assert!(!is_link_local_or_metadata(host), "{host}");
        }
    }

    #[test]
    fn credentials_are_refused_and_never_echoed() {
        for u in [
            "https://user:hunter2pass@api.example.com/v1",
            "https://hunter2pass@api.example.com",
            "http://a:hunter2pass@[::1]:8080/x",
        ] {
            let err = check(u, false).unwrap_err();
            assert!(!err.contains("hunter2pass"), "{err}");
            assert!(err.contains("credentials"), "{err}");
        }
        assert_eq!(
            redacted("https://u:p@h/a@b"),
            "https://***@h/a@b",
            "only the authority's userinfo is redacted"
        );
        assert_eq!(check("https://h/a@b/", false).unwrap(), "https://h/a@b");
    }

    #[test]
    fn the_provider_may_allow_a_link_local_base() {
        assert!(check("http://169.254.169.254/v1", false).is_err());
        assert_eq!(
            check("http://169.254.169.254/v1/", true).unwrap(),
            "http://169.254.169.254/v1"
        );
    }
}
