//! Unit tests of affinity: ids opened and sealed, pins, refusals.

use super::*;
use crate::config::AffinityConfig;
use keyrelay_pool::Secret;

fn affinity(unknown: UnknownIds) -> Affinity {
    let config = AffinityConfig {
        secret: Some(Secret::new("0123456789abcdef0123")),
        unknown_ids: unknown,
        max_rewrite_bytes: 1024,
        mode: crate::config::AffinityMode::Seal,
        map_ttl: std::time::Duration::from_secs(60),
    };
    let keys = ["a", "b"].map(|n| Key::new(n, Secret::new(format!("sk-{n}")), 10, 1));
    Affinity::new(
        Affinity::codec(&config).unwrap(),
        &config,
        ("openai", "https://api.example.com"),
        &keys,
    )
}

fn open_<'a>(
    a: Option<&Affinity>,
    rest: &'a str,
    query: Option<&'a str>,
) -> Result<Target<'a>, ProxyError> {
    open(a, rest, query, || None)
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
    let mut link = serde_json::json!({"results_url": "https://api.example.com/v1/messages/batches/msgbatch_1/results"});
    assert!(a.seal_value(&mut link, &a.refs[0]));
    let link = link["results_url"].as_str().unwrap();
    assert!(
        link.starts_with("v1/messages/batches/msgbatch_kr1_") && link.ends_with("/results"),
        "{link}"
    );
    let path = format!("/files/{id}/content");
    let target = open_(Some(&a), &path, Some("limit=2")).unwrap();
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
    let plan = open_(Some(&a), "/batches", None)
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
        open_(Some(&a), &format!("/files/{bad}"), None),
        Err(ProxyError::ResourceIdInvalid)
    ));
    assert!(matches!(
        open_(Some(&a), &format!("/vector_stores/{one}/files/{two}"), None),
        Err(ProxyError::ResourceIdsConflict)
    ));
    let t = open_(Some(&a), "/files/file-raw", Some("after=file-raw")).unwrap();
    assert_eq!(t.rest(), "/files/file-raw");
    let refuse = affinity(UnknownIds::Refuse);
    assert!(matches!(
        open_(Some(&refuse), "/files/file-raw", None),
        Err(ProxyError::ResourceIdUnknown)
    ));
    assert!(matches!(
        open_(Some(&refuse), "/files", Some("after=file-raw")),
        Err(ProxyError::ResourceIdUnknown)
    ));
    // Stateless routes are never looked at.
    let t = open_(Some(&refuse), "/chat/completions", None).unwrap();
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
    let t = open_(Some(&a), &path, None).unwrap();
    assert_eq!(t.rest(), "/v1beta/files/abc-123");
}

/// A body fed frame by frame from a channel, for the SSE test.
struct Fed(tokio::sync::mpsc::UnboundedReceiver<Bytes>);

impl http_body::Body for Fed {
    type Data = Bytes;
    type Error = crate::body::StreamError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|b| b.map(|b| Ok(http_body::Frame::data(b))))
    }
}

/// The next data frame, or `None` if none comes within 200 ms (or the body ended).
async fn next(body: &mut response::Sealing) -> Option<Bytes> {
    use http_body_util::BodyExt;
    tokio::time::timeout(std::time::Duration::from_millis(200), body.frame())
        .await
        .ok()
        .flatten()
        .map(|f| f.unwrap().into_data().unwrap())
}

#[tokio::test]
async fn sse_events_are_sealed_as_they_complete_never_holding_the_stream() {
    let a = Arc::new(affinity(UnknownIds::Pass));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let inner = ProxyBody::boxed(Fed(rx));
    let mut body = response::Sealing::new(inner, a.clone(), (a.refs[0], None), response::Kind::Sse);
    tx.send(Bytes::from_static(
        b"event: response.created\ndata: {\"response\":{\"id\":\"resp_1\"",
    ))
    .unwrap();
    assert!(
        next(&mut body).await.is_none(),
        "half an event is held, nothing else"
    );
    tx.send(Bytes::from_static(
        b"}}\n\nevent: x\ndata: {\"delta\":\"resp_1\"}\n\ndata: {\"id\"",
    ))
    .unwrap();
    let out = next(&mut body)
        .await
        .expect("whole events go out while the stream is open");
    let text = String::from_utf8(out.to_vec()).unwrap();
    assert!(
        text.starts_with("event: response.created\ndata: {\"response\":{\"id\":\"resp_kr1_"),
        "{text}"
    );
    assert!(
        text.ends_with("event: x\ndata: {\"delta\":\"resp_1\"}\n\n"),
        "{text}"
    );
    tx.send(Bytes::from_static(b":\"batch_9\"}\n\n")).unwrap();
    let out = next(&mut body).await.unwrap();
    assert!(out.starts_with(b"data: {\"id\":\"batch_kr1_"), "{out:?}");
    drop(tx);
    assert!(next(&mut body).await.is_none());
    assert_eq!(a.unrewritten(), 0);
}

#[tokio::test]
async fn a_json_answer_past_the_bound_passes_unsealed_and_is_counted() {
    use http_body_util::BodyExt;
    let a = Arc::new(affinity(UnknownIds::Pass));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let big = format!("{{\"id\":\"file-1\",\"pad\":\"{}\"}}", "x".repeat(2000));
    tx.send(Bytes::from(big.clone())).unwrap();
    drop(tx);
    let body = response::Sealing::new(
        ProxyBody::boxed(Fed(rx)),
        a.clone(),
        (a.refs[0], None),
        response::Kind::Json,
    );
    let out = body.collect().await.unwrap().to_bytes();
    assert_eq!(out, big.as_bytes());
    assert_eq!(a.unrewritten(), 1);
}

/// Map mode without a secret seals Gemini upload links under one per-process secret: codecs
/// made for the shared pools, a tenant's pools or after a reload open each other's links.
#[test]
fn map_mode_without_a_secret_seals_alike_in_one_process() {
    let config = AffinityConfig {
        secret: None,
        unknown_ids: UnknownIds::Pass,
        max_rewrite_bytes: 1024,
        mode: crate::config::AffinityMode::Map,
        map_ttl: std::time::Duration::from_secs(60),
    };
    let (first, later) = (
        Affinity::codec(&config).unwrap(),
        Affinity::codec(&config).unwrap(),
    );
    let key = codec::key_ref("fp-a");
    let sealed = first.seal("gemini", "upload_id", &key, "up-1");
    let payload = sealed.rsplit("kr1_").next().unwrap();
    let (opened_key, rest) = later.open("gemini", "upload_id", payload).unwrap();
    assert_eq!((opened_key, rest.as_str()), (key, "up-1"));
}
