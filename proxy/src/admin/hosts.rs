//! Which `Host` the admin listener answers, so a DNS-rebinding page (whose requests carry the
//! attacker's host name) cannot read `/metrics`, status or the dashboard.
//!
//! Allowed, with the listener's own port: `localhost`, `127.0.0.1`, `[::1]` and the listener's
//! address; when it listens on every address (`0.0.0.0` or `[::]`), any IP literal, since a
//! browser only sends a name it resolved and rebinding needs a name. Also every entry of
//! `[admin] allowed_hosts` (`name` with any port, `name:port` with that port). A request
//! without a `Host` (HTTP/1.0 probes) passes: browsers always send one.

use std::net::{IpAddr, SocketAddr};

/// The admin listener's accepted hosts.
#[derive(Clone, Debug)]
pub struct AllowedHosts {
    bound: SocketAddr,
    extra: Vec<String>,
}

impl AllowedHosts {
    /// For a listener bound at `bound`, plus the configured `extra` names (lower case).
    pub fn new(bound: SocketAddr, extra: &[String]) -> AllowedHosts {
        AllowedHosts {
            bound,
            extra: extra.to_vec(),
        }
    }

    /// Whether a request naming `host` (a `Host` header or `:authority`) may be answered.
    pub fn allows(&self, host: Option<&str>) -> bool {
        let Some(host) = host else {
            return true;
        };
        let Ok(authority) = host.parse::<http::uri::Authority>() else {
            return false;
        };
        let name = authority.host().trim_end_matches('.').to_ascii_lowercase();
        let port = authority.port_u16().unwrap_or(80);
        if self.extra.iter().any(|e| matches_entry(e, &name, port)) {
            return true;
        }
        if port != self.bound.port() {
            return false;
        }
        if name == "localhost" {
            return true;
        }
        let ip = name
            .strip_prefix('[')
            .and_then(|n| n.strip_suffix(']'))
            .unwrap_or(&name)
            .parse::<IpAddr>();
        match ip {
            Ok(ip) => ip.is_loopback() || ip == self.bound.ip() || self.bound.ip().is_unspecified(),
            Err(_) => false,
        }
    }
}

/// `entry` is `name` (any port) or `name:port`.
fn matches_entry(entry: &str, name: &str, port: u16) -> bool {
    match entry.parse::<http::uri::Authority>() {
        Ok(a) => {
            a.host().trim_end_matches('.').eq_ignore_ascii_case(name)
                && a.port_u16().is_none_or(|p| p == port)
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names_with_the_listener_port_pass() {
        let h = AllowedHosts::new("127.0.0.1:9091".parse().unwrap(), &[]);
        for ok in [
            "localhost:9091",
            "127.0.0.1:9091",
            "[::1]:9091",
            "LOCALHOST:9091",
        ] {
            assert!(h.allows(Some(ok)), "{ok}");
        }
        assert!(h.allows(None));
        for bad in [
            "evil.example:9091",
            "localhost:9092",
            "localhost",
            "10.0.0.1:9091",
            "127.0.0.1.nip.io:9091",
            "",
            "a b",
        ] {
            assert!(!h.allows(Some(bad)), "{bad}");
        }
    }

    #[test]
    fn unspecified_listener_takes_any_ip_and_the_configured_names() {
        let extra = ["keyrelay.internal".to_owned(), "metrics.svc:80".to_owned()];
        let h = AllowedHosts::new("0.0.0.0:9091".parse().unwrap(), &extra);
        assert!(h.allows(Some("10.1.2.3:9091")));
        assert!(h.allows(Some("keyrelay.internal:1234")));
        assert!(h.allows(Some("metrics.svc")));
        assert!(!h.allows(Some("metrics.svc:81")));
        assert!(!h.allows(Some("rebind.attacker.example:9091")));
        let specific = AllowedHosts::new("10.0.0.5:9091".parse().unwrap(), &[]);
        assert!(specific.allows(Some("10.0.0.5:9091")));
        assert!(!specific.allows(Some("10.0.0.6:9091")));
    }
}
