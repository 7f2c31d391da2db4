//! The key group a request names: the `x-keyrelay-group` header, else its client's configured
//! default (`group = "..."`). Named, only the pool's keys of that group serve it (see
//! `keyrelay_pool::Group`); a group no key of the pool is in is refused with 400 before
//! anything is read or sent. A request pinned to one key by a resource id keeps that key (no
//! other could serve it). The header is keyrelay's own and never reaches a provider
//! (`headers::HeaderPolicy` drops every `x-keyrelay-*` header).

use crate::error::ProxyError;
use crate::routes::Provider;
use http::{HeaderMap, HeaderName};
use keyrelay_pool::Group;

/// The header a request names its key group in.
pub const GROUP_HEADER: HeaderName = HeaderName::from_static("x-keyrelay-group");

/// The group `headers` name, else `default`; a header that is not text names no group that
/// can exist.
pub fn requested<'a>(
    headers: &'a HeaderMap,
    default: Option<&'a str>,
) -> Result<Option<&'a str>, ProxyError> {
    match headers.get(GROUP_HEADER) {
        None => Ok(default),
        Some(v) => v
            .to_str()
            .map(|g| Some(g.trim()))
            .map_err(|_| ProxyError::UnknownKeyGroup),
    }
}

/// The group of `provider`'s pool that `named` names (none when nothing is named).
pub fn resolve(named: Option<&str>, provider: &Provider) -> Result<Option<Group>, ProxyError> {
    match named {
        None => Ok(None),
        Some(name) => provider
            .pool
            .group(name)
            .map(Some)
            .ok_or(ProxyError::UnknownKeyGroup),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn the_header_wins_over_the_clients_default() {
        let mut h = HeaderMap::new();
        assert_eq!(requested(&h, None).unwrap(), None);
        assert_eq!(requested(&h, Some("batch")).unwrap(), Some("batch"));
        h.insert(GROUP_HEADER, HeaderValue::from_static(" live "));
        assert_eq!(requested(&h, Some("batch")).unwrap(), Some("live"));
        h.insert(GROUP_HEADER, HeaderValue::from_bytes(b"\xff").unwrap());
        assert!(matches!(
            requested(&h, None),
            Err(ProxyError::UnknownKeyGroup)
        ));
    }
}
