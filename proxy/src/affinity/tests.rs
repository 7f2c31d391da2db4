//! Unit tests of affinity: ids opened and sealed, pins, refusals.

use super::*;
use crate::config::AffinityConfig;
use keyrelay_pool::Secret;

fn affinity(unknown: UnknownIds) -> Affinity {
    let config = AffinityConfig {
        secret: Some(Secret::new("0123456789abcdef0123")),
        unknown_ids: unknown,
        max_rewrite_bytes: 1024,
    };
    let keys = ["a", "b"].map(|n| Key::new(n, Secret::new(format!("sk-{n}")), 10, 1));
    Affinity::new(Affinity::codec(&config).unwrap(), &config, "openai", &keys)
}

#[test]
fn sealed_ids_open_to_their_key_and_pin_it() {
    let a = affinity(UnknownIds::Pass);
    let mut v: Value = serde_json::json!({"id": "file-abc", "object": "file", "name": "file-x",
        "data": [{"id": "batch_1", "output_file_id": "file-out", "error_file_id": null}],
        "file_ids": ["file-1"], "text": "file-abc"});
    assert!(a.seal_value(&mut v, &a.refs[1]));
    let id = v["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("file-kr1_"), "{v}");
    assert_eq!(v["name"], "file-x", "a name is no id");
    assert_eq!(v["text"], "file-abc", "text is no id");
    assert!(v["data"][0]["output_file_id"]
        .as_str()
        .unwrap()
        .starts_with("file-kr1_"));
    assert!(v["file_ids"][0].as_str().unwrap().starts_with("file-kr1_"));
    let path = format!("/files/{id}/content");
    let target = open(Some(&a), &path, Some("limit=2")).unwrap();
    assert_eq!(target.rest(), "/files/file-abc/content");
    let mut body = Bytes::new();
    let plan = target
        .finish(Some(&a), &mut body, &mut HeaderMap::new())
        .unwrap();
    assert_eq!(plan.pinned, Some(1));
    let body_json = format!(r#"{{"input_file_id":"{id}","endpoint":"/v1/chat/completions"}}"#);
    let mut body = Bytes::from(body_json);
    let mut headers = HeaderMap::new();
    headers.insert("content-type", "application/json".parse().unwrap());
    let plan = open(Some(&a), "/batches", None)
        .unwrap()
        .finish(Some(&a), &mut body, &mut headers)
        .unwrap();
    assert_eq!(plan.pinned, Some(1));
    assert!(body.starts_with(br#"{"endpoint""#) || body.windows(8).any(|w| w == b"file-abc"));
}

#[test]
fn tampered_foreign_and_mixed_ids() {
    let a = affinity(UnknownIds::Pass);
    let one = a.seal_str("id", "file-1", &a.refs[0]).unwrap();
    let two = a.seal_str("id", "file-2", &a.refs[1]).unwrap();
    let mut bad = one.clone();
    bad.pop();
    assert!(matches!(
        open(Some(&a), &format!("/files/{bad}"), None),
        Err(ProxyError::ResourceIdInvalid)
    ));
    assert!(matches!(
        open(Some(&a), &format!("/vector_stores/{one}/files/{two}"), None),
        Err(ProxyError::ResourceIdsConflict)
    ));
    let t = open(Some(&a), "/files/file-raw", Some("after=file-raw")).unwrap();
    assert_eq!(t.rest(), "/files/file-raw");
    let refuse = affinity(UnknownIds::Refuse);
    assert!(matches!(
        open(Some(&refuse), "/files/file-raw", None),
        Err(ProxyError::ResourceIdUnknown)
    ));
    assert!(matches!(
        open(Some(&refuse), "/files", Some("after=file-raw")),
        Err(ProxyError::ResourceIdUnknown)
    ));
    // Stateless routes are never looked at.
    let t = open(Some(&refuse), "/chat/completions", None).unwrap();
    let mut body = Bytes::from_static(br#"{"file_id":"file-kr1_garbage"}"#);
    let plan = t
        .finish(Some(&refuse), &mut body, &mut HeaderMap::new())
        .unwrap();
    assert_eq!(plan.pinned, None);
}

#[test]
fn gemini_names_seal_in_place() {
    let a = affinity(UnknownIds::Pass);
    let mut v: Value = serde_json::json!({"file": {"name": "files/abc-123", "uri": "u"}});
    assert!(a.seal_value(&mut v, &a.refs[0]));
    let name = v["file"]["name"].as_str().unwrap().to_owned();
    assert!(name.starts_with("files/kr1_"), "{name}");
    let path = format!("/v1beta/{name}");
    let t = open(Some(&a), &path, None).unwrap();
    assert_eq!(t.rest(), "/v1beta/files/abc-123");
}
