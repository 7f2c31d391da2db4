//! Gemini's resumable upload link as a credential: the SDK sends the upload's later steps to
//! the `x-goog-upload-url` keyrelay answered (pointing back at itself, its `upload_id`
//! sealed) without any API key. The sealed id stands in for the client token: AES-GCM means
//! only keyrelay can mint one, and it mints one only in answer to an authenticated client.
//! The id is sealed under its own bound prefix (`upload_id`), so no other keyrelay id (a
//! Gemini file name, say) opens as one, and under its pool's name, so it opens in one pool
//! only: the one that started the upload, whose key it is pinned to.

use super::codec::{KeyRef, MARK};
use super::Affinity;
use crate::error::ProxyError;
use crate::routes::Provider;
use std::sync::Arc;

/// The prefix bound into a sealed upload id (never shown: the id is `kr1_...` alone).
const BOUND: &str = "upload_id";

impl Affinity {
    /// A provider's upload id sealed to `key`.
    pub(super) fn seal_upload_id(&self, key: &KeyRef, id: &str) -> String {
        let sealed = self.codec.seal(&self.scope, BOUND, key, id);
        // The bound prefix is in the seal, not in the link.
        match sealed.strip_prefix(BOUND) {
            Some(s) => s.to_owned(),
            None => sealed,
        }
    }

    /// The provider's upload id inside a sealed one, and its key; `Ok(None)` for an id not in
    /// keyrelay form.
    pub(super) fn open_upload_id(&self, v: &str) -> Result<Option<(String, KeyRef)>, ProxyError> {
        let Some(payload) = v.strip_prefix(MARK) else {
            return Ok(None);
        };
        let (key, id) = self
            .codec
            .open(&self.scope, BOUND, payload)
            .map_err(|super::Tampered| ProxyError::ResourceIdInvalid)?;
        Ok(Some((id, key)))
    }
}

/// Whether `rest` (the path after the route prefix) is Gemini's upload path,
/// `/upload/<version>/files`.
fn is_upload_path(rest: &str) -> bool {
    let mut segs = rest.trim_start_matches('/').split('/');
    matches!(
        (segs.next(), segs.next(), segs.next(), segs.next()),
        (Some("upload"), Some(v), Some("files"), None) if v.starts_with("v1")
    )
}

/// The `upload_id` value of a query, when it is in keyrelay form.
fn sealed_upload_id(query: &str) -> Option<&str> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("upload_id="))
        .filter(|v| v.starts_with(MARK))
}

/// The pool among `pools` (every pool on one route) in which a token-less request to
/// `rest?query` is the next step of an upload it started: `Ok(None)` when the request is no
/// upload step with a sealed id (the usual 401 applies), `ResourceIdInvalid` when it carries
/// one that no pool opens (forged, altered, or from another keyrelay).
pub fn upload_pool(
    pools: &[Arc<Provider>],
    rest: &str,
    query: Option<&str>,
) -> Result<Option<Arc<Provider>>, ProxyError> {
    let Some(id) = query
        .filter(|_| is_upload_path(rest))
        .and_then(sealed_upload_id)
    else {
        return Ok(None);
    };
    pools
        .iter()
        .find(|p| {
            p.affinity
                .as_ref()
                .is_some_and(|a| matches!(a.open_upload_id(id), Ok(Some(_))))
        })
        .cloned()
        .map(Some)
        .ok_or(ProxyError::ResourceIdInvalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_upload_path_with_a_sealed_id_qualifies() {
        assert!(is_upload_path("/upload/v1beta/files"));
        assert!(is_upload_path("/upload/v1/files"));
        assert!(!is_upload_path("/upload/v1beta/files/x"));
        assert!(!is_upload_path("/v1beta/files"));
        assert!(!is_upload_path("/upload/v1beta/cachedContents"));
        assert_eq!(sealed_upload_id("upload_id=kr1_abc&x=1"), Some("kr1_abc"));
        assert_eq!(sealed_upload_id("x=1&upload_id=kr1_abc"), Some("kr1_abc"));
        assert_eq!(sealed_upload_id("upload_id=up1"), None);
        assert_eq!(sealed_upload_id("other=kr1_abc"), None);
    }
}
