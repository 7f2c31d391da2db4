//! `[affinity] mode = "map"`: ids pass untouched both ways; the ids in a resource answer are
//! remembered in the store with the fingerprint of the key that answered (never the key), and
//! the ids a later request names are looked up there (one round trip, resource routes only)
//! to pin it to that key. An id not in the map is passed on or refused per `unknown_ids`.

use super::{ids, Affinity, Plan};
use crate::config::UnknownIds;
use crate::error::ProxyError;
use keyrelay_pool::Store;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// Ids looked up for one request at most (the first ones named); more are not consulted.
const MAX_LOOKUP: usize = 16;
/// Ids remembered from one answer at most (a long listing: its first ones).
const MAX_REMEMBER: usize = 1000;

/// Where map mode keeps its ids.
#[derive(Clone)]
pub struct IdStore {
    pub store: Arc<dyn Store>,
    pub ttl: Duration,
    /// Each key's fingerprint, in pool order.
    pub fingerprints: Vec<String>,
}

impl std::fmt::Debug for IdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdStore")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// The provider ids named in a request's path (`file-x`, Gemini's `files/x`).
pub fn path_ids(rest: &str, out: &mut Vec<String>) {
    let mut prev = "";
    for seg in rest.split('/') {
        let id = seg.split_once(':').map_or(seg, |(a, _)| a);
        if ids::is_foreign(id) {
            out.push(id.to_owned());
        } else if matches!(prev, "files" | "cachedContents") && !id.is_empty() {
            out.push(format!("{prev}/{id}"));
        }
        prev = seg;
    }
}

/// The provider ids among a query's values (`after=file-x`).
pub fn query_ids(query: &str, out: &mut Vec<String>) {
    for kv in query.split('&') {
        let v = kv.split_once('=').map_or("", |(_, v)| v);
        if ids::is_foreign(v) {
            out.push(v.to_owned());
        }
    }
}

/// The provider ids in a JSON body's id fields (`input_file_id`, `previous_response_id`).
pub fn body_ids(body: &[u8], out: &mut Vec<String>) {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        value_ids(&v, "", out, |field, s| {
            ids::is_id_field(field) && ids::is_foreign(s)
        });
    }
}

/// The resource ids of an answer, as sealing would find them.
pub fn answer_ids(v: &Value, out: &mut Vec<String>) {
    value_ids(v, "", out, |field, s| ids::split_id(field, s).is_some());
}

fn value_ids(
    v: &Value,
    field: &str,
    out: &mut Vec<String>,
    is_id: impl Fn(&str, &str) -> bool + Copy,
) {
    match v {
        Value::String(s) if out.len() < MAX_REMEMBER && is_id(field, s) => out.push(s.clone()),
        Value::Object(map) => map.iter().for_each(|(k, x)| value_ids(x, k, out, is_id)),
        Value::Array(items) => items.iter().for_each(|x| value_ids(x, field, out, is_id)),
        _ => {}
    }
}

/// Pin `plan` to the key its ids were remembered with: one store lookup when it names any.
pub async fn recall(affinity: Option<&Affinity>, plan: &mut Plan) -> Result<(), ProxyError> {
    let (Some(a), Some(map)) = (affinity, affinity.and_then(|a| a.map.as_ref())) else {
        return Ok(());
    };
    let mut named = std::mem::take(&mut plan.mapped);
    named.sort_unstable();
    named.dedup();
    named.truncate(MAX_LOOKUP);
    if named.is_empty() {
        return Ok(());
    }
    let found = map.store.recall(&a.scope, &named).await;
    if a.unknown == UnknownIds::Refuse && found.iter().any(Option::is_none) {
        return Err(ProxyError::ResourceIdUnknown);
    }
    let mut fps = found.into_iter().flatten();
    let Some(fp) = fps.next() else {
        return Ok(());
    };
    if fps.any(|other| other != fp) {
        return Err(ProxyError::ResourceIdsConflict);
    }
    let index = map.fingerprints.iter().position(|f| *f == fp);
    plan.pinned = Some(index.ok_or(ProxyError::ResourceKeyRemoved)?);
    Ok(())
}
