//! Resource affinity without a database: resource ids in answers are sealed to the key that
//! created them ([`codec`]), opened again in later requests' paths, queries and JSON bodies,
//! and those requests pinned to that key.
//!
//! Only resource routes pay ([`ids::classify`], a few prefix comparisons on the path); chat,
//! embeddings and every other stateless route get `Plan::default()` and are never touched.
//! Listing endpoints (`GET /v1/files`, `/v1/batches`, ...) are answered from one key: the
//! key a pagination cursor (`after`, `before`) was sealed to, else the key rotation picks.

mod codec;
mod ids;
mod map;
mod response;
mod upload;

pub use codec::{key_ref, Codec, KeyRef, Tampered, MARK};
pub use ids::{classify, Route};
pub use map::recall;
pub use upload::upload_pool;

use crate::body::ProxyBody;
use crate::config::{AffinityConfig, AffinityMode, UnknownIds};
use crate::error::ProxyError;
use bytes::Bytes;
use http::{HeaderMap, Response};
use keyrelay_pool::Key;
use serde_json::Value;
use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Gemini's resumable upload link, answered to the upload's first step.
const UPLOAD_URL: &str = "x-goog-upload-url";

/// One provider's affinity: the shared codec, the provider's name (bound into every seal) and
/// a reference per key, in pool order.
#[derive(Debug)]
pub struct Affinity {
    codec: Arc<Codec>,
    scope: String,
    /// The provider's base URL, to make the links it returns (`results_url`) relative.
    base_url: String,
    refs: Vec<KeyRef>,
    unknown: UnknownIds,
    max_rewrite: usize,
    /// Answers passed on unrewritten because they were larger than `max_rewrite_bytes`.
    unrewritten: AtomicU64,
    /// `mode = "map"`: ids untouched, remembered in the store.
    map: Option<map::IdStore>,
}

impl Affinity {
    /// The codec for a config, if it turns affinity on.
    pub fn codec(config: &AffinityConfig) -> Option<Arc<Codec>> {
        match (&config.secret, config.mode) {
            (Some(s), _) => Some(Arc::new(Codec::new(s.expose()))),
            // Map mode seals only Gemini upload links: a per-process secret does for one
            // instance (the config documents setting one for several). One for the whole
            // process, so the shared pools, the tenants' pools and every reload open each
            // other's links.
            (None, AffinityMode::Map) => Some(Arc::new(Codec::new(process_secret()))),
            (None, AffinityMode::Seal) => None,
        }
    }

    /// In map mode, ids are remembered in `store`.
    pub fn with_store(
        mut self,
        config: &AffinityConfig,
        store: &Arc<dyn keyrelay_pool::Store>,
        keys: &[Key],
    ) -> Self {
        if config.mode == AffinityMode::Map {
            self.map = Some(map::IdStore {
                store: store.clone(),
                ttl: config.map_ttl,
                fingerprints: keys.iter().map(|k| k.fingerprint.clone()).collect(),
            });
        }
        self
    }

    pub fn new(
        codec: Arc<Codec>,
        config: &AffinityConfig,
        (scope, base_url): (&str, &str),
        keys: &[Key],
    ) -> Self {
        Affinity {
            codec,
            scope: scope.to_owned(),
            base_url: base_url.to_owned(),
            refs: keys.iter().map(|k| key_ref(&k.fingerprint)).collect(),
            unknown: config.unknown_ids,
            max_rewrite: config.max_rewrite_bytes,
            unrewritten: AtomicU64::new(0),
            map: None,
        }
    }

    /// JSON answers passed on unrewritten for their size so far.
    pub fn unrewritten(&self) -> u64 {
        self.unrewritten.load(Ordering::Relaxed)
    }

    /// The provider id inside a keyrelay id, and its key; `Ok(None)` for any other string.
    fn open_str(&self, s: &str, bare: bool) -> Result<Option<(String, KeyRef)>, ProxyError> {
        let Some((clear, bound, payload)) = ids::split_sealed(s, bare) else {
            return Ok(None);
        };
        let (key, rest) = self
            .codec
            .open(&self.scope, bound, payload)
            .map_err(|Tampered| ProxyError::ResourceIdInvalid)?;
        Ok(Some((format!("{clear}{rest}"), key)))
    }

    /// `s` sealed to `key` if it is a resource id of a known shape for `field`.
    fn seal_str(&self, field: &str, s: &str, key: &KeyRef) -> Option<String> {
        if ids::split_sealed(s, false).is_some() {
            return None;
        }
        let split = ids::split_id(field, s)?;
        let sealed = self.codec.seal(&self.scope, split.bound, key, split.rest);
        Some(if split.bound.is_empty() {
            format!("{}{sealed}", split.clear)
        } else {
            sealed
        })
    }

    /// Seal every resource id in `v`; whether anything changed.
    fn seal_value(&self, v: &mut Value, key: &KeyRef) -> bool {
        let mut changed = false;
        match v {
            Value::Object(map) => {
                for (field, value) in map.iter_mut() {
                    if ids::is_id_field(field) {
                        changed |= self.seal_field(field, value, key);
                    } else if field == "results_url" {
                        changed |= self.seal_link(value, key);
                    }
                    changed |= self.seal_value(value, key);
                }
            }
            Value::Array(items) => {
                for item in items {
                    changed |= self.seal_value(item, key);
                }
            }
            _ => {}
        }
        changed
    }

    /// A link to the provider (Anthropic's `results_url`), made relative to the SDK's base
    /// URL with its ids sealed, so the SDK follows it through keyrelay, to the same key.
    fn seal_link(&self, value: &mut Value, key: &KeyRef) -> bool {
        let Some(path) = value
            .as_str()
            .and_then(|u| u.strip_prefix(self.base_url.as_str()))
        else {
            return false;
        };
        let sealed: Vec<String> = path
            .trim_start_matches('/')
            .split('/')
            .map(|seg| {
                self.seal_str("id", seg, key)
                    .unwrap_or_else(|| seg.to_owned())
            })
            .collect();
        *value = Value::String(sealed.join("/"));
        true
    }

    /// Gemini's resumable upload URL (`x-goog-upload-url`, on the provider's host) made to
    /// point at keyrelay, its `upload_id` sealed, so the upload's next steps reach this key.
    fn seal_upload_url(
        &self,
        headers: &HeaderMap,
        origin: &Origin,
        key: &KeyRef,
    ) -> Option<http::HeaderValue> {
        let url = headers.get(UPLOAD_URL)?.to_str().ok()?;
        let rest = url.strip_prefix(self.base_url.as_str())?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let query: Vec<String> = query
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some(("upload_id", id)) => format!("upload_id={}", self.seal_upload_id(key, id)),
                _ => kv.to_owned(),
            })
            .collect();
        let link = format!("{}{path}?{}", origin.0.as_deref()?, query.join("&"));
        http::HeaderValue::from_str(&link).ok()
    }

    fn seal_field(&self, field: &str, value: &mut Value, key: &KeyRef) -> bool {
        let mut changed = false;
        let mut one = |s: &mut Value| {
            if let Some(sealed) = s.as_str().and_then(|t| self.seal_str(field, t, key)) {
                *s = Value::String(sealed);
                changed = true;
            }
        };
        match value {
            Value::Array(items) => items.iter_mut().for_each(one),
            other => one(other),
        }
        changed
    }
}

/// What affinity decided for one request: the key it is pinned to, and how its answer is
/// treated. The default (no affinity, or a stateless route) does nothing.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub pinned: Option<usize>,
    route: Option<Route>,
    origin: Origin,
    /// Map mode: the provider ids the request names, for [`recall`].
    mapped: Vec<String>,
}

/// What a resource answer's links are rewritten against: the provider route as the client
/// reached it (`http://HOST:PORT/gemini`).
#[derive(Clone, Debug, Default)]
struct Origin(Option<String>);

/// The ids found in one request: they must all name the same key.
#[derive(Default)]
struct Found {
    key: Option<KeyRef>,
}

impl Found {
    fn note(&mut self, key: KeyRef) -> Result<(), ProxyError> {
        match self.key {
            Some(k) if k != key => Err(ProxyError::ResourceIdsConflict),
            _ => {
                self.key = Some(key);
                Ok(())
            }
        }
    }
}

/// A request's target with its ids opened; finished with the body by [`Target::finish`].
pub struct Target<'a> {
    rest: Cow<'a, str>,
    query: Option<Cow<'a, str>>,
    route: Option<Route>,
    found: Found,
    origin: Origin,
    mapped: Vec<String>,
}

/// Open the keyrelay ids in a request's path (`rest`, after the route prefix) and query.
pub fn open<'a>(
    affinity: Option<&Affinity>,
    rest: &'a str,
    query: Option<&'a str>,
    origin: impl FnOnce() -> Option<String>,
) -> Result<Target<'a>, ProxyError> {
    let plain = Target {
        rest: Cow::Borrowed(rest),
        query: query.map(Cow::Borrowed),
        route: None,
        found: Found::default(),
        origin: Origin(None),
        mapped: Vec::new(),
    };
    let Some(a) = affinity else {
        return Ok(plain);
    };
    let Some(route) = classify(rest) else {
        return Ok(plain);
    };
    let mut found = Found::default();
    let mut mapped = Vec::new();
    let rest = if a.map.is_some() {
        map::path_ids(rest, &mut mapped);
        Cow::Borrowed(rest)
    } else {
        open_path(a, rest, &mut found)?
    };
    let query = match query {
        Some(q) => {
            if a.map.is_some() {
                map::query_ids(q, &mut mapped);
            }
            Some(open_query(a, q, &mut found)?)
        }
        None => None,
    };
    Ok(Target {
        rest,
        query,
        route: Some(route),
        found,
        origin: Origin(origin()),
        mapped,
    })
}

/// `scheme://host` of the request as the client sent it, and the provider's route: where a
/// link in an answer (Gemini's upload URL) must point for the client to come back through
/// keyrelay. `None` without a valid host.
pub fn origin(parts: &http::request::Parts, tls: bool, route: &str) -> Option<String> {
    let host = parts
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.authority().map(http::uri::Authority::as_str))?;
    let host = http::uri::Authority::try_from(host).ok()?;
    if host.as_str().contains('@') {
        return None;
    }
    let scheme = if tls { "https" } else { "http" };
    Some(format!("{scheme}://{host}{}", route.trim_end_matches('/')))
}

/// Each path segment in keyrelay form opened (a Gemini `:method` suffix kept).
fn open_path<'a>(
    a: &Affinity,
    rest: &'a str,
    found: &mut Found,
) -> Result<Cow<'a, str>, ProxyError> {
    if !rest.contains(MARK) && a.unknown == UnknownIds::Pass {
        return Ok(Cow::Borrowed(rest));
    }
    let mut out = String::with_capacity(rest.len());
    let mut prev = "";
    for (i, seg) in rest.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        let (id, method) = seg.split_once(':').map_or((seg, ""), |(a, b)| (a, b));
        let bare = matches!(prev, "files" | "cachedContents");
        match a.open_str(id, bare)? {
            Some((opened, key)) => {
                found.note(key)?;
                out.push_str(&opened);
            }
            None if a.unknown == UnknownIds::Refuse
                && (ids::is_foreign(id) || (bare && !id.is_empty())) =>
            {
                return Err(ProxyError::ResourceIdUnknown)
            }
            None => out.push_str(id),
        }
        if !method.is_empty() {
            out.push(':');
            out.push_str(method);
        }
        prev = seg;
    }
    Ok(Cow::Owned(out))
}

/// Each query value in keyrelay form opened (`after=file-kr1_...`).
fn open_query<'a>(
    a: &Affinity,
    query: &'a str,
    found: &mut Found,
) -> Result<Cow<'a, str>, ProxyError> {
    if !query.contains(MARK) && a.unknown == UnknownIds::Pass {
        return Ok(Cow::Borrowed(query));
    }
    let mut parts = Vec::new();
    for kv in query.split('&') {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let opened = if k == "upload_id" {
            a.open_upload_id(v)?
        } else {
            a.open_str(v, false)?
        };
        match opened {
            Some((opened, key)) => {
                found.note(key)?;
                parts.push(format!("{k}={opened}"));
            }
            None if a.unknown == UnknownIds::Refuse && a.map.is_none() && ids::is_foreign(v) => {
                return Err(ProxyError::ResourceIdUnknown)
            }
            None => parts.push(kv.to_owned()),
        }
    }
    Ok(Cow::Owned(parts.join("&")))
}

impl Target<'_> {
    pub fn rest(&self) -> &str {
        &self.rest
    }

    pub fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }

    /// Open the ids in a JSON body, and pin the request to the key they name.
    pub fn finish(
        self,
        affinity: Option<&Affinity>,
        body: &mut Bytes,
        headers: &mut HeaderMap,
    ) -> Result<Plan, ProxyError> {
        let (Some(a), Some(route)) = (affinity, self.route) else {
            return Ok(Plan::default());
        };
        let mut found = self.found;
        let mut mapped = self.mapped;
        if is_json(headers) && !body.is_empty() {
            if a.map.is_some() {
                map::body_ids(body, &mut mapped);
            } else {
                open_body(a, body, &mut found)?;
            }
        }
        if route == Route::Rewrite {
            // Answers are read to seal their ids: ask for them uncompressed.
            headers.remove(http::header::ACCEPT_ENCODING);
        }
        let pinned = match found.key {
            Some(key) => Some(
                a.refs
                    .iter()
                    .position(|r| *r == key)
                    .ok_or(ProxyError::ResourceKeyRemoved)?,
            ),
            None => None,
        };
        Ok(Plan {
            pinned,
            route: Some(route),
            origin: self.origin,
            mapped,
        })
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// Open every keyrelay id among the body's strings; refuse foreign ids in id fields when
/// configured so. A body that is not JSON is left as it is.
fn open_body(a: &Affinity, body: &mut Bytes, found: &mut Found) -> Result<(), ProxyError> {
    let marked = body.windows(MARK.len()).any(|w| w == MARK.as_bytes());
    if !marked && a.unknown == UnknownIds::Pass {
        return Ok(());
    }
    let Ok(mut v) = serde_json::from_slice::<Value>(body) else {
        return Ok(());
    };
    if open_value(a, &mut v, "", found)? {
        *body = Bytes::from(serde_json::to_vec(&v).unwrap_or_default());
    }
    Ok(())
}

fn open_value(
    a: &Affinity,
    v: &mut Value,
    field: &str,
    found: &mut Found,
) -> Result<bool, ProxyError> {
    let mut changed = false;
    match v {
        Value::String(s) => match a.open_str(s, false)? {
            Some((opened, key)) => {
                found.note(key)?;
                *s = opened;
                changed = true;
            }
            None if a.unknown == UnknownIds::Refuse
                && ids::is_id_field(field)
                && ids::is_foreign(s) =>
            {
                return Err(ProxyError::ResourceIdUnknown)
            }
            None => {}
        },
        Value::Object(map) => {
            for (k, value) in map.iter_mut() {
                changed |= open_value(a, value, k, found)?;
            }
        }
        Value::Array(items) => {
            for item in items {
                changed |= open_value(a, item, field, found)?;
            }
        }
        _ => {}
    }
    Ok(changed)
}

/// The answer to a resource request, its ids sealed to `key` (JSON read whole up to
/// `max_rewrite_bytes`, SSE event by event); any other answer as it is.
pub fn wrap(
    affinity: Option<&Arc<Affinity>>,
    plan: &Plan,
    key: &Key,
    mut resp: Response<ProxyBody>,
) -> Response<ProxyBody> {
    let (Some(a), Some(Route::Rewrite)) = (affinity, plan.route) else {
        return resp;
    };
    if !resp.status().is_success() {
        return resp;
    }
    let fingerprint = key.fingerprint.as_str();
    let key = key_ref(fingerprint);
    if let Some(link) = a.seal_upload_url(resp.headers(), &plan.origin, &key) {
        resp.headers_mut().insert(UPLOAD_URL, link);
    }
    let kind = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            if v.starts_with("application/json") {
                Some(response::Kind::Json)
            } else if v.starts_with("text/event-stream") {
                Some(response::Kind::Sse)
            } else {
                None
            }
        });
    let Some(kind) = kind else {
        return resp;
    };
    // Map mode passes the bytes as they are.
    let mapped = a.map.is_some().then(|| fingerprint.to_owned());
    if mapped.is_none() {
        resp.headers_mut().remove(http::header::CONTENT_LENGTH);
    }
    let (parts, body) = resp.into_parts();
    let sealing = response::Sealing::new(body, a.clone(), (key, mapped), kind);
    Response::from_parts(parts, ProxyBody::boxed(sealing))
}

/// A secret for this process alone (map mode without `secret`).
/// A random secret drawn once per process.
fn process_secret() -> &'static str {
    static SECRET: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SECRET.get_or_init(random_secret)
}

fn random_secret() -> String {
    use aes_gcm::aead::rand_core::RngCore;
    let mut bytes = [0u8; 32];
    aes_gcm::aead::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
